"""What both fronts share: reading an OpenAI chat answer (its stream's chunks, or its whole body) in the terms a
client API writes back — text, tool calls, the finish reason, usage — and the 400 a front refuses a request with.

A `Front` is made per attempt from the client's body: `chat_request()` is the chat completions request the
target gets, `whole(data)` the client's body for a whole chat answer, `writer()` the `StreamWriter` for a
streamed one, `error_body(status, data)` an upstream's error body in the client's envelope.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import orjson

from fastgw.api.errors import GatewayError, InvalidRequest, UpstreamProtocolError
from fastgw.proto.sse import encode_event

__all__ = ["Front", "StreamWriter", "Completion", "ToolCall", "read_completion", "refuse", "new_id", "event",
           "text_of", "obj_of"]


def new_id(prefix: str) -> str:
    """A fresh object id (`resp_…`, `msg_…`): 24 hex characters after the prefix, as the providers' own."""
    return prefix + os.urandom(12).hex()


def event(obj: dict) -> bytes:
    """One typed SSE event: `event: <type>` and the object as its data (how both APIs send their events)."""
    return encode_event(orjson.dumps(obj), event=obj["type"])


def refuse(message: str, param: str | None, code: str = "unsupported_parameter") -> GatewayError:
    """The 400 for a request this front cannot serve as written (`param` names the field)."""
    return InvalidRequest(message, param=param, code=code)


def text_of(content: object, param: str, kinds: frozenset[str]) -> str:
    """The text of a string, or of a list of text parts whose `type` is one of `kinds` (400 for any other)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise refuse(f"{param}: expected a string or a list of text parts", param, "invalid_type")
    out = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in kinds or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise refuse(f"{param}[{i}]: only text parts can go here, not {str(kind)[:64]!r}", f"{param}[{i}]")
        out.append(part["text"])
    return "".join(out)


@dataclass(slots=True)
class ToolCall:
    """One tool call of a chat answer."""

    id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class Completion:
    """A whole chat answer, as the fronts read it (the first choice)."""

    model: str
    text: str | None
    refusal: str | None
    tools: list[ToolCall] = field(default_factory=list)
    finish: str = "stop"
    usage: dict | None = None


def obj_of(value: object) -> dict:
    """`value` when it is a JSON object, else an empty one (upstream fields of the wrong type read as absent)."""
    return value if isinstance(value, dict) else {}


def read_completion(data: bytes, model: str) -> Completion:
    """The first choice of a `chat.completion` body (an upstream protocol error when it is not one)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamProtocolError("upstream answered with a body that is not a chat completion")
    assert isinstance(obj, dict)
    ch = choices[0]
    msg = ch.get("message")
    if not isinstance(msg, dict):
        msg = {}
    content = msg.get("content")
    if isinstance(content, list):  # some OpenAI-compatible servers answer with parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    tools = []
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") if isinstance(tc, dict) else None
        if isinstance(fn, dict):
            args = fn.get("arguments")
            tools.append(ToolCall(str(tc.get("id") or new_id("call_")), str(fn.get("name") or ""),
                                  args if isinstance(args, str) else orjson.dumps(args or {}).decode()))
    usage = obj.get("usage")
    return Completion(str(obj.get("model") or model), content if isinstance(content, str) else None,
                      msg.get("refusal") if isinstance(msg.get("refusal"), str) else None, tools,
                      str(ch.get("finish_reason") or "stop"), usage if isinstance(usage, dict) else None)


class StreamWriter(ABC):
    """One streamed chat answer as a client dialect's events: `feed(chunks)` returns the events (bytes) the chunks
    make, `end()` the closing events, `fail(err)` the events that close a stream an upstream failure cut (before
    the relay's own error event). Only the first choice is read (neither API has `n`)."""

    __slots__ = ("model", "created", "usage", "finish", "started", "_out", "_calls")

    def __init__(self, model: str) -> None:
        self.model = model
        self.created = int(time.time())
        #: The chat usage of the stream, once the upstream sent it.
        self.usage: dict | None = None
        #: The chat finish reason, once the upstream sent it.
        self.finish: str | None = None
        #: A chunk arrived: the opening events went out (a failure after this is in-stream).
        self.started = False
        self._out: list[bytes] = []
        #: chat tool call index -> (our block or item number, its id)
        self._calls: dict[int, int] = {}

    def feed(self, chunks: list[dict]) -> bytes:
        out = self._out
        for c in chunks:
            if not self.started:
                self.started = True
                if isinstance(c.get("model"), str) and c["model"]:
                    self.model = c["model"]
                self._open()
            usage = c.get("usage")
            if isinstance(usage, dict):
                self.usage = usage
            choices = c.get("choices")
            if not isinstance(choices, list):
                continue
            for ch in choices:
                if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                    continue
                d = ch.get("delta")
                if isinstance(d, dict):
                    text = d.get("content")
                    if isinstance(text, str) and text:
                        self._text(text)
                    refusal = d.get("refusal")
                    if isinstance(refusal, str) and refusal:
                        self._refusal(refusal)
                    calls = d.get("tool_calls")
                    if isinstance(calls, list):
                        for tc in calls:
                            if isinstance(tc, dict):
                                self._tool(tc)
                fr = ch.get("finish_reason")
                if isinstance(fr, str) and fr:
                    self.finish = fr
        self._out = []
        return b"".join(out)

    def _tool(self, tc: dict) -> None:
        i = tc.get("index", 0)
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        assert isinstance(fn, dict)
        n = self._calls.get(i)
        if n is None:
            n = self._calls[i] = self._tool_start(str(tc.get("id") or new_id("call_")), str(fn.get("name") or ""))
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            self._tool_args(n, args)

    def end(self) -> bytes:
        """The closing events of a stream that ended cleanly."""
        if not self.started:
            self.started = True
            self._open()
        self._close()
        out, self._out = self._out, []
        return b"".join(out)

    def fail(self, err: GatewayError) -> bytes:
        """The events that close a started stream cut by an upstream failure (the relay's error event follows)."""
        self._failed(err)
        out, self._out = self._out, []
        return b"".join(out)

    @abstractmethod
    def _open(self) -> None:
        """The events that open the stream."""

    @abstractmethod
    def _text(self, text: str) -> None: ...

    def _refusal(self, text: str) -> None:
        self._text(text)

    @abstractmethod
    def _tool_start(self, call_id: str, name: str) -> int:
        """Open a tool call; its number for `_tool_args`."""

    @abstractmethod
    def _tool_args(self, n: int, args: str) -> None: ...

    @abstractmethod
    def _close(self) -> None:
        """The events that end a complete stream."""

    def _failed(self, err: GatewayError) -> None:
        """The events before the relay's error event (none by default)."""


class Front(ABC):
    """One client API served through the chat core, for one request (see the module docstring)."""

    __slots__ = ("body",)

    def __init__(self, body: dict) -> None:
        #: The client's request, as the input policies left it.
        self.body = body

    @abstractmethod
    def chat_request(self) -> dict:
        """The chat completions request for this client request (400 `GatewayError` for what cannot be)."""

    @abstractmethod
    def whole(self, data: bytes) -> bytes:
        """The client's answer body for a whole chat answer `data`."""

    @abstractmethod
    def writer(self, input_estimate: int) -> StreamWriter:
        """The writer of a streamed answer (`input_estimate`: the prompt's tokens as the gateway estimates them,
        for an API that reports them before the upstream does)."""

    def error_body(self, status: int, data: bytes) -> bytes:
        """An upstream error body (OpenAI's envelope) as this API's client parses it."""
        return data
