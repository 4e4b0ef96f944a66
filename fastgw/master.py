"""The master process (gunicorn's arbiter model): binds sockets, forks workers, supervises them, never serves.

Signal handlers only enqueue; the loop dispatches to `handle_<name>`. A worker
that dies is replaced with backoff; a worker that cannot boot stops the master
with its reason instead of looping; a worker whose loop stops answering dumps the
stacks of its threads to the log (`STACK_DUMP_SIGNAL`, faulthandler) and is killed
with SIGKILL a moment later, then replaced. Neither the master nor a worker can
leave a core dump (`RLIMIT_CORE` 0, not dumpable): one would hold the upstream keys,
the metrics token, client keys and prompts. SIGHUP reloads: the config is read and
checked again, new workers start with it, and only once they serve do the old ones
drain and exit (an invalid config keeps the old workers serving). SIGTERM/SIGINT:
workers drain within the graceful timeout, then the master exits 0; SIGQUIT is
immediate, during a drain too. SIGTTIN/SIGTTOU add or remove a worker. The master speaks sd_notify
(READY, RELOADING, STOPPING, WATCHDOG, STATUS) and takes systemd's sockets.

The supervision logic reads time only through `Master.clock` and touches processes only
through four methods (`_start_worker`, `_signal`, `_waitpid`, `_select`), so the unit tests
replace them with a simulated clock and fake workers (tests/test_master_unit.py).
Over 500 lines on purpose: the loop, its handlers and that seam read top to bottom in one
file, as gunicorn's arbiter.py does.
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import gc
import logging
import os
import resource
import select
import signal
import socket
import stat
import sys
import time

from setproctitle import setproctitle

from collections.abc import Callable

from fastgw import sdnotify
from fastgw.config import Config, ConfigError, parse_bind
from fastgw.policy.chain import Chain
from fastgw.providers.base import TargetRuntime
# Imported here, not in the forked child: the modules (uvloop's among them) are then pages a worker shares with the
# master and its siblings, and the code that only runs at import is never paged into a worker (-1.3 MB RSS each).
from fastgw.worker import run_worker

__all__ = ["Master", "bind_sockets", "BootError"]

log = logging.getLogger("fastgw.master")

#: Sent to a hung worker first: faulthandler (registered in the worker after fork) writes every thread's stack to
#: stderr (the journal) from its C signal handler, which runs even while the event loop is blocked. A real-time
#: signal: it means nothing else to a worker (SIGUSR1 retires it; SIGABRT would dump core where cores are allowed).
STACK_DUMP_SIGNAL = signal.SIGRTMIN + 1
#: After the stack-dump signal, how long a hung worker's dump gets before SIGKILL (a dump takes milliseconds).
ABORT_GRACE = 1.0
#: prctl(2) option: PR_SET_DUMPABLE (linux/prctl.h).
_PR_SET_DUMPABLE = 4
#: Restart backoff bounds for workers that die soon after starting.
RESTART_BACKOFF_MIN = 0.1
RESTART_BACKOFF_MAX = 5.0
#: A worker that ran this long before dying resets the backoff.
STABLE_AFTER = 10.0
#: Time allowed for a worker to report it serves. At start and reload the boot then counts as failed (the
#: master halts, or the reload is refused); a replacement that takes longer is aborted and replaced.
BOOT_TIMEOUT = 30.0
#: Exit status of a worker that could not boot (it also sends its reason over the pipe).
BOOT_ERROR_EXIT = 3
#: Listen backlog; Linux caps it at net.core.somaxconn.
BACKLOG = 2048


_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP, signal.SIGTTIN,
            signal.SIGTTOU)


class BootError(Exception):
    """Workers could not start; the message says why."""


def no_core_dumps() -> None:
    """Best effort, in the master and again in each worker after fork: no core file (RLIMIT_CORE 0, soft and hard)
    and not dumpable (PR_SET_DUMPABLE 0: no core, no ptrace or /proc/<pid>/mem by other processes of the same
    user). The process memory holds upstream keys, the metrics token, client keys and prompts."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as e:
        log.warning("cannot disable core dumps (RLIMIT_CORE): %s", e)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_DUMPABLE, 0) failed: %s", os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as e:
            log.warning("prctl(PR_SET_DUMPABLE, 0) unavailable: %s", e)


def bind_sockets(binds: list[str]) -> list[socket.socket]:
    """Create the listening sockets for `server.bind` (TCP host:port or unix:/path)."""
    out = []
    for b in binds:
        host, port = parse_bind(b)
        if host == "unix":
            path = str(port)
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)  # a stale socket from a previous run
            except FileNotFoundError:
                pass
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(path)
            except OSError as e:
                s.close()
                raise BootError(f"cannot bind {b}: {e.strerror}") from None
        else:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            fam, _, _, _, addr = infos[0]
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s.bind(addr)
            except OSError as e:
                s.close()
                raise BootError(f"cannot bind {b}: {e.strerror}") from None
        s.listen(BACKLOG)
        s.setblocking(False)
        out.append(s)
    return out


class _Worker:
    __slots__ = ("pid", "wid", "fd", "gen", "started", "ready", "last_seen", "buf", "aborted_at", "streams")

    def __init__(self, pid: int, wid: int, fd: int, gen: int, now: float) -> None:
        self.pid = pid
        self.wid = wid
        self.fd = fd
        self.gen = gen
        self.started = now
        self.ready = False
        self.last_seen = self.started
        self.buf = b""
        self.aborted_at: float | None = None
        self.streams = 0  # open streams, from its heartbeat


Runtime = tuple[Config, list[TargetRuntime], "Chain | None"]


class Master:
    """Supervises N workers serving `sockets`."""

    def __init__(self, cfg: Config, targets: list[TargetRuntime], sockets: list[socket.socket], workers: int,
                 chain: Chain | None = None, loader: Callable[[], Runtime] | None = None,
                 inherited: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        #: Every deadline, backoff and heartbeat age is measured on this clock (tests pass a simulated one).
        self.clock = clock
        #: The sockets came from systemd: they are its to keep (never unlink a unix socket path it made).
        self.inherited = inherited
        self.chain = chain
        self.targets = targets
        self.sockets = sockets
        self.num_workers = workers
        #: Re-reads and checks the config for SIGHUP (raises ConfigError when it is invalid).
        self.loader = loader
        self.gen = 0  # config generation: workers of older generations are draining
        self.workers: dict[int, _Worker] = {}
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        # Non-blocking: the loop drains the wake pipe until empty, and a signal must never block on it.
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._backoff = RESTART_BACKOFF_MIN
        self._respawn_at = 0.0
        self._stopping = False
        self._reload = False
        self._watchdog = sdnotify.watchdog_interval()
        self._watchdog_at = 0.0
        self.reloads = {"ok": 0, "invalid": 0, "failed": 0}
        self.restarts = 0
        self.exit_code = 0

    # ---- signals --------------------------------------------------------------------------
    def _on_signal(self, sig: int, frame: object) -> None:
        self._signals.append(sig)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        for sig in _HANDLED:
            signal.signal(sig, self._on_signal)

    # ---- workers ---------------------------------------------------------------------------
    def _current(self) -> list[_Worker]:
        return [w for w in self.workers.values() if w.gen == self.gen]

    def _spawn(self) -> None:
        # Ids are unique among live workers (draining ones included): per-worker files such as the audit
        # log are locked by their worker.
        used = {w.wid for w in self.workers.values()}
        wid = 1
        while wid in used:
            wid += 1
        pid, fd = self._start_worker(wid)
        os.set_blocking(fd, False)
        self.workers[pid] = _Worker(pid, wid, fd, self.gen, self.clock())
        log.debug("spawned worker %d (pid %d, generation %d)", wid, pid, self.gen)

    # ---- the OS seam: the only places that fork, signal, reap or wait (the unit tests replace these) ------
    def _start_worker(self, wid: int) -> tuple[int, int]:
        """Fork worker `wid`; returns its pid and the read end of its status pipe."""
        r, w = os.pipe()
        # Collected, then frozen: the worker's collections never write the GC headers of what it inherits, so
        # it shares those pages with the master instead of copying them (its private memory: ~16 -> ~6 MB).
        # Frozen objects stay frozen until a reload (`_do_reload`): the next fork's collection walks only what
        # was allocated since, so N workers start back to back rather than one full collection apart.
        gc.collect()
        gc.freeze()
        _trim_heap()  # the free memory compiling left in the heap is not copied into every worker's pages
        # Block signals across fork so the child never runs the master's handlers (a TERM arriving
        # before the worker installs its own would otherwise be queued for a loop that is not there).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in _HANDLED:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                os.close(r)
                os.close(self._wake_r)
                os.close(self._wake_w)
                for other in self.workers.values():
                    os.close(other.fd)
                no_core_dumps()  # inherited already; set again in case the master ran without `run` (tests)
                # A hung worker's stacks, written from the C handler even while its event loop is blocked.
                faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True, chain=False)
                code = run_worker(self.cfg, self.targets, self.sockets, wid, w, self.chain)
            except BaseException:  # noqa: BLE001
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(w)
        return pid, r

    def _signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _waitpid(self) -> tuple[int, int]:
        """One exited child as (pid, wait status), or (0, 0); raises ChildProcessError when no child is left."""
        return os.waitpid(-1, os.WNOHANG)

    def _select(self, fds: list[int], timeout: float) -> list[int]:
        """The fds of `fds` readable within `timeout` seconds (a signal wakes it through the wake pipe)."""
        try:
            return select.select(fds, [], [], timeout)[0]
        except InterruptedError:
            return []

    # ---- supervision ----------------------------------------------------------------------------

    def _kill_all(self, sig: int) -> None:
        for pid in list(self.workers):
            self._signal(pid, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = self._waitpid()
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is None:
                continue
            self._read_pipe(w)
            os.close(w.fd)
            _metrics("worker_dead", pid)  # its live gauges leave the totals; its counters stay
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                continue
            if w.gen != self.gen:
                log.info("worker %d (pid %d) of the previous configuration has drained and exited", w.wid, pid)
                continue
            if not w.ready and (code == BOOT_ERROR_EXIT or w.buf):
                # It told us it cannot boot: a restart would fail the same way (gunicorn halts too).
                raise BootError(f"worker {w.wid} failed to boot (exit {code})"
                                + (f": {w.buf.decode(errors='replace').strip()}" if w.buf else ""))
            now = self.clock()
            uptime = now - w.started
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            log.error("worker %d (pid %d) %s after %.1fs; replacing it", w.wid, pid, how, uptime)
            self.restarts += 1
            _metrics("worker_restarted")
            if w.ready and uptime > STABLE_AFTER:  # one that never served (a hung boot) was not stable
                self._backoff = RESTART_BACKOFF_MIN
            self._respawn_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RESTART_BACKOFF_MAX)

    def _read_pipe(self, w: _Worker) -> None:
        while True:
            try:
                data = os.read(w.fd, 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            w.last_seen = self.clock()
            if w.buf:  # the rest of an error message
                w.buf += data
                continue
            i = data.find(b"E")
            head = data if i < 0 else data[:i]
            if b"R" in head:
                w.ready = True
            end = head.rfind(b";")
            if end > 0:
                start = head.rfind(b".", 0, end)
                if start >= 0 and head[start + 1:end].isdigit():
                    w.streams = int(head[start + 1:end])
            if i >= 0:
                w.buf = data[i + 1:] or b" "

    # ---- main loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Spawn workers and supervise until stopped. Returns the exit code."""
        setproctitle("fastgw: master")
        no_core_dumps()
        # A master hung past WatchdogSec gets SIGABRT from systemd: its stack goes to the journal (no core).
        faulthandler.enable(all_threads=True)
        self._install_signals()
        _metrics("setup_master")  # one multiprocess metrics directory for all workers, made before fork
        try:
            return self._run()
        finally:
            _metrics("cleanup_master")

    def _run(self) -> int:
        for _ in range(self.num_workers):
            self._spawn()
        try:
            self._wait_ready(self.gen)
            log.info("fastgw ready: %d workers serving %s", self.num_workers, ", ".join(self.cfg.server.bind))
            sdnotify.notify(f"READY=1\nSTATUS={self._status()}")
            while not self._stopping:
                self._tick()
                if self._reload:
                    self._reload = False
                    self._do_reload()
        except BootError as e:
            log.error("%s; stopping", e)
            self.exit_code = 1
            self._stopping = True
            self._kill_all(signal.SIGKILL)
            self._wait_all(5.0)
            return 1
        self._shutdown()
        return self.exit_code

    def _status(self) -> str:
        streams = sum(w.streams for w in self.workers.values())
        return (f"{len(self._current())} workers serving, {streams} active streams, generation {self.gen}, "
                f"{self.restarts} restarts")

    def _wait_ready(self, gen: int) -> None:
        deadline = self.clock() + BOOT_TIMEOUT
        while True:
            current = [w for w in self.workers.values() if w.gen == gen]
            if len(current) >= self.num_workers and all(w.ready for w in current):
                return
            if self.clock() > deadline:
                raise BootError(f"workers did not report ready within {BOOT_TIMEOUT:g}s")
            self._tick(timeout=0.2)
            if self._stopping:
                return

    def _tick(self, timeout: float = 1.0) -> None:
        if not self._stopping and len(self._current()) < self.num_workers:
            # Wake for the respawn: otherwise a 0.1 s backoff would last until the next heartbeat (up to 1 s).
            timeout = min(timeout, max(0.0, self._respawn_at - self.clock()))
        fds = [self._wake_r] + [w.fd for w in self.workers.values()]
        ready = self._select(fds, timeout)
        if self._wake_r in ready:
            self._drain_wake()
        by_fd = {w.fd: w for w in self.workers.values()}
        for fd in ready:
            w = by_fd.get(fd)
            if w is not None:
                self._read_pipe(w)
                if w.buf and not w.ready and w.gen == self.gen:
                    raise BootError(w.buf.decode(errors="replace").strip())
        self._dispatch_signals()
        self._reap()
        now = self.clock()
        timeout_s = self.cfg.server.worker_timeout
        healthy = True
        for w in list(self.workers.values()):
            if w.aborted_at is not None:
                if now - w.aborted_at > ABORT_GRACE:
                    self._signal(w.pid, signal.SIGKILL)
                healthy = False
            elif not w.ready:
                # A replacement that hangs before `R` would otherwise count as a current worker for good: no
                # replacement would ever be spawned and capacity would silently drop by one.
                if now - w.started > BOOT_TIMEOUT:
                    log.error("worker %d (pid %d) did not report ready within %gs; dumping its stacks, then "
                              "killing it", w.wid, w.pid, BOOT_TIMEOUT)
                    w.aborted_at = now
                    self._signal(w.pid, STACK_DUMP_SIGNAL)  # its stacks to the log; SIGKILL after ABORT_GRACE
                    healthy = False
            elif now - w.last_seen > timeout_s:
                log.error("worker %d (pid %d) has not answered for %.0fs (its event loop is blocked); dumping its "
                          "stacks, then killing it", w.wid, w.pid, now - w.last_seen)
                w.aborted_at = now
                self._signal(w.pid, STACK_DUMP_SIGNAL)  # its stacks to the log; SIGKILL after ABORT_GRACE
                healthy = False
        if not self._stopping and len(self._current()) < self.num_workers and now >= self._respawn_at:
            self._spawn()
        if self._watchdog is not None and healthy and now >= self._watchdog_at:
            sdnotify.notify(f"WATCHDOG=1\nSTATUS={self._status()}")
            self._watchdog_at = now + self._watchdog

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _dispatch_signals(self, draining: bool = False) -> None:
        """Run `handle_<name>` for each queued signal. While draining only SIGQUIT acts: it stops at once."""
        while self._signals:
            sig = self._signals.pop(0)
            if draining:
                if sig == signal.SIGQUIT:
                    log.warning("SIGQUIT while draining: killing the workers now")
                    self.handle_quit()
                continue
            name = signal.Signals(sig).name.lower()
            getattr(self, f"handle_{name[3:]}")()

    # ---- reload -------------------------------------------------------------------------------
    def _do_reload(self) -> None:
        """New workers with the new config first; the old ones drain only once the new ones serve."""
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        if self.loader is None:
            log.warning("SIGHUP: no config to reload")
            sdnotify.notify("READY=1")
            return
        try:
            cfg, targets, chain = self.loader()
        except (ConfigError, ValueError, OSError) as e:
            log.error("reload refused, still serving the previous configuration: %s", e)
            self.reloads["invalid"] += 1
            _metrics("config_reload", "invalid")
            sdnotify.notify(f"READY=1\nSTATUS=reload refused (invalid config); {self._status()}")
            return
        old = (self.cfg, self.targets, self.chain, self.gen)
        gc.unfreeze()  # what the previous config leaves behind (cycles too) is the collector's again
        self.cfg, self.targets, self.chain = cfg, targets, chain
        self.gen += 1
        for _ in range(self.num_workers):
            self._spawn()
        try:
            self._wait_ready(self.gen)
        except BootError as e:
            log.error("reload failed, new workers could not start (%s); still serving the previous "
                      "configuration", e)
            for w in self._current():
                self._signal(w.pid, signal.SIGKILL)
            self.cfg, self.targets, self.chain, self.gen = old
            self.reloads["failed"] += 1
            _metrics("config_reload", "failed")
            sdnotify.notify(f"READY=1\nSTATUS=reload failed; {self._status()}")
            return
        for w in list(self.workers.values()):
            if w.gen != self.gen:
                # Retire: finish in-flight requests and streams, answer each keep-alive connection's next
                # request with Connection: close, then exit (within the drain budget).
                self._signal(w.pid, signal.SIGUSR1)
        self.reloads["ok"] += 1
        _metrics("config_reload", "ok")
        log.info("reloaded: generation %d serving; the previous workers drain", self.gen)
        sdnotify.notify(f"READY=1\nSTATUS={self._status()}")

    # ---- signal handlers ----------------------------------------------------------------------
    def handle_chld(self) -> None:
        pass  # reaping happens every tick

    def handle_term(self) -> None:
        self._stopping = True

    def handle_int(self) -> None:
        self._stopping = True

    def handle_quit(self) -> None:
        self._stopping = True
        self._kill_all(signal.SIGKILL)

    def handle_hup(self) -> None:
        self._reload = True

    def handle_ttin(self) -> None:
        self.num_workers += 1
        log.info("SIGTTIN: %d workers", self.num_workers)

    def handle_ttou(self) -> None:
        if self.num_workers <= 1:
            return
        self.num_workers -= 1
        newest = max(self._current(), key=lambda w: w.started, default=None)
        if newest is not None:
            newest.gen = -1  # retired: not replaced when it exits
            self._signal(newest.pid, signal.SIGTERM)
        log.info("SIGTTOU: %d workers", self.num_workers)

    # ---- shutdown --------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        grace = self.cfg.server.graceful_timeout
        sdnotify.notify("STOPPING=1")
        log.info("stopping: draining %d workers (up to %gs)", len(self.workers), grace)
        self._kill_all(signal.SIGTERM)
        if not self._wait_all(grace + 5.0):
            log.warning("workers still running after %gs; killing them", grace)
            self._kill_all(signal.SIGKILL)
            self._wait_all(5.0)
        for s in self.sockets:
            try:
                if s.family == socket.AF_UNIX and not self.inherited:
                    path = s.getsockname()
                    s.close()
                    if path:
                        os.unlink(path)
                else:
                    s.close()
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    def _wait_all(self, timeout: float) -> bool:
        """Reap workers until none is left (True) or `timeout` has passed (False).

        Signals are dispatched meanwhile, so SIGQUIT during a drain is the immediate stop README promises
        (gunicorn's graceful stop listens for it too); a signal or SIGCHLD ends the wait through the wake pipe.
        """
        deadline = self.clock() + timeout
        while self.workers:
            self._dispatch_signals(draining=True)
            try:
                pid, _ = self._waitpid()
            except ChildProcessError:
                self.workers.clear()
                break
            if pid:
                w = self.workers.pop(pid, None)
                if w is not None:
                    os.close(w.fd)
                continue
            left = deadline - self.clock()
            if left <= 0:
                break
            # Bounded: a SIGCHLD that lands between waitpid and select is then seen on the next round.
            if self._select([self._wake_r], min(left, 0.1)):
                self._drain_wake()
        return not self.workers


def _metrics(name: str, *args: object) -> None:
    """Report to fastgw.metrics when it is there (the master must never fail on metrics)."""
    try:
        from fastgw import metrics
        getattr(metrics, name)(*args)
    except Exception:  # noqa: BLE001
        pass


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc's `malloc_trim`; nothing elsewhere): compiling the
    Hyperscan databases and loading the config leave free memory the allocator keeps, which a worker forked then
    would carry in its RSS."""
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC is not None else None
    if trim is not None:
        trim(0)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None)
except OSError:  # no C library to ask: nothing to trim
    _LIBC = None
