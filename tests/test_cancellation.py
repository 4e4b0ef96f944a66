"""A client that leaves makes the gateway close its upstream request at once, in every phase; one that leaves
after the whole answer leaves the upstream connection (back in the pool by then) alone."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import orjson
import pytest


class HangingUpstream:
    """Reads a request, sends what the phase needs, then waits; records when the gateway closes on it."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.closed_at: float | None = None
        self.got_request = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
        while len(body) < length:
            body += conn.recv(65536)
        if self.phase in ("ttft", "midstream"):
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        if self.phase == "midstream":
            ev = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
            conn.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
        self.got_request.set()
        conn.settimeout(20)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        self.closed_at = time.monotonic()
        conn.close()


@pytest.mark.parametrize("phase, stream", [("ttft", True), ("midstream", True), ("waiting", False)])
def test_client_disconnect_closes_the_upstream_within_100ms(gateway_factory, phase, stream):
    up = HangingUpstream(phase)
    gw = gateway_factory.start({"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "u", "provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{up.port}/v1"}]}})
    c = socket.create_connection((gw.host, gw.port), timeout=10)
    body = orjson.dumps({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
    c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert up.got_request.wait(10)
    if phase == "midstream":
        assert b"hi" in c.recv(65536)  # the first event reached the client
    time.sleep(0.2)
    left = time.monotonic()
    c.close()
    deadline = time.monotonic() + 5
    while up.closed_at is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert up.closed_at is not None, "the gateway kept the upstream request open"
    assert up.closed_at - left < 0.1


class _Wire:
    """A client transport that keeps what is written."""

    def __init__(self) -> None:
        self.data = b""

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts) -> None:  # type: ignore[no-untyped-def]
        self.data += b"".join(parts)

    def get_write_buffer_size(self) -> int:
        return 0


def test_a_finished_stream_leaves_its_upstream_connection_alone() -> None:
    """Once the relay is done the attempt gives the upstream connection back to the pool, while the relay stays the
    client connection's flow listener until the handler returns (a settlement, an audit record, a deferred end's
    last bytes still to come). What the client does then must not reach that connection, which may already carry
    another request: a client closing its socket after reading the whole answer closed it (that request then
    waited for ever: tests/test_quota_load.py's hang), and a full client buffer would pause it."""
    from fastgw.proto.flow import FlowControl
    from fastgw.proto.writer import Responder
    from fastgw.stream import SSERelay
    from tests.policy.test_cpu_stream import _Source

    loop = asyncio.new_event_loop()
    try:
        wire, flow, source = _Wire(), FlowControl(loop), _Source()
        relay = SSERelay(Responder(wire, flow, True, False), source, loop, (200, []),  # type: ignore[arg-type]
                         defer_end=True)
        relay.start()
        relay.on_data(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
        flow.pause_writing()  # a slow client while the stream runs: the upstream is held
        flow.resume_writing()
        assert (source.paused, source.resumed) == (1, 1)
        relay.on_end()
        end = relay.done.result()
        assert end.tail is not None  # left to the caller, who writes it after the connection went back
        flow.pause_writing()
        flow.resume_writing()
        assert (source.paused, source.resumed) == (1, 1)
        flow.connection_lost()  # the client read it all and closed
        assert not source.detached
        # While the answer runs, a client that leaves does stop the upstream.
        wire, flow, source = _Wire(), FlowControl(loop), _Source()
        relay = SSERelay(Responder(wire, flow, True, False), source, loop, (200, []))  # type: ignore[arg-type]
        relay.start()
        relay.on_data(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
        flow.connection_lost()
        assert source.detached and relay.done.result().client_left
    finally:
        loop.close()
