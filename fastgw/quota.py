"""The rate-limiter on the request path: one admission before any upstream is called, one settlement when the
answer ends, whatever way it ends (issue 16).

    quota = Quota.from_config(cfg)            # None when the chain has no rate-limiter
    res = await quota.admit(ctx, body, plan, resp)   # raises the refusal (429 / 503); headers onto resp
    try: ... the attempts, the answer ...
    finally: await quota.settle(ctx, res)

The policy itself (what applies, the atomic admission, the reconcile arithmetic) is
`fastgw.policy.ratelimit`; the counters live in `fastgw.state`. This module only joins them to a request:
the principal and roles rbac found, the model asked for, the prompt estimate the usage record uses, the
price of the dearest target the plan may reach (a fallback may serve the request), and at the end the usage
the provider reported (else the gateway's estimate of what was sent and emitted) priced at the target that
served it. A request still streaming renews its concurrency slots: one task per worker renews, every
`RENEW_EVERY` seconds, the slots of every reservation still streaming (not a task per request).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from fastgw import metrics
from fastgw.policy.ratelimit import RENEW_EVERY, Pricing, RateLimitPolicy, Refusal, Reservation, requested_completion
from fastgw.policy.textkeys import text_chars
from fastgw.state import Backend, StateUnavailable, open_backend

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.providers.base import TargetRuntime
    from fastgw.policy.base import RequestContext
    from fastgw.proto.writer import Responder
    from fastgw.routing import Plan

__all__ = ["Quota", "SharedBreakers", "prompt_estimate"]

log = logging.getLogger("fastgw.quota")

#: Target lists whose dearest price is kept (a gateway has few routes; this bounds a churn of rbac subsets).
PLAN_PRICES: Final = 1024


def prompt_estimate(body: dict[str, Any]) -> int:
    """The prompt's tokens as the usage record estimates them: a token per four characters of every text field."""
    return text_chars(body) // 4 + 1  # the texts `request_slots` yields, counted without building them


class Quota:
    """Admission and settlement of one worker's requests against the shared state."""

    __slots__ = ("policy", "pricing", "backend_kind", "_plan_prices", "_streaming", "_renewer")

    def __init__(self, policy: RateLimitPolicy, pricing: dict[str, Pricing], backend_kind: str) -> None:
        self.policy = policy
        #: Target id -> its price (USD per million input / output tokens); a target without one costs nothing.
        self.pricing = pricing
        self.backend_kind = backend_kind
        #: The dearest price of each target list a plan had (by target ids): computed once, not per request.
        self._plan_prices: dict[object, Pricing | None] = {}
        #: Reservations still streaming (an ordered set), whose slots the renewer keeps alive.
        self._streaming: dict[Reservation, None] = {}
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> Quota | None:
        """The rate-limiter of `cfg`'s chain, or None (its backend connects on first use, after fork)."""
        settings = cfg.policy.rate_limiter
        if settings is None or "rate-limiter" not in cfg.policies.chain or not cfg.pack.enabled:
            return None
        policy = RateLimitPolicy(settings, open_backend(cfg.state), on_failure=cfg.state.on_failure)
        pricing = {t.id: Pricing(t.pricing.input, t.pricing.output) for t in cfg.providers.targets
                   if t.pricing is not None}
        return cls(policy, pricing, cfg.state.backend)

    def _plan_price(self, plan: Plan) -> Pricing | None:
        """The dearest input and output price among the plan's targets: the reservation covers any fallback."""
        ts = plan.targets
        ck: object = ts[0].id if len(ts) == 1 else tuple(sorted(t.id for t in ts))  # (an empty plan: ())
        try:
            return self._plan_prices[ck]
        except KeyError:
            pass
        prices = [self.pricing[t.id] for t in ts if t.id in self.pricing]
        price = Pricing(max(p.input for p in prices), max(p.output for p in prices)) if prices else None
        if len(self._plan_prices) >= PLAN_PRICES:
            self._plan_prices.clear()
        self._plan_prices[ck] = price
        return price

    async def admit(self, ctx: RequestContext, body: dict[str, Any], plan: Plan, resp: Responder) -> Reservation | None:
        """Admit the request or raise its refusal (429 rate_limit_exceeded / insufficient_quota, 503
        quota_unavailable); an admitted one's x-ratelimit-* headers go on every response to it."""
        max_tokens, n = requested_completion(body)
        got = await self.policy.admit(ctx.principal, ctx.roles, ctx.model or "", self._plan_price(plan),
                                      prompt_estimate(body), max_tokens, n)
        if got is None:
            return None
        if isinstance(got, Refusal):
            outcome = "unavailable" if got.kind == "unavailable" else "limited"
            metrics.ratelimit_decision(got.limit or "-", outcome)
            if got.kind == "unavailable":
                metrics.state_error(self.backend_kind, "admit")
            ctx.decide("rate-limiter", "input", "deny", limit=got.limit, kind=got.kind)
            raise got.error()
        for name in got.limits:
            metrics.ratelimit_decision(name, "open" if got.fallback else "allowed")
        resp.extra_headers.extend(got.headers)
        return got

    async def settle(self, ctx: RequestContext, res: Reservation | None, renewing: Reservation | None = None
                     ) -> None:
        """Replace the reservation by what the request really used (never raises: the answer is already out)."""
        if renewing is not None:
            self._streaming.pop(renewing, None)
        if res is None or res.done:
            return
        usage = ctx.usage
        if usage is not None:  # the provider's count, or the stream's estimate (`pipeline.account`)
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
        elif ctx.target is None:
            prompt = completion = 0  # refused or blocked before any upstream saw it
        else:  # failed or blocked after an upstream had it: the prompt was sent, count what was emitted
            prompt = prompt_estimate(ctx.body) if ctx.body else 0
            completion = sum(len(t) for t in ctx.texts.values()) // 4 if ctx.texts else 0
        if ctx.target is not None and ctx.target in self.pricing:
            res.pricing = self.pricing[ctx.target]  # what the serving target charges, not the dearest one
        try:
            ok = await self.policy.reconcile(res, prompt, completion)
        except Exception:  # noqa: BLE001 - a settlement must not turn a delivered answer into an error
            log.exception("settling the quota of %s failed", ctx.request_id)
            return
        if not ok:
            metrics.state_error(self.backend_kind, "reconcile")

    def renew_while_streaming(self, res: Reservation | None) -> Reservation | None:
        """Keep the reservation's slot leases alive until `settle` (None when it holds no slot): the worker's one
        renewer renews them every RENEW_EVERY s, from its first round after this call."""
        if res is None or not res.slots:
            return None
        self._streaming[res] = None
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return res

    async def _renew(self) -> None:
        try:
            while self._streaming:
                await asyncio.sleep(RENEW_EVERY)
                for res in list(self._streaming):
                    if res.done:
                        self._streaming.pop(res, None)
                    elif not await self.policy.renew(res):
                        metrics.state_error(self.backend_kind, "renew")
        finally:
            self._renewer = None


class SharedBreakers:
    """Circuit breakers counted in the shared state for targets with `circuit_breaker.shared: true`: a target that
    fails is skipped by every worker of every instance after `failures` failures in total, with one half-open
    probe at a time across all of them, and a provider's retry-after is honoured everywhere. One round trip
    before an attempt (may it go?) and one after (what it taught). While the state cannot be reached, each
    worker's own breaker decides (the gateway keeps serving)."""

    __slots__ = ("backend", "backend_kind")

    def __init__(self, backend: Backend, backend_kind: str) -> None:
        self.backend = backend
        self.backend_kind = backend_kind

    @classmethod
    def from_config(cls, cfg: Config) -> SharedBreakers | None:
        """None when no target shares its breaker."""
        if not any(t.circuit_breaker.shared for t in cfg.providers.targets):
            return None
        return cls(open_backend(cfg.state), cfg.state.backend)

    async def may_try(self, target: TargetRuntime) -> tuple[bool, float] | None:
        """(may this attempt go, seconds until the target may be tried); None: the state did not answer."""
        try:
            st = await self.backend.breaker_try_probe(target.id, target.ttft_timeout)
        except StateUnavailable:
            metrics.state_error(self.backend_kind, "breaker")
            return None
        return st.probe, st.retry_in

    async def learned(self, target: TargetRuntime, verdict: str, retry_after: float | None = None) -> None:
        """Record what an attempt taught: a failure counts, a success closes; a retry-after holds the target."""
        from fastgw.routing import Verdict

        try:
            if verdict == Verdict.FAILURE:
                st = await self.backend.breaker_fail(target.id, target.breaker_failures, target.breaker_cooldown)
                metrics.circuit(target.id, st.state != "closed")
                if retry_after:
                    await self.backend.upstream_hint(target.id, retry_after)
            elif verdict == Verdict.SUCCESS:
                await self.backend.breaker_success(target.id)
        except StateUnavailable:
            metrics.state_error(self.backend_kind, "breaker")
