"""The streaming output policy, without sockets: any split of any stream gives whole-text redaction, no leak,
each byte scanned once, untouched events byte-identical."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings

from fastgw.config import PiiDetector
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.pii import PiiPolicy
from fastgw.policy.stream import StreamBlocked, StreamPolicy, open_stream
from fastgw.api.sse import DONE
from fastgw.proto.sse import SSEDecoder, encode_data
from fastgw.scan.scanner import find_spans
from tests.support.garbage import fastgw_garbage
from tests.support.sse_streams import build_stream, chunk, streams

_POLICIES: dict[str, PiiPolicy] = {}


def _ctx(rid: str = "t") -> RequestContext:
    return RequestContext(rid, "POST", "/v1/chat/completions", [])


def policy(action: str = "redact", mode: str = "realtime") -> PiiPolicy:
    key = action + mode
    if key not in _POLICIES:
        p = PiiPolicy(PiiDetector(action=action, streaming_mode=mode))
        p.allocate_scratch()
        _POLICIES[key] = p
    return _POLICIES[key]


def run(pol: PiiPolicy, wire: bytes, cuts: list[int]) -> tuple[list[bytes], StreamBlocked | None, StreamPolicy]:
    """Feed the upstream bytes cut at `cuts`; release after every read like the relay does."""
    return drive(open_stream([pol], Findings([]), _ctx()), wire, cuts)


def drive(sp: StreamPolicy, wire: bytes, cuts: list[int]) -> tuple[list[bytes], StreamBlocked | None, StreamPolicy]:
    """`run` for a stream policy in hand."""
    dec = SSEDecoder()
    out: list[bytes] = []
    pos = 0
    try:
        for c in sorted(set(cuts)) + [len(wire)]:
            for ev in dec.feed(wire[pos:c]):
                sp.push(ev)
            pos = c
            out += sp.release()
        out += sp.finish()
    except StreamBlocked as b:
        return out + b.prefix, b, sp
    finally:
        sp.close()
    return out, None, sp


def client_text(out: list[bytes]) -> str:
    text = ""
    for e in SSEDecoder().feed(b"".join(out)):
        if e.data and e.data != "[DONE]":
            for ch in orjson.loads(e.data)["choices"]:
                text += ch["delta"].get("content") or ""
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_redact_any_split_equals_whole_text_redaction(s):
    text, pieces, wire, cuts = s
    pol = policy("redact")
    out, blocked, sp = run(pol, wire, cuts)
    assert blocked is None
    data = text.encode()
    expected = pol.redact(data, find_spans(pol.db, data)).decode()
    assert client_text(out) == expected
    # Each content byte went through Hyperscan exactly once.
    assert sum(t.scanned()[0] for t in sp._texts.values()) == len(data)
    # No detected value is on the wire.
    wire_out = b"".join(out)
    for span in find_spans(pol.db, data):
        value = data[span.start:span.end]
        if data.count(value) == 1:  # (the same bytes may also stand undetected elsewhere, e.g. glued to a word)
            assert value not in wire_out
    # Untouched events are the upstream's bytes; changed ones are valid JSON differing only in content.
    upstream = {e.raw for e in SSEDecoder().feed(wire)}
    for e in SSEDecoder().feed(wire_out):
        if e.raw in upstream:
            continue
        obj = orjson.loads(e.data)
        obj["choices"][0]["delta"]["content"] = None
        originals = [orjson.loads(u.data) for u in SSEDecoder().feed(wire) if u.data and u.data != "[DONE]"]
        for o in originals:
            if "content" in o["choices"][0]["delta"]:
                o["choices"][0]["delta"]["content"] = None
        assert obj in originals


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_block_any_split_sends_clean_prefix_then_error(s):
    text, pieces, wire, cuts = s
    pol = policy("block")
    out, blocked, _ = run(pol, wire, cuts)
    data = text.encode()
    spans = find_spans(pol.db, data)
    if not spans:
        assert blocked is None and client_text(out) == text
        return
    assert blocked is not None
    body = orjson.loads(blocked.error.body())["error"]
    assert body == {"message": "Stream terminated: PII detected", "type": "policy_violation",
                    "code": "output_blocked", "param": None, "policy": "pii-detector"}
    # All the clean text before the first span, and none of it.
    assert client_text(out).encode() == data[:spans[0].start]


def test_observe_passes_everything_through_unchanged_and_records():
    pol = policy("observe")
    wire = build_stream(["mail joe", "@example.com", " now"])
    sinks: list = []
    sp = open_stream([pol], Findings(sinks), _ctx("rid-1"))
    rec: list = []

    class Rec:
        def record(self, f):
            rec.append(f)

    sp._findings = Findings([Rec()])
    out = []
    for ev in SSEDecoder().feed(wire):
        sp.push(ev)
        out += sp.release()
    out += sp.finish()
    assert b"".join(out) == wire
    assert [(f.entity, f.start, f.end, f.request_id) for f in rec] == [("EMAIL", 5, 20, "rid-1")]
    assert not sinks


def test_buffered_mode_holds_everything_until_the_end():
    pol = policy("redact", "buffered")
    wire = build_stream(["hello ", "world ", "mail joe@example.com ", "bye"])
    sp = open_stream([pol], Findings([]), _ctx())
    events = SSEDecoder().feed(wire)
    for ev in events[:-1]:  # everything before [DONE] is held
        sp.push(ev)
        assert sp.release() == []
    sp.push(events[-1])
    released = sp.release()
    assert client_text(released) == "hello world mail [REDACTED:EMAIL] bye"
    assert released[-1] == DONE


def test_prose_is_held_at_most_one_event():
    pol = policy("redact")
    pieces = [" " + w for w in ("This is an ordinary answer with no personal data in it at all "
                                "and it goes on for a while so that we can see the holdback").split()]
    sp = open_stream([pol], Findings([]), _ctx())
    worst = 0
    for ev in SSEDecoder().feed(build_stream(pieces)):
        sp.push(ev)
        sp.release()
        worst = max(worst, sp.held)
    assert worst <= 1


def test_email_split_across_events_never_leaks_a_byte():
    pol = policy("redact")
    pieces = ["Write to user@exa", "mple.com", " today"]
    wire = build_stream(pieces)
    sp = open_stream([pol], Findings([]), _ctx())
    written = b""
    for ev in SSEDecoder().feed(wire):
        sp.push(ev)
        for b in sp.release():
            written += b
            assert b"user" not in written and b"exa" not in written
    written += b"".join(sp.finish())
    assert client_text([written]) == "Write to [REDACTED:EMAIL] today"


def test_tool_call_arguments_are_redacted():
    pol = policy("redact")
    def tc(args: str, first: bool = False) -> bytes:
        call = {"index": 0, "function": {"arguments": args}}
        if first:
            call.update({"id": "call_1", "type": "function", "function": {"name": "send", "arguments": args}})
        return encode_data(orjson.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [call]},
                                                      "finish_reason": None}]}))
    wire = tc("", True) + tc('{"to": "joe@ex') + tc('ample.com"}') + chunk(finish="tool_calls") + DONE
    out, _, _ = run(pol, wire, [])
    args = ""
    for e in SSEDecoder().feed(b"".join(out)):
        if e.data and e.data != "[DONE]":
            for ch in orjson.loads(e.data)["choices"]:
                for c in ch["delta"].get("tool_calls") or []:
                    args += c["function"]["arguments"]
    assert args == '{"to": "[REDACTED:EMAIL]"}'
    assert orjson.loads(args) == {"to": "[REDACTED:EMAIL]"}


def test_mask_replacement():
    p = PiiPolicy(PiiDetector(replacement="*"))
    p.allocate_scratch()
    out, _, _ = run(p, build_stream(["ssn 123-45-", "6789 ok"]), [])
    assert client_text(out) == "ssn *********** ok"


def test_tool_arguments_stay_valid_json_when_a_value_follows_an_escape():
    """Arguments are JSON source: in `"x\\njohn@example.com"` the escape must survive and the address go."""
    pol = policy("redact")
    def tc(args: str) -> bytes:
        return encode_data(orjson.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": args}}]}, "finish_reason": None}]}))
    source = '{"note": "line1\\njohn@example.com and caf\\u00e9jane@example.org"}'
    for cut in (10, 16, 17, 40, 41):
        wire = tc(source[:cut]) + tc(source[cut:]) + chunk(finish="tool_calls") + DONE
        out, _, _ = run(pol, wire, [])
        args = "".join(c["function"]["arguments"] for e in SSEDecoder().feed(b"".join(out))
                       if e.data and e.data != "[DONE]"
                       for ch in orjson.loads(e.data)["choices"] for c in ch["delta"].get("tool_calls") or [])
        note = orjson.loads(args)["note"]  # still valid JSON
        assert "john@example.com" not in note and "jane@example.org" not in note
        # Scanned with the escapes decoded, `\n` stays a newline and the address alone is redacted.
        assert note.startswith("line1\n[REDACTED:EMAIL]")


def test_a_finished_stream_policy_is_freed_by_reference_counting() -> None:
    """A redacted stream's policy, its texts and their scanners are freed when the relay lets go of them, not left
    to the cyclic collector (each scanner's match handler held it in a cycle until its stream closed)."""
    import gc

    wire = build_stream(["My mail is joe", "@example.com, ", "call 415-555-0100."])
    gc.collect()
    gc.disable()
    try:
        out, blocked, sp = run(policy(), wire, [7, 40])
        assert blocked is None and "joe@example.com" not in client_text(out)
        del sp
        assert fastgw_garbage() == []
    finally:
        gc.enable()
