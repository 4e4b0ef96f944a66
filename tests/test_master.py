"""Process model: N workers, replacement of a killed worker, graceful drain on SIGTERM, boot failures, CLI errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml

from tests.support.procs import REPO_ROOT


def _children(pid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.add(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _wait(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll `pred` until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def _get(gw, path: str) -> int:
    s = socket.create_connection((gw.host, gw.port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return int(data.split(b" ", 2)[1])


def _mock_config(**mock) -> dict:
    return {"pack": {"name": "t", "version": "1.0.0", "enabled": True},
            "providers": {"targets": [{"id": "mock", "provider": "mock", "model": "mock-1", "mock": mock}]}}


def test_workers_start_with_titles_and_a_killed_worker_is_replaced(gateway_factory):
    gw = gateway_factory.start(_mock_config(), workers=3)
    # /readyz answers as soon as one worker serves: wait for all three to have set their titles.
    _wait(lambda: len(kids := _children(gw.proc.pid)) == 3 and all("fastgw: worker" in _cmdline(k) for k in kids))
    kids = _children(gw.proc.pid)
    assert len(kids) == 3
    assert "fastgw: master" in _cmdline(gw.proc.pid)
    assert sorted(_cmdline(k).strip() for k in kids) == [f"fastgw: worker {i}" for i in (1, 2, 3)]
    victim = sorted(kids)[0]
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: victim not in (now := _children(gw.proc.pid)) and len(now) == 3)
    now = _children(gw.proc.pid)
    assert victim not in now and len(now) == 3
    for _ in range(20):  # every worker (old and new) answers
        assert _get(gw, "/v1/models") == 200
    assert "replacing it" in gw.stderr_text()


def test_sigterm_during_a_stream_lets_it_finish_then_exits_zero(gateway_factory):
    gw = gateway_factory.start(_mock_config(chunks=30, delay=0.05), workers=2, extra_args=["--log-level", "debug"])
    s = socket.create_connection((gw.host, gw.port), timeout=10)
    body = orjson.dumps({"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    gw.proc.send_signal(signal.SIGTERM)
    data = first
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"0\r\n\r\n"):
            break
    assert b"data: [DONE]" in data
    assert data.count(b"chat.completion.chunk") == 30 + 2
    assert gw.proc.wait(timeout=15) == 0
    # the drained response told the client the connection would not be reused
    assert b"connection: close" in first.lower() or b"connection: keep-alive" in first.lower()


def test_sigquit_during_a_drain_stops_at_once(gateway_factory):
    """SIGQUIT is the immediate stop even while a SIGTERM drain waits for a long stream (30 s budget here)."""
    cfg = _mock_config(chunks=1000, delay=0.05)
    cfg["server"] = {"graceful_timeout": 30.0}
    gw = gateway_factory.start(cfg, workers=1)
    s = socket.create_connection((gw.host, gw.port), timeout=10)
    body = orjson.dumps({"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    gw.proc.send_signal(signal.SIGTERM)
    assert _wait(lambda: "stopping: draining" in gw.stderr_text()), "the master never started the drain"
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGQUIT)
    assert gw.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 3
    assert "SIGQUIT while draining" in gw.stderr_text()


def test_idle_keepalive_connections_do_not_hold_up_shutdown(gateway_factory):
    gw = gateway_factory.start(_mock_config(), workers=1)
    s = socket.create_connection((gw.host, gw.port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b'{"status":"ok"}'):
        data += s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    assert s.recv(65536) == b""


def _run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("OPENAI_API_KEY", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fastgw", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=30, env=e)


def test_missing_secret_env_is_a_clear_startup_error(tmp_path: Path):
    cfg = {"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "openai", "provider": "openai", "model": "gpt-4o-mini", "base_url": "https://api.openai.com/v1",
         "secret_key_ref": {"env": "FASTGW_NO_SUCH_VAR"}}]}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = _run_cli("serve", "--config", str(p), "--bind", "127.0.0.1:0", "--workers", "1")
    assert r.returncode == 1
    assert "FASTGW_NO_SUCH_VAR" in r.stderr and str(p) in r.stderr
    assert "Traceback" not in r.stderr


def test_check_prints_effective_config_and_names_errors(tmp_path: Path):
    r = _run_cli("check", "--config", str(REPO_ROOT / "examples/local.yaml"))
    assert r.returncode == 0
    eff = yaml.safe_load(r.stdout)
    assert eff["server"]["header_timeout"] == 10.0 and eff["server"]["max_body_bytes"] == 16 * 1024 * 1024
    bad = tmp_path / "bad.yaml"
    bad.write_text("pack: {name: x}\nserver:\n  bind: ['127.0.0.1:1']\n  wrokers: 2\n"
                   "providers:\n  targets:\n    - {id: m, provider: mock, model: m}\n")
    r = _run_cli("check", "--config", str(bad))
    assert r.returncode == 1
    assert f"{bad}:4" in r.stderr and "$.server.wrokers" in r.stderr and "unknown key" in r.stderr
    bad.write_text("pack: {name: x}\nserver:\n  workers: many\n"
                   "providers:\n  targets:\n    - {id: m, provider: mock, model: m}\n")
    r = _run_cli("check", "--config", str(bad))
    assert r.returncode == 1 and f"{bad}:3" in r.stderr and "$.server.workers" in r.stderr and "int" in r.stderr
    r = _run_cli("check", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "cannot read config" in r.stderr


def test_bind_in_use_is_a_clear_error(tmp_path: Path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_mock_config()))
    r = _run_cli("serve", "--config", str(p), "--bind", f"127.0.0.1:{port}", "--workers", "1")
    s.close()
    assert r.returncode == 1 and "cannot bind" in r.stderr and "Traceback" not in r.stderr


def test_worker_that_cannot_boot_stops_the_master(tmp_path: Path):
    """A boot failure halts the master with the reason instead of a restart loop."""
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_mock_config()))
    # Make every worker fail while booting (monkeypatched in this interpreter; fork carries it to the workers).
    script = ("import sys, fastgw.worker as w\n"
              "async def boom(*a, **k):\n    raise RuntimeError('cannot allocate scan scratch')\n"
              "w._serve = boom\n"
              "from fastgw.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script, "serve", "--config", str(p), "--bind", "127.0.0.1:0",
                        "--workers", "2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "cannot allocate scan scratch" in r.stderr
    assert time.monotonic() - t0 < 15


def test_unix_socket_bind(gateway_factory, tmp_path: Path):
    path = tmp_path / "gw.sock"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_mock_config()))
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "serve", "--config", str(p), "--bind",
                             f"unix:{path}", "--workers", "1"], cwd=REPO_ROOT, stderr=subprocess.PIPE)
    data = b""

    def healthz() -> bool:
        nonlocal data
        try:
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(5)
                c.connect(str(path))
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                data = c.recv(65536)
        except OSError:
            return False
        return bool(data)

    try:
        _wait(healthz, 15)
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert not path.exists()


def test_workers_get_the_hard_open_file_limit(tmp_path: Path):
    """Two sockets per stream: a soft limit of 1024 is raised to the hard one so a worker is not capped near 500."""
    import resource
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_mock_config()))

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "serve", "--config", str(p), "--bind", "127.0.0.1:0",
                             "--workers", "1"], cwd=REPO_ROOT, stderr=subprocess.DEVNULL, preexec_fn=low_soft_limit)
    try:
        _wait(lambda: bool(_children(proc.pid)), 15)
        (worker,) = _children(proc.pid)
        with open(f"/proc/{worker}/limits") as f:
            line = next(ln for ln in f if ln.startswith("Max open files"))
        expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
        assert int(line.split()[3]) == expected
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
