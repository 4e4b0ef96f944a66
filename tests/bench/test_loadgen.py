"""bench.loadgen: when TTFB is stamped, and the idle gap between a connection's requests."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
import uvloop

from bench import loadgen
from bench.stream import free_port

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def get_extra_info(self, name: str) -> None:
        return None

    def close(self) -> None:
        pass


def test_ttfb_is_the_arrival_of_the_read_that_brought_the_first_event(monkeypatch: pytest.MonkeyPatch):
    """Each `_now()` call returns the next integer: TTFB must be the stamp taken when the read with the first
    `data:` arrived, not one taken after the client parsed and counted the whole read."""
    clock = itertools.count(100)
    monkeypatch.setattr(loadgen, "_now", lambda: float(next(clock)))
    spec = loadgen.LoadSpec(host="127.0.0.1", port=1, request=b"GET / HTTP/1.1\r\n\r\n", connections=1,
                            requests=1)
    run = loadgen._Run(spec, 1, asyncio.new_event_loop())
    conn = loadgen._Conn(run)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    t0 = conn.t0
    conn.data_received(_HEAD)  # read 1: the head, no event
    body = b"".join(_chunk(b"data: {\"n\": %d}\n\n" % i) for i in range(20)) + _chunk(b"data: [DONE]\n\n")
    for part in (body[:5], body[5:] + b"0\r\n\r\n"):  # read 2: no `data:` yet; read 3: every event
        conn.data_received(part)
    assert run.ok == 1 and run.events == 21
    # t0, then one stamp per read (3 reads): the first event came with the third read, stamped t0 + 3.
    assert run.ttfb[0] == 3.0, (t0, list(run.ttfb))
    run.loop.close()


def _server(port: int, arrivals: list[float], ready: threading.Event, stop: threading.Event) -> None:
    answer = _HEAD + _chunk(b"data: {}\n\ndata: [DONE]\n\n") + b"0\r\n\r\n"

    class P(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            arrivals.append(time.monotonic())
            self.t.write(answer)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(P, "127.0.0.1", port)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)
        srv.close()

    uvloop.run(main())


@pytest.mark.parametrize("gap", [0.0, 0.2])
def test_gap_holds_each_connection_idle_between_requests(gap: float):
    port = free_port()
    arrivals: list[float] = []
    ready, stop = threading.Event(), threading.Event()
    th = threading.Thread(target=_server, args=(port, arrivals, ready, stop), daemon=True)
    th.start()
    assert ready.wait(10)
    try:
        req = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions", b"{}")
        raw = loadgen.run_load(loadgen.LoadSpec(host="127.0.0.1", port=port, request=req, connections=1,
                                                requests=4, warmup_requests=1, timeout=20, gap=gap))
    finally:
        stop.set()
        th.join(10)
    assert raw["ok"] == 4 and not raw["errors"], raw
    assert len(arrivals) == 5
    spacing = [b - a for a, b in zip(arrivals, arrivals[1:])]
    if gap:
        assert min(spacing) >= gap, spacing
    else:
        assert max(spacing) < 0.2, spacing  # back to back: nothing like the gap's wait
