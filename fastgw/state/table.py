"""A hash table of fixed-size records in one file mapped by every process of the machine: each update is
all-or-nothing even when its process is SIGKILLed halfway, and the file keeps the records across restarts.

    t = Table(path)
    kb, h = stored_key(b"fastgw:rq:per-key:alice")
    if t.try_lock():            # non-blocking: False while another process holds it (retry from the caller's loop)
        try:
            i, rec = t.find(kb, h)                 # rec: (tag, klen, hash, a, b, c, d, e, key) or None
            t.put(i, rec is None, BUCKET, kb, h, a=tat)
            t.commit()                             # the redo record, then the records, all or nothing
        except NeedsReplace:                       # past half full: t.replace(live records), then run it again
            ...
        finally:
            t.unlock()

Concurrency: one `flock` on the file, taken for one update (a few µs); the kernel releases it when its holder
dies, so a crashed process never leaves it held. Atomicity: an update is buffered, then written as a redo
record (every changed record and the new live count, with a CRC) into the file's log area; one byte then marks
the record committed, the records are applied in place, and the byte is cleared. A process SIGKILLed anywhere
in that sequence leaves either no mark (nothing of the update is in the table: it was only buffered or only
logged) or a mark, and whoever takes the lock next and finds it re-applies the record (idempotent) before
anything else. A SIGKILL cannot tear the record itself, since the mark is set only after it is complete.

Records: 128 bytes, aligned (none straddles a page): tag, key length, a 63-bit hash of the key, five numeric
fields and the key (at most `KEY_MAX` bytes; a longer key is stored as its first bytes and a digest of the
whole: `stored_key`). Open addressing with linear probing from `hash & (capacity - 1)`; deletion shifts the
following records of the cluster back (no tombstones, so probes stay short under steady insert/delete).

Growth and sweeping: `replace` writes a whole new file (a sweep of what expired, the new capacity) under the
lock, marks the old file moved, and renames the new one over the path; a process that next locks the old file
sees the mark and reopens the path (if the path still names the same file, the replacement died before its
rename: the mark is cleared). So a replacement is all-or-nothing too: the rename is its commit.

Durability: the mapping is the page cache, so a finished update survives its process at once; an `fsync` by a
thread of each writing process (every `fastgw.state.local.SYNC_EVERY` s) bounds what an OS crash or power loss
loses (like SQLite's WAL with synchronous=NORMAL between checkpoints). The header keeps the boot id of the last
replacement; after a reboot the owner rebuilds the file once (`rebooted`), so that counts derived from several
records (which the kernel may have written back at different times) are recomputed.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from hashlib import blake2b
from typing import Any, Final

__all__ = ["Table", "TableFull", "TableError", "NeedsReplace", "stored_key", "EMPTY", "BUCKET", "LEDGER", "SET",
           "HOLDER", "BREAKER", "KEY_MAX", "ENTRY", "INITIAL_CAPACITY", "MAX_CAPACITY", "MAX_LOAD", "REDO_MAX"]

#: Record size: one cache-line pair; 32 records a page, so a record never straddles a page.
ENTRY: Final = 128
#: Key bytes a record holds; a state key is `prefix:kind:name:subject[:period]`, ~30-60 bytes in practice.
KEY_MAX: Final = 72
#: Records of a new file (512 KiB, plus the header and redo area: ~1.1 MiB); a power of two, grown by `replace`.
INITIAL_CAPACITY: Final = 4096
#: At most this many records (512 MiB of file): an insert past MAX_LOAD of it that a sweep cannot bring under 3/8
#: is `TableFull`, a clear error, never a silent loss (~2 M live keys: buckets, budget periods, requests in flight).
MAX_CAPACITY = 1 << 22
#: A file is replaced (swept, then grown if still needed) when an insert would fill more than this fraction:
#: linear probing stays at ~2.5 probes per miss up to one half.
MAX_LOAD: Final = 0.5
#: Records one update may change (its redo record's room). An admission changes a handful; a sweep of many dead
#: leases that would change more is done by `replace` instead.
REDO_MAX: Final = 4096

EMPTY, BUCKET, LEDGER, SET, HOLDER, BREAKER = 0, 1, 2, 3, 4, 5

_MAGIC: Final = b"FGWTBL02"
_PAGE: Final = 4096
# header: magic, version, record size, capacity, live records | moved (32) | redo mark (33) | redo n, crc, used
# (40) | boot id (64). The format's version is in the magic: another layout is refused, not misread.
_HEAD: Final = struct.Struct("<8sIIQQ")
_OFF_USED: Final = 24
_OFF_MOVED: Final = 32
_OFF_MARK: Final = 33
_REDO_HEAD: Final = struct.Struct("<IIQ")
_OFF_REDO_HEAD: Final = 40
_OFF_BOOT: Final = 64
_REDO_AT: Final = _PAGE  # the redo record: REDO_MAX indices (u64), then REDO_MAX records
_REDO_RECS: Final = _REDO_AT + 8 * REDO_MAX
_TABLE_AT: Final = _REDO_RECS + -(-REDO_MAX * ENTRY // _PAGE) * _PAGE

_REC: Final = struct.Struct("<BB6xqdqqdd72s")  # tag, key length, hash, a, b, c, d, e, key
_KEYHEAD: Final = struct.Struct("<BB6xq")
_IDX: Final = struct.Struct("<Q")
#: The redo record's index list of an update of n records, compiled once for the small n of the request path.
_IDXS: Final = [struct.Struct(f"<{n}Q") for n in range(17)]
_ZERO: Final = bytes(ENTRY)
assert _REC.size == ENTRY and KEY_MAX == 72

#: A record as `_REC` unpacks it: (tag, key length, hash, a, b, c, d, e, key), ints but a, d, e (floats) and the
#: key (bytes). A plain tuple to the compiler on purpose: typed item by item, the compiled code converted all nine
#: items to C values and back at each call that passed one (a fifth of the limiter's instructions, issue 18).
Record = tuple[Any, ...]

#: The record operations in C (fastgw/state/_tablec.c: find, pack, commit, a key's hash, the lock), when `make`
#: built it and its layout is this module's; None: the Python below (a checkout without `make`; tests run both). A
#: test sets it to choose the form of the handles (`Table`) and keys (`stored_key`) made after.
_c: Any = None
try:
    from fastgw.state import _tablec

    if _tablec.LAYOUT == (ENTRY, KEY_MAX, _TABLE_AT, _REDO_AT, _REDO_RECS, _OFF_USED, _OFF_MOVED, _OFF_MARK,
                          _OFF_REDO_HEAD):
        _c = _tablec
except ImportError:
    pass

#: Tests set this to a callable that is told each step of a commit ("logged", "marked", "applying", "applied") and
#: of a replacement ("replacing"), to kill the process there; None on every real path.
crash_hook: Callable[[str], None] | None = None


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().decode().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)


BOOT_ID = _boot_id()


def stored_key(key: bytes) -> tuple[bytes, int]:
    """(the bytes a record holds for `key`, its 63-bit hash): a key over KEY_MAX bytes keeps its first bytes and
    a 64-bit digest of the whole, so that two long keys sharing a prefix stay apart."""
    if len(key) > KEY_MAX:
        key = key[:KEY_MAX - 17] + b"#" + blake2b(key, digest_size=8).hexdigest().encode()
    # CRC-32 places the record (the low bits), Adler-32 adds bits that tell keys apart before their bytes are
    # compared: ~10x cheaper than a cryptographic digest, and the full key decides anyway. In C when built (one
    # call, no big-int arithmetic: a holder's key is hashed twice a request).
    c = _c
    if c is not None:
        h: int = c.key_hash(key)
        return key, h
    return key, (zlib.adler32(key) << 31) ^ zlib.crc32(key)


class TableError(Exception):
    """The file cannot be used (not ours, unreadable, no room on disk)."""


class TableFull(TableError):
    """Even after a sweep, the live records would need more than MAX_CAPACITY."""


class NeedsReplace(Exception):
    """Raised inside an update that needs a bigger (or swept) file: the caller replaces it and runs the update
    again from the start (nothing of it was written)."""


class Table:
    """One process's handle on the shared file (open it in each process: a handle must not cross a fork)."""

    __slots__ = ("path", "initial", "created", "fd", "mm", "ino", "cap", "mask", "used", "w", "shifts", "rebooted",
                 "_locked", "_find", "_pack", "_commit", "_lock", "_unlock")

    def __init__(self, path: str, initial: Callable[[], Iterable[Record]] = tuple,
                 created: Callable[[], None] | None = None) -> None:
        self.path = path
        #: The records of a file created here (e.g. imported from an older store)...
        self.initial = initial
        #: ...and what to do once that file is in place (e.g. retire the older store: not before, so that a death in
        #: between leaves the older store to import again).
        self.created = created
        self.fd = -1
        self.mm: mmap.mmap | None = None
        self.ino = 0
        self.cap = 0
        self.mask = 0
        self.used = 0
        #: The update in progress: record index -> its new bytes.
        self.w: dict[int, bytes] = {}
        #: Deletions in this update (a record found before one may have moved).
        self.shifts = 0
        #: The mapped file was last replaced before the machine's last boot (see the module docstring).
        self.rebooted = False
        self._locked = False
        # The C record operations (None: this module's Python), taken when the handle is made: a function kept here
        # is one call, where `_c.find(...)` would look up the module global and then the function on each call.
        c = _c
        self._find: Callable[..., tuple[int, Record | None]] | None = c.find if c is not None else None
        self._pack: Callable[..., bytes] | None = c.pack if c is not None else None
        self._commit: Callable[..., None] | None = c.commit if c is not None else None
        self._lock: Callable[[int, mmap.mmap, int], int] | None = c.lock if c is not None else None
        self._unlock: Callable[[int], None] | None = c.unlock if c is not None else None

    # ---- the lock and the file ----------------------------------------------------------------------------------

    def try_lock(self) -> bool:
        """Take the lock without waiting; True with a current, consistent table mapped. False: another process
        holds it."""
        lock, mm = self._lock, self.mm
        if lock is not None and mm is not None and self.fd >= 0:
            # The common case in one C call: the lock, then the header says the file is current with no redo record
            # to finish (its live count, else -2: the checks below, with the lock held; -1: busy).
            used = lock(self.fd, mm, self.cap)
            if used == -1:
                return False
            self._locked = True
            if used >= 0:
                self.used = used
                self.shifts = 0
                return True
            if self._checked():
                return True
        for _ in range(8):  # a file replaced (or created) meanwhile: the new one, at once
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
                self.ino = os.fstat(self.fd).st_ino
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            self._locked = True
            if self._checked():
                return True
        return False

    def _checked(self) -> bool:
        """The lock just taken: True when `_current` says the table is usable, else the lock let go again."""
        try:
            if self._current():
                return True
        except BaseException:
            self.unlock()
            raise
        self.unlock()
        return False

    def unlock(self) -> None:
        if self._locked and self.fd >= 0:
            self._locked = False
            self.w.clear()
            cunlock = self._unlock
            if cunlock is not None:
                cunlock(self.fd)
            else:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _current(self) -> bool:
        """Holding the lock: map the file, follow a replacement, finish a committed update. True when usable."""
        mm = self.mm
        if mm is None:
            size = os.fstat(self.fd).st_size
            if size == 0:
                if self._path_moved():
                    return False
                self.replace(self.initial())  # a new file (or one whose creator died before writing it)
                if self.created is not None:
                    self.created()
                return False
            if size < _TABLE_AT:
                raise TableError(f"{self.path}: not a state table ({size} bytes)")
            mm = mmap.mmap(self.fd, size)
            magic, version, entry, cap, _ = _HEAD.unpack_from(mm, 0)
            if magic != _MAGIC or version != 1 or entry != ENTRY or size != _TABLE_AT + cap * ENTRY:
                mm.close()
                raise TableError(f"{self.path}: not a state table of this version")
            self.mm, self.cap, self.mask = mm, cap, cap - 1
            self.rebooted = mm[_OFF_BOOT:_OFF_BOOT + 16] != BOOT_ID
        if mm[_OFF_MOVED]:
            if self._path_moved():
                return False
            mm[_OFF_MOVED] = 0  # the replacement died before its rename: this file is still the one
        if mm[_OFF_MARK]:
            self._redo()
        self.used = _IDX.unpack_from(mm, _OFF_USED)[0]
        self.shifts = 0
        return True

    def _path_moved(self) -> bool:
        """Does the path name another file than ours now? Then drop ours (the caller retries on the new one)."""
        try:
            moved = os.stat(self.path).st_ino != self.ino
        except FileNotFoundError:
            moved = True
        if moved:
            self.close()
        return moved

    def close(self) -> None:
        """Drop the mapping and the descriptor (and with it the lock)."""
        self._locked = False
        self.w.clear()
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ---- reading and writing, inside the lock ---------------------------------------------------------------------

    def _at(self, i: int) -> bytes:
        e = self.w.get(i)
        if e is not None:
            return e
        off = _TABLE_AT + i * ENTRY
        return self.mm[off:off + ENTRY]  # type: ignore[index]

    def find(self, kb: bytes, h: int) -> tuple[int, Record | None]:
        """(index of the record of key `kb`, the record) or (index where it would go, None)."""
        cfind = self._find
        if cfind is not None:
            return cfind(self.mm, self.w, kb, h, self.cap)
        mm, w, mask = self.mm, self.w, self.mask
        i = h & mask
        unpack = _KEYHEAD.unpack_from
        while True:
            e = w.get(i)
            if e is None:
                off = _TABLE_AT + i * ENTRY
                tag, klen, eh = unpack(mm, off)  # type: ignore[arg-type]
                if tag == EMPTY:
                    return i, None
                if eh == h:
                    rec: Record = _REC.unpack_from(mm, off)  # type: ignore[arg-type]
                    if rec[8][:klen] == kb:
                        return i, rec
            else:
                tag, klen, eh = unpack(e)
                if tag == EMPTY:
                    return i, None
                if eh == h:
                    rec = _REC.unpack(e)
                    if rec[8][:klen] == kb:
                        return i, rec
            i = (i + 1) & mask

    def put(self, i: int, new: bool, tag: int, kb: bytes, h: int, a: float = 0.0, b: int = 0, c: int = 0,
            d: float = 0.0, e: float = 0.0) -> None:
        """Write record `i` (`new`: it was empty, as `find` said)."""
        if new:
            if (self.used + 1) > self.cap * MAX_LOAD:
                raise NeedsReplace
            self.used += 1
        cpack = self._pack
        if cpack is not None:
            self.w[i] = cpack(tag, kb, h, a, b, c, d, e)
        else:
            self.w[i] = _REC.pack(tag, len(kb), h, a, b, c, d, e, kb)

    def delete(self, i: int) -> None:
        """Remove record `i`, shifting back the records of its cluster that probed past it."""
        mask = self.mask
        j = i
        while True:
            j = (j + 1) & mask
            e = self._at(j)
            if e[0] == EMPTY:
                break
            home = _KEYHEAD.unpack_from(e)[2] & mask
            if (j - home) & mask >= (j - i) & mask:  # the hole lies between its home and it: move it back
                self.w[i] = e
                i = j
        self.w[i] = _ZERO
        self.used -= 1
        self.shifts += 1

    def holders_of(self, set_hash: int) -> list[tuple[int, Record]]:
        """Every HOLDER record whose `b` is `set_hash` (a search of the file for the hash's bytes, then of the
        update's own records)."""
        mm = self.mm
        assert mm is not None
        needle = struct.pack("<q", set_hash)
        out: list[tuple[int, Record]] = []
        end = _TABLE_AT + self.cap * ENTRY
        pos = mm.find(needle, _TABLE_AT)
        while 0 <= pos < end:
            off = pos - 24  # `b` is at byte 24 of a record
            if off >= _TABLE_AT and (off - _TABLE_AT) % ENTRY == 0:
                i = (off - _TABLE_AT) // ENTRY
                if i not in self.w and mm[off] == HOLDER:
                    out.append((i, _REC.unpack_from(mm, off)))
            pos = mm.find(needle, pos + 1)
        for i, e in self.w.items():
            if e[0] == HOLDER and e[24:32] == needle:
                out.append((i, _REC.unpack(e)))
        return out

    def records(self) -> Iterator[Record]:
        """Every live record of the file (not of an update in progress)."""
        mm = self.mm
        assert mm is not None
        for off in range(_TABLE_AT, _TABLE_AT + self.cap * ENTRY, ENTRY):
            if mm[off] != EMPTY:
                yield _REC.unpack_from(mm, off)

    def commit(self) -> None:
        """Make the update durable and visible, all or nothing (see the module docstring)."""
        w = self.w
        if not w:
            return
        n = len(w)
        if n > REDO_MAX:
            raise NeedsReplace
        mm = self.mm
        assert mm is not None
        ccommit = self._commit
        if ccommit is not None:
            ccommit(mm, w, self.used, self.cap, crash_hook)
            w.clear()
            self.shifts = 0
            return
        # the redo record: the indices, then the records (two C-level joins, no per-record packing)
        idx = (_IDXS[n] if n < 17 else struct.Struct(f"<{n}Q")).pack(*w)
        recs = b"".join(w.values())
        mm[_REDO_AT:_REDO_AT + 8 * n] = idx
        mm[_REDO_RECS:_REDO_RECS + n * ENTRY] = recs
        _REDO_HEAD.pack_into(mm, _OFF_REDO_HEAD, n, zlib.crc32(recs, zlib.crc32(idx)), self.used)
        hook = crash_hook
        if hook is not None:
            hook("logged")
        mm[_OFF_MARK] = 1
        if hook is not None:
            hook("marked")
        for i, e in w.items():
            off = _TABLE_AT + i * ENTRY
            mm[off:off + ENTRY] = e
            if hook is not None:
                hook("applying")  # (the test kills at the first)
        _IDX.pack_into(mm, _OFF_USED, self.used)
        if hook is not None:
            hook("applied")
        mm[_OFF_MARK] = 0
        w.clear()
        self.shifts = 0

    def _redo(self) -> None:
        """Re-apply a committed update whose process died before clearing its mark."""
        mm = self.mm
        assert mm is not None
        n, crc, used = _REDO_HEAD.unpack_from(mm, _OFF_REDO_HEAD)
        if n <= REDO_MAX:
            idx = mm[_REDO_AT:_REDO_AT + 8 * n]
            recs = mm[_REDO_RECS:_REDO_RECS + n * ENTRY]
            if zlib.crc32(recs, zlib.crc32(idx)) == crc:  # else torn by an OS crash (never by a process's death)
                for k, i in enumerate(struct.unpack(f"<{n}Q", idx)):
                    off = _TABLE_AT + i * ENTRY
                    mm[off:off + ENTRY] = recs[k * ENTRY:(k + 1) * ENTRY]
                _IDX.pack_into(mm, _OFF_USED, used)
        mm[_OFF_MARK] = 0

    # ---- replacement: sweep and growth ----------------------------------------------------------------------------

    def replace(self, records: Iterable[Record]) -> None:
        """Holding the lock: write `records` into a new file sized for them (a quarter full), rename it over the
        path, and drop this handle (the caller locks again and runs its update there)."""
        recs = list(records)
        cap = INITIAL_CAPACITY
        while cap < len(recs) * 4 and cap < MAX_CAPACITY:
            cap *= 2
        if len(recs) > cap * MAX_LOAD * 3 / 4:  # past this, replacements would follow each other closer and closer
            raise TableFull(f"{self.path}: {len(recs)} live keys need more than the {MAX_CAPACITY} records of "
                            "fastgw.state.table.MAX_CAPACITY")
        folder, name = os.path.split(self.path)
        for old in os.listdir(folder or "."):  # what a replacement that died before its rename left
            if old.startswith(name + ".") and old.endswith(".tmp"):
                os.unlink(os.path.join(folder, old))
        tmp = f"{self.path}.{os.getpid()}.tmp"
        size = _TABLE_AT + cap * ENTRY
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as mm:
                mask = cap - 1
                for rec in recs:
                    i = rec[2] & mask
                    while mm[_TABLE_AT + i * ENTRY] != EMPTY:
                        i = (i + 1) & mask
                    _REC.pack_into(mm, _TABLE_AT + i * ENTRY, *rec)
                mm[_OFF_BOOT:_OFF_BOOT + 16] = BOOT_ID
                _HEAD.pack_into(mm, 0, _MAGIC, 1, ENTRY, cap, len(recs))
            os.fsync(fd)  # the rename must not reach the disk before the contents (an OS crash would leave zeros)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if self.mm is not None:
            self.mm[_OFF_MOVED] = 1  # before the rename: a process locking this file after it must move
        if crash_hook is not None:
            crash_hook("replacing")
        os.replace(tmp, self.path)
        self.close()

