"""The Gemini adapter: request translation, the stream translator over recorded Gemini streams (whole, byte by byte,
any split), answer and error translation, and the real gateway with the real openai SDK against the mock Gemini."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.api.errors import UpstreamError, UpstreamProtocolError
from fastgw.api.errors import GatewayError
from fastgw.proto.sse import SSEDecoder
from fastgw.providers import adapter_for
from fastgw.providers import ir
from fastgw.providers.base import TargetRuntime
from fastgw.providers.gemini import SKIP_SIGNATURE, GeminiTranslator, translate_request, translate_schema
from tests.providers.relay import fed, finished
from tests.providers.stack import ask, last, stream_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gemini"
PROVIDER = "gemini"  # for the `mock` and `client` fixtures (tests/providers/conftest.py)
STREAMS = sorted(p.stem for p in FIXTURES.glob("*.sse") if p.stem != "error_midstream")
MODEL = "gemini-2.5-flash"
KEY = "gm-test-key-123"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"], "additionalProperties": False}}}


def _target(model: str = MODEL, base_url: str = "https://generativelanguage.googleapis.com") -> TargetRuntime:
    return TargetRuntime(id="g", provider="gemini", model=model, base_url=base_url, api_key=KEY)


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# ---- translator over recorded streams -------------------------------------------------------------------------


def _events(out: bytes) -> list:
    """The OpenAI events of translated output, `id`/`created` taken out (one per stream, random)."""
    evs = []
    for ev in SSEDecoder().feed(out):
        if ev.data == "[DONE]":
            evs.append("[DONE]")
            continue
        obj = orjson.loads(ev.data)
        obj.pop("id")
        obj.pop("created")
        for c in obj["choices"]:
            for tc in c["delta"].get("tool_calls") or ():
                if "id" in tc:  # generated (Gemini sends no call ids): random like the chunk id
                    assert tc["id"].startswith("call_")
                    tc["id"] = "call_*"
        evs.append(obj)
    return evs


def _translate(data: bytes, pieces: list[int] | None = None, body: dict | None = None) -> list:
    t = GeminiTranslator(MODEL, body if body is not None else {"stream_options": {"include_usage": True}})
    out = []
    if pieces is None:
        out.append(fed(t, data))
    else:
        pos = 0
        for n in pieces:
            out.append(fed(t, data[pos : pos + n]))
            pos += n
        out.append(fed(t, data[pos:]))
    out.append(finished(t))
    return _events(b"".join(out))


def _content(evs: list) -> str:
    return "".join(c["delta"].get("content") or "" for e in evs if e != "[DONE]" for c in e["choices"])


def _finish(evs: list) -> list:
    return [c["finish_reason"] for e in evs if e != "[DONE]" for c in e["choices"] if c["finish_reason"]]


def _tool_calls(evs: list) -> list[dict]:
    calls: dict[int, dict] = {}
    for e in evs:
        if e == "[DONE]":
            continue
        for c in e["choices"]:
            for tc in c["delta"].get("tool_calls") or ():
                cur = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                if "id" in tc:
                    assert cur["id"] is None, "id only in a tool call's first delta"
                    cur["id"] = tc["id"]
                    cur["name"] = tc["function"]["name"]
                cur["arguments"] += tc["function"].get("arguments", "")
    assert sorted(calls) == list(range(len(calls)))
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("name", STREAMS)
def test_every_recorded_stream_same_events_whole_and_byte_by_byte(name):
    data = _fixture(name + ".sse")
    whole = _translate(data)
    assert whole[-1] == "[DONE]" and whole[-2]["choices"] == [] and whole[-2]["usage"] is not None
    assert _translate(data, [1] * len(data)) == whole
    first = next(c for c in whole[0]["choices"])
    assert first["delta"]["role"] == "assistant"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(STREAMS), st.lists(st.integers(1, 64), max_size=40))
def test_any_split_gives_the_same_events(name, pieces):
    data = _fixture(name + ".sse")
    assert _translate(data, pieces) == _translate(data)


def test_text_stream():
    evs = _translate(_fixture("text.sse"))
    assert _content(evs) == "Hello there! How can I help you today?"
    assert _finish(evs) == ["stop"]
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["model"] == MODEL and e["object"] == "chat.completion.chunk" for e in evs[:-1])
    assert evs[-2]["usage"] == {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}
    # without include_usage: no usage field, no usage chunk
    plain = _translate(_fixture("text.sse"), body={})
    assert plain[-1] == "[DONE]" and all("usage" not in e for e in plain[:-1]) and plain[-2]["choices"]


def test_tool_call_stream_crlf_framed():
    evs = _translate(_fixture("tool_call.sse"))
    calls = _tool_calls(evs)
    assert len(calls) == 1 and calls[0]["name"] == "get_weather" and calls[0]["id"] == "call_*"
    assert json.loads(calls[0]["arguments"]) == {"location": "Paris", "unit": "celsius"}
    assert _finish(evs) == ["tool_calls"]
    # thinking tokens count as completion tokens, and as reasoning tokens
    assert evs[-2]["usage"] == {"prompt_tokens": 83, "completion_tokens": 118, "total_tokens": 201,
                                "completion_tokens_details": {"reasoning_tokens": 104}}


def test_parallel_tool_calls_stream():
    evs = _translate(_fixture("parallel_tools.sse"))
    assert _content(evs) == "Let me check both cities."
    calls = _tool_calls(evs)
    assert [json.loads(c["arguments"])["location"] for c in calls] == ["Paris", "London"]
    assert _finish(evs) == ["tool_calls"]


def test_usage_cached_and_reasoning_tokens():
    evs = _translate(_fixture("usage.sse"))
    assert evs[-2]["usage"] == {"prompt_tokens": 1200, "completion_tokens": 38, "total_tokens": 1238,
                                "prompt_tokens_details": {"cached_tokens": 1024},
                                "completion_tokens_details": {"reasoning_tokens": 30}}


@pytest.mark.parametrize("name, finish", [("text", "stop"), ("max_tokens", "length"), ("safety", "content_filter"),
                                          ("recitation", "content_filter"), ("prompt_blocked", "content_filter"),
                                          ("tool_call", "tool_calls"), ("after_tool", "stop")])
def test_finish_reasons(name, finish):
    assert _finish(_translate(_fixture(name + ".sse"))) == [finish]


def test_thought_parts_are_not_content_and_two_candidates_are_two_choices():
    data = (b'data: {"candidates":[{"content":{"parts":[{"text":"thinking...","thought":true},{"text":"A"}],'
            b'"role":"model"},"index":0},{"content":{"parts":[{"text":"B"}],"role":"model"},"index":1}]}\n\n'
            b'data: {"candidates":[{"content":{"parts":[{"text":"!"}],"role":"model"},"finishReason":"STOP",'
            b'"index":0},{"content":{"parts":[{"text":"?"}],"role":"model"},"finishReason":"MAX_TOKENS","index":1}],'
            b'"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4,"totalTokenCount":7}}\n\n')
    evs = _translate(data)
    by = {0: "", 1: ""}
    for e in evs[:-2]:
        for c in e["choices"]:
            by[c["index"]] += c["delta"].get("content") or ""
    assert by == {0: "A!", 1: "B?"}
    assert sorted(_finish(evs)) == ["length", "stop"]


def test_in_stream_error_event_raises_after_earlier_text():
    t = GeminiTranslator(MODEL, {})
    data = _fixture("error_midstream.sse")
    first_len = data.index(b"\n\n") + 2
    assert _content(_events(fed(t, data[:first_len]))) == "Starting the answer"
    with pytest.raises(UpstreamError) as e:
        fed(t, data[first_len:])
    assert e.value.code == "UNAVAILABLE" and "overloaded" in e.value.message
    # in one read with the event before it: that event's chunks come out first, the error on the next call
    t = GeminiTranslator(MODEL, {})
    assert _content(_events(fed(t, data))) == "Starting the answer"
    with pytest.raises(UpstreamError) as e:
        finished(t)
    assert e.value.code == "UNAVAILABLE"


@pytest.mark.parametrize("data", [
    _fixture("text.sse")[:-30],                       # cut inside an event
    _fixture("text.sse").rsplit(b"data:", 1)[0],      # whole events, but no finishReason
    b"",                                              # nothing at all
])
def test_truncated_stream_is_a_protocol_error(data):
    t = GeminiTranslator(MODEL, {})
    fed(t, data)
    with pytest.raises(UpstreamProtocolError):
        finished(t)


@pytest.mark.parametrize("event", [
    b"data: {not json\n\n",
    b"data: 42\n\n",
    b'data: {"candidates":[{"content":{"parts":[{"functionCall":"f"}]},"index":0}]}\n\n',
    b'data: {"candidates":["x"]}\n\n',
    b'data: {"usageMetadata":{"promptTokenCount":"many"}}\n\n',
])
def test_malformed_event_is_a_protocol_error(event):
    t = GeminiTranslator(MODEL, {})
    with pytest.raises(UpstreamProtocolError):
        fed(t, event)
        finished(t)  # when the event had already started the choice: raised on the next call


# ---- non-streamed answers and errors ---------------------------------------------------------------------------


def _answer(status: int, data: bytes) -> tuple[int, dict]:
    st_, out = adapter_for("gemini").translate_response(_target(), {}, status, data)
    return st_, orjson.loads(out)


def test_generate_content_text():
    status, body = _answer(200, _fixture("text.json"))
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == MODEL
    ch = body["choices"][0]
    assert ch["message"]["content"] == "Hello there! How can I help you today?" and ch["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}


def test_generate_content_parallel_tools_keep_thought_signature():
    status, body = _answer(200, _fixture("parallel_tools.json"))
    msg = body["choices"][0]["message"]
    assert status == 200 and body["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["content"] == "Let me check both cities."
    assert [json.loads(c["function"]["arguments"]) for c in msg["tool_calls"]] == [{"location": "Paris"},
                                                                                   {"location": "London"}]
    assert msg["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "EjQKMgEMOdbHbX1pQk0="}}
    assert "extra_content" not in msg["tool_calls"][1]
    assert body["usage"]["completion_tokens"] == 66 and body["usage"]["total_tokens"] == 161


@pytest.mark.parametrize("status, name, type_, code", [
    (429, "error_429.json", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    (400, "error_400.json", "invalid_request_error", "INVALID_ARGUMENT"),
])
def test_http_errors_become_openai_envelopes(status, name, type_, code):
    st_, body = _answer(status, _fixture(name))
    assert st_ == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_ and body["error"]["code"] == code and body["error"]["message"]


def test_non_json_error_and_blocked_prompt():
    st_, body = _answer(503, b"<html>Service Unavailable</html>")
    assert st_ == 503 and "Service Unavailable" in body["error"]["message"]
    st_, body = _answer(200, b'{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":4}}')
    assert st_ == 200 and body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] is None
    for bad in (b"not json", b'{"candidates":[{"content":{"parts":[{"functionCall":1}]}}]}', b"[]"):
        st_, body = _answer(200, bad)
        assert st_ == 502 and body["error"]["code"] == "upstream_protocol_error"


# ---- request translation ----------------------------------------------------------------------------------------


def test_request_path_headers_and_endpoints():
    a = adapter_for("gemini")
    r = a.build_request(_target(), "chat/completions", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}, True)
    assert (r.scheme, r.host, r.port) == ("https", "generativelanguage.googleapis.com", 443)
    assert r.path == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    h = dict(r.headers)
    assert h[b"x-goog-api-key"] == KEY.encode() and b"authorization" not in h
    assert orjson.loads(r.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    r = a.build_request(_target("models/gemini-2.0-flash", "http://127.0.0.1:9/v1beta"), "chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}]}, False)
    assert r.path == "/v1beta/models/gemini-2.0-flash:generateContent" and r.port == 9
    for endpoint in ("embeddings", "completions"):
        with pytest.raises(GatewayError) as e:
            a.build_request(_target(), endpoint, {}, False)
        assert e.value.status == 400 and e.value.code == "unsupported_endpoint"


def test_request_messages_tools_and_generation_config():
    body = {
        "model": "g", "stream": True, "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 18}'},
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
        ],
        "tools": [WEATHER_TOOL, {"type": "function", "function": {
            "name": "get_time", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "stop": "END", "n": 2, "seed": 7,
        "presence_penalty": 0.1, "frequency_penalty": 0.3, "parallel_tool_calls": True, "user": "u1",
        "response_format": {"type": "json_object"},
    }
    req = translate_request(_target(), body, False)
    assert req["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use metric units."}]}
    assert req["contents"] == [
        {"role": "user", "parts": [{"text": "Weather here?"},
                                   {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo="}},
                                   {"file_data": {"file_uri": "https://example.com/cat.jpg",
                                                  "mime_type": "image/jpeg"}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                                    {"functionCall": {"name": "get_time", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                                   {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}}]},
    ]
    assert req["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Current weather for a city.",
         "parameters": {"type": "OBJECT", "properties": {"location": {"type": "STRING"},
                                                         "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]}},
                        "required": ["location"]}},
        {"name": "get_time"}]}]
    assert req["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert req["generationConfig"] == {"temperature": 0.2, "topP": 0.9, "presencePenalty": 0.1,
                                       "frequencyPenalty": 0.3, "seed": 7, "maxOutputTokens": 100,
                                       "stopSequences": ["END"], "candidateCount": 2,
                                       "responseMimeType": "application/json"}


@pytest.mark.parametrize("choice, mode", [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")])
def test_tool_choice_modes(choice, mode):
    req = translate_request(_target(), {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL],
                                        "tool_choice": choice}, False)
    assert req["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_schema_translation_inlines_refs_and_drops_rejected_keywords():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": False,
        "$defs": {"City": {"type": "object", "properties": {"name": {"type": "string", "format": "uri"},
                                                           "next": {"$ref": "#/$defs/City"}},
                           "required": ["name", "ghost"]}},
        "properties": {
            "city": {"$ref": "#/$defs/City", "description": "where"},
            "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
            "count": {"type": ["integer", "null"], "minimum": 0, "exclusiveMaximum": 10},
            "kind": {"const": "x"},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "level": {"enum": [1, 2]},
            "mixed": {"oneOf": [{"type": "string"}, {"type": "number", "format": "double"}]},
            "both": {"allOf": [{"properties": {"a": {"type": "string"}}}, {"required": ["a"]}]},
        },
    }
    assert translate_schema(schema) == {
        "type": "OBJECT",
        "properties": {
            "city": {"type": "OBJECT", "description": "where",
                     "properties": {"name": {"type": "STRING"}, "next": {"type": "OBJECT"}}, "required": ["name"]},
            "when": {"type": "STRING", "format": "date-time", "nullable": True},
            "count": {"type": "INTEGER", "minimum": 0, "nullable": True},
            "kind": {"type": "STRING", "enum": ["x"]},
            "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
            "level": {},
            "mixed": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER", "format": "double"}]},
            "both": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "required": ["a"]},
        },
    }
    req = translate_request(_target(), {"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "out", "strict": True, "schema": {
            "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}}}, False)
    assert req["generationConfig"] == {"responseMimeType": "application/json",
                                       "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}}


def test_thought_signatures_restored_or_skipped_for_gemini_3():
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
            {"role": "tool", "tool_call_id": "c2", "content": "2"},
            {"role": "assistant", "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"},
                 "extra_content": {"google": {"thought_signature": "SIG"}}}]},
            {"role": "tool", "tool_call_id": "c3", "content": "3"}]
    sigs = lambda req: [p.get("thoughtSignature") for c in req["contents"] for p in c["parts"]  # noqa: E731
                        if "functionCall" in p]
    assert sigs(translate_request(_target("gemini-3-pro-preview"), {"messages": msgs}, False)) == [
        SKIP_SIGNATURE, None, "SIG"]
    assert sigs(translate_request(_target(), {"messages": msgs}, False)) == [None, None, "SIG"]


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "custom", "custom": {"name": "t"}}]},
     "tools[0]"),
    ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
     "messages[0].content[0]"),
])
def test_refused_requests_are_400_envelopes(body, param):
    with pytest.raises(GatewayError) as e:
        translate_request(_target(), body, False)
    assert e.value.status == 400 and e.value.type == "invalid_request_error" and e.value.param == param
    assert orjson.loads(e.value.body())["error"]["param"] == param


# ---- through the gateway, with the openai SDK ------------------------------------------------------------------
# What every provider does the same way through the gateway is in test_contract.py; here, what is Gemini's
# own: the echo answer, the thought signature on the tool-result turn, cached and reasoning tokens.
# `mock`, `client`: tests/providers/conftest.py.


def test_gateway_echo_answer(client):
    """The generic echo answer, streamed in many small events."""
    chunks = client.chat.completions.create(model=MODEL, messages=_user("hello gemini"), stream=True)
    assert stream_text(chunks) == "Echo: hello gemini"


def test_gateway_tool_result_round_trip(client, mock):
    r = client.chat.completions.create(model=MODEL, messages=_user("fixture:tool_call"), tools=[WEATHER_TOOL])
    call = r.choices[0].message.tool_calls[0]
    msgs = [*_user("fixture:tool_call"), r.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18, "sky": "sunny"}'}]
    text = stream_text(client.chat.completions.create(model=MODEL, messages=msgs, stream=True, tools=[WEATHER_TOOL]))
    assert text == "It is 18 degrees and sunny in Paris."
    contents = last(mock)["body"]["contents"]
    assert contents[1]["role"] == "model" and contents[1]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert contents[2] == {"role": "user", "parts": [{"functionResponse": {
        "name": "get_weather", "response": {"temp": 18, "sky": "sunny"}}}]}
    # the thought signature went out in extra_content, came back with the SDK's message, and is restored
    assert contents[1]["parts"][0]["thoughtSignature"] == "CiQBd3V6eXhfZ2F0ZXdheV90ZXN0X3NpZ25hdHVyZV8wMDAx"


def test_gateway_usage_with_include_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=_user("fixture:usage"), stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and all(ch.usage is None for ch in chunks[:-1])
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (1200, 38, 1238)
    assert u.prompt_tokens_details.cached_tokens == 1024 and u.completion_tokens_details.reasoning_tokens == 30


def _user(text: str) -> list[dict]:
    return ask(text, system=None)


def test_malformed_bodies_are_400_not_crashes():
    a = adapter_for("gemini")
    for body in ({"messages": [{"role": "user", "content": "x"}], "stop": 5},
                 {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "x"}]}]},
                 {"messages": "hi"}):
        with pytest.raises(GatewayError) as e:
            a.build_request(_target(), "chat/completions", body, False)
        assert e.value.status == 400 and e.value.type == "invalid_request_error"


def test_schema_refs_that_fan_out_are_bounded():
    defs = {f"L{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/L{i + 1}"},
                                                       "b": {"$ref": f"#/$defs/L{i + 1}"}}} for i in range(30)}
    defs["L30"] = {"type": "string"}
    with pytest.raises(GatewayError) as e:
        translate_schema({"$defs": defs, "$ref": "#/$defs/L0"})
    assert e.value.code == "invalid_schema"
    with pytest.raises(GatewayError):
        translate_schema({"$ref": "#/$defs/missing"})


def test_dropped_fields_are_logged_once(caplog):
    body = {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}}
    with caplog.at_level(logging.INFO, logger="fastgw.providers.gemini"):
        translate_request(_target(), body, False)
        translate_request(_target(), body, False)
    noted = [r for r in caplog.records if "logit_bias" in r.getMessage()]
    assert len(noted) <= 1  # once per worker (an earlier test may already have noted it)
    assert ("gemini", "logit_bias") in ir._noted
