"""The built-in mock model: a deterministic local provider that answers chat, completions and embeddings like OpenAI.

It needs no key and no network. The reply is a fixed text (configurable, or read
from a file), cut into `chunk_size`-character chunks; each chunk counts as one
completion token. The same request always gets the same answer, byte for byte
except `created`.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from fastgw.api.sse import DONE
from fastgw.proto.sse import encode_data
from fastgw.providers.base import TargetRuntime, UpstreamRequest
from fastgw.providers.openai import OpenAIAdapter

__all__ = ["MockModel", "MockAdapter", "DEFAULT_TEXT", "Reply"]

DEFAULT_TEXT = (
    "This is fastgw's built-in mock model. It streams a deterministic answer in small chunks, "
    "the way a real model streams tokens, so that clients, policies and benchmarks can run offline. "
    "Every request with the same input receives the same reply."
)

_EMBED_DIMS = 16


@dataclass(frozen=True, slots=True)
class Reply:
    """A mock answer: the SSE events to stream (with pacing) or the JSON body for a non-streamed call."""

    events: list[bytes]
    json: bytes
    ttft: float
    delay: float


def _prompt_tokens(body: dict) -> int:
    n = 0
    msgs = body.get("messages")
    if isinstance(msgs, list):
        for m in msgs:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                n += len(c.split()) + 3
            elif isinstance(c, list):
                for part in c:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        n += len(part["text"].split())
                n += 3
    p = body.get("prompt")
    if isinstance(p, str):
        n += len(p.split())
    elif isinstance(p, list):
        n += sum(len(x.split()) for x in p if isinstance(x, str))
    return max(n, 1)


class MockModel:
    """Answers OpenAI-shaped requests for one mock target."""

    __slots__ = ("model", "text", "chunk_size", "chunks", "delay", "ttft")

    def __init__(self, model: str, *, text: str | None = None, text_file: str | None = None, chunk_size: int = 4,
                 chunks: int | None = None, delay: float = 0.0, ttft: float = 0.0) -> None:
        self.model = model
        if text_file:
            text = Path(text_file).read_text(encoding="utf-8")
        self.text = text if text else DEFAULT_TEXT
        self.chunk_size = chunk_size
        self.chunks = chunks
        self.delay = delay
        self.ttft = ttft

    def _pieces(self, body: dict) -> tuple[list[str], str]:
        size = self.chunk_size
        text = self.text
        n = self.chunks if self.chunks is not None else -(-len(text) // size)
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        finish = "stop"
        if isinstance(cap, int) and not isinstance(cap, bool) and 0 <= cap < n:
            n, finish = cap, "length"
        if self.chunks is not None and n * size > len(text):
            text = text * (n * size // max(len(text), 1) + 1)  # repeat to fill the configured chunk count
        return [text[i * size:(i + 1) * size] for i in range(n)], finish

    def _usage(self, body: dict, completion: int) -> dict:
        p = _prompt_tokens(body)
        return {"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion}

    # ---- chat completions -------------------------------------------------------------
    def chat(self, body: dict, request_id: str) -> Reply:
        pieces, finish = self._pieces(body)
        n = body.get("n")
        n_choices = n if isinstance(n, int) and n > 0 else 1
        created = int(time.time())
        cid = f"chatcmpl-mock{request_id}"
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                "system_fingerprint": "fp_mock"}
        events: list[bytes] = []
        for i in range(n_choices):
            events.append(encode_data(orjson.dumps({**base, "choices": [
                {"index": i, "delta": {"role": "assistant", "content": "", "refusal": None},
                 "logprobs": None, "finish_reason": None}]})))
        for piece in pieces:
            for i in range(n_choices):
                events.append(encode_data(orjson.dumps({**base, "choices": [
                    {"index": i, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]})))
        for i in range(n_choices):
            events.append(encode_data(orjson.dumps({**base, "choices": [
                {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}]})))
        usage = self._usage(body, len(pieces) * n_choices)
        so = body.get("stream_options")
        if isinstance(so, dict) and so.get("include_usage"):
            events.append(encode_data(orjson.dumps({**base, "choices": [], "usage": usage})))
        events.append(DONE)
        content = "".join(pieces)
        whole = orjson.dumps({
            "id": cid, "object": "chat.completion", "created": created, "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": i, "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": None, "finish_reason": finish} for i in range(n_choices)],
            "usage": usage,
        })
        return Reply(events, whole, self.ttft, self.delay)

    # ---- legacy completions ------------------------------------------------------------
    def completion(self, body: dict, request_id: str) -> Reply:
        pieces, finish = self._pieces(body)
        created = int(time.time())
        base = {"id": f"cmpl-mock{request_id}", "object": "text_completion", "created": created, "model": self.model}
        events = [encode_data(orjson.dumps({**base, "choices": [
            {"text": p, "index": 0, "logprobs": None, "finish_reason": None}]})) for p in pieces]
        events.append(encode_data(orjson.dumps({**base, "choices": [
            {"text": "", "index": 0, "logprobs": None, "finish_reason": finish}]})))
        usage = self._usage(body, len(pieces))
        so = body.get("stream_options")
        if isinstance(so, dict) and so.get("include_usage"):
            events.append(encode_data(orjson.dumps({**base, "choices": [], "usage": usage})))
        events.append(DONE)
        whole = orjson.dumps({**base, "choices": [
            {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": finish}], "usage": usage})
        return Reply(events, whole, self.ttft, self.delay)

    # ---- embeddings ----------------------------------------------------------------------
    def embeddings(self, body: dict) -> bytes:
        """Deterministic unit vectors derived from a hash of each input."""
        inp = body.get("input")
        items = inp if isinstance(inp, list) else [inp]
        asked = body.get("dimensions")
        dims = max(1, min(asked, 4096)) if isinstance(asked, int) else _EMBED_DIMS
        b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, item in enumerate(items):
            seed = orjson.dumps(item)
            tokens += max(1, len(seed) // 4)
            raw = b""
            counter = 0
            while len(raw) < dims * 4:
                raw += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
                counter += 1
            ints = struct.unpack("<%dI" % dims, raw[: dims * 4])
            vec = [(x / 0xFFFFFFFF) * 2 - 1 for x in ints]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            vec = [v / norm for v in vec]
            emb: object = base64.b64encode(struct.pack("<%df" % dims, *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return orjson.dumps({"object": "list", "data": data, "model": self.model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


class MockAdapter(OpenAIAdapter):
    """The mock speaks OpenAI: answers pass as they are. Its requests are answered in process
    (`fastgw.upstreams.MockUpstream`), so there is no HTTP request to build."""

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        raise TypeError("the built-in mock is answered in process; it has no HTTP request")
