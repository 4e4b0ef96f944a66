"""`/v1/responses` and `/v1/messages` on every target, judged by the official SDKs and their types: text streamed
and not (the same text and usage as chat completions gives), a function call round trip, the token limit, an
upstream error before the stream and during it, pii-detector redacting and blocking, `count_tokens`, and the
gateway's own refusals in each API's envelope.

Targets (see `conftest.TARGETS`): the five wire-format mocks (anthropic keeps its native Messages API), the
OpenAI-compatible test upstream as a `vllm` target (`compat`) and as an `openai` target (native Responses
API, Messages translated), and the built-in mock."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import anthropic.types as at
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from fastgw.api.errors import ANTHROPIC_TYPES
from fastgw.quota import prompt_estimate
from fastgw.proto.sse import SSEDecoder
from tests.front.conftest import CHAT_KEY, KEY, TARGETS, FrontStacks
from tests.providers.stack import CLIENT_KEY, last
from tests.support.procs import Gateway

RESPONSES_EVENT = TypeAdapter(ResponseStreamEvent)
MESSAGES_EVENT = TypeAdapter(at.RawMessageStreamEvent)
ERROR_TYPES = frozenset(ANTHROPIC_TYPES.values())
WEATHER = {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
           "required": ["location"]}
R_TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather for a city.",
            "parameters": WEATHER}]
M_TOOLS = [{"name": "get_weather", "description": "Current weather for a city.", "input_schema": WEATHER}]
SYSTEM = "Be brief."
ALL = list(TARGETS)
TRANSLATED_RESPONSES = [n for n in ALL if n != "openai"]  # openai keeps its native Responses API
WITH_TOOLS = [n for n in ALL if TARGETS[n].tools]
WITH_HTTP = [n for n in ALL if TARGETS[n].http]
WITH_CUT = [n for n in ALL if TARGETS[n].cut]
WITH_EMAIL = [n for n in ALL if TARGETS[n].email]
both = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])


def oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def an(gw: Gateway, key: str = CLIENT_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base, api_key=key, max_retries=0, timeout=20)


def post(gw: Gateway, path: str, body: dict, key: str | None = None) -> tuple[int, bytes]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    rq = urllib.request.Request(gw.base + path, data=orjson.dumps(body), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(rq, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def responses_events(gw: Gateway, body: dict) -> list[dict]:
    """A streamed Responses answer's events, each valid for the SDK's types, numbered 0, 1, 2, ..."""
    status, raw = post(gw, "/v1/responses", {**body, "stream": True})
    assert status == 200, raw
    events = []
    for ev in SSEDecoder().feed(raw):
        obj = orjson.loads(ev.data)
        assert ev.event == obj["type"]
        RESPONSES_EVENT.validate_python(obj)
        events.append(obj)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def messages_events(gw: Gateway, body: dict) -> list[dict]:
    """A streamed Messages answer's events, each valid for the SDK's types (errors with Anthropic's types only)."""
    status, raw = post(gw, "/v1/messages", {**body, "stream": True})
    assert status == 200, raw
    events = []
    for ev in SSEDecoder().feed(raw):
        obj = orjson.loads(ev.data)
        assert ev.event == obj["type"]
        if obj["type"] == "error":
            assert obj["error"]["type"] in ERROR_TYPES and obj["error"]["message"]
        elif obj["type"] != "ping":
            MESSAGES_EVENT.validate_python(obj)
        events.append(obj)
    assert events[0]["type"] == "message_start"
    return events


def r_body(name: str, scenario: str, **kw) -> dict:
    model, text = TARGETS[name].ask(scenario)
    return {"model": model, "instructions": SYSTEM, "input": text, **kw}


def m_body(name: str, scenario: str, **kw) -> dict:
    model, text = TARGETS[name].ask(scenario)
    return {"model": model, "system": SYSTEM, "max_tokens": 64, "messages": [{"role": "user", "content": text}],
            **kw}


def chat(gw: Gateway, name: str, scenario: str, **kw):
    model, text = TARGETS[name].ask(scenario)
    return oa(gw).chat.completions.create(model=model, messages=[{"role": "system", "content": SYSTEM},
                                                                  {"role": "user", "content": text}], **kw)


def seen(stacks: FrontStacks, name: str) -> str:
    """What the target's upstream got last, as JSON text."""
    if name in ("compat", "openai"):
        return json.dumps(stacks.upstream().last("/v1/chat/completions"))
    return json.dumps(last(stacks.mock(name)))


# ---- /v1/responses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@both
def test_responses_text(gw, name, stream):
    expected = chat(gw, name, TARGETS[name].text, max_tokens=64)
    if not stream:
        status, raw = post(gw, "/v1/responses", r_body(name, TARGETS[name].text, max_output_tokens=64))
        assert status == 200, raw
        r = Response.model_validate(orjson.loads(raw))
    else:
        events = responses_events(gw, r_body(name, TARGETS[name].text, max_output_tokens=64))
        assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
        assert events[-1]["type"] == "response.completed"
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert deltas == [e for e in events if e["type"] == "response.output_text.done"][0]["text"]
        r = Response.model_validate(events[-1]["response"])
    assert r.status == "completed" and r.output_text == expected.choices[0].message.content
    assert r.output_text
    if name not in ("mock", "openai"):  # the mock's usage is its own estimate; openai answers natively
        assert (r.usage.input_tokens, r.usage.output_tokens) == (expected.usage.prompt_tokens,
                                                                  expected.usage.completion_tokens)
    with oa(gw).responses.stream(**r_body(name, TARGETS[name].text, max_output_tokens=64)) as s:
        assert s.get_final_response().output_text == r.output_text


@pytest.mark.parametrize("name", [n for n in WITH_TOOLS if n in TRANSLATED_RESPONSES])
def test_responses_function_call_round_trip(gw, stacks, name):
    t = TARGETS[name]
    body = r_body(name, t.tools, tools=R_TOOLS, tool_choice="required")
    with oa(gw).responses.stream(**body) as s:
        final = s.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments)["location"]
    whole = oa(gw).responses.create(**body)
    assert [o.name for o in whole.output if o.type == "function_call"] == [c.name for c in calls]
    call = calls[0]
    after = oa(gw).responses.create(model=body["model"], tools=R_TOOLS, input=[
        {"role": "user", "content": t.ask(t.tools)[1]},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "22C and sunny"}])
    assert after.status == "completed" and after.output
    assert "22C and sunny" in seen(stacks, name)  # the tool's result reached the model


@pytest.mark.parametrize("name", TRANSLATED_RESPONSES)
def test_responses_token_limit_is_incomplete(gw, name):
    t = TARGETS[name]
    r = oa(gw).responses.create(**r_body(name, t.length, max_output_tokens=t.limit or 64))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    events = responses_events(gw, r_body(name, t.length, max_output_tokens=t.limit or 64))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("name", WITH_HTTP)
@both
def test_responses_upstream_error_before_the_stream(gw, name, stream):
    t = TARGETS[name]
    with pytest.raises(openai.APIStatusError) as e:
        oa(gw).responses.create(**r_body(name, t.http), stream=stream)
    assert e.value.status_code == t.status and e.value.body["message"]


@pytest.mark.parametrize("name", WITH_CUT)
def test_responses_upstream_error_during_the_stream(gw, name):
    events = responses_events(gw, r_body(name, TARGETS[name].cut))
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" in kinds
    assert kinds[-2:] == ["response.failed", "error"]
    assert events[-2]["response"]["status"] == "failed" and events[-1]["message"]


# ---- /v1/messages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@both
def test_messages_text(gw, name, stream):
    expected = chat(gw, name, TARGETS[name].text, max_tokens=64)
    text = expected.choices[0].message.content
    if not stream:
        m = an(gw).messages.create(**m_body(name, TARGETS[name].text))
        status, raw = post(gw, "/v1/messages", m_body(name, TARGETS[name].text))
        assert status == 200 and at.Message.model_validate(orjson.loads(raw)).content[0].text == text
    else:
        events = messages_events(gw, m_body(name, TARGETS[name].text))
        kinds = [e["type"] for e in events]
        assert kinds[-2:] == ["message_delta", "message_stop"] and "ping" in kinds
        assert events[-2]["delta"]["stop_reason"] == "end_turn" and events[-2]["usage"]["output_tokens"] >= 1
        assert isinstance(events[0]["message"]["usage"]["input_tokens"], int)
        with an(gw).messages.stream(**m_body(name, TARGETS[name].text)) as s:
            assert "".join(s.text_stream) == text
            m = s.get_final_message()
    assert m.content[0].text == text and m.stop_reason == "end_turn"
    if name != "mock":
        assert m.usage.output_tokens == expected.usage.completion_tokens
        if not TARGETS[name].native_messages:
            assert m.usage.input_tokens == expected.usage.prompt_tokens


@pytest.mark.parametrize("name", WITH_TOOLS)
def test_messages_tool_use_round_trip(gw, stacks, name):
    """The anthropic SDK with tools, on every target (an OpenAI and an OpenAI-compatible one included)."""
    t = TARGETS[name]
    body = m_body(name, t.tools, tools=M_TOOLS, tool_choice={"type": "any"})
    with an(gw).messages.stream(**body) as s:
        final = s.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and uses[0].input["location"]
    assert final.stop_reason == "tool_use"
    whole = an(gw).messages.create(**body)
    assert [b.name for b in whole.content if b.type == "tool_use"] == [u.name for u in uses]
    use = uses[0]
    after = an(gw).messages.create(model=body["model"], max_tokens=64, tools=M_TOOLS, messages=[
        {"role": "user", "content": t.ask(t.tools)[1]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "22C and sunny"}]}])
    assert after.content and after.stop_reason in ("end_turn", "tool_use")
    assert "22C and sunny" in seen(stacks, name)


@pytest.mark.parametrize("name", ALL)
def test_messages_token_limit(gw, name):
    t = TARGETS[name]
    m = an(gw).messages.create(**m_body(name, t.length, max_tokens=t.limit or 64))
    assert m.stop_reason == "max_tokens"
    events = messages_events(gw, m_body(name, t.length, max_tokens=t.limit or 64))
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("name", WITH_HTTP)
@both
def test_messages_upstream_error_before_the_stream(gw, name, stream):
    t = TARGETS[name]
    with pytest.raises(anthropic.APIStatusError) as e:
        an(gw).messages.create(**m_body(name, t.http), stream=stream)
    assert e.value.status_code == t.status
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] in ERROR_TYPES


@pytest.mark.parametrize("name", WITH_CUT)
def test_messages_upstream_error_during_the_stream(gw, name):
    events = messages_events(gw, m_body(name, TARGETS[name].cut))
    assert any(e["type"] == "content_block_delta" for e in events)
    assert events[-1]["type"] == "error"  # with an Anthropic error type (checked in messages_events)
    with pytest.raises(anthropic.APIStatusError):
        with an(gw).messages.stream(**m_body(name, TARGETS[name].cut)) as s:
            "".join(s.text_stream)


# ---- count_tokens --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_count_tokens(gw, name):
    model, text = TARGETS[name].ask(TARGETS[name].text)
    msgs = [{"role": "user", "content": text}]
    n = an(gw).messages.count_tokens(model=model, system=SYSTEM, messages=msgs).input_tokens
    if name == "anthropic":
        assert n > 1000  # the provider's own count (its mock adds 1000)
    else:
        assert n == prompt_estimate({"model": model, "system": SYSTEM, "messages": msgs})  # the documented estimate


# ---- policies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_EMAIL)
@pytest.mark.parametrize("endpoint", ["responses", "messages"])
def test_pii_redact(stacks, name, endpoint):
    gw = stacks.front_gateway("redact")
    t = TARGETS[name]
    if endpoint == "responses":
        events = responses_events(gw, r_body(name, t.email))
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == text
        whole = oa(gw).responses.create(**r_body(name, t.email)).output_text
    else:
        events = messages_events(gw, m_body(name, t.email))
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        whole = an(gw).messages.create(**m_body(name, t.email)).content[0].text
    assert "[REDACTED:EMAIL]" in text and "@" not in text
    assert whole == text


@pytest.mark.parametrize("name", WITH_EMAIL)
@pytest.mark.parametrize("endpoint", ["responses", "messages"])
def test_pii_block(stacks, name, endpoint):
    gw = stacks.front_gateway("block")
    t = TARGETS[name]
    if "@" in t.email:  # an upstream that echoes the prompt: the address is blocked on the way in
        path, body = ("/v1/responses", r_body(name, t.email)) if endpoint == "responses" else \
            ("/v1/messages", m_body(name, t.email))
        status, raw = post(gw, path, {**body, "stream": True})
        err = orjson.loads(raw)
        assert status == 409 and (err["error"]["code"] == "input_blocked" if endpoint == "responses" else
                                  err == {"type": "error", "error": {"type": "invalid_request_error",
                                                                     "message": "Request blocked: PII detected"}})
        return
    if endpoint == "responses":
        events = responses_events(gw, r_body(name, t.email))
        assert events[-1]["type"] == "error" and events[-1]["code"] == "output_blocked"
        sent = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        with pytest.raises(openai.APIStatusError) as e:
            oa(gw).responses.create(**r_body(name, t.email))
        assert e.value.body["code"] == "output_blocked"
    else:
        events = messages_events(gw, m_body(name, t.email))
        assert events[-1] == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "Stream terminated: PII detected"}}
        sent = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        with pytest.raises(anthropic.APIStatusError) as ae:
            an(gw).messages.create(**m_body(name, t.email))
        assert ae.value.body["type"] == "error" and ae.value.body["error"]["type"] == "invalid_request_error"
    assert "@" not in sent


@pytest.mark.parametrize("name", ["cohere", "gemini", "compat"])
@pytest.mark.parametrize("endpoint", ["responses", "messages"])
def test_input_redaction_before_translation(stacks, name, endpoint):
    gw = stacks.front_gateway("redact")
    t = TARGETS[name]
    secret = "Write to bob.jones@example.net."
    if endpoint == "responses":
        oa(gw).responses.create(**{**r_body(name, t.text), "instructions": secret})
    else:
        an(gw).messages.create(**{**m_body(name, t.text), "system": secret})
    got = seen(stacks, name)
    assert "bob.jones" not in got and "[REDACTED:EMAIL]" in got


# ---- the gateway's own refusals ------------------------------------------------------------------------------


def test_unsupported_responses_features_are_400s(gw):
    c = oa(gw)
    for kw, param in (({"previous_response_id": "resp_1"}, "previous_response_id"), ({"store": True}, "store"),
                      ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
                      ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "allowed_tools"}},
                       "tool_choice")):
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(**{"model": "mock-1", "input": "hi", **kw})
        assert e.value.param == param and e.value.code in ("unsupported_parameter", "unknown_parameter")
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="compat-gpt", input="hi", tools=[{"type": "web_search"}])
    assert e.value.param == "tools[0]"  # a provider-run tool: refused before any front


def test_gateway_errors_on_messages_in_anthropic_envelope(stacks, gw):
    def refused(gateway: Gateway, key: str, body: dict, path: str = "/v1/messages") -> tuple[int, dict]:
        status, raw = post(gateway, path, body, key)
        return status, orjson.loads(raw)

    ok = {"model": "mock-1", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    assert refused(gw, "", {**ok, "model": "nope"})[0] == 404
    assert refused(gw, "", {**ok, "model": "nope"})[1]["error"]["type"] == "not_found_error"
    assert refused(gw, "", {**ok, "max_tokens": 0}) == (400, {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required (an integer >= 1)"}})
    assert refused(gw, "", {"model": "mock-1"}, "/v1/messages/count_tokens")[1]["error"]["type"] == \
        "invalid_request_error"
    status, body = refused(gw, "", {**ok, "container": "c"})
    assert status == 400 and set(body) == {"type", "error"}
    # A native Messages target whose server answers in OpenAI's envelope: relayed in Anthropic's.
    assert refused(gw, "", {**ok, "model": "claude-elsewhere"}) == (404, {"type": "error", "error": {
        "type": "not_found_error", "message": "Invalid URL (POST /v1/v1/messages)"}})
    guarded = stacks.front_gateway("guarded")
    assert refused(guarded, "", ok)[1]["error"]["type"] == "authentication_error"
    assert refused(guarded, CHAT_KEY, ok)[1]["error"]["type"] == "permission_error"
    assert refused(guarded, KEY, ok)[0] == 200
    status, body = refused(guarded, KEY, ok)
    assert (status, body["error"]["type"]) == (429, "rate_limit_error")
    with pytest.raises(anthropic.RateLimitError):
        an(guarded, KEY).messages.create(**ok)
    with pytest.raises(anthropic.AuthenticationError):
        an(guarded, "wrong").messages.create(**ok)
