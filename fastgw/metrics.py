"""Prometheus metrics for the gateway: every worker counts its own requests, and a `/metrics` scrape that lands
on any worker renders the sum over all of them (prometheus-client's multiprocess mode).

API
---
Every call site is one line; every function works in any process, with or without `setup_master()` (then
the counts are this process's only, in a private registry: unit tests, single-process runs).

Master (cli.py / master.py)::

    setup_master(base: str | None = None) -> str    # before the first fork: fresh 0700 dir, sets the env var
    cleanup_master() -> None                        # at exit (idempotent; only the process that set it up)
    worker_dead(pid: int) -> None                   # for every reaped worker (drops its live gauges)
    worker_restarted() -> None                      # when a dead worker is replaced
    config_reload(result: str) -> None              # "ok" | "error" (SIGHUP)

Worker (app.py / stream.py / policies)::

    known_models(names: Iterable[str]) -> None      # optional: model names outside this set count as "other"
    request_started() -> None                       # a /v1 request is in flight ...
    request_finished(ctx: RequestContext, route: str) -> None   # ... and is done: requests, tokens, decisions
    upstream_attempt(target: str, outcome: str) -> None         # ok|connect_error|timeout|http_429|http_5xx|error_frame
    fallback(model: str | None, reason: str) -> None            # we moved on to the next target
    ttft(model: str | None, target: str | None, seconds: float) -> None
    stream_opened() -> None
    stream_closed(duration: float, clock: EventClock | None = None) -> None
    EventClock()  .tick(now)  .ticks(now, n)  .flush()          # per-stream inter-event gaps (hot path)
    policy_decision(policy: str, action: str, entity: str = "") -> None
    holdback(nbytes: int) -> None                   # bytes a streaming policy held back at once
    refused(reason: str) -> None                    # a request/connection refused to protect the worker
    log_write_error(log: str, reason: str) -> None  # audit|access, disk_full|other
    state_error(backend: str, op: str) -> None      # shared-state backend failures
    ratelimit_decision(limit: str, outcome: str) -> None
    budget_spend(budget: str, principal: str, usd: float) -> None
    circuit(target: str, is_open: bool) -> None     # a breaker opened / closed again
    render() -> tuple[bytes, str]                   # (body, content type) for GET /metrics

Metrics: ``fastgw_requests_total{route,model,target,status}``, ``fastgw_request_duration_seconds{route}``,
``fastgw_upstream_attempts_total{target,outcome}``, ``fastgw_fallbacks_total{model,reason}``,
``fastgw_inflight_requests`` and ``fastgw_active_streams`` (gauges, livesum), ``fastgw_ttft_seconds{model,target}``,
``fastgw_inter_event_seconds``, ``fastgw_stream_duration_seconds``, ``fastgw_tokens_total{model,direction,kind}``
(direction prompt|completion, kind exact|estimated), ``fastgw_policy_decisions_total{policy,action,entity}``,
``fastgw_holdback_bytes``, ``fastgw_worker_restarts_total``, ``fastgw_config_reloads_total{result}``,
``fastgw_refused_total{reason}``, ``fastgw_log_write_errors_total{log,reason}``,
``fastgw_state_errors_total{backend,op}``, ``fastgw_ratelimit_decisions_total{limit,outcome}``,
``fastgw_budget_spend_usd{budget,principal}`` (gauge, most recent), ``fastgw_circuit_open{target}`` (gauge, max
over live workers).

Label cardinality
-----------------
Targets, policies and entities come from the config. The model is the client's string until the router
accepts it, so it is checked against `known_models()` when that was called; `/v1/models/<id>` routes collapse
to ``/v1/models/{model}``; and each labelled metric keeps at most `MAX_SERIES_PER_METRIC` series per process,
after which new label sets count under ``other``. ``status`` is the HTTP status code; a request that ends
with no status (an internal error) counts as 500, which is what the server answers.

Multiprocess mode
-----------------
`setup_master()` gives the workers one directory of per-pid value files and `render()` merges them, so any
worker answers for all; a dead worker's live gauges leave the totals, its counters stay. How, and what happens
across restarts: `fastgw.metrics_multiprocess`, which holds that plumbing.

Costs: a labelled call is a dict lookup of the cached child plus one mmap write per value (a lock, a struct
pack, a 16-byte store; the pid check reads a cached pid). `request_started` + `request_finished` make about
ten such writes (~4 µs on a server core, ~18 µs on the slow sandbox this was measured on). Nothing here is
called per SSE event except `EventClock.tick` (~0.3 µs sandboxed), which only touches a list.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Final, Iterable

from fastgw import metrics_multiprocess as _mp
from fastgw.metrics_multiprocess import multiprocess_dir, worker_dead
from fastgw.prometheus import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call

if TYPE_CHECKING:
    import asyncio

    from fastgw.policy.base import RequestContext

__all__ = ["setup_master", "cleanup_master", "worker_dead", "worker_restarted", "config_reload", "known_models",
           "request_started", "request_finished", "upstream_attempt", "fallback", "ttft", "stream_opened",
           "stream_closed", "EventClock", "policy_decision", "holdback", "render", "multiprocess_dir", "refused",
           "log_write_error", "state_error", "ratelimit_decision", "budget_spend", "circuit",
           "UPSTREAM_OUTCOMES", "MAX_SERIES_PER_METRIC"]

OTHER: Final = "other"

#: Series per labelled metric and process before new label sets count as "other": a bound on memory and on the
#: multiprocess files should a label ever carry a client-chosen value (Prometheus advises keeping a metric's
#: cardinality well under this).
MAX_SERIES_PER_METRIC = 1000
#: Seconds a worker adds up its metric updates before writing them (one write per series, not per request).
METRICS_FLUSH_INTERVAL: Final = 1.0
#: Distinct model names counted before `known_models()` is called (the rest are "other").
MAX_UNVETTED_MODELS = 100

UPSTREAM_OUTCOMES = ("ok", "connect_error", "timeout", "http_429", "http_5xx", "error_frame")
# The retry kinds app.py already uses, so its call site can pass them as they are.
_OUTCOME_ALIASES: Final = {"429": "http_429", "5xx": "http_5xx"}

# Buckets (upper bounds, seconds or bytes). Chosen for LLM traffic: TTFT from tens of ms to a minute; token
# gaps from sub-ms (batched chunks) to the seconds of a stalled upstream; streams up to the 10 min max_duration.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
INTER_EVENT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STREAM_DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
REQUEST_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
HOLDBACK_BUCKETS = (0.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0)

_INTER_BOUNDS: Final = [*INTER_EVENT_BUCKETS, math.inf]  # as the Histogram stores them (+Inf appended)
_N_INTER: Final = len(INTER_EVENT_BUCKETS) + 1  # (compiled, a Final tuple cannot be read while its module initialises)


class _Metrics:
    """The metric objects of one process and mode, with caches of their labelled children."""

    def __init__(self, registry: CollectorRegistry | None, mp_path: str | None) -> None:
        r = registry
        self.registry = registry
        #: The multiprocess directory these values are written to (None: in-process, in `registry`).
        self.mp_path = mp_path
        self.requests = Counter("fastgw_requests_total", "Requests answered, by route, model, target and status.",
                                ("route", "model", "target", "status"), registry=r)
        self.request_duration = Histogram("fastgw_request_duration_seconds",
                                          "Request duration from parse to the last byte, by route.", ("route",),
                                          buckets=REQUEST_DURATION_BUCKETS, registry=r)
        self.attempts = Counter("fastgw_upstream_attempts_total", "Upstream attempts by target and outcome.",
                                ("target", "outcome"), registry=r)
        self.fallbacks = Counter("fastgw_fallbacks_total", "Moves to the next target after a failure.",
                                 ("model", "reason"), registry=r)
        self.inflight = Gauge("fastgw_inflight_requests", "Requests in flight (live workers only).",
                              multiprocess_mode="livesum", registry=r)
        self.streams = Gauge("fastgw_active_streams", "Streamed answers in flight (live workers only).",
                             multiprocess_mode="livesum", registry=r)
        self.ttft = Histogram("fastgw_ttft_seconds", "Time to the first byte of the answer.", ("model", "target"),
                              buckets=TTFT_BUCKETS, registry=r)
        self.inter_event = Histogram("fastgw_inter_event_seconds", "Gaps between consecutive streamed events.",
                                     buckets=INTER_EVENT_BUCKETS, registry=r)
        self.stream_duration = Histogram("fastgw_stream_duration_seconds", "Streamed answer duration.",
                                         buckets=STREAM_DURATION_BUCKETS, registry=r)
        self.tokens = Counter("fastgw_tokens_total", "Tokens by model, direction (prompt|completion) and kind "
                              "(exact: the provider's count; estimated: ours).", ("model", "direction", "kind"),
                              registry=r)
        self.decisions = Counter("fastgw_policy_decisions_total", "Policy decisions by policy, action and entity.",
                                 ("policy", "action", "entity"), registry=r)
        self.holdback = Histogram("fastgw_holdback_bytes", "Bytes a streaming policy held back before release.",
                                  buckets=HOLDBACK_BUCKETS, registry=r)
        self.restarts = Counter("fastgw_worker_restarts_total", "Workers replaced after dying.", registry=r)
        self.reloads = Counter("fastgw_config_reloads_total", "Configuration reloads by result.", ("result",),
                               registry=r)
        self.refused = Counter("fastgw_refused_total", "Requests and connections refused to protect the worker, "
                               "by reason.", ("reason",), registry=r)
        self.log_errors = Counter("fastgw_log_write_errors_total", "Failed writes of the audit or access log, by log "
                                  "and reason (disk_full|other).", ("log", "reason"), registry=r)
        self.state_errors = Counter("fastgw_state_errors_total", "Failed calls to the shared-state backend, by "
                                    "backend and operation.", ("backend", "op"), registry=r)
        self.ratelimit = Counter("fastgw_ratelimit_decisions_total", "Rate-limit and budget decisions by limit and "
                                 "outcome (allowed|limited|unavailable|open).", ("limit", "outcome"), registry=r)
        self.circuit = Gauge("fastgw_circuit_open", "1 while a target's circuit breaker is open or half-open in some "
                             "live worker.", ("target",), registry=r, multiprocess_mode="livemax")
        # The spend a worker last read back from the shared state (every instance agrees on it); the most recent
        # value of any worker is the right one.
        self.spend = Gauge("fastgw_budget_spend_usd", "Spend in the current period of a budget, by budget and "
                           "principal.", ("budget", "principal"), registry=r, multiprocess_mode="mostrecent")
        _check_histogram_internals(self.inter_event, _INTER_BOUNDS)
        # Labelled children by label tuple (the counters' wrapped in their `_Pending`): `labels()` validates and
        # locks on every call; a dict hit does not.
        self.c_requests: dict[tuple, _Pending] = {}
        self.c_duration: dict[tuple, _Obs] = {}
        self.c_attempts: dict[tuple, _Pending] = {}
        self.c_fallbacks: dict[tuple, _Pending] = {}
        self.c_ttft: dict[tuple, _Obs] = {}
        self.c_tokens: dict[tuple, _Pending] = {}
        self.c_decisions: dict[tuple, _Pending] = {}
        self.c_reloads: dict[tuple, _Pending] = {}
        self.c_refused: dict[tuple, _Pending] = {}
        self.c_log_errors: dict[tuple, _Pending] = {}
        self.c_state_errors: dict[tuple, _Pending] = {}
        self.c_ratelimit: dict[tuple, _Pending] = {}
        self.c_spend: dict[tuple, object] = {}
        self.c_circuit: dict[tuple, object] = {}
        self.models_seen: set[str] = set()
        self.p_inflight = _Pending(self.inflight)
        self.p_streams = _Pending(self.streams)
        self.o_inter_event = _Obs(self.inter_event)
        self.o_stream_duration = _Obs(self.stream_duration)
        self.o_holdback = _Obs(self.holdback)
        #: A finished request's series by (route, model, target, status) label values (`request_finished`).
        self.c_finished: dict[tuple[str, str, str, int], _Finished] = {}


_m: _Metrics | None = None
_known_models: frozenset[str] | None = None


def _build() -> _Metrics:
    """Create the metric objects for the current mode (lazily, so that `setup_master` can come after import)."""
    global _m
    path = _mp.choose_values()
    # multiprocess: render() reads the files, no registry holds these objects
    m = _Metrics(CollectorRegistry(), None) if path is None else _Metrics(None, path)
    _m = m
    return m


def _series_key(cache: dict, key: tuple) -> tuple:
    """`key`, or once `cache` holds MAX_SERIES_PER_METRIC series the shared "other" key (so that neither the
    series nor the cache grow)."""
    return (OTHER,) * len(key) if len(cache) >= MAX_SERIES_PER_METRIC else key


def _series(metric: object, cache: dict, key: tuple, wrap: Callable[[object], Any]) -> Any:
    """What `cache` keeps for the series of `metric` labelled `key` (strings): `wrap(metric.labels(*key))`, made once;
    past the cap, the shared "other" series (a series already kept is still found by its own key)."""
    v = cache.get(key)
    if v is None:
        key = _series_key(cache, key)
        v = cache.get(key)
        if v is None:
            v = cache[key] = wrap(metric.labels(*key))  # type: ignore[attr-defined]
    return v


def _same(child: object) -> object:
    return child


def _child(metric: object, cache: dict, key: tuple) -> object:
    """The labelled child for `key` (a gauge's, set at once)."""
    return _series(metric, cache, key, _same)


class _Pending:
    """A counter or gauge (or labelled child) with what was added to it since the last flush. The counters'
    caches hold these, so an update finds its sum with its series: no second lookup keyed by the child, no
    float boxed per update."""

    __slots__ = ("metric", "amount", "queued")

    def __init__(self, metric: object) -> None:
        self.metric = metric
        self.amount = 0.0
        self.queued = False  # in `_queued`, to be written at the next flush


def _add(p: _Pending, amount: float) -> None:
    if not p.queued:
        p.queued = True
        _queued.append(p)
    p.amount += amount


def _pending(metric: object, cache: dict[tuple, _Pending], key: tuple) -> _Pending:
    """The `_Pending` of the series of counter or gauge `metric` labelled `key`."""
    p: _Pending = _series(metric, cache, key, _Pending)
    return p


def _inc(metric: object, cache: dict[tuple, _Pending], key: tuple, amount: float = 1.0) -> None:
    """Add `amount` to the series of `metric` labelled `key`."""
    _add(_pending(metric, cache, key), amount)


class _Obs:
    """A histogram (or labelled child) with the observations made since the last flush: per-bucket counts and their
    sum, kept beside it (no lookup keyed by the histogram per observation, no read of its bounds)."""

    __slots__ = ("h", "bounds", "counts", "total", "queued")

    def __init__(self, h: object) -> None:
        self.h = h
        self.bounds: list[float] = list(h._upper_bounds)  # type: ignore[attr-defined]
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.queued = False  # in `_queued_obs`, to be written at the next flush


def _obs_child(metric: object, cache: dict[tuple, _Obs], key: tuple) -> _Obs:
    """The `_Obs` of the child of histogram `metric` labelled `key`."""
    o: _Obs = _series(metric, cache, key, _Obs)
    return o


def _queue_obs(o: _Obs) -> None:
    if not o.queued:
        o.queued = True
        _queued_obs.append(o)


class _Finished:
    """Where a finished request of one (route, model, target, status) is counted: its series found by one lookup
    (each was looked up by its own label tuple, ~5,000 instructions a request)."""

    __slots__ = ("requests", "duration", "model", "tokens")

    def __init__(self, requests: _Pending, duration: _Obs, model: str) -> None:
        self.requests = requests
        self.duration = duration
        self.model = model
        #: The token series, made at first use: prompt exact, prompt estimated, completion exact, estimated.
        self.tokens: list[_Pending | None] = [None, None, None, None]


def _tokens(m: _Metrics, f: _Finished, completion: bool, estimated: bool) -> _Pending:
    i = 2 * completion + estimated
    t = f.tokens[i]
    if t is None:
        t = f.tokens[i] = _pending(m.tokens, m.c_tokens, (f.model, "completion" if completion else "prompt",
                                                          "estimated" if estimated else "exact"))
    return t


# ---- per-request updates, added up locally ---------------------------------------------------------------
# Each prometheus write is a locked update of an mmap'd file (2-5 µs in multiprocess mode) and a request
# makes ~14 of them. A worker adds them up here instead and writes each series once per flush: every
# METRICS_FLUSH_INTERVAL (on the next request finishing, or the worker's timer when idle), before it renders
# /metrics, and at exit. The price: a scrape may miss up to one interval of another worker's requests, and a
# SIGKILLed worker loses its last interval of counts.
_queued: Final[list[_Pending]] = []  # the series added to since the last flush
_ABSENT: Final = object()  # a usage without the key (not one whose value is null)
_queued_obs: Final[list[_Obs]] = []  # the histograms (or children) observed since the last flush
_flush_at: Final = [0.0]


def _observe(o: _Obs, value: float) -> None:
    _queue_obs(o)
    o.counts[_le_index(o.bounds, value)] += 1
    o.total += value


def _le_index(bounds: list[float], value: float) -> int:
    """The bucket of `value`: the first bound >= value, the histogram's le semantics (`bisect_left`'s answer, NaN
    included). Compiled, a walk of the ~15 bounds from the smallest, where most values fall, costs less than the call
    into bisect with a boxed float (`EventClock.tick` of a paced event: ~2,500 instructions with bisect and its last
    time boxed, ~800 with both gone; callgrind)."""
    i = 0
    n = len(bounds)
    while i < n and bounds[i] < value:
        i += 1
    return i


def flush() -> None:
    """Write the updates added up since the last flush to the shared values."""
    _flush_at[0] = _monotonic() + METRICS_FLUSH_INTERVAL
    if _queued:
        queued = list(_queued)
        _queued.clear()
        for p in queued:
            amount = p.amount
            p.amount = 0.0
            p.queued = False
            if amount:
                p.metric.inc(amount)  # type: ignore[attr-defined]
    if _queued_obs:
        observed = list(_queued_obs)
        _queued_obs.clear()
        for o in observed:
            counts, total = o.counts, o.total
            o.counts = [0] * len(counts)
            o.total = 0.0
            o.queued = False
            _add_observations(o.h, counts, total)  # type: ignore[arg-type]


def start_flusher(loop: asyncio.AbstractEventLoop) -> None:
    """Flush every METRICS_FLUSH_INTERVAL on `loop` (an idle worker's last counts reach the scrape too)."""
    def tick() -> None:
        if _queued or _queued_obs:
            flush()
        loop.call_later(METRICS_FLUSH_INTERVAL, tick)
    loop.call_later(METRICS_FLUSH_INTERVAL, tick)


def _model_label(m: _Metrics, model: str | None) -> str:
    if not model:
        return ""
    known = _known_models
    if known is not None:
        return model if model in known else OTHER
    seen = m.models_seen
    if model in seen:
        return model
    if len(seen) >= MAX_UNVETTED_MODELS:
        return OTHER
    seen.add(model)
    return model


def _route_label(route: str) -> str:
    if "?" in route:
        route = route.split("?", 1)[0]
    if route.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return route


# ---- histograms: adding many observations at once -------------------------------------------------------

def _check_histogram_internals(h: Histogram, bounds: list[float]) -> None:
    """`_add_observations` relies on Histogram's storage; fail at start-up, loudly, if a release changes it."""
    ok = (isinstance(getattr(h, "_buckets", None), list) and hasattr(h, "_sum")
          and list(getattr(h, "_upper_bounds", ())) == bounds)
    if not ok:
        raise RuntimeError("prometheus_client's Histogram no longer stores _upper_bounds/_buckets/_sum as "
                           "fastgw.metrics expects; EventClock.flush cannot add observations in bulk")


def _add_observations(h: Histogram, counts: list[int], total: float) -> None:
    """Add `sum(counts)` observations to the unlabelled histogram (or labelled child) `h` in one go:
    `counts[i]` of them fell in bucket i (first upper bound >= value) and their values add up to `total`.

    prometheus_client has no public bulk API, and observing each bucket's bound instead would make `_sum`
    wrong. `Histogram.observe(v)` is exactly `_sum.inc(v)` plus `_buckets[i].inc(1)` for the first bucket
    whose bound is >= v (buckets are stored non-cumulatively; the exposition accumulates them, in one process
    and in the multiprocess collector alike), so incrementing the same values by the per-bucket totals gives
    the exposition of observing every value one by one (tests/test_metrics.py checks it byte for byte), with
    one mmap write per non-empty bucket instead of one per SSE event. Exemplars are not kept (nor are they in
    multiprocess mode)."""
    h._sum.inc(total)
    buckets = h._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


class EventClock:
    """Inter-event gaps of one stream, bucketed locally; `flush()` at the end adds them to
    ``fastgw_inter_event_seconds`` with one write per non-empty bucket.

    Pass a fine clock (`time.monotonic()`, not uvloop's `loop.time()`, which has millisecond steps). The first
    tick only sets the reference unless `start` was given.
    """

    __slots__ = ("last", "counts", "total")

    def __init__(self, start: float | None = None) -> None:
        #: The last event's time; negative before the first (a float, not None: compiled, it is stored unboxed).
        self.last = -1.0 if start is None else start
        #: Per-bucket counts, made at the first gap: an open stream that has had one event holds none (issue 18).
        self.counts: list[int] | None = None
        self.total = 0.0

    def tick(self, now: float) -> None:
        """One event arrived at `now`. Hot path (once per SSE event): a subtraction, a walk over 15 bounds and a
        list increment, in native floats when compiled; no prometheus call, no lock, no syscall."""
        last = self.last
        self.last = now
        if last >= 0.0:
            gap = now - last
            self.total += gap
            self._buckets()[_le_index(_INTER_BOUNDS, gap)] += 1

    def ticks(self, now: float, n: int) -> None:
        """`n` events arrived together at `now` (one upstream read): the first after the gap since the last
        one, the others after a gap of 0."""
        if n <= 0:
            return
        self.tick(now)
        if n > 1:
            self._buckets()[0] += n - 1  # a gap of 0 falls in the first bucket (all bounds are >= 0)

    def _buckets(self) -> list[int]:
        counts = self.counts
        if counts is None:
            counts = self.counts = [0] * _N_INTER
        return counts

    def flush(self) -> None:
        """Add what was counted to the shared histogram and start counting afresh (idempotent)."""
        counts = self.counts
        if counts is not None and any(counts):
            m = _m or _build()
            o = m.o_inter_event
            _queue_obs(o)
            pending = o.counts
            for i, n in enumerate(counts):
                if n:
                    pending[i] += n
            o.total += self.total
            self.counts = None
            self.total = 0.0


# ---- master ---------------------------------------------------------------------------------------------

def setup_master(base: str | None = None) -> str:
    """Create a fresh private directory for the workers' metric files (under `base`, else systemd's
    $RUNTIME_DIRECTORY, else the temp dir), point ``PROMETHEUS_MULTIPROC_DIR`` at it and switch
    prometheus_client to multiprocess values. Call in the master before the first fork. Returns the path."""
    global _m
    path = _mp.setup(base)
    _m = None  # rebuilt on first use, with mmap-backed values
    return path


def cleanup_master() -> None:
    """Remove the directory `setup_master` created and go back to in-process metrics. Only acts in the
    process that called `setup_master` (a forked worker calling it does nothing)."""
    global _m
    if _mp.cleanup():
        _m = None


def worker_restarted() -> None:
    m = _m or _build()
    m.restarts.inc()


def config_reload(result: str) -> None:
    m = _m or _build()
    _inc(m.reloads, m.c_reloads, (result,))


# ---- worker ---------------------------------------------------------------------------------------------

def known_models(names: Iterable[str]) -> None:
    """The model names (and aliases) the config serves; others count as "other" in model labels."""
    global _known_models
    _known_models = frozenset(names)


def request_started() -> None:
    m = _m or _build()
    _add(m.p_inflight, 1.0)


def request_finished(ctx: RequestContext, route: str) -> None:
    """The request is over (answered, refused, failed or abandoned): call once per `request_started`, from a
    `finally`. Counts the request by route/model/target/status, its duration, its tokens (from `ctx.usage`:
    OpenAI or Anthropic names; kind "estimated" when `usage["estimated"]`) and the decisions in
    `ctx.decisions` (policy, outcome, the detail's "entity"; routing retries are counted by
    `upstream_attempt` instead)."""
    m = _m or _build()
    _add(m.p_inflight, -1.0)
    r = _route_label(route)
    model = _model_label(m, ctx.model)
    target = ctx.target or ""
    key = (r, model, target, ctx.status or 500)
    f = m.c_finished.get(key)
    if f is None:
        f = _Finished(_pending(m.requests, m.c_requests, (r, model, target, str(key[3]))),
                      _obs_child(m.request_duration, m.c_duration, (r,)), model)
        if len(m.c_finished) < MAX_SERIES_PER_METRIC:  # past that, each looked up again (the "other" series)
            m.c_finished[key] = f
    _add(f.requests, 1.0)
    now = _monotonic()
    _observe(f.duration, now - ctx.started)
    usage = ctx.usage
    if usage:
        estimated = bool(usage.get("estimated"))
        p = usage.get("prompt_tokens", _ABSENT)
        if p is _ABSENT:
            p = usage.get("input_tokens")
        c = usage.get("completion_tokens", _ABSENT)
        if c is _ABSENT:
            c = usage.get("output_tokens")
        if (type(p) is int or type(p) is float) and p > 0:
            _add(_tokens(m, f, False, estimated), p)
        if (type(c) is int or type(c) is float) and c > 0:
            _add(_tokens(m, f, True, estimated), c)
    for dec in ctx.decisions:
        policy = dec.policy  # each read of a Decision's field is a generic attribute lookup: once each
        if policy == "routing":
            continue
        detail = dec.detail
        entity = detail.get("entity", "") if detail else ""
        _inc(m.decisions, m.c_decisions, (policy, dec.outcome, entity if isinstance(entity, str) else ""))
    if now >= _flush_at[0]:
        flush()


def upstream_attempt(target: str, outcome: str) -> None:
    """One try against `target`: ok, connect_error, timeout, http_429 (or "429"), http_5xx (or "5xx"),
    error_frame (an error event inside a 200 stream)."""
    m = _m or _build()
    _inc(m.attempts, m.c_attempts, (target, _OUTCOME_ALIASES.get(outcome, outcome)))


def fallback(model: str | None, reason: str) -> None:
    """The request moved on to its next target because of `reason` (the failed attempt's outcome)."""
    m = _m or _build()
    _inc(m.fallbacks, m.c_fallbacks, (_model_label(m, model), _OUTCOME_ALIASES.get(reason, reason)))


def ttft(model: str | None, target: str | None, seconds: float) -> None:
    m = _m or _build()
    _observe(_obs_child(m.ttft, m.c_ttft, (_model_label(m, model), target or "")), seconds)


def stream_opened() -> None:
    m = _m or _build()
    _add(m.p_streams, 1.0)


def stream_closed(duration: float, clock: EventClock | None = None) -> None:
    """A stream ended after `duration` seconds; `clock`'s gaps, if given, are flushed too."""
    m = _m or _build()
    _add(m.p_streams, -1.0)
    _observe(m.o_stream_duration, duration)
    if clock is not None:
        clock.flush()


def policy_decision(policy: str, action: str, entity: str = "") -> None:
    """Count one decision directly — only for decisions that are not in `ctx.decisions` (those are counted by
    `request_finished`)."""
    m = _m or _build()
    _inc(m.decisions, m.c_decisions, (policy, action, entity))


def refused(reason: str) -> None:
    """A request or connection refused to protect the worker: max_connections, body_budget, slow_body,
    cpu_budget, audit_unavailable, ..."""
    m = _m or _build()
    _inc(m.refused, m.c_refused, (reason,))


def log_write_error(log: str, reason: str) -> None:
    """A failed write of the `audit` or `access` log; reason `disk_full` (ENOSPC, EDQUOT) or `other`."""
    m = _m or _build()
    _inc(m.log_errors, m.c_log_errors, (log, reason))


def state_error(backend: str, op: str) -> None:
    """A failed call to the shared-state backend (`local` or `redis`; op: admit, reconcile, ...)."""
    m = _m or _build()
    _inc(m.state_errors, m.c_state_errors, (backend, op))


def ratelimit_decision(limit: str, outcome: str) -> None:
    """One limit or budget judged for one request: allowed, limited, unavailable (closed) or open."""
    m = _m or _build()
    _inc(m.ratelimit, m.c_ratelimit, (limit, outcome))


def budget_spend(budget: str, principal: str, usd: float) -> None:
    """The spend of a budget's current period as last read from the shared state (set now, not batched)."""
    m = _m or _build()
    _child(m.spend, m.c_spend, (budget, principal)).set(usd)  # type: ignore[attr-defined]


def circuit(target: str, is_open: bool) -> None:
    """A target's breaker opened (True) or closed again (False) in this worker (set now, not batched)."""
    m = _m or _build()
    _child(m.circuit, m.c_circuit, (target,)).set(1.0 if is_open else 0.0)  # type: ignore[attr-defined]


def holdback(nbytes: int) -> None:
    m = _m or _build()
    _observe(m.o_holdback, nbytes)


def render() -> tuple[bytes, str]:
    """The exposition for GET /metrics: every worker's values merged in multiprocess mode, this process's
    otherwise. Returns (body, content type)."""
    m = _m or _build()
    flush()  # this worker's own latest counts
    path = m.mp_path
    if path is None:
        assert m.registry is not None
        return generate_latest(m.registry), CONTENT_TYPE_LATEST
    return _mp.merged(path), CONTENT_TYPE_LATEST
