"""The holdback's per-scan work in C (fastgw/scan/_holdc.c) equals the scanner's Python forms: `runs` is each group's
trailing run as `bytes.rstrip(alphabet)` measures it, `hold` each group's holdback as its start expression or
`hold_from` reads the run (capped at its width), the largest of them; a pattern's `hold_word` is what its
`hold_from` answers; a compiled scanner uses them (its pure-Python form runs the loops: tests/test_compiled.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.scan import _holdc
from fastgw.scan.database import DIGITS, ScanDB, _Group, _table
from fastgw.scan.patterns import BUILTIN, ENTITIES, patterns_for
from fastgw.scan.validators import iban_grouped_hold

_UNIVERSE = b"ab1 -.\xc3\xa9Z"


def _short_word(run: bytes) -> int:
    """A `hold_from` whose `hold_word` is (b"1", 2) over start bytes a, b: `iban_grouped_hold`'s shape."""
    if b"1" in run:
        return len(run) // 2
    w = len(run) - len(run.rstrip(b"ab"))
    return w if w <= 2 and (w == len(run) or not run[-w - 1:-w].isalnum()) else 0


def _half(run: bytes) -> int:
    return len(run) // 2


def _group(alphabet: set[int], start: set[int], width: int, how: int) -> _Group:
    if how == 2:  # a hold_from alone
        return _Group(bytes(sorted(alphabet)), bytes(sorted(start & alphabet)), width, _half)
    if how == 3:  # a hold_from and its declared answer
        return _Group(bytes(sorted(alphabet | {97, 98})), b"ab", width, _short_word, (b"1", 2))
    return _Group(bytes(sorted(alphabet)), bytes(sorted(start & alphabet)), width)


_groups = st.lists(st.builds(_group, st.sets(st.sampled_from(_UNIVERSE), min_size=1),
                             st.sets(st.sampled_from(_UNIVERSE)), st.integers(1, 12), st.integers(0, 3)), max_size=5)
_pieces = st.lists(st.lists(st.sampled_from(_UNIVERSE), min_size=1, max_size=9).map(bytes), max_size=12)


def _runs_py(data: bytes, groups: list[_Group], runs: list[int]) -> None:
    n = len(data)
    for i, g in enumerate(groups):
        r = n - len(data.rstrip(g.alphabet))
        runs[i] = runs[i] + n if r == n else r


def _hold_of(g: _Group, run: bytes) -> int:
    """The scanner's Python form for one group."""
    if g.hold_from is not None:
        return g.hold_from(run)
    if g.start_re is None:
        return len(run)
    m = g.start_re.search(run)
    return 0 if m is None else len(run) - m.start()


@settings(max_examples=500, deadline=None)
@given(_groups, _pieces, st.integers(0, 20), st.integers(0, 6))
def test_the_c_forms_are_the_python_forms(groups: list[_Group], pieces: list[bytes], keep: int, hold: int) -> None:
    members = b"".join(_table(g.alphabet) for g in groups)
    spec = b"".join(g.spec() for g in groups)
    c_runs, py_runs = [0] * len(groups), [0] * len(groups)
    text = b""
    left = [99]  # cleared by the call
    for data in pieces:
        _holdc.runs(data, members, c_runs)
        _runs_py(data, groups, py_runs)
        text += data
        assert c_runs == py_runs
        tail = text[-keep:] if keep else b""
        runs = [text[len(text) - min(r, g.width):] for g, r in zip(groups, py_runs)]
        # What the scanner's Python loop answers, every group read from the whole text ...
        want = max([hold] + [_hold_of(g, run) for g, run in zip(groups, runs)])
        # ... and what C answers, with the groups it leaves to the caller read the same way.
        got = _holdc.hold(tail, c_runs, hold, spec, left)
        for i in left:
            g = groups[i]
            assert g.kind == 2 or len(runs[i]) > len(tail) or g.kind == 3 and b"1" in runs[i]
            got = max(got, _hold_of(g, runs[i]))
        assert got == want
        # C leaves nothing it can answer: a declared answer is used whenever the run has no byte of the gate.
        assert not [i for i, g in enumerate(groups) if g.kind in (0, 1, 3) and len(runs[i]) <= len(tail)
                    and not (g.kind == 3 and b"1" in runs[i]) and i in left]


_IBAN_RUN = st.lists(st.sampled_from([b"a", b"z", b"gb", b"de", b"x", b" ", b"  ", b"1", b"16", b"0"]),
                     min_size=1, max_size=30).map(b"".join)


@pytest.fixture(scope="module")
def pii_db() -> ScanDB:
    return ScanDB(patterns_for(ENTITIES), prefilter=False)


@settings(max_examples=1000, deadline=None)
@given(run=_IBAN_RUN)
def test_each_declared_last_word_is_what_its_hold_from_answers(pii_db: ScanDB, run: bytes) -> None:
    """A pattern's `hold_word` stands in for its `hold_from` wherever the run has no byte of the gate: the two must
    agree, or C would hold less than the pattern needs (a leak) or more (a stall). Read as the pii-detector's
    database groups it."""
    assert [p.name for p in BUILTIN if p.hold_word is not None] == ["IBAN_LOWER_GROUPED"]
    declared = [(i, g) for i, g in enumerate(pii_db.groups) if g.kind == 3]
    assert len(declared) == 1
    for i, g in declared:
        assert g.hold_from is iban_grouped_hold and g.hold_word == (DIGITS, 2)
        run = run[-g.width:]
        runs = [0] * len(pii_db.groups)
        runs[i] = len(run)
        left: list[int] = []
        got = _holdc.hold(run, runs, 0, pii_db.hold_spec, left)
        if any(b in DIGITS for b in run):
            assert left == [i]
        else:
            assert left == [] and got == iban_grouped_hold(run), run


def test_a_run_grows_across_scans_and_restarts_at_a_byte_outside_its_alphabet() -> None:
    members = _table(b"ab") + _table(b" ")
    runs = [0, 0]
    _holdc.runs(b"xab", members, runs)
    assert runs == [2, 0]
    _holdc.runs(b"ba", members, runs)
    assert runs == [4, 0]
    _holdc.runs(b"a ", members, runs)
    assert runs == [0, 1]


def test_a_group_is_held_from_its_first_start_byte_within_its_width() -> None:
    spec = _Group(b"ab1", b"1", 4).spec()
    left: list[int] = []
    assert _holdc.hold(b"xaa1aab", [6], 0, spec, left) == 4  # the last 4 bytes: 1aab
    assert _holdc.hold(b"aab1ab", [6], 0, spec, left) == 3  # b1ab
    assert _holdc.hold(b"xaaaab", [6], 0, spec, left) == 0  # no start byte in the run
    assert _holdc.hold(b"ab", [6], 0, spec, left) == 0 and left == [0]  # the run reaches past the tail: the caller's
    anywhere = _Group(b"ab1", b"ab1", 4).spec()
    assert _holdc.hold(b"xaaab1", [6], 1, anywhere, left) == 4 and left == []  # any byte starts one: all of it


def test_a_declared_last_word_is_held_only_at_a_word_start() -> None:
    spec = _Group(b" ab1", b"ab", 10, _short_word, (b"1", 2)).spec()
    left: list[int] = []
    assert _holdc.hold(b"ab ba ab", [8], 0, spec, left) == 2 and left == []
    assert _holdc.hold(b"ab ba aba", [9], 0, spec, left) == 0  # three letters: no match can be in progress
    assert _holdc.hold(b"ab", [2], 0, spec, left) == 2  # the whole run
    assert _holdc.hold(b"ab ", [3], 0, spec, left) == 0
    assert _holdc.hold(b"ab 1a", [5], 0, spec, left) == 0 and left == [0]  # a byte of the gate: the caller's


@pytest.mark.parametrize("call", [
    lambda: _holdc.runs(b"a", b"\x00" * 255, [0]),
    lambda: _holdc.runs("a", b"\x00" * 256, [0]),  # type: ignore[arg-type]
    lambda: _holdc.runs(b"a", b"\x00" * 256, (0,)),  # type: ignore[arg-type]
    lambda: _holdc.hold(b"a", [1], 0, b"\x00" * 527, []),
    lambda: _holdc.hold(b"a", [1, 1], 0, b"\x00" * 528, []),
    lambda: _holdc.hold(b"a", [1], 0, b"\x00" * 528),  # type: ignore[call-arg]
    lambda: _holdc.hold(b"a", ["x"], 0, b"\x00" * 528, []),  # type: ignore[list-item]
])
def test_bad_arguments_raise_rather_than_read_out_of_bounds(call: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        call()  # type: ignore[operator]


def test_a_last_word_bound_past_a_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="hold_word bound"):
        _Group(b"ab", b"a", 4, _half, (b"1", 256)).spec()
