"""HTTP/1.1 server behaviour: over real sockets (keep-alive, pipelining, limits, RFC 9112 rejections, flow control),
and the protocol shell driven by a fake loop and transport (timers on a fake clock, dispatch order)."""

from __future__ import annotations

import asyncio
import socket
import time

import h11
import orjson
import pytest

from fastgw.api.errors import render
from fastgw.proto.server import ConnectionTracker, HttpServerProtocol, Request, Responder, ServerLimits
from tests.support.loop_thread import LoopThread


class _Handler:
    """Test application: /echo answers with what it parsed; /stream writes chunks; /big streams fast."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.tasks: list[asyncio.Task | None] = []
        self.big_state: dict[str, int] = {}

    async def __call__(self, req: Request, resp: Responder) -> None:
        self.seen.append(f"{req.method} {req.path}")
        try:
            self.tasks.append(asyncio.current_task())
        except RuntimeError:  # the fake loop's steps run outside any event loop
            self.tasks.append(None)
        if req.path == "/echo":
            resp.send(200, [(b"content-type", b"application/json")], orjson.dumps({
                "method": req.method, "path": req.path, "body": req.body.decode("latin-1"),
                "version": req.version, "headers": [[n.decode(), v.decode()] for n, v in req.headers]}))
        elif req.path == "/stream":
            resp.start_stream(200, [(b"content-type", b"text/event-stream")])
            for i in range(3):
                resp.write(b"data: %d\n\n" % i)
                await asyncio.sleep(0)
            resp.end()
        elif req.path == "/big":
            # A producer that respects flow control: it only writes while the client buffer has room.
            resp.start_stream(200, [(b"content-type", b"application/octet-stream")])
            chunk = b"x" * 16384
            sent = 0
            max_buffered = 0
            t = resp._transport
            while sent < 64 * 1024 * 1024 and not resp.client_gone:
                await resp.drain()
                if resp.client_gone:
                    break
                resp.write(chunk)
                sent += len(chunk)
                max_buffered = max(max_buffered, t.get_write_buffer_size())
                self.big_state["max_buffered"] = max_buffered
                self.big_state["sent"] = sent
                await asyncio.sleep(0)
            resp.end()
        elif req.path == "/slow":
            await asyncio.sleep(0.3)
            resp.send(200, [], b"slow")
        else:
            resp.send(404, [], b"")


class _Server(LoopThread):
    def __init__(self, lim: ServerLimits, task_factory=None) -> None:  # noqa: ANN001
        super().__init__()
        self.handler = _Handler()
        self.lim = lim
        self.tracker = ConnectionTracker()
        self.loop.set_task_factory(task_factory)
        self.port = 0

        async def setup() -> None:
            srv = await self.loop.create_server(
                lambda: HttpServerProtocol(self.handler, self.lim, self.tracker, self.loop, render_error=render), "127.0.0.1", 0)
            self.srv = srv
            self.port = srv.sockets[0].getsockname()[1]

        self.start(setup)

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return s


@pytest.fixture
def server():
    srv = _Server(ServerLimits(header_timeout=0.5, keepalive_timeout=0.8, max_header_bytes=4096, max_headers=20,
                               max_body_bytes=1000, send_timeout=2.0, body_timeout=0.5))
    yield srv
    srv.stop()


def _read_responses(sock: socket.socket, n: int, timeout: float = 5.0) -> tuple[list[tuple[h11.Response, bytes]], bool]:
    """Read n responses with h11; returns them and whether the server closed the connection after."""
    conn = h11.Connection(h11.CLIENT)
    # h11 must be told about requests before it parses responses.
    out: list[tuple[h11.Response, bytes]] = []
    sock.settimeout(timeout)
    closed = False
    for _ in range(n):
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        resp = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    closed = True
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif isinstance(ev, h11.ConnectionClosed):
                raise AssertionError("connection closed before a full response")
        out.append((resp, body))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return out, closed


def _closed_soon(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def _raw(server: _Server, data: bytes) -> tuple[int, bytes, bool]:
    """Send raw bytes; return (status, body, closed_after)."""
    s = server.connect()
    s.sendall(data)
    buf = b""
    s.settimeout(5)
    closed = False
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n")[1:]:
                if line.startswith("content-length:"):
                    length = int(line.split(":")[1])
            if len(buf) >= head_end + 4 + length:
                closed = _closed_soon(s, 1.0) if "connection: close" in head else False
                break
    s.close()
    status = int(buf.split(b" ", 2)[1]) if buf else 0
    body = buf[buf.find(b"\r\n\r\n") + 4:] if buf else b""
    return status, body, closed


# ---- keep-alive and pipelining -------------------------------------------------------------

def test_keep_alive_serves_several_requests_on_one_connection(server):
    s = server.connect()
    for i in range(3):
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nh%d" % i)
    resps, closed = _read_responses(s, 3)
    assert [r.status_code for r, _ in resps] == [200, 200, 200]
    assert [orjson.loads(b)["body"] for _, b in resps] == ["h0", "h1", "h2"]
    assert not closed


def test_each_request_runs_in_a_task_of_its_own_named_for_it(server):
    """A request's handler is an asyncio Task (asyncio.timeout and cancellation need one), one per request, named
    (the server makes it directly, not through loop.create_task, which names a task after it is built)."""
    s = server.connect()
    for i in range(3):
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nh%d" % i)
    resps, _ = _read_responses(s, 3)
    tasks = server.handler.tasks
    assert [r.status_code for r, _ in resps] == [200, 200, 200] and len(tasks) == 3
    assert all(isinstance(t, asyncio.Task) for t in tasks) and len({id(t) for t in tasks}) == 3
    assert [t.get_name() for t in tasks] == ["fastgw-request"] * 3  # type: ignore[union-attr]
    assert all(t.get_loop() is server.loop for t in tasks)  # type: ignore[union-attr]


def test_a_loops_task_factory_makes_the_request_tasks() -> None:
    """Instrumentation that installs a task factory sees every request's task (the server makes its tasks itself
    only on a loop without one)."""
    made: list[asyncio.Task] = []

    def factory(loop, coro, **kw):  # noqa: ANN001, ANN202
        made.append(asyncio.Task(coro, loop=loop, **kw))
        return made[-1]

    srv = _Server(ServerLimits(), task_factory=factory)
    try:
        s = srv.connect()
        for i in range(2):
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nh%d" % i)
        resps, _ = _read_responses(s, 2)
        assert [r.status_code for r, _ in resps] == [200, 200]
        tasks = srv.handler.tasks
        assert len(tasks) == 2 and all(any(t is m for m in made) for t in tasks)
    finally:
        srv.stop()


def test_pipelined_requests_are_answered_in_order(server):
    s = server.connect()
    # /slow first: a naive server would answer the fast ones before it.
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
              b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    resps, _ = _read_responses(s, 4)
    assert resps[0][1] == b"slow"
    assert orjson.loads(resps[1][1])["path"] == "/echo"
    assert resps[2][1] == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert orjson.loads(resps[3][1])["body"] == "abc"


def test_large_pipelined_burst_is_not_mistaken_for_a_large_head(server):
    """100 small pipelined requests (6+ KiB, over this server's 4 KiB head limit) with the last head split."""
    reqs = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    s = server.connect()
    s.sendall(reqs + b"GET /echo HTTP/1.1\r\nHo")
    time.sleep(0.1)
    s.sendall(b"st: x\r\n\r\n")
    resps, closed = _read_responses(s, 101)
    assert len(resps) == 101 and all(r.status_code == 200 for r, _ in resps)
    assert not closed


def test_absolute_form_target_routes_by_its_path(server):
    status, body, _ = _raw(server, b"GET http://example.com/echo?x=1 HTTP/1.1\r\nHost: example.com\r\n"
                                   b"Connection: close\r\n\r\n")
    assert status == 200 and orjson.loads(body)["path"] == "/echo"


def test_trailing_whitespace_is_not_part_of_a_header_value(server):
    status, body, _ = _raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Thing: v \t\r\nContent-Length: 2 \r\n"
                                   b"Connection: close\r\n\r\nok")
    assert status == 200
    headers = dict(orjson.loads(body)["headers"])
    assert headers["x-thing"] == "v" and headers["content-length"] == "2"


def test_connection_close_is_honoured(server):
    status, _, closed = _raw(server, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and closed


def test_http10_closes_by_default_and_keeps_alive_on_request(server):
    status, _, closed = _raw(server, b"GET /echo HTTP/1.0\r\n\r\n")
    assert status == 200 and closed
    s = server.connect()
    s.sendall(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    time.sleep(0.1)
    data = s.recv(65536)
    assert b"connection: keep-alive" in data.lower()
    s.sendall(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_expect_100_continue(server):
    s = server.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    s.settimeout(3)
    assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(b"hello")
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and b'"body":"hello"' in data


def test_expect_100_continue_is_not_sent_when_body_too_large(server):
    status, body, closed = _raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                                        b"Expect: 100-continue\r\n\r\n")
    assert status == 413 and closed
    assert orjson.loads(body)["error"]["code"] == "request_too_large"


def test_keepalive_timeout_closes_idle_connection(server):
    s = server.connect()
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    _read_responses(s, 1)
    t0 = time.monotonic()
    assert _closed_soon(s, 3.0)
    assert time.monotonic() - t0 >= 0.5


# ---- limits ----------------------------------------------------------------------------

def test_header_bytes_limit_431(server):
    status, body, closed = _raw(server, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert status == 431 and closed
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


def test_header_bytes_limit_holds_when_a_header_never_ends(server):
    # httptools buffers an unfinished header value internally: the raw-byte bound must stop it.
    s = server.connect()
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(10):
        try:
            s.sendall(b"a" * 1000)
        except (BrokenPipeError, ConnectionResetError):
            break
    s.settimeout(3)
    assert s.recv(65536).startswith(b"HTTP/1.1 431")


def test_header_count_limit_431(server):
    hdrs = b"".join(b"X-%d: v\r\n" % i for i in range(25))
    status, _, closed = _raw(server, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n")
    assert status == 431 and closed


def test_body_limit_413_content_length(server):
    status, _, closed = _raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n" + b"a" * 1001)
    assert status == 413 and closed


def test_body_limit_413_chunked(server):
    body = b"".join(b"64\r\n" + b"a" * 100 + b"\r\n" for _ in range(11)) + b"0\r\n\r\n"
    status, _, closed = _raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert status == 413 and closed


def test_slowloris_header_timeout_408(server):
    s = server.connect()
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    s.settimeout(3)
    t0 = time.monotonic()
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in data.lower()
    assert time.monotonic() - t0 < 2.5
    assert _closed_soon(s)


def test_silent_connection_is_closed_after_header_timeout(server):
    s = server.connect()
    assert _closed_soon(s, 3.0)


# ---- RFC 9112 rejections --------------------------------------------------------------

@pytest.mark.parametrize("raw, status", [
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET /echo\r\n\r\n", 400),
    (b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n", 417),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;" + b"e" * 5000 + b"\r\nabc\r\n0\r\n\r\n",
     400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
])
def test_malformed_requests_are_rejected_and_closed(server, raw, status):
    got, body, closed = _raw(server, raw)
    assert got == status
    assert closed
    err = orjson.loads(body)["error"]
    assert err["message"] and err["type"]


def test_no_pipelined_request_after_a_framing_error_is_processed(server):
    s = server.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
              b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(3)
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")
    assert _closed_soon(s)
    assert "GET /slow" not in server.handler.seen


def test_valid_requests_before_a_framing_error_are_answered_first(server):
    s = server.connect()
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\n\r\n")
    resps, _ = _read_responses(s, 2)
    assert resps[0][1] == b"slow"
    assert resps[1][0].status_code == 400


def test_server_survives_garbage(server):
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\r\n\r\n\r\n", b"GET", b"\x00" * 100):
        s = server.connect()
        s.sendall(junk)
        s.close()
    status, _, _ = _raw(server, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200


# ---- responses and flow control -------------------------------------------------------

def test_streamed_response_framing_parses_with_h11(server):
    s = server.connect()
    s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    resps, _ = _read_responses(s, 1)
    resp, body = resps[0]
    assert dict(resp.headers)[b"transfer-encoding"] == b"chunked"
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_head_request_gets_no_body(server):
    s = server.connect()
    s.sendall(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    data = s.recv(65536)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length:" in first.lower()
    assert rest.startswith(b"HTTP/1.1 200")  # nothing between the HEAD answer and the next response


def test_slow_client_cannot_grow_server_memory(server):
    """A client that reads nothing: the producer is paused at the write high-water mark, not buffered."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(1.0)
    state = dict(server.handler.big_state)
    # Kernel buffers hold some; the gateway's own buffer stays near the 64 KiB watermark, far below 64 MiB.
    assert state["sent"] < 8 * 1024 * 1024
    assert state["max_buffered"] <= 64 * 1024 + 16384
    # ... and the send timeout (2 s here) drops a client that never reads, freeing its buffer.
    deadline = time.monotonic() + 5
    while server.tracker.conns and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.tracker.conns
    s.close()


# ---- the shell on a fake loop: timers run on a fake clock, no sockets, no sleeps ----------------------

class _Timer:
    def __init__(self, when: float, cb, args) -> None:  # noqa: ANN001
        self.when, self.cb, self.args, self.cancelled = when, cb, args, False

    def cancel(self) -> None:
        self.cancelled = True


class _Task:
    """Runs a coroutine step by step when the fake loop runs (handlers here never wait on I/O)."""

    def __init__(self, coro) -> None:  # noqa: ANN001
        self.coro, self._done = coro, False

    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        if self._done:
            return False
        self._done = True
        self.coro.close()
        return True

    def step(self) -> None:
        try:
            self.coro.send(None)
        except StopIteration:
            self._done = True


class FakeLoop:
    """uvicorn's MockLoop: `call_later` is recorded and run when the fake clock is advanced."""

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
        """Run ready callbacks and task steps until nothing is left to do."""
        while self.ready or any(not t.done() for t in self.tasks):
            ready, self.ready = self.ready, []
            for cb, args in ready:
                cb(*args)
            for t in [t for t in self.tasks if not t.done()]:
                t.step()

    def advance(self, dt: float) -> None:
        self.now += dt
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= self.now), key=lambda t: t.when)
            if not due:
                break
            t = due[0]
            self.timers.remove(t)
            t.cb(*t.args)
            self.run()
        self.run()


class FakeTransport:
    def __init__(self, loop: FakeLoop) -> None:
        self.loop, self.proto = loop, None
        self.out = b""
        self.closed = self.aborted = self.read_paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.out += data

    def writelines(self, parts) -> None:  # noqa: ANN001
        self.write(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.proto.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


_FAKE_LIM = ServerLimits(header_timeout=10.0, keepalive_timeout=75.0, max_header_bytes=4096, max_headers=20,
                         max_body_bytes=1000, send_timeout=60.0, body_timeout=30.0)


def _fake(lim: ServerLimits = _FAKE_LIM):
    loop = FakeLoop()
    handler = _Handler()
    tracker = ConnectionTracker()
    proto = HttpServerProtocol(handler, lim, tracker, loop, render_error=render)  # type: ignore[arg-type]
    t = FakeTransport(loop)
    t.proto = proto
    proto.connection_made(t)  # type: ignore[arg-type]
    return loop, t, proto, handler, tracker


def test_fake_header_timeout_answers_408_and_closes():
    loop, t, proto, _, tracker = _fake()
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    loop.advance(9.9)
    assert t.out == b"" and not t.closed
    loop.advance(0.2)
    assert t.out.startswith(b"HTTP/1.1 408") and b"connection: close" in t.out.lower()
    assert t.closed and not tracker.conns


def test_fake_header_clock_starts_with_each_head_not_with_the_connection():
    loop, t, proto, _, _ = _fake()
    loop.advance(5.0)
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run()
    assert t.out.startswith(b"HTTP/1.1 200")
    t.out = b""
    loop.advance(4.0)
    proto.data_received(b"GET /echo HTTP/1.1\r\n")  # a new head: a new 10 s budget
    loop.advance(9.0)
    assert t.out == b""
    loop.advance(1.1)
    assert t.out.startswith(b"HTTP/1.1 408")


def test_fake_silent_connection_is_closed_after_header_timeout_without_an_answer():
    loop, t, proto, _, _ = _fake()
    loop.advance(10.1)
    assert t.closed and t.out == b""


def test_slow_body_timeout_408():
    loop, t, proto, handler, _ = _fake()
    proto.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    loop.advance(29.9)
    assert t.out == b"" and not t.closed
    loop.advance(0.2)
    assert t.out.startswith(b"HTTP/1.1 408") and b"connection: close" in t.out.lower()
    assert t.closed and handler.seen == []


def test_a_body_that_keeps_coming_is_not_timed_out():
    # body_timeout is an idle timer: with no rate floor a slow body that keeps coming is served (the floor,
    # min_body_rate, has its own tests in test_server_abuse.py).
    loop, t, proto, _, _ = _fake(ServerLimits(header_timeout=10.0, keepalive_timeout=75.0, max_header_bytes=4096,
                                              max_headers=20, max_body_bytes=1000, send_timeout=60.0,
                                              body_timeout=30.0, min_body_rate=0))
    proto.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
    for b in (b"ab", b"cd", b"ef"):
        loop.advance(20.0)  # each gap under the 30 s body timeout, the whole body over it
        assert t.out == b""
        proto.data_received(b)
    loop.run()
    assert t.out.startswith(b"HTTP/1.1 200")


def test_fake_keepalive_timeout_closes_an_idle_connection_only():
    loop, t, proto, _, _ = _fake()
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run()
    assert t.out.startswith(b"HTTP/1.1 200") and not t.closed
    loop.advance(74.9)
    assert not t.closed
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")  # the idle clock restarts with its answer
    loop.run()
    loop.advance(74.9)
    assert not t.closed
    loop.advance(0.2)
    assert t.closed and not t.aborted


def test_fake_keepalive_timer_firing_mid_request_waits_for_the_next_idle_period():
    loop, t, proto, _, _ = _fake()
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run()
    loop.advance(74.0)
    proto.data_received(b"GET /echo HTTP/1.1\r\n")  # a head under way when the keep-alive time is up
    loop.advance(2.0)
    assert not t.closed
    proto.data_received(b"Host: x\r\n\r\n")
    loop.run()
    assert t.out.count(b"HTTP/1.1 200") == 2
    loop.advance(74.9)  # a whole keep-alive timeout from the second answer
    assert not t.closed
    loop.advance(0.2)
    assert t.closed and not t.aborted


def test_fake_send_timeout_drops_a_client_that_reads_nothing():
    loop, t, proto, _, _ = _fake()
    proto.pause_writing()
    loop.advance(59.0)
    proto.resume_writing()  # it read in time
    loop.advance(10.0)
    assert not t.aborted
    proto.pause_writing()
    loop.advance(60.1)
    assert t.aborted and t.closed


def test_no_request_after_connection_close_is_processed():
    loop, t, proto, handler, _ = _fake()
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run()  # runs until nothing is left: a wrongly queued /slow would have been dispatched
    assert t.closed and t.out.count(b"HTTP/1.1 ") == 1
    assert "GET /slow" not in handler.seen and handler.seen == ["GET /echo"]


def test_pipelined_requests_past_the_queue_bound_pause_reading_until_answered():
    loop, t, proto, handler, _ = _fake()
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
    assert t.read_paused
    loop.run()
    assert not t.read_paused and handler.seen == ["GET /echo"] * 10 and t.out.count(b"HTTP/1.1 200") == 10


def test_expect_continue_is_sent_once_and_only_when_idle():
    loop, t, proto, _, _ = _fake()
    proto.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert t.out == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.data_received(b"ok")
    loop.run()
    assert t.out.count(b"100 Continue") == 1 and b'"body":"ok"' in t.out


def test_drain_closes_idle_connections_and_lingering_ones_answer_with_close():
    loop, t, proto, _, tracker = _fake()
    tracker.shutdown(linger=True)
    assert not t.closed  # idle and lingering: its next request is answered, then it closes
    proto.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run()
    assert b"connection: close" in t.out.lower() and t.closed
    loop2, t2, proto2, _, tracker2 = _fake()
    tracker2.shutdown()
    assert t2.closed


def test_connection_lost_cancels_the_request_in_flight_without_a_listener():
    loop, t, proto, handler, _ = _fake()
    proto.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    task = proto._current
    assert task is not None
    proto.connection_lost(None)
    assert task.done() and proto.flow_listener is None
