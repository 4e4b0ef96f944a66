"""The semantics of every operation in Python, on values a store has loaded: the `local` (shared table) and in-memory
backends call these inside their transaction; the Redis backend's Lua scripts are the same lines in Lua.

The GCRA formula and its constants are written out in `fastgw.state.model`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fastgw.state.model import TOLERANCE, Admission, Ask, BreakerState, RateState, SlotState, SpendState

__all__ = ["take", "adjust", "decide", "spend_ok", "breaker_fail", "breaker_try_probe", "Breaker"]


def _remaining(now: float, tau: float, tat: float, interval: float) -> int:
    r = math.floor((now + tau - tat) / interval + 1e-9)
    return r if r > 0 else 0


def take(now: float, tat: float | None, interval: float, burst: int, n: int) -> tuple[RateState, float]:
    """Take `n` units at `now` from a bucket whose TAT is `tat` (None: absent, i.e. full): the state and the new TAT."""
    base = tat if tat is not None and tat > now else now
    tau = interval * burst
    new = base + interval * n
    if n > burst:
        return RateState(False, _remaining(now, tau, base, interval), (base - now) / 1e6, 0.0, True), base
    if new - tau > now + TOLERANCE:
        return RateState(False, _remaining(now, tau, base, interval), (base - now) / 1e6,
                         (new - tau - now) / 1e6), base
    return RateState(True, _remaining(now, tau, new, interval), (new - now) / 1e6, 0.0), new


def adjust(now: float, tat: float | None, interval: float, delta: int) -> float:
    """The TAT after charging `delta` more units (refunding when negative); <= now means full (drop the key)."""
    base = tat if tat is not None and tat > now else now
    new = base + interval * delta
    return new if new > now else now


def spend_ok(used: int, limit: int, cost: int) -> bool:
    """A ledger takes a reservation while it stays within the limit; a spent ledger refuses even a free request."""
    return used < limit and used + cost <= limit


def decide(now: float, ask: Ask, tats: Sequence[float | None], slots: Sequence[tuple[int, float | None]],
           used: Sequence[int]) -> tuple[Admission, list[float]]:
    """The all-or-nothing verdict on loaded values: `slots` holds (live holders, earliest lease end) per set.
    Returns the admission and each bucket's TAT to store when it passed."""
    ok = True
    rate_states: list[RateState] = []
    new_tats: list[float] = []
    for r, tat in zip(ask.rates, tats):
        st, new = take(now, tat, r.interval, r.burst, r.take)
        ok = ok and st.ok
        rate_states.append(st)
        new_tats.append(new)
    slot_states: list[SlotState] = []
    for s, (n, first) in zip(ask.slots, slots):
        fits = n < s.limit
        ok = ok and fits
        slot_states.append(SlotState(fits, n, 0.0 if fits or first is None else max(0.0, (first - now) / 1e6)))
    spend_states: list[SpendState] = []
    for b, u in zip(ask.spends, used):
        fits = spend_ok(u, b.limit, b.cost)
        ok = ok and fits
        spend_states.append(SpendState(fits, u))
    return Admission(ok, rate_states, slot_states, spend_states), new_tats


# ---- shared circuit breakers ------------------------------------------------------------------------------

class Breaker:
    """One target's breaker record as the stores keep it (µs since EPOCH)."""

    __slots__ = ("state", "failures", "until", "probe_until", "hint_until")

    def __init__(self, state: str = "closed", failures: int = 0, until: float = 0.0, probe_until: float = 0.0,
                 hint_until: float = 0.0) -> None:
        self.state = state
        self.failures = failures
        self.until = until
        self.probe_until = probe_until
        self.hint_until = hint_until

    def view(self, now: float, probe: bool = False) -> BreakerState:
        held = self.until if self.state == "open" else self.probe_until if self.state == "half_open" else 0.0
        wait = max(held - now, self.hint_until - now, 0.0)
        return BreakerState(self.state, self.failures, wait / 1e6, probe)


def breaker_fail(b: Breaker, now: float, failures: int, cooldown: float) -> BreakerState:
    """A failure: a failed probe reopens at once; the `failures`-th failure while closed opens."""
    b.failures += 1
    if b.state == "half_open" or (b.state == "closed" and b.failures >= failures):
        b.state, b.until, b.probe_until = "open", now + cooldown * 1e6, 0.0
    return b.view(now)


def breaker_try_probe(b: Breaker, now: float, lease: float) -> BreakerState:
    """Closed: go (unless an upstream hint says wait). Open past its cooldown, or half-open with the probe's lease
    run out: this caller becomes the one probe."""
    if b.hint_until > now:
        return b.view(now)
    if b.state == "closed":
        return b.view(now, probe=True)
    if (b.state == "open" and now >= b.until) or (b.state == "half_open" and now >= b.probe_until):
        b.state, b.probe_until = "half_open", now + lease * 1e6
        return b.view(now, probe=True)
    return b.view(now)
