"""Start and stop the processes end-to-end tests talk to: the mock upstream and the gateway.

Used by `tests/conftest.py`; nothing here imports fastgw (the gateway is started as
`python -m fastgw serve`, the way an operator starts it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import yaml

from bench.ports import ephemeral_ports, free_port

__all__ = ["ephemeral_ports", "free_port"]  # (the tests take them from here)

REPO_ROOT = Path(__file__).resolve().parents[2]

UPSTREAM_START_TIMEOUT = 15.0
GATEWAY_READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

FAULT_MODELS = ("fault-close-midstream", "fault-500", "fault-429", "fault-slow", "fault-hang")




def _stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL; finally clear the process group it leads.

    Processes are started with `start_new_session=True`, so the group id is the pid and
    the group holds only what this process forked (the gateway's workers).
    """
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.wait(timeout=5)
    _killpg(proc.pid)  # workers left behind by a master that did not reap them


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------- upstream


class Upstream:
    """The mock OpenAI upstream (`tests/support/upstream.py`) in its own process."""

    def __init__(self, proc: subprocess.Popen, port: int, host: str = "127.0.0.1") -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.base = f"http://{host}:{port}"
        self.url = f"{self.base}/v1"

    def _get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def last(self, path: str) -> dict | None:
        """`{"headers": {...}, "body": ...}` of the last request on `path` (e.g. "/v1/embeddings")."""
        status, data = self._get("/_last?" + urllib.parse.urlencode({"path": path}))
        return data if status == 200 else None

    def count(self, path: str) -> int:
        return self._get("/_count?" + urllib.parse.urlencode({"path": path}))[1]["count"]

    def stats(self) -> dict:
        """`{"connections": N, "requests": M}` over `/v1/` requests since start or `reset()`."""
        return self._get("/_stats")[1]

    def reset(self) -> None:
        req = urllib.request.Request(self.base + "/_reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def stop(self) -> None:
        _stop_process(self.proc, timeout=5)


def start_upstream(host: str = "127.0.0.1", port: int = 0, module: str = "tests.support.upstream") -> Upstream:
    """Start a mock server module (the OpenAI one by default) as its own process and wait for its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--host", host, "--port", str(port)],
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=None,  # shown by pytest on failure
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + UPSTREAM_START_TIMEOUT
    assert proc.stdout is not None
    line = ""
    # readline blocks; the server prints its one line promptly or exits.
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING "):
            return Upstream(proc, int(line.split()[1]), host)
        if not line and proc.poll() is not None:
            break
    _stop_process(proc, timeout=2)
    raise RuntimeError(f"mock upstream did not start (last line {line!r}, rc={proc.returncode})")


# ---------------------------------------------------------------- gateway


def gateway_config(upstream_url: str, **server_overrides: Any) -> dict:
    """The standard test config: OpenAI targets on the mock upstream, one per fault knob, and `mock-1`."""
    targets: list[dict] = [
        {
            "id": "up",
            "provider": "openai",
            "model": "gpt-test",
            "aliases": ["gpt-test-alias"],
            "base_url": upstream_url,
        },
        {"id": "embed", "provider": "openai", "model": "text-embedding-test", "base_url": upstream_url},
        {"id": "instruct", "provider": "openai", "model": "instruct-test", "base_url": upstream_url},
    ]
    # Each fault model is its own target: an alias would be rewritten to the target's model.
    targets += [{"id": m, "provider": "openai", "model": m, "base_url": upstream_url} for m in FAULT_MODELS]
    targets.append({"id": "mock", "provider": "mock", "model": "mock-1"})
    return {
        "pack": {"name": "test", "version": "1.0.0", "enabled": True},
        "server": dict(server_overrides),
        "providers": {"targets": targets},
    }


class Gateway:
    """A running `fastgw serve` process."""

    def __init__(
        self, proc: subprocess.Popen, host: str, port: int, config_path: Path, stderr_path: Path
    ) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.base = f"http://{host}:{port}"
        self.url = f"{self.base}/v1"
        self.config_path = config_path
        self.stderr_path = stderr_path

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        _stop_process(self.proc, timeout=timeout)
        return self.proc.returncode


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def start_gateway(
    config: dict,
    tmp_dir: Path,
    workers: int = 1,
    extra_args: Iterable[str] = (),
    env: dict | None = None,
    ready_timeout: float = GATEWAY_READY_TIMEOUT,
) -> Gateway:
    """Write `config` as YAML in `tmp_dir`, start the gateway on a free port, wait for /readyz 200.

    The port was free a moment before the gateway binds it; a process started meanwhile (by a test running beside
    this one) may take it. Then our gateway exits (address in use) while /readyz may answer 200 from the other
    process: so ready means our own master said so (its "fastgw ready" line), and a taken port is tried anew."""
    for attempt in range(PORT_TRIES):
        try:
            return _start_gateway_once(config, Path(tmp_dir), workers, extra_args, env, ready_timeout)
        except _PortTaken:
            if attempt == PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable")


#: Ports tried by `start_gateway` when another process took the free one first.
PORT_TRIES = 5


class _PortTaken(RuntimeError):
    pass


def _start_gateway_once(config: dict, tmp_dir: Path, workers: int, extra_args: Iterable[str], env: dict | None,
                        ready_timeout: float) -> Gateway:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1"
    port = free_port(host)
    config_path = tmp_dir / f"fastgw-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    stderr_path = tmp_dir / f"fastgw-{port}.stderr"
    cmd = [
        sys.executable, "-m", "fastgw", "serve",
        "--config", str(config_path),
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        *extra_args,
    ]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    gw = Gateway(proc, host, port, config_path, stderr_path)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            out = gw.stderr_text()
            if "Address already in use" in out:
                raise _PortTaken(port)
            raise RuntimeError(
                f"gateway exited with {proc.returncode} before it was ready\n"
                f"command: {' '.join(cmd)}\n--- output ---\n{out}"
            )
        if "fastgw ready" in gw.stderr_text() and _http_status(f"{gw.base}/readyz") == 200:
            return gw
        if time.monotonic() > deadline:
            gw.stop(timeout=5)
            raise RuntimeError(
                f"gateway not ready on {gw.base}/readyz after {ready_timeout:.0f}s\n"
                f"command: {' '.join(cmd)}\n--- output ---\n{gw.stderr_text()}"
            )
        time.sleep(0.05)
