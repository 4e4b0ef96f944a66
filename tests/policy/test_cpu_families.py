"""The slow input families `python -m bench.scan_worst` found (issue 15, item 1) stay linear with a small constant:
each, as a 128 KiB prompt through pii-detector (every entity), safety-filter and prompt-injection on the sliced
input path, costs at most BOUND µs of CPU per byte (process_time; generous for a loaded 2-core box).

Before this work (same families, 64 KiB): 'rand:digits/spaced9' 51 µs/byte, random digits with a separator 33,
'1.1.1.1 ' 15, '1 ' 13, '1.' 14, 'rand:cards' 20, '1 nbsp' 10, 'a:' 2.5, many tiny fields 0.5 (per byte of body).
After, on the same box: all at or below ~1.1 (see bench/scan_worst.py's output)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from bench.scan_worst import FAMILIES, _body, build_chain
from fastgw.api.errors import GatewayError
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain, Slicer

#: µs of policy CPU per byte of prompt allowed (the worst family measures ~1.1 here; the issue's input cost 3).
BOUND = 3.0
SIZE = 128 * 1024

FAMILIES_CHECKED = ["rand:digits/spaced9", "rand:digit-space", "rand:digits+seps", "rand:cards", "rand:ipv4",
                    "1.1.1.1 ", "1 ", "1.", "1-", "a:", "::1 ", "1 nbsp", "fullwidth digits", "1 zwsp",
                    "1 2 3 4 5 6 7 8 9, ", "call 1 2 3 4 5 6 7 8 9\n", "sk-ant-api01-", "eyJa.eyJb.(1MB)",
                    "DE89370400440532013000 ", "homoglyph", "tiny fields"]


@pytest.fixture(scope="module")
def chain() -> Chain:
    return build_chain()


@pytest.mark.parametrize("name", FAMILIES_CHECKED)
def test_family_costs_at_most_bound_per_byte(chain: Chain, name: str) -> None:
    text = FAMILIES[name](SIZE, random.Random(1))
    best = float("inf")
    for _ in range(2):  # the less disturbed of two runs
        body = _body(name, text)
        ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
        ctx.endpoint = "chat/completions"
        t0 = time.process_time()
        try:
            asyncio.run(chain.check_input_async(ctx, body, Slicer(budget=60.0)))
        except GatewayError:
            pass  # a block counts as what it cost
        best = min(best, time.process_time() - t0)
    per_byte = best / len(text.encode()) * 1e6
    assert per_byte <= BOUND, f"{name!r}: {per_byte:.2f} µs/byte"
