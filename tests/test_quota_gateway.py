"""Quotas through real gateways (issue 16): limits exact across the workers of one instance (`backend: local`, no
server) and across instances (`backend: redis`, a real redis-server); refusals as OpenAI sends them, with the
SDK's retry logic; a budget never exceeded by more than one request's worst case, kept across restarts; Redis
killed mid-load (closed: 503 quota_unavailable in time; open: nothing fails)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import orjson
import pytest

from tests.state.redis_server import RedisServer
from tests.support.procs import Gateway, start_gateway

KEY = "fgw-quota-test-key"


def _config(state: dict, limits: list[dict] | None = None, budgets: list[dict] | None = None,
            mock: dict | None = None) -> dict:
    rl: dict = {"limits": limits or [], "budgets": budgets or [], "completion_reserve": 64}
    return {
        "pack": {"name": "quota"},
        "state": state,
        "policies": {"chain": ["rbac", "rate-limiter"]},
        "policy": {
            "rbac": {"keys": [{"name": "team", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "roles": ["u"]}],
                     "roles": {"u": {"models": ["*"]}}},
            "rate-limiter": rl,
        },
        "providers": {"targets": [{"id": "mock", "provider": "mock", "model": "mock-1",
                                   "pricing": {"input": 1000.0, "output": 2000.0},
                                   "mock": mock or {"chunks": 4}}]},
    }


def _ask(gw: Gateway, stream: bool = False, max_tokens: int = 16, timeout: float = 10.0
         ) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps({"model": "mock-1", "messages": [{"role": "user", "content": "hello"}],
                         "max_tokens": max_tokens, "stream": stream})
    req = urllib.request.Request(f"{gw.url}/chat/completions", body, {"Authorization": f"Bearer {KEY}",
                                                                      "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _burst(gws: list[Gateway], n: int, clients: int = 16) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return [s for s, _, _ in pool.map(lambda i: _ask(gws[i % len(gws)]), range(n))]


def test_local_backend_is_exact_across_workers_and_answers_like_openai(tmp_path: Path) -> None:
    state = {"backend": "local", "path": str(tmp_path / "state")}
    gw = start_gateway(_config(state, limits=[{"name": "per-key", "per": "key", "requests_per_minute": 6,
                                                "request_burst": 10, "tokens_per_minute": 100000}]),
                       tmp_path, workers=2)
    try:
        statuses = _burst([gw], 30)
        # 10 at once after idle, then one every 10 s: in a few seconds exactly the burst passes (+1 at most).
        assert 10 <= statuses.count(200) <= 11, statuses
        assert set(statuses) == {200, 429}
        status, headers, body = _ask(gw)
        assert status == 429
        err = orjson.loads(body)["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
        assert 1 <= int(headers["retry-after"]) <= 10
        for h in ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                  "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"):
            assert h in headers, h
        assert headers["x-ratelimit-limit-requests"] == "6" and headers["x-ratelimit-remaining-requests"] == "0"
        # The official SDK reads retry-after: with its retries off it raises RateLimitError at once.
        client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "hi"}])
        assert exc.value.response.headers["retry-after"]
    finally:
        gw.stop()


def test_the_sdk_retries_after_retry_after_and_gets_through(tmp_path: Path) -> None:
    state = {"backend": "local", "path": str(tmp_path / "state")}
    # One request a second, burst 1: a second request waits about a second.
    gw = start_gateway(_config(state, limits=[{"name": "per-key", "requests_per_minute": 60, "request_burst": 1}]),
                       tmp_path, workers=1)
    try:
        client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=3)
        client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "hi"}])
        t0 = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(model="mock-1",
                                                               messages=[{"role": "user", "content": "hi"}])
        waited = time.monotonic() - t0
        assert raw.http_response.status_code == 200
        assert raw.headers["x-ratelimit-limit-requests"] == "60"
        assert 0.5 <= waited < 10, waited  # it honoured retry-after instead of failing or hammering
    finally:
        gw.stop()


def test_a_budget_holds_under_concurrency_and_across_restarts(tmp_path: Path) -> None:
    state = {"backend": "local", "path": str(tmp_path / "state")}
    # $1000 / $2000 per million tokens: a request with max_tokens 16 costs at most ~(3 + 16) tokens ≈ $0.04.
    cfg = _config(state, budgets=[{"name": "tiny", "per": "key", "usd": 0.2, "period": "total"}])
    gw = start_gateway(cfg, tmp_path, workers=2)
    try:
        statuses = _burst([gw], 24, clients=12)
        ok = statuses.count(200)
        assert 1 <= ok < 24 and set(statuses) <= {200, 429}
        status, headers, body = _ask(gw)
        assert status == 429 and orjson.loads(body)["error"]["code"] == "insufficient_quota"
        assert headers.get("x-should-retry") == "false"
    finally:
        gw.stop()
    gw = start_gateway(cfg, tmp_path, workers=1)  # a restart keeps the spend (the local file)
    try:
        assert _ask(gw)[0] == 429
    finally:
        gw.stop()


def test_redis_limits_are_exact_across_three_instances(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    gws: list[Gateway] = []
    try:
        state = {"backend": "redis", "url": redis.url, "timeout": 0.5}
        cfg = _config(state, limits=[{"name": "per-key", "per": "key", "requests_per_minute": 60,
                                      "request_burst": 20, "concurrent": 4}],
                      mock={"chunks": 4, "delay": 0.02})
        gws = [start_gateway(cfg, tmp_path / f"gw{i}", workers=2) for i in range(3)]
        t0 = time.monotonic()
        statuses = _burst(gws, 90, clients=16)
        elapsed = time.monotonic() - t0
        allowed = 20 + 60 * elapsed / 60  # burst + rate × time
        ok = statuses.count(200)
        assert ok <= allowed * 1.01 + 1, (ok, allowed)
        assert ok >= 4 and set(statuses) <= {200, 429}
    finally:
        for gw in gws:
            gw.stop()
        redis.stop()


def _gap(gw: Gateway, n: int) -> list[tuple[int, dict[str, str], bytes, float]]:
    """`n` requests one after another, each with how long it took the client (s)."""
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        status, headers, body = _ask(gw)
        out.append((status, headers, body, time.monotonic() - t0))
    return out


def _durations_ms(gw: Gateway, request_ids: set[str]) -> list[float]:
    """The gateway's own duration (access log, ms) of the given requests: its time, not the client's scheduling.
    The access log is written after the answer: wait a moment for the last lines."""
    deadline = time.monotonic() + 5
    while True:
        found = {}
        for line in gw.stderr_text().splitlines():
            if line.startswith("{") and '"request_id"' in line:
                rec = orjson.loads(line)
                if rec.get("request_id") in request_ids:
                    found[rec["request_id"]] = rec["duration_ms"]
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            assert len(found) == len(request_ids), (len(found), len(request_ids))
            return list(found.values())
        time.sleep(0.05)


@pytest.mark.parametrize("fault", ["killed", "hung"])
@pytest.mark.parametrize("on_failure", ["closed", "open"])
def test_redis_failing_mid_load(tmp_path: Path, on_failure: str, fault: str) -> None:
    """Redis killed (connections refused) or hung (SIGSTOP: nothing answers) under load. closed: every request in
    the gap is a 503 quota_unavailable within `timeout` + 50 ms (none hangs, none is admitted uncounted), and
    service resumes within 1 s of Redis returning; open: no request fails."""
    redis = RedisServer(tmp_path / "redis").start()
    timeout = 0.05
    try:
        state = {"backend": "redis", "url": redis.url, "timeout": timeout, "on_failure": on_failure}
        gw = start_gateway(_config(state, limits=[{"name": "per-key", "requests_per_minute": 60000}]),
                           tmp_path, workers=1)
        try:
            assert [a[0] for a in _gap(gw, 5)] == [200] * 5
            redis.kill() if fault == "killed" else redis.pause()
            gap = _gap(gw, 20)
            if on_failure == "closed":
                assert [a[0] for a in gap] == [503] * 20
                for _, headers, body, _took in gap:
                    assert orjson.loads(body)["error"]["code"] == "quota_unavailable"
                    assert int(headers["retry-after"]) >= 1
                # The gateway's own time per request (its access log): the state call gives up after `timeout`.
                durations = _durations_ms(gw, {a[1]["x-request-id"] for a in gap})
                assert max(durations) <= (timeout + 0.05) * 1000, durations
                assert max(a[3] for a in gap) < timeout + 1.0  # and no client waited anywhere near a hang
            else:
                assert [a[0] for a in gap] == [200] * 20
            redis.start() if fault == "killed" else redis.resume()
            back = time.monotonic()
            while _ask(gw)[0] != 200:
                time.sleep(0.01)
            assert time.monotonic() - back < 1.0, "service did not resume within 1 s of Redis returning"
            assert [a[0] for a in _gap(gw, 5)] == [200] * 5
        finally:
            gw.stop()
    finally:
        redis.stop()


def _status(gw: Gateway, model: str) -> int:
    """The status of a keyless chat request for `model` (errors raise: these tests expect answers)."""
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(f"{gw.url}/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


class _Dead:
    """A target that accepts connections and closes them at once, counting them (every attempt is one)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


COOLDOWN = 2


def test_a_shared_breaker_counts_failures_across_instances(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    dead = _Dead()
    gws: list[Gateway] = []
    try:
        cfg = {
            "pack": {"name": "breaker"},
            "state": {"backend": "redis", "url": redis.url, "timeout": 0.5},
            "providers": {"targets": [
                {"id": "dead", "provider": "openai", "model": "gpt-x", "base_url": f"http://127.0.0.1:{dead.port}/v1",
                 "circuit_breaker": {"failures": 3, "cooldown": COOLDOWN, "shared": True}},
                {"id": "backup", "provider": "mock", "model": "mock-backup"}]},
            "routing": [{"model": "gpt-x", "targets": ["dead", "backup"], "retry": {"attempts": 1}}],
        }
        gws = [start_gateway(cfg, tmp_path / f"gw{i}", workers=2) for i in range(3)]

        def ask(i: int) -> int:
            return _status(gws[i % 3], "gpt-x")

        for i in range(12):
            assert ask(i) == 200  # the backup answers
        assert dead.accepted == 3, dead.accepted  # 3 in total, not 3 per worker (18)
        time.sleep(COOLDOWN + 0.3)
        # After the cooldown, 24 requests at once over the 6 workers: one half-open probe in total reaches the
        # dead target; it fails, the circuit opens again, and nothing more reaches it.
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            assert list(pool.map(ask, range(24))) == [200] * 24
        assert dead.accepted == 4, dead.accepted
        for i in range(6):
            assert ask(i) == 200
        assert dead.accepted == 4, dead.accepted
    finally:
        for gw in gws:
            gw.stop()
        dead.close()
        redis.stop()


def test_a_providers_retry_after_is_honoured_by_every_instance(tmp_path: Path) -> None:
    """A target's 429 with `retry-after: 1` seen by one worker keeps every worker of every instance off that
    target for that second (the backup answers), then the target is asked again."""
    from tests.support.procs import start_upstream

    redis = RedisServer(tmp_path / "redis").start()
    upstream = start_upstream()
    gws: list[Gateway] = []
    try:
        cfg = {
            "pack": {"name": "hint"},
            "state": {"backend": "redis", "url": redis.url, "timeout": 0.5},
            "providers": {"targets": [
                {"id": "busy", "provider": "openai", "model": "fault-429", "base_url": f"{upstream.url}",
                 "circuit_breaker": {"failures": 100, "cooldown": 30, "shared": True}},
                {"id": "backup", "provider": "mock", "model": "mock-backup"}]},
            "routing": [{"model": "fault-429", "targets": ["busy", "backup"], "retry": {"attempts": 1}}],
        }
        gws = [start_gateway(cfg, tmp_path / f"gw{i}", workers=2) for i in range(3)]

        def ask(i: int) -> int:
            return _status(gws[i % 3], "fault-429")

        upstream.reset()
        assert ask(0) == 200  # the 429 is met once, the backup answers
        assert upstream.count("/v1/chat/completions") == 1
        for i in range(1, 13):  # within the second, every instance and worker skips the target
            assert ask(i) == 200
        assert upstream.count("/v1/chat/completions") == 1
        time.sleep(1.3)
        assert ask(1) == 200
        assert upstream.count("/v1/chat/completions") == 2  # after it, the target is asked again
    finally:
        for gw in gws:
            gw.stop()
        upstream.stop()
        redis.stop()


def test_an_output_policy_leaves_a_whole_answers_tokens_counted_in_every_dialect(tmp_path: Path) -> None:
    """With an output policy the chain reads a non-streamed answer itself (its texts, its usage): a Messages or
    Responses answer names its tokens input/output, and those must reach the quota settlement as the chat names
    do, or its tokens are never spent (a budget that an output policy switched off)."""
    import subprocess
    import sys

    from tests.support.procs import REPO_ROOT

    state = {"backend": "local", "path": str(tmp_path / "state")}
    cfg = _config(state, budgets=[{"name": "big", "per": "key", "usd": 1000.0, "period": "total"}])
    cfg["policies"]["chain"] = ["rbac", "pii-detector", "rate-limiter"]
    cfg["policy"]["pii-detector"] = {"action": "redact"}
    gw = start_gateway(cfg, tmp_path, workers=1)
    spent = 0.0
    try:
        for path, body in (("/messages", {"model": "mock-1", "max_tokens": 16,
                                          "messages": [{"role": "user", "content": "hello"}]}),
                           ("/responses", {"model": "mock-1", "input": "hello"}),
                           ("/chat/completions", {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]})):
            req = urllib.request.Request(f"{gw.url}{path}", orjson.dumps(body),
                                         {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                usage = orjson.loads(r.read())["usage"]
            tin = usage.get("prompt_tokens", usage.get("input_tokens"))
            tout = usage.get("completion_tokens", usage.get("output_tokens"))
            assert tin > 0 and tout > 0, (path, usage)
            spent += (tin * 1000.0 + tout * 2000.0) / 1e6
    finally:
        gw.stop()
    cfg_path = next(tmp_path.glob("*.yaml"))
    r = subprocess.run([sys.executable, "-m", "fastgw", "usage", "--config", str(cfg_path), "--json",
                        "--principal", "team"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    budget = next(row for row in orjson.loads(r.stdout)["rows"] if row["kind"] == "budget")
    assert abs(budget["spent_usd"] - spent) < 1e-9, (budget, spent)
