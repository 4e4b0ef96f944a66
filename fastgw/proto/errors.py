"""HTTP-level errors: what `proto` raises for framing and limit violations, with the status to answer.

`proto` knows no API's error envelope. The layer above renders the body (the
server shell takes a `render_error` hook); the default renders plain text.
Like h11's `ProtocolError.error_status_hint`, each error carries the status to
answer with; `close` says the byte stream can no longer be trusted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastgw.proto.h1 import ReaderEvent, ReaderState, Request

__all__ = ["HttpError", "ProtocolError", "LimitError", "StateError", "overloaded"]


class HttpError(Exception):
    """An error that becomes an HTTP answer: a status, a short machine-readable code and a message."""

    status: int = 500
    code: str | None = None
    #: Close the connection after answering (framing errors: the byte stream can no longer be trusted).
    close: bool = False
    #: The request whose head was read when the error struck (method, path, headers for the access log), if any.
    request: Request | None = None
    #: Bytes to send instead of an HTTP/1.1 response (an HTTP/2 GOAWAY to an h2 client), if any.
    raw: bytes | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 close: bool | None = None, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if close is not None:
            self.close = close
        self.headers = headers or []


class ProtocolError(HttpError):
    """The peer broke HTTP/1.1 (or SSE, NDJSON, event-stream) framing; the connection is not reusable after it."""

    status = 400
    code = "bad_request"
    close = True


class LimitError(ProtocolError):
    """A configured size or time limit was exceeded (413, 414, 431, 408)."""


def overloaded(message: str) -> HttpError:
    """503 with Retry-After, then close: the worker is at a capacity limit (connections, buffered bodies).
    Not a ProtocolError: the request was fine and retrying later is the right thing to do."""
    return HttpError(message, status=503, code="server_overloaded", close=True, headers=[(b"retry-after", b"1")])


class StateError(RuntimeError):
    """An event the current state does not allow: a bug in the reader or its shell, never the peer's doing."""

    def __init__(self, state: ReaderState, event: ReaderEvent) -> None:
        super().__init__(f"can't handle event {event.name} in state {state.name}")
        self.state = state
        self.event = event
