"""`fastgw usage` reads what the rate-limiter keeps in the shared state: buckets, requests in flight, spend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson

from fastgw.config import load_config
from fastgw.policy.ratelimit import Pricing, RateLimitPolicy, Reservation
from fastgw.state import open_backend
from tests.support.procs import REPO_ROOT


def _config(tmp: Path) -> Path:
    p = tmp / "c.yaml"
    p.write_text(f"""pack: {{name: t}}
state: {{backend: local, path: {tmp / 'state'}}}
policies: {{chain: [rate-limiter]}}
policy:
  rate-limiter:
    limits: [{{name: per-key, per: key, requests_per_minute: 6, tokens_per_minute: 100000, concurrent: 4}}]
    budgets: [{{name: monthly, per: key, usd: 5.0, period: month}}]
providers:
  targets: [{{id: m, provider: mock, model: mock-1}}]
""")
    return p


def test_usage_prints_buckets_slots_and_spend(tmp_path: Path) -> None:
    cfg, _ = load_config(_config(tmp_path), resolve_secrets=False)
    assert cfg.policy.rate_limiter is not None

    async def admit_two_settle_one() -> None:
        backend = open_backend(cfg.state)
        rl = RateLimitPolicy(cfg.policy.rate_limiter, backend)
        first = await rl.admit("team-a", (), "mock-1", Pricing(1.0, 2.0), 1000, 500)
        second = await rl.admit("team-a", (), "mock-1", Pricing(1.0, 2.0), 1000, 500)
        assert isinstance(first, Reservation) and isinstance(second, Reservation)
        assert await rl.reconcile(first, 1000, 200)  # $0.001 + $0.0004
        await backend.close()

    asyncio.run(admit_two_settle_one())
    r = subprocess.run([sys.executable, "-m", "fastgw", "usage", "--config", str(tmp_path / "c.yaml"), "--json",
                        "--principal", "team-a"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = orjson.loads(r.stdout)["rows"]
    by_kind = {row["kind"]: row for row in rows}
    # 6 a minute: a request's slot comes back after 10 s, longer than the CLI takes to start on a slow box (at 60 a
    # minute one came back within the second it took, and the CI read 59).
    assert by_kind["requests"]["remaining"] == 4 and by_kind["requests"]["subject"] == ["team-a"]
    assert by_kind["concurrent"]["in_flight"] == 1
    assert abs(by_kind["budget"]["spent_usd"] - 0.0014) < 1e-9
    assert by_kind["budget"]["reserved_usd"] > 0  # the second request's worst case
    text = subprocess.run([sys.executable, "-m", "fastgw", "usage", "--config", str(tmp_path / "c.yaml")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert "1/4 in flight" in text.stdout and "monthly" in text.stdout
    other = subprocess.run([sys.executable, "-m", "fastgw", "usage", "--config", str(tmp_path / "c.yaml"), "--json",
                            "--principal", "nobody"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert orjson.loads(other.stdout)["rows"] == []
