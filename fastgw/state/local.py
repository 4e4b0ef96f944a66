"""The `local` backend: one file-backed shared table (`fastgw.state.table`) used by every worker of the machine,
no server.

Each operation is one update of the table under its lock, running `fastgw.state.core` on the records it reads:
the lock (an flock, released by the kernel if its holder dies) makes it atomic across processes, so limits are
exact across the workers of one instance; the table's redo record makes it all-or-nothing even when a worker is
SIGKILLed halfway; and the file keeps budgets (and buckets) across restarts. The clock is read inside the lock,
so TATs advance in commit order.

Records: a GCRA bucket (a = TAT; one at or before now reads as full, and stays until a sweep drops it), a budget
ledger (a = expiry in Unix s or 0, b = used, c = held, nano-USD), a concurrency set (b = holders, a = a lower bound
on their earliest lease end, c = 1 when that bound may be stale; kept at 0 holders until a sweep) with one record
per holder (key `set\\0holder`, a = lease end, b = the set's hash), and a breaker. A set's count is exact because
a holder whose lease ran out is removed as soon as the bound says one may have (`a <= now`); the exact earliest
end (a refusal's wait) is searched for only when the bound is stale.

Why this and not SQLite (the store until issue 18) or a state process: measured side by side on the shared 2-core
VM (tests/state/cost.py: admit + reconcile of a request bucket, a token bucket, a slot and a budget, one process,
c=1), SQLite in WAL mode cost 99-103 µs of CPU per pair and this table 45-47 µs (the in-memory semantics alone:
8 µs); through a gateway worker (one limit and one budget on every request, wrk c=64, streamed) the limiter added
0.19-0.28 ms per request on SQLite and 0.09-0.14 ms on the table. SQLite's floor is its statement machinery and
the WAL append of every commit; the table's is Python's own work (a lock pair ~1 µs, a record read ~0.6 µs, a
commit ~2 µs). A hand-made structure in shared memory was rejected before because a worker SIGKILLed mid-update
leaves half an update; the redo record of `fastgw.state.table` solves that (tests kill a writer at each step of a
commit and of a file replacement). A state process would move work rather than save it: a pipelined unix-socket
round trip costs ~9 µs in the caller (the RESP client of `fastgw.state.resp`, measured) plus at least as much in
a single-threaded server every worker queues on.

Waiting: the lock is held for one update (a few µs). A worker that finds it taken does not block its event loop:
it yields to the loop and tries again, up to `timeout`, then raises `StateUnavailable`. Durability: an update is
in the page cache when the operation returns, so it survives the process (a gateway restart, a SIGKILL); each
worker that wrote fsyncs the file from a thread every `SYNC_EVERY` s, so an OS crash or power loss loses at most
the updates since (as SQLite's WAL with synchronous=NORMAL lost those since its last checkpoint).

Upgrading from the SQLite store: the first worker to create the table imports the rows of an existing `state.db`
(buckets, budgets, slots, breakers) and renames that file to `state.db.imported`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from fastgw.state import core
from fastgw.state.model import (EPOCH, KIND_BREAKER, Admission, Ask, BreakerState, Settle, StateUnavailable,
                                Usage, key, unescape)
from fastgw.state.table import (BREAKER, BUCKET, HOLDER, LEDGER, SET, NeedsReplace, Record, Table, TableError,
                                stored_key)

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call

__all__ = ["LocalBackend", "TABLE_NAME", "DB_NAME"]

log = logging.getLogger("fastgw.state")

TABLE_NAME: Final = "state.tbl"
#: The SQLite file of earlier versions, imported once when the table is created.
DB_NAME: Final = "state.db"
#: First yields to the loop while the lock is taken are free of any timer (another worker holds it for a few
#: µs); after this many seconds of trying, each retry waits a timer tick instead.
SPIN: Final = 0.0005
#: Seconds between two fsyncs of the table by a worker that wrote meanwhile (off the event loop, in a thread).
SYNC_EVERY: Final = 0.5
#: Stored forms of keys kept per process (a key is encoded and hashed once); cleared when full.
KEY_CACHE: Final = 8192

_STATES: Final = ("closed", "open", "half_open")
_CODE: Final = {s: i for i, s in enumerate(_STATES)}

T = TypeVar("T")
_BUSY: Final = object()

#: This process's pid, kept by a fork hook: `os.getpid()` is a system call, and every operation asks whether its
#: table handle crossed a fork.
_pid: Final = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


class LocalBackend:
    kind = "local"
    remote = False

    def __init__(self, path: str, prefix: str = "fastgw", timeout: float = 0.05,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.prefix = prefix
        self.timeout = timeout
        self._clock = clock
        self._t: Table | None = None
        self._pid = 0
        self._keys: dict[str, tuple[bytes, int]] = {}
        self._writes = 0
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None

    # ---- the table and its updates ----------------------------------------------------------------------------

    def _table(self) -> Table:
        # A handle must not cross a fork: a worker opens its own (the parent's is left alone, not closed).
        t = self._t
        if t is None or self._pid != _pid[0]:
            os.makedirs(self.path, mode=0o750, exist_ok=True)
            t = self._t = Table(os.path.join(self.path, TABLE_NAME), self._import, self._imported)
            self._pid = _pid[0]
            self._stop = threading.Event()
            self._syncer = threading.Thread(target=self._syncs, args=(self._stop, t.path), name="fastgw-state-sync",
                                            daemon=True)
            self._syncer.start()
        return t

    def _syncs(self, stop: threading.Event, path: str) -> None:
        """A thread of the worker: fsync the table (whatever file the path names now) after writes."""
        done = 0
        while not stop.wait(SYNC_EVERY):
            if self._writes == done:
                continue
            done = self._writes
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:  # a full disk, a replacement in between: the next round tries again
                log.debug("state sync: %s", e)

    def _key(self, k: str) -> tuple[bytes, int]:
        got = self._keys.get(k)
        if got is None:
            if len(self._keys) >= KEY_CACHE:
                self._keys.clear()
            got = self._keys[k] = stored_key(k.encode())
        return got

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(table, now, *args)` as one update, retrying while another process holds the lock."""
        out = self._try(fn, args)
        if out is _BUSY:
            out = await self._wait(fn, args)
        return out  # type: ignore[return-value]

    async def _wait(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        start = _monotonic()
        while True:
            waited = _monotonic() - start
            if waited >= self.timeout:
                raise StateUnavailable(f"state table locked for {waited * 1e3:.0f} ms", self.timeout)
            await asyncio.sleep(0 if waited < SPIN else 0.001)
            out = self._try(fn, args)
            if out is not _BUSY:
                return out  # type: ignore[return-value]

    def _try(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T | object:
        """One attempt: `fn`'s result, or _BUSY when another process holds the lock."""
        while True:
            try:
                t = self._t if self._pid == _pid[0] and self._t is not None else self._table()
                if not t.try_lock():
                    return _BUSY
            except (OSError, TableError) as e:
                raise StateUnavailable(f"state table: {e}") from e
            try:
                try:
                    if t.rebooted:
                        raise NeedsReplace
                    out = fn(t, (self._clock() - EPOCH) * 1e6, *args)
                    t.commit()
                    self._writes += 1
                    return out
                except NeedsReplace:
                    self._sweep(t)
            except (OSError, TableError) as e:
                raise StateUnavailable(f"state table: {e}") from e
            finally:
                t.unlock()

    def _sweep(self, t: Table) -> None:
        """Replace the file by its live records, sized for them: full buckets, dead leases and budgets of past
        periods go; each set's count and earliest lease end are recomputed from its holders."""
        t.w.clear()
        t.replace(_live(t.records(), (self._clock() - EPOCH) * 1e6, self._clock()))

    def _import(self) -> list[Record]:
        """The records of an earlier version's SQLite file, if there is one (renamed once read)."""
        db = os.path.join(self.path, DB_NAME)
        if not os.path.exists(db):
            return []
        import sqlite3

        recs: list[Record] = []
        try:
            con = sqlite3.connect(db)
        except sqlite3.Error as e:
            raise TableError(f"{db}: {e}") from e
        try:
            for k, t, a, b, c in con.execute("SELECT key, t, a, b, c FROM kv"):
                kb, h = stored_key(k.encode())
                recs.append((BUCKET, len(kb), h, a, 0, 0, 0.0, 0.0, kb) if t == 0 else
                            (LEDGER, len(kb), h, a, b, c, 0.0, 0.0, kb))
            for k, holder, until in con.execute("SELECT key, holder, until FROM slot"):
                sb, sh = stored_key(k.encode())
                hb, hh = stored_key(k.encode() + b"\0" + holder.encode())
                recs.append((SET, len(sb), sh, until, 0, 1, 0.0, 0.0, sb))
                recs.append((HOLDER, len(hb), hh, until, sh, 0, 0.0, 0.0, hb))
            for k, state, failures, until, probe_until, hint_until in con.execute(
                    "SELECT key, state, failures, until, probe_until, hint_until FROM breaker"):
                kb, h = stored_key(k.encode())
                recs.append((BREAKER, len(kb), h, until, failures, _CODE.get(state, 0), probe_until, hint_until,
                             kb))
        except sqlite3.Error as e:
            raise TableError(f"{db}: cannot import: {e}") from e
        finally:
            con.close()
        clock = self._clock()
        recs = _live(recs, (clock - EPOCH) * 1e6, clock)
        log.warning("state: importing %d records from %s", len(recs), db)
        return recs

    def _imported(self) -> None:
        """The table holding what `_import` read is in place: the SQLite file is renamed, never read again."""
        db = os.path.join(self.path, DB_NAME)
        for side in ("", "-wal", "-shm"):
            if os.path.exists(db + side):
                os.replace(db + side, db + ".imported" + side)

    # ---- quotas -----------------------------------------------------------------------------------------------

    async def admit(self, ask: Ask, orphan: Callable[[Admission], None] | None = None) -> Admission:
        return await self._tx(self._admit, ask)

    def _set(self, t: Table, kb: bytes, h: int, now: float, exact: bool) -> tuple[int, float | None]:
        """(live holders, earliest lease end) of a set, removing the holders whose lease ran out when its bound
        says one may have (and searching for the exact earliest end when `exact` and the bound is stale)."""
        return self._set_at(t, kb, h, now, exact)[:2]

    def _set_at(self, t: Table, kb: bytes, h: int, now: float, exact: bool
                ) -> tuple[int, float | None, int, Record | None]:
        """`_set`, with the set's index and record as found when this left it as it was (else record None)."""
        i, rec = t.find(kb, h)
        if rec is None:
            return 0, None, i, None
        n, first, stale = rec[4], rec[3], rec[5]
        if n <= 0:
            return 0, None, i, rec
        if first > now and not (exact and stale):
            return n, first, i, rec
        found = t.holders_of(h)
        live = [r[3] for _, r in found if r[3] > now]
        dead = [r for _, r in found if r[3] <= now]
        for r in dead:  # each found again: a deletion may move the others
            t.delete(t.find(r[8][:r[1]], r[2])[0])
        if dead:
            i, rec = t.find(kb, h)
            assert rec is not None
        if not live:
            t.put(i, False, SET, kb, h, 0.0, 0, 0)
            return 0, None, i, None
        first = min(live)
        t.put(i, False, SET, kb, h, first, len(live), 0)
        return len(live), first, i, None

    def _admit(self, t: Table, now: float, ask: Ask) -> Admission:
        # Methods are called on their objects, not through locals bound to them: compiled, `t.find(...)` is a direct
        # C call and a bound method in a local a generic one (with `*args`, a tuple built per call besides).
        tats: list[float | None] = []
        found: list[tuple[int, Record | None]] = []
        for r in ask.rates:
            kb, h = self._key(r.key)
            got = t.find(kb, h)
            found.append(got)
            rec = got[1]
            tats.append(rec[3] if rec is not None and rec[3] > now else None)
        sets: list[tuple[int, float | None, int, Record | None]] = []
        for s in ask.slots:
            kb, h = self._key(s.key)  # (not `*self._key(...)`: a star call is a generic one, a tuple built per call)
            sets.append(self._set_at(t, kb, h, now, False))
        slots = [(n, first) for n, first, _, _ in sets]
        used: list[int] = []
        for b in ask.spends:
            kb, h = self._key(b.key)
            got = t.find(kb, h)
            found.append(got)
            used.append(got[1][4] if got[1] is not None else 0)
        adm, new_tats = core.decide(now, ask, tats, slots, used)
        if not adm.ok:
            if ask.slots and any(not s.ok for s in adm.slots):
                # the wait is until the earliest lease end: exact, not the bound
                for s, st in zip(ask.slots, adm.slots):
                    if not st.ok:
                        kb, h = self._key(s.key)
                        first = self._set(t, kb, h, now, True)[1]
                        st.wait = 0.0 if first is None else max(0.0, (first - now) / 1e6)
            return adm
        # A record found above is still where it was unless something was deleted since (`shifts`); a new key's
        # place may have been taken by another new key: found again.
        fresh = t.shifts == 0
        k = 0
        for r, tat in zip(ask.rates, new_tats):
            kb, h = self._key(r.key)
            i, rec = found[k] if fresh and found[k][1] is not None else t.find(kb, h)
            k += 1
            t.put(i, rec is None, BUCKET, kb, h, tat)  # a TAT <= now reads as full; the sweep drops it
        if ask.slots:
            end = now + ask.lease * 1e6
            hb = ask.holder.encode()
            for s, (_, _, i, rec) in zip(ask.slots, sets):
                kb, h = self._key(s.key)
                if not fresh or rec is None or i in t.w:  # moved, rewritten, or new (its place may be taken)
                    i, rec = t.find(kb, h)
                if rec is None or rec[4] <= 0:
                    t.put(i, rec is None, SET, kb, h, end, 1, 0)
                else:
                    t.put(i, False, SET, kb, h, min(rec[3], end), rec[4] + 1, rec[5])
                hkb, hh = stored_key(kb + b"\0" + hb)
                j, old = t.find(hkb, hh)
                t.put(j, old is None, HOLDER, hkb, hh, end, h)
        for b in ask.spends:
            kb, h = self._key(b.key)
            i, rec = found[k] if fresh and found[k][1] is not None else t.find(kb, h)
            k += 1
            u, held = (rec[4], rec[5]) if rec is not None else (0, 0)
            t.put(i, rec is None, LEDGER, kb, h, float(b.expires), u + b.cost, held + b.cost)
        return adm

    async def reconcile(self, settle: Settle, late: Callable[[bool], None] | None = None) -> None:
        await self._tx(self._reconcile, settle)

    def _reconcile(self, t: Table, now: float, settle: Settle) -> None:
        for k, interval, delta in settle.rates:
            kb, h = self._key(k)
            i, rec = t.find(kb, h)
            tat = core.adjust(now, rec[3] if rec is not None else None, interval, delta)
            if tat > now or rec is not None:  # a TAT <= now reads as full: kept for the next take, swept later
                t.put(i, rec is None, BUCKET, kb, h, tat)
        for k, reserved, actual in settle.spends:
            kb, h = self._key(k)
            i, rec = t.find(kb, h)
            exp, u, held = (rec[3], rec[4], rec[5]) if rec is not None else (0.0, 0, 0)
            t.put(i, rec is None, LEDGER, kb, h, exp, u + actual - reserved, held - reserved)
        if settle.slots:
            hb = settle.holder.encode()
            for k in settle.slots:
                kb, h = self._key(k)
                hkb, hh = stored_key(kb + b"\0" + hb)
                j, holder = t.find(hkb, hh)
                if holder is None:
                    continue  # settled twice, or its lease ran out and it was removed
                t.delete(j)
                i, rec = t.find(kb, h)
                if rec is not None and rec[4] > 0:  # an empty set stays for the next admission; swept later
                    t.put(i, False, SET, kb, h, rec[3], rec[4] - 1, 1 if holder[3] <= rec[3] else rec[5])

    async def renew(self, holder: str, slots: Sequence[str], lease: float) -> None:
        if slots:
            await self._tx(self._renew, holder, slots, lease)

    def _renew(self, t: Table, now: float, holder: str, slots: Sequence[str], lease: float) -> None:
        hb = holder.encode()
        for k in slots:
            kb, h = self._key(k)
            hkb, hh = stored_key(kb + b"\0" + hb)
            j, rec = t.find(hkb, hh)
            if rec is None or rec[3] <= now:
                continue
            t.put(j, False, HOLDER, hkb, hh, now + lease * 1e6, h)
            i, s = t.find(kb, h)
            if s is not None and rec[3] <= s[3]:  # it held the earliest end: the bound may be stale now
                t.put(i, False, SET, kb, h, s[3], s[4], 1)

    async def usage(self) -> Usage:
        return await self._tx(self._usage)

    def _usage(self, t: Table, now: float) -> Usage:
        unix = self._clock()
        mine = (self.prefix + ":").encode()
        u = Usage(now)
        sets: dict[int, str] = {}
        holders: list[Record] = []
        head = len(key(self.prefix, KIND_BREAKER, ""))
        for rec in t.records():
            tag, kb = rec[0], rec[8][:rec[1]]
            if not kb.startswith(mine):
                continue
            k = kb.decode(errors="replace")
            if tag == BUCKET and rec[3] > now:
                u.rates[k] = rec[3]
            elif tag == LEDGER and (not rec[3] or rec[3] >= unix):
                u.spends[k] = (rec[4], rec[5])
            elif tag == SET:
                sets[rec[2]] = k
            elif tag == HOLDER and rec[3] > now:
                holders.append(rec)
            elif tag == BREAKER:
                u.breakers[unescape(k[head:])] = _breaker(rec).view(now)
        for rec in holders:
            set_key = sets.get(rec[4])
            if set_key is not None:
                name = rec[8][:rec[1]].decode(errors="replace")
                u.slots.setdefault(set_key, {})[name.partition("\0")[2] or name] = rec[3]
        return u

    # ---- shared breakers ----------------------------------------------------------------------------------------

    def _breaker_op(self, t: Table, now: float, target: str,
                    op: Callable[[core.Breaker, float], BreakerState]) -> BreakerState:
        kb, h = self._key(key(self.prefix, KIND_BREAKER, target))
        i, rec = t.find(kb, h)
        b = _breaker(rec) if rec is not None else core.Breaker()
        out = op(b, now)
        t.put(i, rec is None, BREAKER, kb, h, b.until, b.failures, _CODE[b.state], b.probe_until, b.hint_until)
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
        if self._t is not None and self._pid == _pid[0]:
            self._stop.set()
            if self._syncer is not None:
                self._syncer.join(5)
            self._t.close()
        self._t = None


def _breaker(rec: Record) -> core.Breaker:
    return core.Breaker(_STATES[rec[5]] if 0 <= rec[5] < 3 else "closed", rec[4], rec[3], rec[6], rec[7])


def _live(records: Iterable[Record], now: float, unix: float) -> list[Record]:
    """What a sweep keeps: buckets not yet full, ledgers of live periods, breakers, holders whose lease runs, and
    each set with its holders counted and its exact earliest lease end (a set without holders goes)."""
    out: list[Record] = []
    sets: dict[int, Record] = {}
    counts: dict[int, list[float]] = {}
    for rec in records:
        tag = rec[0]
        if tag == BUCKET:
            if rec[3] > now:
                out.append(rec)
        elif tag == LEDGER:
            if not (rec[3] > 0 and rec[3] < unix):
                out.append(rec)
        elif tag == SET:
            sets[rec[2]] = rec
        elif tag == HOLDER:
            if rec[3] > now:
                out.append(rec)
                counts.setdefault(rec[4], []).append(rec[3])
        else:
            out.append(rec)
    for h, rec in sets.items():
        ends = counts.get(h)
        if ends:
            out.append((SET, rec[1], h, min(ends), len(ends), 0, 0.0, 0.0, rec[8]))
    # a holder whose set record is missing (an OS crash wrote back one page and not the other) goes too
    return [r for r in out if r[0] != HOLDER or r[4] in sets]
