"""Every text-bearing field of every dialect is scanned (issue 14): a PII value placed only in that field never
reaches the client (output, streamed and not) or the upstream (input); logprobs tokens are redacted like the
text they spell (or dropped with `logprobs: drop`); an unknown string field in a known container is scanned;
every decision is recorded per policy and entity with a count, never the value."""

from __future__ import annotations

import copy

import orjson
import pytest

from fastgw.config import PiiDetector
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain
from fastgw.policy.findings import Findings
from fastgw.policy.pii import PiiPolicy
from fastgw.policy.stream import open_stream
from fastgw.proto.sse import SSEDecoder, encode_data, encode_event

PII = "jane.doe@example.org"
RED = "[REDACTED:EMAIL]"
_POL: dict[str, PiiPolicy] = {}


def pol(logprobs: str = "redact", action: str = "redact") -> PiiPolicy:
    k = f"{logprobs}/{action}"
    if k not in _POL:
        p = PiiPolicy(PiiDetector(action=action, logprobs=logprobs))  # type: ignore[arg-type]
        p.allocate_scratch()
        _POL[k] = p
    return _POL[k]


def _ctx() -> RequestContext:
    return RequestContext("rid", "POST", "/v1/x", [])


def chain(logprobs: str = "redact") -> Chain:
    return Chain(["pii-detector"], {"pii-detector": pol(logprobs)}, Findings([]))


# ---- non-streamed output -----------------------------------------------------------------------------------------

def _out(body: dict, logprobs: str = "redact") -> tuple[dict, RequestContext]:
    ctx = _ctx()
    raw = orjson.dumps(body)
    got = chain(logprobs).check_output_body(ctx, raw)
    assert PII.encode() not in got
    return orjson.loads(got), ctx


def _msg(**fields) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok", **fields},
                         "finish_reason": "stop"}]}


@pytest.mark.parametrize("fields", [
    {"reasoning_content": f"think {PII}"},
    {"reasoning": f"think {PII}"},
    {"reasoning": {"text": f"think {PII}"}},
    {"reasoning_details": [{"type": "reasoning.text", "text": f"think {PII}", "index": 0}]},
    {"function_call": {"name": "send", "arguments": f'{{"to": "{PII}"}}'}},
    {"function_call": {"name": PII, "arguments": "{}"}},
    {"tool_calls": [{"id": "c1", "type": "function", "function": {"name": PII, "arguments": "{}"}}]},
    {"audio": {"id": "a1", "data": "AAAA", "transcript": f"say {PII}"}},
    {"annotations": [{"type": "url_citation", "url_citation": {"title": PII, "url": "https://x"}}]},
    {"brand_new_field": f"x {PII}"},
])
def test_chat_message_fields_non_streamed(fields):
    body, ctx = _out(_msg(**fields))
    assert RED in orjson.dumps(body).decode()
    assert body["choices"][0]["message"]["role"] == "assistant"


def _entries(tokens: list[str]) -> list[dict]:
    return [{"token": t, "logprob": -0.1, "bytes": list(t.encode()),
             "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": list(t.encode())},
                              {"token": t.upper(), "logprob": -3.0, "bytes": list(t.upper().encode())}]}
            for t in tokens]


TOKENS = ["mail ", "jane", ".d", "oe@", "exam", "ple.org", " now"]


def _spelled(entries: list[dict]) -> str:
    """Everything the logprobs spell: the tokens, their bytes, and each alternative column."""
    toks = "".join(e["token"] for e in entries)
    byts = bytes(b for e in entries for b in e["bytes"]).decode()
    alts = ["".join(e["top_logprobs"][i]["token"] for e in entries) for i in range(2)]
    return "|".join([toks, byts, *alts])


def test_chat_logprobs_redacted_non_streamed():
    body = _msg(content="mail " + PII + " now")
    body["choices"][0]["logprobs"] = {"content": _entries(TOKENS), "refusal": None}
    out, ctx = _out(body)
    lp = out["choices"][0]["logprobs"]["content"]
    assert PII not in _spelled(lp) and PII.upper() not in _spelled(lp)
    assert "".join(e["token"] for e in lp) == "mail " + RED + " now" == out["choices"][0]["message"]["content"]
    assert [d.detail for d in ctx.decisions] == [{"entity": "EMAIL", "count": 2}]  # content + tokens


def test_chat_logprobs_dropped_non_streamed():
    body = _msg(content="hello")
    body["choices"][0]["logprobs"] = {"content": _entries(TOKENS)}
    out, _ = _out(body, "drop")
    assert out["choices"][0]["logprobs"] is None


def test_completions_legacy_logprobs_non_streamed():
    body = {"choices": [{"index": 0, "text": "mail " + PII + " now", "finish_reason": "stop", "logprobs": {
        "tokens": TOKENS, "token_logprobs": [-0.1] * len(TOKENS), "text_offset": list(range(len(TOKENS))),
        "top_logprobs": [{t: -0.1} for t in TOKENS]}}]}
    out, _ = _out(body)
    lp = out["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == "mail " + RED + " now"
    assert PII not in "".join(k for d in lp["top_logprobs"] for k in d)
    out, _ = _out(body, "drop")
    assert out["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("item", [
    {"type": "reasoning", "id": "r1", "summary": [{"type": "summary_text", "text": f"plan {PII}"}]},
    {"type": "reasoning", "id": "r1", "summary": [], "content": [{"type": "reasoning_text", "text": PII}]},
    {"type": "function_call", "id": "f1", "call_id": "c1", "name": "send", "arguments": f'{{"to":"{PII}"}}'},
    {"type": "mcp_call", "id": "m1", "server_label": "s", "name": "lookup", "arguments": "{}", "output": PII},
    {"type": "mcp_call", "id": "m1", "server_label": "s", "name": "lookup", "arguments": f'"{PII}"'},
    {"type": "mcp_list_tools", "id": "l1", "server_label": "s", "tools": [
        {"name": "t", "description": f"mails {PII}", "input_schema": {"type": "object"}}]},
    {"type": "web_search_call", "id": "w1", "status": "completed", "action": {"type": "search", "query": PII}},
    {"type": "file_search_call", "id": "fs", "queries": [PII], "results": [{"text": PII, "filename": "a"}]},
    {"type": "code_interpreter_call", "id": "ci", "code": f"print('{PII}')", "outputs": [
        {"type": "logs", "logs": PII}]},
    {"type": "custom_tool_call", "id": "ct", "call_id": "c", "name": "x", "input": PII},
    {"type": "message", "id": "m", "role": "assistant", "content": [
        {"type": "output_text", "text": "ok", "annotations": [{"type": "url_citation", "title": PII}]}]},
    {"type": "future_item", "id": "z", "whatever": PII},
])
def test_responses_output_items_non_streamed(item):
    out, _ = _out({"object": "response", "output": [item]})
    assert RED in orjson.dumps(out).decode()


def test_responses_output_text_logprobs_non_streamed():
    part = {"type": "output_text", "text": "mail " + PII + " now", "annotations": [], "logprobs": _entries(TOKENS)}
    body = {"object": "response", "output": [{"type": "message", "id": "m", "content": [part]}]}
    out, _ = _out(copy.deepcopy(body))
    lp = out["output"][0]["content"][0]["logprobs"]
    assert "".join(e["token"] for e in lp) == "mail " + RED + " now" and PII not in _spelled(lp)
    out, _ = _out(copy.deepcopy(body), "drop")
    assert out["output"][0]["content"][0]["logprobs"] == []


@pytest.mark.parametrize("block", [
    {"type": "thinking", "thinking": f"plan {PII}", "signature": "sig"},
    {"type": "tool_use", "id": "t", "name": "send", "input": {"to": PII, "id": PII}},
    {"type": "server_tool_use", "id": "s", "name": "web_fetch", "input": {"url": f"https://x/?m={PII}"}},
    {"type": "web_fetch_tool_result", "tool_use_id": "s", "content": {
        "type": "web_fetch_result", "url": "https://x", "content": {
            "type": "document", "source": {"type": "text", "media_type": "text/plain", "data": f"page {PII}"}}}},
    {"type": "web_search_tool_result", "tool_use_id": "s", "content": [
        {"type": "web_search_result", "url": "https://x", "title": PII, "encrypted_content": "E"}]},
    {"type": "code_execution_tool_result", "tool_use_id": "s", "content": {
        "type": "code_execution_result", "stdout": PII, "stderr": "", "return_code": 0}},
    {"type": "mcp_tool_result", "tool_use_id": "s", "content": [{"type": "text", "text": PII}]},
    {"type": "text", "text": "ok", "citations": [{"type": "char_location", "cited_text": PII}]},
])
def test_messages_blocks_non_streamed(block):
    out, _ = _out({"type": "message", "role": "assistant", "content": [block]})
    assert RED in orjson.dumps(out).decode()


def test_non_streamed_decisions_per_entity_with_count():
    _, ctx = _out(_msg(content=f"{PII} and bob@example.com", reasoning_content=PII))
    assert [(d.policy, d.phase, d.outcome, d.detail) for d in ctx.decisions] == [
        ("pii-detector", "output", "redact", {"entity": "EMAIL", "count": 3})]
    _, ctx = _out(_msg(content="clean"))
    assert [(d.outcome, d.detail) for d in ctx.decisions] == [("allow", {"count": 0})]


# ---- input ---------------------------------------------------------------------------------------------------

def _in(body: dict) -> tuple[dict, RequestContext]:
    ctx = _ctx()
    body = copy.deepcopy(body)
    assert chain().check_input(ctx, body)
    raw = orjson.dumps(body).decode()
    assert PII not in raw and RED in raw
    return body, ctx


_USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("extra", [
    {"user": PII},
    {"metadata": {"owner": PII, "id": PII}},
    {"messages": [{"role": "user", "name": PII, "content": "hi"}]},
    {"tools": [{"type": "function", "function": {"name": "send", "description": f"mails {PII}",
                                                  "parameters": {"type": "object", "properties": {
                                                      "to": {"type": "string", "description": f"e.g. {PII}"}}}}}]},
    {"tools": [{"type": "function", "function": {"name": "send", "parameters": {
        "type": "object", "properties": {"to": {"type": "string", "enum": [PII]}}}}}]},
    {"prediction": {"type": "content", "content": f"draft {PII}"}},
    {"prediction": {"type": "content", "content": [{"type": "text", "text": PII}]}},
    {"messages": [_USER, {"role": "assistant", "content": None, "function_call": {"name": "send",
                                                                                  "arguments": f'"{PII}"'}}]},
    {"messages": [_USER, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "send", "arguments": f'{{"to":"{PII}"}}'}}]}, {"role": "tool", "tool_call_id": "c", "content": PII}]},
    {"messages": [{"role": "user", "content": "hi", "future_field": PII}]},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": PII}}}},
    {"stop": [PII]},
])
def test_chat_request_fields(extra):
    body, _ = _in({"model": "gpt-4o", "messages": [_USER], **extra})
    assert body["model"] == "gpt-4o"


@pytest.mark.parametrize("extra", [
    {"system": f"assist {PII}"},
    {"system": [{"type": "text", "text": f"assist {PII}", "cache_control": {"type": "ephemeral"}}]},
    {"messages": [_USER, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "send", "input": {"to": PII, "nested": [{"id": PII}]}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": PII}]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                "content": [{"type": "text", "text": PII}]}]}]},
    {"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "text", "media_type": "text/plain", "data": PII}}]}]},
    {"tools": [{"name": "send", "description": PII, "input_schema": {"type": "object"}}]},
    {"metadata": {"user_id": PII}},
])
def test_messages_request_fields(extra):
    _in({"model": "claude", "max_tokens": 10, "messages": [_USER], **extra})


@pytest.mark.parametrize("extra", [
    {"instructions": f"be {PII}"},
    {"input": [{"type": "function_call_output", "call_id": "c", "output": f"found {PII}"}]},
    {"input": [{"type": "function_call", "call_id": "c", "name": "send", "arguments": f'"{PII}"'}]},
    {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": PII}]}]},
    {"input": [{"role": "developer", "content": PII}]},
    {"input": [{"type": "mcp_call", "id": "m", "output": PII}]},
    {"input": PII},
    {"tools": [{"type": "function", "name": "send", "description": PII, "parameters": {"type": "object"}}]},
])
def test_responses_request_fields(extra):
    _in({"model": "gpt-4o", **extra})


def test_input_blobs_and_identifiers_are_left_alone():
    img = "data:image/png;base64,iVBORw0KGgo" + "A" * 50
    body = {"model": "gpt-4o", "user": PII, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": img}},
        {"type": "input_audio", "input_audio": {"data": "QUJD", "format": "wav"}}]}]}
    out, ctx = _in(body)
    assert out["messages"][0]["content"][0]["image_url"]["url"] == img
    assert out["messages"][0]["content"][1]["input_audio"] == {"data": "QUJD", "format": "wav"}
    assert [(d.outcome, d.detail) for d in ctx.decisions] == [("redact", {"entity": "EMAIL", "count": 1})]


# ---- streamed output ------------------------------------------------------------------------------------------

def _run(dialect: str, events: list[dict], logprobs: str = "redact", structured: bool = False,
         typed: bool = False) -> tuple[bytes, RequestContext]:
    """Stream `events` one at a time through the dialect's policy; the bytes the client receives."""
    ctx = _ctx()
    sp = open_stream([pol(logprobs)], Findings([]), ctx, dialect=dialect)
    out: list[bytes] = []
    for e in events:
        if structured:
            sp.push_chunk(copy.deepcopy(e))
        else:
            raw = encode_event(orjson.dumps(e), event=e["type"]) if typed else encode_data(orjson.dumps(e))
            for ev in SSEDecoder().feed(raw):
                sp.push(ev)
        out += sp.release()
    out += sp.finish()
    sp.close()
    wire = b"".join(out)
    assert PII.encode() not in wire
    return wire, ctx


def _objs(wire: bytes) -> list[dict]:
    return [orjson.loads(e.data) for e in SSEDecoder().feed(wire) if e.data and e.data[:1] == "{"]


def _split(s: str) -> list[str]:
    return [s[i:i + 3] for i in range(0, len(s), 3)]


def _chunks(deltas: list[dict], **choice) -> list[dict]:
    out = [{"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": d, "logprobs": None, "finish_reason": None, **choice}]} for d in deltas]
    out.append({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return out


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "future_field"])
def test_chat_stream_delta_string_fields(field, structured):
    wire, ctx = _run("chat", _chunks([{field: p} for p in _split(f"a {PII} b")]), structured=structured)
    got = "".join(c["choices"][0]["delta"].get(field, "") for c in _objs(wire))
    assert got == f"a {RED} b"
    assert [(d.outcome, d.detail) for d in ctx.decisions] == [("redact", {"entity": "EMAIL", "count": 1})]


@pytest.mark.parametrize("structured", [False, True])
def test_chat_stream_reasoning_details_and_objects(structured):
    deltas = [{"reasoning_details": [{"type": "reasoning.text", "text": p, "index": 0}]} for p in _split(PII)]
    deltas += [{"reasoning": {"text": p}} for p in _split(PII)]
    wire, _ = _run("chat", _chunks(deltas), structured=structured)
    assert wire.count(RED.encode()) == 2


@pytest.mark.parametrize("structured", [False, True])
def test_chat_stream_legacy_function_call_and_tool_name(structured):
    args = f'{{"to": "{PII}"}}'
    deltas = [{"function_call": {"name": "send", "arguments": ""}}]
    deltas += [{"function_call": {"arguments": p}} for p in _split(args)]
    wire, _ = _run("chat", _chunks(deltas), structured=structured)
    got = "".join(c["choices"][0]["delta"].get("function_call", {}).get("arguments", "") for c in _objs(wire))
    assert got == f'{{"to": "{RED}"}}'
    tc = [{"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": PII, "arguments": ""}}]}]
    _run("chat", _chunks(tc), structured=structured)
    fc = [{"function_call": {"name": PII}}]
    _run("chat", _chunks(fc), structured=structured)


def _lp_chunks(tokens: list[str]) -> list[dict]:
    out = [{"id": "c", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None,
                                    "logprobs": {"content": _entries([t]), "refusal": None}}]} for t in tokens]
    out.append({"id": "c", "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    return out


@pytest.mark.parametrize("structured", [False, True])
def test_chat_stream_logprobs_redacted(structured):
    wire, ctx = _run("chat", _lp_chunks(TOKENS), structured=structured)
    objs = _objs(wire)
    entries = [e for c in objs if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    assert "".join(e["token"] for e in entries) == "mail " + RED + " now"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in objs) == "mail " + RED + " now"
    spelled = _spelled(entries)
    assert PII not in spelled and PII.upper() not in spelled and "jane" not in spelled.lower()
    assert [(d.outcome, d.detail) for d in ctx.decisions] == [("redact", {"entity": "EMAIL", "count": 2})]


@pytest.mark.parametrize("structured", [False, True])
def test_chat_stream_logprobs_dropped(structured):
    wire, _ = _run("chat", _lp_chunks(["a", "b"]), "drop", structured=structured)
    objs = _objs(wire)
    assert all(c["choices"][0].get("logprobs") is None for c in objs)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in objs) == "ab"


def test_completions_stream_legacy_logprobs():
    chunks = [{"id": "c", "object": "text_completion", "choices": [
        {"index": 0, "text": t, "finish_reason": None, "logprobs": {
            "tokens": [t], "token_logprobs": [-0.1], "top_logprobs": [{t: -0.1, t.upper(): -2.0}],
            "text_offset": [0]}}]} for t in TOKENS]
    chunks.append({"id": "c", "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    wire, _ = _run("chat", chunks)
    objs = _objs(wire)
    toks = "".join(c["choices"][0]["logprobs"]["tokens"][0] for c in objs if c["choices"][0].get("logprobs"))
    assert toks == "mail " + RED + " now"
    tops = "".join(k for c in objs if c["choices"][0].get("logprobs")
                   for k in c["choices"][0]["logprobs"]["top_logprobs"][0])
    assert "jane" not in tops.lower()


def test_chat_stream_identity_when_no_field_changes():
    """The typed fast path, and the loose one (unknown fields): untouched events leave byte-identical."""
    events = _chunks([{"content": "hello "}, {"reasoning": "think"}, {"content": "world"}])
    raw = b"".join(encode_data(orjson.dumps(e)) for e in events)
    wire, ctx = _run("chat", events)
    assert wire == raw
    assert [(d.outcome, d.detail) for d in ctx.decisions] == [("allow", {"count": 0})]


# ---- Responses streams ----

def _r(kind: str, **kw) -> dict:
    return {"type": kind, **kw}


def _seq(events: list[dict]) -> list[dict]:
    return [{**e, "sequence_number": i} for i, e in enumerate(events)]


def test_responses_stream_reasoning_summary_and_repeats():
    pieces = _split(f"plan {PII} ok")
    ev = [_r("response.output_item.added", output_index=0, item={"type": "reasoning", "id": "r", "summary": []}),
          _r("response.reasoning_summary_part.added", item_id="r", summary_index=0,
             part={"type": "summary_text", "text": ""})]
    ev += [_r("response.reasoning_summary_text.delta", item_id="r", summary_index=0, delta=p) for p in pieces]
    whole = {"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": "".join(pieces)}]}
    ev += [_r("response.reasoning_summary_text.done", item_id="r", summary_index=0, text="".join(pieces)),
           _r("response.reasoning_summary_part.done", item_id="r", summary_index=0, part=whole["summary"][0]),
           _r("response.output_item.done", output_index=0, item=whole),
           _r("response.completed", response={"id": "resp", "output": [whole]})]
    for structured in (False, True):
        wire, _ = _run("responses", _seq(ev), structured=structured, typed=True)
        assert wire.count(RED.encode()) == 5  # deltas, .done, part.done, item.done, completed


def test_responses_stream_mcp_call_output_and_arguments():
    args = f'{{"q": "{PII}"}}'
    item0 = {"type": "mcp_call", "id": "m", "server_label": "s", "name": "lookup", "arguments": ""}
    done = {**item0, "arguments": args, "output": f"result {PII}"}
    ev = [_r("response.output_item.added", output_index=0, item=item0)]
    ev += [_r("response.mcp_call_arguments.delta", item_id="m", output_index=0, delta=p) for p in _split(args)]
    ev += [_r("response.mcp_call_arguments.done", item_id="m", output_index=0, arguments=args),
           _r("response.output_item.done", output_index=0, item=done),
           _r("response.completed", response={"id": "resp", "output": [done]})]
    wire, ctx = _run("responses", _seq(ev), typed=True)
    objs = _objs(wire)
    assert objs[-1]["response"]["output"][0] == objs[-2]["item"]  # the repeat carries what the client got
    assert objs[-2]["item"]["output"] == f"result {RED}"
    assert [(d.outcome, d.detail) for d in ctx.decisions] == [("redact", {"entity": "EMAIL", "count": 2})]


@pytest.mark.parametrize("item", [
    {"type": "web_search_call", "id": "w", "status": "completed", "action": {"type": "search", "query": PII}},
    {"type": "code_interpreter_call", "id": "ci", "code": "x", "outputs": [{"type": "logs", "logs": PII}]},
    {"type": "future_item", "id": "z", "detail_text": PII},
])
def test_responses_stream_whole_items(item):
    ev = [_r("response.output_item.done", output_index=0, item=item),
          _r("response.completed", response={"id": "resp", "output": [item]})]
    wire, _ = _run("responses", _seq(ev), typed=True)
    assert wire.count(RED.encode()) == 2


@pytest.mark.parametrize("kind", ["response.code_interpreter_call_code.delta", "response.custom_tool_call_input.delta",
                                  "response.reasoning_text.delta", "response.future_thing.delta"])
def test_responses_stream_other_deltas(kind):
    ev = [_r(kind, item_id="i", output_index=0, content_index=0, delta=p) for p in _split(PII)]
    wire, _ = _run("responses", _seq(ev), typed=True)
    assert "".join(o["delta"] for o in _objs(wire)) == RED


def _resp_lp_events() -> list[dict]:
    ev = [_r("response.output_text.delta", item_id="m", output_index=0, content_index=0, delta=t,
             logprobs=_entries([t])) for t in TOKENS]
    text = "".join(TOKENS)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": _entries(TOKENS)}
    item = {"type": "message", "id": "m", "role": "assistant", "content": [part]}
    ev += [_r("response.output_text.done", item_id="m", output_index=0, content_index=0, text=text,
              logprobs=_entries(TOKENS)),
           _r("response.content_part.done", item_id="m", output_index=0, content_index=0, part=part),
           _r("response.output_item.done", output_index=0, item=item),
           _r("response.completed", response={"id": "resp", "output": [item]})]
    return _seq(ev)


def test_responses_stream_logprobs_redacted():
    wire, _ = _run("responses", _resp_lp_events(), typed=True)
    objs = _objs(wire)
    deltas = [e for o in objs if o["type"] == "response.output_text.delta" for e in o["logprobs"]]
    assert "".join(e["token"] for e in deltas) == "mail " + RED + " now"
    assert "jane" not in _spelled(deltas).lower()
    for o in objs[-4:]:  # every repeat: the released tokens
        s = orjson.dumps(o).decode()
        assert "jane" not in s.lower() and RED in s


def test_responses_stream_logprobs_dropped():
    wire, _ = _run("responses", _resp_lp_events(), "drop", typed=True)
    assert b'"token"' not in wire


# ---- Messages streams ----

def _m(kind: str, **kw) -> dict:
    return {"type": kind, **kw}


@pytest.mark.parametrize("structured", [False, True])
def test_messages_stream_thinking_and_unknown_deltas(structured):
    ev = [_m("content_block_start", index=0, content_block={"type": "thinking", "thinking": "", "signature": ""})]
    ev += [_m("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": p}) for p in _split(PII)]
    ev += [_m("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "SIG"}),
           _m("content_block_stop", index=0),
           _m("content_block_start", index=1, content_block={"type": "future", "stuff": ""})]
    ev += [_m("content_block_delta", index=1, delta={"type": "future_delta", "stuff": p}) for p in _split(PII)]
    ev += [_m("content_block_stop", index=1), _m("message_stop")]
    wire, _ = _run("messages", ev, structured=structured, typed=True)
    assert wire.count(RED.encode()) == 2 and b"SIG" in wire


@pytest.mark.parametrize("block", [
    {"type": "web_fetch_tool_result", "tool_use_id": "s", "content": {
        "type": "web_fetch_result", "url": "https://x", "content": {
            "type": "document", "source": {"type": "text", "media_type": "text/plain", "data": f"page {PII}"}}}},
    {"type": "web_search_tool_result", "tool_use_id": "s", "content": [
        {"type": "web_search_result", "url": "https://x", "title": PII, "encrypted_content": "E"}]},
    {"type": "code_execution_tool_result", "tool_use_id": "s", "content": {
        "type": "code_execution_result", "stdout": PII, "stderr": "", "return_code": 0}},
    {"type": "mcp_tool_result", "tool_use_id": "s", "content": [{"type": "text", "text": PII}]},
    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": PII}},
])
def test_messages_stream_server_tool_blocks(block):
    ev = [_m("content_block_start", index=0, content_block=block), _m("content_block_stop", index=0),
          _m("message_stop")]
    wire, _ = _run("messages", ev, typed=True)
    assert RED.encode() in wire


def test_messages_stream_server_tool_input_json_and_citations():
    js = f'{{"query": "{PII}"}}'
    ev = [_m("content_block_start", index=0, content_block={"type": "server_tool_use", "id": "s",
                                                              "name": "web_search", "input": {}})]
    ev += [_m("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": p})
           for p in _split(js)]
    ev += [_m("content_block_stop", index=0),
           _m("content_block_start", index=1, content_block={"type": "text", "text": ""}),
           _m("content_block_delta", index=1, delta={"type": "citations_delta", "citation": {
               "type": "web_search_result_location", "cited_text": f"x {PII}", "url": "https://x"}}),
           _m("content_block_stop", index=1), _m("message_stop")]
    wire, _ = _run("messages", ev, typed=True)
    assert wire.count(RED.encode()) == 2
