"""The `rate-limiter` policy: request, token and concurrency limits and spend budgets that hold across workers
(`state.backend: local`) and instances (`state.backend: redis`).

Per request the policy plans what applies (every limit whose `models` globs match the requested model, once
per subject its `per` names; every budget), then makes one atomic admission against the shared state:
1 request from each request bucket, the estimated tokens (prompt estimate + max_tokens, or
`completion_reserve`, times `n`) from each token bucket, a leased slot in each concurrency set, and the
worst-case cost against each budget's current period — all of it or none. The answer is a `Reservation`
(with OpenAI's x-ratelimit-* header values) or a `Refusal` (which limit, retry-after, the error to send).
When the answer ends, whatever the path, `reconcile` replaces the reservation by the real usage in one
more round trip: token buckets refunded or charged the difference, the reserved cost replaced by the real
cost, the slots released. A slot whose worker died is freed when its lease (`SLOT_LEASE`) runs out;
a long answer keeps it with `renew` every `RENEW_EVERY` seconds.

Errors are data: `Refusal.error()` builds the `GatewayError` the HTTP layer renders (429 rate_limit_exceeded
with retry-after; 429 insufficient_quota with x-should-retry: false; 503 quota_unavailable with
retry-after when the state is unreachable and `state.on_failure` is closed; with `open` the request is
admitted and counted in this worker's memory until the state answers again).
"""

from __future__ import annotations

import asyncio
import datetime
import fnmatch
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, NamedTuple

from fastgw.api.errors import GatewayError, Origin
from fastgw.policy.ratelimit_settings import Budget, Limit, RateLimiter, problems
from fastgw.state import (Admission, Ask, Backend, MemoryBackend, Rate, RateState, Settle, Slot, Spend,
                          StateUnavailable, Usage, key, new_holder, unescape)
from fastgw.state.model import KIND_BUDGET, KIND_REQUESTS, KIND_SLOTS, KIND_TOKENS

__all__ = ["NAME", "RateLimiter", "Limit", "Budget", "problems", "RateLimitPolicy", "Pricing", "Reservation",
           "Refusal", "go_duration", "requested_completion", "SLOT_LEASE", "RENEW_EVERY", "ANONYMOUS"]

log = logging.getLogger("fastgw.policy.ratelimit")

NAME: Final = "rate-limiter"

#: Seconds a concurrency slot lives without a renewal: a slot held by a worker that died is free after at most
#: this long. Long enough that a renewal every RENEW_EVERY survives a missed one; short enough that a crash
#: costs a minute of one slot, not the limit.
SLOT_LEASE = 60.0
#: How often a request still in flight renews its slots (a third of the lease: two renewals may fail).
RENEW_EVERY = SLOT_LEASE / 3
#: retry-after for a full concurrency limit: when a slot frees cannot be known (answers end when they end); one
#: second is the header's granularity, and the SDKs back off further on a repeated 429.
CONCURRENCY_RETRY: Final = 1.0
#: The principal when no rbac key names the caller: every anonymous caller shares one per-key bucket.
ANONYMOUS: Final = "-"
#: The role subject of a caller with no roles (per: role limits and budgets still apply to it).
NO_ROLE: Final = "-"
#: A budget key is kept this long after its period ends, so `fastgw usage` can show the last period.
RETENTION: Final = 40 * 86400
#: Plans cached per (principal, roles, model); a gateway sees few distinct ones, this bounds a flood of models.
PLAN_CACHE: Final = 4096
#: Settlements kept while the state is unreachable, to apply when it answers again (older ones are dropped: their
#: reservations then stay charged at their worst case, which over-counts and never under-counts).
PENDING_MAX: Final = 10_000


#: Settlements and releases left running by requests cancelled meanwhile: the loop keeps only weak references
#: to tasks, so these hold them until they end.
_running: set[asyncio.Task[Any]] = set()


def _keep(task: asyncio.Task[Any]) -> None:
    _running.add(task)
    task.add_done_callback(_running.discard)


# ---- answers ----------------------------------------------------------------------------------------------------

class Pricing(NamedTuple):
    """A target's price in USD per million tokens (`providers.targets[].pricing`)."""

    input: float
    output: float


def go_duration(seconds: float) -> str:
    """A duration the way OpenAI writes x-ratelimit-reset-* (Go's time.Duration, ms precision): "20ms", "1s",
    "6m0s", "1.5s", "1h2m3s". Rounded up, so that waiting that long is enough."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    sec = f"{s}.{frac:03d}".rstrip("0") if frac else str(s)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


def _retry_headers(seconds: float) -> list[tuple[bytes, bytes]]:
    # retry-after in whole seconds (HTTP), retry-after-ms for the SDKs that read it (openai-python does)
    return [(b"retry-after", str(max(1, math.ceil(seconds - 1e-6))).encode()),
            (b"retry-after-ms", str(max(1, math.ceil(seconds * 1000 - 1e-6))).encode())]


@dataclass(slots=True)
class Refusal:
    """Why a request was not admitted; `error()` is the answer."""

    #: requests | tokens | too_large | concurrency | budget | unavailable
    kind: str
    #: The limit or budget that refused ("" when the state was unavailable).
    limit: str
    message: str
    #: Seconds until the request would pass (None: not before the budget's period ends, or never).
    retry_after: float | None
    #: OpenAI's x-ratelimit-* headers, as of this refusal.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return 503 if self.kind == "unavailable" else 429

    @property
    def retryable(self) -> bool:
        return self.kind not in ("budget", "too_large")

    def error(self) -> GatewayError:
        """The GatewayError to answer with (its envelope, status and headers)."""
        headers = list(self.headers)
        if self.retry_after is not None and self.retryable:
            headers += _retry_headers(self.retry_after)
        if self.kind == "unavailable":
            return GatewayError(self.message, status=503, type="server_error", code="quota_unavailable",
                                headers=headers, origin=Origin.GATEWAY, extra={"policy": NAME})
        if self.kind == "budget":
            return GatewayError(self.message, status=429, type="insufficient_quota", code="insufficient_quota",
                                no_retry=True, headers=headers, origin=Origin.POLICY,
                                extra={"policy": NAME, "limit": self.limit})
        return GatewayError(self.message, status=429, type="tokens" if self.kind in ("tokens", "too_large")
                            else "requests", code="rate_limit_exceeded", no_retry=not self.retryable,
                            headers=headers, origin=Origin.POLICY, extra={"policy": NAME, "limit": self.limit})


class Reservation:
    """What one admitted request holds until `reconcile`: it must be reconciled exactly once, on every path."""

    __slots__ = ("holder", "backend", "tokens", "token_rates", "slots", "spends", "pricing", "headers", "limits",
                 "fallback", "done")

    def __init__(self, holder: str, backend: Backend, tokens: int, token_rates: tuple[tuple[str, float], ...],
                 slots: tuple[str, ...], spends: tuple[tuple[str, int], ...], pricing: Pricing | None,
                 headers: list[tuple[bytes, bytes]], limits: tuple[str, ...], fallback: bool) -> None:
        self.holder = holder
        self.backend = backend
        #: Tokens reserved in each token bucket.
        self.tokens = tokens
        self.token_rates = token_rates  #: (key, interval)
        self.slots = slots
        self.spends = spends  #: (key, nano-USD reserved)
        self.pricing = pricing
        #: OpenAI's x-ratelimit-* headers for the response.
        self.headers = headers
        #: Names of the limits and budgets that applied (for metrics).
        self.limits = limits
        #: Admitted by this worker's memory while the shared state was unreachable (state.on_failure: open).
        self.fallback = fallback
        self.done = False


# ---- planning ---------------------------------------------------------------------------------------------------

class _Globs:
    """fnmatch globs compiled once ("*" alone matches everything without a regex)."""

    __slots__ = ("any", "regex")

    def __init__(self, globs: Iterable[str]) -> None:
        globs = list(globs)
        self.any = "*" in globs
        self.regex = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs and not self.any else None

    def __call__(self, name: str) -> bool:
        return self.any or (self.regex is not None and self.regex.match(name) is not None)


class _Shape:
    """What applies to one (principal, roles, model), costs aside, with what every request of it reuses built once
    (the keys, the request buckets' takes, the slots, the headers' limits). A native class (not a NamedTuple): a
    limited request reads a dozen of its fields, each a C field read here where a NamedTuple's is a descriptor call."""

    __slots__ = ("requests", "tokens", "slots", "budgets", "names", "request_rates", "token_rates", "slot_asks",
                 "slot_keys", "limit_headers")

    def __init__(self, requests: tuple[tuple[str, float, int, Limit], ...],
                 tokens: tuple[tuple[str, float, int, Limit], ...], slots: tuple[tuple[str, int], ...],
                 budgets: tuple[tuple[str, Budget, int], ...], names: tuple[str, ...], request_rates: tuple[Rate, ...],
                 token_rates: tuple[tuple[str, float], ...], slot_asks: tuple[Slot, ...], slot_keys: tuple[str, ...],
                 limit_headers: tuple[tuple[bytes, bytes] | None, tuple[bytes, bytes] | None]) -> None:
        self.requests = requests  #: (key, interval µs, burst, limit)
        self.tokens = tokens
        self.slots = slots
        self.budgets = budgets  #: (key before the period, budget, its limit in nano-USD)
        self.names = names
        self.request_rates = request_rates  #: one request from each request bucket
        self.token_rates = token_rates  #: (key, interval) of each token bucket
        self.slot_asks = slot_asks
        self.slot_keys = slot_keys
        self.limit_headers = limit_headers  #: x-ratelimit-limit-* of requests and of tokens when one bucket each


def _subjects(per: str, principal: str, roles: Sequence[str], model: str) -> list[tuple[str, ...]]:
    if per == "key":
        return [(principal,)]
    if per == "role":
        return [(r,) for r in roles] or [(NO_ROLE,)]
    if per == "model":
        return [(model,)]
    if per == "key+model":
        return [(principal, model)]
    return [()]


def requested_completion(body: dict[str, Any]) -> tuple[int | None, int]:
    """(max output tokens the request asks for, or None; choices `n`) from an OpenAI-style body."""
    cap = None
    for k in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            cap = v
            break
    n = body.get("n")
    return cap, n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def _period(kind: str, unix: float) -> tuple[str, int]:
    """(the period's name in keys, Unix s when its key may go: the period's end + RETENTION; 0 for total)."""
    if kind == "total":
        return "total", 0
    t = time.gmtime(unix)
    # (datetime, not calendar.timegm: calendar is 0.1 MB of every worker's RSS for this; datetime is loaded anyway.)
    if kind == "day":
        day = datetime.datetime(t.tm_year, t.tm_mon, t.tm_mday, tzinfo=datetime.timezone.utc)
        return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", int(day.timestamp()) + 86400 + RETENTION
    y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    end = datetime.datetime(y, m, 1, tzinfo=datetime.timezone.utc)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}", int(end.timestamp()) + RETENTION


class RateLimitPolicy:
    """The compiled rate-limiter: built once in the master from its settings and the state backend; the backend
    opens its connection in each worker on first use."""

    name = NAME

    def __init__(self, settings: RateLimiter, backend: Backend, *, on_failure: str = "closed",
                 lease: float = SLOT_LEASE, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.backend = backend
        self.on_failure = on_failure
        self.lease = lease
        self.clock = clock
        #: on_failure: open counts here (per worker) while the backend is unreachable.
        self.fallback = MemoryBackend(backend.prefix, clock)
        self._limits = [(lim, _Globs(lim.models)) for lim in settings.limits]
        self._shapes: dict[tuple[str, tuple[str, ...], str], _Shape] = {}
        self._budget_keys: dict[tuple[str, tuple[str, ...], str], tuple[int, tuple[tuple[str, int, int], ...]]] = {}
        self._pending: deque[Settle] = deque(maxlen=PENDING_MAX)
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None
        #: State errors seen by this worker (fastgw_state_errors_total).
        self.state_errors = 0

    @property
    def active(self) -> bool:
        return bool(self.settings.limits or self.settings.budgets)

    def _shape(self, principal: str, roles: tuple[str, ...], model: str) -> _Shape:
        ck = (principal, roles, model)
        shape = self._shapes.get(ck)
        if shape is not None:
            return shape
        p = self.backend.prefix
        req: list[tuple[str, float, int, Limit]] = []
        tok: list[tuple[str, float, int, Limit]] = []
        slots: list[tuple[str, int]] = []
        names: list[str] = []
        for lim, globs in self._limits:
            if not globs(model):
                continue
            names.append(lim.name)
            for subj in _subjects(lim.per, principal, roles, model):
                if lim.requests_per_minute:
                    req.append((key(p, KIND_REQUESTS, lim.name, *subj), 60e6 / lim.requests_per_minute,
                                lim.request_burst or lim.requests_per_minute, lim))
                if lim.tokens_per_minute:
                    tok.append((key(p, KIND_TOKENS, lim.name, *subj), 60e6 / lim.tokens_per_minute,
                                lim.token_burst or lim.tokens_per_minute, lim))
                if lim.concurrent:
                    slots.append((key(p, KIND_SLOTS, lim.name, *subj), lim.concurrent))
        budgets = []
        for b in self.settings.budgets:
            names.append(b.name)
            for subj in _subjects(b.per, principal, roles, model):
                budgets.append((key(p, KIND_BUDGET, b.name, *subj), b, math.floor(b.usd * 1e9 + 1e-6)))
        heads = tuple((b"x-ratelimit-limit-" + what, str(ts[0][3].requests_per_minute if what == b"requests" else
                                                          ts[0][3].tokens_per_minute).encode())
                      if len(ts) == 1 else None for what, ts in ((b"requests", req), (b"tokens", tok)))
        shape = _Shape(tuple(req), tuple(tok), tuple(slots), tuple(budgets), tuple(names),
                       tuple(Rate(k, iv, burst, 1) for k, iv, burst, _ in req), tuple((k, iv) for k, iv, _, _ in tok),
                       tuple(Slot(k, lim) for k, lim in slots), tuple(k for k, _ in slots),
                       heads)  # type: ignore[arg-type]
        if len(self._shapes) >= PLAN_CACHE:
            self._shapes.clear()
        self._shapes[ck] = shape
        return shape

    def _spend_keys(self, ck: tuple[str, tuple[str, ...], str], shape: _Shape) -> tuple[tuple[str, int, int], ...]:
        """(key of the current period, limit, expiry) of each budget of a shape: built once per shape and UTC day."""
        day = int(self.clock() // 86400)
        got = self._budget_keys.get(ck)
        if got is not None and got[0] == day:
            return got[1]
        out = []
        for base, b, limit in shape.budgets:
            name, expires = _period(b.period, day * 86400.0)
            out.append((f"{base}:{name}", limit, expires))
        if len(self._budget_keys) >= PLAN_CACHE:
            self._budget_keys.clear()
        keys = tuple(out)
        self._budget_keys[ck] = (day, keys)
        return keys

    def estimate(self, prompt_tokens: int, max_tokens: int | None, n: int = 1) -> tuple[int, int]:
        """(total tokens to reserve, of which completion): prompt estimate + (max_tokens or completion_reserve) × n."""
        completion = (max_tokens if max_tokens is not None else self.settings.completion_reserve) * max(1, n)
        return max(0, prompt_tokens) + completion, completion

    @staticmethod
    def cost(pricing: Pricing | None, prompt_tokens: int, completion_tokens: int) -> int:
        """nano-USD for so many tokens at `pricing` (USD per million tokens = 1000 nano-USD per token), rounded up."""
        if pricing is None:
            return 0
        return max(0, math.ceil((prompt_tokens * pricing.input + completion_tokens * pricing.output) * 1000 - 1e-6))

    def plan(self, principal: str | None, roles: Sequence[str], model: str, pricing: Pricing | None,
             prompt_tokens: int, max_tokens: int | None = None, n: int = 1) -> tuple[Ask, _Shape, int] | None:
        """The admission for one request (None when no limit or budget applies), its shape and its tokens."""
        ck = (principal or ANONYMOUS, tuple(roles), model)
        shape = self._shapes.get(ck) or self._shape(*ck)
        if not shape.names:
            return None
        prompt_tokens = max(0, prompt_tokens)
        completion = (max_tokens if max_tokens is not None else self.settings.completion_reserve) * max(1, n)
        tokens = prompt_tokens + completion
        spends: tuple[Spend, ...] = ()
        if shape.budgets:
            worst = self.cost(pricing, prompt_tokens, completion)
            spends = tuple([Spend(k, limit, worst, expires) for k, limit, expires in self._spend_keys(ck, shape)])
        if len(shape.tokens) == 1:
            k, iv, burst, _ = shape.tokens[0]
            rates = shape.request_rates + (Rate(k, iv, burst, tokens),)
        elif shape.tokens:
            rates = shape.request_rates + tuple([Rate(k, iv, burst, tokens) for k, iv, burst, _ in shape.tokens])
        else:
            rates = shape.request_rates
        ask = Ask(new_holder(), rates, shape.slot_asks, spends, self.lease)
        return ask, shape, tokens

    # ---- the request path ---------------------------------------------------------------------------------------

    async def admit(self, principal: str | None, roles: Sequence[str], model: str, pricing: Pricing | None,
                    prompt_tokens: int, max_tokens: int | None = None, n: int = 1) -> Reservation | Refusal | None:
        """One atomic admission (one round trip). None: nothing applies to this request (no headers either)."""
        planned = self.plan(principal, roles, model, pricing, prompt_tokens, max_tokens, n)
        if planned is None:
            return None
        ask, shape, tokens = planned
        backend: Backend = self.backend
        fallback = False
        try:
            # Remote: an admission the request stops waiting for (its deadline, its client gone) may still be
            # applied; the state's late answer then releases it at once (nothing reached an upstream).
            adm = await (backend.admit(ask, self._orphan(ask, shape, tokens, pricing)) if backend.remote
                         else backend.admit(ask))
        except StateUnavailable as e:
            self.state_errors += 1
            if self.on_failure != "open":
                return Refusal("unavailable", "", "The quota service is unavailable, so the request was not "
                               "admitted; please retry shortly.", max(e.retry_after, 1.0))
            log.warning("state unavailable (%s): admitting and counting in this worker", e)
            fallback = True
        else:
            if self._pending and not self._flushing:  # the state answers again: settle what failed meanwhile
                self._flushing = True
                self._flusher = asyncio.get_running_loop().create_task(self._flush())
        if fallback:  # (awaited after the handler: see tests/test_compiled.py on awaits while handling)
            backend = self.fallback
            adm = await backend.admit(ask)
        headers = _headers(shape, ask, adm)
        if not adm.ok:
            return _refusal(shape, ask, adm, tokens, headers, self.clock())
        return self._reservation(ask, shape, tokens, pricing, backend, headers)

    def _reservation(self, ask: Ask, shape: _Shape, tokens: int, pricing: Pricing | None, backend: Backend,
                     headers: list[tuple[bytes, bytes]]) -> Reservation:
        return Reservation(ask.holder, backend, tokens, shape.token_rates, shape.slot_keys,
                           tuple([(b.key, b.cost) for b in ask.spends]) if ask.spends else (), pricing, headers,
                           shape.names, backend is self.fallback)

    def _orphan(self, ask: Ask, shape: _Shape, tokens: int, pricing: Pricing | None) -> Callable[[Admission], None]:
        """What releases an admission nobody waited for: without it, its slots stay held for a whole lease and its
        worst-case cost against the budget for good."""
        def release(adm: Admission) -> None:
            if adm.ok:  # every token refunded, no cost: the request never reached an upstream
                res = self._reservation(ask, shape, tokens, pricing, self.backend, [])
                _keep(asyncio.get_running_loop().create_task(self.reconcile(res, 0, 0)))
        return release

    async def reconcile(self, res: Reservation, prompt_tokens: int, completion_tokens: int) -> bool:
        """Replace the reservation by real usage (one round trip); idempotent. False when the state did not answer:
        the settlement is kept and applied after the next successful admission; the slots' leases run out.
        A caller cancelled meanwhile (its client left) does not cut it short: the settlement still runs."""
        if res.done:
            return True
        res.done = True
        used = max(0, prompt_tokens) + max(0, completion_tokens)
        delta = used - res.tokens
        actual = self.cost(res.pricing, max(0, prompt_tokens), max(0, completion_tokens))
        settle = Settle(res.holder, tuple([(k, iv, delta) for k, iv in res.token_rates]) if delta else (),
                        res.slots, tuple([(k, reserved, actual) for k, reserved in res.spends]) if res.spends else ())
        backend = res.backend
        try:
            return await self._settle(backend, settle)
        except asyncio.CancelledError:
            if not backend.remote:
                # A local operation runs whole or not at all, with no suspension inside: cancelled, it did not
                # run. (A remote one reports what became of it to `_late`.)
                _keep(asyncio.get_running_loop().create_task(self._settle(backend, settle)))
            raise

    async def _settle(self, backend: Backend, settle: Settle) -> bool:
        try:
            await (backend.reconcile(settle, partial(self._late, backend, settle)) if backend.remote
                   else backend.reconcile(settle))
        except StateUnavailable as e:
            self.state_errors += 1
            log.warning("state unavailable at reconcile (%s): kept for later", e)
            self._pending.append(settle)
            return False
        return True

    def _late(self, backend: Backend, settle: Settle, ran: bool) -> None:
        """What Redis did with a settlement whose call ended before its answer. Ran: one kept for a retry (its
        deadline passed) is dropped, never applied twice (its late answer comes before any later command's on the
        connection, so before a flush could resend it). Did not run (its caller was cancelled before it was
        sent, or Redis had lost the script): one kept for a retry waits for it; any other is sent again now."""
        if ran:
            self._drop_pending(settle)
        elif settle not in self._pending:
            _keep(asyncio.get_running_loop().create_task(self._settle(backend, settle)))

    def _drop_pending(self, settle: Settle) -> None:
        try:
            self._pending.remove(settle)
        except ValueError:
            pass

    async def renew(self, res: Reservation) -> bool:
        """Push the lease of the reservation's concurrency slots (call every RENEW_EVERY s while it streams)."""
        if res.done or not res.slots:
            return True
        try:
            await res.backend.renew(res.holder, res.slots, self.lease)
        except StateUnavailable:
            self.state_errors += 1
            return False
        return True

    async def _flush(self) -> None:
        """Apply settlements that failed while the state was unreachable (one round trip each, oldest first)."""
        try:
            while self._pending:
                settle = self._pending[0]
                backend = self.backend
                await (backend.reconcile(settle, partial(self._late, backend, settle)) if backend.remote
                       else backend.reconcile(settle))
                if self._pending and self._pending[0] is settle:
                    self._pending.popleft()
        except StateUnavailable:
            self.state_errors += 1
        finally:
            self._flushing = False

    # ---- fastgw usage ---------------------------------------------------------------------------------------------

    def usage_rows(self, usage: Usage, principal: str | None = None) -> list[dict[str, Any]]:
        """The live state as rows for `fastgw usage`: one per bucket, concurrency set and budget period."""
        limits = {lim.name: lim for lim in self.settings.limits}
        budgets = {b.name: b for b in self.settings.budgets}
        rows: list[dict[str, Any]] = []
        now = usage.now

        def split(k: str) -> tuple[str, str, list[str]]:
            parts = k.split(":")
            return parts[1], unescape(parts[2]), [unescape(p) for p in parts[3:]]

        def mine(per: str, subj: list[str]) -> bool:
            return principal is None or (per in ("key", "key+model") and bool(subj) and subj[0] == principal)

        for k, tat in usage.rates.items():
            kind, name, subj = split(k)
            lim = limits.get(name)
            if lim is None or not mine(lim.per, subj):
                continue
            per_minute = lim.requests_per_minute if kind == KIND_REQUESTS else lim.tokens_per_minute
            burst = (lim.request_burst if kind == KIND_REQUESTS else lim.token_burst) or per_minute
            if not per_minute or not burst:
                continue
            interval = 60e6 / per_minute
            remaining = max(0, math.floor((now + interval * burst - tat) / interval + 1e-9))
            rows.append({"kind": "requests" if kind == KIND_REQUESTS else "tokens", "limit": name, "per": lim.per,
                         "subject": subj, "limit_per_minute": per_minute, "burst": burst, "remaining": remaining,
                         "reset_s": round(max(0.0, tat - now) / 1e6, 3)})
        for k, holders in usage.slots.items():
            kind, name, subj = split(k)
            lim = limits.get(name)
            if lim is None or not mine(lim.per, subj):
                continue
            rows.append({"kind": "concurrent", "limit": name, "per": lim.per, "subject": subj,
                         "in_flight": len(holders), "max": lim.concurrent})
        for k, (used, held) in usage.spends.items():
            kind, name, parts = split(k)
            b = budgets.get(name)
            if b is None or not parts or not mine(b.per, parts[:-1]):
                continue
            rows.append({"kind": "budget", "budget": name, "per": b.per, "subject": parts[:-1], "period": parts[-1],
                         "spent_usd": round((used - held) / 1e9, 9), "reserved_usd": round(held / 1e9, 9),
                         "limit_usd": b.usd})
        rows.sort(key=lambda r: (r["kind"], r.get("limit", r.get("budget")), r["subject"]))
        return rows


# ---- answers from an admission ------------------------------------------------------------------------------------

def _headers(shape: _Shape, ask: Ask, adm: Admission) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers: for requests and for tokens, the bucket with the least left."""
    rates = adm.rates
    nreq = len(shape.requests)
    out: list[tuple[bytes, bytes]] = []
    # (written out for each kind, not a loop over a tuple of tuples: no header name or tuple built per request)
    if nreq:
        st, head = _least(rates, 0, nreq, shape.requests, shape.limit_headers[0], True)
        out.append(head)
        out.append((b"x-ratelimit-remaining-requests", b"%d" % st.remaining))
        out.append((b"x-ratelimit-reset-requests", go_duration(st.reset).encode()))
    if len(rates) > nreq:
        st, head = _least(rates, nreq, len(rates), shape.tokens, shape.limit_headers[1], False)
        out.append(head)
        out.append((b"x-ratelimit-remaining-tokens", b"%d" % st.remaining))
        out.append((b"x-ratelimit-reset-tokens", go_duration(st.reset).encode()))
    return out


def _least(rates: list[RateState], lo: int, hi: int, templates: tuple[tuple[str, float, int, Limit], ...],
           head: tuple[bytes, bytes] | None, requests: bool) -> tuple[RateState, tuple[bytes, bytes]]:
    """The bucket of rates[lo:hi] with the least left, and its x-ratelimit-limit-* header."""
    if head is not None:  # one bucket (the usual case): its limit header was built with the shape
        return rates[lo], head
    i = min(range(lo, hi), key=lambda j: (rates[j].remaining, -rates[j].reset))
    lim = templates[i - lo][3]
    return rates[i], ((b"x-ratelimit-limit-requests", str(lim.requests_per_minute).encode()) if requests else
                      (b"x-ratelimit-limit-tokens", str(lim.tokens_per_minute).encode()))


def _refusal(shape: _Shape, ask: Ask, adm: Admission, tokens: int, headers: list[tuple[bytes, bytes]],
             unix: float) -> Refusal:
    """The one refusal to report: a spent budget (final for its period), then a request too large to ever pass,
    then the rate limit with the longest wait, then a full concurrency limit."""
    for (_, b, _), spent in zip(shape.budgets, adm.spends):
        if not spent.ok:
            after = None
            if b.period != "total":
                _, expires = _period(b.period, unix)
                after = max(0.0, expires - RETENTION - unix)
            return Refusal("budget", b.name, f"You exceeded your current quota: budget {b.name!r} (${b.usd:g} per "
                           f"{b.period}) has no room for this request's worst-case cost. Check your plan and "
                           "billing details.", after, headers)
    templates = shape.requests + shape.tokens
    nreq = len(shape.requests)
    worst: tuple[float, int] | None = None
    for i, st in enumerate(adm.rates):
        lim = templates[i][3]
        if st.never:
            return Refusal("too_large", lim.name, f"Request too large for limit {lim.name!r} on tokens per minute "
                           f"(TPM): Limit {lim.tokens_per_minute}, burst {templates[i][2]}, Requested {tokens}. "
                           "Reduce the input or max_tokens to run successfully.", None, headers)
        if not st.ok and (worst is None or st.wait > worst[0]):
            worst = (st.wait, i)
    if worst is not None:
        wait, i = worst
        lim = templates[i][3]
        if i < nreq:
            msg = (f"Rate limit reached for requests per minute (RPM) on limit {lim.name!r}: Limit "
                   f"{lim.requests_per_minute}, Remaining 0. Please try again in {go_duration(wait)}.")
            return Refusal("requests", lim.name, msg, wait, headers)
        msg = (f"Rate limit reached for tokens per minute (TPM) on limit {lim.name!r}: Limit {lim.tokens_per_minute}"
               f", Remaining {adm.rates[i].remaining}, Requested {tokens}. Please try again in {go_duration(wait)}.")
        return Refusal("tokens", lim.name, msg, wait, headers)
    for (k, limit), slot in zip(shape.slots, adm.slots):
        if not slot.ok:
            name = unescape(k.split(":")[2])
            return Refusal("concurrency", name, f"Too many requests in flight on limit {name!r}: Limit {limit}. "
                           "Please try again when one has finished.", CONCURRENCY_RETRY, headers)
    raise AssertionError("a refused admission names no refusing limit")
