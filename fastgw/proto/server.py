"""HTTP/1.1 server connection: an asyncio.Protocol on httptools with RFC 9112 checks, limits, pipelining and flow control.

The application is an `async handler(request, responder)`. One task runs per
request; pipelined requests queue and are answered strictly in order. Framing
errors answer with an error envelope and close the connection, and nothing
pipelined after the error is processed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from email.utils import formatdate
from typing import Awaitable, Callable, Protocol as TypingProtocol

import httptools

from fastgw.proto import limits
from fastgw.proto.chunked import LAST_CHUNK, write_chunk
from fastgw.proto.errors import HttpError, LimitError, ProtocolError
from fastgw.proto.framing_guard import FramingGuard

__all__ = ["Request", "Responder", "ServerLimits", "HttpServerProtocol", "ConnectionTracker", "FlowListener"]

_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 409: b"Conflict", 413: b"Content Too Large", 415: b"Unsupported Media Type",
    417: b"Expectation Failed", 422: b"Unprocessable Content", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

# Pipelined requests parsed ahead of the one being answered; beyond this we stop reading (bounded memory).
_MAX_QUEUED = 8
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# tchar (RFC 9110 §5.6.2): what a method token is made of; bytes.translate deletes them to test a token.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What a Host value (RFC 9110 §7.2: uri-host [":" port], RFC 3986 §3.2.2) is made of: reg-name (unreserved,
# pct-encoded, sub-delims), IP-literal brackets and the port colon. Anything else (space, "/", "@", "?", "#",
# controls, obs-text) is an invalid Host, refused with 400 (RFC 9112 §3.2).
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]"
# A method token still growing past this is refused (400); the longest registered method is 17 bytes.
_MAX_METHOD = 64
# Heads parsed anew per connection. Each copies the rest of its read and nests one call deeper (a
# pipelined head after it may need the same), so a client sending thousands must not get them all.
_MAX_REPLAYS = 16
# llhttp's reasons for refusing a Transfer-Encoding that may only need its OWS or empty elements removed.
_TE_REFUSALS = frozenset({"Invalid `Transfer-Encoding` header value", "Request has invalid `Transfer-Encoding`"})


def plain_error(err: HttpError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The default error body: the message as plain text."""
    return [(b"content-type", b"text/plain; charset=utf-8"), *err.headers], err.message.encode() + b"\n"


def _h2_preface() -> ProtocolError:
    # The HTTP/2 connection preface (prior knowledge, RFC 9113 §3.4): this port speaks HTTP/1.1.
    return ProtocolError("HTTP/2 is not supported on this port; use HTTP/1.1", status=505,
                         code="http_version_not_supported")


def _new_parser(proto: HttpServerProtocol) -> httptools.HttpRequestParser:
    parser = httptools.HttpRequestParser(proto)
    # llhttp refuses any version but 0.9, 1.0, 1.1 and 2.0 with a bare 400; on_headers_complete decides
    # instead (RFC 9110 §2.5: HTTP/1.x with x > 1 is HTTP/1.1, another major version is 505). The flag
    # only skips that check: the version syntax (HTTP/DIGIT.DIGIT) is still enforced.
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


def _normalize_te(head: bytes) -> bytes | None:
    """The head with each Transfer-Encoding value rewritten as its non-empty, OWS-stripped list elements
    (RFC 9110 §5.6.1: empty elements are ignored), or None when that changes nothing."""
    lines = head.split(b"\r\n")
    changed = False
    for i in range(1, len(lines)):
        name, colon, value = lines[i].partition(b":")
        if colon and name.lower() == b"transfer-encoding":
            elems = [e for e in (e.strip(b" \t") for e in value.split(b",")) if e]
            if elems:
                line = name + b": " + b", ".join(elems)
                if line != lines[i]:
                    lines[i] = line
                    changed = True
    return b"\r\n".join(lines) if changed else None


class ServerLimits:
    """Per-connection limits, taken from the `server` config section."""

    __slots__ = ("header_timeout", "keepalive_timeout", "max_header_bytes", "max_headers", "max_body_bytes",
                 "send_timeout", "body_timeout")

    def __init__(
        self,
        header_timeout: float = limits.HEADER_TIMEOUT,
        keepalive_timeout: float = limits.KEEPALIVE_TIMEOUT,
        max_header_bytes: int = limits.MAX_HEADER_BYTES,
        max_headers: int = limits.MAX_HEADERS,
        max_body_bytes: int = limits.MAX_BODY_BYTES,
        send_timeout: float = limits.SEND_TIMEOUT,
        body_timeout: float = limits.BODY_TIMEOUT,
    ) -> None:
        self.body_timeout = body_timeout
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.send_timeout = send_timeout


class Request:
    """One parsed request. Header names are lower-cased bytes; values are raw bytes."""

    __slots__ = ("method", "target", "path", "query", "headers", "body", "version", "keep_alive", "seq")

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                 version: str, keep_alive: bool) -> None:
        self.method = method
        if target[:7] == b"http://" or target[:8] == b"https://":
            # Absolute form (RFC 9112 §3.2.2: a server MUST accept it): route by its path.
            slash = target.find(b"/", target.find(b"//") + 2)
            target = target[slash:] if slash > 0 else b"/"
        self.target = target
        q = target.find(b"?")
        self.path = (target if q < 0 else target[:q]).decode("latin-1")
        self.query = b"" if q < 0 else target[q + 1:]
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.seq = 0

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (name lower-case), or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


class FlowListener(TypingProtocol):
    """What a response producer implements to follow the client's write buffer and lifetime."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def client_lost(self) -> None: ...


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
            self.value = formatdate(now, usegmt=True).encode()
        return self.value


_date = _Date()


def _valid_header_value(v: bytes) -> bool:
    # aiohttp's rule: no CR, LF or NUL in an outgoing header (no header injection). Int membership is a
    # memchr; the one-byte-bytes needle form costs several times more on short values.
    return 13 not in v and 10 not in v and 0 not in v


class Responder:
    """Writes one response: whole (`send`) or streamed with chunked framing (`start_stream`, `write`, `end`).

    The head goes out with the first chunk in one loop iteration (uvloop coalesces the writes).
    An HTTP/1.0 client (`chunked=False`) cannot read chunked framing (RFC 9112 §6.1: a server MUST NOT
    send Transfer-Encoding unless the request is HTTP/1.1 or later): its stream is delimited by closing
    the connection instead.
    """

    __slots__ = ("_proto", "_transport", "_head", "keep_alive", "started", "finished", "streaming", "_head_only",
                 "status", "bytes_sent", "first_write", "extra_headers", "_chunked")

    def __init__(self, proto: HttpServerProtocol, keep_alive: bool, head_only: bool, chunked: bool = True) -> None:
        self._chunked = chunked
        self._proto = proto
        self._transport = proto.transport
        self._head: bytes | None = None
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

    # --- head -------------------------------------------------------------------------
    def _build_head(self, status: int, headers: list[tuple[bytes, bytes]], extra: bytes) -> bytes:
        if self._proto.closing_after_response:
            self.keep_alive = False
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
                 b"date: ", _date.get(), b"\r\nserver: fastgw\r\n"]
        for name, value in (*headers, *self.extra_headers):
            if not _valid_header_value(value) or not _valid_header_value(name):
                raise ValueError(f"invalid header {name!r}")
            parts += (name, b": ", value, b"\r\n")
        parts.append(extra)
        parts.append(b"connection: keep-alive\r\n\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        self.status = status
        return b"".join(parts)

    # --- whole responses --------------------------------------------------------------
    def send(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send a complete response with Content-Length."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        head = self._build_head(status, headers, b"content-length: %d\r\n" % len(body))
        self.first_write = time.monotonic()
        t = self._transport
        if t is not None and not t.is_closing():
            if self._head_only or not body:
                t.write(head)
            else:
                t.writelines((head, body))  # one writev: head and body in one segment
            self.bytes_sent += len(body)
        self._finish()

    def send_error(self, err: HttpError) -> None:
        """Answer with the error's status and the body the layer above renders for it."""
        if err.close:
            self.keep_alive = False
        headers, body = self._proto.render_error(err)
        self.send(err.status, headers, body)

    # --- streamed responses ----------------------------------------------------------
    def start_stream(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Prepare a chunked response; the head is written together with the first chunk."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.streaming = True
        if self._chunked:
            self._head = self._build_head(status, headers, b"transfer-encoding: chunked\r\n")
        else:
            if not self._head_only:
                self.keep_alive = False  # the end of the body is the end of the connection
            self._head = self._build_head(status, headers, b"")

    @property
    def head_pending(self) -> bool:
        """A stream was started but nothing has been written yet: it can still become another response."""
        return self.streaming and self._head is not None

    def unstart(self) -> None:
        """Forget a stream whose head was never written, so an error response can be sent instead."""
        if not self.head_pending:
            raise RuntimeError("response bytes already sent")
        self._head = None
        self.started = self.streaming = False

    def write(self, data: bytes) -> None:
        """Write one chunk (empty data writes nothing, except a pending head)."""
        t = self._transport
        if t is None or t.is_closing():
            return
        head = self._head
        if head is not None:
            self._head = None
            self.first_write = time.monotonic()
            if self._head_only or not data:
                t.write(head)
                return
            # The head goes out with the first chunk: one writev, no extra round trip for the client.
            if self._chunked:
                t.writelines((head, b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                t.writelines((head, data))
            self.bytes_sent += len(data)
            return
        if data and not self._head_only:
            if self._chunked:
                write_chunk(t.writelines, data)
            else:
                t.write(data)
            self.bytes_sent += len(data)

    def end(self, data: bytes = b"") -> None:
        """Write `data` as a last chunk (if any) and the terminator in one writev, and finish the response."""
        t = self._transport
        if t is not None and not t.is_closing():
            head = self._head
            self._head = None
            if head is not None:
                self.first_write = time.monotonic()
            if self._head_only:
                if head is not None:
                    t.write(head)
            elif not self._chunked:
                # No terminator: closing the connection (after_response) ends the body.
                self.bytes_sent += len(data)
                if head is not None:
                    t.writelines((head, data) if data else (head,))
                elif data:
                    t.write(data)
            else:
                parts: tuple[bytes, ...] = (LAST_CHUNK,)
                if data:
                    parts = (b"%x\r\n" % len(data), data, b"\r\n", LAST_CHUNK)
                    self.bytes_sent += len(data)
                t.writelines(parts if head is None else (head, *parts))
        self._finish()

    def abort(self) -> None:
        """Cut the connection (a response that cannot be completed must not look complete)."""
        self.keep_alive = False
        self.finished = True
        t = self._transport
        if t is not None:
            t.abort()

    def _finish(self) -> None:
        self.finished = True

    # --- flow ---------------------------------------------------------------------------
    def set_listener(self, listener: FlowListener | None) -> None:
        """Route the client's pause/resume/lost notifications to a producer (e.g. an upstream relay)."""
        self._proto.flow_listener = listener
        if listener is not None and self._proto.write_paused:
            listener.pause()

    @property
    def client_gone(self) -> bool:
        return self._proto.lost

    @property
    def write_paused(self) -> bool:
        return self._proto.write_paused

    async def drain(self) -> None:
        """Wait until the client's write buffer is below the low watermark (or the client is gone)."""
        await self._proto.drain()


Handler = Callable[[Request, Responder], Awaitable[None]]


class ConnectionTracker:
    """The set of live connections of one worker, for graceful drain."""

    __slots__ = ("conns", "requests_in_flight", "_idle_waiters")

    def __init__(self) -> None:
        self.conns: set[HttpServerProtocol] = set()
        self.requests_in_flight = 0
        self._idle_waiters: list[asyncio.Future[None]] = []

    def shutdown(self, linger: bool = False) -> None:
        """Every connection closes after its current response. Idle ones close now, or with `linger` (a
        reload) stay open until their next request, which is answered with `Connection: close`: closing an
        idle keep-alive connection races a client that is sending on it at that moment."""
        for c in list(self.conns):
            if linger:
                c.closing_after_response = True
            else:
                c.close_when_idle()

    def discard(self, conn: HttpServerProtocol) -> None:
        self.conns.discard(conn)
        if not self.conns:
            for w in self._idle_waiters:
                if not w.done():
                    w.set_result(None)
            self._idle_waiters.clear()

    async def wait_closed(self) -> None:
        if not self.conns:
            return
        fut = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(fut)
        await fut


class HttpServerProtocol(asyncio.Protocol):
    """One client connection."""

    # ---- construction -----------------------------------------------------------
    def __init__(self, handler: Handler, lim: ServerLimits, tracker: ConnectionTracker,
                 loop: asyncio.AbstractEventLoop | None = None, on_error: Callable[[BaseException], None] | None = None,
                 render_error: Callable[[HttpError], tuple[list[tuple[bytes, bytes]], bytes]] | None = None) -> None:
        self._handler = handler
        #: How an error becomes headers and a body: the API layer's envelope (proto knows none of its own).
        self.render_error = render_error or plain_error
        self._lim = lim
        self._tracker = tracker
        self._loop = loop or asyncio.get_event_loop()
        self._on_error = on_error
        self.transport: asyncio.Transport | None = None
        self._parser = _new_parser(self)
        self._guard = FramingGuard(max_trailer_bytes=lim.max_header_bytes)
        # connection state
        self._queue: deque[Request | HttpError] = deque()
        self._current: asyncio.Task[None] | None = None
        self._failed = False  # a framing error was seen: ignore everything after it
        self.lost = False
        self.closing_after_response = False
        self.write_paused = False
        self.flow_listener: FlowListener | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0  # loop time of the last body byte
        # per-request state
        self._in_head = False
        self._in_message = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._expect_continue = False
        self._heads = 0  # request heads accepted on this connection (sequence numbers)
        self._hc = False  # on_headers_complete accepted the current message's head
        self._version = "1.1"  # of the current message, as on_headers_complete settled it
        self._continue_seq = -1  # sequence number of the last head answered with 100 Continue
        # a head llhttp refused, collected until it can be answered or parsed anew (see _recover)
        self._replay: bytearray | None = None
        self._replay_kind = ""
        self._replay_reason = ""
        self._replays = 0  # heads parsed anew on this connection (bounded: each copies the rest of its read)

    # ---- asyncio.Protocol interface -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=limits.WRITE_HIGH_WATER, low=limits.WRITE_LOW_WATER)  # type: ignore[attr-defined]
        self._tracker.conns.add(self)
        self._header_timer = self._loop.call_later(self._lim.header_timeout, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._tracker.discard(self)
        for t in (self._header_timer, self._keepalive_timer, self._send_timer, self._body_timer):
            if t is not None:
                t.cancel()
        self._queue.clear()
        listener = self.flow_listener
        if listener is not None:
            self.flow_listener = None
            listener.client_lost()
        elif self._current is not None and not self._current.done():
            # Nobody will read the answer: stop waiting on the upstream (and its bill) now.
            self._current.cancel()
        self._wake_drain()

    def eof_received(self) -> bool | None:
        # The client closed its side. HTTP clients do not half-close to wait for an answer; an SSE client
        # that hangs up sends exactly this FIN, and the upstream must stop generating (and billing) now.
        return None  # the transport closes; connection_lost cancels what is in flight

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.flow_listener is not None:
            self.flow_listener.pause()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._lim.send_timeout, self._on_send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self.flow_listener is not None:
            self.flow_listener.resume()
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        if self._replay is None:
            self._feed(data, data)
        else:
            self._replay += data
            self._resume_replay()
        self._maybe_start()
        if len(self._queue) >= _MAX_QUEUED and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _feed(self, data: bytes, raw: bytes) -> None:
        """Parse `data`; `raw` is the same bytes as received (they differ only in a head parsed anew, see
        `_resume_replay`), which the guard follows."""
        try:
            self._parser.feed_data(data)
            try:
                self._guard.feed(raw)
            except ProtocolError:
                self._forget_from_guard_error()
                if self._in_head and self._parser.get_method() == b"PRI":
                    # llhttp holds the HTTP/2 preface's head until the "SM" line; the guard saw it end first.
                    raise _h2_preface() from None
                raise
            if self._guard.head_bytes > self._lim.max_header_bytes:
                # httptools buffers a header name/value until it ends: bound that buffer too.
                raise LimitError("request headers exceed %d bytes" % self._lim.max_header_bytes,
                                 status=431, code="request_header_fields_too_large")
        except httptools.HttpParserUpgrade:
            # We speak HTTP/1.1 only: answer the request as plain HTTP, then close (RFC 9110 §7.8: ignoring
            # Upgrade is allowed). Nothing after the head is read.
            self._failed = True
            self.closing_after_response = True
        except HttpError as e:
            self._fail(e)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            self._fail(ctx if isinstance(ctx, HttpError) else ProtocolError(f"malformed request: {e}"))
        except httptools.HttpParserInvalidMethodError as e:
            # llhttp knows a fixed list of methods: a well-formed unknown one deserves 501, garbage 400.
            self._recover("method", e, raw)
        except httptools.HttpParserError as e:
            reason = str(e)
            if reason in _TE_REFUSALS:
                self._recover("te", e, raw)
            elif reason.startswith("Invalid method for"):
                # An RTSP method (DESCRIBE, SETUP, ...) in an HTTP request: a method token we do not implement.
                self._fail(ProtocolError(f"method not implemented: {reason}", status=501, code="not_implemented"))
            elif reason.startswith("Pause on PRI"):
                self._fail(_h2_preface())
            else:
                self._fail(ProtocolError(f"malformed request: {e}"))

    def _forget_from_guard_error(self) -> None:
        # httptools accepted what the guard refuses: forget requests from the faulty one on.
        bad = self._heads - self._guard.unreached - 1
        while self._queue and isinstance(self._queue[-1], Request) and self._queue[-1].seq >= bad:
            self._queue.pop()

    # ---- heads llhttp refuses that deserve a better answer than 400 ----------------------------------
    #
    # llhttp (strict) refuses an unknown method at its first byte that matches no method it knows, and a
    # Transfer-Encoding value with trailing whitespace or empty list elements ("chunked\t", "chunked, ").
    # RFC 9110 §9.1 wants 501 for a well-formed method the server does not implement, and §5.6.1 /
    # §5.5 make "chunked, " and "chunked<TAB>" mean exactly "chunked". httptools reports no error offset,
    # so the guard finds the refused head (`FramingGuard.failed_head`); its bytes are collected in
    # `_replay` until they decide (the method token up to its SP; the whole head for Transfer-Encoding).
    #
    # Accepting the normalised Transfer-Encoding is safe against request smuggling: it is parsed again by
    # a fresh llhttp with every strict check (chunked final and once, no Content-Length beside it, strict
    # chunk-size lines), so the body length is exactly what an RFC-conforming front end computes for the
    # same bytes. A front end that instead ignores the header and treats the body as the next request
    # cannot smuggle through us either: those bytes must then parse as chunk-size lines, which no request
    # line does (a method token is followed by SP, which a chunk-size line refuses).

    def _recover(self, kind: str, err: Exception, raw: bytes) -> None:
        announced = self._hc
        try:
            head = self._guard.failed_head(raw, announced)
        except ProtocolError as e:  # an earlier message in this read broke a guard limit: that answers first
            self._forget_from_guard_error()
            self._fail(e)
            return
        if head is None or (kind == "te" and self._replays >= _MAX_REPLAYS):
            self._fail(ProtocolError(f"malformed request: {err}"))
            return
        if announced:
            # on_headers_complete counted the refused head; it will be counted again when parsed anew.
            self._heads -= 1
            self._hc = False
        self._replay = bytearray(head)
        self._replay_kind = kind
        self._replay_reason = str(err)
        self._resume_replay()

    def _resume_replay(self) -> None:
        buf = self._replay
        assert buf is not None
        if self._replay_kind == "method":
            sp = buf.find(b" ")
            token = bytes(buf if sp < 0 else buf[:sp])
            if not token or token.translate(None, _TCHAR):
                self._fail(ProtocolError(f"malformed request: {self._replay_reason}"))
            elif sp >= 0:
                self._fail(ProtocolError("method %r is not implemented" % token.decode("latin-1"), status=501,
                                         code="not_implemented"))
            elif len(token) > _MAX_METHOD:
                self._fail(ProtocolError("request method longer than %d bytes" % _MAX_METHOD))
            return  # else the token goes on in the next read
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self._lim.max_header_bytes:
                self._fail(LimitError("request headers exceed %d bytes" % self._lim.max_header_bytes, status=431,
                                      code="request_header_fields_too_large"))
            return
        raw = bytes(buf)
        fixed = _normalize_te(raw[:end + 4])
        if fixed is None:  # nothing to normalise: llhttp's refusal stands
            self._fail(ProtocolError(f"malformed request: {self._replay_reason}"))
            return
        self._replay = None
        self._replays += 1
        self._parser = _new_parser(self)  # the refused one is in its error state for good
        self._feed(fixed + raw[end + 4:], raw)

    # ---- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._in_message = True
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._body = []
        self._body_size = 0
        self._expect_continue = False
        self._hc = False
        if self._header_timer is None:
            self._header_timer = self._loop.call_later(self._lim.header_timeout, self._on_header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self._lim.max_header_bytes:
            raise LimitError("request line too long", status=414 if len(self._headers) == 0 else 431,
                             code="uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer field (after a chunked body): RFC 9110 §6.5.1 forbids merging it into the header
            # section, where it would reach the application as a header no front end ever saw (an
            # Authorization or X-Forwarded-For smuggled past a proxy that checks headers). Nothing here
            # uses trailers, so they are discarded; the framing guard bounds their size.
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._lim.max_header_bytes:
            raise LimitError("request headers exceed %d bytes" % self._lim.max_header_bytes, status=431,
                             code="request_header_fields_too_large")
        if len(self._headers) >= self._lim.max_headers:
            raise LimitError("more than %d request headers" % self._lim.max_headers, status=431,
                             code="request_header_fields_too_large")
        # Optional whitespace around a value is not part of it (RFC 9110 §5.5); llhttp keeps trailing OWS.
        self._headers.append((name.lower(), value.rstrip(b" \t") if value[-1:] in (b" ", b"\t") else value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        version = self._parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version == "0.9":
                # llhttp reports a version-less request line ("GET /", HTTP/0.9's simple request) as 0.9.
                raise ProtocolError("HTTP/0.9 requests are not supported", code="unsupported_http_version")
            if version[0] != "1":
                # RFC 9110 §15.6.6: 505 refuses the request's major version.
                raise ProtocolError(f"HTTP/{version} is not supported on this port; use HTTP/1.1", status=505,
                                    code="http_version_not_supported")
            # RFC 9110 §2.5: a higher minor version of a major version we implement is processed as the
            # highest minor version we conform to (and answered with HTTP/1.1, as every response is).
            version = "1.1"
        self._version = version
        te: bytes | None = None
        cl: bytes | None = None
        hosts = 0
        host = b""
        expect: bytes | None = None
        for n, v in self._headers:
            if n == b"transfer-encoding":
                te = v if te is None else te + b"," + v
            elif n == b"content-length":
                cl = v
            elif n == b"host":
                hosts += 1
                host = v
            elif n == b"expect":
                expect = v
        # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any request with more than one
        # Host line or an invalid Host value.
        if hosts > 1:
            raise ProtocolError("duplicate Host header", code="bad_host")
        if hosts == 0:
            if version == "1.1":
                raise ProtocolError("HTTP/1.1 requires exactly one Host header", code="bad_host")
        elif host.translate(None, _HOST_CHARS):
            raise ProtocolError("invalid Host header", code="bad_host")
        chunked = False
        if te is not None:
            if version == "1.0":
                # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
                raise ProtocolError("Transfer-Encoding is not allowed in HTTP/1.0", code="bad_transfer_encoding")
            codings = [c.strip().lower() for c in te.split(b",") if c.strip()]
            if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
                raise ProtocolError("chunked must be the final transfer coding, once", code="bad_transfer_encoding")
            if len(codings) > 1:
                raise ProtocolError("unsupported transfer coding %r" % codings[0].decode("latin-1"), status=501,
                                    code="unsupported_transfer_encoding")
            chunked = True
        length: int | None = None
        if cl is not None:
            # llhttp has validated digits-only and rejected duplicates and CL+TE.
            length = int(cl)
            if length > self._lim.max_body_bytes:
                raise LimitError("request body exceeds %d bytes" % self._lim.max_body_bytes, status=413,
                                 code="request_too_large")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise ProtocolError("unsupported Expect", status=417, code="expectation_failed")
            if version == "1.1" and (chunked or (length or 0) > 0):
                self._expect_continue = True
        self._guard.push_framing(chunked, length)
        self._heads += 1
        self._hc = True
        if chunked or (length or 0) > 0:
            # One timer per body, rescheduled only when it fires: on_body just notes the time.
            self._body_at = self._loop.time()
            if self._body_timer is None:
                self._body_timer = self._loop.call_later(self._lim.body_timeout, self._on_body_timeout)
        if (self._expect_continue and self._current is None and not self._queue and self.transport is not None
                and self._continue_seq != self._heads - 1):  # (once: a head parsed anew comes here twice)
            # RFC 9110 §10.1.1: only promise to read the body when we are about to.
            self._continue_seq = self._heads - 1
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_at = self._loop.time()
        self._body_size += len(body)
        if self._body_size > self._lim.max_body_bytes:
            raise LimitError("request body exceeds %d bytes" % self._lim.max_body_bytes, status=413,
                             code="request_too_large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        parser = self._parser
        method = parser.get_method().decode("ascii", "replace")
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        req = Request(method, url, self._headers, body, self._version, parser.should_keep_alive())
        req.seq = self._heads - 1
        self._body = []
        self._queue.append(req)

    # ---- request dispatch -------------------------------------------------------------
    def _fail(self, err: HttpError) -> None:
        """A framing error: answer it in order, then close; nothing after it is processed."""
        self._failed = True
        err.close = True
        self._queue.append(err)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _maybe_start(self) -> None:
        if self._current is not None or not self._queue or self.lost:
            return
        item = self._queue.popleft()
        self._tracker.requests_in_flight += 1
        if isinstance(item, HttpError):
            resp = Responder(self, keep_alive=False, head_only=False)
            resp.send_error(item)
            self._tracker.requests_in_flight -= 1
            self._close()
            return
        keep_alive = item.keep_alive and not self.closing_after_response
        resp = Responder(self, keep_alive, head_only=item.method == "HEAD", chunked=item.version != "1.0")
        self._current = self._loop.create_task(self._run(item, resp))

    async def _run(self, req: Request, resp: Responder) -> None:
        try:
            await self._handler(req, resp)
            if not resp.finished and not resp.started:
                resp.send_error(HttpError("handler produced no response", code="internal_error"))
            elif not resp.finished:
                resp.end()
        except asyncio.CancelledError:
            resp.abort()
            raise
        except HttpError as e:
            if not resp.started:
                resp.send_error(e)
            else:
                resp.abort()
        except Exception as e:  # a bug must cost one request, never the worker
            if self._on_error is not None:
                self._on_error(e)
            if not resp.started:
                resp.send_error(HttpError("internal error", code="internal_error"))
            else:
                resp.abort()
        finally:
            self._tracker.requests_in_flight -= 1
            self._current = None
            self.flow_listener = None
            self._after_response(resp)

    def _after_response(self, resp: Responder) -> None:
        if not resp.keep_alive or self.lost or self.closing_after_response:
            self._close()
            return
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        if self._queue:
            self._maybe_start()
        elif not self._in_message:
            self._keepalive_timer = self._loop.call_later(self._lim.keepalive_timeout, self._on_keepalive_timeout)

    @property
    def _idle(self) -> bool:
        """No response in flight, none queued, no request being received."""
        return self._current is None and not self._queue and not self._in_message

    def _close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def close_when_idle(self) -> None:
        """Graceful drain: close now if idle, else after the response in flight."""
        self.closing_after_response = True
        if self._idle:
            self._close()

    # ---- timers ---------------------------------------------------------------------------
    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self._failed or self.lost:
            return
        if not self._in_message and (self._current is not None or self._queue):
            return  # busy answering; the head clock starts when the next request begins
        if not self._in_message:
            self._close()  # connected but sent nothing: no one to answer
            return
        self._fail(LimitError("request headers not received within %gs" % self._lim.header_timeout,
                              status=408, code="request_timeout"))
        self._maybe_start()

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        if self._failed or self.lost or not self._in_message:
            return
        idle = self._loop.time() - self._body_at
        if idle < self._lim.body_timeout:
            self._body_timer = self._loop.call_later(self._lim.body_timeout - idle, self._on_body_timeout)
            return
        self._fail(LimitError("request body stalled for %gs" % self._lim.body_timeout, status=408,
                              code="request_timeout"))
        self._maybe_start()

    def _on_keepalive_timeout(self) -> None:
        self._keepalive_timer = None
        if self._idle:
            self._close()

    def _on_send_timeout(self) -> None:
        # The client stopped reading: holding its buffer forever would let it pin memory.
        self._send_timer = None
        if self.transport is not None:
            self.transport.abort()

    # ---- flow --------------------------------------------------------------------------
    async def drain(self) -> None:
        if not self.write_paused or self.lost:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await self._drain_waiter

    def _wake_drain(self) -> None:
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        self._drain_waiter = None
