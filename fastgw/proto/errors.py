"""HTTP-level errors: what `proto` raises for framing and limit violations, with the status to answer.

`proto` knows no API's error envelope. The layer above renders the body (the
server shell takes a `render_error` hook); the default renders plain text.
Like h11's `ProtocolError.error_status_hint`, each error carries the status to
answer with; `close` says the byte stream can no longer be trusted.
"""

from __future__ import annotations

__all__ = ["HttpError", "ProtocolError", "LimitError"]


class HttpError(Exception):
    """An error that becomes an HTTP answer: a status, a short machine-readable code and a message."""

    status: int = 500
    code: str | None = None
    #: Close the connection after answering (framing errors: the byte stream can no longer be trusted).
    close: bool = False

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
