"""Ports for the servers the bench harness and the tests start (standard library only: the pure-Python form's copy
of the tests imports it without the rest of bench/)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["ephemeral_ports", "free_port"]


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; its default elsewhere)."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a server started next. Picked outside the kernel's ephemeral range:
    a port the kernel hands out for `bind(0)` is also a source port it may give the next outgoing connection (the
    suite's own, on parallel workers), which then takes it before the server binds it (a soak's gateway failed to
    start on one so); outside it only an explicit bind can take it."""
    lo, hi = ephemeral_ports()
    low = (10000, lo) if lo - 10000 >= 1000 else (hi + 1, 65536)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*low) if low[0] < low[1] else 0
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket() as s:  # (no free port there: the kernel's choice)
        s.bind((host, 0))
        return int(s.getsockname()[1])
