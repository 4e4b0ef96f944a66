"""OpenAI `chat.completion.chunk` objects exactly as OpenAI sends them, for translated providers, and the base
class of every stream translator.

One `ChunkWriter` per stream: one `id` and `created` for the whole stream; the first
delta of a choice carries `role`; tool calls get contiguous indexes from 0, with
`id`/`type`/`function.name` only in their first delta; `usage: null` on every chunk
when the client set `stream_options.include_usage`, then one final chunk with
`choices: []` and the usage. No `system_fingerprint`: a translated provider has none, and the spec types it as
a string, so it is left out rather than sent as null. Chunks are dicts handed to the relay as they are (no
SSE encoding here, no `[DONE]`: the relay encodes once and writes the terminator).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import os
import time
from collections.abc import Iterable
from typing import Any

import orjson

from fastgw.api.errors import GatewayError, UpstreamProtocolError
from fastgw.proto.errors import ProtocolError

__all__ = ["ChunkWriter", "StreamTranslator", "completion_body", "usage_dict", "map_finish", "encode_chunks",
           "upstream_json"]


def upstream_json(value: object) -> str:
    """An upstream's JSON value (tool input, error object) as JSON text; nested past what orjson encodes (254
    levels) it is the upstream's protocol error, never a crash in the middle of a read."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        raise UpstreamProtocolError("the upstream sent JSON nested too deeply to relay") from None


def encode_chunks(chunks: list[dict]) -> bytes:
    """Chunks as SSE bytes, one `data: <json>` event each (orjson never writes a raw line end, so one line)."""
    return b"".join([b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks])


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def usage_dict(prompt: int, completion: int, cached: int | None = None, reasoning: int | None = None) -> dict:
    """An OpenAI usage object (with the detail objects OpenAI sends when a provider gives those counts)."""
    u: dict = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return u


_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}


def map_finish(reason: str | None, table: dict[str, str]) -> str | None:
    """A provider's stop reason through its table; unknown reasons become "stop" (the stream did end)."""
    if reason is None:
        return None
    return table.get(reason, _FINISH.get(reason, "stop"))


class ChunkWriter:
    """Builds the chunk dicts of one translated stream into `out`; the translator hands them over with `take()`.

    Appending to one list instead of returning a list per call: a translated event costs one dict, nothing more.
    """

    __slots__ = ("id", "created", "model", "include_usage", "out", "_started", "_tools", "_next_tool", "finished",
                 "ended")

    def __init__(self, model: str, body: dict) -> None:
        self.id = _new_id("chatcmpl-")
        self.created = int(time.time())
        self.model = model
        so = body.get("stream_options")
        self.include_usage = isinstance(so, dict) and bool(so.get("include_usage"))
        #: chunks built since the last take()
        self.out: list[dict] = []
        self._started: set[int] = set()
        #: per choice: provider tool key -> our contiguous index
        self._tools: dict[int, dict[object, int]] = {}
        self._next_tool: dict[int, int] = {}
        self.finished: set[int] = set()
        #: the usage chunk (the stream's last) was written
        self.ended = False

    def take(self) -> list[dict]:
        """The chunks built since the last call (the caller owns the list)."""
        out = self.out
        if not out:
            return out
        self.out = []
        return out

    @property
    def began(self) -> bool:
        """A chunk was built: the stream's id and model are fixed."""
        return bool(self._started)

    def _event(self, choices: list, usage: object = None) -> None:
        obj: dict = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                     "choices": choices}
        if self.include_usage:
            obj["usage"] = usage
        self.out.append(obj)

    def _delta(self, idx: int, delta: dict, finish: str | None = None) -> None:
        if idx not in self._started:
            self._started.add(idx)
            delta = {"role": "assistant", **delta}
        self._event([{"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def start(self, idx: int = 0) -> None:
        """The opening chunk (role, empty content), as OpenAI sends before any text."""
        if idx not in self._started:
            self._delta(idx, {"content": ""})

    def text(self, text: str, idx: int = 0) -> None:
        if text:
            self._delta(idx, {"content": text})

    def tool_start(self, key: object, call_id: str, name: str, idx: int = 0, arguments: str = "") -> None:
        """The first delta of a tool call: its index, id, type and name (and any first arguments)."""
        calls = self._tools.setdefault(idx, {})
        n = self._next_tool.get(idx, 0)
        calls[key] = n
        self._next_tool[idx] = n + 1
        self._delta(idx, {"tool_calls": [{"index": n, "id": call_id or _new_id("call_"), "type": "function",
                                          "function": {"name": name, "arguments": arguments}}]})

    def tool_args(self, key: object, arguments: str, idx: int = 0) -> None:
        """Later deltas of a tool call: only its index and argument text."""
        if not arguments:
            return
        n = self._tools.get(idx, {}).get(key)
        if n is None:
            self.tool_start(key, "", "", idx, arguments)
        else:
            self._delta(idx, {"tool_calls": [{"index": n, "function": {"arguments": arguments}}]})

    @property
    def has_tools(self) -> bool:
        return any(self._tools.values())

    def finish(self, reason: str, idx: int = 0) -> None:
        if idx not in self.finished:
            self.finished.add(idx)
            self._delta(idx, {}, reason)

    def end(self, usage: dict | None) -> None:
        """The usage chunk, when the client asked for it (the stream's last chunk)."""
        self.ended = True
        if self.include_usage:
            self._event([], usage or usage_dict(0, 0))


class StreamTranslator(ABC):
    """The skeleton every provider's stream translator shares: a decoder, a `ChunkWriter`, deferred errors.

    A subclass gives `provider`, the decoder, `_one(item)` (translate one decoded item into the writer) and
    `_close()` (the end-of-body checks, raising when the stream is incomplete). An error raises at once unless
    the same read already produced chunks; those go out first and the error is raised by the next `feed` or
    `finish`, so what the client sees does not depend on where reads split the stream. An item that fails is
    translated not at all: the chunks it had built are discarded.
    """

    __slots__ = ("_dec", "_w", "_usage", "_error")

    #: the provider's name, in error messages
    provider = ""

    def __init__(self, model: str, body: dict, decoder: Any) -> None:
        self._dec = decoder
        self._w = ChunkWriter(model, body)
        #: the OpenAI usage of the stream, once the provider sent it
        self._usage: dict | None = None
        self._error: GatewayError | None = None

    def _items(self, data: bytes) -> Iterable[Any]:
        """The items `data` completes (the decoder's events, lines or frames)."""
        try:
            return self._dec.feed(data)
        except ProtocolError as e:  # an oversized or corrupt event
            raise UpstreamProtocolError(f"{self.provider} {e.message}", code=e.code) from None

    @abstractmethod
    def _one(self, item: Any) -> None:
        """Translate one decoded provider item into chunks (appended to the writer)."""

    @abstractmethod
    def _close(self) -> None:
        """The clean end of the provider's stream: check it was complete, add the last chunks."""

    def feed(self, data: bytes) -> list[dict]:
        """The chunks for the provider events `data` completes (see `fastgw.providers.base.Translator`)."""
        if self._error is not None:
            raise self._error
        w = self._w
        out = w.out
        for item in self._items(data):
            n = len(out)
            try:
                self._one(item)
            except GatewayError as e:
                del out[n:]
                if not out:
                    raise
                self._error = e
                break
        return w.take()

    def finish(self) -> list[dict]:
        """The last chunks at the clean end of the body (usage last); raises when the stream is incomplete."""
        if self._error is not None:
            raise self._error
        w = self._w
        if not w.ended:
            self._close()
            w.end(self._usage)
        return w.take()


def completion_body(model: str, content: str | None, finish: str, usage: dict | None,
                    tool_calls: list[dict] | None = None) -> bytes:
    """A non-streamed OpenAI `chat.completion` body."""
    message: dict = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return orjson.dumps({"id": _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
                         "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                                      "finish_reason": finish}],
                         "usage": usage or usage_dict(0, 0)})
