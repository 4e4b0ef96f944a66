"""One stream policy class per dialect over one hold/release core, and the dialects' wire ends (fastgw.api.dialects):
the right class for each dialect, the error event each one ends with, Responses sequence numbers continued,
named text keys in findings, and structured events in the Responses and Messages dialects."""

from __future__ import annotations

import copy

import orjson
import pytest

from fastgw.api import dialects
from fastgw.api.errors import GatewayError, UpstreamTimeout
from fastgw.api.sse import DONE
from fastgw.policy.base import PolicyViolation, RequestContext
from fastgw.policy.chain import Chain
from fastgw.policy.findings import Finding, Findings
from fastgw.policy.stream import (ChatStreamPolicy, MessagesStreamPolicy, ResponsesStreamPolicy, StreamBlocked,
                                  StreamPolicy, TextKey, open_stream)
from tests.support.sse_streams import pii_policy
from fastgw.proto.sse import SSEDecoder, encode_data, encode_event

policy = pii_policy


def _ctx(path: str = "/v1/chat/completions") -> RequestContext:
    return RequestContext("rid", "POST", path, [])


class _Rec:
    def __init__(self) -> None:
        self.found: list[Finding] = []

    def record(self, f: Finding) -> None:
        self.found.append(f)


# ---- the wire ends (no policy needed) -------------------------------------------------------------------------

def test_dialect_lookup_and_clean_ends():
    assert dialects.dialect("chat") is dialects.CHAT
    assert [dialects.dialect(n).name for n in ("chat", "responses", "messages")] == ["chat", "responses", "messages"]
    with pytest.raises(ValueError):
        dialects.dialect("nope")
    assert (dialects.CHAT.done, dialects.RESPONSES.done, dialects.MESSAGES.done) == (DONE, b"", b"")
    assert (dialects.CHAT.sentinel, dialects.RESPONSES.sentinel, dialects.MESSAGES.sentinel) == (True, False, False)


def test_terminal_errors_per_dialect():
    err = PolicyViolation("Stream terminated: PII detected", "pii-detector", "output")
    assert dialects.CHAT.terminal_error(err, 7) == encode_data(err.body()) + DONE
    assert dialects.error_event(err) == b"data: " + err.body() + b"\n\n"
    resp = dialects.RESPONSES.terminal_error(err, 7)
    assert resp == encode_event(orjson.dumps({"type": "error", "code": "output_blocked",
                                              "message": "Stream terminated: PII detected", "param": None,
                                              "sequence_number": 8, "policy": "pii-detector"}), event="error")
    assert orjson.loads(dialects.RESPONSES.terminal_error(UpstreamTimeout("slow"))[len(b"event: error\ndata: "):]) == {
        "type": "error", "code": "upstream_timeout", "message": "slow", "param": None, "sequence_number": 0}
    msg = dialects.MESSAGES.terminal_error(err)
    # Anthropic's own error types only (a policy's 409 is an invalid request; an upstream's 504 an api_error).
    assert msg == (b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_error",'
                   b'"message":"Stream terminated: PII detected"}}\n\n')
    assert b'"type":"api_error"' in dialects.MESSAGES.terminal_error(UpstreamTimeout("slow"))


# ---- one class per dialect ----------------------------------------------------------------------------------------

def test_each_dialect_gets_its_class():
    for name, cls in (("chat", ChatStreamPolicy), ("responses", ResponsesStreamPolicy),
                      ("messages", MessagesStreamPolicy)):
        sp = open_stream([policy()], Findings([]), _ctx(), dialect=name)
        assert type(sp) is cls and isinstance(sp, StreamPolicy)
        assert sp.dialect == name and sp.wire is dialects.dialect(name)
        assert (sp.last_seq, sp.held) == (-1, 0)
        sp.close()
    with pytest.raises(ValueError):
        open_stream([policy()], Findings([]), _ctx(), dialect="gemini")


def test_chain_stream_policy_picks_the_dialect_class():
    chain = Chain(["pii-detector"], {"pii-detector": policy()}, Findings([]))
    sp = chain.stream_policy(_ctx("/v1/responses"), "responses")
    assert isinstance(sp, ResponsesStreamPolicy) and sp.dialect == "responses"
    sp.close()
    sp = chain.stream_policy(_ctx())
    assert isinstance(sp, ChatStreamPolicy)
    sp.close()


def test_findings_name_choice_and_field_for_every_dialect():
    """Text keys are named: a finding says which choice and which field, the same way in each dialect."""
    tool = {"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {
        "arguments": '{"to": "joe@example.com"}'}}]}, "finish_reason": "tool_calls"}]}
    rec = _Rec()
    sp = open_stream([policy()], Findings([rec]), _ctx())
    sp.push_chunk(tool)
    sp.finish()
    sp.close()
    assert [(f.choice, f.field, f.entity) for f in rec.found] == [(1, "arguments", "EMAIL")]
    assert list(sp._texts) == [TextKey(1, "arguments", 0)]

    rec = _Rec()
    sp = open_stream([policy()], Findings([rec]), _ctx("/v1/responses"), dialect="responses")
    sp.push_chunk({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
                   "delta": '{"to": "joe@example.com"}', "sequence_number": 3})
    sp.push_chunk({"type": "response.output_text.delta", "item_id": "msg_1", "content_index": 1,
                   "delta": "call (212) 555-0147", "sequence_number": 4})
    sp.finish()
    sp.close()
    assert sorted((f.choice, f.field, f.entity) for f in rec.found) == [(0, "arguments", "EMAIL"),
                                                                        (0, "text", "PHONE")]
    assert set(sp._texts) == {TextKey(0, "arguments", "fc_1", 0), TextKey(0, "text", "msg_1", 1)}


# ---- Responses: structured events, sequence numbers ------------------------------------------------------------

def _responses_events(pieces: list[str]) -> list[dict]:
    events: list[dict] = [{"type": "response.created", "response": {"id": "r", "status": "in_progress", "output": []}}]
    events += [{"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                "delta": p} for p in pieces]
    text = "".join(pieces)
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "content": [part]}
    events += [{"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                "text": text},
               {"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                "part": part},
               {"type": "response.output_item.done", "output_index": 0, "item": item},
               {"type": "response.completed", "response": {"id": "r", "status": "completed", "output": [item]}}]
    for i, e in enumerate(events):
        e["sequence_number"] = i
    return events


def _run(sp: StreamPolicy, items: list, structured: bool) -> tuple[list[bytes], StreamBlocked | None]:
    out: list[bytes] = []
    try:
        for it in items:
            if structured:
                sp.push_chunk(it)
            else:
                sp.push(it)
            out += sp.release()
        out += sp.finish()
    except StreamBlocked as b:
        return out + b.prefix, b
    finally:
        sp.close()
    return out, None


@pytest.mark.parametrize("action", ["redact", "block"])
def test_responses_structured_events_equal_the_sse_events(action: str):
    events = _responses_events(["Mail joe.bl", "oggs@example", ".com today", " ok"])
    wire = b"".join(encode_event(orjson.dumps(e), event=e["type"]) for e in events)
    sse = _run(open_stream([policy(action)], Findings([]), _ctx(), dialect="responses"), SSEDecoder().feed(wire),
               False)
    sp = open_stream([policy(action)], Findings([]), _ctx(), dialect="responses")
    dicts = _run(sp, copy.deepcopy(events), True)
    assert dicts[0] == sse[0]
    assert (dicts[1] is None) == (sse[1] is None)
    got = b"".join(dicts[0])
    assert b"joe" not in got
    if action == "redact":
        sent = [orjson.loads(e.data) for e in SSEDecoder().feed(got)]
        assert sent[-1]["response"]["output"][0]["content"][0]["text"] == "Mail [REDACTED:EMAIL] today ok"
        assert sp.last_seq == len(events) - 1
    else:
        assert dicts[1] is not None and sse[1] is not None
        assert dicts[1].error.body() == sse[1].error.body()


def test_responses_block_continues_the_sequence_numbers():
    events = _responses_events(["Hello there, ", "mail joe.bloggs@exa", "mple.com now"])
    sp = open_stream([policy("block")], Findings([]), _ctx(), dialect="responses")
    out, blocked = _run(sp, copy.deepcopy(events), True)
    assert blocked is not None
    sent = [orjson.loads(e.data) for e in SSEDecoder().feed(b"".join(out))]
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    assert sp.last_seq == sent[-1]["sequence_number"]
    end = SSEDecoder().feed(sp.wire.terminal_error(blocked.error, sp.last_seq))
    assert orjson.loads(end[0].data)["sequence_number"] == sp.last_seq + 1
    assert "".join(e.get("delta", "") for e in sent) == "Hello there, mail "


def test_responses_unchanged_whole_events_leave_as_they_came():
    events = _responses_events(["no personal ", "data here"])
    wire = b"".join(encode_event(orjson.dumps(e), event=e["type"]) for e in events)
    out, _ = _run(open_stream([policy()], Findings([]), _ctx(), dialect="responses"), SSEDecoder().feed(wire), False)
    assert b"".join(out) == wire


# ---- Messages: structured events ---------------------------------------------------------------------------------

def test_messages_structured_events_equal_the_sse_events():
    events = [{"type": "message_start", "message": {"id": "m", "content": []}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "mail joe@ex"}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ample.com ok"}},
              {"type": "content_block_stop", "index": 0},
              {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "input": {}}},
              {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                     "partial_json": '{"a": "x\\njane@exa'}},
              {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                     "partial_json": 'mple.org"}'}},
              {"type": "content_block_stop", "index": 1},
              {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
              {"type": "message_stop"}]
    wire = b"".join(encode_event(orjson.dumps(e), event=e["type"]) for e in events)
    ctx_sse, ctx_dicts = _ctx("/v1/messages"), _ctx("/v1/messages")
    sse, _ = _run(open_stream([policy()], Findings([]), ctx_sse, dialect="messages"), SSEDecoder().feed(wire), False)
    dicts, _ = _run(open_stream([policy()], Findings([]), ctx_dicts, dialect="messages"), copy.deepcopy(events),
                    True)
    assert dicts == sse
    sent = [orjson.loads(e.data) for e in SSEDecoder().feed(b"".join(sse))]
    args = "".join(e["delta"].get("partial_json", "") for e in sent if e["type"] == "content_block_delta")
    # The arguments are scanned with their JSON escapes decoded: `\n` is a newline before the value, not an
    # `n` glued to it, so the escape survives whole and only the address is redacted.
    assert orjson.loads(args) == {"a": "x\n[REDACTED:EMAIL]"}
    assert ctx_sse.texts == ctx_dicts.texts == {0: "mail [REDACTED:EMAIL] ok"}
    assert ctx_dicts.finish == {0: "tool_use"} and ctx_dicts.usage == {"output_tokens": 9}


def test_structured_event_that_is_no_object_is_refused():
    sp = open_stream([policy()], Findings([]), _ctx(), dialect="messages")
    with pytest.raises(GatewayError) as e:
        sp.push_chunk([1, 2])  # type: ignore[arg-type]
    assert e.value.code == "upstream_protocol_error"
    sp.close()
