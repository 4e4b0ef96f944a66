"""What one client can hold of a worker, at the server shell (issue 15), on a fake loop and transport: reading follows
the client's reading, heads judged before bodies, the worker's body budget, the body rate floor, max_connections,
lingering close, the stream send buffer, and the hooks the access log hangs on. No sockets, no sleeps."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from fastgw.api.errors import render
from fastgw.proto import flow, server
from fastgw.proto.errors import HttpError
from fastgw.proto.h1 import H2_GOAWAY
from fastgw.proto.server import ConnectionTracker, HttpServerProtocol, Request, Responder, ServerLimits

HIGH = 64 * 1024  # the write high-water mark (limits.WRITE_HIGH_WATER)


# ---- a fake loop, transport and application ------------------------------------------------------------------

class _Timer:
    def __init__(self, when: float, cb, args) -> None:  # noqa: ANN001
        self.when, self.cb, self.args, self.cancelled = when, cb, args, False

    def cancel(self) -> None:
        self.cancelled = True


class _Task:
    def __init__(self, coro) -> None:  # noqa: ANN001
        self.coro, self._done = coro, False

    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self.coro.close()

    def step(self) -> None:
        try:
            self.coro.send(None)
        except StopIteration:
            self._done = True


class Loop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_Timer] = []
        self.ready: list = []
        self.tasks: list[_Task] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, cb, *args) -> _Timer:  # noqa: ANN001
        t = _Timer(self.now + delay, cb, args)
        self.timers.append(t)
        return t

    def call_soon(self, cb, *args) -> None:  # noqa: ANN001
        self.ready.append((cb, args))

    def create_task(self, coro) -> _Task:  # noqa: ANN001
        t = _Task(coro)
        self.tasks.append(t)
        return t

    def run(self) -> None:
        while self.ready or any(not t.done() for t in self.tasks):
            ready, self.ready = self.ready, []
            for cb, args in ready:
                cb(*args)
            for t in [t for t in self.tasks if not t.done()]:
                t.step()

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= end), key=lambda t: t.when)
            if not due:
                break
            t = due[0]
            self.timers.remove(t)
            self.now = max(self.now, t.when)
            t.cb(*t.args)
            self.run()
        self.now = end
        self.run()


class Sock:
    def __init__(self) -> None:
        self.opts: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.opts[(level, name)] = value


class Transport:
    """A client connection: what the server writes piles up `unread` until the client reads it; past the
    high-water mark the transport tells the protocol to pause writing, as asyncio's do."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.proto: HttpServerProtocol | None = None
        self.out = bytearray()
        self.unread = 0
        self.max_unread = 0
        self.closed = self.aborted = self.eof = self.read_paused = self.write_paused = False
        self.sock = Sock()

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof, "write after close or write_eof"
        self.out += data
        self.unread += len(data)
        self.max_unread = max(self.max_unread, self.unread)
        if not self.write_paused and self.unread > HIGH:
            self.write_paused = True
            assert self.proto is not None
            self.proto.pause_writing()

    def writelines(self, parts) -> None:  # noqa: ANN001
        self.write(b"".join(parts))

    def client_reads(self) -> None:
        self.unread = 0
        if self.write_paused:
            self.write_paused = False
            assert self.proto is not None
            self.proto.resume_writing()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.proto.connection_lost, None)  # type: ignore[union-attr]

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("203.0.113.7", 40000), "socket": self.sock}.get(name, default)


class App:
    """/404: a 60 KB answer, as a 404 that echoed a 60 KB path would be; /echo: the body's size; /stream: a
    streamed answer."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, req: Request, resp: Responder) -> None:
        self.calls.append(req.path)
        if req.path == "/404":
            resp.send(404, [], b"x" * 60000)
        elif req.path == "/stream":
            resp.start_stream(200, [(b"content-type", b"text/event-stream")])
            resp.write(b"data: 1\n\n")
            resp.end()
        else:
            resp.send(200, [], b"%d" % len(req.body))


class Hooks:
    """Refuses a POST without Authorization on its head; records what the shell answered by itself."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.refused_calls: list[int] = []
        self.answered_calls: list[tuple[int, str | None, str]] = []

    def on_head(self, req: Request) -> HttpError | None:
        self.heads.append(req.path)
        if req.method == "POST" and req.header(b"authorization") is None:
            return HttpError("no key", status=401, code="invalid_api_key")
        return None

    async def refused(self, req: Request, resp: Responder) -> None:
        assert req.refusal is not None
        self.refused_calls.append(req.refusal.status)
        raise req.refusal

    def answered(self, err: HttpError, resp: Responder, peer: str) -> None:
        self.answered_calls.append((resp.status, err.request.path if err.request else None, peer))


LIM = ServerLimits(header_timeout=10.0, keepalive_timeout=75.0, max_header_bytes=65536, max_headers=50,
                   max_body_bytes=10_000_000, send_timeout=60.0, body_timeout=30.0, min_body_rate=1024.0)


def connect(loop: Loop, tracker: ConnectionTracker | None = None, lim: ServerLimits = LIM,
            hooks: Hooks | None = None, app: App | None = None) -> tuple[Transport, HttpServerProtocol, App]:
    app = app or App()
    proto = HttpServerProtocol(app, lim, tracker or ConnectionTracker(), loop, render_error=render,  # type: ignore[arg-type]
                               hooks=hooks)
    t = Transport(loop)
    t.proto = proto
    proto.connection_made(t)  # type: ignore[arg-type]
    return t, proto, app


def post(path: str, body: bytes, key: bool = True, length: int | None = None) -> bytes:
    auth = b"Authorization: Bearer k\r\n" if key else b""
    return (b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
            % (path.encode(), auth, len(body) if length is None else length) + body)


GET_404 = b"GET /404 HTTP/1.1\r\nHost: x\r\n\r\n"


# ---- reading follows the client's reading ----------------------------------------------------------------------

def test_pipelined_answers_wait_for_the_client_to_read_them():
    """The attack: pipelined requests whose answers the client never reads. Without backpressure every request is
    answered into the write buffer (2.75 GB in 6 s in the issue); here it stops at the high-water mark."""
    loop = Loop()
    t, proto, app = connect(loop)
    fed = 0
    for _ in range(50):  # the client sends whenever we read
        if not t.read_paused:
            proto.data_received(GET_404 * 4)
            fed += 4
        loop.run()
    assert t.write_paused and t.read_paused  # the client reads nothing: we read nothing either
    assert fed == 4 and len(app.calls) == 2  # the answer that crossed the mark, and no other
    assert t.max_unread <= HIGH + 60000 + 1000  # one answer past the mark at most
    # The client reads (and sends on): every request is answered in order, one buffer at a time.
    for _ in range(200):
        t.client_reads()
        if not t.read_paused and fed < 40:
            proto.data_received(GET_404 * 4)
            fed += 4
        loop.run()
    assert fed == 40 and len(app.calls) == 40 and t.out.count(b"HTTP/1.1 404") == 40
    assert t.max_unread <= HIGH + 60000 + 1000


def test_one_read_of_tiny_pipelined_requests_is_parsed_a_slice_at_a_time():
    """A 256 KiB read of 28-byte requests would be ~9000 Request objects at once; it is parsed in slices and
    the rest waits unparsed, with reading paused, until the queue drains."""
    loop = Loop()
    t, proto, app = connect(loop)
    tiny = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    n = (64 * 1024) // len(tiny)  # one read of them (up to 256 KiB in uvloop)
    proto.data_received(tiny * n)
    assert len(proto._queue) <= server._MAX_QUEUED + server._PARSE_SLICE // len(tiny) + 1
    assert proto._backlog is not None and t.read_paused
    for _ in range(10 * n):
        loop.run()
        t.client_reads()
        if len(app.calls) == n:
            break
    assert len(app.calls) == n and t.out.count(b"HTTP/1.1 200") == n
    assert proto._backlog is None and not t.read_paused and not t.closed


# ---- heads judged before bodies ---------------------------------------------------------------------------------

def test_a_request_refused_on_its_head_never_has_its_body_read():
    loop = Loop()
    hooks = Hooks()
    t, proto, app = connect(loop, hooks=hooks)
    proto.data_received(post("/up", b"y" * 1000, key=False, length=5_000_000))
    loop.run()
    assert hooks.heads == ["/up"] and hooks.refused_calls == [401] and app.calls == []
    assert proto._reader.body_received == 0 and proto._held == 0
    assert t.out.startswith(b"HTTP/1.1 401 ") and b"connection: close" in bytes(t.out)
    # Lingering close: the answer is out and the write side shut; what the client still sends is dropped.
    assert t.eof and not t.closed
    for _ in range(100):
        proto.data_received(b"y" * 65536)
    assert proto._reader.body_received == 0
    loop.advance(server._LINGER_TIMEOUT + 0.1)
    assert t.closed and t.aborted


def test_requests_before_a_refused_one_are_answered_first():
    loop = Loop()
    hooks = Hooks()
    t, proto, app = connect(loop, hooks=hooks)
    proto.data_received(post("/echo", b"ab") + post("/up", b"", key=False, length=100))
    loop.run()
    assert app.calls == ["/echo"] and hooks.refused_calls == [401]
    out = bytes(t.out)
    assert out.index(b"HTTP/1.1 200") < out.index(b"HTTP/1.1 401") and t.eof


# ---- the worker's body budget -----------------------------------------------------------------------------------

def test_past_the_body_budget_a_new_body_gets_503_with_retry_after():
    loop = Loop()
    tracker = ConnectionTracker(max_buffered_body_bytes=1500)
    t1, p1, _ = connect(loop, tracker)
    p1.data_received(post("/echo", b"a" * 100, length=1000))  # 1000 announced: reserved at once
    assert tracker.body_bytes == 1000
    t2, p2, app2 = connect(loop, tracker)
    p2.data_received(post("/echo", b"b" * 600))  # 1000 + 600 > 1500
    loop.run()
    head = bytes(t2.out).split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 503") and b"retry-after: 1" in head and b"connection: close" in head
    assert b'"code":"server_overloaded"' in t2.out and app2.calls == [] and t2.eof
    p1.data_received(b"a" * 900)  # the first body completes and is answered: its bytes are released
    loop.run()
    assert t1.out.startswith(b"HTTP/1.1 200") and tracker.body_bytes == 0
    t3, p3, app3 = connect(loop, tracker)
    p3.data_received(post("/echo", b"c" * 600))
    loop.run()
    assert app3.calls == ["/echo"] and tracker.body_bytes == 0


def test_a_chunked_body_is_counted_as_it_comes_and_cut_past_the_budget():
    loop = Loop()
    tracker = ConnectionTracker(max_buffered_body_bytes=1000)
    t, proto, app = connect(loop, tracker)
    proto.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        proto.data_received(b"190\r\n" + b"z" * 400 + b"\r\n")
    loop.run()
    assert t.out.startswith(b"HTTP/1.1 503") and app.calls == []
    loop.advance(server._LINGER_TIMEOUT + 0.1)
    loop.run()
    assert t.closed and tracker.body_bytes == 0  # released with the connection


def test_a_closed_connection_releases_what_it_held():
    loop = Loop()
    tracker = ConnectionTracker()
    t, proto, _ = connect(loop, tracker)
    proto.data_received(post("/echo", b"a", length=5000))
    assert tracker.body_bytes == 5000
    t.close()
    loop.run()
    assert tracker.body_bytes == 0


# ---- the body rate floor ---------------------------------------------------------------------------------------

def test_a_body_dripped_one_byte_every_2s_is_cut_within_2x_body_timeout():
    """body_timeout alone is an idle timer: a byte every 2 s kept the connection forever (50 of 50 held past
    100 s in the issue). Once the body has taken longer than body_timeout it must average min_body_rate."""
    loop = Loop()
    t, proto, app = connect(loop)
    proto.data_received(post("/echo", b"", length=1000))
    cut_at = None
    for _ in range(60):
        loop.advance(2.0)
        if t.out:
            cut_at = loop.now
            break
        proto.data_received(b"x")
    assert cut_at is not None and cut_at <= 2 * LIM.body_timeout
    assert t.out.startswith(b"HTTP/1.1 408") and b"slower than 1024 bytes/s" in t.out and app.calls == []


def test_an_upload_above_the_floor_takes_as_long_as_it_needs():
    loop = Loop()
    t, proto, app = connect(loop)
    proto.data_received(post("/echo", b"", length=2000 * 100))
    for _ in range(100):  # 2 KB/s for 100 s: over three body_timeouts
        loop.advance(1.0)
        proto.data_received(b"u" * 2000)
    loop.run()
    assert t.out.startswith(b"HTTP/1.1 200") and app.calls == ["/echo"]


def test_time_we_do_not_read_is_not_held_against_the_body():
    loop = Loop()
    t, proto, app = connect(loop)
    proto.data_received(GET_404 + GET_404 + post("/echo", b"a" * 10, length=20_000))
    loop.run()
    assert t.write_paused and t.read_paused  # the client does not read its answers: we stop reading
    loop.advance(50.0)  # past body_timeout at 0 bytes/s, not the client's doing (and under send_timeout)
    assert not t.closed and t.out.count(b"HTTP/1.1 ") == 2
    t.client_reads()
    loop.run()
    proto.data_received(b"a" * 19_990)
    loop.run()
    assert app.calls == ["/404", "/404", "/echo"] and t.out.endswith(b"20000")


# ---- max_connections ---------------------------------------------------------------------------------------------

def test_past_max_connections_a_connection_gets_503_and_one_warning_per_second(caplog):
    loop = Loop()
    tracker = ConnectionTracker(max_connections=2)
    kept = [connect(loop, tracker) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="fastgw.proto.server"):
        refused = [connect(loop, tracker) for _ in range(10)]
        for t, proto, app in refused:
            head = bytes(t.out).split(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 503") and b"retry-after: 1" in head and b"connection: close" in head
            assert t.eof and proto not in tracker.conns and app.calls == []
        assert len(caplog.records) == 1 and "1 connection(s)" in caplog.records[0].getMessage()
        loop.advance(1.0)  # the rest of the burst: one line with its count
        assert len(caplog.records) == 2 and "9 connection(s)" in caplog.records[1].getMessage()
        loop.advance(5.0)
        assert len(caplog.records) == 2  # nothing more to say
    assert tracker.refused == 10 and len(tracker.conns) == 2
    loop.advance(server._OVERFLOW_LINGER + 0.1)
    assert all(t.closed for t, _, _ in refused) and not any(t.closed for t, _, _ in kept)


# ---- errors the shell answers by itself ------------------------------------------------------------------------

@pytest.mark.parametrize("raw, status, path", [
    (b"GET / HTTP/1.1\r\n\r\n", 400, "/"),  # no Host
    (b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413, "/big"),
    (b"GET /h HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, None),
    (b"GET /healthz\n", 400, None),
])
def test_errors_the_shell_answers_reach_the_hook_with_the_peer(raw, status, path):
    loop = Loop()
    hooks = Hooks()
    t, proto, _ = connect(loop, hooks=hooks)
    proto.data_received(raw)
    loop.run()
    assert t.out.startswith(b"HTTP/1.1 %d" % status)
    assert hooks.answered_calls == [(status, path, "203.0.113.7")]
    assert t.eof and not t.closed  # lingering
    loop.advance(server._LINGER_TIMEOUT + 0.1)
    assert t.closed


def test_the_http2_preface_gets_settings_and_goaway_then_close():
    loop = Loop()
    hooks = Hooks()
    t, proto, _ = connect(loop, hooks=hooks)
    proto.data_received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00")
    assert bytes(t.out) == H2_GOAWAY and t.eof
    assert hooks.answered_calls == [(505, None, "203.0.113.7")]


def test_a_body_timeout_answer_reaches_the_hook():
    loop = Loop()
    hooks = Hooks()
    t, proto, _ = connect(loop, hooks=hooks)
    proto.data_received(post("/slow", b"ab", length=10))
    loop.advance(LIM.body_timeout + 0.1)
    assert t.out.startswith(b"HTTP/1.1 408") and hooks.answered_calls == [(408, "/slow", "203.0.113.7")]


def test_a_response_with_connection_close_closes_at_once_without_lingering():
    loop = Loop()
    t, proto, _ = connect(loop)
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    loop.run()
    assert t.closed and not t.eof and not t.aborted


def test_a_stream_caps_the_connection_send_buffer():
    loop = Loop()
    t, proto, _ = connect(loop)
    proto.data_received(GET_404)
    loop.run()
    assert t.sock.opts == {}  # whole answers keep the kernel's autotuning
    proto.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run()
    assert t.sock.opts == {(socket.SOL_SOCKET, socket.SO_SNDBUF): flow.STREAM_SNDBUF}


def test_a_bug_in_on_head_costs_one_request_not_the_worker():
    class Broken(Hooks):
        def on_head(self, req: Request) -> HttpError | None:
            raise RuntimeError("boom")

    loop = Loop()
    errors: list[BaseException] = []
    app = App()
    proto = HttpServerProtocol(app, LIM, ConnectionTracker(), loop, on_error=errors.append,  # type: ignore[arg-type]
                               render_error=render, hooks=Broken())
    t = Transport(loop)
    t.proto = proto
    proto.connection_made(t)  # type: ignore[arg-type]
    proto.data_received(GET_404)
    loop.run()
    assert t.out.startswith(b"HTTP/1.1 500") and app.calls == [] and len(errors) == 1


def test_upgrade_h2c_post_is_served_with_its_body():
    loop = Loop()
    t, proto, app = connect(loop)
    proto.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello")
    loop.run()
    assert app.calls == ["/echo"] and t.out.startswith(b"HTTP/1.1 200") and t.out.endswith(b"5")
    assert not t.closed  # an ordinary HTTP/1.1 request: the connection lives on


def test_asyncio_protocol_surface_is_unchanged():
    # The shell is still an asyncio.Protocol built as before (the hooks are optional).
    proto = HttpServerProtocol(App(), ServerLimits(), ConnectionTracker(), Loop())  # type: ignore[arg-type]
    assert isinstance(proto, asyncio.Protocol)
