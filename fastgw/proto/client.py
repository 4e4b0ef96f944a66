"""Upstream HTTP/1.1 client: a raw asyncio.Protocol on httptools' response parser, and a per-worker keep-alive pool.

Hand-written rather than aiohttp/httpx because the relay needs the body as raw
bytes pushed into a callback in the loop iteration they arrive (no task switch,
no copy per event), and read-pausing tied directly to the client's write buffer.

A response body goes to a sink (`on_data`, `on_end`, `on_error`); until one is
set, bytes are held. A connection is reusable only after a complete response
that allowed keep-alive; anything else is closed, never pooled.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Final
from typing import Protocol as TypingProtocol

import httptools

from fastgw.proto import limits
from fastgw.proto.dechunk import DONE, LLHTTP, MESSAGES, MORE
from fastgw.proto.dechunk import dechunk as dechunk_py
from fastgw.proto.dechunk import head_cut as head_cut_py
from fastgw.proto.plainhead import read_response

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call

__all__ = [
    "TransportError", "ConnectFailed", "TransportTimeout", "PeerClosed", "BadResponse",
    "Sink", "UpstreamConnection", "UpstreamPool", "PoolKey",
]

PoolKey = tuple[str, str, int]  # (scheme, host, port)


class TransportError(Exception):
    """The upstream exchange failed at the HTTP level (the layer above maps it to its own API error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectFailed(TransportError):
    """TCP connect or TLS handshake failed or timed out."""


class TransportTimeout(TransportError):
    """No head, no body or no byte within a deadline."""


class PeerClosed(TransportError):
    """The upstream closed the connection before the response was complete."""


class BadResponse(TransportError):
    """What the upstream sent breaks HTTP/1.1 framing or a size limit (or, raised by a sink, its body format)."""


class _StaleConnection(Exception):
    """A reused keep-alive connection closed before answering: safe to retry once on a fresh one."""


class Sink(TypingProtocol):
    """Receives a response body. `flush` ends each socket read: a sink may batch what one read delivered."""

    def on_data(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def on_end(self) -> None: ...
    def on_error(self, exc: TransportError) -> None: ...


def _too_large(limit: int) -> BadResponse:
    return BadResponse("upstream response body exceeds %d bytes" % limit)


class _Collector:
    """The default sink: gathers the body for non-streamed responses."""

    __slots__ = ("parts", "size", "limit", "future")

    def __init__(self, limit: int, future: asyncio.Future[bytes]) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.future = future

    def on_data(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _too_large(self.limit)
        self.parts.append(data)

    def flush(self) -> None:
        pass

    def on_end(self) -> None:
        if not self.future.done():
            self.future.set_result(b"".join(self.parts))

    def on_error(self, exc: TransportError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def _load_dechunk() -> tuple[Callable[[bytes, int, int, list[bytes]], int], Callable[[bytes, int], int]]:
    """The C chunk decoder's functions (`fastgw.proto._dechunkc`), or their Python forms where it is not built."""
    try:
        from fastgw.proto import _dechunkc
    except ImportError:
        return dechunk_py, head_cut_py
    return _dechunkc.dechunk, _dechunkc.head_cut


_DECHUNK: Final = _load_dechunk()
#: A read's plain chunks decoded at once, and where a head that names a chunked body ends (fastgw/proto/dechunk.py).
_dechunk: Final = _DECHUNK[0]
_head_cut: Final = _DECHUNK[1]

#: What llhttp is given before the part of a chunked body it is to read (the last chunk, or the first chunk boundary
#: that is not plain) when the body's head was read in C: its callbacks ignore this head (`_unseen`).
_CHUNKED_HEAD: Final = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
#: The head limit as a compiled constant (a module's attribute is two lookups at each read).
_MAX_HEAD: Final = limits.MAX_UPSTREAM_HEADER_BYTES


class _BodyWatch:
    """`read_body`'s deadline state: the body size last seen, when it last grew, and the pending check."""

    __slots__ = ("size", "at", "timer")

    def __init__(self, now: float) -> None:
        self.size = -1
        self.at = now
        self.timer: asyncio.TimerHandle | None = None


class _ParserCallbacks:
    """What a response parser calls back: the connection's methods, and for each body chunk the held list's own
    `append` (a C call, no method of ours: a streamed answer comes as one chunk per SSE event, and a fast upstream
    sends dozens in one read; issue 18). Made once per connection: a parser reads its callbacks at creation."""

    __slots__ = ("on_message_begin", "on_status", "on_header", "on_headers_complete", "on_body",
                 "on_message_complete")

    def __init__(self, conn: UpstreamConnection, held: list[bytes]) -> None:
        self.on_message_begin = conn.on_message_begin
        self.on_status = conn.on_status
        self.on_header = conn.on_header
        self.on_headers_complete = conn.on_headers_complete
        self.on_body = held.append
        self.on_message_complete = conn.on_message_complete


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; carries one request/response at a time."""

    # No instance dict: one lives as long as its connection, pooled ones too (~1 KB less each; issue 18).
    __slots__ = ("key", "_loop", "transport", "reused", "idle_since", "closed", "_rcvbuf_capped", "_head_future",
                 "_head_timer", "_head_due", "_head_timeout", "_parser", "status", "headers", "_head_bytes",
                 "_got_bytes", "_headers_done", "_complete", "_keep_alive", "_close_delimited", "_sink", "_held",
                 "_error", "_ended", "_callbacks", "_plain_chunked", "_head_tail", "_fast", "_state", "_pend",
                 "read_head", "_body_left", "_unseen")

    def __init__(self, key: PoolKey, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.idle_since = 0.0
        self.closed = False
        #: The receive buffer is capped already (`_limit_receive_buffer`): a socket option stays set, so one
        #: setsockopt per connection rather than per request.
        self._rcvbuf_capped = False
        self._head_future: asyncio.Future[None] | None = None
        #: The response-head deadline: one timer per connection rather than one set and cancelled per request. A
        #: request leaves a later timer running; when it fires for a head that is not late, it waits on.
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_due = 0.0  # loop time the head awaited now is late
        self._head_timeout = 0.0
        # Per-response state, declared here with its types; `_reset` gives it its values.
        self._parser: httptools.HttpResponseParser
        self.status: int
        self.headers: list[tuple[bytes, bytes]]
        self._head_bytes: int
        self._got_bytes: bool
        self._headers_done: bool
        self._complete = False  # (read by `_reset`: a parser is kept only after a complete keep-alive response)
        self._keep_alive = False
        self._close_delimited: bool
        #: The head asks for a chunked body and nothing else (one Transfer-Encoding, `chunked`, no Content-Length).
        self._plain_chunked: bool
        #: The last bytes (up to 3) of a read that did not end the head: the next read may complete its CR LF CR LF.
        self._head_tail: bytes
        #: The body's chunks are read by `_dechunk` (`_read_chunks`), from its state (the current chunk's data still
        #: due, the bytes of its CR LF still due: dechunk.py), and the beginning of a size line a read cut.
        self._fast: bool
        self._state: int
        self._pend: bytes
        #: Reads a response's head in C when its first read holds it whole (`_read_head`); None gives every head to
        #: llhttp (tests set it to compare the two).
        self.read_head = read_response
        #: Content-Length bytes still to come of a body whose head was read in C (llhttp never sees it).
        self._body_left: int
        #: The head was read in C: llhttp, if it reads the end of the (chunked) body, is given `_CHUNKED_HEAD` first.
        self._unseen: bool
        self._sink: Sink | None
        #: Body bytes not yet handed to a sink: one list for the connection's life, which its parsers append to.
        self._held: list[bytes] = []
        self._callbacks = _ParserCallbacks(self, self._held)
        self._error: TransportError | None = None
        self._ended: bool
        self._reset()

    # ---- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._head_future is None:
            # Bytes on an idle connection: the peer is confused or closing; never reuse it.
            self.close()
            return
        first = not self._got_bytes
        self._got_bytes = True
        try:
            if self._fast:
                self._read_chunks(data, 0)
            elif self._body_left:
                self._read_length(data, 0)
            elif self._headers_done:
                self._parser.feed_data(data)
            else:
                self._read_head(data, first)
            if self._held and (sink := self._sink) is not None:
                self._deliver(sink)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            self._fail_parse(ctx if isinstance(ctx, TransportError)
                             else BadResponse(f"bad upstream response: {e}"))
        except httptools.HttpParserError as e:
            self._fail_parse(BadResponse(f"bad upstream response: {e}"))
        except TransportError as e:
            self._fail(e)
        sink = self._sink
        if sink is not None and not self._ended:
            sink.flush()
        if not self._headers_done and self._head_bytes > _MAX_HEAD:
            self._fail(BadResponse("upstream response head too large"))

    def _read_head(self, data: bytes, first: bool) -> None:
        """Bytes while the response head is incomplete. A plain head whole in the response's first read is read in C
        (llhttp is then at a message's start: a new parser, or one that read the last response to its end), and its
        body by `_read_chunks` or `_read_length`; else llhttp reads each head (interim 1xx ones first) to its last
        byte, found here first, so that a plain chunked body after it can be read by `_read_chunks` from its start."""
        if first and self.read_head is not None:
            # (The byte limit bounds the field count too: a field line is at least 4 bytes.)
            got = self.read_head(data, 0, _MAX_HEAD, _MAX_HEAD)
            if got is not None:
                status, self.headers, length, end = got
                # (Its framing is what the C reader found: a Content-Length, or one plain `chunked` coding.)
                self._settle(status, True, False, length < 0)
                if length < 0:
                    self._unseen = self._fast = True
                    if end < len(data):
                        self._read_chunks(data, end)
                else:
                    self._body_left = length
                    self._read_length(data, end)
                return
        parser = self._parser
        tail = self._head_tail
        start = 0  # where in `data` the head being read begins
        while True:
            seen = tail + data if tail else data
            cut = _head_cut(seen, start)
            if cut < 0:
                # No end of a head in this read, or a head that names no chunked body: all of it to llhttp.
                parser.feed_data(data[start:] if start else data)
                self._head_tail = b"" if self._headers_done else seen[-3:]
                return
            end = cut - len(tail)
            tail = self._head_tail = b""
            parser.feed_data(data[start:end] if start or end < len(data) else data)
            start = end
            if self._headers_done or end == len(data):
                break
        # llhttp has read exactly the head: a body in chunks it would read from here on can be read here instead.
        self._fast = self._headers_done and self._plain_chunked and not self._complete
        if start < len(data):
            if self._fast:
                self._read_chunks(data, start)
            else:
                parser.feed_data(data[start:])

    def _read_chunks(self, data: bytes, start: int) -> None:
        """Body bytes of a chunked response from `data[start:]`: its plain chunks' data to the held list in one
        piece; from the first chunk boundary that is not plain (the last chunk among them) llhttp reads the rest of
        the message."""
        pend = self._pend
        if pend:
            data = pend + data[start:]
            start = 0
            self._pend = b""
        r = _dechunk(data, start, self._state, self._held)
        code = r & 7
        if code == DONE:
            self._state = r >> 3
            return
        self._state = 0  # a chunk boundary
        at = r >> 3
        if code == MORE:
            self._pend = data[at:]
            return
        self._fast = False
        if code == LLHTTP:
            if self._unseen:
                if len(data) - at == 5 and data.endswith(b"0\r\n\r\n"):
                    # The last chunk and nothing after it, what llhttp would end the message on: the usual end.
                    self._unseen = False
                    self._complete = True
                    self._emit_end()
                    return
                self._parser.feed_data(_CHUNKED_HEAD)
            self._parser.feed_data(data[at:] if at else data)
            return
        raise httptools.HttpParserError(MESSAGES[code])  # as llhttp raises it for these bytes: see data_received

    def _read_length(self, data: bytes, start: int) -> None:
        """Body bytes from `data[start:]` of a response whose head was read in C and that has a Content-Length."""
        left = self._body_left
        n = len(data) - start
        if n < left:
            if n:
                self._held.append(data[start:] if start else data)
            self._body_left = left - n
            return
        self._body_left = 0
        if left:
            self._held.append(data[start:start + left] if start or n > left else data)
        self._complete = True
        self._emit_end()
        if n > left:
            # Bytes past the end: llhttp reads them as it would have (a next message is refused in on_message_begin).
            self._parser.feed_data(data[start + left:])

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost decides what the EOF means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head_future is None or self._complete:
            return
        if self._headers_done and self._close_delimited:
            # Body framed by connection close (RFC 9112 §6.3 rule 8): EOF is its end.
            self._complete = True
            self._emit_end()
            return
        if not self._got_bytes and self.reused:
            self._fail(PeerClosed("stale keep-alive connection"), stale=True)
            return
        what = "before the response head" if not self._headers_done else "in the middle of the response body"
        self._fail(PeerClosed(f"upstream closed the connection {what}"))

    # ---- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            # Bytes after the end of the response (a body longer than its content-length, a second response, or
            # garbage after the last chunk): stop parsing here, so none of it is taken as this response's body.
            # The response stands; the connection is out of step and is closed (`_fail_parse`), never pooled.
            raise BadResponse("upstream sent bytes after the end of the response")

    def on_status(self, status: bytes) -> None:
        self._head_bytes += len(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._unseen:
            return  # _CHUNKED_HEAD's
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > _MAX_HEAD:
            raise BadResponse("upstream response head too large")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._unseen:
            self._unseen = False  # _CHUNKED_HEAD read: llhttp now reads the body from where `_read_chunks` stopped
            return
        p = self._parser
        status = p.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim response (100 Continue, 103 Early Hints): the real head follows.
            self.headers = []
            return
        chunked = False
        has_length = False
        codings = 0
        plain = False
        for n, v in self.headers:
            if n == b"transfer-encoding":
                codings += 1
                low = v.lower()
                if low.find(b"chunked") >= 0:  # (not `in`: see sse.py's `13 in b`)
                    chunked = True
                    # (Trailing SP only: llhttp reads "chunked\t" as another coding, whose body runs to the close.)
                    plain = low.rstrip(b" ") == b"chunked"
            elif n == b"content-length":
                has_length = True
        self._settle(status, p.should_keep_alive(), not chunked and not has_length and status not in (204, 304),
                     plain and codings == 1 and not has_length)

    def _settle(self, status: int, keep_alive: bool, close_delimited: bool, plain_chunked: bool) -> None:
        """The final response head is read (its fields in `headers`) with its framing: the exchange hears of it."""
        self.status = status
        self._headers_done = True
        self._keep_alive = keep_alive
        self._close_delimited = close_delimited
        self._plain_chunked = plain_chunked
        fut = self._head_future
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _deliver(self, sink: Sink) -> None:
        # The body is gathered (`_ParserCallbacks.on_body`) and handed to the sink once per read: an upstream that
        # frames every SSE event as its own chunk would otherwise cost a sink call per event.
        sink.on_data(self._take_held())

    def _take_held(self) -> bytes:
        """The body bytes not yet handed on, as one bytes (b"" when none)."""
        held = self._held
        if not held:
            return b""
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        return data

    def on_message_complete(self) -> None:
        if not self._headers_done:
            return  # end of an interim response
        self._complete = True
        self._emit_end()

    # ---- request/response -------------------------------------------------------------
    async def request(self, data: bytes, timeout: float) -> None:
        """Send a request and wait for the final response head (status, headers)."""
        self._reset()
        self._head_future = fut = self._loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        self._head_timeout = timeout
        self._head_due = due = self._loop.time() + timeout
        timer = self._head_timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._head_timer = self._loop.call_at(due, self._check_head)
        await fut

    def _check_head(self) -> None:
        self._head_timer = None
        fut = self._head_future
        if fut is None or fut.done() or self.closed:
            return  # no head awaited: the next request sets the timer again
        if self._head_due - self._loop.time() > 1e-3:  # set for an earlier request: this head is not late yet
            self._head_timer = self._loop.call_at(self._head_due, self._check_head)
            return
        self._fail(TransportTimeout("upstream sent no response head within %gs" % self._head_timeout))

    def _reset(self) -> None:
        """Per-response state, fresh for each request on this connection."""
        if not (self._complete and self._keep_alive and self._error is None):
            # A parser only for a connection's first response (or one after a response that did not end cleanly,
            # which the pool never hands out again): llhttp starts each message of a keep-alive connection afresh
            # after the last one's end, and a new parser costs ~2,000 instructions (it looks up every callback).
            self._parser = httptools.HttpResponseParser(self._callbacks)
        self.status = 0
        self.headers = []
        self._head_bytes = 0
        self._got_bytes = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._close_delimited = False
        self._plain_chunked = False
        self._head_tail = b""
        self._fast = False
        self._state = 0
        self._pend = b""
        self._body_left = 0
        self._unseen = False
        self._sink = None
        self._held.clear()
        self._error = None
        self._ended = False

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def set_sink(self, sink: Sink) -> None:
        """Direct the body to `sink` (a stream relay); bytes that arrived with the head are delivered first."""
        self._sink = sink
        self._limit_receive_buffer()
        if not isinstance(sink, _Collector):
            self._stream_started()
        try:
            if self._held:
                self._deliver(sink)
                if self._error is None and not self._complete:
                    sink.flush()  # otherwise the end below writes it, with the terminator, in one writev
        except TransportError as e:
            self._fail(e)
            return
        if self._error is not None:
            sink.on_error(self._error)
        elif self._complete:
            self._ended = True
            sink.on_end()

    def _stream_started(self) -> None:
        """A stream's relay took the body: drop what only the head needed, which would otherwise stay as long as the
        stream (issue 18). The head timer would stay armed until it lapses (~0.5 KB; the relay keeps its own
        deadlines); the response headers were read by the attempt before (a provider sends 10-30: 0.3-3 KB). A
        whole body (read_body) is short and keeps both: the timer serves the connection's next request too."""
        timer = self._head_timer
        if timer is not None:
            timer.cancel()
            self._head_timer = None
        self.headers = []

    async def read_body(self, limit: int = limits.MAX_UPSTREAM_BODY_BYTES, timeout: float | None = None,
                        first_by: float | None = None, idle: float | None = None) -> bytes:
        """The whole body of a non-streamed response: within `timeout` seconds, its first byte by the loop time
        `first_by`, and no silence longer than `idle` after that (one timer, rescheduled only when it fires)."""
        if self._complete and self._error is None and self._sink is None:
            # The whole body came with the head (a nearby upstream's usual answer): no sink, future or deadline.
            data = self._take_held()
            if len(data) > limit:
                exc = _too_large(limit)
                self._fail(exc)  # never pooled again
                raise exc
            self._ended = True
            return data
        fut: asyncio.Future[bytes] = self._loop.create_future()
        collector = _Collector(limit, fut)
        self.set_sink(collector)
        if fut.done():
            return fut.result()  # failed (or ended) already: no deadline to keep
        loop = self._loop
        end_by = loop.time() + timeout if timeout is not None else math.inf
        state = _BodyWatch(loop.time())

        def check() -> None:
            now = loop.time()
            if collector.size != state.size:
                state.size, state.at = collector.size, now
            started = collector.size > 0
            if now >= end_by:
                assert timeout is not None  # end_by is finite only with a timeout
                self._fail(TransportTimeout("upstream body not received within %gs" % timeout))
            elif not started and first_by is not None and now >= first_by:
                self._fail(TransportTimeout("upstream sent no body within the time-to-first-token limit"))
            elif started and idle is not None and now - state.at >= idle:
                self._fail(TransportTimeout("upstream went silent for longer than the idle limit"))
            else:
                nxt = end_by
                if not started and first_by is not None:
                    nxt = min(nxt, first_by)
                elif idle is not None:
                    nxt = min(nxt, state.at + idle)
                if nxt != math.inf:
                    state.timer = loop.call_at(max(nxt, now + 0.001), check)

        check()
        try:
            return await fut
        finally:
            if state.timer is not None:
                state.timer.cancel()

    def _emit_end(self) -> None:
        sink = self._sink
        if sink is not None and not self._ended:
            if self._held:
                try:
                    self._deliver(sink)  # no flush: on_end writes the rest and the terminator in one writev
                except TransportError as e:
                    self._fail(e)
                    return
            self._ended = True
            sink.on_end()

    def _fail_parse(self, exc: TransportError) -> None:
        """A framing error in what the upstream sent."""
        if self._complete:
            # After the end of a whole response (bytes past its end): the response stands, but the connection
            # is out of step with the upstream and must never be reused.
            self.close()
            return
        # Body bytes the parser accepted before the error are real body and go to the sink first, so whole
        # events that arrived in the same read as the error still reach the client (as they do when the error
        # comes in a later read); an incomplete event among them stays held and is never forwarded.
        sink = self._sink
        if self._held and sink is not None and not self._ended:
            try:
                self._deliver(sink)
            except TransportError as e:
                exc = e
        self._fail(exc)

    def _fail(self, exc: TransportError, stale: bool = False) -> None:
        fut = self._head_future
        if fut is not None and not fut.done():
            # An exchange waits for its head: whatever ended the connection, it hears of it (never left waiting).
            self._error = exc
            self.close()
            fut.set_exception(_StaleConnection() if stale else exc)
            return
        if self._error is not None or self._ended:
            return
        self._error = exc
        self.close()
        sink = self._sink
        if sink is not None:
            self._ended = True
            sink.on_error(exc)

    @property
    def reusable(self) -> bool:
        """True only after a complete response that allowed keep-alive, on an open connection."""
        return (self._complete and self._keep_alive and not self.closed and self._error is None
                and self.transport is not None and not self.transport.is_closing())

    def _limit_receive_buffer(self) -> None:
        """A stream: cap the kernel receive buffer (STREAM_RCVBUF), so what the client has not read waits at the
        provider, not in this host's memory. Whole bodies (read_body) keep the autotuned buffer."""
        if self._rcvbuf_capped:
            return
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, limits.STREAM_RCVBUF)
        except OSError:
            pass  # not a socket that has one (a test transport)
        self._rcvbuf_capped = True

    def pause_reading(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.pause_reading()

    def resume_reading(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    def close(self) -> None:
        """Close for good (abort: unread bytes must not be mistaken for the next response)."""
        self.closed = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        t = self.transport
        if t is not None:
            t.abort()

    def park(self) -> None:
        """Enter the idle pool: no request in flight, no sink; bytes arriving now close the connection."""
        self._head_future = None
        self._sink = None
        self.idle_since = _monotonic()
        # A stream that ended while its client's buffer held the relay paused leaves reading paused: an idle
        # connection must be read (to see a close, or stray bytes), and its next response must be.
        self.resume_reading()

    def detach(self) -> None:
        """Stop delivering to the current sink (its consumer is gone) and close. Without a sink there is no consumer
        to be gone: the connection is parked, or carries a new exchange not yet streaming, and the call comes late
        from an earlier exchange's consumer; it is ignored (closing would cut that new exchange)."""
        if self._sink is None:
            return
        self._sink = None
        self._ended = True
        self.close()


class UpstreamPool:
    """Idle keep-alive connections per (scheme, host, port), LIFO so warm connections are reused first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_idle_per_host: int = limits.POOL_MAX_IDLE_PER_HOST,
                 idle_timeout: float = limits.POOL_IDLE_TIMEOUT) -> None:
        self._loop = loop
        self._idle: dict[PoolKey, deque[UpstreamConnection]] = {}
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        self._ssl: dict[str | None, ssl.SSLContext] = {}
        self.connects = 0  # for tests and metrics

    def ssl_context(self, ca_file: str | None = None) -> ssl.SSLContext:
        ctx = self._ssl.get(ca_file)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl[ca_file] = ctx
        return ctx

    def _take_idle(self, key: PoolKey) -> UpstreamConnection | None:
        q = self._idle.get(key)
        now = _monotonic()
        while q:
            conn = q.pop()
            t = conn.transport
            if conn.closed or t is None or t.is_closing() or now - conn.idle_since > self._idle_timeout:
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    async def _connect(self, key: PoolKey, timeout: float, ca_file: str | None) -> UpstreamConnection:
        scheme, host, port = key
        ssl_ctx = self.ssl_context(ca_file) if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, proto = await self._loop.create_connection(
                    lambda: UpstreamConnection(key, self._loop), host, port, ssl=ssl_ctx,
                    server_hostname=host if ssl_ctx else None)
        except TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out after {timeout:g}s") from None
        except ssl.SSLError as e:
            raise ConnectFailed(f"TLS handshake with {host}:{port} failed: {e.reason or e}") from None
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
        self.connects += 1
        return proto

    async def exchange(self, key: PoolKey, data: bytes, *, connect_timeout: float, head_timeout: float,
                       ca_file: str | None = None) -> UpstreamConnection:
        """Send one request and return the connection with the response head received.

        A reused connection that turns out stale is replaced once by a fresh one.
        """
        conn = self._take_idle(key)
        if conn is not None:
            try:
                await conn.request(data, head_timeout)
                return conn
            except _StaleConnection:
                pass
            except BaseException:
                conn.close()  # cancelled (the client left) or failed: never left open outside the pool
                raise
        conn = await self._connect(key, connect_timeout, ca_file)
        try:
            await conn.request(data, head_timeout)
        except _StaleConnection:
            raise PeerClosed("upstream closed the connection before the response head") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection: pooled if it finished cleanly, closed otherwise."""
        if not conn.reusable:
            conn.close()
            return
        q = self._idle.get(conn.key)
        if q is None:  # (not setdefault: that builds a deque for every release)
            q = self._idle[conn.key] = deque()
        if len(q) >= self._max_idle:
            conn.close()
            return
        conn.park()
        q.append(conn)

    def close_all(self) -> None:
        for q in self._idle.values():
            while q:
                q.pop().close()
        self._idle.clear()
