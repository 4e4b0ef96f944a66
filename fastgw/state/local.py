"""The `local` backend: one SQLite file (WAL mode) shared by every worker of the machine, no server.

Each operation is one `BEGIN IMMEDIATE` transaction running `fastgw.state.core` on the rows it reads:
SQLite's write lock (an fcntl lock on the file, released by the kernel if the holder dies) makes it atomic
across processes, so limits are exact across the workers of one instance, and the file keeps budgets
(and buckets) across restarts. The clock is read inside the lock, so TATs advance in commit order.

Why SQLite and not a state process or shared memory: SQLite is atomic even when a worker is SIGKILLed in
the middle of an update (a hand-made structure in shared memory is not: the kernel frees the lock, the half
update stays), persists without a writer of our own, and has no process to supervise. A state process would
move work rather than save it: a pipelined unix-socket round trip costs ~9 µs in the caller (the RESP client
of `fastgw.state.resp`, measured) plus at least as much in a single-threaded server every worker queues on.

Waiting: the lock is held for one transaction (tens of µs). A worker that finds it taken does not sleep in
SQLite's busy handler (that blocks the whole event loop, 1 ms at a time): it yields to its loop and tries
again, up to `timeout`, then raises `StateUnavailable`. Durability: WAL with `synchronous=NORMAL`: a committed
transaction survives the process (a gateway restart, a SIGKILL); an OS crash or power loss may lose the
transactions since the last checkpoint. Checkpoints (the only fsyncs) run in a thread of each worker that
wrote, every `CHECKPOINT_EVERY` s, never in a commit on the event loop; once the WAL passes `WAL_RESTART_BYTES`
the thread also restarts it, so the file (and the WAL index every read searches) stays bounded under load.

Cost (tests/state/cost.py, 2-vCPU VM shared with other work, uvloop, c=1): ~45-60 µs of CPU per admit +
reconcile of one limit (request + token bucket + slot) and one budget, p50 ~45-55 µs; the in-memory
semantics alone are ~6 µs, the rest is SQLite (BEGIN ~2.5, one read ~6, one write ~4-6, COMMIT's WAL append
~5-7 µs per transaction).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastgw.state import core
from fastgw.state.model import (EPOCH, KIND_BREAKER, Admission, Ask, BreakerState, Settle, StateUnavailable,
                                Usage, key, unescape)

__all__ = ["LocalBackend", "DB_NAME"]

log = logging.getLogger("fastgw.state")

DB_NAME = "state.db"
#: Seconds a worker may wait for the schema lock when the file is first created by several workers at once.
SETUP_TIMEOUT = 5.0
#: Transactions between two sweeps of expired rows (full buckets, dead leases, budgets of past periods).
SWEEP_EVERY = 10_000
#: First yields to the loop while the write lock is taken are free of any timer (another worker holds the
#: lock for tens of µs); after this many seconds of trying, each retry waits a timer tick instead.
SPIN = 0.0005
#: Seconds between two WAL checkpoints by a worker that wrote meanwhile. A checkpoint copies the WAL into the
#: database file and fsyncs it (synchronous=NORMAL); done by SQLite at commit time, that fsync blocked the event
#: loop for milliseconds every few hundred transactions (p99 of admit+reconcile 5 ms -> 0.25-1.3 ms off it).
CHECKPOINT_EVERY = 0.5
#: A WAL past this many bytes is restarted from its beginning after the round's checkpoint. Under steady writes a
#: PASSIVE checkpoint never catches up with the writers, so SQLite never rewinds the WAL by itself: it grew by ~8 KB
#: per transaction (600 MB in 12 s at 3,000 requests/s), and every read searched a longer WAL index.
WAL_RESTART_BYTES = 1 << 20
#: The WAL file is cut back to this size when it is restarted (after a burst, the disk is given back).
WAL_KEEP_BYTES = 4 << 20
#: How long (ms) the checkpointer's restart keeps trying for the write lock between the workers' transactions
#: (writers are not held up while it tries; once it has the lock, only for the few frames left to copy and the
#: transactions in progress, which are all short). If it cannot get in, the next round tries again.
WAL_RESTART_WAIT_MS = 200

# Buckets and ledgers share one table, so that an admission reads all it needs in one statement and writes it in
# one more: t=0 a GCRA bucket (a = TAT); t=1 a budget ledger (a = expiry in Unix s or 0, b = used, c = held).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, t INTEGER NOT NULL, a REAL NOT NULL, b INTEGER NOT NULL,
                               c INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slot (key TEXT NOT NULL, holder TEXT NOT NULL, until REAL NOT NULL,
                                 PRIMARY KEY (key, holder)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS breaker (key TEXT PRIMARY KEY, state TEXT NOT NULL, failures INTEGER NOT NULL,
                                    until REAL NOT NULL, probe_until REAL NOT NULL, hint_until REAL NOT NULL)
                                    WITHOUT ROWID;
"""
_PUT = "INSERT OR REPLACE INTO kv (key, t, a, b, c) VALUES (?, ?, ?, ?, ?)"

T = TypeVar("T")

#: This process's pid, kept by a fork hook: `os.getpid()` is a system call, and every transaction asks whether its
#: connection crossed a fork.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _marks(n: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - a deliberate memo
    s = _cache.get(n)
    if s is None:
        s = _cache[n] = ",".join("?" * n)
    return s


class LocalBackend:
    kind = "local"

    def __init__(self, path: str, prefix: str = "fastgw", timeout: float = 0.05,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.prefix = prefix
        self.timeout = timeout
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._txs = 0
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None

    # ---- connection and transactions ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        db = sqlite3.connect(os.path.join(self.path, DB_NAME), isolation_level=None, timeout=SETUP_TIMEOUT,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (and their fsync) run off the loop: _checkpointer
            db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
            db.executescript(_SCHEMA)
            db.execute("PRAGMA busy_timeout=0")  # from here on, waits are ours (see the module docstring)
        except sqlite3.Error:
            db.close()
            raise
        self._db, self._pid = db, _pid[0]
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, args=(self._stop,), name="fastgw-state-wal",
                                              daemon=True)
        self._checkpointer.start()
        return db

    def _checkpoints(self, stop: threading.Event) -> None:
        """A thread of the worker: PASSIVE checkpoints (they never block writers) on its own connection."""
        db: sqlite3.Connection | None = None
        done = 0
        wal = os.path.join(self.path, DB_NAME + "-wal")
        try:
            while not stop.wait(CHECKPOINT_EVERY):
                if self._txs == done:
                    continue
                done = self._txs
                try:
                    if db is None:
                        db = sqlite3.connect(os.path.join(self.path, DB_NAME), isolation_level=None,
                                             check_same_thread=False)
                        db.execute(f"PRAGMA busy_timeout={WAL_RESTART_WAIT_MS}")
                        db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if os.path.getsize(wal) > WAL_RESTART_BYTES:
                        # Only the frames written since the PASSIVE one are left to copy: writers wait a moment.
                        db.execute("PRAGMA wal_checkpoint(RESTART)")
                except (sqlite3.Error, OSError) as e:  # another worker's checkpoint, a full disk: the next round tries
                    log.debug("state checkpoint: %s", e)
        finally:
            if db is not None:
                db.close()

    def _conn(self) -> sqlite3.Connection:
        # A connection must not cross a fork: a worker opens its own (the parent's is left alone, not closed).
        if self._db is None or self._pid != _pid[0]:
            return self._open()
        return self._db

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(db, now, *args)` in one write transaction, retrying while another process holds the lock."""
        start = time.monotonic()
        while True:
            try:
                db = self._conn()
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise StateUnavailable(f"state database: {e}") from e
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    raise StateUnavailable(f"state database locked for {waited * 1e3:.0f} ms", self.timeout) from e
                await asyncio.sleep(0 if waited < SPIN else 0.001)
                continue
            except sqlite3.Error as e:
                raise StateUnavailable(f"state database: {e}") from e
            try:
                out = fn(db, (self._clock() - EPOCH) * 1e6, *args)
                self._txs += 1
                if self._txs % SWEEP_EVERY == 0:
                    self._sweep(db)
                db.execute("COMMIT")
                return out
            except BaseException as e:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(e, sqlite3.Error):
                    raise StateUnavailable(f"state database: {e}") from e
                raise

    def _sweep(self, db: sqlite3.Connection) -> None:
        now = (self._clock() - EPOCH) * 1e6
        db.execute("DELETE FROM kv WHERE (t = 0 AND a <= ?) OR (t = 1 AND a > 0 AND a < ?)", (now, self._clock()))
        db.execute("DELETE FROM slot WHERE until <= ?", (now,))

    # ---- quotas ---------------------------------------------------------------------------------------------

    async def admit(self, ask: Ask) -> Admission:
        return await self._tx(self._admit, ask)

    @staticmethod
    def _read(db: sqlite3.Connection, now: float, keys: list[str],
              slot_keys: list[str]) -> dict[str, tuple[float, int, int]]:
        """key -> (a, b, c) of the kv rows, and for each concurrency set (earliest lease end, live holders, 0)."""
        sql = f"SELECT key, a, b, c FROM kv WHERE key IN ({_marks(len(keys))})"
        if slot_keys:
            sql += (f" UNION ALL SELECT key, min(until), count(*), 0 FROM slot WHERE key IN ({_marks(len(slot_keys))})"
                    " AND until > ? GROUP BY key")
            return {k: (a, b, c) for k, a, b, c in db.execute(sql, [*keys, *slot_keys, now])}
        return {k: (a, b, c) for k, a, b, c in db.execute(sql, keys)}

    @staticmethod
    def _admit(db: sqlite3.Connection, now: float, ask: Ask) -> Admission:
        slot_keys = [s.key for s in ask.slots]
        got = LocalBackend._read(db, now, [*(r.key for r in ask.rates), *(b.key for b in ask.spends)], slot_keys)
        no = (0.0, 0, 0)
        tats = [got[r.key][0] if r.key in got else None for r in ask.rates]
        slots = [(got[k][1], got[k][0]) if k in got else (0, None) for k in slot_keys]
        spends = [got.get(b.key, no) for b in ask.spends]
        adm, new_tats = core.decide(now, ask, tats, slots, [u for _, u, _ in spends])
        if adm.ok:
            rows: list[tuple[str, int, float, int, int]] = [(r.key, 0, t, 0, 0) for r, t in zip(ask.rates, new_tats)]
            rows += [(b.key, 1, float(b.expires), u + b.cost, h + b.cost) for b, (_, u, h) in zip(ask.spends, spends)]
            db.executemany(_PUT, rows)
            if slot_keys:
                # a lease that ran out is replaced in place (its row may still be there)
                end = now + ask.lease * 1e6
                db.executemany("INSERT OR REPLACE INTO slot (key, holder, until) VALUES (?, ?, ?)",
                               [(k, ask.holder, end) for k in slot_keys])
        elif slot_keys and not all(s.ok for s in adm.slots):
            db.execute(f"DELETE FROM slot WHERE key IN ({_marks(len(slot_keys))}) AND until <= ?", [*slot_keys, now])
        return adm

    async def reconcile(self, settle: Settle) -> None:
        await self._tx(self._reconcile, settle)

    @staticmethod
    def _reconcile(db: sqlite3.Connection, now: float, settle: Settle) -> None:
        keys = [k for k, _, _ in settle.rates] + [k for k, _, _ in settle.spends]
        if keys:
            got = LocalBackend._read(db, now, keys, [])
            rows: list[tuple[str, int, float, int, int]] = []
            for k, interval, delta in settle.rates:
                rows.append((k, 0, core.adjust(now, got[k][0] if k in got else None, interval, delta), 0, 0))
            for k, reserved, actual in settle.spends:
                exp, used, held = got.get(k, (0.0, 0, 0))
                rows.append((k, 1, exp, used + actual - reserved, held - reserved))
            db.executemany(_PUT, rows)
        if settle.slots:
            db.executemany("DELETE FROM slot WHERE key = ? AND holder = ?", [(k, settle.holder) for k in settle.slots])

    async def renew(self, holder: str, slots: Sequence[str], lease: float) -> None:
        if slots:
            await self._tx(self._renew, holder, slots, lease)

    @staticmethod
    def _renew(db: sqlite3.Connection, now: float, holder: str, slots: Sequence[str], lease: float) -> None:
        db.executemany("UPDATE slot SET until = ? WHERE key = ? AND holder = ? AND until > ?",
                       [(now + lease * 1e6, k, holder, now) for k in slots])

    async def usage(self) -> Usage:
        return await self._tx(self._usage)

    def _usage(self, db: sqlite3.Connection, now: float) -> Usage:
        like = self.prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
        u = Usage(now)
        for k, t, a, b, c in db.execute("SELECT key, t, a, b, c FROM kv WHERE key LIKE ? ESCAPE '\\'", (like,)):
            if t == 0 and a > now:
                u.rates[k] = a
            elif t == 1 and (not a or a >= self._clock()):
                u.spends[k] = (b, c)
        for k, h, until in db.execute("SELECT key, holder, until FROM slot WHERE key LIKE ? ESCAPE '\\' "
                                      "AND until > ?", (like, now)):
            u.slots.setdefault(k, {})[h] = until
        head = len(key(self.prefix, KIND_BREAKER, ""))
        for row in db.execute("SELECT key, state, failures, until, probe_until, hint_until FROM breaker "
                              "WHERE key LIKE ? ESCAPE '\\'", (like,)):
            u.breakers[unescape(row[0][head:])] = core.Breaker(*row[1:]).view(now)
        return u

    # ---- shared breakers ------------------------------------------------------------------------------------

    def _breaker_op(self, db: sqlite3.Connection, now: float, target: str,
                    op: Callable[[core.Breaker, float], BreakerState]) -> BreakerState:
        k = key(self.prefix, KIND_BREAKER, target)
        row = db.execute("SELECT state, failures, until, probe_until, hint_until FROM breaker WHERE key = ?",
                         (k,)).fetchone()
        b = core.Breaker(*row) if row else core.Breaker()
        out = op(b, now)
        db.execute("INSERT OR REPLACE INTO breaker VALUES (?, ?, ?, ?, ?, ?)",
                   (k, b.state, b.failures, b.until, b.probe_until, b.hint_until))
        return out

    async def breaker_fail(self, target: str, failures: int, cooldown: float) -> BreakerState:
        return await self._tx(self._breaker_op, target, lambda b, now: core.breaker_fail(b, now, failures, cooldown))

    async def breaker_try_probe(self, target: str, lease: float) -> BreakerState:
        return await self._tx(self._breaker_op, target, lambda b, now: core.breaker_try_probe(b, now, lease))

    async def breaker_success(self, target: str) -> None:
        def op(b: core.Breaker, now: float) -> BreakerState:
            b.state, b.failures, b.until, b.probe_until = "closed", 0, 0.0, 0.0
            return b.view(now)
        await self._tx(self._breaker_op, target, op)

    async def upstream_hint(self, target: str, retry_after: float) -> None:
        def op(b: core.Breaker, now: float) -> BreakerState:
            b.hint_until = max(b.hint_until, now + retry_after * 1e6)
            return b.view(now)
        await self._tx(self._breaker_op, target, op)

    async def close(self) -> None:
        if self._db is not None and self._pid == _pid[0]:
            self._stop.set()
            if self._checkpointer is not None:
                self._checkpointer.join(5)
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._db.close()
        self._db = None
