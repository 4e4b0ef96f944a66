"""What every state backend speaks: the admission request, its answer, the settlement, breaker state, the interface.

Nothing here knows HTTP, policies or which backend runs. A caller (the rate-limiter policy) turns a
request into an `Ask`: GCRA buckets to take from (`Rate`), concurrency sets to join (`Slot`) and budget
ledgers to reserve against (`Spend`), each named by a full key. A backend answers with an `Admission`
after taking all of it or none of it, in one atomic step; later a `Settle` replaces the reservation by
what was really used. Times on the wire are float microseconds since `EPOCH`; in answers, seconds.

The GCRA formulation (Brandur Leach's "throttled" and redis-cell, after the ATM Forum's virtual
scheduling) is written once here in prose and implemented twice, in Python (`fastgw.state.core`, for the
`local` and in-memory backends) and in Lua (`fastgw.state.redis_backend`), with the same constants:

    T   = 60e6 / per_minute          emission interval: µs per unit (a request, a token)
    tau = T * burst                  tolerance: how far ahead of now the bucket's TAT may run
    take n at now:  base = max(TAT, now);  new = base + n*T
                    passes iff  new - tau <= now + TOLERANCE    (n > burst: never passes)
                    remaining = floor((now + tau - TAT') / T + 1e-9)   TAT' = new if passed, else base
                    reset     = TAT' - now                    (until the bucket is full again)
                    wait      = new - tau - now               (until this take would pass; 0 if it did)
    adjust by d units (reconcile; d < 0 refunds):  TAT = max(max(TAT, now) + d*T, now)

A bucket absent from the store is full (TAT <= now); stores drop it once full again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from fastgw.state.answers import Admission, RateState, SlotState, SpendState
from fastgw.state.asks import Ask, Rate, Settle, Slot, Spend, new_holder

__all__ = ["EPOCH", "TOLERANCE", "Rate", "Slot", "Spend", "Ask", "RateState", "SlotState", "SpendState",
           "Admission", "Settle", "BreakerState", "Usage", "StateUnavailable", "Backend", "new_holder", "key",
           "unescape", "KIND_REQUESTS", "KIND_TOKENS", "KIND_SLOTS", "KIND_BUDGET", "KIND_BREAKER"]

#: 2024-01-01T00:00:00Z. Times are µs since then: a double keeps 1/64 µs of resolution there (since 1970 it
#: would be 1/4 µs), enough for a token bucket of 100M tokens/minute (T = 0.6 µs).
EPOCH: Final = 1_704_067_200
#: µs of slack when a take lands exactly on the burst boundary: sums of float intervals may overshoot by ulps.
TOLERANCE: Final = 1e-3

#: Key kinds: `<prefix>:<kind>:<limit or budget name>:<subject>[:<period>]`.
KIND_REQUESTS, KIND_TOKENS, KIND_SLOTS, KIND_BUDGET, KIND_BREAKER = "rq", "tk", "cc", "bg", "br"


def _escape(part: str) -> str:
    # ':' separates key parts, so it is escaped in names and subjects (and '%', the escape itself).
    return part.replace("%", "%25").replace(":", "%3A") if ("%" in part or ":" in part) else part


def unescape(part: str) -> str:
    """A key part as it was before `key` escaped it."""
    return part.replace("%3A", ":").replace("%25", "%") if "%" in part else part


def key(prefix: str, kind: str, *parts: str) -> str:
    """A state key: parts escaped so that a principal or model name holding ':' cannot collide with another key."""
    return ":".join((prefix, kind, *map(_escape, parts)))


@dataclass(slots=True)
class BreakerState:
    """A shared circuit breaker for one target, as one caller sees it after its operation."""

    state: str  #: "closed" | "open" | "half_open"
    failures: int  #: failures counted since the last success
    retry_in: float = 0.0  #: seconds until the target may be tried (cooldown left, or an upstream retry-after)
    probe: bool = False  #: breaker_try_probe: this caller may send (closed, or it holds the one half-open probe)


@dataclass(slots=True)
class Usage:
    """Everything under the prefix, raw: the caller (the policy) knows what each key means."""

    now: float  #: µs since EPOCH, by the store's clock
    rates: dict[str, float] = field(default_factory=dict)  #: key -> TAT
    slots: dict[str, dict[str, float]] = field(default_factory=dict)  #: key -> holder -> lease end
    spends: dict[str, tuple[int, int]] = field(default_factory=dict)  #: key -> (used, held) nano-USD
    breakers: dict[str, BreakerState] = field(default_factory=dict)  #: target -> state


class StateUnavailable(Exception):
    """The store could not answer within its timeout; nothing is known about whether the operation applied."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds after which trying again makes sense (the reconnect backoff left, at least the timeout).
        self.retry_after = retry_after


class Backend(Protocol):
    """Shared counters. Every operation is atomic and bounded by the backend's timeout (else `StateUnavailable`)."""

    kind: str
    prefix: str
    #: Every operation is a round trip (Redis): a call can end (its deadline, its caller cancelled) after the state
    #: received it, and the state apply it all the same. A local operation runs whole, or not at all when its call
    #: ended first, with no suspension inside.
    remote: bool

    async def admit(self, ask: Ask, orphan: Callable[[Admission], None] | None = None) -> Admission:
        """One atomic admission. `orphan` (remote backends): given the admission when the call ended before the
        state answered and the answer came later: the caller releases what nobody will use."""

    async def reconcile(self, settle: Settle, late: Callable[[bool], None] | None = None) -> None:
        """Apply a settlement. `late(ran)` (remote backends): when the call ended (its deadline, its caller
        cancelled) before the state answered, whether the settlement ran, once that is known."""

    async def renew(self, holder: str, slots: Sequence[str], lease: float) -> None:
        """Push the lease of `holder` in each concurrency set to now + `lease` (where it still holds one)."""

    async def usage(self) -> Usage: ...

    async def breaker_fail(self, target: str, failures: int, cooldown: float) -> BreakerState:
        """Count a failure; the `failures`-th since the last success (or a failed probe) opens it for `cooldown` s."""

    async def breaker_try_probe(self, target: str, lease: float) -> BreakerState:
        """May a request go to `target` now? `probe` is True when closed, or when this caller won the one
        half-open probe (held for `lease` s, then another caller may take it over)."""

    async def breaker_success(self, target: str) -> None:
        """A request to `target` succeeded: close the breaker, forget the failures."""

    async def upstream_hint(self, target: str, retry_after: float) -> None:
        """The target said 429/503 retry-after: nobody tries it for `retry_after` s."""

    async def close(self) -> None: ...
