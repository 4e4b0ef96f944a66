"""A pass-through stream's first read, when it brings much more than the first event (a fast upstream's whole
answer), has that event written before the rest, but only while the worker has no other request in flight: the
client's time to first event then waits for one event's work, and a busy worker keeps one write per read."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import orjson

from fastgw.api.errors import render
from fastgw.app import App, build_targets
from fastgw.config import Config, MockOptions, Pack, Providers, Target
from fastgw.policy.base import RequestContext
from fastgw.proto.chunked import LAST_CHUNK
from fastgw.proto.flow import FlowControl
from fastgw.proto.limits import EARLY_WRITE_BYTES
from fastgw.proto.server import ConnectionTracker, HttpServerProtocol, ServerLimits
from fastgw.proto.writer import Responder
from fastgw.stream import SSERelay
from tests.policy.test_cpu_stream import _Source
from tests.support.loop_thread import LoopThread
from tests.support.scripted_upstream import ScriptedUpstream, script_key

EVENTS = [b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"w%d"}}],'
          b'"usage":null}\n\n' % i for i in range(60)]
USAGE = b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":60}}\n\n'
STREAM = b"".join(EVENTS) + USAGE + b"data: [DONE]\n\n"


class _Wire:
    """A client transport that keeps each write (one `writelines` call: one writev) apart."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writelines((data,))

    def writelines(self, parts: Any) -> None:
        self.writes.append(b"".join(parts))

    def get_write_buffer_size(self) -> int:
        return 0


def _chunks(body: bytes) -> list[bytes]:
    """The data of each chunk of a chunked body (no terminator)."""
    out, i = [], 0
    while True:
        j = body.index(b"\r\n", i)
        n = int(body[i:j], 16)
        if n == 0:
            return out
        out.append(body[j + 2:j + 2 + n])
        i = j + 4 + n


def _relay(loop: asyncio.AbstractEventLoop, early: bool, strip: bool) -> tuple[SSERelay, _Wire]:
    wire = _Wire()
    relay = SSERelay(Responder(wire, FlowControl(loop), True, False), _Source(), loop, (200, []))  # type: ignore[arg-type]
    relay.usage_sink = RequestContext("req_early", "POST", "/v1/chat/completions", [])
    relay.strip_usage = strip
    relay.early_write = early
    relay.start()
    return relay, wire


def _run(relay: SSERelay, reads: list[bytes]) -> None:
    """As the upstream connection drives a relay: a flush after each read, but the read that completes the body
    goes with the end (its events and the terminator in one write)."""
    for i, r in enumerate(reads):
        relay.on_data(r)
        if i < len(reads) - 1:
            relay.flush()
    relay.on_end()


def test_a_large_first_read_writes_its_first_event_first() -> None:
    loop = asyncio.new_event_loop()
    try:
        for strip in (True, False):
            relay, wire = _relay(loop, True, strip)
            _run(relay, [STREAM])
            assert len(wire.writes) == 2, wire.writes
            head, first = wire.writes[0].split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert _chunks(first + LAST_CHUNK) == [EVENTS[0]]  # the first event alone, with the head
            rest = _chunks(wire.writes[1])
            assert wire.writes[1].endswith(LAST_CHUNK)
            expected = STREAM.replace(USAGE, b"") if strip else STREAM
            assert EVENTS[0] + b"".join(rest) == expected
            assert relay.done.result().events == expected.count(b"data:")
            assert relay.usage_sink.usage == {"prompt_tokens": 3, "completion_tokens": 60}  # type: ignore[union-attr]
    finally:
        loop.close()


def test_without_the_flag_or_below_the_size_a_read_is_one_write() -> None:
    loop = asyncio.new_event_loop()
    try:
        relay, wire = _relay(loop, False, True)
        _run(relay, [STREAM])
        assert len(wire.writes) == 1  # head, every event and the terminator in one writev
        small = b"".join(EVENTS[:3])
        assert len(small) <= EARLY_WRITE_BYTES
        relay, wire = _relay(loop, True, True)
        _run(relay, [small, b"data: [DONE]\n\n"])
        assert _chunks(wire.writes[0].split(b"\r\n\r\n", 1)[1] + LAST_CHUNK) == [small]
        # Once the first byte is out, later large reads are one write each.
        relay, wire = _relay(loop, True, True)
        _run(relay, [EVENTS[0], STREAM[len(EVENTS[0]):]])
        assert len(wire.writes) == 2 and wire.writes[1].endswith(LAST_CHUNK)
    finally:
        loop.close()


def test_the_client_gets_the_same_bytes_whatever_the_reads() -> None:
    """Early write or not, any cut of the stream into reads relays the same bytes and counts the same events."""
    rng = random.Random(18)
    loop = asyncio.new_event_loop()
    try:
        for case in range(80):
            strip = case % 2 == 0
            # CR LF line ends too: such a block has no LF LF to cut at and is written whole.
            stream = STREAM.replace(b"\n", b"\r\n") if case % 5 == 4 else STREAM
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 6)))
            reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            bodies = []
            for early in (False, True):
                relay, wire = _relay(loop, early, strip)
                _run(relay, reads)
                body = b"".join(wire.writes).split(b"\r\n\r\n", 1)[1]
                bodies.append((b"".join(_chunks(body)), relay.done.result().events))
            assert bodies[0] == bodies[1], (case, cuts)
            usage = USAGE.replace(b"\n", b"\r\n") if case % 5 == 4 else USAGE
            assert bodies[1][0] == (stream.replace(usage, b"") if strip else stream), (case, cuts)
    finally:
        loop.close()


def test_an_error_as_the_first_event_still_falls_back() -> None:
    """The first event an upstream error: nothing is written (another target may answer), early write or not."""
    loop = asyncio.new_event_loop()
    try:
        err = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
        relay, wire = _relay(loop, True, True)
        relay.on_data(err + b"".join(EVENTS))
        end = relay.done.result()
        assert wire.writes == [] and end.before_first_byte and "overloaded" in str(end.error)
    finally:
        loop.close()


# ---- through the worker: the flag follows the requests in flight -------------------------------------------------

class _Recorder(asyncio.Protocol):
    """The real server protocol, its transport's writes kept per connection."""

    def __init__(self, inner: HttpServerProtocol, writes: list[bytes]) -> None:
        self.inner = inner
        self.writes = writes

    def connection_made(self, transport: Any) -> None:
        self.inner.connection_made(_RecordingTransport(transport, self.writes))

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _RecordingTransport:
    def __init__(self, inner: Any, writes: list[bytes]) -> None:
        self._inner = inner
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._inner.write(data)

    def writelines(self, parts: Any) -> None:
        self._writes.append(b"".join(parts))
        self._inner.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Worker(LoopThread):
    """The real App behind the real protocol and tracker (as a worker boots them), on uvloop in a thread."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.writes: dict[int, list[bytes]] = {}

        async def setup() -> None:
            tracker = ConnectionTracker()
            app = App(cfg, build_targets(cfg, {}), self.loop, tracker=tracker)

            def factory() -> _Recorder:
                writes: list[bytes] = []
                self.writes[len(self.writes)] = writes
                return _Recorder(HttpServerProtocol(app, ServerLimits(), tracker, self.loop, render_error=render),
                                 writes)

            srv = await self.loop.create_server(factory, "127.0.0.1", 0)
            self.port = srv.sockets[0].getsockname()[1]

        self.start(setup)


def _ask(port: int, model: str, content: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = orjson.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": content}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(LAST_CHUNK):
        chunk = s.recv(1 << 16)
        assert chunk, data[-200:]
        data += chunk
    return data


def test_the_worker_writes_early_only_with_no_other_request_in_flight() -> None:
    up = ScriptedUpstream()
    key = script_key()
    up.scripts[key] = [b"".join(EVENTS) + b"data: [DONE]\n\n"]  # the answer in one write: one read here
    cfg = Config(pack=Pack(name="t"), providers=Providers(targets=[
        Target(id="s", provider="openai", model="m", base_url=up.url),
        Target(id="slow", provider="mock", model="mock-1", mock=MockOptions(chunks=200, delay=0.02))]))
    w = _Worker(cfg)
    try:
        # Alone: the head and the first event in the first write, the rest after.
        s = _ask(w.port, "m", key)
        data = _read_all(s)
        s.close()
        alone = w.writes[0]
        assert _chunks(alone[0].split(b"\r\n\r\n", 1)[1] + LAST_CHUNK) == [EVENTS[0]], alone[0][-300:]
        assert b"".join(_chunks(data.split(b"\r\n\r\n", 1)[1])) == b"".join(EVENTS) + b"data: [DONE]\n\n"
        # With a slow stream in flight on another connection: the read is one write.
        slow = _ask(w.port, "mock-1", "hi")
        assert slow.recv(1 << 16)  # its head is out: the request is in flight
        s = _ask(w.port, "m", key)
        data = _read_all(s)
        s.close()
        busy = w.writes[2]
        assert b"".join(_chunks(busy[0].split(b"\r\n\r\n", 1)[1] + LAST_CHUNK)).startswith(b"".join(EVENTS)), busy[0]
        assert b"".join(_chunks(data.split(b"\r\n\r\n", 1)[1])) == b"".join(EVENTS) + b"data: [DONE]\n\n"
        slow.close()
    finally:
        w.stop()
        up.stop()
