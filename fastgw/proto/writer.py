"""HTTP/1.1 response writer: the head (status line, date, server, checked headers, connection) and body framing.

`Responder` is what the application writes one response through: whole with Content-Length (`send`)
or streamed (`start_stream`, `write`, `end`), framed chunked (`chunked.CHUNKED`) or, for an HTTP/1.0
client, delimited by closing the connection (`CLOSE_DELIMITED`). The head is held until the first write
and goes out with it in one writelines; the last bytes and the terminator go in one writelines too.
No socket or loop here: it writes to anything with `write`/`writelines`/`is_closing`/`abort` and reads
the connection's flow state (`flow.FlowControl`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Final, Protocol

from fastgw.proto.chunked import CHUNKED, ChunkedWriter, Writelines
from fastgw.proto.errors import HttpError

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call

if TYPE_CHECKING:
    from fastgw.proto.flow import FlowControl, FlowListener

__all__ = ["Responder", "build_head", "build_head_py", "http_date", "plain_error", "CloseDelimitedWriter",
           "CLOSE_DELIMITED", "RenderError", "CONTINUE"]

_REASONS: Final = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 413: b"Content Too Large", 415: b"Unsupported Media Type",
    417: b"Expectation Failed", 422: b"Unprocessable Content", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

#: The interim response to `Expect: 100-continue` (RFC 9110 §10.1.1).
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

#: How an error becomes headers and a body (the API layer passes its envelope; the default is plain text).
RenderError = Callable[[HttpError], "tuple[list[tuple[bytes, bytes]], bytes]"]


def plain_error(err: HttpError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The default error body: the message as plain text."""
    return [(b"content-type", b"text/plain; charset=utf-8"), *err.headers], err.message.encode() + b"\n"


_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(unix: float) -> str:
    """RFC 9110's IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), English names whatever the locale. Written here,
    not `email.utils.formatdate`: the email package is 0.4 MB of every worker's RSS, for this one line."""
    t = time.gmtime(unix)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class _Date:
    """The Date header value, formatted at most once per second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = http_date(now).encode()
        return self.value


_date: Final = _Date()


def _valid_header_value(v: bytes) -> bool:
    # aiohttp's rule: no CR, LF or NUL in an outgoing header (no header injection). Int membership is a
    # memchr; the one-byte-bytes needle form costs several times more on short values.
    return 13 not in v and 10 not in v and 0 not in v


def build_head_py(status: int, headers: list[tuple[bytes, bytes]], extra_headers: list[tuple[bytes, bytes]],
                  framing: bytes, keep_alive: bool) -> bytes:
    """`build_head` in Python: the form used where `_headc` is not built, and for what only it takes (any pairs)."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
             b"date: ", _date.get(), b"\r\nserver: fastgw\r\n"]
    for name, value in (*headers, *extra_headers):
        if not _valid_header_value(value) or not _valid_header_value(name):
            raise ValueError(f"invalid header {name!r}")
        parts += (name, b": ", value, b"\r\n")
    parts.append(framing)
    parts.append(b"connection: keep-alive\r\n\r\n" if keep_alive else b"connection: close\r\n\r\n")
    return b"".join(parts)


def _load_c() -> Any:
    """fastgw.proto._headc (why C: its head comment), or None where it is not built (a checkout without `make`)."""
    try:
        from fastgw.proto import _headc
    except ImportError:
        return None
    return _headc


#: The C head (`_headc.head`), or None: `build_head_py` writes every head.
_c_head: Final[Any] = getattr(_load_c(), "head", None)


def build_head(status: int, headers: list[tuple[bytes, bytes]], extra_headers: list[tuple[bytes, bytes]],
               framing: bytes, keep_alive: bool) -> bytes:
    """One response head; `framing` is the Content-Length or Transfer-Encoding line (or nothing).
    A header name or value with CR, LF or NUL raises ValueError (no header injection)."""
    if _c_head is not None:
        head = _c_head(status, _REASONS.get(status, b"Unknown"), headers, extra_headers, framing, keep_alive)
        if head is not None:
            return head
    return build_head_py(status, headers, extra_headers, framing, keep_alive)


class CloseDelimitedWriter:
    """HTTP/1.0 body framing: the bytes as they are; closing the connection ends the body (RFC 9112 §6.3 item 8)."""

    __slots__ = ()

    header = b""

    def data(self, writelines: Writelines, data: bytes) -> None:
        if data:
            writelines((data,))

    def first(self, writelines: Writelines, head: bytes, data: bytes) -> None:
        writelines((head, data))

    def last(self, writelines: Writelines, data: bytes, head: bytes | None) -> None:
        if head is not None:
            writelines((head, data) if data else (head,))
        elif data:
            writelines((data,))


CLOSE_DELIMITED: Final = CloseDelimitedWriter()


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def writelines(self, data: tuple[bytes, ...]) -> None: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...


class Responder:
    """Writes one response: whole (`send`) or streamed (`start_stream`, `write`, `end`).

    An HTTP/1.0 client (`chunked=False`) cannot read chunked framing (RFC 9112 §6.1: a server MUST NOT
    send Transfer-Encoding unless the request is HTTP/1.1 or later): its stream is delimited by closing
    the connection instead.
    """

    __slots__ = ("_transport", "_flow", "_render", "_body", "_head", "keep_alive", "started", "finished",
                 "streaming", "_head_only", "status", "bytes_sent", "first_write", "extra_headers", "_writelines")

    def __init__(self, transport: _Transport, flow: FlowControl, keep_alive: bool, head_only: bool,
                 chunked: bool = True, render_error: RenderError = plain_error) -> None:
        self._transport = transport
        self._flow = flow
        self._render = render_error
        self._body: ChunkedWriter | CloseDelimitedWriter = CHUNKED if chunked else CLOSE_DELIMITED
        self._head: bytes | None = None
        #: Whether the connection stays open after this response (the shell clears it for a drain).
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.streaming = False
        self._head_only = head_only
        self.status = 0
        self.bytes_sent = 0
        #: When the first byte of the response was handed to the socket (monotonic), for timing records.
        self.first_write: float | None = None
        #: Headers every response of this request carries, whatever path answers it (e.g. x-request-id).
        self.extra_headers: list[tuple[bytes, bytes]] = []
        #: A stream's `transport.writelines`, bound at its first write rather than once an event.
        self._writelines: Writelines | None = None

    # --- whole responses --------------------------------------------------------------
    def send(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send a complete response with Content-Length."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        head = build_head(status, headers, self.extra_headers, b"content-length: %d\r\n" % len(body),
                          self.keep_alive)
        self.status = status
        self.first_write = _monotonic()
        t = self._transport
        if t is not None and not t.is_closing():
            if self._head_only or not body:
                t.write(head)
            else:
                t.writelines((head, body))  # one writev: head and body in one segment
            self.bytes_sent += len(body)
        self.finished = True

    def send_error(self, err: HttpError) -> None:
        """Answer with the error's status and the body the layer above renders for it."""
        if err.close:
            self.keep_alive = False
        headers, body = self._render(err)
        self.send(err.status, headers, body)

    # --- streamed responses ----------------------------------------------------------
    def start_stream(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Prepare a streamed response; the head is written together with the first chunk."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.streaming = True
        self._flow.limit_send_buffer()  # bounds what a client that reads nothing makes us relay and keep
        if self._body is CLOSE_DELIMITED and not self._head_only:
            self.keep_alive = False  # the end of the body is the end of the connection
        self._head = build_head(status, headers, self.extra_headers, self._body.header, self.keep_alive)
        self.status = status

    @property
    def head_pending(self) -> bool:
        """A stream was started but nothing has been written yet: it can still become another response."""
        return self.streaming and self._head is not None

    def write(self, data: bytes) -> None:
        """Write one chunk (empty data writes nothing, except a pending head)."""
        t = self._transport
        if t is None or t.is_closing():
            return
        writelines = self._writelines
        if writelines is None:
            writelines = self._writelines = t.writelines
        head = self._head
        if head is not None:
            self._head = None
            self.first_write = _monotonic()
            if self._head_only or not data:
                t.write(head)
                return
            self._body.first(writelines, head, data)
            self.bytes_sent += len(data)
            return
        if data and not self._head_only:
            self._body.data(writelines, data)
            self.bytes_sent += len(data)

    def end(self, data: bytes = b"") -> None:
        """Write `data` (if any) and the terminator in one writev, and finish the response."""
        t = self._transport
        if t is not None and not t.is_closing():
            head = self._head
            self._head = None
            if head is not None:
                self.first_write = _monotonic()
            if self._head_only:
                if head is not None:
                    t.write(head)
            else:
                self._body.last(t.writelines, data, head)
                self.bytes_sent += len(data)
        self.finished = True

    def abort(self) -> None:
        """Cut the connection (a response that cannot be completed must not look complete)."""
        self.keep_alive = False
        self.finished = True
        t = self._transport
        if t is not None:
            t.abort()

    # --- flow ---------------------------------------------------------------------------
    def set_listener(self, listener: FlowListener | None) -> None:
        """Route the client's pause/resume/lost notifications to a producer (e.g. an upstream relay)."""
        self._flow.set_listener(listener)

    @property
    def client_gone(self) -> bool:
        return self._flow.lost

    @property
    def write_paused(self) -> bool:
        return self._flow.write_paused

    async def drain(self) -> None:
        """Wait until the client's write buffer is below the low watermark (or the client is gone)."""
        await self._flow.drain()
