"""One error hierarchy for the gateway: every HTTP-facing error knows its status and renders as an OpenAI-style envelope.

`proto` raises these for framing and limit violations; higher layers subclass
`GatewayError` for routing, upstream and policy failures. The envelope shape is
the one the OpenAI SDKs parse: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import orjson

__all__ = ["GatewayError", "ProtocolError", "LimitError", "envelope"]


def envelope(message: str, type_: str, code: str | None = None, param: str | None = None,
             extra: dict | None = None) -> bytes:
    """Render an OpenAI-style error envelope as JSON bytes (`extra` adds fields such as the policy name)."""
    err = {"message": message, "type": type_, "param": param, "code": code}
    if extra:
        err.update(extra)
    return orjson.dumps({"error": err})


class GatewayError(Exception):
    """An error that becomes an HTTP answer (or an in-stream error event once streaming)."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    #: Close the connection after answering (framing errors: the byte stream can no longer be trusted).
    close: bool = False
    #: Retrying the same request cannot help: tells SDKs not to retry (x-should-retry: false).
    no_retry: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        close: bool | None = None,
        no_retry: bool | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        if close is not None:
            self.close = close
        if no_retry is not None:
            self.no_retry = no_retry
        self.param = param
        self.headers = headers or []
        self.extra = extra

    def body(self) -> bytes:
        return envelope(self.message, self.type, self.code, self.param, self.extra)


class ProtocolError(GatewayError):
    """The peer broke HTTP/1.1 (or SSE) framing; the connection is not reusable after it."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request"
    close = True
    no_retry = True


class LimitError(ProtocolError):
    """A configured size or time limit was exceeded (413, 431, 408)."""
