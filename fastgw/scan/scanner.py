"""A per-stream scanner: Hyperscan stream mode on the canonical view, plus the holdback rule that makes streaming
redaction leak-free.

Feed the stream's original bytes in order; each piece is folded (`fastgw.scan.fold`: Unicode look-alikes to
ASCII, zero-width characters dropped, JSON escapes decoded in JSON-source mode) and the canonical bytes are
scanned, each once. `settle()` answers two things, in original byte offsets: up to which offset the text is
final (no match can still start before it), and which spans, resolved leftmost-longest on the canonical
view, lie before that offset. A span covers the original bytes from the first to the last character that
produced its canonical bytes (dropped characters inside it included). Redacting the whole text at once gives
exactly the spans that settling a stream in pieces does, because both are the same fold, the same scan and
the same resolution.

Holdback: for each group of patterns (same alphabet, start bytes, width) we track the length of the canonical
text's trailing run of bytes in that alphabet, updated from the new bytes only. A match still in progress
lies inside such a run and within the group's width, so holding from the run's first possible start byte is
enough. The folder's pending tail (a character or escape cut short) is held too. Phrases (`Pattern.term`) have
no group: Hyperscan reports where a suffix of the text is a prefix of a phrase match (`fastgw.scan.terms`), and
the report at the end, with its leftmost start, is their holdback, exact and flat in the number of phrases.

Lookahead (`Pattern.not_followed_by`): a candidate is checked against the canonical bytes right after its
match as soon as they have arrived; until then it is pending and holds the text from its start, and at the end
of the text whatever has not arrived counts as no match. The decision depends only on the canonical text, so
it is the same under every split.

Blocks (`Pattern.block_until`): once an opening marker matches, everything from it is held until the closing
marker, or until `max_width` canonical bytes are held, when that piece is reported final and the hold moves
on to the next piece (see `Pattern`).

Cost (linear, with a small constant per byte, whatever the text): a run of overlapping candidates of one pattern
is judged up to `DENSE_RUN` candidates, the rest of it only counted (in the match callback); a `Pattern.loose`
expression keeps Hyperscan's start tracking cheap; the costly validators (libphonenumber) draw from a
`ScanBudget` per request and policy, and past it a candidate counts unjudged (fails closed). All of it depends
only on the canonical text, so it is the same under every split; past the budget, how much is judged may
depend on how a request's texts are split, never whether a value is redacted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastgw.scan.database import CONTEXT_BYTES, MAX_LOOKAHEAD, MAX_TABLE_HEADER, JointDB, ScanDB, Span
from fastgw.scan.fold import BACKSLASH, Folder

__all__ = ["StreamScanner", "ScanGroup", "ScanBudget", "find_spans", "block_reports", "DENSE_RUN", "BUDGET_BURST",
           "BUDGET_BYTES"]

#: Candidates of one pattern in one run of overlapping matches (counted by distinct start) that are judged; the
#: rest of the run is not, and yields nothing. No value is 32 overlapping candidates of one pattern (a phone
#: number is at most ~5, a list of numbers separated by single spaces a handful per number), while a run such as
#: '1 1 1 ...' or 'a:a:a:...' reports a candidate at every offset: one report then costs a comparison, not a
#: validator call (libphonenumber: up to ~1 ms). Reports that only grow one candidate (same start: a key, a
#: token) are one candidate: its longest valid end is still found.
DENSE_RUN = 32
#: Work units (libphonenumber parses, ~25-40 µs each; a phone judgement takes 1 to ~25) the `Pattern.costly`
#: validators may spend on one request per policy before further candidates count as matches unconfirmed (fail
#: closed): ~15-20 ms; the densest answer of the evaluation corpus (`bench.pii_eval`) needs a fifth of it ...
BUDGET_BURST: Final = 512
#: ... plus one unit per this many canonical bytes scanned: past the burst, judging costs at most ~0.15 µs per
#: byte, whatever the text. (A text is never refused for it: what cannot be judged is redacted.)
BUDGET_BYTES: Final = 256

#: Canonical bytes kept as one string for the holdback's suffix reads: wider than every group's run but the
#: rare key or block ones, so a streamed event (a few bytes) costs one small concatenation, not a join.
_TAIL: Final = 256

#: A candidate or block piece: (canonical start, canonical end, pattern index).
_Cand = tuple[int, int, int]
#: A candidate waiting for the bytes its lookahead needs: (start, end, pattern index, match end).
_Pend = tuple[int, int, int, int]
_Follow = tuple[tuple[frozenset[int], ...], ...]


def _noop(*_args: object) -> None:
    return None


def _load_c() -> tuple[Callable[[bytes, bytes, list[int]], None] | None,
                       Callable[[bytes, list[int], int, bytes, list[int]], int] | None]:
    """The holdback's per-scan work in C (fastgw/scan/_holdc.c: why, in its head comment), or None where it is not
    built: the scanner then runs its Python forms (`_scan`'s and `holdback`'s loops)."""
    try:
        from fastgw.scan import _holdc
    except ImportError:
        return None, None
    return _holdc.runs, _holdc.hold


_C: Final = _load_c()
#: Every group's trailing run updated from a scan's bytes, and the groups' holdback read from the kept tail.
_RUNS: Final = _C[0]
_HOLD: Final = _C[1]


def _followed(follow: _Follow, after: bytes, final: bool) -> bool | None:
    """Whether the bytes after a match fit one of its `not_followed_by` sequences: True (drop it), False (keep
    it), None (not known until more bytes arrive). At the end of the text (`final`) a cut sequence is no fit."""
    undecided = False
    for seq in follow:
        m = min(len(after), len(seq))
        for i in range(m):
            if after[i] not in seq[i]:
                break
        else:
            if m == len(seq):
                return True
            undecided = undecided or not final
    return None if undecided else False


def _header_line(buf: bytes, rule: int, whole: bool) -> bytes:
    """The line before the delimiter row starting at `rule` in `buf` (b"" when it is not all in `buf`, is longer
    than MAX_TABLE_HEADER or does not look like a table row)."""
    end = rule - 1
    if end < 0:
        return b""
    if end and buf[end - 1] == 13:  # "\r" (compiled, a bytes slice whose end falls before its start raises)
        end -= 1
    nl = buf.rfind(b"\n", 0, end)
    if nl < 0 and not whole:
        return b""  # its start is no longer kept
    line = buf[nl + 1:end]
    return line if 124 in line and len(line) <= MAX_TABLE_HEADER else b""  # 124: "|" (an int needle is memchr)


class ScanBudget:
    """The work the costly validators (`Pattern.costly`) of one request and policy may still do: the burst plus
    one unit per `BUDGET_BYTES` canonical bytes scanned, shared by every text of the request (a request of many
    small texts gets no more than one of their total size)."""

    __slots__ = ("used", "scanned")

    def __init__(self) -> None:
        self.used = 0
        self.scanned = 0

    def left(self) -> bool:
        """Whether another judgement may start (one may overdraw by its own cost, a few dozen units at most)."""
        return self.used < BUDGET_BURST + self.scanned // BUDGET_BYTES


class StreamScanner:
    """Scanner for one text stream (one choice's content, or one tool call's arguments).

    `json=True` reads the text as JSON source (tool-call arguments): escapes are decoded before scanning,
    so `\\u0040` is an `@` to the detectors and a span covers the whole escape.
    """

    __slots__ = ("_db", "_stream", "_on_match", "_new", "_cands", "_chunks", "_chunks_len", "_runs", "end",
                 "scanned", "_done_to", "_closed", "_fold", "_keep", "_oend", "_blk", "_blk_head", "_blk_piece",
                 "_blk_first", "_pieces", "_regions", "_pend", "_table", "_tail", "_budget", "_cl_end",
                 "_cl_start", "_cl_n", "_pfx", "_pfx_start", "_pfx_end", "collect", "feeds", "settles", "_alphabets",
                 "_members", "_spec", "_left")

    def __init__(self, db: ScanDB, json: bool = False, budget: ScanBudget | None = None, joint: bool = False) -> None:
        """`joint`: its bytes are scanned by a `ScanGroup`'s stream, which gives it its reports (it opens none)."""
        self._db = db
        #: Costly judgements left (shared by the texts of one request; a text of its own otherwise).
        self._budget = budget if budget is not None else ScanBudget()
        #: Per pattern, the run of overlapping candidates it is in (see DENSE_RUN): its end, its last
        #: candidate's start, and how many candidates (distinct starts) it had.
        n = len(db.patterns)
        self._cl_end = [-1] * n
        self._cl_start = [-1] * n
        self._cl_n = [0] * n
        #: Reports with ids from `_pfx` on are phrase prefixes: the latest one's end and (leftmost) start.
        self._pfx = db.prefix_ids
        self._pfx_start = 0
        self._pfx_end = -1
        # hyperscan 0.9.1 keeps no reference to the handler it is given: we must, for the stream's
        # whole life, or the next match calls freed memory (a segfault). A bound method stored here does.
        # `close()` without a handler calls this one too (the binding's stored pointer), so it is held until then.
        self._on_match: Callable[[int, int, int, int, object], None] = _noop
        self._stream: Any = None
        if not joint:
            self._on_match = self._match
            stream = db.hs.stream(self._on_match)  # positional: no keyword parsing (~0.1 us a call)
            stream.__enter__()
            self._stream = stream
        self._fold = Folder(json=json)
        self._new: list[tuple[int, int, int]] = []
        #: Validated candidates not yet settled, canonical offsets.
        self._cands: list[_Cand] = []
        #: Validated candidates whose lookahead bytes have not all arrived (they hold the text from their start).
        self._pend: list[_Pend] = []
        #: Recent canonical input, newest last, at least `_keep` bytes when available (validators, holdback).
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        #: The last _TAIL canonical bytes, kept whole: the holdback reads a group's trailing run from it.
        self._tail = b""
        self._keep = db.window
        #: Per holdback group: length of the canonical text's trailing run of bytes in its alphabet.
        self._runs = [0] * len(db.groups)
        self._alphabets = db.alphabets
        self._members = db.members
        self._spec = db.hold_spec
        #: The groups `_HOLD` leaves to `holdback` (reused: it is cleared on every call).
        self._left: list[int] = []
        self.end = 0  # original bytes fed so far
        #: Canonical bytes fed to Hyperscan (each exactly once: tests count it).
        self.scanned = 0
        self._done_to = 0  # canonical: settled up to here; spans before it are final and reported
        self._oend = 0  # original: settled up to here (what settle last answered)
        self._closed = False
        #: The block being held: its pattern index (-1: none), opening marker start and end, current piece start.
        self._blk = -1
        self._blk_head = (0, 0)
        self._blk_piece = 0
        self._blk_first = True
        #: Finished block pieces not settled yet, and the canonical regions of blocks (start, end; the open
        #: one ends at -1) that other candidates must stay out of.
        self._pieces: list[tuple[int, int, int, bool]] = []
        self._regions: list[tuple[int, int]] = []
        #: The header line of the markdown table the text is in (b"": none); see `Pattern.table_context`.
        self._table = b""
        #: Tests only: when a list, every validated candidate is moved into it before overlaps are resolved (a
        #: hook rather than a subclass: the module may be compiled, and compiled classes take no Python subclass).
        self.collect: list[tuple[int, int, int]] | None = None
        #: Calls of `feed` with bytes, and of `settle`: the stream policy batches a read's events into one of
        #: each per text (tests count them; a compiled scanner takes no wrapper in its place).
        self.feeds = 0
        self.settles = 0

    def _match(self, pid: int, start: int, end: int, flags: int, ctx: object) -> None:
        if pid >= self._pfx:
            # A phrase prefix: only the one at the end of the text matters (see `holdback`), and of those ending
            # there the longest (the prefix expressions are several).
            if end > self._pfx_end:
                self._pfx_end, self._pfx_start = end, start
            elif end == self._pfx_end and start < self._pfx_start:
                self._pfx_start = start
            return
        # A report inside a run past DENSE_RUN is only counted, here: a run such as '1 1 1 ...' reports at
        # every offset, and this is most of what each of those reports costs.
        # (The same run bookkeeping as `_validate`'s for a report it would skip.)
        n = self._cl_n
        if pid < len(n) and n[pid] > DENSE_RUN and start < self._cl_end[pid]:
            db = self._db
            if db.tails[pid] is not None:
                self._cl_end[pid] = end
            elif end - start <= db.widths[pid] and start >= self.scanned - self._chunks_len \
                    and end > self._cl_end[pid]:
                self._cl_end[pid] = end
            return
        self._new.append((start, end, pid))

    # ---- feeding -------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Fold and scan the next original bytes of the stream."""
        if not data:
            return
        if self._closed:
            raise RuntimeError("scanner closed")
        if self._stream is None:
            raise RuntimeError("a joint scanner is fed by its ScanGroup")
        self._scan(self._fold_in(data))

    def _fold_in(self, data: bytes) -> bytes:
        """The canonical bytes of the next original bytes (not empty), counted as fed."""
        self.feeds += 1
        n = len(data)
        self.end += n
        fold = self._fold
        if fold.passthrough and data.isascii() and not (fold.json and BACKSLASH in data):
            # The folder's fast path, inline (one call less on every streamed event): ASCII is canonical.
            fold.cend += n
            fold.consumed += n
            return data
        return fold.feed(data)

    def _scan(self, data: bytes) -> None:
        if data:
            self._stream.scan(data)
            self._took(data)

    def _took(self, data: bytes) -> None:
        """Canonical bytes Hyperscan has just scanned (not empty; its reports are in `_new`): the holdback runs,
        then what those reports and the bytes decide."""
        n = len(data)
        self.scanned += n
        self._budget.scanned += n
        self._chunks.append(data)
        tail = self._tail + data
        self._tail = tail[-_TAIL:] if len(tail) > _TAIL else tail
        self._chunks_len += n
        runs = self._runs
        if runs:
            if _RUNS is not None:
                _RUNS(data, self._members, runs)
            else:
                for i, alphabet in enumerate(self._alphabets):
                    r = n - len(data.rstrip(alphabet))
                    runs[i] = runs[i] + n if r == n else r
        if self._new:
            self._take_reports()
        if self._pend:
            self._resolve(False)
        if self._blk >= 0:
            self._grow_block()
        keep = self._keep
        if self._chunks_len > 2 * keep + n:
            # Compact rarely (amortised O(1) copies per byte), keeping the last `keep` bytes.
            tail = b"".join(self._chunks)[-keep:]
            self._chunks = [tail]
            self._chunks_len = len(tail)

    def _suffix(self, n: int) -> bytes:
        """The last n canonical bytes fed (n <= what is kept)."""
        if n <= len(self._tail):
            return self._tail[-n:]
        chunks = self._chunks
        last = chunks[-1]
        if n <= len(last):
            return last[-n:] if n < len(last) else last
        # Join only the chunks the suffix needs: the kept window is ~1-2 KiB of small streamed pieces.
        i = len(chunks) - 1
        have = len(last)
        while have < n and i > 0:
            i -= 1
            have += len(chunks[i])
        return b"".join(chunks[i:])[-n:]

    def _since(self, lo: int) -> tuple[bytes, int]:
        """(the kept canonical bytes from about `lo` on, their offset): the chunks from the one holding `lo`
        (all of them when `lo` is no longer kept), so a validation joins the context it reads, not the window."""
        chunks = self._chunks
        i = len(chunks)
        base = self.scanned
        while i > 0 and base > lo:
            i -= 1
            base -= len(chunks[i])
        return (chunks[i] if i == len(chunks) - 1 else b"".join(chunks[i:])), base

    def _validate(self) -> None:
        db = self._db
        new = self._new
        kept = self.scanned - self._chunks_len
        reach = MAX_TABLE_HEADER + 2 if db.table_rule >= 0 else CONTEXT_BYTES
        buf, base = self._since(min(m[0] for m in new) - reach)
        pats = db.patterns
        npat = len(pats)
        widths = db.widths
        tails = db.tails
        cl_end, cl_start, cl_n = self._cl_end, self._cl_start, self._cl_n
        if db.blocks and len(new) > 1:
            new.sort(key=lambda m: m[1])  # block markers and candidates interact: take them in text order
        for start, end, pid in new:
            if pid >= npat:
                if pid == db.table_rule:
                    self._table = _header_line(buf, start - base, base == 0)
                elif pid == db.blank_line:
                    self._table = b""
                else:
                    self._closing(start, end, db.closers[pid - npat])
                continue
            tail = tails[pid]
            if tail is None:
                if end - start > widths[pid] or start < kept:
                    continue  # wider than the pattern allows: not a match (the same rule holds for whole text)
                # A run of overlapping candidates (DENSE_RUN): judged up to its limit, then only counted.
                if start < cl_end[pid]:
                    if start != cl_start[pid]:
                        cl_start[pid] = start
                        cl_n[pid] += 1
                    if end > cl_end[pid]:
                        cl_end[pid] = end
                    if cl_n[pid] > DENSE_RUN:
                        continue
                else:
                    cl_end[pid], cl_start[pid], cl_n[pid] = end, start, 1
            else:
                # A loose expression's reports in one chain share its (loose) start: each is a candidate.
                if start < cl_end[pid]:
                    cl_end[pid] = end
                    cl_n[pid] += 1
                    if cl_n[pid] > DENSE_RUN:
                        continue
                else:
                    cl_end[pid], cl_n[pid] = end, 1
                if end - start <= widths[pid] and start >= kept and tail[0].fullmatch(buf, start - base, end - base):
                    pass  # a match of `expression` too, from the same (leftmost) start: the common case
                else:
                    m = tail[1].search(buf, max(end - widths[pid] - 1, base) - base, end - base)
                    if m is None:
                        continue  # the loose expression's match only (too many repeats, or too wide)
                    start = m.start() + base
                    if start < kept:
                        continue
            p = pats[pid]
            end -= p.trailing
            follow = db.follow[pid]
            pending = False
            if follow is not None:
                # First: it is cheap, and a validator (libphonenumber) need not judge every prefix of a digit run.
                d = _followed(follow, buf[end - base:end - base + MAX_LOOKAHEAD], False)
                if d:
                    continue
                pending = d is None
            value = buf[start - base:end - base]
            if p.validator is not None and not p.validator(value):
                continue
            cv = p.context_validator
            if cv is not None:
                if p.table_context:
                    # The whole row so far (a column is counted by its pipes), within the kept window.
                    args: tuple[bytes, ...] = (value, buf[max(start - MAX_TABLE_HEADER, base) - base:start - base],
                                               self._table)
                else:
                    args = (value, buf[max(start - CONTEXT_BYTES, base) - base:start - base])
                if p.costly:
                    ok = cv.quick(*args)  # type: ignore[attr-defined]
                    if ok is None:
                        # A full judgement, while the budget lasts; then the candidate counts (fails closed).
                        budget = self._budget
                        if budget.left():
                            c0 = cv.cost  # type: ignore[attr-defined]
                            ok = cv(*args)
                            budget.used += cv.cost - c0  # type: ignore[attr-defined]
                        else:
                            ok = True
                else:
                    ok = cv(*args)
                if not ok:
                    continue
            if p.block_until is not None:
                self._opening(start, end, pid)
                continue
            mend = end
            # A byte-level class can start or end inside a multi-byte character: the span takes all of it, so
            # redaction never leaves half a character (the canonical text holds only whole characters).
            i = start - base
            while i > 0 and buf[i] & 0xC0 == 0x80:
                i -= 1
            j = end - base
            while j < len(buf) and buf[j] & 0xC0 == 0x80:
                j += 1
            start, end = i + base, j + base
            if self._regions:
                c = self._outside_blocks(start, end)
                if c is None:
                    continue
                start, end = c
            if pending:
                self._pend.append((start, end, pid, mend))
            else:
                self._cands.append((start, end, pid))
        new.clear()

    def _take_reports(self) -> None:
        """The reports of the last scan judged (`_validate`), and handed to `collect` when a test set it."""
        self._validate()
        if self.collect is not None:
            self._collect()

    def _collect(self) -> None:
        assert self.collect is not None
        self.collect.extend(self._cands)
        self._cands.clear()

    def _resolve(self, final: bool) -> None:
        """Decide the pending candidates whose lookahead bytes have arrived (all of them when `final`)."""
        buf, base = self._since(min(p[3] for p in self._pend))
        follow = self._db.follow
        still: list[_Pend] = []
        for s, e, pid, mend in self._pend:
            f = follow[pid]
            assert f is not None
            d = _followed(f, buf[mend - base:mend - base + MAX_LOOKAHEAD], final)
            if d is None:
                still.append((s, e, pid, mend))
            elif not d:
                self._cands.append((s, e, pid))
        self._pend = still

    # ---- blocks ------------------------------------------------------------------------------------
    def _opening(self, start: int, end: int, pid: int) -> None:
        """An opening marker: start holding a block, unless it lies in one."""
        if self._blk >= 0 or (self._regions and start < self._regions[-1][1]):
            return
        self._blk = pid
        self._blk_head = (start, end)
        self._blk_piece = start
        self._blk_first = True
        self._regions.append((start, -1))
        # Candidates already found stay out of the block: inside it they are gone, across its start cut.
        kept = []
        for s, e, p in self._cands:
            if s >= start:
                continue
            kept.append((s, min(e, start), p))
        self._cands = kept
        self._pend = [(s, min(e, start), p, m) for s, e, p, m in self._pend if s < start]

    def _closing(self, start: int, end: int, pid: int) -> None:
        """A closing marker: it ends the block being held if it belongs to it and follows its opening."""
        if self._blk != pid or start < self._blk_head[1]:
            return
        self._end_block(end)

    def _end_block(self, end: int) -> None:
        width = self._db.patterns[self._blk].max_width
        while end - self._blk_piece > width:
            self._piece(self._blk_piece + width)
        self._piece(end)
        self._regions[-1] = (self._blk_head[0], end)
        self._blk = -1

    def _piece(self, end: int) -> None:
        self._pieces.append((self._blk_piece, end, self._blk, not self._blk_first))
        self._blk_piece = end
        self._blk_first = False

    def _grow_block(self) -> None:
        """A held block past its bound: its complete pieces are final. (Strictly past: a closing marker that
        ends at the bound may be reported only with the next byte.)"""
        width = self._db.patterns[self._blk].max_width
        while self.scanned - self._blk_piece > width:
            self._piece(self._blk_piece + width)

    def _outside_blocks(self, start: int, end: int) -> tuple[int, int] | None:
        """A candidate with the parts that lie in blocks cut off (None when nothing is left)."""
        for a, b in self._regions:
            if b < 0:
                if start >= a:
                    return None
                end = min(end, a)
            elif start < b and end > a:
                if start >= a:
                    start = b
                else:
                    end = a
        return (start, end) if start < end else None

    # ---- holdback --------------------------------------------------------------------------
    def holdback(self) -> int:
        """Canonical bytes at the end that could still be (part of) a match in progress."""
        hold = 0
        if self._pfx_end == self.scanned:
            # A phrase match may be in progress from the prefix's start; none is wider than the widest phrase.
            hold = min(self.scanned - self._pfx_start, self._db.term_width)
        runs = self._runs
        if not runs:
            return hold
        groups: list[int] | range
        if _HOLD is not None:
            # The groups its tables answer for, in C; it leaves those it cannot (a `hold_from` it has no answer of,
            # a run longer than the tail) to the loop below. Each group's holdback is at most its run, so the order
            # does not matter.
            left = self._left
            hold = _HOLD(self._tail, runs, hold, self._spec, left)
            if not left:
                return hold
            groups = left
        else:
            groups = range(len(runs))
        db = self._db
        widths, froms, starts = db.hold_widths, db.hold_froms, db.start_res
        for i in groups:
            r = runs[i]
            if r <= hold:
                continue
            if r > widths[i]:
                r = widths[i]
            hold_from = froms[i]
            start_re = starts[i]
            if hold_from is not None:
                h = hold_from(self._suffix(r))
            elif start_re is None:
                h = r
            else:
                m = start_re.search(self._suffix(r))
                if m is None:
                    continue
                h = r - m.start()
            if h > hold:
                hold = h
        return hold

    # ---- settling --------------------------------------------------------------------------------
    def settle(self, final: bool = False) -> tuple[int, list[Span]]:
        """(safe offset, spans newly final before it), in original bytes. With final=True the stream is
        closed first."""
        self.settles += 1
        fold = self._fold
        if final and not self._closed:
            if self._stream is None:
                raise RuntimeError("a joint scanner's text is ended by its ScanGroup")
            self._scan(fold.flush())  # a cut escape or sequence at the very end, as it stands
            self._closed = True  # first: a close that raises is not tried again by __del__
            self._stream.close()  # end-anchored matches fire here, to the handler it was opened with
            self._forget_handler()
            self._ended()
        cend = self.scanned
        safe = cend if final else cend - self.holdback()
        if self._blk >= 0 and self._blk_piece < safe:
            safe = self._blk_piece
        for s, _, _, _ in self._pend:
            if s < safe:
                safe = s  # its lookahead bytes are still to come: hold it whole
        plain = fold.plain
        if safe < cend and not plain:
            safe = fold.snap(safe)
        cands = self._cands
        pieces = self._pieces
        if cands or pieces:
            # A candidate that starts before the safe point but ends after it is complete (the holdback
            # would cover it if it could still grow): hold the text from its start instead.
            changed = True
            while changed:
                changed = False
                for s, e, _ in cands:
                    if s < safe < e:
                        safe = s
                        changed = True
                for s, e, _, _ in pieces:
                    if s < safe < e:
                        safe = s
                        changed = True
        if safe <= self._done_to:
            if safe >= cend:
                # Nothing new to scan, but characters folded to nothing (a trailing zero-width space) may have
                # arrived since: at the canonical end they are released too.
                osafe = safe + fold.consumed - cend if plain else fold.safe_of(safe)
                if osafe > self._oend:
                    self._oend = osafe
            return self._oend, []
        out: list[Span] = []
        if cands or pieces:
            ready = [(s, e, p, False) for s, e, p in cands if s < safe]
            if ready:
                self._cands = [c for c in cands if c[0] >= safe]
            if pieces:
                ready += [x for x in pieces if x[0] < safe]
                self._pieces = [x for x in pieces if x[0] >= safe]
            if ready:
                # Equal spans: the earlier pattern wins (not the order candidates were decided in, which a
                # lookahead waiting for its bytes changes with the split).
                ready.sort(key=lambda c: (c[0], -c[1], c[2]))
                pats = self._db.patterns
                last = self._done_to
                olast = self._oend
                delta = fold.consumed - cend
                for s, e, pid, cont in ready:
                    if s < last:
                        continue  # overlaps a span already chosen: leftmost-longest keeps the first
                    p = pats[pid]
                    if plain:
                        os_, oe = s + delta, e + delta
                    else:
                        # Two spans may meet inside one original character (one that folds to several
                        # bytes): the later one starts where the earlier ended, so spans never overlap.
                        os_ = max(fold.start_of(s), olast)
                        oe = fold.end_of(e - 1)
                    if oe > os_:
                        out.append(Span(os_, oe, p.entity, p.name, cont))
                        olast = oe
                    last = e
        self._done_to = safe
        # (A span may end past this when its last character also produced the byte at `safe`, one that folds
        # to several: that character is held, and the rest of the span is removed when it is released.)
        if plain:
            osafe = safe + fold.consumed - cend
        else:
            osafe = fold.safe_of(safe)
            fold.forget(safe)
        self._oend = osafe
        if self._regions and self._blk < 0 and self._regions[-1][1] <= safe - self._db.max_width:
            self._regions.clear()  # no candidate can reach back into a block that far behind
        return osafe, out

    def _ended(self) -> None:
        """The text's last bytes are scanned and its stream closed (its end-anchored reports in `_new`): every
        candidate is decided."""
        self._closed = True
        if self._new:
            self._take_reports()
        if self._pend:
            self._resolve(True)
        if self._blk >= 0:
            self._end_block(self.scanned)  # a block never closed runs to the end of the text

    def close(self) -> None:
        """Release the Hyperscan stream without settling (client gone, error)."""
        if not self._closed:
            self._closed = True
            if self._stream is not None:
                self._stream.close()  # to the handler it was opened with
                self._forget_handler()
            self._new.clear()
            self._pend.clear()

    def _forget_handler(self) -> None:
        """The stream is closed: its handler is called no more. The bound method held a cycle (the scanner, its
        handler, the scanner) that only the cyclic collector freed, with the ~16 tracked objects the scanner holds:
        a loaded worker's redacted streams brought a gen-0 pass every ~160 requests (314 in a 10 s load of 50,000;
        one without the cycle) and ~3.5 % of its CPU (tests/scan/test_scanner.py holds it freed)."""
        self._on_match = _noop

    def __del__(self) -> None:
        # hs streams are malloc'd and the binding frees nothing on garbage collection.
        if not self._closed and self._stream is not None:
            try:
                self._closed = True
                self._stream.close(match_event_handler=_noop)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


class ScanGroup:
    """The scanners of one text for the databases of a `JointDB` (a chain's output policies): one Hyperscan stream
    scans each piece for all of them, and each report goes to its database's scanner, which then does what it does
    alone (fold, holdback, validation, settling). Feed and end the text here; settle each scanner."""

    __slots__ = ("scanners", "_joint", "_stream", "_on_match", "_owner", "_local", "_closed")

    def __init__(self, joint: JointDB, json: bool, budgets: list[ScanBudget]) -> None:
        self._closed = True  # no stream to close until it is open
        if len(budgets) != len(joint.dbs):
            raise ValueError("a budget per database")
        self.scanners = [StreamScanner(db, json, b, joint=True) for db, b in zip(joint.dbs, budgets)]
        # Its database and scratch must outlive the stream (closing one reports through them): a reference here.
        self._joint = joint
        self._owner = joint.owner
        self._local = joint.local
        # As in StreamScanner: the binding keeps no reference to the handler, so the group does.
        self._on_match: Callable[[int, int, int, int, object], None] = self._match
        stream = joint.hs.stream(self._on_match)
        stream.__enter__()
        self._stream: Any = stream
        self._closed = False

    def _match(self, pid: int, start: int, end: int, flags: int, ctx: object) -> None:
        self.scanners[self._owner[pid]]._match(self._local[pid], start, end, flags, ctx)

    def feed(self, data: bytes) -> None:
        """Fold and scan the next original bytes of the text, for every scanner."""
        if not data:
            return
        if self._closed:
            raise RuntimeError("scanner closed")
        # Each scanner folds (its offset map is its own, forgotten up to its own safe point); every fold of the
        # same bytes is the same canonical bytes, scanned once.
        scanners = self.scanners
        canon = scanners[0]._fold_in(data)
        for i in range(1, len(scanners)):
            scanners[i]._fold_in(data)
        self._scan(canon)

    def _scan(self, canon: bytes) -> None:
        """Canonical bytes scanned once, then taken by every scanner (its holdback, its reports judged)."""
        if canon:
            self._stream.scan(canon)
            for sc in self.scanners:
                sc._took(canon)

    def end(self) -> None:
        """The text is complete: what the folds hold scanned, the stream closed (its end-anchored reports given),
        every scanner's candidates decided. Then settle each with final=True."""
        if self._closed:
            return
        scanners = self.scanners
        canon = scanners[0]._fold.flush()  # a cut escape or sequence at the very end, as it stands
        for i in range(1, len(scanners)):
            scanners[i]._fold.flush()
        self._scan(canon)
        self._closed = True
        self._stream.close()  # to the handler it was opened with
        self._on_match = _noop  # the cycle (group, its handler, the group) goes with the stream
        for sc in scanners:
            sc._ended()

    def close(self) -> None:
        """Release the stream without settling (client gone, error)."""
        if not self._closed:
            self._closed = True
            self._stream.close()  # to the handler it was opened with
            self._on_match = _noop
            for sc in self.scanners:
                sc.close()

    def __del__(self) -> None:
        if not self._closed:
            try:
                self._closed = True
                self._stream.close(match_event_handler=_noop)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


#: Texts up to this long (ASCII prose) are first scanned for any report at all: a request of many short fields
#: (content parts, metadata values) then costs one block scan per field, not a scanner each.
_SMALL: Final = 256


def _halt(pid: int, start: int, end: int, flags: int, ctx: object) -> bool:
    return True  # one report is the answer


def _reports(db: ScanDB, data: bytes) -> bool:
    """Whether `data` (a whole text) makes `db` report any match, end-anchored ones included (`ScanDB.any`)."""
    return db.any is None or block_reports(db.any, data)


def block_reports(block: Any, data: bytes) -> bool:
    """Whether `data` makes a block database of `compile_any` report anything (a failed scan counts as a report)."""
    try:
        block.scan(data, _halt)  # positional: keyword parsing was ~45 % of a short text's scan call
    except Exception:  # noqa: BLE001 - halted at a report (ScanTerminated); any other failure: look closer
        return True
    return False


def find_spans(db: ScanDB, text: bytes, json: bool = False, budget: ScanBudget | None = None) -> list[Span]:
    """All spans of a whole text, in original bytes, resolved leftmost-longest on its canonical view (what a
    stream of the same bytes settles to). `json=True`: the text is JSON source (tool-call arguments).
    `budget`: the request's (see ScanBudget); a text of its own otherwise."""
    if len(text) <= _SMALL and not json and text.isascii() and not _reports(db, text):
        if budget is not None:
            budget.scanned += len(text)
        return []  # ASCII is its own canonical view, and nothing in it is even a candidate
    sc = StreamScanner(db, json, budget)
    sc.feed(text)
    return sc.settle(final=True)[1]
