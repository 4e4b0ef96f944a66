"""Which targets serve a request, in what order, how often to retry, and which targets to skip for now.

A model's `routing` entry names its targets and a strategy: `fallback` (in order) or
`loadbalance` (a weighted random order, so the others are still fallbacks). Without
an entry, a model falls back across the targets that serve it, in config order.
Circuit breakers are per target and per worker: a worker learns about a dead target
from its own failures (a few requests per worker, then it stops trying until the
cooldown's half-open probe). Only upstream failures count; the attempt that ends a
request resolves its permit once, whatever the outcome.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final

from fastgw import metrics
from fastgw.config import Config, Retry
from fastgw.providers.base import TargetRuntime

__all__ = ["Router", "Plan", "Breaker", "Permit", "Verdict"]


class Plan:
    """The targets a request may try, in order, and how it retries. A plain class, not a frozen dataclass: one is
    built per request, and a frozen dataclass's __init__ sets each field through object.__setattr__ in Python."""

    __slots__ = ("targets", "retry")

    def __init__(self, targets: list[TargetRuntime], retry: Retry) -> None:
        self.targets = targets
        self.retry = retry


class Verdict:
    """What an attempt says about its target's health."""

    SUCCESS: Final = "success"  # the target answered: close the circuit
    FAILURE: Final = "failure"  # the target failed (connect, timeout, 429, 5xx): count it
    NEUTRAL: Final = "neutral"  # nothing learned (client left, a policy acted, the upstream said 4xx): release only


class Permit:
    """Leave to send one request to a target; resolved exactly once (a second resolve is a no-op)."""

    __slots__ = ("_breaker", "probe", "resolved")

    def __init__(self, breaker: Breaker, probe: bool) -> None:
        self._breaker = breaker
        #: This request is the half-open probe: the circuit's fate waits on it.
        self.probe = probe
        self.resolved = False

    def resolve(self, verdict: str) -> None:
        if self.resolved:
            return
        self.resolved = True
        self._breaker._settle(self.probe, verdict)


class Breaker:
    """Consecutive failures open the circuit; after the cooldown one request probes (half-open).

    Every request a breaker admits holds a `Permit`, and every permit is resolved — success, failure
    or neutral — by the one place that ends an attempt, so a probe is always released."""

    __slots__ = ("failures", "threshold", "cooldown", "opened_at", "probing", "_clock", "target")

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic,
                 target: str = "") -> None:
        #: The target id, for the `fastgw_circuit_open` gauge (none: not exported).
        self.target = target
        self.failures = 0
        self.threshold = threshold
        self.cooldown = cooldown
        self.opened_at: float | None = None
        self.probing = False
        self._clock = clock

    def state(self, now: float | None = None) -> str:
        if self.opened_at is None:
            return "closed"
        now = self._clock() if now is None else now
        return "half-open" if now - self.opened_at >= self.cooldown else "open"

    def acquire(self) -> Permit | None:
        """A permit to try this target now, or None (open, or half-open with its one probe out)."""
        st = self.state()
        if st == "closed":
            return Permit(self, False)
        if st == "half-open" and not self.probing:
            self.probing = True
            return Permit(self, True)
        return None

    def allow(self) -> bool:
        """Would a request be let through now? (Takes nothing: use `acquire` to send one.)"""
        st = self.state()
        return st == "closed" or (st == "half-open" and not self.probing)

    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self._clock() - self.opened_at))

    def _settle(self, probe: bool, verdict: str) -> None:
        if probe:
            self.probing = False
        if verdict == Verdict.SUCCESS:
            self.failures = 0
            if self.opened_at is not None and self.target:
                metrics.circuit(self.target, False)
            self.opened_at = None
        elif verdict == Verdict.FAILURE:
            self.failures += 1
            if probe or self.failures >= self.threshold:
                if self.opened_at is None and self.target:
                    metrics.circuit(self.target, True)
                self.opened_at = self._clock()  # (re)open: a failed probe waits another cooldown
        # NEUTRAL: a probe that learned nothing frees the half-open slot for the next request


class Router:
    """Plans per model; breakers per target (this worker's view)."""

    def __init__(self, cfg: Config, targets: list[TargetRuntime], rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._by_id = {t.id: t for t in targets}
        self._rng = rng or random.Random()
        self.breakers = {t.id: Breaker(t.breaker_failures, t.breaker_cooldown, clock, t.id) for t in targets}
        self._routes = {r.model: r for r in cfg.routing}
        self._serving: dict[str, list[TargetRuntime]] = {}
        for t in targets:
            for name in (t.model, *t.aliases):
                self._serving.setdefault(name, []).append(t)
        self._default_retry = Retry()

    def plan(self, model: str) -> Plan | None:
        route = self._routes.get(model)
        if route is None:
            ts = self._serving.get(model)
            return Plan(list(ts), self._default_retry) if ts else None
        ts = [self._by_id[i] for i in route.targets]
        if route.strategy == "loadbalance" and len(ts) > 1:
            ts = self._weighted_order(ts)
        return Plan(ts, route.retry)

    def _weighted_order(self, ts: list[TargetRuntime]) -> list[TargetRuntime]:
        """A random order where each next target is drawn with probability proportional to its weight."""
        pool = list(ts)
        out = []
        while pool:
            total = sum(t.weight for t in pool)
            if total <= 0:
                out += pool
                break
            x = self._rng.random() * total
            for i, t in enumerate(pool):
                x -= t.weight
                if x < 0:
                    out.append(pool.pop(i))
                    break
            else:
                out.append(pool.pop())
        return out
