"""systemd integration: sd_notify(3) messages and socket activation (sd_listen_fds(3)), without libsystemd.

Both are no-ops outside systemd. `notify` never raises: a service must not fail because
its supervisor cannot be told something (gunicorn's systemd.py keeps the same rule).
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "listen_fds", "watchdog_interval"]

SD_LISTEN_FDS_START = 3


def notify(message: str) -> bool:
    """Send a datagram to $NOTIFY_SOCKET (e.g. "READY=1"); False when there is none or it failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), addr)
        return True
    except OSError:
        return False


def listen_fds(unset: bool = True) -> list[socket.socket]:
    """Sockets passed by systemd socket activation: trusted only when LISTEN_PID is this process."""
    try:
        pid = int(os.environ.get("LISTEN_PID", "0"))
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    if pid != os.getpid() or n <= 0:
        return []
    if unset:  # children must not believe the sockets were meant for them
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(k, None)
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        out.append(s)
    return out


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, when the watchdog is ours."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
