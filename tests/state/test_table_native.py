"""The state table's record operations in C (fastgw/state/_tablec.c, built by `make`) against their Python form in
table.py: the same record bytes, the same CRC-32, the same records found, the same steps told to the crash hook,
and byte for byte the same file after any sequence of updates, redo area included (so that either form recovers
from the other's crash)."""

from __future__ import annotations

import mmap
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastgw.state import _tablec, table
from fastgw.state.table import Table, stored_key


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "_c", table._c)  # put back whatever a test switched


def _form(c: bool) -> None:
    table._c = _tablec if c else None


def _open(path: Path) -> Table:
    t = Table(str(path))
    assert t.try_lock()
    return t


def test_the_c_form_is_the_one_in_use() -> None:
    assert table._c is _tablec


def test_a_record_packs_to_the_struct_format() -> None:
    rng = random.Random(7)
    floats = [0.0, -0.0, 1.5, -2.25, 1e300, float("inf"), -float("inf"), 1.7e15, 3]
    for _ in range(3000):
        kb = rng.randbytes(rng.choice([0, 1, 20, 40, 71, 72]))
        h = rng.choice([0, 1, (1 << 63) - 1, rng.getrandbits(63)])
        a, d, e = (rng.choice(floats) if rng.random() < 0.3 else rng.uniform(-1e16, 1e16) for _ in range(3))
        b, c = (rng.choice([0, -1, (1 << 63) - 1, -(1 << 63), rng.getrandbits(40)]) for _ in range(2))
        tag = rng.randrange(256)
        assert _tablec.pack(tag, kb, h, a, b, c, d, e) == table._REC.pack(tag, len(kb), h, a, b, c, d, e, kb)
    nan = _tablec.pack(1, b"k", 1, float("nan"), 0, 0, 0.0, 0.0)
    assert nan == table._REC.pack(1, 1, 1, float("nan"), 0, 0, 0.0, 0.0, b"k")
    with pytest.raises(ValueError):
        _tablec.pack(1, bytes(73), 1, 0.0, 0, 0, 0.0, 0.0)  # stored_key never makes one: a clear error, no overflow
    with pytest.raises(ValueError):
        _tablec.pack(256, b"k", 1, 0.0, 0, 0, 0.0, 0.0)
    with pytest.raises(OverflowError):
        _tablec.pack(1, b"k", 1, 0.0, 1 << 63, 0, 0.0, 0.0)
    with pytest.raises(TypeError):
        _tablec.pack(1, "k", 1, 0.0, 0, 0, 0.0, 0.0)  # type: ignore[arg-type]


def test_a_keys_hash_is_the_python_forms() -> None:
    rng = random.Random(5)
    for n in [0, 1, 17, 40, 72, 6000]:  # 6000: past Adler-32's 5552-byte blocks
        kb = rng.randbytes(n)
        assert _tablec.key_hash(kb) == (zlib.adler32(kb) << 31) ^ zlib.crc32(kb)
    assert _tablec.key_hash(b"\xff" * 72) == (zlib.adler32(b"\xff" * 72) << 31) ^ zlib.crc32(b"\xff" * 72)
    kb = b"fastgw:cc:per-key:alice\0" + b"0123456789ab.17"
    _form(False)
    py = stored_key(kb)
    _form(True)
    assert stored_key(kb) == py
    with pytest.raises(TypeError):
        _tablec.key_hash("k")  # type: ignore[arg-type]


def test_crc32_is_zlibs() -> None:
    rng = random.Random(3)
    for n in [0, 1, 7, 8, 9, 63, 64, 65, 128 * 5 + 40, 4096]:
        data = rng.randbytes(n)
        seed = rng.getrandbits(32)
        assert _tablec.crc32(data) == zlib.crc32(data)
        assert _tablec.crc32(data, seed) == zlib.crc32(data, seed)


def test_both_forms_write_the_same_file_and_find_the_same_records(tmp_path: Path) -> None:
    """Two tables driven by one random sequence of finds, puts and deletes (keys repeated within an update, long
    probe clusters near the load limit), one through each form: every find answers the same, and after every commit
    the two files are the same bytes, the redo record and the crash hook's steps included."""
    rng = random.Random(11)
    keys = [stored_key(f"fastgw:rq:per-key:{i}".encode() + bytes(rng.randrange(60))) for i in range(1900)]
    _form(True)
    c_t = _open(tmp_path / "c.tbl")  # a handle's form is chosen when it is made
    _form(False)
    py_t = _open(tmp_path / "py.tbl")
    assert c_t._find is not None and py_t._find is None
    assert c_t.cap == py_t.cap == table.INITIAL_CAPACITY
    seen: list[str] = []

    def both(op: Callable[[Table], Any]) -> Any:
        got = op(c_t)
        assert op(py_t) == got
        return got

    try:
        for rnd in range(400):
            for _ in range(rng.randrange(1, 12)):
                kb, h = rng.choice(keys[:200 + rnd * 5])
                i, rec = both(lambda t: t.find(kb, h))
                r = rng.random()
                if rec is not None and r < 0.15:
                    both(lambda t: t.delete(i))
                elif rec is not None or c_t.used < c_t.cap * table.MAX_LOAD - 16:
                    fields = (rng.choice([1, 2, 3, 4, 5]), kb, h, rng.uniform(0, 1e15), rng.getrandbits(62),
                              rng.randrange(-5, 5), rng.random(), rng.random())
                    both(lambda t: t.put(i, rec is None, *fields))
            assert c_t.w == py_t.w and c_t.used == py_t.used
            hooks: dict[bool, list[str]] = {True: [], False: []}
            for c, t in ((True, c_t), (False, py_t)):
                table.crash_hook = hooks[c].append
                try:
                    t.commit()
                finally:
                    table.crash_hook = None
            assert hooks[True] == hooks[False] and (not hooks[True] or hooks[True][:2] == ["logged", "marked"])
            seen += hooks[True]
            assert c_t.mm is not None and py_t.mm is not None and c_t.mm[:] == py_t.mm[:]
        assert c_t.used > 1000 and seen.count("logged") > 350  # the table was filled well past its probe clusters
    finally:
        c_t.close()
        py_t.close()


def test_a_commit_from_c_is_recovered_by_the_redo_and_a_bad_record_changes_nothing(tmp_path: Path) -> None:
    t = _open(tmp_path / "t.tbl")
    assert t._commit is not None
    try:
        kb, h = stored_key(b"fastgw:rq:a")
        i, rec = t.find(kb, h)
        assert rec is None
        t.put(i, True, table.BUCKET, kb, h, 5.0, 1, 2)
        before = t.mm[:] if t.mm is not None else b""
        t.w[i + 1] = b"short"  # not a record: refused before anything is written
        with pytest.raises(ValueError):
            t.commit()
        assert t.mm is not None and t.mm[:] == before
        del t.w[i + 1]

        def die(step: str) -> None:
            if step == "marked":
                raise KeyboardInterrupt  # stands for the process's death: the mark is set, nothing applied yet
        table.crash_hook = die
        try:
            with pytest.raises(KeyboardInterrupt):
                t.commit()
        finally:
            table.crash_hook = None
        assert t.mm[table._OFF_MARK] == 1 and t.find(kb, h)[0] == i
        t.w.clear()
        assert struct.unpack_from("<B", t.mm, table._TABLE_AT + i * table.ENTRY)[0] == table.EMPTY
        t.unlock()
        assert t.try_lock()  # the next lock finds the mark and re-applies the record (Python's _redo)
        assert t.mm[table._OFF_MARK] == 0 and t.find(kb, h)[1] == (table.BUCKET, len(kb), h, 5.0, 1, 2, 0.0, 0.0,
                                                                  kb.ljust(table.KEY_MAX, b"\0"))
        assert t.used == 1
    finally:
        t.close()


def test_a_mapping_smaller_than_its_capacity_is_refused(tmp_path: Path) -> None:
    with mmap.mmap(-1, table._TABLE_AT + 64 * table.ENTRY) as mm:
        assert _tablec.find(mm, {}, b"k", 1, 64) == (1, None)
        with pytest.raises(OSError):
            _tablec.find(mm, {}, b"k", 1, 128)
        with pytest.raises(OSError):
            _tablec.commit(mm, {0: bytes(128)}, 1, 128, None)
        with pytest.raises(ValueError):
            _tablec.commit(mm, {64: bytes(128)}, 1, 64, None)  # an index past the capacity
        full = {j: _tablec.pack(1, b"x%d" % j, j, 0.0, 0, 0, 0.0, 0.0) for j in range(64)}
        with pytest.raises(OSError):
            _tablec.find(mm, full, b"k", 1, 64)  # no free record anywhere: an error, never an endless probe


def test_the_lock_in_c_says_busy_current_or_look_closer(tmp_path: Path) -> None:
    """`lock` is try_lock's common case: busy (-1) while another open file description holds the flock, the live
    count when the file is current, -2 (the Python checks, lock held) when it was moved or has a redo record."""
    import fcntl
    import os

    t = _open(tmp_path / "t.tbl")
    assert t._lock is not None and t.mm is not None
    try:
        kb, h = stored_key(b"fastgw:rq:a")
        t.put(t.find(kb, h)[0], True, table.BUCKET, kb, h, 1.0)
        t.commit()
        t.unlock()
        other = os.open(t.path, os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX)
            assert _tablec.lock(t.fd, t.mm, t.cap) == -1 and not t.try_lock()
            fcntl.flock(other, fcntl.LOCK_UN)
        finally:
            os.close(other)
        assert _tablec.lock(t.fd, t.mm, t.cap) == 1
        _tablec.unlock(t.fd)
        for off in (table._OFF_MARK, table._OFF_MOVED):
            t.mm[off] = 1
            assert _tablec.lock(t.fd, t.mm, t.cap) == -2
            _tablec.unlock(t.fd)
            t.mm[off] = 0
        t.mm[table._OFF_MARK] = 1  # a redo record to finish: try_lock takes the Python path and finishes it
        assert t.try_lock() and t.mm[table._OFF_MARK] == 0 and t.used == 1
        t.unlock()
        with pytest.raises(OSError):
            _tablec.lock(999_999, t.mm, t.cap)  # not an open descriptor: an error, never a silent "busy"
    finally:
        t.close()
