"""Bounded scan cost (issue 15, item 1): the mechanisms that keep a pathological text linear with a small constant
(a run that reports at every offset, a loose expression for Hyperscan, the budget of costly judgements, the
short-text prefilter) and that they change no detection a text of real values gets."""

from __future__ import annotations

import random

import pytest

from fastgw.scan import scanner
from fastgw.scan.database import Pattern, ScanDB
from fastgw.scan.patterns import BUILTIN
from fastgw.scan.phones import CANDIDATE, CANDIDATE_LOOSE, CANDIDATE_WIDTH
from fastgw.scan.scanner import BUDGET_BURST, BUDGET_BYTES, DENSE_RUN, ScanBudget, StreamScanner, find_spans


def _db(*patterns: Pattern) -> ScanDB:
    db = ScanDB(list(patterns))
    db.allocate_scratch()
    return db


def _candidates(db: ScanDB, text: bytes, cuts: list[int] | None = None) -> list[tuple[int, int, int]]:
    sc = StreamScanner(db)
    sc.collect = []  # every validated candidate, before overlaps are resolved
    prev = 0
    for c in (cuts or []) + [len(text)]:
        sc.feed(text[prev:c])
        prev = c
    sc.settle(final=True)
    return sorted(sc.collect)


def test_loose_phone_expression_gives_exactly_the_bounded_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """PHONE's Hyperscan expression is the unbounded `{6,}` (its start tracking is 20x cheaper); the scanner finds
    each report's true start: the candidates are the bounded expression's, whole and under any split."""
    monkeypatch.setattr(scanner, "DENSE_RUN", 10 ** 9)  # every candidate, however dense
    exact = _db(Pattern("P", "PHONE", CANDIDATE, CANDIDATE_WIDTH))
    loose = _db(Pattern("P", "PHONE", CANDIDATE, CANDIDATE_WIDTH, loose=CANDIDATE_LOOSE))
    rnd = random.Random(7)
    alphabet = "0123456789 ()/-.+xXext#a\n"
    for i in range(3000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 120))).encode()
        want = _candidates(exact, text)
        assert _candidates(loose, text) == want, text
        if i % 5 == 0:
            cuts = sorted(rnd.sample(range(1, len(text) + 1), min(len(text), rnd.randint(1, 6))))
            assert _candidates(loose, text, cuts) == want, (text, cuts)


def test_a_run_reporting_at_every_offset_is_judged_up_to_its_limit() -> None:
    """'1 1 1 1 ...' makes a digit-group pattern report at every digit: DENSE_RUN candidates of the run are judged,
    the rest only counted; a value after the run is a run of its own and is found."""
    calls = []

    def judge(value: bytes) -> bool:
        calls.append(value)
        return value == b"9 8 7 6"

    db = _db(Pattern("G", "G", rb"\b\d(?: \d){3}\b", 7, validator=judge))
    text = b"1 " * 50_000 + b"x 9 8 7 6 y"
    spans = find_spans(db, text)
    assert DENSE_RUN <= len(calls) <= DENSE_RUN + 2
    assert [(s.start, s.end) for s in spans] == [(len(text) - 9, len(text) - 2)]


def test_a_growing_candidate_is_one_candidate_not_a_dense_run() -> None:
    """Reports that only grow one candidate (a long key: same start) are all judged: its longest valid end is found,
    as before (a key past the width is reported as its first 256 bytes)."""
    db = _db(*[p for p in BUILTIN if p.name in ("OPENAI_KEY", "ANTHROPIC_KEY")])
    key = b"sk-" + b"a1" * 400
    spans = find_spans(db, b"key " + key + b" end")
    assert [(s.start, s.end, s.entity) for s in spans] == [(4, 4 + 256, "API_KEY")]


class _Costly:
    """A costly context validator: `quick` never knows, a full judgement says no and costs 10 units."""

    def __init__(self) -> None:
        self.cost = 0
        self.calls = 0

    def quick(self, value: bytes, before: bytes) -> bool | None:
        return None

    def __call__(self, value: bytes, before: bytes) -> bool:
        self.calls += 1
        self.cost += 10
        return False


def test_costly_judgements_are_budgeted_and_fail_closed() -> None:
    """Past the budget (burst + one unit per BUDGET_BYTES), candidates are matches unjudged: redacted, never leaked;
    the judging done stays within the budget (one judgement may overdraw by its own cost)."""
    v = _Costly()
    db = _db(Pattern("C", "C", rb"\bq\d{3}\b", 4, context_validator=v, costly=True))
    n = 2000
    text = b"q123 " * n
    spans = find_spans(db, text)
    allowed = BUDGET_BURST + len(text) // BUDGET_BYTES
    assert v.cost <= allowed + 10
    assert v.calls == pytest.approx(allowed / 10, abs=2)
    assert len(spans) == n - v.calls  # every candidate past the budget counts (fails closed)


def test_the_budget_is_shared_by_the_texts_of_a_request() -> None:
    """Many small texts get no more judging than one text of their total size."""
    v = _Costly()
    db = _db(Pattern("C", "C", rb"\bq\d{3}\b", 4, context_validator=v, costly=True))
    budget = ScanBudget()
    for _ in range(2000):
        find_spans(db, b"q123 q456", budget=budget)
    assert v.cost <= BUDGET_BURST + 2000 * 9 // BUDGET_BYTES + 10


def test_short_text_prefilter_gives_what_the_scanner_gives() -> None:
    """Short ASCII texts are first checked for any report at all: the same spans as the full scanner."""
    db = _db(*BUILTIN)
    rnd = random.Random(3)
    pieces = ["a@b.co", "192.168.1.1", "555-123-4567", "hello", " ", "sk-" + "a1" * 12, "-----BEGIN ", "x",
              "4111 1111 1111 1111", "DE89370400440532013000", "\n", ":", "1", "@", "a@b", "fe80::1", "1:2:3:4:5:6"]
    for _ in range(1000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12))).encode()
        sc = StreamScanner(db)
        sc.feed(text)
        assert find_spans(db, text) == sc.settle(final=True)[1], text


def _stream_reports(db: ScanDB, text: bytes) -> bool:
    """Whether the stream database reports anything but a phrase prefix on `text` (the reference)."""
    hits: list[int] = []

    def on(pid: int, start: int, end: int, flags: int, ctx: object) -> None:
        if pid < db.prefix_ids:
            hits.append(pid)

    stream = db.hs.stream(match_event_handler=on)
    stream.__enter__()
    stream.scan(text)
    stream.close(match_event_handler=on)  # end-anchored reports fire here
    return bool(hits)


def test_the_block_prefilter_reports_whenever_the_stream_database_does() -> None:
    """`find_spans` looks at a short text with the block database `ScanDB.any` first: it must report on every
    text the stream database reports on (end-anchored expressions, block patterns' closers and the table rows
    included; a phrase's prefix is no report), or a value would pass unscanned; and on no other, but for the
    patterns with a `prefilter` expression (EMAIL, IPV6: a '@' or ':' in the text)."""
    from fastgw.config import SafetyFilter
    from fastgw.policy.safety import SafetyPolicy

    safety = SafetyPolicy(SafetyFilter(action="redact", terms=["forbidden fruit", "secret sauce", "x y"],
                                       regex=[r"end\s*$"]))
    safety.allocate_scratch()
    pii = _db(*BUILTIN)
    assert pii.any is not None and pii.any.mode == 1  # HS_MODE_BLOCK: no stream opened per text
    pieces = ["a@b.co", "192.168.1.1", "555-123-4567", "hello", " ", "\n", "| a | b |", "\n| --- | --- |\n", "x",
              "-----BEGIN RSA PRIVATE KEY-----", "-----END", "4111 1111 1111 1111", "forbidden", " fruit", "secret",
              "sauce", "x y", "end", "DE89370400440532013000", "+49 30 1234567", "1"]
    rnd = random.Random(7)
    seen = {True: 0, False: 0}
    for _ in range(1500):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 6))).encode()
        for db in (pii, safety.db):
            want = _stream_reports(db, text)
            got = scanner._reports(db, text)
            assert got if want else (not got or b"@" in text or b":" in text), (text, db.patterns[0].name)
            seen[want] += 1
    assert min(seen.values()) > 500  # both answers, often


def _generated(rnd: random.Random, pieces: list[str], n: int) -> list[bytes]:
    return ["".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 14))).encode() for _ in range(n)]


@pytest.mark.parametrize("name, pieces", [
    ("EMAIL", ["a", "Z", "9", "_", ".", "%", "+", "-", "@", "@", "é", "ж", "例", "xn--", "co", "com", " ", "\n",
               "<", "'", "jo.smith", "example", "b.c", "..", "Ω", "\u00a0", "@b.co", "@例え.jp", ".xn--p1ai", "@-x.de"]),
    ("IPV6", ["f", "e8", "0", "1", "2001", "db8", "ffff", ":", ":", "::", ".", "192.168.0.1", "255", "g", " ",
              "x", "10:30"]),
])
def test_a_prefilter_expression_reports_on_every_text_its_pattern_matches(name: str, pieces: list[str]) -> None:
    """`Pattern.prefilter`: the block prefilter compiles the looser expression in the pattern's place, so it must
    report on every text the pattern's own expression matches in (generated texts dense in the pattern's
    alphabet, values in every shape amid random neighbours), or a value would pass unscanned. Looser means it
    also reports on texts the pattern has nothing in, which go to the scanner (see the test above)."""
    import dataclasses

    import hyperscan

    from fastgw.scan.database import compile_any

    pattern = next(p for p in BUILTIN if p.name == name)
    assert pattern.prefilter is not None
    exact = compile_any([dataclasses.replace(pattern, prefilter=None)])
    looser = compile_any([pattern])
    for db in (exact, looser):
        db.scratch = hyperscan.Scratch(db)
    seen = {"both": 0, "looser only": 0}
    rnd = random.Random(name)
    for text in _generated(rnd, pieces, 20_000):
        hit = scanner.block_reports(looser, text)
        if scanner.block_reports(exact, text):
            assert hit, text
            seen["both"] += 1
        elif hit:
            seen["looser only"] += 1
    assert seen["both"] > 1000 and seen["looser only"] > 0, seen  # matched often; the looser form was looser
    assert len({p.name for p in BUILTIN if p.prefilter is not None} - {"EMAIL", "IPV6"}) == 0  # each one tested
