"""The `local` backend's table (fastgw.state.table): all-or-nothing under SIGKILL at every step of an update and of
a replacement, growth and sweeping, a clear error when full, persistence, the import of an earlier SQLite file,
and exact counts with several processes admitting and settling at once while the file grows."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop

from fastgw.state import Ask, LocalBackend, Rate, Settle, StateUnavailable, Usage, table
from fastgw.state.local import DB_NAME, TABLE_NAME
from fastgw.state.model import EPOCH
from tests.state import crasher

ROOT = Path(__file__).resolve().parents[2]


def _usage(where: Path, prefix: str = crasher.PREFIX) -> Usage:
    async def go() -> Usage:
        b = LocalBackend(str(where), prefix, 2.0)
        try:
            return await b.usage()
        finally:
            await b.close()
    return uvloop.run(go())


#: The table's record operations: Python, and C where `make` built it (fastgw/state/_tablec.c).
PATHS = ["py"] + (["c"] if table._c is not None else [])


def _crash(where: Path, step: str, keys: int = 0, path: str = PATHS[-1]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "tests.state.crasher", str(where), step, str(keys), path], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith(f"path {path}\n"), done.stdout
    return done


def _mark(where: Path) -> int:
    return (where / TABLE_NAME).read_bytes()[table._OFF_MARK]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("step", ["logged", "marked", "applying", "applied"])
def test_a_worker_killed_at_any_step_of_an_update_leaves_all_or_nothing(tmp_path: Path, step: str, path: str) -> None:
    p = crasher.PREFIX
    before = _usage(tmp_path)  # creates the table
    assert not before.rates and not before.spends
    done = _crash(tmp_path, step, path=path)
    assert done.returncode == -9 and "survived" not in done.stdout, done.stderr
    # Killed before the mark: nothing of the update is in the table. After it: the mark is still set (the records
    # may be half applied) and the next process to lock re-applies the whole record first.
    assert _mark(tmp_path) == (0 if step == "logged" else 1)
    u = _usage(tmp_path)
    assert _mark(tmp_path) == 0
    keys = {f"{p}:rq:l:x", f"{p}:tk:l:x"}
    if step == "logged":
        assert not u.rates and not u.slots and not u.spends
    else:
        assert set(u.rates) == keys
        assert list(u.slots[f"{p}:cc:l:x"]) == ["h1"]
        assert u.spends[f"{p}:bg:b:x:total"] == (7_000, 7_000)


@pytest.mark.parametrize("path", PATHS)
def test_a_torn_redo_record_is_not_applied(tmp_path: Path, path: str) -> None:
    """A process's death cannot tear the record (the mark comes after it); an OS crash can: its CRC fails and it is
    skipped rather than written over good records."""
    _usage(tmp_path)
    assert _crash(tmp_path, "marked", path=path).returncode == -9
    f = tmp_path / TABLE_NAME
    data = bytearray(f.read_bytes())
    data[table._REDO_RECS + 20] ^= 0xFF  # a byte of the first logged record
    f.write_bytes(bytes(data))
    u = _usage(tmp_path)
    assert _mark(tmp_path) == 0 and not u.spends and not u.slots


def test_a_worker_killed_while_replacing_the_file_leaves_the_old_one_working(tmp_path: Path) -> None:
    keys = int(table.INITIAL_CAPACITY * table.MAX_LOAD) - 3  # the crash admission's new records cross the load
    done = _crash(tmp_path, "replacing", keys)
    assert done.returncode == -9, done.stderr
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # the dead process's half-made file
    u = _usage(tmp_path)  # the old file, still at the path and marked moved: the mark is cleared
    assert len([k for k in u.rates if ":many:" in k]) == keys and not u.spends
    assert _crash(tmp_path, "never").stdout.endswith("survived\n")
    u = _usage(tmp_path)  # replaced by the survivor: bigger, with everything
    assert len([k for k in u.rates if ":many:" in k]) == keys and u.spends
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert (tmp_path / TABLE_NAME).stat().st_size > table._TABLE_AT + table.INITIAL_CAPACITY * table.ENTRY


def _admit_keys(b: LocalBackend, n: int, prefix: str, per_minute: float = 1.0) -> None:
    async def go() -> None:
        for i in range(n):
            assert (await b.admit(Ask(f"h{i}", (Rate(f"{prefix}:rq:l:{i}", 60e6 / per_minute, 1, 1),), (), (),
                                      60.0))).ok
    uvloop.run(go())


def test_the_table_grows_then_says_clearly_when_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "MAX_CAPACITY", table.INITIAL_CAPACITY * 2)
    b = LocalBackend(str(tmp_path), "g", 1.0)
    f = tmp_path / TABLE_NAME
    _admit_keys(b, 3000, "g")  # past half of the first file: replaced by one twice its size
    assert f.stat().st_size == table._TABLE_AT + 2 * table.INITIAL_CAPACITY * table.ENTRY
    assert len(uvloop.run(b.usage()).rates) == 3000

    async def more() -> None:
        for i in range(3000, 5000):
            await b.admit(Ask(f"h{i}", (Rate(f"g:rq:l:{i}", 60e6, 1, 1),), (), (), 60.0))
    with pytest.raises(StateUnavailable, match="4096 live keys need more than the 8192 records"):
        uvloop.run(more())
    assert len(uvloop.run(b.usage()).rates) == 4096  # everything admitted before is still there
    uvloop.run(b.close())


def test_expired_keys_are_swept_instead_of_growing_the_file(tmp_path: Path) -> None:
    now = [time.time()]
    b = LocalBackend(str(tmp_path), "s", 1.0, clock=lambda: now[0])
    f = tmp_path / TABLE_NAME
    for _ in range(4):  # 8,000 keys in all, each full again a second after its take
        _admit_keys(b, 2000, f"s{_}", per_minute=60.0)
        now[0] += 2.0
    assert f.stat().st_size == table._TABLE_AT + table.INITIAL_CAPACITY * table.ENTRY
    assert len(uvloop.run(b.usage()).rates) == 0
    uvloop.run(b.close())


def test_a_concurrency_set_stays_exact_through_churn_and_dead_leases(tmp_path: Path) -> None:
    """Holders come and go (deletions shift records back); a holder whose worker died is dropped once its lease
    ran out, and the refusal's wait is the exact earliest lease end even after the earliest holder left."""
    now = [time.time()]
    b = LocalBackend(str(tmp_path), "c", 1.0, clock=lambda: now[0])
    from fastgw.state import Slot
    s = "c:cc:l:x"

    def take(h: str, lease: float = 60.0) -> Ask:
        return Ask(h, (), (Slot(s, 3),), (), lease)

    async def go() -> None:
        for i in range(5000):
            a = take(f"x{i}")
            assert (await b.admit(a)).ok
            await b.reconcile(Settle(a.holder, (), (s,), ()))
        assert (await b.admit(take("dead", 10.0))).ok  # never settled: its worker "died"
        assert (await b.admit(take("a", 30.0))).ok
        assert (await b.admit(take("b", 40.0))).ok
        refused = await b.admit(take("c"))
        assert not refused.ok and refused.slots[0].in_use == 3 and refused.slots[0].wait == pytest.approx(10.0)
        await b.reconcile(Settle("a", (), (s,), ()))  # (not the earliest: still bounded by "dead")
        assert (await b.admit(take("a2", 50.0))).ok
        now[0] += 11.0  # "dead"'s lease ran out
        got = await b.admit(take("c"))
        assert got.ok and got.slots[0].in_use == 2
        refused = await b.admit(take("d"))
        assert not refused.ok and refused.slots[0].wait == pytest.approx(29.0)  # "b", exact
        assert set((await b.usage()).slots[s]) == {"b", "a2", "c"}
        await b.close()

    uvloop.run(go())


def _old_sqlite_file(where: Path) -> None:
    """A state.db as the SQLite backend (before issue 18) wrote it, prefix "i"."""
    unix = time.time()
    now = (unix - EPOCH) * 1e6
    db = sqlite3.connect(where / DB_NAME)
    db.executescript("CREATE TABLE kv (key TEXT PRIMARY KEY, t INTEGER, a REAL, b INTEGER, c INTEGER);"
                     "CREATE TABLE slot (key TEXT, holder TEXT, until REAL, PRIMARY KEY (key, holder));"
                     "CREATE TABLE breaker (key TEXT PRIMARY KEY, state TEXT, failures INTEGER, until REAL,"
                     " probe_until REAL, hint_until REAL);")
    db.execute("INSERT INTO kv VALUES ('i:bg:m:alice:2026-12', 1, ?, 5000, 1000)", (unix + 86400,))
    db.execute("INSERT INTO kv VALUES ('i:rq:l:alice', 0, ?, 0, 0)", (now + 30e6,))
    db.execute("INSERT INTO kv VALUES ('i:rq:l:gone', 0, ?, 0, 0)", (now - 1e6,))  # full again: not imported
    db.execute("INSERT INTO slot VALUES ('i:cc:l:alice', 'w1', ?)", (now + 30e6,))
    db.execute("INSERT INTO breaker VALUES ('i:br:up', 'open', 5, ?, 0, 0)", (now + 30e6,))
    db.commit()
    db.close()


def test_state_persists_across_restarts_and_an_old_sqlite_file_is_imported(tmp_path: Path) -> None:
    _old_sqlite_file(tmp_path)

    for _ in range(2):  # imported once, then read back from the table by a "restarted" gateway
        u = _usage(tmp_path, "i")
        assert u.spends == {"i:bg:m:alice:2026-12": (5000, 1000)}
        assert list(u.rates) == ["i:rq:l:alice"] and list(u.slots["i:cc:l:alice"]) == ["w1"]
        assert u.breakers["up"].state == "open" and u.breakers["up"].failures == 5
    assert not (tmp_path / DB_NAME).exists() and (tmp_path / f"{DB_NAME}.imported").exists()


def test_after_a_reboot_the_first_worker_rebuilds_derived_counts(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS crash may write back a holder's page and not its set's: the file of an earlier boot is rebuilt once,
    each set counted from its holders."""
    from fastgw.state import Slot
    s = "r:cc:l:x"
    b = LocalBackend(str(tmp_path), "r", 1.0)
    assert uvloop.run(b.admit(Ask("w1", (), (Slot(s, 2),), (), 60.0))).ok
    uvloop.run(b.close())
    t = table.Table(str(tmp_path / TABLE_NAME))
    assert t.try_lock()
    kb, h = table.stored_key(s.encode())
    i, rec = t.find(kb, h)
    assert rec is not None and rec[4] == 1
    t.put(i, False, table.SET, kb, h, rec[3], 0, 0)  # the set's page "lost": it says no holder
    t.commit()
    t.close()
    monkeypatch.setattr(table, "BOOT_ID", bytes(16))
    b = LocalBackend(str(tmp_path), "r", 1.0)

    async def go() -> None:
        assert (await b.admit(Ask("w2", (), (Slot(s, 2),), (), 60.0))).ok
        refused = await b.admit(Ask("w3", (), (Slot(s, 2),), (), 60.0))
        assert not refused.ok and refused.slots[0].in_use == 2
        await b.close()

    uvloop.run(go())


def _pairs(where: Path, prefix: str, n: int, keys: int) -> list[dict[str, int]]:
    start_at = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-m", "tests.state.pairs", str(where), prefix, str(n), str(keys),
                               str(start_at), str(k)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for k in range(3)]
    out = []
    for p in procs:
        o, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        out.append(json.loads(o.strip().splitlines()[-1]))
    return out


def test_exact_counts_with_processes_admitting_and_settling_while_the_file_grows(tmp_path: Path) -> None:
    from tests.state import pairs
    got = _pairs(tmp_path, "p", 300, 1500)
    assert sum(r["errors"] for r in got) == 0
    usage = _usage(tmp_path, "p")
    admitted = sum(r["admitted"] for r in got)
    assert admitted == 3 * 300
    assert usage.spends[pairs.LEDGER] == (admitted * pairs.ACTUAL, 0)  # every settlement applied, exactly once
    assert not usage.slots.get(pairs.SET)  # every slot released
    assert len([k for k in usage.rates if ":own:" in k]) == 3 * 1500  # each process's own keys, none lost
    assert (tmp_path / TABLE_NAME).stat().st_size > table._TABLE_AT + table.INITIAL_CAPACITY * table.ENTRY


def test_a_worker_killed_while_importing_leaves_the_sqlite_file_to_import_again(tmp_path: Path) -> None:
    _old_sqlite_file(tmp_path)
    assert _crash(tmp_path, "replacing").returncode == -9  # the first admission creates the table: killed there
    assert (tmp_path / DB_NAME).exists() and not (tmp_path / f"{DB_NAME}.imported").exists()

    assert _usage(tmp_path, "i").spends == {"i:bg:m:alice:2026-12": (5000, 1000)}
    assert not (tmp_path / DB_NAME).exists() and (tmp_path / f"{DB_NAME}.imported").exists()
