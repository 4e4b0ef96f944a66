"""Request bodies cannot hold a worker (issue 15, item 3): a per-worker budget of buffered body bytes, and a body
rate floor once a body has taken longer than `body_timeout`.

Bounds stated:
- past `server.max_buffered_body_bytes` (2 MB here) a new body gets 503 `server_overloaded` with Retry-After and
  the connection closes; the budget comes back once the bodies in it are answered;
- 30 connections each dripping a body one byte every 2 s (`body_timeout` 3 s, so the idle timer never fires):
  every one is cut with 408 within 2 x body_timeout + 1 s (the issue: 50 of 50 held past 100 s with a byte
  every 20 s; the old code here held 30 of 30 for as long as the drip lasted), while /healthz answers within
  100 ms and a well-behaved stream completes.
"""

from __future__ import annotations

import time

import orjson
import pytest

from tests.abuse import gateway as G

BODY_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from tests.conftest import GatewayFactory

    factory = GatewayFactory(tmp_path_factory.mktemp("conn-bodies"))
    try:
        yield G.start(factory, G.config(max_buffered_body_bytes=2_000_000, body_timeout=BODY_TIMEOUT))
    finally:
        factory.close()


def _head(length: int) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (G.KEY.encode(), length))


def test_past_the_body_budget_a_new_body_gets_503_with_retry_after(gw):
    holder = G.connect(gw)
    holder.sendall(_head(1_500_000) + b"{")  # 1.5 MB announced: reserved in the budget while it arrives
    time.sleep(0.2)
    with G.connect(gw) as s:
        s.sendall(_head(600_000) + b"{")
        status, headers, body = G.read_response(s)
        err = orjson.loads(body)["error"]
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert err["code"] == "server_overloaded" and err["type"] == "server_error"
        assert G.closed_soon(s)
    # The holder finishes its body: answered (400, it is not JSON), its bytes leave the budget.
    holder.sendall(b" " * (1_500_000 - 1))
    status, _, _ = G.read_response(holder)
    assert status == 400
    holder.close()
    body = G.chat_body("mock-1", stream=False) + b" " * 600_000
    status, _, payload = G.request(gw, G.chat_request(body))
    assert status == 200 and orjson.loads(payload)["object"] == "chat.completion"


def test_bodies_dripped_a_byte_every_2s_are_cut_within_twice_the_body_timeout(gw):
    n = 30
    socks = []
    for _ in range(n):
        s = G.connect(gw)
        s.sendall(_head(1000) + b"{")
        socks.append(s)
    start = time.monotonic()
    cut: dict[int, float] = {}
    answers: dict[int, bytes] = {}
    health: list[float] = []
    stream = G.Stream(gw, "mock-slow")
    next_drip = start + 2.0
    while len(cut) < n and time.monotonic() - start < 2 * BODY_TIMEOUT + 1.0:
        now = time.monotonic()
        if now >= next_drip:
            next_drip += 2.0
            for i, s in enumerate(socks):
                if i not in cut:
                    try:
                        s.send(b" ")
                    except OSError:
                        pass
        for i, s in enumerate(socks):
            if i in cut:
                continue
            s.setblocking(False)
            try:
                data = s.recv(65536)
                answers[i] = answers.get(i, b"") + data
                if b"\r\n\r\n" in answers[i] or not data:
                    cut[i] = time.monotonic() - start
            except BlockingIOError:
                pass
            except OSError:
                cut[i] = time.monotonic() - start
        health.append(G.healthz_ms(gw))
        stream.pump()
        time.sleep(0.1)
    assert len(cut) == n, f"{n - len(cut)} of {n} dripping connections still held after {2 * BODY_TIMEOUT + 1} s"
    assert max(cut.values()) <= 2 * BODY_TIMEOUT + 1.0
    for i in range(n):
        assert answers[i].startswith(b"HTTP/1.1 408 "), answers[i][:100]
        assert b"slower than 1024 bytes/s" in answers[i]
    assert max(health) < 100, f"/healthz took {max(health):.1f} ms"
    assert G.Stream.done(stream.finish())
    for s in socks:
        s.close()
