"""Quotas under sustained load (issue 16's "done means"): 16 concurrent clients spread across the gateway's
instances hammer one key for a while; an upstream that keeps the books (tests/state/quota_upstream.py) records
how many answers overlapped and the usage it reported. Checked against the limits:

- requests admitted ≤ (request_burst + rate × t) × 1.01 + 1, and every admitted request reached the upstream;
- never more than `concurrent` answers in flight at the upstream for the key;
- tokens the upstream reported ≤ token_burst + rate × t + one completion reserve per concurrent slot (requests
  without max_tokens really do use more than they reserve here);
- a budget of a few cents is never exceeded by more than one request's worst case, and still holds after every
  instance is restarted.

Two deployments: `redis` (one real redis-server, 3 instances × 2 workers) and `local` (one instance × 2 workers,
no server). The short forms run in `make test`; the 20 s forms are marked slow.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.state.redis_server import RedisServer
from tests.support.procs import Gateway, start_gateway, start_upstream

KEY = "fgw-load-key"
BUDGET_KEY = "fgw-load-budget-key"
CLIENTS = 16
#: Limits of the run. Requests bind on `qa` (10/s after a burst of 10), tokens on `qb` (100/s after 400).
RPM, REQUEST_BURST = 600, 10
TPM, TOKEN_BURST = 6000, 400
CONCURRENT = 4
COMPLETION_RESERVE = 32  # below the upstream's 40 tokens for a request without max_tokens
BUDGET_USD = 0.05
PRICE_IN, PRICE_OUT = 100.0, 200.0  # USD per million tokens: one budget request costs ~$0.008
BUDGET_MAX_TOKENS = 40
PROMPT = "hello there, count my tokens"


def _config(upstream: str, state: dict) -> dict:
    keys = [{"name": name, "sha256": hashlib.sha256(k.encode()).hexdigest(), "roles": ["u"]}
            for name, k in (("team", KEY), ("budgeted", BUDGET_KEY))]
    target = {"provider": "openai", "base_url": upstream}
    return {
        "pack": {"name": "quota-load"},
        "state": state,
        "policies": {"chain": ["rbac", "rate-limiter"]},
        "policy": {
            "rbac": {"keys": keys, "roles": {"u": {"models": ["*"]}}},
            "rate-limiter": {
                "limits": [
                    {"name": "req", "per": "key", "models": ["qa"], "requests_per_minute": RPM,
                     "request_burst": REQUEST_BURST, "concurrent": CONCURRENT},
                    {"name": "tok", "per": "key", "models": ["qb"], "tokens_per_minute": TPM,
                     "token_burst": TOKEN_BURST, "concurrent": CONCURRENT},
                ],
                "budgets": [{"name": "cents", "per": "key", "usd": BUDGET_USD, "period": "total"}],
                "completion_reserve": COMPLETION_RESERVE,
            },
        },
        "providers": {"targets": [
            # Free, so the budget (per key) binds for BUDGET_KEY alone.
            {**target, "id": "qa", "model": "qa", "pricing": {"input": 0, "output": 0}},
            {**target, "id": "qb", "model": "qb", "pricing": {"input": 0, "output": 0}},
            {**target, "id": "qc", "model": "qc", "pricing": {"input": PRICE_IN, "output": PRICE_OUT}},
        ]},
    }


@dataclass
class Tally:
    """What the clients saw, per model: answers by (status, error code, error type)."""

    seen: dict[str, Counter] = field(default_factory=lambda: {m: Counter() for m in ("qa", "qb", "qc")})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, model: str, outcome: tuple) -> None:
        with self.lock:
            self.seen[model][outcome] += 1

    def ok(self, model: str) -> int:
        return sum(n for (status, *_), n in self.seen[model].items() if status == 200)

    def refused(self, model: str, code: str, type_: str | None = None) -> int:
        return sum(n for (status, c, t), n in self.seen[model].items()
                   if status == 429 and c == code and (type_ is None or t == type_))


def _ask(gw: Gateway, key: str, model: str, stream: bool, max_tokens: int | None) -> tuple:
    body: dict = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    req = urllib.request.Request(f"{gw.url}/chat/completions", orjson.dumps(body),
                                 {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            if stream:
                assert data.endswith(b"data: [DONE]\n\n"), data[-200:]
            return (r.status, None, None)
    except urllib.error.HTTPError as e:
        err = orjson.loads(e.read())["error"]
        return (e.code, err.get("code"), err.get("type"))


def _load(gws: list[Gateway], seconds: float) -> tuple[Tally, float]:
    """16 clients for `seconds`: 6 on `qa`, 6 on `qb` (key KEY), 4 on `qc` (BUDGET_KEY), spread over `gws`."""
    tally = Tally()
    t0 = time.monotonic()
    deadline = t0 + seconds
    failures: list[BaseException] = []

    def client(i: int) -> None:
        gw = gws[i % len(gws)]
        model = "qa" if i < 6 else "qb" if i < 12 else "qc"
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                if model == "qc":
                    outcome = _ask(gw, BUDGET_KEY, model, n % 2 == 0, BUDGET_MAX_TOKENS)
                else:
                    # Half set no max_tokens: the upstream then writes more than the completion reserve.
                    outcome = _ask(gw, KEY, model, n % 2 == 0, None if n % 4 < 2 else 20)
                tally.add(model, outcome)
                if outcome[0] != 200:
                    time.sleep(0.005)  # a refused client retries at once, but does not spin the shared CPUs
        except BaseException as e:  # noqa: BLE001 - reported by the test, not lost in a thread
            failures.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert not failures, failures
    return tally, elapsed


def _worst_budget_request() -> float:
    prompt = len(PROMPT) // 4 + 1
    return (prompt * PRICE_IN + BUDGET_MAX_TOKENS * PRICE_OUT) / 1e6


def _check(tally: Tally, elapsed: float, stats: dict) -> None:
    # Only what the gateway admitted reached the upstream, and every admitted request did.
    for model in ("qa", "qb", "qc"):
        assert set(o[0] for o in tally.seen[model]) <= {200, 429}, tally.seen[model]
        assert stats[model]["requests"] == tally.ok(model), (model, stats[model], tally.seen[model])
        assert stats[model]["inflight"] == 0
    # Requests: burst + rate × time, within 1 % (+1); the limit did bind.
    allowed = REQUEST_BURST + RPM * elapsed / 60
    assert REQUEST_BURST <= tally.ok("qa") <= allowed * 1.01 + 1, (tally.ok("qa"), allowed)
    assert tally.refused("qa", "rate_limit_exceeded", "requests") > 0, tally.seen["qa"]
    # Concurrency at the upstream, for both limited models.
    for model in ("qa", "qb"):
        assert 1 <= stats[model]["max_inflight"] <= CONCURRENT, (model, stats[model])
    # Tokens really used (the provider's count): burst + rate × time + one completion reserve per slot.
    used = stats["qb"]["prompt_tokens"] + stats["qb"]["completion_tokens"]
    bound = TOKEN_BURST + TPM * elapsed / 60 + CONCURRENT * COMPLETION_RESERVE
    assert TOKEN_BURST / 2 <= used <= bound, (used, bound)
    assert tally.refused("qb", "rate_limit_exceeded", "tokens") > 0, tally.seen["qb"]
    # The budget: spent to within one request of it, never past it by more than one request's worst case.
    spent = (stats["qc"]["prompt_tokens"] * PRICE_IN + stats["qc"]["completion_tokens"] * PRICE_OUT) / 1e6
    worst = _worst_budget_request()
    assert BUDGET_USD - worst <= spent <= BUDGET_USD + worst, (spent, BUDGET_USD, worst)
    assert tally.refused("qc", "insufficient_quota") > 0, tally.seen["qc"]


def _stats(upstream_base: str) -> dict:
    with urllib.request.urlopen(f"{upstream_base}/_stats", timeout=5) as r:
        return orjson.loads(r.read())


def _run(tmp_path: Path, seconds: float, backend: str) -> None:
    upstream = start_upstream(module="tests.state.quota_upstream")
    base = f"http://127.0.0.1:{upstream.port}"
    redis = RedisServer(tmp_path / "redis").start() if backend == "redis" else None
    gws: list[Gateway] = []
    try:
        if redis is not None:
            state = {"backend": "redis", "url": redis.url, "timeout": 0.5}
            instances = 3
        else:
            state = {"backend": "local", "path": str(tmp_path / "state")}
            instances = 1
        cfg = _config(f"{base}/v1", state)
        gws = [start_gateway(cfg, tmp_path / f"gw{i}", workers=2) for i in range(instances)]
        tally, elapsed = _load(gws, seconds)
        stats = _stats(base)
        _check(tally, elapsed, stats)
        # Every instance restarted: the spend is kept (Redis, or the local state file), the budget still holds.
        for gw in gws:
            gw.stop()
        gws = [start_gateway(cfg, tmp_path / f"gw{i}", workers=2) for i in range(instances)]
        for i in range(6):
            assert _ask(gws[i % instances], BUDGET_KEY, "qc", False, BUDGET_MAX_TOKENS)[:2] == (
                429, "insufficient_quota")
        assert _stats(base)["qc"]["requests"] == stats["qc"]["requests"]
    finally:
        for gw in gws:
            gw.stop()
        if redis is not None:
            redis.stop()
        upstream.stop()


def test_three_instances_on_redis_hold_every_limit(tmp_path: Path) -> None:
    _run(tmp_path, 4.0, "redis")


def test_one_instance_on_the_local_backend_holds_every_limit(tmp_path: Path) -> None:
    _run(tmp_path, 4.0, "local")


@pytest.mark.slow
def test_three_instances_on_redis_hold_every_limit_for_20s(tmp_path: Path) -> None:
    _run(tmp_path, 20.0, "redis")


@pytest.mark.slow
def test_one_instance_on_the_local_backend_holds_every_limit_for_20s(tmp_path: Path) -> None:
    _run(tmp_path, 20.0, "local")
