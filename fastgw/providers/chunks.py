"""Writing OpenAI `chat.completion.chunk` events exactly as OpenAI sends them, for translated providers.

One `ChunkWriter` per stream: one `id` and `created` for the whole stream; the first
delta of a choice carries `role`; tool calls get contiguous indexes from 0, with
`id`/`type`/`function.name` only in their first delta; `usage: null` on every chunk
when the client set `stream_options.include_usage`, then one final chunk with
`choices: []` and the usage; `data: [DONE]` last.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import orjson

from fastgw.api.errors import GatewayError

from fastgw.api.sse import DONE
from fastgw.proto.sse import encode_data

T = TypeVar("T")

__all__ = ["ChunkWriter", "completion_body", "usage_dict", "map_finish", "translate_all"]


def translate_all(items: Iterable[T], one: Callable[[T], bytes]) -> tuple[bytes, GatewayError | None]:
    """Translate decoded provider items in order. An error before any output is raised; one after some is
    returned instead, so the events before it reach the client first and the caller raises it next time."""
    out: list[bytes] = []
    for item in items:
        try:
            b = one(item)
        except GatewayError as e:
            if not out:
                raise
            return b"".join(out), e
        if b:
            out.append(b)
    return b"".join(out), None


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
    """Produces the SSE bytes of one translated stream."""

    __slots__ = ("id", "created", "model", "include_usage", "_started", "_tools", "_next_tool", "finished")

    def __init__(self, model: str, body: dict) -> None:
        self.id = _new_id("chatcmpl-")
        self.created = int(time.time())
        self.model = model
        so = body.get("stream_options")
        self.include_usage = isinstance(so, dict) and bool(so.get("include_usage"))
        self._started: set[int] = set()
        #: per choice: provider tool key -> our contiguous index
        self._tools: dict[int, dict[object, int]] = {}
        self._next_tool: dict[int, int] = {}
        self.finished: set[int] = set()

    def _event(self, choices: list, usage: object = None, with_usage_field: bool = True) -> bytes:
        obj: dict = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                     "system_fingerprint": None, "choices": choices}
        if self.include_usage and with_usage_field:
            obj["usage"] = usage
        return encode_data(orjson.dumps(obj))

    def _delta(self, idx: int, delta: dict, finish: str | None = None) -> bytes:
        if idx not in self._started:
            self._started.add(idx)
            delta = {"role": "assistant", **delta}
        return self._event([{"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def start(self, idx: int = 0) -> bytes:
        """The opening chunk (role, empty content), as OpenAI sends before any text."""
        if idx in self._started:
            return b""
        return self._delta(idx, {"content": ""})

    def text(self, text: str, idx: int = 0) -> bytes:
        if not text:
            return b""
        return self._delta(idx, {"content": text})

    def tool_start(self, key: object, call_id: str, name: str, idx: int = 0, arguments: str = "") -> bytes:
        """The first delta of a tool call: its index, id, type and name (and any first arguments)."""
        calls = self._tools.setdefault(idx, {})
        n = self._next_tool.get(idx, 0)
        calls[key] = n
        self._next_tool[idx] = n + 1
        return self._delta(idx, {"tool_calls": [{"index": n, "id": call_id or _new_id("call_"), "type": "function",
                                                 "function": {"name": name, "arguments": arguments}}]})

    def tool_args(self, key: object, arguments: str, idx: int = 0) -> bytes:
        """Later deltas of a tool call: only its index and argument text."""
        if not arguments:
            return b""
        n = self._tools.get(idx, {}).get(key)
        if n is None:
            return self.tool_start(key, "", "", idx, arguments)
        return self._delta(idx, {"tool_calls": [{"index": n, "function": {"arguments": arguments}}]})

    @property
    def has_tools(self) -> bool:
        return any(self._tools.values())

    def finish(self, reason: str, idx: int = 0) -> bytes:
        if idx in self.finished:
            return b""
        self.finished.add(idx)
        return self._delta(idx, {}, reason)

    def end(self, usage: dict | None) -> bytes:
        """The usage chunk (when asked for) and [DONE]."""
        out = b""
        if self.include_usage:
            out += self._event([], usage or usage_dict(0, 0))
        return out + DONE


def completion_body(model: str, content: str | None, finish: str, usage: dict | None,
                    tool_calls: list[dict] | None = None) -> bytes:
    """A non-streamed OpenAI `chat.completion` body."""
    message: dict = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return orjson.dumps({"id": _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
                         "model": model, "system_fingerprint": None,
                         "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                         "usage": usage or usage_dict(0, 0)})
