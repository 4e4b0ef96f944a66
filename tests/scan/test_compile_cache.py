"""Hyperscan databases compiled once per process (`fastgw.scan.database._compile`): building the same patterns
again loads a serialized copy instead of compiling, and every copy is a database of its own."""

from __future__ import annotations

import hyperscan
import pytest

from fastgw.scan import database
from fastgw.scan.database import ScanDB
from fastgw.scan.patterns import BUILTIN
from fastgw.scan.scanner import find_spans

STREAM = hyperscan.HS_MODE_STREAM | hyperscan.HS_MODE_SOM_HORIZON_LARGE


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The modes of the databases compiled (not loaded) from here on, with an empty cache."""
    monkeypatch.setattr(database, "_compiled", database._compiled.__class__())
    modes: list[int] = []
    real = hyperscan.Database

    def counting(mode: int) -> hyperscan.Database:
        modes.append(mode)
        return real(mode=mode)

    monkeypatch.setattr(database.hyperscan, "Database", counting)
    return modes


def test_the_same_patterns_are_compiled_once_and_each_build_gets_its_own_copy(compiles: list[int]) -> None:
    first = ScanDB(list(BUILTIN))
    assert compiles == [STREAM, hyperscan.HS_MODE_BLOCK]
    second = ScanDB(list(BUILTIN))
    assert len(compiles) == 2  # loaded, not compiled
    assert second.hs is not first.hs and second.any is not first.any
    for db in (first, second):
        db.allocate_scratch()
    assert second.hs.scratch is not first.hs.scratch  # two users never share a scratch
    text = b"mail joe@example.com or call +1 415 555 0100"
    assert find_spans(first, text) == find_spans(second, text) and len(find_spans(second, text)) == 2
    ScanDB(list(BUILTIN[:3]))
    assert len(compiles) == 4  # other patterns: compiled


def test_the_cache_keeps_the_most_recently_used(compiles: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "COMPILED_KEPT", 2)
    ScanDB(list(BUILTIN[:1]))
    ScanDB(list(BUILTIN[1:2]))  # its two databases push out the first's
    assert len(compiles) == 4 and len(database._compiled) == 2
    ScanDB(list(BUILTIN[1:2]))
    assert len(compiles) == 4  # still kept
    ScanDB(list(BUILTIN[:1]))
    assert len(compiles) == 6  # dropped: compiled again
