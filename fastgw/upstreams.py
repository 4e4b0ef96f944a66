"""Where an attempt's answer comes from: a pooled HTTP connection to the provider, or the in-process mock.

Both give the attempt the same thing — a response head (status, headers), then
either the whole body (`read_body`) or a streamed body delivered to a sink (they
are a relay `Source`). The pipeline and the attempt never ask which one they have:
the built-in mock is a provider like the others, chosen by the target's provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final, Protocol

from fastgw.providers.base import Adapter, TargetRuntime, UpstreamRequest
from fastgw.providers.mock import MockModel
from fastgw.providers.mock_validate import refusal
from fastgw.proto.client import Sink, UpstreamConnection, UpstreamPool

__all__ = ["Upstream", "Connection", "HttpUpstream", "MockUpstream", "Call", "TimedSource"]

_JSON: Final = b"application/json"
_SSE: Final = b"text/event-stream"


class Call:
    """One client request as every attempt sends it: endpoint, the parsed body the policies judged, stream."""

    __slots__ = ("endpoint", "body", "stream", "request_id", "headers", "strip_usage")

    def __init__(self, endpoint: str, body: dict, stream: bool, request_id: str,
                 headers: list[tuple[bytes, bytes]], strip_usage: bool = False) -> None:
        self.endpoint = endpoint
        self.body = body
        self.stream = stream
        self.request_id = request_id
        #: The client's request headers (the native Messages endpoint forwards a few of them).
        self.headers = headers
        #: This attempt asked the upstream for a usage chunk the client did not ask for: take it out again.
        self.strip_usage = strip_usage


class Connection(Protocol):
    """A response in progress: its head, then its body (whole, or streamed to a sink)."""

    status: int
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None: ...
    async def read_body(self, *, timeout: float | None = None, first_by: float | None = None,
                        idle: float | None = None) -> bytes: ...
    def set_sink(self, sink: Sink) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def detach(self) -> None: ...


class Upstream(Protocol):
    """Prepares one attempt's request, opens a connection for it, and takes the connection back afterwards."""

    def prepare(self, target: TargetRuntime, adapter: Adapter, call: Call) -> object:
        """The request for `target` (raises GatewayError for a call the target cannot take)."""
    def open(self, target: TargetRuntime, request: object, call: Call) -> Awaitable[Connection]: ...
    def release(self, conn: Connection) -> None: ...


class HttpUpstream:
    """A provider over HTTP/1.1, through the worker's keep-alive pool."""

    __slots__ = ("pool",)

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def prepare(self, target: TargetRuntime, adapter: Adapter, call: Call) -> UpstreamRequest:
        return adapter.build_request(target, call.endpoint, call.body, call.stream)

    def open(self, target: TargetRuntime, request: object, call: Call) -> Awaitable[UpstreamConnection]:
        # The pool's own coroutine, not one wrapping it: one frame less to pass on every resume of the request.
        ureq = request
        assert isinstance(ureq, UpstreamRequest)
        return self.pool.exchange((ureq.scheme, ureq.host, ureq.port), ureq.encode(),
                                  connect_timeout=target.connect_timeout, head_timeout=target.ttft_timeout,
                                  ca_file=target.ca_file)

    def release(self, conn: Connection) -> None:
        assert isinstance(conn, UpstreamConnection)
        self.pool.release(conn)


class MockConnection:
    """The built-in mock's answer as a response: JSON after the configured pacing, or paced SSE events."""

    __slots__ = ("status", "headers", "_loop", "_body", "_source", "_wait")

    def __init__(self, loop: asyncio.AbstractEventLoop, events: list[bytes], body: bytes, stream: bool,
                 ttft: float, delay: float, status: int = 200) -> None:
        self.status = status
        self.headers = [(b"content-type", _SSE if stream and status == 200 else _JSON)]
        self._loop = loop
        self._body = body
        self._source = TimedSource(loop, events, ttft, delay)
        # A non-streamed answer takes as long as the streamed one would.
        self._wait = ttft + delay * len(events)

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    async def read_body(self, *, timeout: float | None = None, first_by: float | None = None,
                        idle: float | None = None) -> bytes:
        if self._wait > 0:
            await asyncio.sleep(self._wait)
        return self._body

    def set_sink(self, sink: Sink) -> None:
        self._source.set_sink(sink)

    def pause_reading(self) -> None:
        self._source.pause_reading()

    def resume_reading(self) -> None:
        self._source.resume_reading()

    def detach(self) -> None:
        self._source.detach()


class MockUpstream:
    """The in-process mock provider: deterministic answers, no network, no key."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def prepare(self, target: TargetRuntime, adapter: Adapter, call: Call) -> Call:
        return call  # answered in process: the parsed call is the request

    def open(self, target: TargetRuntime, request: object, call: Call) -> Awaitable[Connection]:
        return self._open(target, call)

    async def _open(self, target: TargetRuntime, call: Call) -> Connection:
        mock = target.options
        assert isinstance(mock, MockModel)
        refused = refusal(call.endpoint, call.body)
        if refused is not None:
            # What OpenAI answers a request it finds invalid, and as fast: no pacing.
            return MockConnection(self._loop, [], refused, False, 0.0, 0.0, status=400)
        if call.endpoint == "embeddings":
            return MockConnection(self._loop, [], mock.embeddings(call.body), False, 0.0, 0.0)
        reply = (mock.chat(call.body, call.request_id) if call.endpoint == "chat/completions"
                 else mock.completion(call.body, call.request_id))
        return MockConnection(self._loop, reply.events, reply.json, call.stream, reply.ttft, reply.delay)

    def release(self, conn: Connection) -> None:
        conn.detach()


class TimedSource:
    """An in-process source: emits prepared SSE events with a first delay and a per-event delay, honouring pause."""

    __slots__ = ("_loop", "_events", "_i", "_ttft", "_delay", "_sink", "_paused", "_timer", "_stopped")

    def __init__(self, loop: asyncio.AbstractEventLoop, events: list[bytes], ttft: float, delay: float) -> None:
        self._loop = loop
        self._events = events
        self._i = 0
        self._ttft = ttft
        self._delay = delay
        # Any sink (a relay, or a front's translating source): typed by the protocol, as a compiled method checks
        # its argument's type.
        self._sink: Sink | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._stopped = False

    def set_sink(self, sink: Sink) -> None:
        self._sink = sink
        self._schedule(self._ttft)

    def _schedule(self, delay: float) -> None:
        if delay > 0:
            self._timer = self._loop.call_later(delay, self._tick)
        else:
            self._timer = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._stopped or self._paused or self._sink is None:
            return
        sink = self._sink
        events = self._events
        if self._i < len(events):
            sink.on_data(events[self._i])
            self._i += 1
        if self._i >= len(events):
            self._stopped = True
            sink.on_end()  # the last event and the terminator in one write
            return
        sink.flush()
        self._schedule(self._delay)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._timer is None and not self._stopped:
                self._schedule(0)

    def detach(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
