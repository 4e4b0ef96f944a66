"""bench.ttft_split: the legs of each request line up and add up; a short run through fastgw and direct."""

from __future__ import annotations

import subprocess
import sys
from array import array

import pytest

from bench import ttft_split
from bench.stream import REPO


def test_split_takes_the_upstreams_last_answers_and_the_legs_add_up():
    # Two warm-up answers the client did not record, then three recorded requests (times in seconds).
    upstream = [0.0, 0.1, 0.5, 0.6, 10.000100, 10.000120, 20.000200, 20.000230, 30.000300, 30.000340]
    t0s = array("d", [10.0, 20.0, 30.0])
    firsts = array("d", [10.000150, 20.000260, 30.000400])
    legs = ttft_split.split(t0s, firsts, upstream)
    assert legs["request"] == pytest.approx(200.0)   # medians of 100, 200, 300 µs
    assert legs["upstream"] == pytest.approx(30.0)   # of 20, 30, 40
    assert legs["answer"] == pytest.approx(30.0)     # of 30, 30, 60
    assert legs["ttft"] == pytest.approx(260.0)      # of 150, 260, 400
    one = ttft_split.split(t0s[:1], firsts[:1], upstream[:6])
    assert one["ttft"] == pytest.approx(one["request"] + one["upstream"] + one["answer"])


def test_split_refuses_times_that_do_not_line_up():
    with pytest.raises(ValueError, match="out of order"):
        ttft_split.split(array("d", [10.0]), array("d", [10.001]), [9.0, 9.5])  # the upstream answered before
    with pytest.raises(ValueError, match="noted by the upstream"):
        ttft_split.split(array("d", [10.0, 11.0]), array("d", [10.001, 11.001]), [10.0002, 10.0003])


def test_a_short_run_through_fastgw_and_direct():
    run = subprocess.run([sys.executable, "-m", "bench.ttft_split", "--systems", "fastgw,direct", "--requests", "40",
                          "--warmup", "5", "--rounds", "1"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:6] for line in run.stdout.splitlines()
            if line.startswith("| fastgw ") or line.startswith("| direct ")}
    assert set(rows) == {"fastgw", "direct"}, run.stdout
    for name, cells in rows.items():
        ttft, request, upstream, answer = (float(c) for c in cells)
        assert min(ttft, request, upstream, answer) > 0, (name, cells)
    # Through a proxy both legs cross it: each is longer than the client's own write to the upstream.
    assert float(rows["fastgw"][1]) > float(rows["direct"][1]) and float(rows["fastgw"][3]) > float(rows["direct"][3])
