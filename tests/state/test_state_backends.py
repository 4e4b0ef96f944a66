"""The behaviour every state backend shares, run on each: `redis` (a real redis-server, the Lua scripts), `local`
(a real table file) and `memory`. Short windows keep it fast: 600 requests/minute is one per 0.1 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop

from fastgw.state import (Ask, Backend, LocalBackend, MemoryBackend, Rate, RedisBackend, Settle, Slot, Spend,
                          new_holder)
from tests.state.conftest import Factory

T = TypeVar("T")

RQ_100MS = 60e6 / 600  # µs per request at 600/minute


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()
    return uvloop.run(main())


def ask(rates: tuple[Rate, ...] = (), slots: tuple[Slot, ...] = (), spends: tuple[Spend, ...] = (),
        lease: float = 60.0, holder: str | None = None) -> Ask:
    return Ask(holder or new_holder(), rates, slots, spends, lease)


async def snapshot(b: Backend) -> tuple[Any, ...]:
    u = await b.usage()
    return u.rates, {k: set(v) for k, v in u.slots.items()}, u.spends


def test_burst_passes_at_once_then_one_per_interval(store: Factory) -> None:
    b = store()
    k = f"{b.prefix}:rq:l:alice"

    async def go() -> None:
        got = [await b.admit(ask((Rate(k, RQ_100MS, 5, 1),))) for _ in range(6)]
        assert [a.ok for a in got] == [True] * 5 + [False]
        assert [a.rates[0].remaining for a in got] == [4, 3, 2, 1, 0, 0]
        assert got[0].rates[0].reset == pytest.approx(0.1, abs=0.01)  # full again one interval after one take
        assert got[4].rates[0].reset == pytest.approx(0.5, abs=0.02)
        wait = got[5].rates[0].wait
        assert 0.05 < wait <= 0.1
        assert not got[5].rates[0].never
        await asyncio.sleep(wait + 0.005)
        assert (await b.admit(ask((Rate(k, RQ_100MS, 5, 1),)))).ok
        assert not (await b.admit(ask((Rate(k, RQ_100MS, 5, 1),)))).ok
        await b.close()

    run(go)


def test_admitted_count_is_burst_plus_rate_times_time(store: Factory) -> None:
    """Hammer one bucket for ~1 s: exactly burst + elapsed / interval pass (±1 for the edges)."""
    b = store()
    k = f"{b.prefix}:rq:l:bob"

    async def go() -> tuple[int, float]:
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            n += (await b.admit(ask((Rate(k, 60e6 / 1200, 3, 1),)))).ok  # 20/s, burst 3
            await asyncio.sleep(0.002)
        return n, time.monotonic() - t0

    n, elapsed = run(go)
    expected = 3 + elapsed * 20
    assert expected - 2 <= n <= expected + 1, (n, expected)


def test_all_or_nothing_across_buckets_slots_and_budgets(store: Factory) -> None:
    b = store()
    p = b.prefix
    roomy = Rate(f"{p}:rq:a:x", RQ_100MS, 100, 1)
    tokens = Rate(f"{p}:tk:a:x", 60.0, 10_000, 500)
    slot = Slot(f"{p}:cc:a:x", 5)
    spend = Spend(f"{p}:bg:m:x:2026-05", 10_000, 1_000, 0)
    tight = Rate(f"{p}:rq:b:x", RQ_100MS, 1, 1)

    async def go() -> None:
        first = await b.admit(ask((roomy, tokens, tight), (slot,), (spend,)))
        assert first.ok
        before = await snapshot(b)
        refused = await b.admit(ask((roomy, tokens, tight), (slot,), (spend,)))
        assert not refused.ok
        assert [r.ok for r in refused.rates] == [True, True, False]
        assert refused.slots[0].ok and refused.spends[0].ok
        # nothing was taken: the passing bucket, the set and the ledger are as before
        assert await snapshot(b) == before
        # a refusing budget leaves the buckets alone too
        broke = Spend(f"{p}:bg:m:y:2026-05", 500, 1_000, 0)
        assert not (await b.admit(ask((roomy,), (slot,), (broke,)))).ok
        assert await snapshot(b) == before

    run(go)


def test_a_take_larger_than_the_burst_never_passes(store: Factory) -> None:
    b = store()

    async def go() -> None:
        a = await b.admit(ask((Rate(f"{b.prefix}:tk:l:x", 6.0, 1000, 1001),)))
        assert not a.ok and a.rates[0].never
        assert (await b.admit(ask((Rate(f"{b.prefix}:tk:l:x", 6.0, 1000, 1000),)))).ok

    run(go)


def test_reconcile_refunds_and_charges_tokens(store: Factory) -> None:
    b = store()
    k = f"{b.prefix}:tk:l:x"
    iv = 60e6 / 600_000  # 10k tokens/s, burst 1000: refills in 0.1 s, so only the order of operations matters here

    async def go() -> None:
        a1 = ask((Rate(k, iv * 1000, 1000, 800),))  # slow refill (10 tokens/s) so that time does not blur it
        assert (await b.admit(a1)).ok
        assert not (await b.admit(ask((Rate(k, iv * 1000, 1000, 800),)))).ok
        await b.reconcile(Settle(a1.holder, ((k, iv * 1000, -700),), (), ()))  # used 100 of the 800
        again = await b.admit(ask((Rate(k, iv * 1000, 1000, 800),)))
        assert again.ok and again.rates[0].remaining in (99, 100)
        await b.reconcile(Settle("x", ((k, iv * 1000, 300),), (), ()))  # used 300 more than reserved
        left = await b.admit(ask((Rate(k, iv * 1000, 1000, 1),)))
        assert not left.ok and 19 <= left.rates[0].wait <= 21  # 200 tokens in debt at 10/s

    run(go)


def test_concurrency_slots_release_on_reconcile(store: Factory) -> None:
    b = store()
    s = Slot(f"{b.prefix}:cc:l:x", 2)

    async def go() -> None:
        a1, a2 = ask(slots=(s,)), ask(slots=(s,))
        assert (await b.admit(a1)).ok and (await b.admit(a2)).ok
        third = await b.admit(ask(slots=(s,)))
        assert not third.ok and third.slots[0].in_use == 2 and 59 < third.slots[0].wait <= 60
        await b.reconcile(Settle(a1.holder, (), (s.key,), ()))
        assert (await b.admit(ask(slots=(s,)))).ok
        await b.reconcile(Settle(a1.holder, (), (s.key,), ()))  # a second release of the same holder is harmless
        assert not (await b.admit(ask(slots=(s,)))).ok

    run(go)


def test_a_slot_whose_holder_vanished_is_freed_by_its_lease(store: Factory) -> None:
    b = store()
    s = Slot(f"{b.prefix}:cc:l:y", 1)

    async def go() -> None:
        assert (await b.admit(ask(slots=(s,), lease=0.3))).ok  # never reconciled: its worker "died"
        assert not (await b.admit(ask(slots=(s,), lease=0.3))).ok
        await asyncio.sleep(0.35)
        assert (await b.admit(ask(slots=(s,), lease=0.3))).ok

    run(go)


def test_renew_keeps_a_live_slot(store: Factory) -> None:
    b = store()
    s = Slot(f"{b.prefix}:cc:l:z", 1)

    async def go() -> None:
        a = ask(slots=(s,), lease=0.3)
        assert (await b.admit(a)).ok
        await asyncio.sleep(0.2)
        await b.renew(a.holder, [s.key], 0.3)
        await asyncio.sleep(0.2)  # 0.4 s after admission: alive only through the renewal
        assert not (await b.admit(ask(slots=(s,), lease=0.3))).ok
        await asyncio.sleep(0.15)
        assert (await b.admit(ask(slots=(s,), lease=0.3))).ok
        await b.renew(a.holder, [s.key], 0.3)  # a lease that ran out is not brought back
        assert not (await b.admit(ask(slots=(s,), lease=0.3))).ok
        u = await b.usage()
        assert len(u.slots[s.key]) == 1

    run(go)


def test_budget_reserves_worst_case_and_reconciles_to_real_cost(store: Factory) -> None:
    b = store()
    k = f"{b.prefix}:bg:monthly:alice:2026-05"

    async def go() -> None:
        a1 = ask(spends=(Spend(k, 10_000, 6_000, 0),))
        first = await b.admit(a1)
        assert first.ok and first.spends[0].used == 0
        assert not (await b.admit(ask(spends=(Spend(k, 10_000, 6_000, 0),)))).ok  # 6000 held + 6000 > 10000
        assert (await b.usage()).spends[k] == (6_000, 6_000)
        await b.reconcile(Settle(a1.holder, (), (), ((k, 6_000, 2_500),)))
        assert (await b.usage()).spends[k] == (2_500, 0)
        assert (await b.admit(ask(spends=(Spend(k, 10_000, 6_000, 0),)))).ok
        spent = Spend(k, 8_500, 0, 0)  # exactly full: even a free request is refused
        assert not (await b.admit(ask(spends=(spent,)))).ok

    run(go)


def test_breaker_opens_after_failures_and_lets_one_probe_through(store: Factory) -> None:
    b = store()

    async def go() -> None:
        assert (await b.breaker_try_probe("up", 1.0)).probe  # closed: go
        states = [await b.breaker_fail("up", 3, 0.3) for _ in range(3)]
        assert [s.state for s in states] == ["closed", "closed", "open"]
        assert states[2].retry_in == pytest.approx(0.3, abs=0.02)
        assert not (await b.breaker_try_probe("up", 1.0)).probe
        await asyncio.sleep(0.32)
        others = [b] + [store() for _ in range(3)]
        probes = await asyncio.gather(*(o.breaker_try_probe("up", 1.0) for o in others))
        assert sum(p.probe for p in probes) == 1 and probes[0].state == "half_open"
        failed = await b.breaker_fail("up", 3, 0.3)  # the probe failed: open again at once
        assert failed.state == "open"
        await asyncio.sleep(0.32)
        assert (await b.breaker_try_probe("up", 1.0)).probe
        await b.breaker_success("up")
        closed = await b.breaker_try_probe("up", 1.0)
        assert closed.probe and closed.state == "closed" and closed.failures == 0
        await b.upstream_hint("up", 0.2)  # a 429 retry-after honoured by everyone
        held = await others[1].breaker_try_probe("up", 1.0)
        assert not held.probe and 0 < held.retry_in <= 0.2
        assert "up" in (await b.usage()).breakers
        await asyncio.sleep(0.22)
        assert (await others[2].breaker_try_probe("up", 1.0)).probe

    run(go)


def test_keys_with_colons_and_percent_do_not_collide(store: Factory) -> None:
    from fastgw.state import key, unescape

    b = store()
    k1, k2 = key(b.prefix, "rq", "l", "a:b", "c"), key(b.prefix, "rq", "l", "a", "b:c")
    assert k1 != k2 and unescape(k1.split(":")[3]) == "a:b"

    async def go() -> None:
        assert (await b.admit(ask((Rate(k1, RQ_100MS, 1, 1),)))).ok
        assert (await b.admit(ask((Rate(k2, RQ_100MS, 1, 1),)))).ok

    run(go)


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_state_survives_a_new_backend_and_the_table_file_survives_restarts(kind: str, tmp_path: Any,
                                                                              request: pytest.FixtureRequest) -> None:
    """What one backend instance wrote, a fresh one (a restarted gateway) reads back."""
    if kind == "redis":
        url = request.getfixturevalue("redis_server").url
        make: Callable[[], Backend] = lambda: RedisBackend(url, "persist", 1.0)  # noqa: E731
    else:
        make = lambda: LocalBackend(str(tmp_path / "state"), "persist", 1.0)  # noqa: E731
    k = "persist:bg:b:x:total"

    async def write() -> None:
        b = make()
        assert (await b.admit(ask(spends=(Spend(k, 10**9, 12_345, 0),)))).ok
        await b.close()

    async def read() -> tuple[int, int]:
        b = make()
        try:
            return (await b.usage()).spends[k]
        finally:
            await b.close()

    run(write)
    assert run(read) == (12_345, 12_345)


def test_memory_backend_is_per_process() -> None:
    assert MemoryBackend().kind == "memory"
