"""Exactness across processes: several "workers" (separate processes, each with its own connection) admit at once
against one Redis, and against one local state table. Nothing is reconciled, so the totals must be exact: a budget
admits floor(limit / cost), a bucket its burst, a concurrency set its limit — never one more."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.state import hammer
from tests.state.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4


def _hammer(kind: str, where: str, prefix: str) -> dict[str, int]:
    start_at = time.time() + 1.5  # every process imported and connected before the first admission
    procs = [subprocess.Popen([sys.executable, "-m", "tests.state.hammer", kind, where, prefix, "120", "16",
                               str(start_at)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(PROCESSES)]
    totals = {"budget": 0, "requests": 0, "slots": 0, "errors": 0}
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        for k, v in json.loads(out.strip().splitlines()[-1]).items():
            totals[k] += v
    return totals


def _check(totals: dict[str, int]) -> None:
    assert totals == {"budget": hammer.BUDGET // hammer.COST, "requests": hammer.BURST, "slots": hammer.SLOTS,
                      "errors": 0}


def test_exact_across_processes_on_one_redis(redis_server: RedisServer) -> None:
    _check(_hammer("redis", redis_server.url, "mp"))


def test_exact_across_processes_on_one_state_table(tmp_path: Path) -> None:
    _check(_hammer("local", str(tmp_path / "state"), "mp"))


@pytest.mark.slow
def test_exact_across_processes_many_rounds(redis_server: RedisServer, tmp_path: Path) -> None:
    for i in range(5):
        _check(_hammer("redis", redis_server.url, f"mp{i}"))
        _check(_hammer("local", str(tmp_path / f"state{i}"), "mp"))
