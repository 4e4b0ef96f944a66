"""The streaming relay inside one worker: backpressure from a slow client reaches the source; a gone client stops it."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson

from fastgw.api.errors import render
from fastgw.app import App, build_targets
from fastgw.config import Config, MockOptions, Pack, Providers, Target
from fastgw.proto.server import ConnectionTracker, HttpServerProtocol, ServerLimits
from fastgw.upstreams import TimedSource
from tests.support.loop_thread import LoopThread


class _Recording:
    """The mock upstream, recording the source of every answer it opens."""

    def __init__(self, inner: Any, sources: list[TimedSource]) -> None:
        self.inner = inner
        self.sources = sources

    def prepare(self, target: Any, adapter: Any, call: Any) -> object:
        return self.inner.prepare(target, adapter, call)

    async def open(self, target: Any, request: object, call: Any) -> Any:
        conn = await self.inner.open(target, request, call)
        self.sources.append(conn._source)
        return conn

    def release(self, conn: Any) -> None:
        self.inner.release(conn)


class _AppServer(LoopThread):
    """The real App behind the real protocol, on a uvloop loop in a thread."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.sources: list[TimedSource] = []

        async def setup() -> None:
            app = App(cfg, build_targets(cfg, {}), self.loop)
            # Every source the mock opens, recorded (the compiled mock builds its sources natively: no patch of the
            # class reaches them).
            upstreams = app.pipeline.attempt._upstreams
            upstreams["mock"] = _Recording(upstreams["mock"], self.sources)
            self.tracker = ConnectionTracker()
            srv = await self.loop.create_server(
                lambda: HttpServerProtocol(app, ServerLimits(send_timeout=30), self.tracker, self.loop, render_error=render),
                "127.0.0.1", 0)
            self.port = srv.sockets[0].getsockname()[1]

        self.start(setup)


def _cfg(**mock) -> Config:
    return Config(pack=Pack(name="t"), providers=Providers(targets=[
        Target(id="mock", provider="mock", model="mock-1", mock=MockOptions(**mock))]))


def _send_stream_request(port: int, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    body = orjson.dumps({"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def test_slow_client_pauses_the_source_instead_of_buffering():
    # 20k events of ~450 bytes = ~9 MB if the gateway buffered them for a client that reads nothing.
    srv = _AppServer(_cfg(chunks=20_000, chunk_size=256))
    try:
        s = _send_stream_request(srv.port, rcvbuf=4096)
        time.sleep(1.0)
        (src,) = srv.sources
        produced_1 = src._i
        time.sleep(0.5)
        produced_2 = src._i
        assert src._paused, "the relay must pause the source when the client's buffer is full"
        assert produced_2 == produced_1, "a paused source produces nothing"
        # What was produced fits in kernel buffers + the 64 KiB write high-water mark: bounded, not 20 MB.
        assert produced_2 * 450 < 4 * 1024 * 1024
        # Reading resumes the source and the whole answer arrives intact.
        s.settimeout(10)
        data = bytearray()
        while not data.endswith(b"0\r\n\r\n"):
            chunk = s.recv(1 << 20)
            assert chunk
            data += chunk
        assert data.count(b"chat.completion.chunk") == 20_000 + 2
        assert b"data: [DONE]" in data
    finally:
        srv.stop()


def test_client_gone_stops_the_source():
    srv = _AppServer(_cfg(chunks=1000, delay=0.01))
    try:
        s = _send_stream_request(srv.port)
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.close()
        time.sleep(0.3)
        (src,) = srv.sources
        assert src._stopped and src._i < 200
        assert not srv.tracker.conns
    finally:
        srv.stop()
