"""Which targets serve a request, in what order, how often to retry, and which targets to skip for now.

A model's `routing` entry names its targets and a strategy: `fallback` (in order) or
`loadbalance` (a weighted random order, so the others are still fallbacks). Without
an entry, a model falls back across the targets that serve it, in config order.
Circuit breakers are per target and per worker: a worker learns about a dead target
from its own failures (a few requests per worker, then it stops trying until the
cooldown's half-open probe).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from fastgw.config import Config, Retry
from fastgw.providers.base import TargetRuntime

__all__ = ["Router", "Plan", "Breaker"]


@dataclass(frozen=True, slots=True)
class Plan:
    targets: list[TargetRuntime]
    retry: Retry


class Breaker:
    """Consecutive failures open the circuit; after the cooldown one request probes (half-open)."""

    __slots__ = ("failures", "threshold", "cooldown", "opened_at", "probing")

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.failures = 0
        self.threshold = threshold
        self.cooldown = cooldown
        self.opened_at: float | None = None
        self.probing = False

    def state(self, now: float | None = None) -> str:
        if self.opened_at is None:
            return "closed"
        now = time.monotonic() if now is None else now
        return "half-open" if now - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """May a request go to this target now? (In half-open, only one probe at a time.)"""
        st = self.state()
        if st == "closed":
            return True
        if st == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (time.monotonic() - self.opened_at))

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = time.monotonic()  # (re)open: a failed probe waits another cooldown
        self.probing = False


class Router:
    """Plans per model; breakers per target (this worker's view)."""

    def __init__(self, cfg: Config, targets: list[TargetRuntime], rng: random.Random | None = None) -> None:
        self._by_id = {t.id: t for t in targets}
        self._rng = rng or random.Random()
        self.breakers = {t.id: Breaker(t.breaker_failures, t.breaker_cooldown) for t in targets}
        self._routes = {r.model: r for r in cfg.routing}
        self._serving: dict[str, list[TargetRuntime]] = {}
        for t in targets:
            for name in (t.model, *t.aliases):
                self._serving.setdefault(name, []).append(t)
        self._default_retry = Retry()

    def knows(self, model: str) -> bool:
        return model in self._routes or model in self._serving

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
