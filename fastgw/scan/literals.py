"""Where the first of a few fixed literals starts in a byte string (or that none is there), in one Hyperscan pass.

For the pass-through hot path: CPython's `bytes.find` walks JSON text at a few bytes per nanosecond for a
needle whose last byte is common (`]`, `:`), a full pass per needle, while Hyperscan answers for all of them in
one pass. Measured on the mock's 53-event answer with the usage chunk (12 KB, bench/RESULTS.md 21:30): a scan
for whether and then two `find`s for where, 11.2 µs; `first`, 1.75 µs; a read without the chunk costs both ~1.5 µs.
"""

from __future__ import annotations

import os
import re

import hyperscan

__all__ = ["Literals"]

#: This process's id, kept current across forks: `os.getpid()` is a system call each time (~0.8 µs sandboxed),
#: and `first` runs once per streamed read of every pass-through stream.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


class Literals:
    """`first(data, start)`: where the first of `literals` (exact bytes) in `data` from `start` begins, or -1."""

    __slots__ = ("_literals", "_sizes", "_db", "_pid", "_at", "_on_match")

    def __init__(self, *literals: bytes) -> None:
        if not literals or not all(literals):
            raise ValueError("Literals needs non-empty literals")
        self._literals = literals
        self._sizes = [len(x) for x in literals]
        self._db: hyperscan.Database | None = None
        self._pid = 0
        self._at = -1
        self._on_match = self._match  # one bound method for every scan

    def _compile(self) -> hyperscan.Database:
        # Compiled (with its scratch) in the process that scans: Hyperscan scratch is not shared across a fork.
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        n = len(self._literals)
        db.compile(expressions=[re.escape(x) for x in self._literals], ids=list(range(n)), elements=n,
                   flags=[hyperscan.HS_FLAG_SINGLEMATCH] * n)
        self._db, self._pid = db, _PID[0]
        return db

    def _match(self, pid: int, start: int, end: int, flags: int, ctx: object) -> None:
        # Each literal reports its first match only (SINGLEMATCH); the earliest start of those is the answer.
        at = end - self._sizes[pid]
        if self._at < 0 or at < self._at:
            self._at = at

    def first(self, data: bytes, start: int = 0) -> int:
        """Where the first occurrence of any literal in `data[start:]` starts (an index into `data`), or -1."""
        if start >= len(data):
            return -1
        db = self._db
        if db is None or self._pid != _PID[0]:
            db = self._compile()
        self._at = -1
        # A view from `start`, not a copy of the rest (the extension takes any buffer; its stub says bytes).
        view = memoryview(data)[start:] if start else data
        db.scan(view, self._on_match)  # type: ignore[type-var]  # positional: no keyword parsing
        return self._at if self._at < 0 else self._at + start
