"""fastgw.scan.literals: the one-pass "any of these literals?" check the usage scan of a stream relies on."""

from __future__ import annotations

import os

import pytest

from fastgw.scan.literals import Literals


def test_finds_any_literal_anywhere() -> None:
    lits = Literals(b'"choices":[]', b'"choices": []')
    assert lits.first(b'data: {"choices":[],"usage":{}}\n\n') >= 0
    assert lits.first(b'x' * 10000 + b'"choices": []') >= 0
    assert lits.first(b'"choices":[]') >= 0  # the whole input
    assert lits.first(b'data: {"choices":[{"index":0}]}\n\n') < 0
    assert lits.first(b'"choices":[ ]') < 0
    assert lits.first(b"") < 0


def test_literals_are_bytes_not_patterns() -> None:
    lits = Literals(b"a.b", b"[x]")
    assert lits.first(b"--a.b--") >= 0 and lits.first(b"[x]") >= 0
    assert lits.first(b"aXb") < 0 and lits.first(b"x") < 0


def test_answers_again_after_a_hit() -> None:
    lits = Literals(b"needle")
    assert lits.first(b"a needle") >= 0
    assert lits.first(b"hay") < 0  # no report carried over from the last scan


def test_recompiled_in_a_forked_child() -> None:
    lits = Literals(b"needle")
    assert lits.first(b"needle") >= 0
    pid = os.fork()
    if pid == 0:  # the child scans with its own database and scratch
        os._exit(0 if lits.first(b"a needle") >= 0 and lits.first(b"hay") < 0 and lits._pid == os.getpid() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_no_system_call_per_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """`first` runs once per streamed read: it asks no process id of the kernel (the fork hook keeps it)."""
    lits = Literals(b"needle")
    assert lits.first(b"needle") >= 0

    def getpid() -> int:
        raise AssertionError("os.getpid() called by a scan")

    monkeypatch.setattr(os, "getpid", getpid)
    assert lits.first(b"a needle") >= 0 and lits.first(b"hay") < 0


def test_needs_literals() -> None:
    with pytest.raises(ValueError):
        Literals()
    with pytest.raises(ValueError):
        Literals(b"")


def test_first_is_where_the_earliest_literal_starts() -> None:
    lits = Literals(b'"choices":[]', b'"choices": []')
    a, b = b'"choices":[]', b'"choices": []'
    for data in [b"", b"x" * 50, a, b, b"xx" + a, b"x" * 9000 + b + b"y" + a, b"x" * 10 + a + b"..." + b,
                 b + b + a, b'"choices": [' + a, b'"choices":["choices": []']:
        want = min((i for i in (data.find(a), data.find(b)) if i >= 0), default=-1)
        assert lits.first(data) == want, data[:40]
        for start in (0, 1, 11, 13, len(data) // 2, len(data), len(data) + 5):
            want = min((i for i in (data.find(a, start), data.find(b, start)) if i >= 0), default=-1)
            assert lits.first(data, start) == want, (data[:40], start)
    assert lits.first(b"x" + a) == 1 and lits.first(b"hay") < 0  # no report carried over between scans
