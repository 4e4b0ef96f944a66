"""The test harness's gateway start: a free port another process takes before the gateway binds it is tried anew,
and a /readyz answered by that other process never counts as our gateway being ready."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import procs


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_port_taken_before_the_gateway_binds_it_is_tried_anew(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    thief = ThreadingHTTPServer(("127.0.0.1", 0), _Ready)  # answers /readyz 200 on the "free" port
    threading.Thread(target=thief.serve_forever, daemon=True).start()
    taken = thief.server_address[1]
    real = procs.free_port
    handed: list[int] = []

    def free_port(host: str = "127.0.0.1") -> int:
        handed.append(taken if not handed else real(host))
        return handed[-1]

    monkeypatch.setattr(procs, "free_port", free_port)
    cfg = procs.gateway_config("http://127.0.0.1:9/v1")
    gw = procs.start_gateway(cfg, tmp_path)
    try:
        assert len(handed) == 2 and gw.port == handed[1] != taken
        assert gw.proc.poll() is None and "fastgw ready" in gw.stderr_text()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert b"server: fastgw" in s.recv(4096)
    finally:
        gw.stop()
        thief.shutdown()
        thief.server_close()


def test_free_port_is_free_and_outside_the_ephemeral_range() -> None:
    """Outgoing connections take their source ports from the kernel's ephemeral range: a port picked there for a
    server can be taken before the server binds it (a soak's gateway once failed to start so)."""
    lo, hi = procs.ephemeral_ports()
    for _ in range(50):
        port = procs.free_port()
        assert not lo <= port <= hi, port
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
