"""Prometheus multiprocess plumbing under `fastgw.metrics`: the directory the workers write their values to,
the value class that writes there, and the exposition merged over every worker's files.

`fastgw.metrics` defines the metrics and the calls that update them; this module only decides where the
values live, so it knows no metric by name.

Multiprocess mode, and worker restarts
--------------------------------------
`setup()` creates a fresh directory, sets ``PROMETHEUS_MULTIPROC_DIR`` and switches prometheus-client's
value class to its mmap-backed one; workers forked afterwards write their values into per-pid files there
(``counter_<pid>.db``, ``histogram_<pid>.db``, ``gauge_livesum_<pid>.db``), and `merged()` merges every file
with `MultiProcessCollector`, so any worker answers for all. When the master reaps a worker it calls
`worker_dead(pid)`: that worker's *livesum gauge* file is removed (its in-flight requests and open streams
stop counting), while its counter and histogram files stay, so totals keep counting across restarts and
never go backwards (a restart is not a counter reset for Prometheus). The directory therefore grows by a
few small files per worker restart; a pid reused by a later worker reopens and continues its files.
The master's own counters (restarts, reloads) live in its own files.

Crash safety: the master's directory outlives a SIGKILLed master unless it sits on a runtime dir (systemd's
$RUNTIME_DIRECTORY is used when set, and removed when the unit stops).
"""

from __future__ import annotations

import logging
import os

from fastgw.prometheus import CollectorRegistry, MultiProcessCollector, generate_latest, mark_process_dead
from fastgw.prometheus import values as _values

__all__ = ["ENV", "choose_values", "cleanup", "merged", "multiprocess_dir", "setup", "worker_dead"]

log = logging.getLogger("fastgw.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"

_owned_dir: str | None = None  # the directory setup() created (removed by cleanup)
_owner_pid = 0
_saved_env: str | None = None
_saved_value_class: object = None
_registry: tuple[str, CollectorRegistry] | None = None


# prometheus_client's mmap values ask `process_identifier()` on every write to notice a fork (its default,
# os.getpid, is a syscall each time: ~0.1 µs on bare metal, ~0.8 µs sandboxed, times ~10 writes per request).
# The pid only changes across fork(), so it is cached here and refreshed in the child by an at-fork hook: the
# same answer as os.getpid() in every process, for the price of a list read. (Files are named after it, and
# mark_process_dead(pid) finds them by the real pid, which is why it must stay the real pid.)
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _cached_pid() -> int:
    return _PID[0]


def _mp_value_class() -> object:
    return _values.MultiProcessValue(_cached_pid)


def _multi() -> bool:
    return _values.ValueClass is not _values.MutexValue


def multiprocess_dir() -> str | None:
    """The directory this process's metrics are written to, or None when they are in-process only."""
    path = os.environ.get(ENV)
    if path and _multi() and os.path.isdir(path):
        return path
    return None


def choose_values() -> str | None:
    """Set prometheus_client's value class for the environment, before metrics are created; returns the
    multiprocess directory, or None for in-process values."""
    path = os.environ.get(ENV)
    if path and os.path.isdir(path):
        if not _multi():  # prometheus_client was imported before the variable was set: switch now
            _values.ValueClass = _mp_value_class()
        return path
    if _multi():
        # A multiprocess value class with no directory would fail on the first write: count locally instead.
        log.warning("%s=%r is not a directory; metrics cover this process only", ENV, path)
        _values.ValueClass = _values.MutexValue
    return None


def _private_dir(parent: str) -> str:
    """A new directory under `parent`, mode 0700 (only our user reads the counts), under a random name, as
    `tempfile.mkdtemp` makes one. Not tempfile itself: the master would import it before it forks, and with random,
    shutil, bz2 and lzma it is 0.8 MB of every worker's RSS."""
    for _ in range(100):
        path = os.path.join(os.path.abspath(parent), "fastgw-metrics-" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free name for a metrics directory under {parent}")


def setup(base: str | None = None) -> str:
    """Create a fresh private directory (under `base`, else systemd's $RUNTIME_DIRECTORY, else $TMPDIR or /tmp),
    point ``PROMETHEUS_MULTIPROC_DIR`` at it and switch to multiprocess values. Returns the path."""
    global _owned_dir, _owner_pid, _saved_env, _saved_value_class
    if _owned_dir is not None:
        cleanup()
    if base is None:
        base = os.environ.get("RUNTIME_DIRECTORY", "").split(":", 1)[0] or None
    path = _private_dir(base or os.environ.get("TMPDIR") or "/tmp")
    _saved_env = os.environ.get(ENV)
    _saved_value_class = _values.ValueClass
    os.environ[ENV] = path
    _values.ValueClass = _mp_value_class()
    _owned_dir, _owner_pid = path, os.getpid()
    return path


def cleanup() -> bool:
    """Remove the directory `setup` created and go back to in-process values. Only acts in the process that
    called `setup` (a forked worker calling it does nothing); returns whether it acted."""
    global _owned_dir, _saved_env, _saved_value_class, _registry
    path = _owned_dir
    if path is None or os.getpid() != _owner_pid:
        return False
    close = getattr(_values, "close_all_multiprocess_files", None)
    if close is not None:
        close()
    _registry = None
    _values.ValueClass = _saved_value_class
    if os.environ.get(ENV) == path:
        if _saved_env is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = _saved_env
    _owned_dir = _saved_env = _saved_value_class = None
    import shutil  # (at exit only: see _private_dir)

    shutil.rmtree(path, ignore_errors=True)
    return True


def worker_dead(pid: int) -> None:
    """A worker was reaped: its live gauges (in-flight requests, open streams) stop counting; its counters and
    histograms stay in the totals."""
    path = multiprocess_dir()
    if path is None:
        return
    try:
        mark_process_dead(pid, path)
    except OSError as e:  # a scrape-only concern: never let it stop the master
        log.warning("metrics: could not drop the gauges of pid %d: %s", pid, e)


def merged(path: str) -> bytes:
    """The exposition of every process's values in `path`."""
    global _registry
    reg = _registry
    if reg is None or reg[0] != path:
        r = CollectorRegistry()
        MultiProcessCollector(r, path=path)  # reads every *.db file at each collect
        reg = _registry = (path, r)
    return generate_latest(reg[1])
