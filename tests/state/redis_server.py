"""A real `redis-server` for tests: a free loopback port, a temp dir, started and stopped by the test.

Nothing is mocked: the tests that prove the quota semantics run the Lua scripts in Redis itself. The
binary comes from Debian's `redis-server` (`make test` installs it); without it the tests that need it
skip with that reason. Reusable by the gateway-level tests (import `RedisServer`, `REDIS_SERVER`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.procs import free_port

__all__ = ["RedisServer", "REDIS_SERVER", "MISSING"]

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                                else None)
MISSING = "redis-server is not installed (apt-get install redis-server; `make test` does it)"
#: Seconds a starting redis-server may take to answer PING (a loaded 2-core CI box included).
START_TIMEOUT = 10.0




def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            s.settimeout(0.5)
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `kill()` (SIGKILL), `stop()`, `pause()`/`resume()` (SIGSTOP/SIGCONT) and
    `start()` again on the same port and directory (the AOF, when on, is replayed)."""

    def __init__(self, directory: Path, aof: bool = False, port: int | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        assert REDIS_SERVER is not None, MISSING
        self.dir = directory
        self.aof = aof
        self.extra = extra
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir",
                str(self.dir), "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        # AOF with fsync on every write: the persistence test kills the server right after a write
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                logfile = self.dir / "redis.log"
                log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.01)
        return self

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and wait until the port refuses."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
