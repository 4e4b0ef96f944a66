"""HTTP/1.1 server connection: a thin asyncio.Protocol around the sans-IO reader, the response writer and flow control.

The application is an `async handler(request, responder)`. One task runs per request; pipelined
requests queue and are answered strictly in order. Framing errors answer with an error and close the
connection, and nothing pipelined after the error is processed. What is parsed and how is in
`h1.RequestReader`; how responses are framed in `writer.Responder`; pausing in `flow.FlowControl`.
This module holds the transport, the timers (header, body, keep-alive, send), the dispatch queue and
the connection tracker.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from fastgw.proto import limits
from fastgw.proto.errors import HttpError, LimitError
from fastgw.proto.flow import FlowControl, FlowListener
from fastgw.proto.h1 import BODY, HEAD, IDLE, MUST_CLOSE, REPLAY, Request, RequestReader
from fastgw.proto.writer import CONTINUE, RenderError, Responder, plain_error

__all__ = ["Request", "Responder", "ServerLimits", "HttpServerProtocol", "ConnectionTracker", "FlowListener",
           "plain_error"]

# Pipelined requests parsed ahead of the one being answered; beyond this we stop reading (bounded memory).
_MAX_QUEUED = 8


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
                c.close_after_response()
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

    # ---- construction: per-connection state ----------------------------------------------
    def __init__(self, handler: Handler, lim: ServerLimits, tracker: ConnectionTracker,
                 loop: asyncio.AbstractEventLoop | None = None, on_error: Callable[[BaseException], None] | None = None,
                 render_error: RenderError | None = None) -> None:
        self._handler = handler
        #: How an error becomes headers and a body: the API layer's envelope (proto knows none of its own).
        self.render_error = render_error or plain_error
        self._lim = lim
        self._tracker = tracker
        self._loop = loop or asyncio.get_event_loop()
        self._on_error = on_error
        self.transport: asyncio.Transport | None = None
        self._reader = RequestReader(lim.max_header_bytes, lim.max_headers, lim.max_body_bytes)
        #: Requests and framing errors to answer in order: the reader appends, dispatch pops.
        self._queue = self._reader.events
        self._flow = FlowControl(self._loop)
        self._current: asyncio.Task[None] | None = None
        self._resp: Responder | None = None  # of the request in flight
        #: A drain or an Upgrade: the response in flight is the last one on this connection.
        self.closing_after_response = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._timed_head = 0  # the head (reader.heads at its start) the header timer runs for
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_at = 0.0  # loop time of the last read while a body was due
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    @property
    def flow_listener(self) -> FlowListener | None:
        """The producer of the response in flight (e.g. an upstream relay), if it follows flow control."""
        return self._flow.listener

    # ---- asyncio.Protocol interface -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=limits.WRITE_HIGH_WATER, low=limits.WRITE_LOW_WATER)  # type: ignore[attr-defined]
        self._flow.connection_made(transport)  # type: ignore[arg-type]
        self._tracker.conns.add(self)
        # A connection that sends nothing is closed after the header timeout too.
        self._header_timer = self._loop.call_later(self._lim.header_timeout, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tracker.discard(self)
        for t in (self._header_timer, self._keepalive_timer, self._send_timer, self._body_timer):
            if t is not None:
                t.cancel()
        self._reader.close()
        current = self._current
        if not self._flow.connection_lost() and current is not None and not current.done():
            # Nobody will read the answer: stop waiting on the upstream (and its bill) now.
            current.cancel()

    def eof_received(self) -> bool | None:
        # The client closed its side. HTTP clients do not half-close to wait for an answer; an SSE client
        # that hangs up sends exactly this FIN, and the upstream must stop generating (and billing) now.
        return None  # the transport closes; connection_lost cancels what is in flight

    def pause_writing(self) -> None:
        self._flow.pause_writing()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._lim.send_timeout, self._on_send_timeout)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._flow.resume_writing()

    def data_received(self, data: bytes) -> None:
        r = self._reader
        st = r.state
        if st is not IDLE and st is not HEAD and st is not BODY and st is not REPLAY:
            return  # an error or an Upgrade stopped reading
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        r.feed(data)
        st = r.state
        # The header timer runs while a head is incomplete, the body timer while a body is due (inline:
        # this runs for every read).
        if st is HEAD or st is REPLAY:
            if self._header_timer is None or self._timed_head != r.heads:  # a new head since it was armed
                if self._header_timer is not None:
                    self._header_timer.cancel()
                self._timed_head = r.heads
                self._header_timer = self._loop.call_later(self._lim.header_timeout, self._on_header_timeout)
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if st is BODY:
            # One timer per body, rescheduled only when it fires: a read only notes the time.
            self._body_at = self._loop.time()
            if self._body_timer is None:
                self._body_timer = self._loop.call_later(self._lim.body_timeout, self._on_body_timeout)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if st is MUST_CLOSE:
            self.close_after_response()
        if r.continue_due:
            r.continue_due = False
            if self._current is None and self.transport is not None:
                self.transport.write(CONTINUE)
        self._maybe_start()
        if len(self._queue) >= _MAX_QUEUED:
            self._flow.pause_reading()

    # ---- request dispatch -------------------------------------------------------------
    def _maybe_start(self) -> None:
        if self._current is not None or not self._queue or self._flow.lost:
            return
        item = self._queue.popleft()
        self._tracker.requests_in_flight += 1
        t = self.transport
        assert t is not None
        if isinstance(item, HttpError):
            Responder(t, self._flow, False, False, render_error=self.render_error).send_error(item)
            self._tracker.requests_in_flight -= 1
            self._close()
            return
        keep_alive = item.keep_alive and not self.closing_after_response
        resp = self._resp = Responder(t, self._flow, keep_alive, item.method == "HEAD", item.version != "1.0",
                                      self.render_error)
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
            self._resp = None
            self._flow.listener = None
            self._after_response(resp)

    def _after_response(self, resp: Responder) -> None:
        flow = self._flow
        if not resp.keep_alive or flow.lost or self.closing_after_response:
            self._close()
            return
        if flow.read_paused:
            flow.resume_reading()
        if self._queue:
            self._maybe_start()
        elif self._reader.state is IDLE:
            self._keepalive_timer = self._loop.call_later(self._lim.keepalive_timeout, self._on_keepalive_timeout)

    @property
    def _idle(self) -> bool:
        """No response in flight, none queued, no request being received."""
        return self._current is None and not self._queue and not self._reader.in_message

    def _close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def close_after_response(self) -> None:
        """The response in flight (or the next one) is the last: it says `Connection: close`, then we close."""
        self.closing_after_response = True
        if self._resp is not None:
            self._resp.keep_alive = False  # a head not built yet says close; after_response closes

    def close_when_idle(self) -> None:
        """Graceful drain: close now if idle, else after the response in flight."""
        self.close_after_response()
        if self._idle:
            self._close()

    # ---- timers ---------------------------------------------------------------------------
    def _on_header_timeout(self) -> None:
        self._header_timer = None
        r = self._reader
        if r.stopped or self._flow.lost:
            return
        if not r.in_message:
            if self._current is None and not self._queue:
                self._close()  # connected but sent nothing: no one to answer
            return  # else busy answering; the head clock starts when the next request begins
        r.fail(LimitError("request headers not received within %gs" % self._lim.header_timeout,
                          status=408, code="request_timeout"))
        self._maybe_start()

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        r = self._reader
        if r.state is not BODY or self._flow.lost:
            return
        idle = self._loop.time() - self._body_at
        if idle < self._lim.body_timeout:
            self._body_timer = self._loop.call_later(self._lim.body_timeout - idle, self._on_body_timeout)
            return
        r.fail(LimitError("request body stalled for %gs" % self._lim.body_timeout, status=408,
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
