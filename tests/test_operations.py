"""Operating the gateway like nginx: sd_notify, socket activation, reload under load, drain with the shutdown
envelope, a hung worker replaced, one worker more or less."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import orjson
import pytest
import yaml

from tests.support.procs import REPO_ROOT, free_port


def _mock_cfg(text: str = "first configuration", delay: float = 0.01, **server) -> dict:
    return {"pack": {"name": "t"}, "server": server, "providers": {"targets": [
        {"id": "mock", "provider": "mock", "model": "mock-1", "mock": {"text": text, "chunk_size": 5,
                                                                        "delay": delay}}]}}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sorted(int(p) for p in out)


def _wait(pred, timeout: float = 15.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def _ask(url: str, stream: bool) -> str:
    c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "hi"}]
    if stream:
        return "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(model="mock-1", messages=msgs, stream=True) if ch.choices)
    return c.chat.completions.create(model="mock-1", messages=msgs).choices[0].message.content


# ---- sd_notify ------------------------------------------------------------------------------------

def test_sd_notify_ready_reloading_stopping_watchdog_in_order(gateway_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    gw = gateway_factory.start(_mock_cfg(), workers=1, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    msgs: list[str] = []

    def until(word: str) -> None:
        while True:
            m = sock.recv(4096).decode()
            msgs.append(m)
            if word in m:
                return

    until("READY=1")
    until("WATCHDOG=1")
    gw.proc.send_signal(signal.SIGHUP)
    until("RELOADING=1")
    assert "MONOTONIC_USEC=" in msgs[-1]
    until("READY=1")
    gw.proc.send_signal(signal.SIGTERM)
    until("STOPPING=1")
    assert gw.proc.wait(timeout=20) == 0
    kinds = [k for m in msgs for k in ("READY=1", "RELOADING=1", "STOPPING=1") if k in m]
    assert kinds == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert any("STATUS=" in m and "workers serving" in m and "active streams" in m for m in msgs)


# ---- socket activation -------------------------------------------------------------------------------

def _socket_activate() -> str:
    tool = shutil.which("systemd-socket-activate")
    if tool is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "systemd"], capture_output=True, timeout=300)
        tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is missing and could not be installed (Debian package systemd)")
    return tool


def test_socket_activation_with_systemd_socket_activate(tmp_path):
    tool = _socket_activate()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_mock_cfg()))
    port = free_port()
    proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "fastgw", "serve",
                             "--config", str(cfg), "--workers", "2", "--bind", "127.0.0.1:1"],
                            cwd=REPO_ROOT, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # --bind points nowhere useful: the answer can only come through the socket systemd passed.
        assert _wait(lambda: _try_health(port), 20), "no answer on the activated socket"
        assert "Echo" not in _ask(f"http://127.0.0.1:{port}/v1", False)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert b"from systemd" in proc.stderr.read()


def _try_health(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# ---- reload under load ----------------------------------------------------------------------------------

def test_reload_under_load_fails_no_request_and_applies_the_new_config(gateway_factory):
    gw = gateway_factory.start(_mock_cfg("first configuration", graceful_timeout=3.0), workers=2)
    results: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load(stream: bool) -> None:
        while not stop.is_set():
            try:
                results.append(_ask(gw.url, stream))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    cfg_path = Path(gw.config_path)
    try:
        assert _wait(lambda: len(results) >= 6), "no load before the first reload"
        for text, outcome in [("second configuration", "reloaded: generation 1 serving"), (None, "reload refused"),
                              ("third configuration", "reloaded: generation 2 serving")]:
            if text is None:
                cfg_path.write_text("pack: {name: broken\n")  # invalid: the old workers keep serving
            else:
                cfg_path.write_text(yaml.safe_dump(_mock_cfg(text, graceful_timeout=3.0)))
            gw.proc.send_signal(signal.SIGHUP)
            assert _wait(lambda: outcome in gw.stderr_text()), outcome
            # the load goes on through the new generation while the previous one drains
            served = len(results)
            assert _wait(lambda: len(results) >= served + 6), "no load after the reload"
            if text is not None:
                assert _wait(lambda: text in results[served:]), text
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert len(results) > 20
    assert _ask(gw.url, False) == "third configuration"
    assert any(r == "second configuration" for r in results)
    assert "reload refused" in gw.stderr_text()
    # Retired workers keep idle keep-alive connections until their next request (answered with
    # Connection: close) or the drain budget: then they are gone.
    assert _wait(lambda: len(_children(gw.proc.pid)) == 2, 15)


# ---- drain -----------------------------------------------------------------------------------------------

def test_sigterm_ends_streams_still_running_at_the_budget_with_server_shutdown(gateway_factory):
    cfg = _mock_cfg("x" * 2000, graceful_timeout=1.0)
    cfg["providers"]["targets"][0]["mock"].update({"chunk_size": 4, "delay": 0.02})  # ~10 s of stream
    gw = gateway_factory.start(cfg, workers=1)
    s = socket.create_connection((gw.host, gw.port), timeout=20)
    body = orjson.dumps({"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    data = s.recv(65536)
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    while not data.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    assert b'"code":"server_shutdown"' in data and data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert 0.8 < time.monotonic() - t0 < 6
    assert gw.proc.wait(timeout=20) == 0


# ---- hung worker, worker count ---------------------------------------------------------------------------

def test_a_worker_with_a_blocked_loop_is_replaced(gateway_factory):
    # 2 s, not 1: on a loaded 2-core CI box a healthy, idle worker was once starved of the CPU for over a second
    # and (rightly, for that timeout) replaced too, mid-request.
    gw = gateway_factory.start(_mock_cfg(worker_timeout=2.0), workers=2, env={"FASTGW_TEST_HOOKS": "1"})
    # Every worker serves (and so has its handlers) once the master says ready.
    assert _wait(lambda: "fastgw ready" in gw.stderr_text() and len(_children(gw.proc.pid)) == 2)
    victim = _children(gw.proc.pid)[0]
    os.kill(victim, signal.SIGUSR2)  # test hook: the worker's event loop blocks
    assert _wait(lambda: victim not in _children(gw.proc.pid) and len(_children(gw.proc.pid)) == 2, 15)
    for _ in range(10):
        assert _ask(gw.url, False) == "first configuration"
    assert "event loop is blocked" in gw.stderr_text()


def test_ttin_ttou_add_and_remove_a_worker(gateway_factory):
    gw = gateway_factory.start(_mock_cfg(), workers=2)
    assert _wait(lambda: len(_children(gw.proc.pid)) == 2)
    gw.proc.send_signal(signal.SIGTTIN)
    assert _wait(lambda: len(_children(gw.proc.pid)) == 3)
    for n in (2, 1):  # one at a time: identical pending signals coalesce
        gw.proc.send_signal(signal.SIGTTOU)
        assert _wait(lambda: len(_children(gw.proc.pid)) == n)
    assert _ask(gw.url, True) == "first configuration"


# ---- metrics and access log ------------------------------------------------------------------------------

def _scrape(gw) -> dict[str, float]:
    import urllib.request
    text = urllib.request.urlopen(gw.base + "/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def _sum(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix))


def test_metrics_are_summed_across_workers_and_survive_a_restart(gateway_factory):
    gw = gateway_factory.start(_mock_cfg(), workers=2)
    assert _wait(lambda: len(_children(gw.proc.pid)) == 2)
    for i in range(20):
        _ask(gw.url, stream=bool(i % 2))
    # Workers write their counts at least once per METRICS_FLUSH_INTERVAL: a scrape sees them all soon.
    assert _wait(lambda: _sum(_scrape(gw), "fastgw_requests_total{") == 20, 5)
    m = _scrape(gw)
    assert _sum(m, "fastgw_requests_total{") == 20
    assert _sum(m, 'fastgw_tokens_total{') > 0
    assert _sum(m, "fastgw_stream_duration_seconds_count") == 10
    assert _sum(m, "fastgw_inter_event_seconds_count") > 0
    os.kill(_children(gw.proc.pid)[0], signal.SIGKILL)
    assert _wait(lambda: len(_children(gw.proc.pid)) == 2)
    _ask(gw.url, stream=False)
    assert _wait(lambda: _sum(_scrape(gw), "fastgw_requests_total{") == 21, 5)
    m = _scrape(gw)
    assert _sum(m, "fastgw_requests_total{") == 21  # the dead worker's counts are kept
    assert _sum(m, "fastgw_worker_restarts_total") == 1
    assert _sum(m, "fastgw_inflight_requests") == 0


def _access_lines(gw) -> list[dict]:
    text = gw.stderr_text()
    whole = text[: text.rfind("\n") + 1]  # a line still being written is not read yet
    return [orjson.loads(ln) for ln in whole.splitlines() if ln.startswith("{")]


def test_access_log_is_one_json_line_per_request(gateway_factory):
    gw = gateway_factory.start(_mock_cfg(), workers=1)
    _ask(gw.url, stream=True)
    _ask(gw.url, stream=False)
    # A worker writes its access lines once per loop iteration, after the response went out: the client can
    # see the answer before its line is in the file.
    assert _wait(lambda: len(_access_lines(gw)) >= 2, 10)
    lines = _access_lines(gw)
    assert len(lines) == 2
    assert {ln["route"] for ln in lines} == {"/v1/chat/completions"} and all(ln["status"] == 200 for ln in lines)
    assert all(ln["request_id"].startswith("req_") and "duration_ms" in ln for ln in lines)
    assert all(isinstance(ln["ttft_ms"], float) and 0 <= ln["ttft_ms"] <= ln["duration_ms"] for ln in lines)


def test_access_lines_of_requests_answered_just_before_sigterm_are_all_written(gateway_factory, tmp_path):
    """Lines wait up to ACCESS_LOG_FLUSH_DELAY for their batch; a worker told to stop writes them before it exits."""
    import http.client

    path = tmp_path / "access.log"
    # No mock delay: the 100 answers come back to back (with it, 4 s of waiting).
    gw = gateway_factory.start(_mock_cfg(delay=0.0, access_log={"path": str(path)}), workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    body = b'{"model":"mock-1","messages":[{"role":"user","content":"hi"}]}'
    ids = [f"last-{i}" for i in range(100)]
    for rid in ids:  # keep-alive, back to back: the last ones are answered moments before the signal
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json", "x-request-id": rid})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    conn.close()
    lines = [orjson.loads(ln) for ln in path.read_text().splitlines()]
    assert [ln["request_id"] for ln in lines] == ids  # every one, whole, in order


def test_metrics_token(gateway_factory):
    import urllib.error
    import urllib.request
    cfg = _mock_cfg(metrics_token_ref={"env": "FASTGW_METRICS_TOKEN"})
    gw = gateway_factory.start(cfg, env={"FASTGW_METRICS_TOKEN": "scrape-secret"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(gw.base + "/metrics", timeout=5)
    assert e.value.code == 401
    req = urllib.request.Request(gw.base + "/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert b"fastgw_inflight_requests" in urllib.request.urlopen(req, timeout=5).read()
