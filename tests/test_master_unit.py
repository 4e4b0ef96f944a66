"""The master's supervision logic without processes or wall-clock waits.

`Sim` is a small discrete-event simulator: it owns a clock, fake workers and a heap of timed events.
`SimMaster` points Master's OS seam (`_start_worker`, `_signal`, `_waitpid`, `_select`) at it, so the real
loop (`Master._run`) runs unchanged: time moves only while the master waits in `_select`, jumping to the next
event. A fake worker's status pipe is a real pipe, so the master parses the real `R`, `.N;` and `E<msg>`
messages. A whole scenario (30 s boot timeouts included) takes milliseconds.

tests/test_master.py and tests/test_operations.py keep the same behaviours proven on real processes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from fastgw import master as master_mod
from fastgw.config import ConfigError, Server
from fastgw.master import (ABORT_GRACE, BOOT_ERROR_EXIT, BOOT_TIMEOUT, RESTART_BACKOFF_MIN, STABLE_AFTER,
                           STACK_DUMP_SIGNAL, Master)

T0 = 1000.0
#: A simulation that runs this long has lost its way (a loop that never stops): fail instead of hanging.
SIM_LIMIT = 3600.0


def exited(code: int) -> int:
    """The wait status of a process that exited with `code`."""
    return code << 8


def killed(sig: int) -> int:
    """The wait status of a process killed by `sig`."""
    return sig


@dataclass
class Behaviour:
    """What one fake worker does."""

    boot: float | None = 0.5  # seconds until it sends `R`; None: it hangs before ready
    boot_error: str | None = None  # sent as `E<msg>` at boot time, then it exits with BOOT_ERROR_EXIT
    crash_after: float | None = None  # seconds after boot (ready or not) at which it exits with code 1
    drain: float | None = 0.2  # seconds from SIGTERM/SIGUSR1 to exit 0; None: it ignores them


@dataclass
class FakeWorker:
    pid: int
    wid: int
    wfd: int
    behaviour: Behaviour
    spawned_at: float
    alive: bool = True
    ready_at: float | None = None
    blocked: bool = False  # its loop stopped: no more heartbeats


@dataclass
class Sim:
    """Clock, fake workers and timed events; the master's OS seam calls into it."""

    now: float = T0
    plan: list[Behaviour] = field(default_factory=list)  # behaviours of the next spawns, in order
    default: Behaviour = field(default_factory=Behaviour)
    procs: dict[int, FakeWorker] = field(default_factory=dict)
    spawns: list[FakeWorker] = field(default_factory=list)
    sent: list[tuple[float, int, int]] = field(default_factory=list)  # (time, pid, signal) the master sent
    notified: list[str] = field(default_factory=list)  # sd_notify messages
    metrics: list[tuple[object, ...]] = field(default_factory=list)  # fastgw.metrics calls
    master: Master | None = None
    _events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=itertools.count)
    _zombies: list[tuple[int, int]] = field(default_factory=list)
    _pids: Iterator[int] = field(default_factory=lambda: itertools.count(4000))

    # ---- scheduling ------------------------------------------------------------------------------
    def clock(self) -> float:
        return self.now

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def after(self, dt: float, fn: Callable[[], None]) -> None:
        self.at(self.now + dt, fn)

    def signal_master(self, sig: int, t: float) -> None:
        """Deliver `sig` to the master at time `t`, as its handler and wakeup fd would."""
        def deliver() -> None:
            assert self.master is not None
            self.master._on_signal(sig, None)
            os.write(self.master._wake_w, b"\0")
        self.at(t, deliver)

    # ---- the master's OS seam ------------------------------------------------------------------------
    def start_worker(self, wid: int) -> tuple[int, int]:
        r, w = os.pipe()
        p = FakeWorker(next(self._pids), wid, w, self.plan.pop(0) if self.plan else self.default, self.now)
        self.procs[p.pid] = p
        self.spawns.append(p)
        b = p.behaviour
        if b.boot_error is not None:
            self.after(b.boot or 0.0, lambda: self._boot_error(p))
        elif b.boot is not None:
            self.after(b.boot, lambda: self._ready(p))
        if b.crash_after is not None:
            self.after((b.boot or 0.0) + b.crash_after, lambda: self.exit(p, exited(1)))
        return p.pid, r

    def kill(self, pid: int, sig: int) -> None:
        self.sent.append((self.now, pid, sig))
        p = self.procs.get(pid)
        if p is None or not p.alive:
            return
        if sig == signal.SIGKILL:  # the stack-dump signal never ends a worker: faulthandler writes and returns
            self.exit(p, killed(sig))
        elif sig in (signal.SIGTERM, signal.SIGUSR1) and p.behaviour.drain is not None:
            self.after(p.behaviour.drain, lambda: self.exit(p, exited(0)))

    def waitpid(self) -> tuple[int, int]:
        if self._zombies:
            return self._zombies.pop(0)
        if any(p.alive for p in self.procs.values()):
            return 0, 0
        raise ChildProcessError

    def select(self, fds: list[int], timeout: float) -> list[int]:
        deadline = self.now + timeout
        while True:
            ready = select.select(fds, [], [], 0)[0]
            if ready:
                return ready
            if not self._events or self._events[0][0] > deadline:
                self.now = max(self.now, deadline)
                return []
            t, _, fn = heapq.heappop(self._events)
            self.now = max(self.now, t)
            assert self.now < T0 + SIM_LIMIT, "the simulation ran away"
            fn()

    # ---- fake worker lives -------------------------------------------------------------------------------
    def _write(self, p: FakeWorker, data: bytes) -> None:
        if p.alive:
            os.write(p.wfd, data)

    def _ready(self, p: FakeWorker) -> None:
        if p.alive:
            p.ready_at = self.now
            self._write(p, b"R")
            self.after(1.0, lambda: self._beat(p))

    def _beat(self, p: FakeWorker) -> None:
        if p.alive and not p.blocked:
            self._write(p, b".0;")
            self.after(1.0, lambda: self._beat(p))

    def _boot_error(self, p: FakeWorker) -> None:
        self._write(p, b"E" + (p.behaviour.boot_error or "").encode())
        self.exit(p, exited(BOOT_ERROR_EXIT))

    def exit(self, p: FakeWorker, status: int) -> None:
        if not p.alive:
            return
        p.alive = False
        os.close(p.wfd)
        self._zombies.append((p.pid, status))
        assert self.master is not None
        self.master._on_signal(signal.SIGCHLD, None)
        os.write(self.master._wake_w, b"\0")

    # ---- queries -------------------------------------------------------------------------------------------
    def signals_to(self, p: FakeWorker, sig: int) -> list[float]:
        return [t for t, pid, s in self.sent if pid == p.pid and s == sig]

    def alive(self) -> list[FakeWorker]:
        return [p for p in self.procs.values() if p.alive]

    def close(self) -> None:
        for p in self.procs.values():
            if p.alive:
                os.close(p.wfd)
        if self.master is not None:
            for w in self.master.workers.values():
                os.close(w.fd)
            os.close(self.master._wake_r)
            os.close(self.master._wake_w)


class SimMaster(Master):
    """Master whose OS seam is the simulator."""

    def __init__(self, sim: Sim, workers: int = 2, loader: Callable[[], Any] | None = None,
                 **server: Any) -> None:
        cfg: Any = SimpleNamespace(server=Server(**server))
        super().__init__(cfg, [], [], workers, loader=loader, clock=sim.clock)
        self.sim = sim
        sim.master = self

    def _start_worker(self, wid: int) -> tuple[int, int]:
        return self.sim.start_worker(wid)

    def _signal(self, pid: int, sig: int) -> None:
        self.sim.kill(pid, sig)

    def _waitpid(self) -> tuple[int, int]:
        return self.sim.waitpid()

    def _select(self, fds: list[int], timeout: float) -> list[int]:
        return self.sim.select(fds, timeout)


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    s = Sim()

    def notify(msg: str) -> bool:
        s.notified.append(msg)
        return True
    monkeypatch.setattr(master_mod.sdnotify, "notify", notify)
    monkeypatch.setattr(master_mod, "_metrics", lambda name, *a: s.metrics.append((name, *a)))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    try:
        yield s
    finally:
        s.close()


# ---- start and stop -----------------------------------------------------------------------------------------

def test_start_reports_ready_once_every_worker_serves_and_sigterm_drains(sim: Sim) -> None:
    sim.plan = [Behaviour(boot=0.3), Behaviour(boot=0.7)]
    m = SimMaster(sim, workers=2)
    sim.signal_master(signal.SIGTERM, T0 + 5)
    assert m._run() == 0
    assert [(p.wid, p.spawned_at) for p in sim.spawns] == [(1, T0), (2, T0)]
    assert sim.notified[0].startswith("READY=1") and "2 workers serving" in sim.notified[0]
    assert sim.notified[-1] == "STOPPING=1"
    for p in sim.spawns:
        assert sim.signals_to(p, signal.SIGTERM) == [T0 + 5]
        assert not sim.signals_to(p, signal.SIGKILL)
    assert not sim.alive() and not m.workers
    assert sim.now == pytest.approx(T0 + 5 + 0.2)  # it returned as soon as the last worker had drained


def test_workers_that_ignore_sigterm_are_killed_after_the_drain_budget(sim: Sim) -> None:
    sim.default = Behaviour(drain=None)
    m = SimMaster(sim, workers=2, graceful_timeout=10.0)
    sim.signal_master(signal.SIGTERM, T0 + 2)
    assert m._run() == 0
    for p in sim.spawns:
        (t,) = sim.signals_to(p, signal.SIGKILL)
        assert t == pytest.approx(T0 + 2 + 10.0 + 5.0, abs=0.11)


def test_sigquit_during_the_drain_stops_at_once(sim: Sim) -> None:
    """Review finding: `_wait_all` dispatched no signals, so SIGQUIT waited out graceful_timeout + 5 s."""
    sim.default = Behaviour(drain=None)  # streams that would run past the whole budget
    m = SimMaster(sim, workers=2, graceful_timeout=30.0)
    sim.signal_master(signal.SIGTERM, T0 + 2)
    sim.signal_master(signal.SIGQUIT, T0 + 4)
    assert m._run() == 0
    for p in sim.spawns:
        assert sim.signals_to(p, signal.SIGTERM) == [T0 + 2]
        assert sim.signals_to(p, signal.SIGKILL) == [T0 + 4]
    assert sim.now == pytest.approx(T0 + 4) and not m.workers


def test_other_signals_during_the_drain_change_nothing(sim: Sim) -> None:
    m = SimMaster(sim, workers=2, graceful_timeout=30.0)
    sim.default = Behaviour(drain=3.0)
    sim.signal_master(signal.SIGTERM, T0 + 2)
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGINT, signal.SIGTERM):
        sim.signal_master(sig, T0 + 3)
    assert m._run() == 0
    assert len(sim.spawns) == 2 and m.reloads == {"ok": 0, "invalid": 0, "failed": 0}
    assert not any(s == signal.SIGKILL for _, _, s in sim.sent)
    assert sim.now == pytest.approx(T0 + 5)


# ---- a dead worker is replaced, with backoff ------------------------------------------------------------------

def test_dead_worker_is_replaced_with_doubling_backoff_reset_by_a_stable_run(sim: Sim) -> None:
    crash = Behaviour(boot=0.5, crash_after=0.05)
    sim.plan = [Behaviour(), Behaviour(crash_after=2.0), crash, crash, crash, Behaviour(crash_after=STABLE_AFTER + 5)]
    m = SimMaster(sim, workers=2)
    sim.signal_master(signal.SIGTERM, T0 + 60)
    assert m._run() == 0
    # each replacement starts one backoff after its predecessor died: 0.1, 0.2, 0.4, 0.8 s; the worker that ran
    # longer than STABLE_AFTER resets it to 0.1 s
    gaps = []
    for prev, nxt in zip(sim.spawns[1:], sim.spawns[2:]):
        end = prev.spawned_at + (prev.behaviour.boot or 0) + (prev.behaviour.crash_after or 0)
        gaps.append(nxt.spawned_at - end)
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8, RESTART_BACKOFF_MIN])
    assert [p.wid for p in sim.spawns] == [1, 2, 2, 2, 2, 2, 2]  # the free id is reused
    assert m.restarts == 5 and [x for x in sim.metrics if x[0] == "worker_restarted"] == [("worker_restarted",)] * 5
    assert [x for x in sim.metrics if x[0] == "worker_dead"] == [("worker_dead", p.pid) for p in sim.spawns[1:6]]


def test_restart_backoff_is_capped(sim: Sim) -> None:
    sim.plan = [Behaviour(crash_after=1.0)] + [Behaviour(boot=0.1, crash_after=0.0)] * 12
    m = SimMaster(sim, workers=1)
    sim.signal_master(signal.SIGTERM, T0 + 60)
    m._run()
    starts = [p.spawned_at for p in sim.spawns[1:]]
    gaps = [b - a - 0.1 for a, b in zip(starts, starts[1:])]
    assert gaps[:7] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


# ---- heartbeats ----------------------------------------------------------------------------------------------

def test_a_silent_worker_dumps_its_stacks_then_is_killed_and_replaced(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    sim.plan = [Behaviour(), Behaviour()]
    m = SimMaster(sim, workers=2, worker_timeout=3.0)
    victim = None

    def block() -> None:
        nonlocal victim
        victim = sim.spawns[0]
        victim.blocked = True
    sim.at(T0 + 5.2, block)  # its last heartbeat was at T0 + 4.5
    sim.signal_master(signal.SIGTERM, T0 + 30)
    with caplog.at_level(logging.ERROR, "fastgw.master"):
        assert m._run() == 0
    assert victim is not None
    (aborted,) = sim.signals_to(victim, STACK_DUMP_SIGNAL)
    assert T0 + 4.5 + 3.0 < aborted <= T0 + 4.5 + 3.0 + 1.0  # noticed on the next tick
    (killed_at,) = sim.signals_to(victim, signal.SIGKILL)
    assert aborted + ABORT_GRACE < killed_at <= aborted + ABORT_GRACE + 1.0
    assert len(sim.spawns) == 3 and sim.spawns[2].wid == victim.wid
    assert sim.spawns[2].spawned_at == pytest.approx(killed_at + RESTART_BACKOFF_MIN)
    assert "event loop is blocked" in caplog.text
    # the healthy worker was left alone
    assert sim.signals_to(sim.spawns[1], STACK_DUMP_SIGNAL) == []
    assert not any(s == signal.SIGABRT for _, _, s in sim.sent)  # never SIGABRT: it would dump core


def test_workers_that_keep_beating_are_never_aborted(sim: Sim) -> None:
    m = SimMaster(sim, workers=3, worker_timeout=1.5)
    sim.signal_master(signal.SIGTERM, T0 + 120)
    m._run()
    assert len(sim.spawns) == 3 and not any(s in (signal.SIGABRT, STACK_DUMP_SIGNAL) for _, _, s in sim.sent)


# ---- a replacement that never reports ready -------------------------------------------------------------------

def test_a_replacement_that_hangs_before_ready_is_aborted_and_replaced(sim: Sim,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: a replacement hung before `R` was never timed out and counted as a current worker."""
    sim.plan = [Behaviour(crash_after=1.0), Behaviour(), Behaviour(boot=None), Behaviour()]
    m = SimMaster(sim, workers=2)
    sim.signal_master(signal.SIGTERM, T0 + BOOT_TIMEOUT + 20)
    with caplog.at_level(logging.ERROR, "fastgw.master"):
        assert m._run() == 0
    first, _, hung, fresh = sim.spawns
    assert hung.spawned_at == pytest.approx(T0 + 1.5 + 0.1)
    (aborted,) = sim.signals_to(hung, STACK_DUMP_SIGNAL)
    assert hung.spawned_at + BOOT_TIMEOUT < aborted <= hung.spawned_at + BOOT_TIMEOUT + 1.0
    (killed_at,) = sim.signals_to(hung, signal.SIGKILL)
    assert aborted + ABORT_GRACE < killed_at <= aborted + ABORT_GRACE + 1.0
    # the same backoff as any death: it doubled (0.1 s, then 0.2 s), and 30 s of a boot that never served
    # did not reset it as a stable run would have
    assert fresh.spawned_at == pytest.approx(killed_at + 0.2)
    assert fresh.ready_at is not None and fresh.wid == first.wid
    assert "did not report ready within" in caplog.text
    assert m.restarts == 2


def test_a_hung_replacement_is_killed_after_its_stack_dump(sim: Sim) -> None:
    sim.plan = [Behaviour(crash_after=1.0), Behaviour(boot=None)]
    m = SimMaster(sim, workers=1)
    sim.signal_master(signal.SIGTERM, T0 + BOOT_TIMEOUT + 20)
    m._run()
    hung = sim.spawns[1]
    (aborted,) = sim.signals_to(hung, STACK_DUMP_SIGNAL)
    (k,) = sim.signals_to(hung, signal.SIGKILL)
    assert aborted + ABORT_GRACE < k <= aborted + ABORT_GRACE + 1.0
    assert len(sim.spawns) == 3 and sim.spawns[2].ready_at is not None


# ---- boot errors -----------------------------------------------------------------------------------------------

def test_a_boot_error_at_start_halts_the_master_with_the_reason(sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    sim.plan = [Behaviour(), Behaviour(boot=0.4, boot_error="cannot allocate scan scratch")]
    m = SimMaster(sim, workers=2)
    with caplog.at_level(logging.ERROR, "fastgw.master"):
        assert m._run() == 1
    assert "cannot allocate scan scratch" in caplog.text
    assert len(sim.spawns) == 2  # no restart loop
    assert sim.signals_to(sim.spawns[0], signal.SIGKILL) == [T0 + 0.4]
    assert not sim.alive() and not any(n.startswith("READY=1") for n in sim.notified)
    assert sim.now == pytest.approx(T0 + 0.4)


def test_a_silent_exit_with_the_boot_error_status_halts_too(sim: Sim) -> None:
    sim.plan = [Behaviour(boot=None), Behaviour()]
    m = SimMaster(sim, workers=2)
    sim.at(T0 + 0.2, lambda: sim.exit(sim.spawns[0], exited(BOOT_ERROR_EXIT)))
    assert m._run() == 1 and len(sim.spawns) == 2


def test_a_replacement_with_a_boot_error_halts_the_master(sim: Sim) -> None:
    sim.plan = [Behaviour(crash_after=3.0), Behaviour(), Behaviour(boot_error="bad scratch")]
    m = SimMaster(sim, workers=2)
    assert m._run() == 1
    assert len(sim.spawns) == 3 and not sim.alive()


def test_workers_that_never_report_ready_at_start_halt_the_master(sim: Sim,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    sim.plan = [Behaviour(), Behaviour(boot=None)]
    m = SimMaster(sim, workers=2)
    with caplog.at_level(logging.ERROR, "fastgw.master"):
        assert m._run() == 1
    assert f"did not report ready within {BOOT_TIMEOUT:g}s" in caplog.text
    assert BOOT_TIMEOUT < sim.now - T0 <= BOOT_TIMEOUT + 0.5 and not sim.alive()


# ---- reload by generations ------------------------------------------------------------------------------------------

def _loader(results: list[Any]) -> Callable[[], Any]:
    def load() -> Any:
        r = results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r
    return load


def test_reload_starts_the_new_generation_first_then_retires_the_old(sim: Sim) -> None:
    new_cfg: Any = SimpleNamespace(server=Server(graceful_timeout=7.0))
    sim.plan = [Behaviour(), Behaviour(), Behaviour(boot=1.0), Behaviour(boot=2.0)]
    m = SimMaster(sim, workers=2, loader=_loader([(new_cfg, [], None)]))
    sim.signal_master(signal.SIGHUP, T0 + 3)
    sim.signal_master(signal.SIGTERM, T0 + 20)
    seen: list[tuple[int, list[int]]] = []
    sim.at(T0 + 10, lambda: seen.append((m.gen, sorted(w.wid for w in m.workers.values()))))
    assert m._run() == 0
    old1, old2, new1, new2 = sim.spawns
    assert new1.spawned_at == new2.spawned_at == T0 + 3
    # the old ones are asked to drain (SIGUSR1) only once both new ones serve
    assert sim.signals_to(old1, signal.SIGUSR1) == sim.signals_to(old2, signal.SIGUSR1) == [T0 + 5]
    assert new2.ready_at == T0 + 5
    assert {new1.wid, new2.wid} == {3, 4}  # ids stay unique while the old ones drain
    # they drained and were not replaced; the new generation carries on with the new config
    assert seen == [(1, [3, 4])] and len(sim.spawns) == 4
    assert m.cfg is new_cfg and m.reloads == {"ok": 1, "invalid": 0, "failed": 0}
    assert ("config_reload", "ok") in sim.metrics
    kinds = [n.split("\n")[0] for n in sim.notified if not n.startswith("WATCHDOG")]
    assert kinds == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


def test_an_invalid_config_on_reload_keeps_the_old_workers(sim: Sim) -> None:
    m = SimMaster(sim, workers=2, loader=_loader([ConfigError("c.yaml:1: $.pack: broken")]))
    cfg = m.cfg
    sim.signal_master(signal.SIGHUP, T0 + 3)
    sim.signal_master(signal.SIGTERM, T0 + 6)
    assert m._run() == 0
    assert len(sim.spawns) == 2 and m.gen == 0 and m.cfg is cfg
    assert not any(s == signal.SIGUSR1 for _, _, s in sim.sent)
    assert m.reloads == {"ok": 0, "invalid": 1, "failed": 0}
    assert any("reload refused" in n for n in sim.notified)


def test_a_reload_whose_workers_cannot_boot_keeps_the_old_generation(sim: Sim) -> None:
    new_cfg: Any = SimpleNamespace(server=Server())
    sim.plan = [Behaviour(), Behaviour(), Behaviour(boot=None), Behaviour()]
    m = SimMaster(sim, workers=2, loader=_loader([(new_cfg, [], None)]))
    cfg = m.cfg
    sim.signal_master(signal.SIGHUP, T0 + 3)
    sim.signal_master(signal.SIGTERM, T0 + BOOT_TIMEOUT + 10)
    assert m._run() == 0
    old1, old2, new1, new2 = sim.spawns
    assert sim.signals_to(new1, signal.SIGKILL) and sim.signals_to(new2, signal.SIGKILL)
    assert not sim.signals_to(old1, signal.SIGUSR1) and not sim.signals_to(old2, signal.SIGUSR1)
    assert m.cfg is cfg and m.gen == 0 and m.reloads["failed"] == 1
    assert len(sim.spawns) == 4  # the killed new workers were not replaced
    assert sim.signals_to(old1, signal.SIGTERM) == [T0 + BOOT_TIMEOUT + 10]  # the old ones served throughout


# ---- one worker more or less -------------------------------------------------------------------------------------

def test_ttin_adds_a_worker_and_ttou_retires_the_newest(sim: Sim) -> None:
    m = SimMaster(sim, workers=2)
    sim.signal_master(signal.SIGTTIN, T0 + 2)
    sim.signal_master(signal.SIGTTOU, T0 + 5)
    sim.signal_master(signal.SIGTERM, T0 + 10)
    assert m._run() == 0
    assert [p.spawned_at for p in sim.spawns] == [T0, T0, T0 + 2]
    third = sim.spawns[2]
    assert sim.signals_to(third, signal.SIGTERM)[0] == T0 + 5
    assert len(sim.spawns) == 3 and m.num_workers == 2  # the retired one was not replaced
