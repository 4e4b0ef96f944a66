"""Shared pieces of the fuzz targets: example budgets, byte mutations, splits, and an in-process server driver.

Budgets: every fuzz test is decorated with `fuzz(n)`. Under `make test` it runs n examples (bounded so
that the whole tests/fuzz directory stays well under a minute on two cores). A long campaign sets
FASTGW_FUZZ_EXAMPLES=<count> or loads the `fuzz-long` profile (registered in tests/conftest.py); see
tests/fuzz/README.md.
"""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fastgw.api.errors import render
from fastgw.proto.server import ConnectionTracker, HttpServerProtocol, ServerLimits

__all__ = ["fuzz", "split_at", "splits", "mutated", "FakeTransport", "serve", "INTERESTING"]

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
             HealthCheck.large_base_example]


def _current_profile() -> str:
    getter = getattr(settings, "get_current_profile_name", None)
    return getter() if getter is not None else getattr(settings, "_current_profile", "default")


def fuzz(examples: int) -> settings:
    """Settings for one fuzz target: `examples` under `make test`, the long-campaign budget otherwise."""
    env = os.environ.get("FASTGW_FUZZ_EXAMPLES")
    if env:
        return settings(max_examples=int(env), deadline=None, suppress_health_check=_SUPPRESS)
    if _current_profile() == "fuzz-long":
        return settings(settings.get_profile("fuzz-long"))
    return settings(max_examples=examples, deadline=None, suppress_health_check=_SUPPRESS)


# --- splits -------------------------------------------------------------------------------------------


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (clamped, deduplicated): pieces in order, empty ones dropped."""
    cuts = sorted({min(max(p, 0), len(data)) for p in points} - {0, len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """A random way to receive `data`: whole, byte by byte, in fixed steps, or at random offsets."""
    how = draw(st.integers(0, 5))
    if how == 0 or not data:
        return [data] if data else []
    if how == 1:
        return [data[i:i + 1] for i in range(len(data))]
    if how == 2:
        step = draw(st.integers(1, 16))
        return [data[i:i + step] for i in range(0, len(data), step)]
    return split_at(data, draw(st.lists(st.integers(0, len(data)), max_size=12)))


# --- mutations -------------------------------------------------------------------------------------------

#: Tokens that sit on parser decision points (line ends, separators, framing words, numbers at limits).
INTERESTING = [
    b"\r", b"\n", b"\r\n", b"\r\n\r\n", b" ", b"\t", b",", b";", b":", b"\x00", b"\x0b", b"\x7f", b"\xff",
    b"\xef\xbb\xbf",
    b"0", b"00", b"ff", b"FFFFFFFFFFFFFFFF", b"-1", b"+1", b"0x10", b"4294967296", b"18446744073709551616",
    b"chunked", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Content-Length: 0\r\n",
    b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"Host: x\r\n", b"0\r\n\r\n", b"HTTP/1.0", b"HTTP/1.1",
    b"data: ", b"data:", b"event: ", b"id: ", b"retry: ", b": ", b"\n\n", b"\r\r", b"[DONE]", b'{"a":1}',
]


def _apply(data: bytes, op: int, pos: int, arg: int, blob: bytes) -> bytes:
    n = len(data)
    pos = pos % (n + 1)
    if op == 0 and n:  # flip one byte
        pos %= n
        return data[:pos] + bytes([(data[pos] ^ (arg or 1)) & 0xFF]) + data[pos + 1:]
    if op == 1:  # insert an interesting token
        return data[:pos] + INTERESTING[arg % len(INTERESTING)] + data[pos:]
    if op == 2:  # insert random bytes
        return data[:pos] + blob + data[pos:]
    if op == 3:  # delete a range
        return data[:pos] + data[pos + 1 + arg % 16:]
    if op == 4:  # duplicate a range
        return data[:pos] + data[pos:pos + 1 + arg % 64] + data[pos:]
    if op == 5:  # truncate
        return data[:pos]
    return data


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes], max_ops: int = 3) -> bytes:
    """A valid input with 0..max_ops random edits (bit flips, token inserts, deletions, duplications)."""
    data = draw(valid)
    for _ in range(draw(st.integers(0, max_ops))):
        data = _apply(data, draw(st.integers(0, 5)), draw(st.integers(0, 1 << 16)), draw(st.integers(0, 255)),
                      draw(st.binary(min_size=1, max_size=8)))
    return data


# --- the HTTP server, in process ---------------------------------------------------------------------


class FakeTransport:
    """What HttpServerProtocol uses of an asyncio transport; records writes and how the connection ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.proto: HttpServerProtocol | None = None
        self.chunks: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.paused = False
        #: Writes attempted after close(): the server must never make one.
        self.late_writes = 0

    @property
    def output(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        if self.closed:
            self.late_writes += 1
            return
        self.chunks.append(bytes(data))

    def writelines(self, parts) -> None:  # noqa: ANN001 - any iterable of bytes-like
        self.write(b"".join(bytes(p) for p in parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.proto is not None:
                self._loop.call_soon(self.proto.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def _spin(n: int = 12) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _serve(pieces: list[bytes], handler,  # noqa: ANN001
                 lim: ServerLimits) -> tuple[FakeTransport, HttpServerProtocol]:
    loop = asyncio.get_running_loop()
    proto = HttpServerProtocol(handler, lim, ConnectionTracker(), loop, render_error=render)
    t = FakeTransport(loop)
    t.proto = proto
    proto.connection_made(t)  # type: ignore[arg-type]
    queue = list(pieces)
    stalls = 0
    while queue and not t.closed:
        if t.paused:
            # The server stopped reading (pipelining queue full): it must resume once it has answered.
            stalls += 1
            assert stalls < 200, "server paused reading and never resumed"
            await _spin()
            continue
        proto.data_received(queue.pop(0))
        await _spin()
    for _ in range(200):  # let the response in flight finish
        if proto._current is None:
            break
        await _spin()
    assert proto._current is None, "a response never finished"
    if not t.closed:
        proto.connection_lost(None)  # cancels the timers
    await _spin(2)
    return t, proto


def serve(loop: asyncio.AbstractEventLoop, pieces: list[bytes], handler, lim: ServerLimits  # noqa: ANN001
          ) -> tuple[FakeTransport, HttpServerProtocol, list[dict]]:
    """Feed `pieces` to one server connection on `loop`; returns the transport, the protocol, and the errors
    the loop's exception handler saw (an exception escaping a callback or a task)."""
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    t, proto = loop.run_until_complete(_serve(pieces, handler, lim))
    return t, proto, errors
