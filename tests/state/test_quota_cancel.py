"""A request that stops waiting for the state (its client left: the task is cancelled; or the call's deadline
passed) while the state applies its command anyway. Redis runs whatever it was sent, so without care an admission
nobody reads holds its concurrency slots for a whole lease and its worst-case cost against the budget for good,
and a settlement cut short leaves its slots held (the failure tests/test_quota_load.py caught now and then: the
first settlements after a start find their script not loaded, and the client closing its connection cancelled
them between NOSCRIPT and the resend). Each case runs against a real redis-server, stopped (SIGSTOP) while the
command is in flight, so its answer comes only after the caller stopped waiting."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import uvloop

from fastgw.policy.ratelimit import Pricing, RateLimiter, RateLimitPolicy, Refusal, Reservation
from fastgw.state import LocalBackend, RedisBackend, Usage
from fastgw.state.local import TABLE_NAME
from fastgw.state.resp import RespClient, _Conn, pack, parse_url
from tests.state.redis_server import RedisServer

T = TypeVar("T")
PRICE = Pricing(1000.0, 1000.0)  # USD per million tokens: a reservation of 1,010 tokens holds ~$1.01
LIMITS = [{"name": "one", "concurrent": 1, "tokens_per_minute": 1_000_000, "token_burst": 10_000}]
BUDGETS = [{"name": "cash", "usd": 100.0, "period": "total"}]
SLOTS, BUDGET = "p:cc:one:k", "p:bg:cash:k:total"


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()
    return uvloop.run(main())


def _limiter(backend: Any) -> RateLimitPolicy:
    settings = msgspec.convert({"limits": LIMITS, "budgets": BUDGETS}, RateLimiter)
    return RateLimitPolicy(settings, backend)


def _stopped(server: RedisServer) -> None:
    """SIGSTOP, and wait until the process really is stopped (the signal is delivered asynchronously)."""
    server.pause()
    assert server.proc is not None
    deadline = time.monotonic() + 5
    while open(f"/proc/{server.proc.pid}/stat").read().split(")")[1].split()[0] != "T":
        assert time.monotonic() < deadline, "redis-server did not stop"
        time.sleep(0.001)


async def _cancelled_while_stopped(server: RedisServer, call: Awaitable[Any]) -> None:
    """Run `call` with Redis stopped, cancel it once its command is on its way (its client left), resume Redis."""
    _stopped(server)
    try:
        task = asyncio.ensure_future(call)
        await asyncio.sleep(0.05)  # written (or connecting); Redis acts on it when it wakes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        server.resume()


async def _until(cond: Callable[[Usage], bool], rl: RateLimitPolicy, within: float = 2.0) -> Usage:
    deadline = time.monotonic() + within
    while True:
        u = await rl.backend.usage()
        if cond(u):
            return u
        assert time.monotonic() < deadline, (u.slots, u.spends)
        await asyncio.sleep(0.01)


def _nothing_held(u: Usage) -> bool:
    return not u.slots.get(SLOTS) and u.spends.get(BUDGET, (0, 0))[1] == 0


async def _admitted(rl: RateLimitPolicy) -> Reservation:
    res = await rl.admit("k", [], "m", PRICE, 10, 1000)
    assert isinstance(res, Reservation), res
    return res


def test_an_admission_whose_client_left_is_released(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis()
    rl = _limiter(RedisBackend(server.url, "p", 5.0))

    async def go() -> None:
        await rl.reconcile(await _admitted(rl), 0, 0)  # connected and the scripts known, before Redis stops
        await _cancelled_while_stopped(server, rl.admit("k", [], "m", PRICE, 10, 1000))
        # Redis admitted it after all: its late answer releases the slot and the reserved cost at once (the
        # lease would have held the slot for 60 s, the budget's hold never ends).
        u = await _until(_nothing_held, rl)
        assert u.spends[BUDGET] == (0, 0)
        await rl.reconcile(await _admitted(rl), 10, 5)  # the one slot is free

    _run(go)


def test_an_admission_past_its_deadline_that_ran_is_released(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis()
    rl = _limiter(RedisBackend(server.url, "p", 0.05))

    async def go() -> None:
        await rl.reconcile(await _admitted(rl), 0, 0)
        _stopped(server)
        try:
            refused = await rl.admit("k", [], "m", PRICE, 10, 1000)  # 503 quota_unavailable after 50 ms
            assert isinstance(refused, Refusal) and refused.kind == "unavailable"
        finally:
            server.resume()
        await _until(_nothing_held, rl)
        await rl.reconcile(await _admitted(rl), 10, 5)

    _run(go)


def test_a_settlement_whose_client_left_still_runs(fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis()
    rl = _limiter(RedisBackend(server.url, "p", 5.0))

    async def go() -> None:
        res = await _admitted(rl)
        # Its script unknown to Redis (as at the first settlement after a start): EVALSHA, NOSCRIPT, then EVAL.
        admin = RespClient(parse_url(server.url), 5.0)
        assert await admin.send(pack("SCRIPT", "FLUSH")) == b"OK"
        await admin.close()
        # The client closed its connection after reading the answer.
        await _cancelled_while_stopped(server, rl.reconcile(res, 10, 5))
        u = await _until(_nothing_held, rl)
        assert u.spends[BUDGET][0] == rl.cost(PRICE, 10, 5)  # the real cost, once
        await rl.reconcile(await _admitted(rl), 10, 5)

    _run(go)


def test_a_settlement_past_its_deadline_that_ran_is_not_applied_again(
        fresh_redis: Callable[..., RedisServer]) -> None:
    server = fresh_redis()
    rl = _limiter(RedisBackend(server.url, "p", 0.05))

    async def go() -> None:
        res = await _admitted(rl)
        _stopped(server)
        try:
            assert not await rl.reconcile(res, 10, 5)  # past its deadline: kept for a retry
        finally:
            server.resume()
        # Redis ran it after all, and said so late: the retry must not apply it a second time.
        await _until(_nothing_held, rl)
        assert not rl._pending
        again = await _admitted(rl)  # (an admission is what starts a retry of what is kept)
        await asyncio.sleep(0.05)
        await rl.reconcile(again, 10, 5)
        u = await rl.backend.usage()
        assert u.spends[BUDGET] == (2 * rl.cost(PRICE, 10, 5), 0), u.spends  # each request's cost once

    _run(go)


def test_a_local_settlement_cancelled_while_the_table_is_locked_still_runs(tmp_path: Path) -> None:
    rl = _limiter(LocalBackend(str(tmp_path), "p", 5.0))

    async def go() -> None:
        res = await _admitted(rl)
        fd = os.open(tmp_path / TABLE_NAME, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another worker holding the table
        try:
            task = asyncio.ensure_future(rl.reconcile(res, 10, 5))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        u = await _until(_nothing_held, rl)
        assert u.spends[BUDGET][0] == rl.cost(PRICE, 10, 5)
        await rl.reconcile(await _admitted(rl), 10, 5)

    _run(go)


def test_an_answer_that_came_just_as_its_caller_was_cancelled_is_handed_on(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply arrived (its future resolved) and the caller was cancelled before it resumed to read it: the
    command ran, and `late` must hear of it as when the reply comes after the cancel."""
    cancel_after: list[asyncio.Future[Any]] = []
    arrive = _Conn.data_received

    def then_cancel(self: _Conn, data: bytes) -> None:
        arrive(self, data)
        while cancel_after:
            cancel_after.pop().cancel()

    monkeypatch.setattr(_Conn, "data_received", then_cancel)

    async def go() -> None:
        client = RespClient(parse_url(redis_server.url), 5.0)
        await client.call("DEL", "late-k")
        got: list[Any] = []
        task = asyncio.ensure_future(client.send(pack("INCR", "late-k"), got.append))
        cancel_after.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert got == [1]
        assert not client._conn.orphans  # type: ignore[union-attr]
        await client.close()

    _run(go)


def test_the_scripts_come_with_the_connection(fresh_redis: Callable[..., RedisServer]) -> None:
    """A new connection loads the scripts first: no first call meets NOSCRIPT (a round trip, and the window in
    which a cancelled settlement was lost between NOSCRIPT and its resend)."""
    server = fresh_redis()
    rl = _limiter(RedisBackend(server.url, "p", 5.0))

    async def go() -> None:
        await rl.reconcile(await _admitted(rl), 10, 5)
        admin = RespClient(parse_url(server.url), 5.0)
        stats = (await admin.call("INFO", "commandstats")).decode()
        await admin.close()
        assert "cmdstat_evalsha:calls=2," in stats and "cmdstat_eval:" not in stats, stats

    _run(go)


def test_a_settlement_whose_client_left_while_reconnecting_still_runs(fresh_redis: Callable[..., RedisServer]) -> None:
    """The connection was lost, and the settlement's call was cancelled while a new one was being set up (before
    its command was written): it is sent once the state answers again."""
    server = fresh_redis()
    rl = _limiter(RedisBackend(server.url, "p", 5.0))

    async def go() -> None:
        res = await _admitted(rl)
        admin = RespClient(parse_url(server.url), 5.0)
        assert await admin.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") == 1  # the limiter's
        await admin.close()
        await asyncio.sleep(0.05)  # its close is seen: the next call connects anew
        # Stopped, Redis still completes the TCP connect (the kernel's backlog); the set-up commands get no answer.
        await _cancelled_while_stopped(server, rl.reconcile(res, 10, 5))
        u = await _until(_nothing_held, rl)
        assert u.spends[BUDGET][0] == rl.cost(PRICE, 10, 5)
        await rl.reconcile(await _admitted(rl), 10, 5)

    _run(go)
