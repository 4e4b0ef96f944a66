"""A streamed text that no scanner has seen a byte of when it ends (a short answer whose events came in one upstream
read) is settled by the chain's output prefilter, one block scan for every policy, when that finds nothing: the
client gets the same bytes, and the findings and decisions are the same, as with each policy's own scan, for any
split of any stream (issue 18: the scans at a redacted stream's end were most of what was left there)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from fastgw.config import PiiDetector, SafetyFilter
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain, build_chain
from fastgw.policy.findings import Finding, Findings
from fastgw.policy.stream import StreamPolicy, open_stream
from tests.policy.test_stream_policy import drive
from tests.support.sse_streams import build_stream, chunk, streams

_CHAIN: list[Chain] = []


class _Kept:
    def __init__(self) -> None:
        self.found: list[Finding] = []

    def record(self, finding: Finding) -> None:
        self.found.append(finding)


def _chain() -> Chain:
    if not _CHAIN:
        chain = build_chain([("pii-detector", PiiDetector(action="redact")),
                             ("safety-filter", SafetyFilter(terms=["secret sauce", "forbidden fruit"],
                                                            action="redact"))])
        chain.allocate_scratch()
        _CHAIN.append(chain)
    return _CHAIN[0]


def _run(wire: bytes, cuts: list[int], prefiltered: bool) -> tuple[bytes, list, list, StreamPolicy]:
    """The answer through the chain's stream policy, released after every read as the relay does; with or without
    the prefilter. Returns (what the client got, findings, decisions, the policy)."""
    chain = _chain()
    kept = _Kept()
    ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
    sp = open_stream(chain.output_scanners, Findings([kept]), ctx)
    if prefiltered:
        sp.prefilter = chain._output_filter
    out, _blocked, _ = drive(sp, wire, cuts)
    found = [(f.policy, f.entity, f.start, f.end, f.action, f.choice, f.field) for f in kept.found]
    return b"".join(out), found, [(d.policy, d.outcome, d.detail) for d in ctx.decisions], sp


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_the_prefilter_changes_nothing_the_client_or_the_audit_sees(s) -> None:  # noqa: ANN001
    _text, _pieces, wire, cuts = s
    for c in (cuts, []):  # as cut, and in one read (where a clean ASCII answer is prefiltered)
        assert _run(wire, c, True)[:3] == _run(wire, c, False)[:3]


def _scanned(sp: StreamPolicy) -> list[list[int]]:
    return [t.scanned() for t in dict.values(sp._texts)]


def test_a_clean_ascii_answer_in_one_read_is_not_scanned_by_the_policies_streams() -> None:
    wire = build_stream(["The quick brown ", "fox jumps over ", "the lazy dog."])
    out, found, decisions, sp = _run(wire, [], True)
    assert out == wire and found == []
    assert _scanned(sp) == [[0, 0]]  # the prefilter's block scan alone
    assert [t.opened for t in dict.values(sp._texts)] == [False]  # no scanner was even opened
    assert sorted(d[:2] for d in decisions) == [("pii-detector", "allow"), ("safety-filter", "allow")]
    # Without it, each policy's stream scans every byte.
    assert _scanned(_run(wire, [], False)[3]) == [[len("The quick brown fox jumps over the lazy dog.")] * 2]


@pytest.mark.parametrize("pieces, redacted", [
    (["write to joe.bloggs", "@example.com today"], b"joe.bloggs@example.com"),  # a finding: the policies scan
    (["the secret ", "sauce is here"], b"secret sauce"),  # the second policy's finding
    (["mail joe\uff20example.com"], "joe\uff20example.com".encode()),  # not ASCII: the policies' own canonical view
])
def test_what_the_prefilter_reports_or_cannot_read_goes_to_the_policies(pieces: list[str], redacted: bytes) -> None:
    wire = build_stream(pieces)
    out, found, _d, sp = _run(wire, [], True)
    assert redacted not in out.replace(b"\\u", b"") and found
    assert all(n > 0 for sc in _scanned(sp) for n in sc)


def test_a_text_a_scanner_saw_before_its_end_is_settled_by_the_scanners() -> None:
    wire = build_stream(["The quick brown ", "fox jumps over ", "the lazy dog."])
    cut = wire.index(b"fox")  # a read ends inside the answer: its first text is scanned at that release
    out, found, _d, sp = _run(wire, [cut], True)
    assert out == wire and found == []
    assert all(n == len("The quick brown fox jumps over the lazy dog.") for sc in _scanned(sp) for n in sc)


def test_tool_call_arguments_are_json_source_and_never_prefiltered() -> None:
    tool = orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
            "name": "f", "arguments": "{\"q\": \"nothing here\"}"}}]}, "finish_reason": None}]})
    wire = chunk(role=True) + b"data: " + tool + b"\n\n" + chunk(finish="tool_calls") + b"data: [DONE]\n\n"
    out, found, _d, sp = _run(wire, [], True)
    assert out == wire and found == []
    by_field = {t.key.field: t.scanned() for t in dict.values(sp._texts)}
    # (The function's name is prose: it may be prefiltered.)
    assert by_field["arguments"] == [len(b'{"q": "nothing here"}')] * 2


def test_the_chains_stream_policy_has_the_prefilter() -> None:
    chain = _chain()
    sp = chain.stream_policy(RequestContext("r", "POST", "/v1/chat/completions", []))
    assert sp.prefilter is chain._output_filter is not None
    sp.close()
