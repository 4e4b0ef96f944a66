"""The built-in mock model: a deterministic local provider that answers chat, completions and embeddings like OpenAI.

It needs no key and no network. The reply is a fixed text (configurable, or read
from a file), cut into `chunk_size`-character chunks; each chunk counts as one
completion token. With `tools`, it answers tool calls by the rules of `mock_tools`;
after the tool results, a text that reports them. Requests OpenAI would refuse are
refused before (`mock_validate`, applied by `fastgw.upstreams.MockUpstream`). The
same request always gets the same answer, byte for byte except `created`.
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
from fastgw.providers import mock_tools
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


def _cap(body: dict) -> int | None:
    """The client's completion token cap (`max_completion_tokens`, else `max_tokens`), when it is an integer."""
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0 else None


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

    def _pieces(self, body: dict, text: str | None = None) -> tuple[list[str], str]:
        """The reply cut into chunks (the configured text, or `text` as it is: `chunks` repeats only the
        configured one), and its finish reason (`length` when `max_tokens` cuts it)."""
        size = self.chunk_size
        chunks = self.chunks if text is None else None
        text = self.text if text is None else text
        n = chunks if chunks is not None else -(-len(text) // size)
        cap = _cap(body)
        finish = "stop"
        if cap is not None and cap < n:
            n, finish = cap, "length"
        if chunks is not None and n * size > len(text):
            text = text * (n * size // max(len(text), 1) + 1)  # repeat to fill the configured chunk count
        return [text[i * size:(i + 1) * size] for i in range(n)], finish

    def _usage(self, body: dict, completion: int) -> dict:
        p = _prompt_tokens(body)
        return {"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion}

    # ---- chat completions -------------------------------------------------------------
    def chat(self, body: dict, request_id: str) -> Reply:
        """The answer to a chat request: tool calls when `mock_tools.plan_calls` says so, else text (the
        configured text, or a report of the tool results that end the conversation)."""
        n = body.get("n")
        n_choices = n if isinstance(n, int) and n > 0 else 1
        created = int(time.time())
        cid = f"chatcmpl-mock{request_id}"
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                "system_fingerprint": "fp_mock"}
        calls = mock_tools.plan_calls(body)
        if calls is not None:
            per_choice, messages, finish, tokens = self._tool_calls(body, calls, n_choices)
        else:
            pieces, finish = self._pieces(body, mock_tools.tool_result_text(body))
            per_choice = [[{"content": p} for p in pieces]] * n_choices
            content = "".join(pieces)
            messages = [{"role": "assistant", "content": content, "refusal": None}] * n_choices
            tokens = len(pieces) * n_choices
        events: list[bytes] = []
        if calls is None:
            for i in range(n_choices):
                events.append(encode_data(orjson.dumps({**base, "choices": [
                    {"index": i, "delta": {"role": "assistant", "content": "", "refusal": None},
                     "logprobs": None, "finish_reason": None}]})))
        # Choices interleaved, one delta of each in turn, as OpenAI streams n > 1.
        for k in range(max((len(d) for d in per_choice), default=0)):
            for i, deltas in enumerate(per_choice):
                if k < len(deltas):
                    events.append(encode_data(orjson.dumps({**base, "choices": [
                        {"index": i, "delta": deltas[k], "logprobs": None, "finish_reason": None}]})))
        for i in range(n_choices):
            events.append(encode_data(orjson.dumps({**base, "choices": [
                {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}]})))
        usage = self._usage(body, tokens)
        so = body.get("stream_options")
        if isinstance(so, dict) and so.get("include_usage"):
            events.append(encode_data(orjson.dumps({**base, "choices": [], "usage": usage})))
        events.append(DONE)
        whole = orjson.dumps({
            "id": cid, "object": "chat.completion", "created": created, "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": i, "message": messages[i], "logprobs": None, "finish_reason": finish}
                        for i in range(n_choices)],
            "usage": usage,
        })
        return Reply(events, whole, self.ttft, self.delay)

    def _tool_calls(self, body: dict, calls: list[tuple[str, str]], n_choices: int
                    ) -> tuple[list[list[dict]], list[dict], str, int]:
        """Each choice's stream deltas and whole message for `calls`, the finish reason and the completion tokens.

        Streamed as OpenAI streams calls: a delta opening each call (`index`, `id`, `type`, the name and
        `arguments: ""`; the first also carries the role), then its arguments in `chunk_size` fragments, each
        with the call's `index`. Each fragment counts as one completion token; `max_tokens` cuts the arguments
        (finish reason `length`, as OpenAI does)."""
        size = self.chunk_size
        frags = [(k, args[j:j + size]) for k, (_, args) in enumerate(calls) for j in range(0, len(args), size)]
        cap = _cap(body)
        finish = "tool_calls"
        if cap is not None and cap < len(frags):
            frags, finish = frags[:cap], "length"
        # A call none of whose arguments fit is not opened (the first always is).
        opened = {0} | {k for k, _ in frags}
        said = mock_tools.last_user_text(body)
        per_choice: list[list[dict]] = []
        messages: list[dict] = []
        for i in range(n_choices):
            ids = [mock_tools.call_id(name, said, k, i) for k, (name, _) in enumerate(calls)]
            deltas: list[dict] = []
            args = ["" for _ in calls]
            for k in sorted(opened):
                head = {"index": k, "id": ids[k], "type": "function",
                        "function": {"name": calls[k][0], "arguments": ""}}
                deltas.append({"tool_calls": [head]} if deltas else
                              {"role": "assistant", "content": None, "tool_calls": [head], "refusal": None})
                for fk, frag in frags:
                    if fk == k:
                        args[k] += frag
                        deltas.append({"tool_calls": [{"index": k, "function": {"arguments": frag}}]})
            per_choice.append(deltas)
            messages.append({"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                {"id": ids[k], "type": "function", "function": {"name": calls[k][0], "arguments": args[k]}}
                for k in sorted(opened)]})
        return per_choice, messages, finish, len(frags) * n_choices

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
