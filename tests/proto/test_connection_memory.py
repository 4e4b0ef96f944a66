"""What an open connection costs in memory (issue 18: ≤ 16 KB per open idle stream): the per-connection objects
of the server and the upstream client have no instance dict and no deque blocks, and an upstream body is kept at
its own size. Measured with tracemalloc over many objects (bytes, not time); `bench scale --tables idle` gives the
whole-worker figure."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable

from fastgw.proto.client import UpstreamConnection
from fastgw.proto.server import ConnectionTracker, HttpServerProtocol, ServerLimits
from fastgw.providers.base import encode_json

N = 500


def _bytes_each(make: Callable[[], object]) -> float:
    """Bytes held per object `make` returns, over N of them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [make() for _ in range(N)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == N
    return grown / N


async def _noop(req: object, resp: object) -> None:
    return None


def test_a_client_connections_state_is_small() -> None:
    loop = asyncio.new_event_loop()
    try:
        lim = ServerLimits(header_timeout=10, keepalive_timeout=5, max_header_bytes=8192, max_headers=100,
                           max_body_bytes=1 << 20, send_timeout=30, body_timeout=30, min_body_rate=0)
        tracker = ConnectionTracker(max_connections=10_000, max_buffered_body_bytes=1 << 26)
        p = HttpServerProtocol(_noop, lim, tracker, loop)
        assert not hasattr(p, "__dict__")
        # Measured 2.1 KB (the request reader and its httptools parser, the framing guard, flow control); with an
        # instance dict and two empty deques it was 4.9 KB.
        assert _bytes_each(lambda: HttpServerProtocol(_noop, lim, tracker, loop)) < 2600
    finally:
        loop.close()


def test_an_upstream_connections_state_is_small() -> None:
    loop = asyncio.new_event_loop()
    try:
        key = ("http", "127.0.0.1", 9)
        assert not hasattr(UpstreamConnection(key, loop), "__dict__")
        # Measured 1.26 KB, most of it its httptools response parser (0.54 KB) (1.32 KB with an instance dict).
        assert _bytes_each(lambda: UpstreamConnection(key, loop)) < 1600
    finally:
        loop.close()


def test_an_upstream_body_is_held_at_its_own_size() -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    out = encode_json(body)
    assert out == b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    # orjson's own bytes keep a 4 KiB buffer for this (measured 4.1 KB held); the copy is 114 bytes.
    assert _bytes_each(lambda: encode_json(body)) < 300
