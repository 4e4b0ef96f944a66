"""The streamed-answer dialects a client can speak: how each one closes a stream, cleanly or in failure.

A dialect is what the client's SDK parses: OpenAI chat (`chat.completion.chunk`
events, also legacy completions, ended by `data: [DONE]`), the OpenAI Responses API
(typed events with a `sequence_number`) and Anthropic Messages (typed events). Only
what needs no policy lives here, so the relay can end any stream with none; how
each dialect's text is found and rewritten is `fastgw.policy.stream`'s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import orjson

from fastgw.api.errors import GatewayError, anthropic_type
from fastgw.api.sse import DONE
from fastgw.proto.sse import encode_data, encode_event

__all__ = ["Dialect", "ChatDialect", "ResponsesDialect", "MessagesDialect", "CHAT", "RESPONSES", "MESSAGES",
           "DIALECTS", "dialect", "error_event"]


def error_event(err: GatewayError) -> bytes:
    """The in-stream error: an SSE data event carrying the OpenAI error envelope (SDKs raise APIError on it)."""
    return encode_data(err.body())


class Dialect(ABC):
    """One streamed-answer dialect: its name, its clean end and its failure end."""

    __slots__ = ()

    #: "chat", "responses" or "messages" (what `Chain.stream_policy` and the relay are given).
    name = ""
    #: What closes a clean stream when the upstream did not send it (b"" when nothing does).
    done = b""
    #: The stream ends with `data: [DONE]`: once it is seen the answer is complete, and a connection dropped
    #: after it is no failure. Only OpenAI chat has such a sentinel.
    sentinel = False

    @abstractmethod
    def terminal_error(self, err: GatewayError, last_seq: int = -1) -> bytes:
        """How a stream of this dialect ends in failure (`last_seq`: the last Responses sequence_number sent)."""

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"


class ChatDialect(Dialect):
    """OpenAI chat completions (and legacy completions): the error envelope as a data event, then [DONE]."""

    __slots__ = ()
    name = "chat"
    done = DONE
    sentinel = True

    def terminal_error(self, err: GatewayError, last_seq: int = -1) -> bytes:
        return error_event(err) + DONE


class ResponsesDialect(Dialect):
    """OpenAI Responses API: an `error` event that continues the sequence numbers."""

    __slots__ = ()
    name = "responses"

    def terminal_error(self, err: GatewayError, last_seq: int = -1) -> bytes:
        body = orjson.loads(err.body())["error"]
        obj = {"type": "error", "code": body.get("code"), "message": body.get("message"), "param": body.get("param"),
               "sequence_number": last_seq + 1}
        if body.get("policy"):
            obj["policy"] = body["policy"]
        return encode_event(orjson.dumps(obj), event="error")


class MessagesDialect(Dialect):
    """Anthropic Messages: an `error` event with Anthropic's error object (its type by the error's status)."""

    __slots__ = ()
    name = "messages"

    def terminal_error(self, err: GatewayError, last_seq: int = -1) -> bytes:
        # Only Anthropic's own error types: its SDKs (and @ai-sdk/anthropic) lose the message on any other.
        return encode_event(orjson.dumps({"type": "error", "error": {"type": anthropic_type(err.status),
                                                                     "message": err.message}}), event="error")


CHAT = ChatDialect()
RESPONSES = ResponsesDialect()
MESSAGES = MessagesDialect()
DIALECTS: dict[str, Dialect] = {d.name: d for d in (CHAT, RESPONSES, MESSAGES)}


def dialect(name: str) -> Dialect:
    """The dialect of this name; an unknown name is a programming error (ValueError)."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown stream dialect {name!r}") from None
