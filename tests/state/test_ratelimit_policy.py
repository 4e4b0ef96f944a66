"""The rate-limiter policy: its settings (issue 16's YAML), the planner (what applies to a request, tokens, cost),
admission answers (reservations, refusals, OpenAI's headers and error envelopes), reconciliation, failure modes
and budget periods. Unit tests use the in-memory backend (or one that fails on demand); the flows that matter
across backends run on each (`store`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import pytest
import uvloop
import yaml

from fastgw.api.errors import render
from fastgw.policy.ratelimit import (ANONYMOUS, Budget, Limit, Pricing, RateLimiter, RateLimitPolicy, Refusal,
                                     Reservation, go_duration, problems, requested_completion)
from fastgw.state import (Admission, Ask, MemoryBackend, Settle, State, StateUnavailable, Usage)
from fastgw.state import problems as state_problems
from tests.state.conftest import Factory

T = TypeVar("T")

ISSUE_YAML = """
state:
  backend: local
  url: redis://127.0.0.1:6379/0
  prefix: fastgw
  timeout: 0.05
  on_failure: closed
  path: /var/lib/fastgw/state
policy:
  rate-limiter:
    limits:
      - name: per-key
        per: key
        models: ["*"]
        requests_per_minute: 600
        request_burst: 600
        tokens_per_minute: 200000
        token_burst: 200000
        concurrent: 20
    budgets:
      - name: monthly
        per: key
        usd: 50.0
        period: month
    completion_reserve: 1024
"""
PRICE = Pricing(0.15, 0.60)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()
    return uvloop.run(main())


def limiter(limits: Sequence[dict[str, Any]] = (), budgets: Sequence[dict[str, Any]] = (), backend: Any = None,
            **kw: Any) -> RateLimitPolicy:
    settings = msgspec.convert({"limits": list(limits), "budgets": list(budgets)}, RateLimiter)
    return RateLimitPolicy(settings, backend or MemoryBackend("t"), **kw)


# ---- settings ---------------------------------------------------------------------------------------------------

def test_the_issue_yaml_decodes() -> None:
    doc = yaml.safe_load(ISSUE_YAML)
    st = msgspec.convert(doc["state"], State)
    assert (st.backend, st.timeout, st.on_failure, st.path) == ("local", 0.05, "closed", "/var/lib/fastgw/state")
    assert state_problems(st) == []
    rl = msgspec.convert(doc["policy"]["rate-limiter"], RateLimiter)
    assert rl.limits[0] == Limit(name="per-key", per="key", models=["*"], requests_per_minute=600, request_burst=600,
                                 tokens_per_minute=200000, token_burst=200000, concurrent=20)
    assert rl.budgets[0] == Budget(name="monthly", per="key", usd=50.0, period="month")
    assert rl.completion_reserve == 1024 and rl.on_error == "block"
    assert problems(rl) == []
    assert msgspec.convert({}, State) == State()


@pytest.mark.parametrize("doc", [
    {"limits": [{"name": "a", "requests_per_minute": 1, "typo": 1}]},
    {"limits": [{"name": "a", "per": "user"}]},
    {"limits": [{"name": "a", "requests_per_minute": 0}]},
    {"budgets": [{"name": "b", "usd": 1, "period": "week"}]},
    {"budgets": [{"name": "b", "usd": -1}]},
])
def test_bad_settings_are_refused_by_type(doc: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(doc, RateLimiter)


def test_problems_name_each_unusable_setting() -> None:
    rl = msgspec.convert({"limits": [
        {"name": "a b", "requests_per_minute": 1},
        {"name": "x", "requests_per_minute": 1},
        {"name": "x", "concurrent": 1},
        {"name": "none"},
        {"name": "bursty", "request_burst": 5, "token_burst": 5},
        {"name": "small", "tokens_per_minute": 500},
        {"name": "nomodels", "concurrent": 1, "models": []},
    ], "budgets": [{"name": "m", "usd": 1}, {"name": "m", "usd": 2}]}, RateLimiter)
    got = problems(rl)
    paths = [p for p, _ in got]
    assert paths == ["limits[0].name", "limits[2].name", "budgets[1].name", "limits[3]", "limits[4]",
                     "limits[4].request_burst", "limits[4].token_burst", "limits[5].tokens_per_minute",
                     "limits[6].models"]
    assert "completion_reserve (1024)" in dict(got)["limits[5].tokens_per_minute"]


def test_state_problems() -> None:
    assert [p for p, _ in state_problems(State(backend="redis", url="http://x"))] == ["url"]
    assert [p for p, _ in state_problems(State(prefix="a:b"))] == ["prefix"]
    assert [p for p, _ in state_problems(State(timeout=30))] == ["timeout"]
    assert state_problems(State(backend="redis", url="unix:///run/redis.sock")) == []


# ---- formats ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds,text", [(0, "0s"), (0.0001, "1ms"), (0.02, "20ms"), (0.9994, "1s"), (1, "1s"),
                                          (1.5, "1.5s"), (7.66, "7.66s"), (60, "1m0s"), (360, "6m0s"),
                                          (3723.25, "1h2m3.25s")])
def test_reset_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_requested_completion_reads_the_body() -> None:
    assert requested_completion({"max_tokens": 50}) == (50, 1)
    assert requested_completion({"max_completion_tokens": 70, "max_tokens": 50, "n": 3}) == (70, 3)
    assert requested_completion({"max_output_tokens": 9}) == (9, 1)
    assert requested_completion({"max_tokens": True, "n": 0}) == (None, 1)


# ---- planning -------------------------------------------------------------------------------------------------------

def test_limits_apply_by_model_glob_and_per_subject() -> None:
    rl = limiter([
        {"name": "k", "per": "key", "requests_per_minute": 60},
        {"name": "r", "per": "role", "tokens_per_minute": 100000},
        {"name": "m", "per": "model", "models": ["gpt-4o*"], "concurrent": 3},
        {"name": "km", "per": "key+model", "models": ["claude-*"], "requests_per_minute": 10},
        {"name": "g", "per": "global", "requests_per_minute": 1000, "models": ["gpt-4o", "o1"]},
    ], [{"name": "spend", "per": "role", "usd": 5}])
    planned = rl.plan("alice", ["dev", "ops"], "gpt-4o-mini", PRICE, 100)
    assert planned is not None
    ask, shape, tokens = planned
    assert [r.key for r in ask.rates] == ["t:rq:k:alice", "t:tk:r:dev", "t:tk:r:ops"]
    assert [(r.take, r.burst) for r in ask.rates] == [(1, 60), (tokens, 100000), (tokens, 100000)]
    assert ask.rates[0].interval == 1e6  # 60/minute: one per second
    assert [s.key for s in ask.slots] == ["t:cc:m:gpt-4o-mini"]
    assert [b.key.rsplit(":", 1)[0] for b in ask.spends] == ["t:bg:spend:dev", "t:bg:spend:ops"]
    assert shape.names == ("k", "r", "m", "spend")
    ask2 = rl.plan(None, [], "claude-3:opus", PRICE, 100)[0]  # type: ignore[index]
    # request buckets first, then token buckets
    assert [r.key for r in ask2.rates] == [f"t:rq:k:{ANONYMOUS}", "t:rq:km:-:claude-3%3Aopus", "t:tk:r:-"]
    ask3 = rl.plan("bob", [], "o1", PRICE, 100)[0]  # type: ignore[index]
    assert "t:rq:g" in [r.key for r in ask3.rates]
    assert limiter([{"name": "m", "models": ["gpt-*"], "concurrent": 1}]).plan("a", [], "o1", PRICE, 1) is None


def test_tokens_and_worst_case_cost() -> None:
    rl = limiter([{"name": "t", "tokens_per_minute": 10**6}], [{"name": "b", "usd": 1}])
    assert rl.estimate(1000, None) == (2024, 1024)  # completion_reserve when max_tokens is not set
    assert rl.estimate(1000, 200, n=2) == (1400, 400)
    assert rl.cost(PRICE, 1000, 400) == 1000 * 150 + 400 * 600  # nano-USD: USD per million = 1000 nUSD per token
    assert rl.cost(Pricing(0.0375, 0.15), 1, 0) == 38  # rounded up, never down
    assert rl.cost(None, 10**6, 10**6) == 0
    ask = rl.plan("a", [], "m", PRICE, 1000, 200, 2)[0]  # type: ignore[index]
    assert ask.rates[0].take == 1400 and ask.spends[0].cost == 390_000 and ask.spends[0].limit == 10**9


# ---- admission answers ------------------------------------------------------------------------------------------

def test_reservation_headers_follow_openai() -> None:
    rl = limiter([{"name": "a", "requests_per_minute": 600, "tokens_per_minute": 60000},
                  {"name": "b", "requests_per_minute": 60, "request_burst": 3}])

    async def go() -> None:
        res = await rl.admit("alice", [], "m", PRICE, 100, 100)
        assert isinstance(res, Reservation)
        h = dict(res.headers)
        # requests: the bucket with the least left ("b": 2 of a burst of 3); tokens: the only one
        assert h[b"x-ratelimit-limit-requests"] == b"60" and h[b"x-ratelimit-remaining-requests"] == b"2"
        assert h[b"x-ratelimit-reset-requests"] == b"1s"
        assert h[b"x-ratelimit-limit-tokens"] == b"60000" and h[b"x-ratelimit-remaining-tokens"] == b"59800"
        assert h[b"x-ratelimit-reset-tokens"] == b"200ms"
        assert res.limits == ("a", "b") and not res.fallback

    run(go)


def test_refusals_render_as_openai_errors() -> None:
    rl = limiter([{"name": "rpm", "requests_per_minute": 60, "request_burst": 1, "models": ["m"]},
                  {"name": "tpm", "tokens_per_minute": 5000, "models": ["big"]},
                  {"name": "cc", "concurrent": 1, "models": ["cc"]}],
                 [{"name": "tiny", "usd": 0.001, "period": "day", "per": "global"}])

    async def go() -> None:
        assert isinstance(await rl.admit("a", [], "m", PRICE, 10, 10), Reservation)
        r = await rl.admit("a", [], "m", PRICE, 10, 10)
        assert isinstance(r, Refusal) and (r.kind, r.limit) == ("requests", "rpm")
        assert r.retry_after is not None and 0.9 < r.retry_after <= 1.0
        err = r.error()
        headers, body = render(err)
        hd = dict(headers)
        assert err.status == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
        assert hd[b"retry-after"] == b"1" and 900 < int(hd[b"retry-after-ms"]) <= 1000
        assert b"x-should-retry" not in hd and hd[b"x-ratelimit-remaining-requests"] == b"0"
        assert msgspec.json.decode(body)["error"]["code"] == "rate_limit_exceeded"

        big = await rl.admit("b", [], "big", None, 4000, 2000)  # no pricing: the budget has no say
        assert isinstance(big, Refusal) and big.kind == "too_large" and big.retry_after is None
        hd = dict(render(big.error())[0])
        assert hd[b"x-should-retry"] == b"false" and b"retry-after" not in hd

        cc1 = await rl.admit("c", [], "cc", PRICE, 1, 1)
        assert isinstance(cc1, Reservation)
        cc2 = await rl.admit("c", [], "cc", PRICE, 1, 1)
        assert isinstance(cc2, Refusal) and cc2.kind == "concurrency" and cc2.retry_after == 1.0
        await rl.reconcile(cc1, 1, 1)
        assert isinstance(await rl.admit("c", [], "cc", PRICE, 1, 1), Reservation)

        broke = await rl.admit("f", [], "m", PRICE, 10_000, 1000)  # worst case $0.0021 > the $0.001 budget
        assert isinstance(broke, Refusal) and (broke.kind, broke.limit) == ("budget", "tiny")
        assert broke.retry_after is not None and 0 < broke.retry_after <= 86400
        err = broke.error()
        hd = dict(render(err)[0])
        assert (err.status, err.type, err.code) == (429, "insufficient_quota", "insufficient_quota")
        assert hd[b"x-should-retry"] == b"false" and b"retry-after" not in hd

    run(go)


class Flaky(MemoryBackend):
    """The in-memory store, unreachable while `down`."""

    down = False

    async def admit(self, ask: Ask) -> Admission:
        if self.down:
            raise StateUnavailable("down", 0.3)
        return await super().admit(ask)

    async def reconcile(self, settle: Settle) -> None:
        if self.down:
            raise StateUnavailable("down")
        await super().reconcile(settle)


def test_unreachable_state_closed_refuses_with_503() -> None:
    b = Flaky("t")
    rl = limiter([{"name": "a", "requests_per_minute": 60}], backend=b)
    b.down = True

    async def go() -> None:
        r = await rl.admit("a", [], "m", PRICE, 1)
        assert isinstance(r, Refusal) and r.kind == "unavailable" and r.retry_after == 1.0
        err = r.error()
        hd = dict(render(err)[0])
        assert (err.status, err.code) == (503, "quota_unavailable") and hd[b"retry-after"] == b"1"
        assert rl.state_errors == 1

    run(go)


def test_unreachable_state_open_admits_and_counts_in_the_worker() -> None:
    b = Flaky("t")
    rl = limiter([{"name": "a", "requests_per_minute": 60, "request_burst": 2, "concurrent": 5}], backend=b,
                 on_failure="open")
    b.down = True

    async def go() -> None:
        got = [await rl.admit("a", [], "m", PRICE, 1) for _ in range(3)]
        assert [type(g) for g in got] == [Reservation, Reservation, Refusal]  # counted locally meanwhile
        res = got[0]
        assert isinstance(res, Reservation) and res.fallback and res.backend is rl.fallback
        assert await rl.reconcile(res, 1, 1)  # settled where it was admitted
        assert res.holder not in (await rl.fallback.usage()).slots["t:cc:a:a"]
        assert b.tats == {}  # the shared store saw nothing

    run(go)


def test_a_failed_reconcile_is_applied_when_the_state_answers_again() -> None:
    b = Flaky("t")
    rl = limiter([{"name": "a", "tokens_per_minute": 100_000, "concurrent": 5}], [{"name": "b", "usd": 10}],
                 backend=b)

    async def go() -> None:
        res = await rl.admit("a", [], "m", PRICE, 1000, 1000)
        assert isinstance(res, Reservation)
        b.down = True
        assert not await rl.reconcile(res, 1000, 10)
        assert await rl.reconcile(res, 1000, 10)  # reconciled once only: the second call is a no-op
        b.down = False
        assert isinstance(await rl.admit("z", [], "m", PRICE, 1), Reservation)  # this one triggers the flush
        await asyncio.sleep(0)
        assert rl._flusher is not None
        await rl._flusher
        u = await b.usage()
        k = [k for k in u.spends if ":b:a:" in k][0]
        assert u.spends[k] == (rl.cost(PRICE, 1000, 10), 0)
        assert not u.slots.get("t:cc:a:a")

    run(go)


# ---- flows on every backend -------------------------------------------------------------------------------------

def test_reconcile_replaces_the_reservation_on_every_backend(store: Factory) -> None:
    b = store()
    rl = limiter([{"name": "a", "tokens_per_minute": 6000, "concurrent": 1}], [{"name": "m", "usd": 1}], backend=b)

    async def go() -> None:
        res = await rl.admit("alice", [], "m", PRICE, 500, 4000)
        assert isinstance(res, Reservation) and res.tokens == 4500
        assert dict(res.headers)[b"x-ratelimit-remaining-tokens"] == b"1500"
        blocked = await rl.admit("alice", [], "m", PRICE, 10, 10)
        assert isinstance(blocked, Refusal) and blocked.kind in ("tokens", "concurrency")
        assert await rl.reconcile(res, 500, 100)  # cancelled after 100 tokens: 3900 come back, the slot too
        after = await rl.admit("alice", [], "m", PRICE, 500, 400)
        assert isinstance(after, Reservation)
        # 6000 - 600 really used - 900 reserved now (+ what refilled meanwhile, at 100 tokens/s)
        assert 4500 <= int(dict(after.headers)[b"x-ratelimit-remaining-tokens"]) <= 4600
        rows = rl.usage_rows(await b.usage(), "alice")
        budget = [r for r in rows if r["kind"] == "budget"][0]
        assert budget["spent_usd"] == pytest.approx(rl.cost(PRICE, 500, 100) / 1e9)
        assert budget["reserved_usd"] == pytest.approx(rl.cost(PRICE, 500, 400) / 1e9)
        assert [r["in_flight"] for r in rows if r["kind"] == "concurrent"] == [1]
        assert rl.usage_rows(await b.usage(), "bob") == []
        await rl.reconcile(after, 0, 0)  # a request blocked before the upstream: nothing spent
        await b.close()

    run(go)


def test_budget_period_rolls_over_with_the_calendar(store: Factory) -> None:
    b = store()
    # 2099-01-31T23:43:20Z: in the future, as keys expire by the store's real clock (a period's end + 40 days)
    now = [4073586200.0]
    rl = limiter([], [{"name": "daily", "usd": 0.001, "period": "day"},
                      {"name": "monthly", "usd": 0.002, "period": "month"},
                      {"name": "ever", "usd": 0.003, "period": "total"}], backend=b, clock=lambda: now[0])

    async def spend() -> Reservation | Refusal | None:
        got = await rl.admit("alice", [], "m", Pricing(1.0, 1.0), 500, 500)  # $0.001 worst case
        if isinstance(got, Reservation):
            await rl.reconcile(got, 500, 500)
        return got

    async def go() -> None:
        assert isinstance(await spend(), Reservation)
        day = await spend()
        assert isinstance(day, Refusal) and day.limit == "daily"
        assert day.retry_after == pytest.approx(1000.0)  # until midnight UTC
        now[0] += 1000  # 2099-02-01T00:00:00Z: a new day and a new month
        assert isinstance(await spend(), Reservation)
        now[0] += 86400  # 2099-02-02: a new day, the same month (0.002 spent), the total at 0.002
        assert isinstance(await spend(), Reservation)
        now[0] += 27 * 86400  # 2099-03-01: a new day and month, but the total is spent
        ever = await spend()
        assert isinstance(ever, Refusal) and ever.limit == "ever" and ever.retry_after is None
        periods = sorted(r["period"] for r in rl.usage_rows(await b.usage()) if r["budget"] == "daily")
        assert periods == ["2099-01-31", "2099-02-01", "2099-02-02"]  # the refusal wrote nothing for March
        months = {r["period"]: r["spent_usd"] for r in rl.usage_rows(await b.usage()) if r["budget"] == "monthly"}
        assert months == {"2099-01": 0.001, "2099-02": 0.002}

    run(go)


def test_renew_keeps_the_slot_of_a_long_answer(store: Factory) -> None:
    b = store()
    rl = limiter([{"name": "a", "concurrent": 1}], backend=b, lease=0.3)

    async def go() -> None:
        res = await rl.admit("a", [], "m", PRICE, 1)
        assert isinstance(res, Reservation)
        await asyncio.sleep(0.2)
        assert await rl.renew(res)
        await asyncio.sleep(0.2)
        assert isinstance(await rl.admit("a", [], "m", PRICE, 1), Refusal)
        await rl.reconcile(res, 1, 1)
        assert await rl.renew(res)  # after reconcile: nothing to renew
        assert isinstance(await rl.admit("a", [], "m", PRICE, 1), Reservation)

    run(go)


def test_usage_rows_describe_buckets() -> None:
    rl = limiter([{"name": "a", "requests_per_minute": 60, "per": "role"}])

    async def go() -> list[dict[str, Any]]:
        await rl.admit("alice", ["dev"], "m", PRICE, 1)
        return rl.usage_rows(await rl.backend.usage())

    rows = run(go)
    assert rows == [{"kind": "requests", "limit": "a", "per": "role", "subject": ["dev"], "limit_per_minute": 60,
                     "burst": 60, "remaining": 59, "reset_s": pytest.approx(1.0, abs=0.01)}]
    assert isinstance(Usage(0.0).rates, dict)
