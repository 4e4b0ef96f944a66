"""`bench/locustfile.py` works: a short headless Locust run against a real gateway (built-in mock model)
records TTFT and tokens/s entries and clean chat requests; a run that asks for an unknown model records
failures."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO_ROOT, Gateway, start_gateway

CONFIG = {
    "pack": {"name": "locust", "version": "1.0.0", "enabled": True},
    "providers": {"targets": [{"id": "mock", "provider": "mock", "model": "mock-1",
                               "mock": {"chunk_size": 4, "delay": 0}}]},
}
STREAM = "/v1/chat/completions (stream)"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    g = start_gateway(CONFIG, tmp_path_factory.mktemp("locust-gw"), workers=1)
    try:
        yield g
    finally:
        g.stop()


def run_locust(gw: Gateway, prefix: Path, seconds: int, *extra: str) -> tuple[int, dict[tuple[str, str], dict]]:
    """Run the locustfile headless; (exit code, stats rows keyed by (Type, Name))."""
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "bench" / "locustfile.py"), "--headless",
           "-u", "4", "-r", "4", "-t", f"{seconds}s", "--host", gw.base, "--csv", str(prefix), "--only-summary",
           "--stop-timeout", "2", *extra]
    proc = subprocess.run(cmd, cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=60)
    stats = Path(f"{prefix}_stats.csv")
    assert stats.exists(), f"no CSV written (rc={proc.returncode})\n{proc.stderr[-3000:]}"
    with stats.open(newline="") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    return proc.returncode, rows


def test_stream_run_reports_ttft_and_tokens_per_second(gw: Gateway, tmp_path: Path):
    rc, rows = run_locust(gw, tmp_path / "ok", 5, "--max-tokens", "20", "--non-stream-share", "0.2")
    assert rc == 0, rows
    chat = rows[("POST", STREAM)]
    assert int(chat["Request Count"]) > 0 and int(chat["Failure Count"]) == 0
    whole = rows[("POST", "/v1/chat/completions (non-stream)")]
    assert int(whole["Request Count"]) > 0 and int(whole["Failure Count"]) == 0
    for kind in ("TTFT", "tokens/s"):
        row = rows[(kind, "mock-1")]
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0
        assert float(row["Average Response Time"]) > 0
    # response_length of the tokens/s entries is the answer's tokens: max_tokens caps the mock at 20.
    tps = rows[("tokens/s", "mock-1")]
    assert float(tps["Average Content Size"]) == 20


def test_error_answers_are_failures(gw: Gateway, tmp_path: Path):
    rc, rows = run_locust(gw, tmp_path / "bad", 2, "--model", "no-such-model")
    assert rc != 0  # locust exits 1 when any request failed
    chat = rows[("POST", STREAM)]
    assert int(chat["Request Count"]) > 0
    assert int(chat["Failure Count"]) == int(chat["Request Count"])
    assert ("TTFT", "no-such-model") not in rows
    failures = (tmp_path / "bad_failures.csv").read_text()
    assert "HTTP 404" in failures
