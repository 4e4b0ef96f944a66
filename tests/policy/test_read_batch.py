"""All events of one upstream read are scanned in one call per policy and text (issue 18): the pieces a push
takes wait on their text stream until it is settled, never more than DEFER_BYTES of them, and the answer is
the same as when each event is scanned alone; with several output policies, one Hyperscan scan serves them all."""

from __future__ import annotations

import asyncio

import orjson

from fastgw.policy.base import RequestContext
from fastgw.policy.chain import build_chain
from fastgw.policy.pii import PiiDetector
from fastgw.policy.stream.core import DEFER_BYTES, StreamPolicy
from fastgw.proto.sse import SSEDecoder
from fastgw.scan.scanner import StreamScanner
from tests.policy.test_cpu_stream import _chain, _event, _Transport
from tests.policy.test_first_event import relay_reads
from tests.support.garbage import fastgw_garbage


def _policy() -> StreamPolicy:
    ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
    ctx.endpoint = "chat/completions"
    return _chain().stream_policy(ctx)


def _push(policy: StreamPolicy, text: str) -> None:
    for ev in SSEDecoder().feed(_event(text)):
        policy.push(ev)


def _scanners(policy: StreamPolicy) -> list[StreamScanner]:
    """The scanners of the policy's one text stream (it exists after the first push; its scanners are opened when
    it is first given to them)."""
    (t,) = policy._texts.values()
    return t.scanners


def test_the_events_of_a_read_reach_each_scanner_in_one_call() -> None:
    policy = _policy()
    _push(policy, "first ")
    words = [f"word{i} " for i in range(30)]
    for w in words:
        _push(policy, w)
    assert _scanners(policy) == []  # taken, not scanned yet: no scanner opened
    out = policy.release()
    scanners = _scanners(policy)
    assert len(scanners) == 2  # pii-detector and safety-filter
    n = len("first ") + sum(len(w) for w in words)
    for sc in scanners:
        assert (sc.feeds, sc.end) == (1, n)  # the first push's piece and the read's thirty, in one call
        assert sc.settles == 1  # and settled once, not once per event that fed it
    assert out  # and released after that one scan
    assert policy.release() == [] and all((sc.feeds, sc.end) == (1, n) for sc in scanners)  # nothing fed twice


def test_the_policies_scan_a_text_once_between_them() -> None:
    """With two output policies the chain's stream database is joint: each text opens one group, whose single
    Hyperscan stream scans each piece for both (the scanners open none of their own), and the findings are each
    policy's."""
    policy = _policy()
    assert policy.joint is not None and policy.joint.dbs == [p.db for p in policy.policies]
    _push(policy, "mail joe@example.com about bomb")
    out = policy.release()
    (t,) = policy._texts.values()
    assert t.group is not None and t.group.scanners == t.scanners and len(t.scanners) == 2
    _push(policy, " making now ")
    out += policy.release() + policy.finish()
    assert t.done and t.group is None and t.scanned() == [len("mail joe@example.com about bomb making now ")] * 2
    text = "".join(orjson.loads(ev.data)["choices"][0]["delta"]["content"] for ev in SSEDecoder().feed(b"".join(out)))
    assert "joe@example.com" not in text and "bomb making" not in text
    assert text == "mail [REDACTED:EMAIL] about [FILTERED] now "


def test_a_joint_stream_policy_is_freed_by_reference_counting_finished_or_closed() -> None:
    """Finished, or closed mid-text (the client gone), a policy whose texts have groups leaves nothing to the cyclic
    collector: closing it closes each group's stream, which held the group in a cycle (its match handler)."""
    import gc

    gc.collect()
    gc.disable()
    try:
        for finish in ("finish", "close"):
            policy = _policy()
            _push(policy, "mail joe@example.com about bomb")
            policy.release()
            (t,) = policy._texts.values()
            assert t.group is not None
            if finish == "finish":
                policy.finish()
            else:
                policy.close()
            del policy, t
            assert fastgw_garbage() == [], f"a joint stream policy ended by {finish} was left to the collector"
    finally:
        gc.enable()


def test_a_group_is_opened_only_with_several_policies() -> None:
    one = build_chain([("pii-detector", PiiDetector(action="redact"))])
    one.allocate_scratch()
    ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
    ctx.endpoint = "chat/completions"
    policy = one.stream_policy(ctx)
    assert policy.joint is None
    _push(policy, "mail joe@example.com ")
    policy.release()
    (t,) = policy._texts.values()
    assert t.group is None and len(t.scanners) == 1


def test_no_more_than_defer_bytes_wait() -> None:
    policy = _policy()
    _push(policy, "a ")
    piece = "lorem ipsum " * 100  # 1,200 bytes
    fed = [0, 0]
    for _ in range(3 * DEFER_BYTES // len(piece)):
        _push(policy, piece)
        (t,) = policy._texts.values()
        assert t.unfed_n <= DEFER_BYTES
        for i, sc in enumerate(_scanners(policy)):  # each call took at most what waited plus the piece that tipped it
            if sc.end > fed[i]:
                assert sc.end - fed[i] <= DEFER_BYTES + len(piece)
                fed[i] = sc.end
    scanners = _scanners(policy)
    assert len(scanners) == 2  # opened when the waiting pieces first passed DEFER_BYTES
    for sc in scanners:
        assert sc.feeds >= 2


def test_a_long_piece_after_waiting_ones_keeps_their_order() -> None:
    """A piece long enough to be scanned as deferred work goes after the pieces waiting before it."""
    policy = _policy()
    _push(policy, "mail jo@exa")
    _push(policy, "mple.com and " + "x" * (DEFER_BYTES + 10) + " end")
    assert policy.has_work
    out = b"".join(policy.finish())
    body = b"".join(e.raw for e in SSEDecoder().feed(out))
    assert b"jo@exa" not in body and b"mple.com" not in body and b"[REDACTED:EMAIL]" in body


def _relay(reads: list[bytes]) -> str:
    return asyncio.run(relay_reads(reads, _Transport()))


def test_the_same_answer_whether_a_read_brings_one_event_or_all() -> None:
    values = ["jo@example.com", "+44 20 7946 0958", "bomb making", "123-45-6789"]
    words = []
    for v in values:
        # each value cut across three events, so that only the batched scan sees it whole within one call
        words += [f"see {v[:3]}", v[3:8], f"{v[8:]} ok. "]
    events = [_event(w) for w in words] + [b"data: [DONE]\n\n"]
    one_each = _relay(events)
    all_at_once = _relay([b"".join(events)])
    halves = _relay([b"".join(events[:5]), b"".join(events[5:])])
    busy = asyncio.run(relay_reads([b"".join(events)], _Transport(), early=False))  # no early first write
    assert one_each == all_at_once == halves == busy
    assert one_each == ("see [REDACTED:EMAIL] ok. see [REDACTED:PHONE] ok. see [FILTERED] ok. "
                        "see [REDACTED:US_SSN] ok. ")
