"""The in-memory backend: one process's dicts, the same semantics as the shared ones.

It is what `on_failure: open` counts in while the shared store is unreachable (each worker alone: a
limit then holds per worker, not in total), and a store for unit tests. Nothing persists. Operations
never fail and never wait; they are atomic because a worker is one thread and none of them awaits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fastgw.state import core
from fastgw.state.model import EPOCH, Admission, Ask, BreakerState, Settle, Usage

__all__ = ["MemoryBackend"]


class MemoryBackend:
    kind = "memory"
    remote = False

    def __init__(self, prefix: str = "fastgw", clock: Callable[[], float] = time.time) -> None:
        self.prefix = prefix
        self._clock = clock
        self.tats: dict[str, float] = {}
        self.slots: dict[str, dict[str, float]] = {}
        self.spends: dict[str, list[int]] = {}  # key -> [used, held, expires (Unix s, 0: never)]
        self.breakers: dict[str, core.Breaker] = {}

    def _now(self) -> float:
        return (self._clock() - EPOCH) * 1e6

    def _live(self, key: str, now: float) -> dict[str, float]:
        holders = self.slots.get(key)
        if holders is None:
            return {}
        for h in [h for h, end in holders.items() if end <= now]:  # leases that ran out: their worker died
            del holders[h]
        return holders

    async def admit(self, ask: Ask, orphan: Callable[[Admission], None] | None = None) -> Admission:
        now = self._now()
        tats = [self.tats.get(r.key) for r in ask.rates]
        live = [self._live(s.key, now) for s in ask.slots]
        slots = [(len(h), min(h.values()) if h else None) for h in live]
        used = [self.spends[b.key][0] if b.key in self.spends else 0 for b in ask.spends]
        adm, new_tats = core.decide(now, ask, tats, slots, used)
        if adm.ok:
            for r, tat in zip(ask.rates, new_tats):
                self.tats[r.key] = tat
            end = now + ask.lease * 1e6
            for s, h in zip(ask.slots, live):
                h[ask.holder] = end
                self.slots[s.key] = h
            for b in ask.spends:
                rec = self._spend(b.key)
                rec[0] += b.cost
                rec[1] += b.cost
                rec[2] = b.expires
        return adm

    def _spend(self, key: str) -> list[int]:
        rec = self.spends.get(key)
        if rec is None:
            rec = self.spends[key] = [0, 0, 0]
        return rec

    async def reconcile(self, settle: Settle, late: Callable[[bool], None] | None = None) -> None:
        now = self._now()
        for k, interval, delta in settle.rates:
            tat = core.adjust(now, self.tats.get(k), interval, delta)
            if tat > now:
                self.tats[k] = tat
            else:
                self.tats.pop(k, None)
        for k in settle.slots:
            self.slots.get(k, {}).pop(settle.holder, None)
        for k, reserved, actual in settle.spends:
            rec = self._spend(k)
            rec[0] += actual - reserved
            rec[1] -= reserved

    async def renew(self, holder: str, slots: Sequence[str], lease: float) -> None:
        end = self._now() + lease * 1e6
        for k in slots:
            holders = self.slots.get(k)
            if holders is not None and holder in holders:
                holders[holder] = end

    async def usage(self) -> Usage:
        now = self._now()
        unix = self._clock()
        return Usage(now, {k: t for k, t in self.tats.items() if t > now},
                     {k: dict(h) for k in list(self.slots) if (h := self._live(k, now))},
                     {k: (r[0], r[1]) for k, r in self.spends.items() if not r[2] or r[2] > unix},
                     {t: b.view(now) for t, b in self.breakers.items()})

    def _breaker(self, target: str) -> core.Breaker:
        b = self.breakers.get(target)
        if b is None:
            b = self.breakers[target] = core.Breaker()
        return b

    async def breaker_fail(self, target: str, failures: int, cooldown: float) -> BreakerState:
        return core.breaker_fail(self._breaker(target), self._now(), failures, cooldown)

    async def breaker_try_probe(self, target: str, lease: float) -> BreakerState:
        return core.breaker_try_probe(self._breaker(target), self._now(), lease)

    async def breaker_success(self, target: str) -> None:
        b = self.breakers.pop(target, None)
        if b is not None and b.hint_until > self._now():  # an upstream hint outlives the breaker's reset
            self.breakers[target] = core.Breaker(hint_until=b.hint_until)

    async def upstream_hint(self, target: str, retry_after: float) -> None:
        b = self._breaker(target)
        b.hint_until = max(b.hint_until, self._now() + retry_after * 1e6)

    async def close(self) -> None:
        return None
