"""Whether a byte string holds any of a few fixed literals, in one Hyperscan pass.

For the pass-through hot path: CPython's `bytes.find` walks JSON text at about a byte per nanosecond for a
needle whose last byte is common (`]`, `:`), so asking "is it anywhere in this read?" of a 10 KB read costs
~7 µs per needle; Hyperscan answers for all of them at once in ~1 µs. Positive answers are rare there (one
event per stream), and the caller then looks with `bytes.find` for where, as before.
"""

from __future__ import annotations

import os
import re

import hyperscan

__all__ = ["Literals"]

#: This process's id, kept current across forks: `os.getpid()` is a system call each time (~0.8 µs sandboxed),
#: and `found` runs once per streamed read of every pass-through stream.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


class Literals:
    """`found(data)`: whether `data` contains at least one of `literals` (exact bytes)."""

    __slots__ = ("_literals", "_db", "_pid", "_hit", "_on_match")

    def __init__(self, *literals: bytes) -> None:
        if not literals or not all(literals):
            raise ValueError("Literals needs non-empty literals")
        self._literals = literals
        self._db: hyperscan.Database | None = None
        self._pid = 0
        self._hit = False
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
        self._hit = True

    def found(self, data: bytes) -> bool:
        """Whether any literal occurs in `data`."""
        db = self._db
        if db is None or self._pid != _PID[0]:
            db = self._compile()
        self._hit = False
        db.scan(data, match_event_handler=self._on_match)
        return self._hit
