"""Helpers for the fair-CPU abuse tests (`test_cpu_*.py`): a gateway with pii-detector, safety-filter and
prompt-injection on the built-in mock model, its worker's pid, raw HTTP over sockets, a timed /healthz, and a
well-behaved streaming client. Imports nothing from fastgw: the gateway runs as `python -m fastgw serve`."""

from __future__ import annotations

import socket
import subprocess
import time

import orjson

from tests.support.procs import Gateway

#: What the mock model streams to the well-behaved client: 60 chunks 50 ms apart (~3 s, the length of the attack).
SLOW_CHUNKS = 60
SLOW_DELAY = 0.05


def config(**server: object) -> dict:
    return {
        "pack": {"name": "cpu-abuse"},
        "server": dict(server),
        "providers": {"targets": [
            {"id": "mock", "provider": "mock", "model": "mock-1"},
            {"id": "slow", "provider": "mock", "model": "mock-slow",
             "mock": {"chunks": SLOW_CHUNKS, "delay": SLOW_DELAY}},
        ]},
        "policies": {"chain": ["pii-detector", "safety-filter", "prompt-injection"]},
        "policy": {
            "pii-detector": {"action": "redact"},
            "safety-filter": {"terms": ["bomb making", "credit card dump"], "action": "block"},
            "prompt-injection": {"action": "block"},
        },
    }


def worker_pids(gw: Gateway) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True).stdout.split()
    return sorted(int(x) for x in out)


def connect(gw: Gateway, timeout: float = 30.0) -> socket.socket:
    s = socket.create_connection((gw.host, gw.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body (status, lower-cased headers, body)."""
    buf = b""
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
    return int(lines[0].split()[1]), headers, rest[:length]


def chat_request(content: str, model: str = "mock-1", stream: bool = False) -> bytes:
    body = orjson.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def post(gw: Gateway, raw: bytes, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    with connect(gw, timeout) as s:
        s.sendall(raw)
        return read_response(s)


def healthz_ms(gw: Gateway) -> float:
    """Milliseconds for GET /healthz on a fresh connection (with one worker: the worker under attack)."""
    t0 = time.perf_counter()
    status, _, _ = post(gw, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
    assert status == 200
    return (time.perf_counter() - t0) * 1000


_POLLER = r"""
import socket, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import os
while not os.path.exists(stop):
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while not data.startswith(b"HTTP/1.1 200") or b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    print((time.perf_counter() - t0) * 1000, flush=True)
    time.sleep(0.02)
"""


class HealthzPoller:
    """Polls /healthz from a process of its own: the attack's threads in the test process hold the GIL while they
    build and send megabytes, which would be counted against the gateway if the test process measured."""

    def __init__(self, gw: Gateway, tmp: str) -> None:
        import subprocess
        import sys

        self._stop = f"{tmp}/poller.stop"
        self.proc = subprocess.Popen([sys.executable, "-c", _POLLER, gw.host, str(gw.port), self._stop],
                                     stdout=subprocess.PIPE, text=True)

    def finish(self) -> list[float]:
        """The latencies in ms, in order."""
        open(self._stop, "w").close()
        out, _ = self.proc.communicate(timeout=30)
        return [float(x) for x in out.split()]


class Stream:
    """A well-behaved streaming client: one chat request to the slow mock model, read to the chunked end."""

    def __init__(self, gw: Gateway) -> None:
        self.sock = connect(gw)
        self.sock.sendall(chat_request("hi there, tell me a story", model="mock-slow", stream=True))
        self.data = bytearray()

    def finish(self, timeout: float = 30.0) -> bytes:
        self.sock.settimeout(timeout)
        while not self.data.endswith(b"\r\n0\r\n\r\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.data += chunk
        self.sock.close()
        return bytes(self.data)

    @staticmethod
    def complete(data: bytes) -> bool:
        return data.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data and data.endswith(b"\r\n0\r\n\r\n")
