"""`bench/micro.py`: every case runs (quick mode) and passes its own output check; no timing assertions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import micro
from fastgw import accesslog
from fastgw.api.limits import ACCESS_LOG_BATCH_LINES


@pytest.fixture(autouse=True)
def access_log_restored() -> Iterator[None]:
    """`accesslog.line` points the process's access log at /dev/null with its own names: set back after."""
    yield
    accesslog.set_redactor(None, ())
    accesslog.configure()


@pytest.mark.parametrize("case", micro.CASES, ids=[c.name for c in micro.CASES])
def test_case_runs_and_checks_its_output(case: micro.Case):
    r = micro.run_case(case, quick=True)
    assert r.checked and r.name == case.name
    assert r.ns_per_op > 0 and r.ops_per_s > 0 and r.loops > 0
    if case.name.startswith(("sse.", "relay.", "chunked.")):
        assert r.events == micro.N_EVENTS and r.us_per_event is not None and r.us_per_event > 0
    if case.name == "accesslog.line":
        assert r.events == ACCESS_LOG_BATCH_LINES  # per event: per line of a full batch


def test_a_broken_case_fails_loudly():
    bad = micro.Case("broken", lambda: micro.Bench(lambda: [], lambda out: micro._sse_decode("whole").check(out)))
    with pytest.raises(AssertionError):
        micro.run_case(bad, quick=True)


def test_command_line_filter_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "r.json"
    assert micro.main(["--quick", "--filter", "chunked", "--json", str(path)]) == 0
    names = [r["name"] for r in json.loads(path.read_text())["results"]]
    assert names == ["chunked.write_chunk", "chunked.frame_chunk"]
    assert "chunked.write_chunk" in capsys.readouterr().out
    assert micro.main(["--quick", "--filter", "no-such-case"]) == 2
