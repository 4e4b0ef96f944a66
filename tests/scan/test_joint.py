"""Several policies' databases scanned as one (`JointDB`, `ScanGroup`): under any split, each database's scanner
settles to exactly what it settles to scanning alone (the same safe offsets, spans, bytes scanned and validator
budget at every step), with hostile text (disguised values, phrases, blocks, tables, JSON escapes); the group's
stream is closed whatever happens to it, and a finished group is freed without the cyclic collector."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.policy.safety import SafetyFilter, SafetyPolicy
from fastgw.scan.database import JointDB, ScanDB
from fastgw.scan.patterns import BUILTIN
from fastgw.scan.scanner import ScanBudget, ScanGroup, StreamScanner, find_spans
from tests.scan.test_fold_redaction import KEY, PATTERNS, disguise, documents
from tests.support.garbage import fastgw_garbage
from tests.support.procs import REPO_ROOT


def _dbs() -> list[ScanDB]:
    pii = ScanDB(list(BUILTIN))
    safety = SafetyPolicy(SafetyFilter(action="redact", terms=["forbidden fruit", "secret sauce", "x"],
                                       regex=[r"\bcode-\d{4}\b"])).db
    small = ScanDB(PATTERNS + [KEY])  # a block with a small bound, crossed often
    for d in (pii, safety, small):
        d.allocate_scratch()
    return [pii, safety, small]


DBS = _dbs()
JOINT = JointDB(DBS)
JOINT.allocate_scratch()

_PIECES = st.sampled_from([
    "forbidden fruit", "FORBIDDEN  fruit", "secret\u00a0sauce", "secret sau", "ce", "code-1234", "x", "xx",
    "-----BEGIN PRIVATE KEY-----", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "-----END PRIVATE KEY-----",
    "| phone | name |\n| --- | --- |\n| 030 1234567 | Ann |\n\n", "+49 30 1234567", "(415) 555-0100",
    "gb16 lkbb 8661 5093 4659 29", "de89 3704 0044 0532 0130 00", "4111 1111 1111 1111", "123-45-6789",
    "SSN 888742989", "joe@example.com", "\\u0040", "\\n", "\\\"", "192.168.0.1", "fe80::1", "日本語", "😀", " ",
    "\n", "the", "sk-", "AKIA", "1 1 1 1 1 1 1 1 1 1",
])


@st.composite
def texts(draw: st.DrawFn) -> str:
    """Pieces of every kind the databases look for, some disguised, with the disguised values of the fold tests."""
    parts = [draw(disguise(p)) if draw(st.booleans()) else p for p in draw(st.lists(_PIECES, max_size=12))]
    if draw(st.booleans()):
        parts.append(draw(documents())[0])
    draw(st.randoms()).shuffle(parts)
    return " ".join(parts)


def _steps(scanners: list[StreamScanner], feed: object, end: object, data: bytes,
           cuts: list[int]) -> list[list[tuple[int, list]]]:
    """Feed `data` in pieces, settling every scanner after each (finally with final=True): what each answered."""
    out: list[list[tuple[int, list]]] = [[] for _ in scanners]
    prev = 0
    for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        if c > prev:
            feed(data[prev:c])  # type: ignore[operator]
            prev = c
        for final in ((False, True) if c == len(data) else (False,)):
            if final:
                end()  # type: ignore[operator]
            for i, sc in enumerate(scanners):
                out[i].append(sc.settle(final=final))
    return out


def _forget_verdicts() -> None:
    """Empty the phone judge's verdict cache, so the budget each run spends is its own (a cached verdict is free)."""
    for d in DBS:
        for p in d.patterns:
            if p.costly:
                p.context_validator._verdicts.clear()  # type: ignore[union-attr]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts(), st.lists(st.integers(0, 600), max_size=40), st.booleans())
def test_each_database_settles_as_it_does_alone(text: str, cuts: list[int], json: bool) -> None:
    data = text.encode()
    _forget_verdicts()
    alone_budgets = [ScanBudget() for _ in DBS]
    alone = [StreamScanner(d, json, b) for d, b in zip(DBS, alone_budgets)]

    def feed_alone(piece: bytes) -> None:
        for sc in alone:
            sc.feed(piece)

    want = _steps(alone, feed_alone, lambda: None, data, cuts)
    _forget_verdicts()
    group_budgets = [ScanBudget() for _ in DBS]
    group = ScanGroup(JOINT, json, group_budgets)
    got = _steps(group.scanners, group.feed, group.end, data, cuts)
    assert got == want
    assert [sc.scanned for sc in group.scanners] == [sc.scanned for sc in alone]
    assert [(b.used, b.scanned) for b in group_budgets] == [(b.used, b.scanned) for b in alone_budgets]


def test_reports_reach_the_database_that_owns_them() -> None:
    """One text with something for each database: each gets its own spans (what it finds alone), none of
    another's."""
    pieces = [b"mail joe@example.com, the forbidden fruit, code-1234 and 123-45-6789 -----BEGIN PRIVATE KEY-----",
              b"abc-----END PRIVATE KEY----- done"]
    group = ScanGroup(JOINT, False, [ScanBudget() for _ in DBS])
    for p in pieces:
        group.feed(p)
    group.end()
    found = [sorted((s.start, s.end, s.entity) for s in sc.settle(final=True)[1]) for sc in group.scanners]
    assert found == [sorted((s.start, s.end, s.entity) for s in find_spans(d, b"".join(pieces))) for d in DBS]
    entities = [{e for _, _, e in f} for f in found]
    assert {"EMAIL", "US_SSN"} <= entities[0] and "SAFETY_TERM" not in entities[0]
    assert "SAFETY_TERM" in entities[1] and "EMAIL" not in entities[1]
    assert "PRIVATE_KEY" in entities[2] and "SAFETY_TERM" not in entities[2]


def test_a_joint_database_needs_two_and_a_joint_scanner_is_not_fed_alone() -> None:
    with pytest.raises(ValueError):
        JointDB(DBS[:1])
    with pytest.raises(ValueError):
        ScanGroup(JOINT, False, [ScanBudget()])
    group = ScanGroup(JOINT, False, [ScanBudget() for _ in DBS])
    with pytest.raises(RuntimeError, match="ScanGroup"):
        group.scanners[0].feed(b"x")
    with pytest.raises(RuntimeError, match="ScanGroup"):
        group.scanners[0].settle(final=True)
    group.close()
    with pytest.raises(RuntimeError, match="closed"):
        group.feed(b"x")


def test_a_finished_group_is_freed_by_reference_counting() -> None:
    import gc

    gc.collect()
    gc.disable()
    try:
        for finish in ("end", "close"):
            group = ScanGroup(JOINT, False, [ScanBudget() for _ in DBS])
            group.feed(b"mail joe@example.com, the forbidden fruit ")
            if finish == "end":
                group.end()
                assert [sc.settle(final=True)[1] for sc in group.scanners][0]
            else:
                group.close()
            del group
            assert fastgw_garbage() == [], f"a group finished by {finish} was left to the cyclic collector"
    finally:
        gc.enable()


def test_a_group_outlives_its_database_and_closes_its_stream() -> None:
    """The group holds its database: dropped with the chain that built it while texts are open, then collected,
    the streams' closing must not touch freed memory (it segfaulted)."""
    code = textwrap.dedent("""
        import gc
        from fastgw.scan.database import JointDB, ScanDB
        from fastgw.scan.patterns import BUILTIN
        from fastgw.scan.scanner import ScanBudget, ScanGroup
        from fastgw.policy.safety import SafetyFilter, SafetyPolicy
        joint = JointDB([ScanDB(list(BUILTIN)), SafetyPolicy(SafetyFilter(terms=["forbidden fruit"])).db])
        joint.allocate_scratch()
        groups = [ScanGroup(joint, False, [ScanBudget(), ScanBudget()]) for _ in range(200)]
        del joint
        gc.collect()
        junk = [bytearray(64) for _ in range(100000)]  # reuse freed memory, as a busy worker would
        found = 0
        for g in groups[:100]:
            g.feed(b"mail joe")
            gc.collect()
            g.feed(b"@example.com, the forbidden fruit ")
            g.end()
            found += sum(len(sc.settle(final=True)[1]) for sc in g.scanners)
        for g in groups[100:]:
            g.feed(b"open forbidden fr")  # dropped open: closed by __del__
        del groups, g
        gc.collect()
        print(found)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"scanner process died ({r.returncode}): {r.stderr[-2000:]}"
    assert r.stdout.strip() == "200"


def test_a_joint_database_is_not_kept_serialized() -> None:
    """Its serialized copy would sit in every worker's memory (~0.7 MB with the built-in detectors) to save a reload
    0.17 s: the compile cache neither keeps nor reads it."""
    from fastgw.scan import database

    before = list(database._compiled)
    joint = JointDB(DBS[:2])
    assert list(database._compiled) == before
    joint.allocate_scratch()
    group = ScanGroup(joint, False, [ScanBudget(), ScanBudget()])
    group.feed(b"mail joe@example.com, the forbidden fruit ")
    group.end()
    assert [len(sc.settle(final=True)[1]) for sc in group.scanners] == [1, 1]


def test_end_anchored_matches_are_reported_when_the_stream_closes() -> None:
    """An expression anchored at the end ('$') matches only once the text is known to have ended: the report
    comes from the stream's close (which calls the handler the stream was opened with), alone and in a group."""
    ending = SafetyPolicy(SafetyFilter(action="redact", terms=["zz"], regex=[r"the\s+end\s*$"]))
    ending.allocate_scratch()
    dbs = [DBS[0], ending.db]
    joint = JointDB(dbs)
    joint.allocate_scratch()
    for text in (b"and that was the end", b"the end  ", b"mail joe@example.com: the end"):
        alone = StreamScanner(ending.db)
        alone.feed(text)
        assert alone.settle()[1] == []  # not yet: more text may follow
        got = alone.settle(final=True)[1]
        assert [(s.end, s.entity) for s in got] == [(len(text), "SAFETY_REGEX")], text
        group = ScanGroup(joint, False, [ScanBudget() for _ in dbs])
        group.feed(text)
        group.end()
        assert [(s.end, s.entity) for s in group.scanners[1].settle(final=True)[1]] == [(len(text),
                                                                                        "SAFETY_REGEX")], text
    not_at_end = StreamScanner(ending.db)
    not_at_end.feed(b"the end. More follows")
    assert not_at_end.settle(final=True)[1] == []
