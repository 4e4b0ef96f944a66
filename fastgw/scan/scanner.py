"""A per-stream scanner: Hyperscan stream mode plus the holdback rule that makes streaming redaction leak-free.

Feed the stream's bytes in order (each byte once); `settle()` answers two things:
up to which offset the text is final (no match can still start before it), and
which spans, resolved leftmost-longest, lie before that offset. Redacting the
whole text at once gives exactly the spans that settling a stream in pieces does,
because both are the same scan and the same resolution.

Holdback: for each group of patterns (same alphabet, start bytes, width) we track
the length of the text's trailing run of bytes in that alphabet, updated from the
new bytes only. A match still in progress lies inside such a run and within the
group's width, so holding from the run's first possible start byte is enough.
"""

from __future__ import annotations

from fastgw.scan.database import ScanDB, Span

__all__ = ["StreamScanner", "find_spans"]


def _noop(*_args: object) -> None:
    return None


class StreamScanner:
    """Scanner for one text stream (one choice's content, or one tool call's arguments)."""

    __slots__ = ("_db", "_stream", "_on_match", "_new", "_cands", "_chunks", "_chunks_len", "_runs", "end",
                 "scanned", "_done_to", "_closed")

    def __init__(self, db: ScanDB) -> None:
        self._db = db
        # hyperscan 0.9.1 keeps no reference to the handler it is given: we must, for the stream's
        # whole life, or the next match calls freed memory (a segfault). A bound method stored here does.
        self._on_match = self._match
        stream = db.hs.stream(match_event_handler=self._on_match)
        stream.__enter__()
        self._stream = stream
        self._new: list[tuple[int, int, int]] = []
        #: Validated candidates not yet settled: (start, end, pattern index).
        self._cands: list[tuple[int, int, int]] = []
        #: Recent input, newest last, at least max_width bytes when available (for validators and holdback).
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        #: Per holdback group: length of the trailing run of bytes in its alphabet.
        self._runs = [0] * len(db.groups)
        self.end = 0  # bytes fed so far
        #: Bytes fed to Hyperscan (each content byte exactly once: tests count it).
        self.scanned = 0
        self._done_to = 0  # settled up to here; spans before it are final and reported
        self._closed = False

    def _match(self, pid: int, start: int, end: int, flags: int, ctx: object) -> None:
        self._new.append((start, end, pid))

    # ---- feeding -------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Scan the next bytes of the stream."""
        if not data:
            return
        if self._closed:
            raise RuntimeError("scanner closed")
        self._stream.scan(data)
        n = len(data)
        self.scanned += n
        self.end += n
        self._chunks.append(data)
        self._chunks_len += n
        runs = self._runs
        for i, g in enumerate(self._db.groups):
            r = n - len(data.rstrip(g.alphabet))
            runs[i] = runs[i] + n if r == n else r
        if self._new:
            self._validate()
        keep = self._db.max_width
        if self._chunks_len > 2 * keep + n:
            # Compact rarely (amortised O(1) copies per byte), keeping the last max_width bytes.
            tail = b"".join(self._chunks)[-keep:]
            self._chunks = [tail]
            self._chunks_len = len(tail)

    def _suffix(self, n: int) -> bytes:
        """The last n bytes fed (n <= what is kept)."""
        last = self._chunks[-1]
        if n <= len(last):
            return last[-n:] if n < len(last) else last
        return b"".join(self._chunks)[-n:]

    def _validate(self) -> None:
        buf = b"".join(self._chunks)
        base = self.end - len(buf)
        pats = self._db.patterns
        for start, end, pid in self._new:
            p = pats[pid]
            if end - start > p.max_width or start < base:
                continue  # wider than the pattern allows: not a match (the same rule holds for whole text)
            if p.validator is None or p.validator(buf[start - base:end - base]):
                self._cands.append((start, end, pid))
        self._new.clear()

    # ---- holdback --------------------------------------------------------------------------
    def holdback(self) -> int:
        """Bytes at the end that could still be (part of) a match in progress."""
        hold = 0
        runs = self._runs
        for i, g in enumerate(self._db.groups):
            r = runs[i]
            if r <= hold:
                continue
            if r > g.width:
                r = g.width
            if g.start_re is None:
                h = r
            else:
                m = g.start_re.search(self._suffix(r))
                if m is None:
                    continue
                h = r - m.start()
            if h > hold:
                hold = h
        return hold

    # ---- settling --------------------------------------------------------------------------------
    def settle(self, final: bool = False) -> tuple[int, list[Span]]:
        """(safe offset, spans newly final before it). With final=True the stream is closed first."""
        if final and not self._closed:
            self._closed = True
            self._stream.close(match_event_handler=self._on_match)  # end-anchored matches fire here
            if self._new:
                self._validate()
        safe = self.end if final else self.end - self.holdback()
        cands = self._cands
        if cands:
            # A candidate that starts before the safe point but ends after it is complete (the holdback
            # would cover it if it could still grow): hold the text from its start instead.
            changed = True
            while changed:
                changed = False
                for s, e, _ in cands:
                    if s < safe < e:
                        safe = s
                        changed = True
        if safe <= self._done_to:
            return self._done_to, []
        out: list[Span] = []
        if cands:
            ready = sorted((c for c in cands if c[0] < safe), key=lambda c: (c[0], -c[1]))
            if ready:
                self._cands = [c for c in cands if c[0] >= safe]
                pats = self._db.patterns
                last = self._done_to
                for s, e, pid in ready:
                    if s < last:
                        continue  # overlaps a span already chosen: leftmost-longest keeps the first
                    p = pats[pid]
                    out.append(Span(s, e, p.entity, p.name))
                    last = e
        self._done_to = safe
        return safe, out

    def close(self) -> None:
        """Release the Hyperscan stream without settling (client gone, error)."""
        if not self._closed:
            self._closed = True
            self._stream.close(match_event_handler=self._on_match)
            self._new.clear()

    def __del__(self) -> None:
        # hs streams are malloc'd and the binding frees nothing on garbage collection.
        if not self._closed:
            try:
                self._closed = True
                self._stream.close(match_event_handler=_noop)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def find_spans(db: ScanDB, text: bytes) -> list[Span]:
    """All spans of a whole text, resolved leftmost-longest (what a stream of the same bytes settles to)."""
    sc = StreamScanner(db)
    sc.feed(text)
    return sc.settle(final=True)[1]
