"""Streamed answers under issue 15's fair-CPU rules: a long upstream event is scanned in slices of the loop (the
upstream paused meanwhile) with the same output as in one go, and a stream past the request's CPU budget ends with
the dialect's `request_too_expensive` error event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from fastgw.config import PiiDetector, SafetyFilter
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain, build_chain
from fastgw.policy.findings import Findings
from fastgw.policy.stream.core import DEFER_BYTES
from fastgw.policy_relay import METER_FROM, PolicyRelay
from fastgw.proto.flow import FlowControl
from fastgw.proto.server import Responder
from fastgw.proto.sse import SSEDecoder


class _Transport:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.parts.extend(parts)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


class _Source:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.detached = False

    def set_sink(self, sink: object) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def detach(self) -> None:
        self.detached = True


def _chain() -> Chain:
    chain = build_chain([("pii-detector", PiiDetector(action="redact")),
                         ("safety-filter", SafetyFilter(terms=["bomb making"], action="redact"))])
    chain.allocate_scratch()
    chain.findings = Findings([])
    return chain


def _event(text: str) -> bytes:
    return b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": text}, "finish_reason": None}]}) + b"\n\n"


def _texts(body: bytes) -> tuple[str, list[dict]]:
    """The client's text and any error objects, from the chunked HTTP response the relay wrote."""
    _, _, rest = body.partition(b"\r\n\r\n")
    raw = b""
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        raw += rest[:n]
        rest = rest[n + 2:]
        if n == 0:
            break
    text, errors = "", []
    for ev in SSEDecoder().feed(raw):
        if ev.data and ev.data.startswith("{"):
            obj = orjson.loads(ev.data)
            if "error" in obj:
                errors.append(obj["error"])
            for ch in obj.get("choices") or ():
                text += (ch.get("delta") or {}).get("content") or ""
    return text, errors


async def _relay(reads: list[bytes], budget: float | None = None) -> tuple[bytes, _Source, list[float], Any]:
    loop = asyncio.get_running_loop()
    chain = _chain()
    if budget is not None:
        chain.max_request_cpu = budget
    t = _Transport()
    resp = Responder(t, FlowControl(loop), True, False)  # type: ignore[arg-type]
    ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
    ctx.endpoint = "chat/completions"
    src = _Source()
    relay = PolicyRelay(resp, src, loop, (200, [(b"content-type", b"text/event-stream")]),
                        chain.stream_policy(ctx))
    relay.start()
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tk = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    for r in reads:
        relay.on_data(r)
        relay.flush()
    relay.on_end()
    end = await relay.done
    stop = True
    await tk
    if end.tail is not None:
        relay.close_with(end.tail)
    return b"".join(t.parts), src, gaps, end


PROSE = "The quick brown fox jumps over the lazy dog. Mail jo@example.com, call +49 30 1234567. " * 9000


def test_a_long_event_is_scanned_in_slices_with_the_same_output() -> None:
    assert len(PROSE) > DEFER_BYTES
    reads = [_event("hello "), _event(PROSE) + _event(" tail a@b.co"), b"data: [DONE]\n\n"]
    body, src, gaps, end = asyncio.run(_relay(reads))
    text, errors = _texts(body)
    assert not errors and end.error is None
    expected = ("hello " + PROSE + " tail a@b.co").replace("jo@example.com", "[REDACTED:EMAIL]").replace(
        "+49 30 1234567", "[REDACTED:PHONE]").replace("a@b.co", "[REDACTED:EMAIL]")
    assert text == expected
    assert src.paused == 1  # the upstream waited while the long event was scanned
    assert b"data: [DONE]" in body
    # Scanning ~800 KB took many turns of the loop; the longest stretch is the release of the event (rendered in
    # one go: its ~18,000 redactions) or a slice.
    assert len(gaps) > 20
    assert sorted(gaps)[-2] < 0.05, sorted(gaps)[-5:]


def test_short_events_are_not_deferred() -> None:
    reads = [_event("hi "), _event("mail jo@example.com"), b"data: [DONE]\n\n"]
    body, src, _, _ = asyncio.run(_relay(reads))
    assert _texts(body)[0] == "hi mail [REDACTED:EMAIL]"
    assert src.paused == 0 and src.resumed == 0


def test_events_behind_a_long_one_wait_for_it_in_order() -> None:
    reads = [_event("A" * (DEFER_BYTES * 2)) + _event(" b"), _event(" c jo@example.com"), b"data: [DONE]\n\n"]
    body, _, _, _ = asyncio.run(_relay(reads))
    assert _texts(body)[0] == "A" * (DEFER_BYTES * 2) + " b c [REDACTED:EMAIL]"


def test_a_stream_past_the_budget_ends_with_request_too_expensive() -> None:
    """A first event of normal text goes out; the metered long text after it blows a tiny budget: the client gets
    what was released, then the chat dialect's error event and [DONE]."""
    reads = [_event("fine start. "), b"data: [DONE]\n\n"]
    reads.insert(1, _event("1 2 3 4 5 6 7 8 9, " * 40_000))
    assert len(reads[1]) > METER_FROM
    body, src, _, end = asyncio.run(_relay(reads, budget=0.01))
    text, errors = _texts(body)
    assert end.error is not None and end.error.code == "request_too_expensive"
    assert text.startswith("fine start.")
    assert errors and errors[-1]["code"] == "request_too_expensive"
    assert "0.01 s" in errors[-1]["message"]
    assert src.detached
    assert body.rstrip().endswith(b"0")  # the chunked response was ended


@pytest.mark.parametrize("n", [1, 3])
def test_policy_work_then_release_equals_release_alone(n: int) -> None:
    """`StreamPolicy.work` in short slices, then `release`, gives what `release` gives on its own (it scans what
    is queued whole): the deferral changes when text is scanned, never what is released."""
    from fastgw.proto.sse import SSEDecoder as D

    chain = _chain()
    raw = b"".join(_event(PROSE[i::n]) for i in range(n)) + b"data: [DONE]\n\n"
    outs = []
    for sliced in (False, True):
        ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
        pol = chain.stream_policy(ctx)
        out: list[bytes] = []
        for ev in D().feed(raw):
            pol.push(ev)
            while sliced and pol.has_work:
                pol.work(time.perf_counter() + 0.0005)
            out += pol.release()
        out += pol.finish()
        outs.append(b"".join(out))
    assert outs[0] == outs[1]
