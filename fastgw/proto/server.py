"""HTTP/1.1 server connection: a thin asyncio.Protocol around the sans-IO reader, the response writer and flow control.

The application is an `async handler(request, responder)`. One task runs per request; pipelined
requests queue and are answered strictly in order. Framing errors answer with an error and close the
connection, and nothing pipelined after the error is processed. What is parsed and how is in
`h1.RequestReader`; how responses are framed in `writer.Responder`; pausing in `flow.FlowControl`.
This module holds the transport, the timers (header, body, keep-alive, send, linger), the dispatch
queue and the connection tracker.

What one client can hold of a worker is bounded here:

- **Reading follows writing.** The connection is not read while its write buffer is above the high-water
  mark, while requests are queued up to `_MAX_QUEUED`, or while a read is parked unparsed (`_backlog`):
  a client that pipelines requests and reads no answer costs one write buffer, not one per request.
- **Heads are judged before bodies.** `ServerHooks.on_head` (the application: keys, permissions) and the
  worker's body budget (`ConnectionTracker.max_buffered_body_bytes`, 503) answer a request on its head;
  its body is never read.
- **Bodies keep a pace.** A body that stalls for `body_timeout`, or that has taken longer than
  `body_timeout` and averages under `min_body_rate` bytes/s, is cut (408).
- **Connections are counted.** Past `ConnectionTracker.max_connections` an accepted connection gets 503
  and is closed, and the worker logs that at most once a second.
- **Closing after an error lingers.** The answer goes out, the write side is shut (FIN) and what the
  client still sends is read and dropped for `_LINGER_TIMEOUT`, so the client reads the answer instead
  of a reset (closing a socket with unread input sends RST, which can destroy the answer in flight).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Final, Protocol

from fastgw.proto import limits
from fastgw.proto.errors import HttpError, LimitError, overloaded
from fastgw.proto.flow import FlowControl, FlowListener
from fastgw.proto.h1 import BODY, CLOSED, FAILED, HEAD, IDLE, MUST_CLOSE, REPLAY, Request, RequestReader
from fastgw.proto.writer import CONTINUE, RenderError, Responder, plain_error

__all__ = ["Request", "Responder", "ServerLimits", "HttpServerProtocol", "ConnectionTracker", "FlowListener",
           "ServerHooks", "plain_error"]

log = logging.getLogger("fastgw.proto.server")

# Pipelined requests parsed ahead of the one being answered; beyond this we stop reading (bounded memory).
_MAX_QUEUED: Final = 8
# Bytes parsed at once when a read is larger: one 256 KiB read of tiny pipelined requests would otherwise become
# thousands of Request objects before reading can pause. What is not parsed waits in `_backlog` (one read at most).
_PARSE_SLICE: Final = 16 * 1024
# Seconds a connection closed after an error answer keeps reading and dropping what the client still sends (an
# upload refused on its head): nginx lingers up to 5 s per read and 30 s in all. 2 s lets a client that sends its
# whole body before reading (most SDKs) finish a few MB on a fast link and read the answer; a slower one is reset.
_LINGER_TIMEOUT: Final = 2.0
# The same for a connection refused at max_connections: it is not counted, so it lingers less, and at most
# _OVERFLOW_LINGERING of them at once (a flood of new connections must not turn lingering into EMFILE, which
# libuv answers by accepting and closing connections in silence); past that one is closed at once.
_OVERFLOW_LINGER: Final = 0.5
_OVERFLOW_LINGERING: Final = 16
# Seconds between two "connections refused" warnings at most.
_REFUSAL_LOG_INTERVAL: Final = 1.0
# The name of a request's task (in a debugger's or asyncio's task listing).
_TASK_NAME: Final = "fastgw-request"
_Task: Final = asyncio.Task  # compiled: a constant, not a lookup per request


class ServerLimits:
    """Per-connection limits, taken from the `server` config section."""

    __slots__ = ("header_timeout", "keepalive_timeout", "max_header_bytes", "max_headers", "max_body_bytes",
                 "send_timeout", "body_timeout", "min_body_rate")

    def __init__(
        self,
        header_timeout: float = limits.HEADER_TIMEOUT,
        keepalive_timeout: float = limits.KEEPALIVE_TIMEOUT,
        max_header_bytes: int = limits.MAX_HEADER_BYTES,
        max_headers: int = limits.MAX_HEADERS,
        max_body_bytes: int = limits.MAX_BODY_BYTES,
        send_timeout: float = limits.SEND_TIMEOUT,
        body_timeout: float = limits.BODY_TIMEOUT,
        min_body_rate: float = limits.MIN_BODY_RATE,
    ) -> None:
        self.body_timeout = body_timeout
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self.send_timeout = send_timeout
        #: Bytes/s a body must average once it has taken longer than body_timeout (0: no floor).
        self.min_body_rate = min_body_rate


Handler = Callable[[Request, Responder], Awaitable[None]]


class ServerHooks(Protocol):
    """What the layer above adds to the shell (proto knows no keys, envelopes or logs of its own)."""

    def on_head(self, req: Request) -> HttpError | None:
        """Judge a request on its head, before its body is read: an error refuses it (then the connection closes)."""
        ...

    async def refused(self, req: Request, resp: Responder) -> None:
        """Answer a request refused on its head (`req.refusal`): raising the refusal is enough."""
        ...

    def answered(self, err: HttpError, resp: Responder, peer: str) -> None:
        """The shell answered a framing or limit error itself (for the access log)."""
        ...


class ConnectionTracker:
    """The connections of one worker: the set (graceful drain), their count against `max_connections`, and the
    request body bytes they hold against `max_buffered_body_bytes`."""

    __slots__ = ("conns", "requests_in_flight", "_idle_waiters", "max_connections", "max_buffered_body_bytes",
                 "body_bytes", "refused", "overflow_lingering", "_refused_pending", "_report")

    def __init__(self, max_connections: int = limits.MAX_CONNECTIONS,
                 max_buffered_body_bytes: int = limits.MAX_BUFFERED_BODY_BYTES) -> None:
        self.conns: set[HttpServerProtocol] = set()
        self.requests_in_flight = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.max_connections = max_connections
        self.max_buffered_body_bytes = max_buffered_body_bytes
        #: Request body bytes held now: announced Content-Lengths of bodies accepted and not yet answered,
        #: chunked bodies as received.
        self.body_bytes = 0
        #: Connections refused at max_connections since start.
        self.refused = 0
        #: Refused connections still lingering (see _OVERFLOW_LINGERING).
        self.overflow_lingering = 0
        self._refused_pending = 0  # refused since the last warning
        self._report: asyncio.TimerHandle | None = None

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

    def connection_refused(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count a connection refused at max_connections; warn at once, then at most once per interval."""
        self.refused += 1
        self._refused_pending += 1
        if self._report is None:
            self._warn_refused()
            self._report = loop.call_later(_REFUSAL_LOG_INTERVAL, self._next_report, loop)

    def _next_report(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._refused_pending:
            self._warn_refused()
            self._report = loop.call_later(_REFUSAL_LOG_INTERVAL, self._next_report, loop)
        else:
            self._report = None

    def _warn_refused(self) -> None:
        log.warning("server.max_connections reached (%d open, limit %d): %d connection(s) answered 503 and "
                    "closed since the last report, %d in all", len(self.conns), self.max_connections,
                    self._refused_pending, self.refused)
        self._refused_pending = 0


def _peer(transport: asyncio.BaseTransport) -> str:
    """The client's IP address ("" for a Unix socket or an unknown peer)."""
    try:
        info = transport.get_extra_info("peername")
    except AttributeError:  # a transport without it (tests)
        return ""
    return str(info[0]) if isinstance(info, tuple) and info else ""


class HttpServerProtocol(asyncio.Protocol):
    """One client connection."""

    # No instance dict: one lives as long as its connection (~1.2 KB less per open stream; issue 18).
    __slots__ = ("_handler", "render_error", "_lim", "_tracker", "_loop", "_direct_tasks", "_on_error", "_hooks",
                 "transport", "peer", "_reader", "_queue", "_flow", "_current", "_resp", "closing_after_response",
                 "_backlog", "_held", "_lingering", "_overflow", "_paused_at", "_header_timer", "_timed_head",
                 "_body_timer", "_timed_body", "_body_start", "_body_at", "_keepalive_timer", "_idle_since",
                 "_send_timer", "_linger_timer")

    # ---- construction: per-connection state ----------------------------------------------
    def __init__(self, handler: Handler, lim: ServerLimits, tracker: ConnectionTracker,
                 loop: asyncio.AbstractEventLoop | None = None, on_error: Callable[[BaseException], None] | None = None,
                 render_error: RenderError | None = None, hooks: ServerHooks | None = None) -> None:
        self._handler = handler
        #: How an error becomes headers and a body: the API layer's envelope (proto knows none of its own).
        self.render_error = render_error or plain_error
        self._lim = lim
        self._tracker = tracker
        self._loop = loop or asyncio.get_event_loop()
        # A request's Task made directly, named (see `_maybe_start`), unless the loop has a task factory of its own
        # (instrumentation) or is not an asyncio loop (a test's clock-driven loop): then `create_task` makes it.
        self._direct_tasks = (isinstance(self._loop, asyncio.AbstractEventLoop)
                              and self._loop.get_task_factory() is None)
        self._on_error = on_error
        self._hooks = hooks
        self.transport: asyncio.Transport | None = None
        #: The client's IP address ("" when unknown).
        self.peer = ""
        self._reader = RequestReader(lim.max_header_bytes, lim.max_headers, lim.max_body_bytes)
        self._reader.on_head = self._on_head
        #: Requests and framing errors to answer in order: the reader appends, dispatch pops.
        self._queue = self._reader.events
        self._flow = FlowControl(self._loop)
        self._current: asyncio.Task[None] | None = None
        self._resp: Responder | None = None  # of the request in flight
        #: A drain or an Upgrade: the response in flight is the last one on this connection.
        self.closing_after_response = False
        #: Bytes read but not parsed yet (reading is paused meanwhile; see _ingest).
        self._backlog: bytes | None = None
        #: Body bytes this connection holds against the worker's budget.
        self._held = 0
        #: Closing: the answer is out, what the client sends is dropped until it closes or the timer fires.
        self._lingering = False
        self._overflow = False  # refused at max_connections and counted in tracker.overflow_lingering
        self._paused_at = 0.0  # loop time reading was paused by us
        self._header_timer: asyncio.TimerHandle | None = None
        self._timed_head = 0  # the head (reader.heads at its start) the header timer runs for
        self._body_timer: asyncio.TimerHandle | None = None
        self._timed_body = -1  # the body (reader.heads once its head was accepted) the body clock runs for
        self._body_start = 0.0  # loop time that body began
        self._body_at = 0.0  # loop time of the last read while a body was due
        #: One keep-alive timer per connection, not per request: a request arriving leaves it running, and when it
        #: fires it closes only a connection idle for the whole timeout since `_idle_since` (else waits on).
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0  # loop time the last answer left the connection idle
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    @property
    def flow_listener(self) -> FlowListener | None:
        """The producer of the response in flight (e.g. an upstream relay), if it follows flow control."""
        return self._flow.listener

    # ---- asyncio.Protocol interface -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=limits.WRITE_HIGH_WATER, low=limits.WRITE_LOW_WATER)  # type: ignore[attr-defined]
        self._flow.connection_made(transport)  # type: ignore[arg-type]
        self.peer = self._reader.peer = _peer(transport)
        tracker = self._tracker
        if len(tracker.conns) >= tracker.max_connections:
            self._refuse_connection()
            return
        tracker.conns.add(self)
        # A connection that sends nothing is closed after the header timeout too.
        self._header_timer = self._loop.call_later(self._lim.header_timeout, self._on_header_timeout)

    def _refuse_connection(self) -> None:
        # Past max_connections: an answer the client can read (never a silent reset), not counted, short linger.
        self._tracker.connection_refused(self._loop)
        self._reader.close()
        t = self.transport
        assert t is not None
        Responder(t, self._flow, False, False, render_error=self.render_error).send_error(
            overloaded("the gateway is at its connection limit; retry later"))
        tracker = self._tracker
        if tracker.overflow_lingering >= _OVERFLOW_LINGERING:
            t.close()
            return
        tracker.overflow_lingering += 1
        self._overflow = True
        self._linger(_OVERFLOW_LINGER)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tracker.discard(self)
        if self._overflow:
            self._overflow = False
            self._tracker.overflow_lingering -= 1
        for t in (self._header_timer, self._keepalive_timer, self._send_timer, self._body_timer, self._linger_timer):
            if t is not None:
                t.cancel()
        if self._reader.state is not CLOSED:
            self._reader.close()
        self._backlog = None
        if self._held:
            self._tracker.body_bytes -= self._held
            self._held = 0
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
        self._update_reading()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._lim.send_timeout, self._on_send_timeout)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._flow.resume_writing()
        self._maybe_start()  # a pipelined request that waited for the client to read
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # closing: dropped
        if self._backlog is not None:
            self._backlog += data  # a read already under way when reading paused
            return
        st = self._reader.state
        if st is not IDLE and st is not HEAD and st is not BODY and st is not REPLAY:
            return  # an error or an Upgrade stopped reading
        if len(data) > _PARSE_SLICE:
            self._ingest(data)
            return
        r = self._reader  # the common read, inline: it runs for every request
        before = r.counted_total
        r.feed(data)
        if r.counted_total != before:
            self._count_chunked(r.counted_total - before)
        self._after_feed()

    # ---- reading --------------------------------------------------------------------------
    def _ingest(self, data: bytes) -> None:
        """Parse `data`, in slices while requests queue up: past the queue bound the rest waits in `_backlog`."""
        r = self._reader
        n = len(data)
        if n <= _PARSE_SLICE:
            before = r.counted_total
            r.feed(data)
            if r.counted_total != before:
                self._count_chunked(r.counted_total - before)
        else:
            pos = 0
            while pos < n and len(self._queue) < _MAX_QUEUED and not r.stopped:
                # A Content-Length body is taken whole: slicing only bounds how many requests come out at once.
                end = pos + max(_PARSE_SLICE, r.body_remaining)
                self._feed(data if pos == 0 and end >= n else data[pos:end])
                pos = end
            if pos < n and not r.stopped:
                self._backlog = data[pos:]
        self._after_feed()

    def _feed(self, data: bytes) -> None:
        r = self._reader
        before = r.counted_total
        r.feed(data)
        if r.counted_total != before:
            self._count_chunked(r.counted_total - before)

    def _count_chunked(self, grown: int) -> None:
        """Chunked body bytes count against the budget as they come (their total is not announced)."""
        self._held += grown
        tracker = self._tracker
        tracker.body_bytes += grown
        if tracker.body_bytes > tracker.max_buffered_body_bytes and self._reader.state is BODY:
            self._reader.fail(overloaded("the gateway holds too many request bodies; retry later"))

    def _after_feed(self) -> None:
        r = self._reader
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
            now = self._body_at = self._loop.time()
            if self._timed_body != r.heads:  # a new body: a new clock
                self._timed_body = r.heads
                self._body_start = now
                if self._body_timer is not None:
                    self._body_timer.cancel()
                    self._body_timer = None
            if self._body_timer is None:
                self._body_timer = self._loop.call_later(self._lim.body_timeout, self._on_body_timeout)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if r.continue_due:
            r.continue_due = False
            if self._current is None and self.transport is not None:
                self.transport.write(CONTINUE)
        self._maybe_start()
        flow = self._flow
        if flow.read_paused or flow.write_paused or self._backlog is not None or len(self._queue) >= _MAX_QUEUED:
            self._update_reading()

    def _update_reading(self) -> None:
        """Read only while the client reads its answers and the queue has room (see the module docstring)."""
        if self._lingering or self.transport is None:
            return
        flow = self._flow
        if flow.write_paused or self._backlog is not None or len(self._queue) >= _MAX_QUEUED:
            if not flow.read_paused:
                flow.pause_reading()
                self._paused_at = self._loop.time()
        elif flow.read_paused:
            flow.resume_reading()
            # Time we did not read is not the client's: its body clock stops meanwhile.
            d = self._loop.time() - self._paused_at
            self._body_start += d
            self._body_at += d

    def _on_head(self, req: Request) -> HttpError | None:
        """The reader's head check: the application's, then the worker's body budget (a Content-Length is
        reserved whole at once, so concurrent uploads cannot all pass before their bytes arrive)."""
        hooks = self._hooks
        if hooks is not None:
            try:
                err = hooks.on_head(req)
            except Exception as e:  # a bug must cost one request, never the worker
                if self._on_error is not None:
                    self._on_error(e)
                err = HttpError("internal error", code="internal_error")
            if err is not None:
                return err
        n = self._reader.body_expected
        if n:
            tracker = self._tracker
            if n > 0:
                if tracker.body_bytes + n > tracker.max_buffered_body_bytes:
                    return overloaded("the gateway holds too many request bodies; retry later")
                tracker.body_bytes += n
                self._held += n
            elif tracker.body_bytes >= tracker.max_buffered_body_bytes:
                return overloaded("the gateway holds too many request bodies; retry later")
        return None

    # ---- request dispatch -------------------------------------------------------------
    def _maybe_start(self) -> None:
        flow = self._flow
        if self._current is not None or not self._queue or flow.lost or flow.write_paused or self._lingering:
            return  # one at a time; and the next answer waits until the client has read the last one
        item = self._queue.pop(0)
        if isinstance(item, HttpError):
            self._answer_error(item)
            return
        self._tracker.requests_in_flight += 1
        t = self.transport
        assert t is not None
        keep_alive = item.keep_alive and not self.closing_after_response
        resp = self._resp = Responder(t, flow, keep_alive, item.method == "HEAD", item.version != "1.0",
                                      self.render_error)
        if self._direct_tasks:
            # Named as it is made: `loop.create_task` names a task after construction, so the Task first formats a
            # "Task-N" of its own (~1,400 instructions of every request).
            self._current = _Task(self._run(item, resp), loop=self._loop, name=_TASK_NAME)
        else:
            self._current = self._loop.create_task(self._run(item, resp))

    def _answer_error(self, err: HttpError) -> None:
        """Answer a framing or limit error the reader queued, then close."""
        t = self.transport
        assert t is not None
        resp = Responder(t, self._flow, False, False, render_error=self.render_error)
        if err.raw is not None:
            if not t.is_closing():
                t.write(err.raw)
            resp.status = err.status
            resp.finished = True
        else:
            resp.send_error(err)
        if self._hooks is not None:
            try:
                self._hooks.answered(err, resp, self.peer)
            except Exception as e:  # noqa: BLE001 - logging must not cost the worker
                if self._on_error is not None:
                    self._on_error(e)
        self._linger()

    async def _run(self, req: Request, resp: Responder) -> None:
        try:
            if req.refusal is None:
                await self._handler(req, resp)
            elif self._hooks is not None:
                await self._hooks.refused(req, resp)
            else:
                raise req.refusal
            if not resp.finished and not resp.started:
                resp.send_error(req.refusal or HttpError("handler produced no response", code="internal_error"))
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
            if req.body and self._held:
                n = min(len(req.body), self._held)
                self._held -= n
                self._tracker.body_bytes -= n
            self._after_response(resp)

    def _after_response(self, resp: Responder) -> None:
        flow = self._flow
        if not resp.keep_alive or flow.lost or self.closing_after_response:
            self._end()
            return
        if self._backlog is not None:
            data, self._backlog = self._backlog, None
            self._ingest(data)
        else:
            self._maybe_start()
            if flow.read_paused or flow.write_paused or len(self._queue) >= _MAX_QUEUED:
                self._update_reading()
        if self._current is None and not self._queue and self._backlog is None:
            st = self._reader.state
            if st is IDLE:
                self._idle_since = self._loop.time()
                if self._keepalive_timer is None:
                    self._keepalive_timer = self._loop.call_later(self._lim.keepalive_timeout,
                                                                  self._on_keepalive_timeout)
            elif st is FAILED or st is MUST_CLOSE:
                self._end()  # an Upgrade or a refusal: nothing more will be read

    @property
    def _idle(self) -> bool:
        """No response in flight, none queued, no request being received."""
        return (self._current is None and not self._queue and not self._reader.in_message
                and self._backlog is None)

    def _end(self) -> None:
        """Close after the last answer: at once when the client has sent nothing more, else lingering."""
        if self._reader.state is IDLE and self._backlog is None:
            self._close()
        else:
            self._linger()

    def _close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def _linger(self, timeout: float = _LINGER_TIMEOUT) -> None:
        """Shut the write side once the answer is out, and drop what the client still sends until it closes
        or `timeout` passes (see the module docstring)."""
        t = self.transport
        if t is None or t.is_closing() or self._linger_timer is not None:
            return
        write_eof = getattr(t, "write_eof", None)
        can_write_eof = getattr(t, "can_write_eof", None)
        if write_eof is None or (can_write_eof is not None and not can_write_eof()):
            t.close()  # a transport that cannot half-close (tests): close at once
            return
        self._lingering = True
        self._backlog = None
        try:
            write_eof()
        except (OSError, RuntimeError):
            t.close()
            return
        self._flow.resume_reading()
        self._linger_timer = self._loop.call_later(timeout, self._linger_over)

    def _linger_over(self) -> None:
        self._linger_timer = None
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort()  # the answer had its time; a client that neither reads nor closes gets no more

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
        if r.stopped or self._flow.lost or self._lingering:
            return
        if self._flow.read_paused:
            # We stopped reading (the client's answers wait to be read): its head is not late by its doing.
            self._header_timer = self._loop.call_later(self._lim.header_timeout, self._on_header_timeout)
            return
        if not r.in_message:
            if self._current is None and not self._queue:
                self._close()  # connected but sent nothing: no one to answer
            return  # else busy answering; the head clock starts when the next request begins
        r.fail(LimitError("request headers not received within %gs" % self._lim.header_timeout,
                          status=408, code="request_timeout"))
        self._maybe_start()

    def _on_body_timeout(self) -> None:
        """A body is cut (408) when it stalls for body_timeout, or when it has taken longer than body_timeout
        and averages under min_body_rate (a drip that never stalls long enough for the first rule)."""
        self._body_timer = None
        r = self._reader
        if r.state is not BODY or self._flow.lost or self._lingering:
            return
        lim = self._lim
        now = self._loop.time()
        if self._flow.read_paused:  # we are not reading: nothing is late
            self._body_timer = self._loop.call_later(lim.body_timeout, self._on_body_timeout)
            return
        due = self._body_at + lim.body_timeout
        if now >= due - 1e-3:
            r.fail(LimitError("request body stalled for %gs" % lim.body_timeout, status=408, code="request_timeout"))
            self._maybe_start()
            return
        if lim.min_body_rate > 0:
            # The moment the average falls under the floor if nothing more arrives (never before body_timeout).
            slow = self._body_start + max(lim.body_timeout, r.body_received / lim.min_body_rate)
            if now >= slow - 1e-3:
                r.fail(LimitError("request body slower than %g bytes/s" % lim.min_body_rate, status=408,
                                  code="request_timeout"))
                self._maybe_start()
                return
            due = min(due, slow)
        self._body_timer = self._loop.call_later(due - now, self._on_body_timeout)

    def _on_keepalive_timeout(self) -> None:
        self._keepalive_timer = None
        if not self._idle:
            return  # busy: the next answer that leaves it idle sets the timer again
        left = self._idle_since + self._lim.keepalive_timeout - self._loop.time()
        if left > 1e-3:  # it was busy meanwhile: idle only since its last answer
            self._keepalive_timer = self._loop.call_later(left, self._on_keepalive_timeout)
            return
        self._close()

    def _on_send_timeout(self) -> None:
        # The client stopped reading: holding its buffer forever would let it pin memory.
        self._send_timer = None
        if self.transport is not None:
            self.transport.abort()
