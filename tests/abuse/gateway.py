"""Helpers for the connection-level abuse tests (`test_conn_*.py`): a gateway with rbac and the built-in mock model,
its worker's pid and RSS, raw HTTP over sockets, a timed /healthz, a well-behaved stream read to [DONE], and the
gateway's access lines. Imports nothing from fastgw: the gateway runs as `python -m fastgw serve`, as in production.
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import orjson

from tests.support.procs import REPO_ROOT, Gateway, free_port, _stop_process

KEY = "fgw-abuse-test-key"
KEY_SHA = hashlib.sha256(KEY.encode()).hexdigest()
OTHER_KEY = "fgw-abuse-models-only"


def config(rbac: bool = True, audit_dir: Path | None = None, pii: bool = False, **server: object) -> dict:
    """A gateway on the built-in mock model (a stream of `chunks` events) with rbac on by default."""
    cfg: dict = {
        "pack": {"name": "abuse"},
        "server": dict(server),
        "providers": {"targets": [
            {"id": "mock", "provider": "mock", "model": "mock-1"},
            {"id": "slow", "provider": "mock", "model": "mock-slow", "mock": {"chunks": 40, "delay": 0.05}},
            {"id": "long", "provider": "mock", "model": "mock-long", "mock": {"chunks": 20000, "chunk_size": 64}},
        ]},
    }
    chain: list[str] = []
    policy: dict = {}
    if rbac:
        chain.append("rbac")
        policy["rbac"] = {
            "keys": [{"name": "abuser", "sha256": KEY_SHA, "roles": ["user"]},
                     {"name": "models-only", "sha256": hashlib.sha256(OTHER_KEY.encode()).hexdigest(),
                      "roles": ["lister"]}],
            "roles": {"user": {"models": ["*"], "endpoints": ["*"]},
                      "lister": {"models": ["*"], "endpoints": ["/v1/models"]}}}
    if pii:
        chain.append("pii-detector")
        policy["pii-detector"] = {"action": "redact"}
    if audit_dir is not None:
        chain.append("audit-logger")
        policy["audit-logger"] = {"path": str(audit_dir)}
    if chain:
        cfg["policies"] = {"chain": chain}
        cfg["policy"] = policy
    return cfg


def start(factory, cfg: dict, nofile: int | None = None, workers: int = 1) -> Gateway:  # noqa: ANN001
    """Start a gateway through the shared factory; `nofile` starts it under that open-file limit instead."""
    if nofile is None:
        return factory.start(cfg, workers=workers)
    import yaml

    tmp = Path(factory.tmp_dir)
    port = free_port()
    path = tmp / f"fastgw-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    err_path = tmp / f"fastgw-{port}.stderr"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fastgw", "serve", "--config", str(path), "--bind",
                                 f"127.0.0.1:{port}", "--workers", str(workers)], cwd=str(REPO_ROOT),
                                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=limit)
    gw = Gateway(proc, "127.0.0.1", port, path, err_path)
    factory.started.append(gw)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(gw.stderr_text())
        try:
            if request(gw, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=1)[0] == 200:
                return gw
        except OSError:
            pass
        time.sleep(0.05)
    _stop_process(proc, 5)
    raise RuntimeError("gateway not ready\n" + gw.stderr_text())


def worker_pid(gw: Gateway) -> int:
    out = subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True).stdout.split()
    return int(out[0])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def connect(gw: Gateway, rcvbuf: int | None = None, timeout: float = 5.0) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((gw.host, gw.port))
    return s


_LEFTOVER: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(s: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length response (status, lower-cased headers, body); bytes past it wait for the next call."""
    s.settimeout(timeout)
    buf = _LEFTOVER.pop(s, b"")
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    if len(rest) > length:
        _LEFTOVER[s] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def request(gw: Gateway, raw: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    with connect(gw, timeout=timeout) as s:
        s.sendall(raw)
        return read_response(s, timeout)


def closed_soon(s: socket.socket, timeout: float = 5.0) -> bool:
    """The server closed (EOF or reset) within `timeout`; what it still sends is read and dropped."""
    s.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def healthz_ms(gw: Gateway) -> float:
    """Milliseconds for GET /healthz on a fresh connection (the same worker when there is one)."""
    t0 = time.perf_counter()
    status, _, _ = request(gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    return (time.perf_counter() - t0) * 1000


def chat_body(model: str = "mock-slow", stream: bool = True) -> bytes:
    return orjson.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


def chat_request(body: bytes, key: str | None = KEY, extra: bytes = b"") -> bytes:
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


class Stream:
    """A well-behaved streaming client: sends one chat request, then reads until the chunked terminator."""

    def __init__(self, gw: Gateway, model: str = "mock-slow") -> None:
        self.sock = connect(gw, timeout=20)
        self.sock.sendall(chat_request(chat_body(model)))
        self.data = bytearray()

    def pump(self) -> None:
        """Read what has arrived (non-blocking)."""
        self.sock.setblocking(False)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                self.data += chunk
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def finish(self, timeout: float = 20.0) -> bytes:
        self.sock.settimeout(timeout)
        while not self.data.endswith(b"\r\n0\r\n\r\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.data += chunk
        self.sock.close()
        return bytes(self.data)

    @staticmethod
    def done(data: bytes) -> bool:
        return data.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data and data.endswith(b"\r\n0\r\n\r\n")


def access_lines(gw: Gateway) -> list[dict]:
    text = gw.stderr_text()
    whole = text[: text.rfind("\n") + 1]
    out = []
    for ln in whole.split("\n"):
        if ln.startswith("{"):
            try:
                out.append(orjson.loads(ln))
            except orjson.JSONDecodeError:
                pass
    return out


def wait_for(pred, timeout: float = 10.0, step: float = 0.05) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def page_kb() -> int:
    return os.sysconf("SC_PAGE_SIZE") // 1024


class FastUpstream:
    """An OpenAI-compatible upstream streaming a long chat answer as fast as the gateway takes it (threads, raw
    sockets); `sent[i]` is what it handed to the kernel on its i-th connection."""

    EVENT = (b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
             b'"delta":{"content":"' + b"word " * 40 + b'"},"finish_reason":null}]}\n\n')

    def __init__(self, events: int) -> None:
        import threading

        self.events = events
        self.sent: list[int] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                idx = len(self.sent)
                self.sent.append(0)
            threading.Thread(target=self._serve, args=(conn, idx), daemon=True).start()

    def _serve(self, conn: socket.socket, idx: int) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            batch = self.EVENT * 10
            chunk = b"%x\r\n%s\r\n" % (len(batch), batch)
            for _ in range(self.events // 10):
                conn.sendall(chunk)
                self.sent[idx] += len(chunk)
            end = b"data: [DONE]\n\n"
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.sock.close()


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_idle(pid: int, timeout: float = 20.0, quiet: float = 0.5) -> bool:
    """Wait until the process has used no CPU for `quiet` seconds (its work settled)."""
    end = time.monotonic() + timeout
    last = cpu_ticks(pid)
    while time.monotonic() < end:
        time.sleep(quiet)
        now = cpu_ticks(pid)
        if now == last:
            return True
        last = now
    return False
