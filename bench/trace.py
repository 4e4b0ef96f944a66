"""Per-event arrival times of streamed responses, one request at a time.

The closed-loop load generator (`bench.loadgen`) records only time to first event
and completion time. To see how long an output policy holds events back, the
arrival of every SSE event is needed: this client sends `requests` sequential
requests on one keep-alive connection (after `warmup` unrecorded ones) and, for
each response, stamps every body chunk with `time.monotonic()` as it is read.
After the response completes, the events are located in the body (an event ends
at a blank line) and each event that carries a `data:` field gets the time of the
chunk that completed it. The body is kept, so the caller can also check what was
written (redactions, leaks).

Same stack as the load generator (uvloop, `asyncio.Protocol`, httptools), so the
stamps are taken in `data_received`, one loop iteration after the kernel had the
bytes. Run in-process: the harness does nothing else meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass, field

import httptools
import uvloop

__all__ = ["TraceSpec", "Traced", "run_trace", "event_times"]

_now = time.monotonic
_EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclass
class TraceSpec:
    host: str
    port: int
    request: bytes
    requests: int = 100
    warmup: int = 10
    #: Upper bound on the whole pass (s).
    timeout: float = 120.0


@dataclass
class Traced:
    """One recorded response."""

    status: int
    #: Seconds from the request's write() to the arrival of each data event, in order.
    times: list[float]
    body: bytes
    #: Body reads (socket reads that carried body bytes) of the response.
    reads: int


@dataclass
class TraceResult:
    responses: list[Traced] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def event_times(body: bytes, marks: list[tuple[float, int]]) -> list[float]:
    """Arrival time of each event with a `data:` line in `body`, given (time, body length so far) per read."""
    out: list[float] = []
    start = 0
    k = 0
    for m in _EVENT_END.finditer(body):
        end = m.end()
        block = body[start:end]
        start = end
        if not (block.startswith(b"data:") or b"\ndata:" in block):
            continue  # comments, event:/id:-only blocks
        while k < len(marks) - 1 and marks[k][1] < end:
            k += 1
        out.append(marks[k][0])
    return out


class _Conn(asyncio.Protocol):
    def __init__(self, spec: TraceSpec, result: TraceResult, done: asyncio.Future) -> None:
        self.spec, self.result, self.done = spec, result, done
        self.parser = httptools.HttpResponseParser(self)
        self.n = 0
        self.tr: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next()

    def _next(self) -> None:
        if self.n >= self.spec.warmup + self.spec.requests:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.status = 0
        self.parts: list[bytes] = []
        self.marks: list[tuple[float, int]] = []
        self.size = 0
        self.reads = 0
        self.t0 = _now()
        self.tr.write(self.spec.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self._t = _now()  # one stamp per socket read, shared by everything parsed from it
        self._read_had_body = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("http_parse")
            self.tr.close()  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)
        self.size += len(body)
        self.marks.append((self._t - self.t0, self.size))
        if not self._read_had_body:
            self._read_had_body = True
            self.reads += 1

    def on_message_complete(self) -> None:
        body = b"".join(self.parts)
        if self.n >= self.spec.warmup:
            if self.status != 200:
                self._fail(f"status_{self.status}")
            elif b"data: [DONE]" not in body[-32:]:
                self._fail("no_done")
            else:
                self.result.responses.append(Traced(self.status, event_times(body, self.marks), body, self.reads))
        self.n += 1
        if not self.parser.should_keep_alive():
            self.tr.close()  # type: ignore[union-attr]
            if not self.done.done():
                self.done.set_exception(ConnectionError("server closed the keep-alive connection"))
            return
        self._next()

    def _fail(self, kind: str) -> None:
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail("conn_lost")
            self.done.set_result(None)


async def _trace(spec: TraceSpec) -> TraceResult:
    loop = asyncio.get_running_loop()
    result = TraceResult()
    done = loop.create_future()
    tr, _ = await loop.create_connection(lambda: _Conn(spec, result, done), spec.host, spec.port)
    try:
        await asyncio.wait_for(done, spec.timeout)
    except asyncio.TimeoutError:
        result.errors["timeout"] = result.errors.get("timeout", 0) + 1
    finally:
        tr.close()
    return result


def run_trace(spec: TraceSpec) -> TraceResult:
    return uvloop.run(_trace(spec))
