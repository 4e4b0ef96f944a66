"""When the state cannot answer: a killed or stalled Redis, a held lock on the local table. Every call ends within the
timeout (+50 ms) with `StateUnavailable`, none hangs; service resumes within 1 s of Redis returning; and a
Redis with AOF keeps budgets across its own restart. Also the client's URL forms and connection set-up."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from fastgw.state import Ask, LocalBackend, Rate, RedisBackend, Slot, Spend, StateUnavailable, new_holder
from fastgw.state.local import TABLE_NAME
from fastgw.state.resp import BACKOFF_MAX, parse_url
from tests.state.redis_server import RedisServer

TIMEOUT = 0.05  # the production default
SLACK = 0.05  # issue 16: "within timeout + 50 ms"


def _ask(prefix: str) -> Ask:
    return Ask(new_holder(), (Rate(f"{prefix}:rq:l:x", 1.0, 10**9, 1),), (Slot(f"{prefix}:cc:l:x", 10**6),),
               (Spend(f"{prefix}:bg:b:x:total", 10**15, 1, 0),), 60.0)


async def _timed_failure(b: RedisBackend | LocalBackend, prefix: str) -> float:
    t0 = time.monotonic()
    with pytest.raises(StateUnavailable):
        await b.admit(_ask(prefix))
    return time.monotonic() - t0


def test_killed_redis_fails_fast_then_recovers_within_a_second(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis()
    b = RedisBackend(server.url, "k", TIMEOUT)

    async def go() -> None:
        assert (await b.admit(_ask("k"))).ok
        # calls in flight when the server dies end at once, whatever they were doing
        tasks = [asyncio.ensure_future(b.admit(_ask("k"))) for _ in range(32)]
        await asyncio.sleep(0)
        t0 = time.monotonic()
        server.kill()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert time.monotonic() - t0 < TIMEOUT + SLACK + 0.05  # + the kill itself
        assert all(isinstance(d, StateUnavailable) or d.ok for d in done)  # type: ignore[union-attr]
        # while it is down: every call fails, none waits
        slowest = max([await _timed_failure(b, "k") for _ in range(30)])
        assert slowest < TIMEOUT + SLACK
        server.start()
        back = time.monotonic()
        while True:
            try:
                assert (await b.admit(_ask("k"))).ok  # the script cache was lost too: NOSCRIPT, then EVAL
                break
            except StateUnavailable:
                assert time.monotonic() - back < 1.0, "not recovered within 1 s of Redis returning"
                await asyncio.sleep(0.01)
        assert time.monotonic() - back < BACKOFF_MAX + 0.2
        await b.close()

    uvloop.run(go())


def test_stalled_redis_times_out_and_the_stuck_connection_is_replaced(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis()
    b = RedisBackend(server.url, "s", TIMEOUT)

    async def go() -> None:
        assert (await b.admit(_ask("s"))).ok
        server.pause()  # SIGSTOP: the socket stays open, nothing answers
        try:
            waits = await asyncio.gather(*(_timed_failure(b, "s") for _ in range(8)))
            assert max(waits) < TIMEOUT + SLACK
            assert await _timed_failure(b, "s") < TIMEOUT + SLACK
        finally:
            server.resume()
        back = time.monotonic()
        while True:
            try:
                assert (await b.admit(_ask("s"))).ok
                break
            except StateUnavailable:
                assert time.monotonic() - back < 1.0
                await asyncio.sleep(0.01)
        await b.close()

    uvloop.run(go())


def test_unreachable_redis_fails_within_the_timeout() -> None:
    b = RedisBackend("redis://127.0.0.1:1/0", "u", TIMEOUT)  # nothing listens on port 1

    async def go() -> None:
        for _ in range(3):
            assert await _timed_failure(b, "u") < TIMEOUT + SLACK

    uvloop.run(go())


def test_budget_survives_a_redis_restart_with_aof(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis(aof=True)
    k = "aof:bg:monthly:alice:2026-05"

    async def spend() -> None:
        b = RedisBackend(server.url, "aof", 1.0)
        assert (await b.admit(Ask(new_holder(), (), (), (Spend(k, 10**9, 4_242, 0),), 60.0))).ok
        await b.close()

    async def read() -> tuple[int, int]:
        b = RedisBackend(server.url, "aof", 1.0)
        try:
            return (await b.usage()).spends[k]
        finally:
            await b.close()

    uvloop.run(spend())
    server.kill()  # SIGKILL: no shutdown save; only the AOF has it
    server.start()
    assert uvloop.run(read()) == (4_242, 4_242)


def test_a_held_lock_fails_within_the_timeout_without_blocking_the_loop(tmp_path: Path) -> None:
    b = LocalBackend(str(tmp_path), "l", TIMEOUT)

    async def go() -> None:
        assert (await b.admit(Ask("a", (Rate("l:rq:l:x", 60e6, 10, 1),), (), (), 60.0))).ok
        fd = os.open(tmp_path / TABLE_NAME, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another worker holding the lock
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.ensure_future(ticker())
        try:
            t0 = time.monotonic()
            with pytest.raises(StateUnavailable):
                await b.admit(Ask("b", (Rate("l:rq:l:x", 60e6, 10, 1),), (), (), 60.0))
            assert time.monotonic() - t0 < TIMEOUT + SLACK
            assert ticks >= 5  # the loop kept running while the backend waited for the lock
        finally:
            t.cancel()
            os.close(fd)
        assert (await b.admit(Ask("c", (Rate("l:rq:l:x", 60e6, 10, 1),), (), (), 60.0))).ok
        await b.close()

    uvloop.run(go())


def test_password_and_database_in_the_url(fresh_redis: Callable[..., RedisServer], tmp_path: Path) -> None:
    server = fresh_redis()

    async def go() -> None:
        admin = RedisBackend(server.url, "p", 1.0)
        assert await admin.client.call("CONFIG", "SET", "requirepass", "s3cret") == b"OK"
        ok = RedisBackend(f"redis://:s3cret@127.0.0.1:{server.port}/3", "p", 1.0)
        assert (await ok.admit(_ask("p"))).ok
        assert await ok.client.call("DBSIZE") == 3  # the bucket, the slot set and the ledger, in db 3
        bad = RedisBackend(f"redis://:wrong@127.0.0.1:{server.port}/0", "p", 1.0)
        with pytest.raises(StateUnavailable, match="set-up"):
            await bad.admit(_ask("p"))
        for b in (admin, ok, bad):
            await b.close()

    uvloop.run(go())


def test_unix_socket_url(tmp_path: Path, redis_server: RedisServer) -> None:
    sock = tmp_path / "r.sock"
    server = RedisServer(tmp_path / "unix", extra=("--unixsocket", str(sock), "--unixsocketperm", "700")).start()
    try:
        async def go() -> None:
            b = RedisBackend(f"unix://{sock}?db=1", "x", 1.0)
            assert (await b.admit(_ask("x"))).ok
            assert await b.client.call("DBSIZE") == 3
            await b.close()

        uvloop.run(go())
    finally:
        server.stop()


def test_parse_url_forms() -> None:
    a = parse_url("redis://u:p%40ss@cache.internal:6380/2")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls, a.path) == ("cache.internal", 6380, 2, "u", "p@ss",
                                                                             False, None)
    assert "p@ss" not in repr(a)
    t = parse_url("rediss://:pw@h")
    assert (t.tls, t.port, t.db, t.username, t.password) == (True, 6379, 0, None, "pw")
    u = parse_url("unix:///run/redis/redis.sock?db=4")
    assert (u.path, u.db) == ("/run/redis/redis.sock", 4)
    for bad in ("http://h", "redis://h/x", "unix://", "redis://h:99999"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_a_forked_worker_opens_its_own_connection(redis_server: RedisServer, tmp_path: Path) -> None:
    """Backends are built in the master and used in forked workers: neither shares the other's socket or file."""
    import multiprocessing

    backends = [RedisBackend(redis_server.url, "fork", 1.0), LocalBackend(str(tmp_path), "fork", 1.0)]

    async def use() -> bool:
        return all([(await b.admit(_ask("fork"))).ok for b in backends])

    async def parent() -> None:
        assert await use()  # the parent is connected
        with multiprocessing.get_context("fork").Pool(2) as pool:  # (blocks this loop: nothing else runs on it)
            assert pool.map(_child_admits, [0, 1]) == [True, True]
        assert await use()
        assert backends[0].client.connects == 1  # the parent's connection was left alone by the children

    uvloop.run(parent())


def _child_admits(_: int) -> bool:
    import gc

    found = [o for o in gc.get_objects() if isinstance(o, (RedisBackend, LocalBackend)) and o.prefix == "fork"]

    async def use() -> bool:
        return all([(await b.admit(_ask("fork"))).ok for b in found])

    return bool(found) and uvloop.run(use())
