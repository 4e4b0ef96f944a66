"""The Anthropic adapter: request translation, the stream translator under any split of the recorded streams, the
non-streamed answer and error mapping, and the real `openai` SDK through the gateway in front of the mock
Anthropic API (`tests/support/mock_anthropic.py`), pii-detector included."""

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
from fastgw.providers import adapter_for, ir
from fastgw.providers.anthropic import DEFAULT_MAX_TOKENS, translate_request
from fastgw.providers.base import TargetRuntime
from tests.providers.relay import fed, finished
from tests.providers.stack import ask
from tests.support import mock_anthropic

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "anthropic"
PROVIDER = "anthropic"  # for the `mock` and `client` fixtures (tests/providers/conftest.py)
MODEL = "claude-sonnet-4-5"
UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
KEY = "sk-ant-test-key"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["location"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}

ADAPTER = adapter_for("anthropic")


def target(base_url: str = "https://api.anthropic.com", **kw) -> TargetRuntime:
    return TargetRuntime(id="claude", provider="anthropic", model=MODEL, base_url=base_url, api_key=KEY, **kw)


def req(**body) -> dict:
    body.setdefault("model", MODEL)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return translate_request(target(), body, bool(body.get("stream")))


def refused(**body) -> GatewayError:
    with pytest.raises(GatewayError) as e:
        req(**body)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value


# ---- request translation --------------------------------------------------------------------------------------


def test_plain_request():
    out = req(messages=[{"role": "system", "content": "Be brief."},
                        {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                        {"role": "user", "content": "Hello"}],
              temperature=0.5, top_p=0.9, stop="###", user="user-123", stream=True)
    assert out == {"model": MODEL, "max_tokens": DEFAULT_MAX_TOKENS, "system": "Be brief.\n\nNo emoji.",
                   "messages": [{"role": "user", "content": "Hello"}], "temperature": 0.5, "top_p": 0.9,
                   "stop_sequences": ["###"], "metadata": {"user_id": "user-123"}, "stream": True}
    assert mock_anthropic._validate(out) is None


def test_max_tokens_and_stop_list():
    assert req(max_tokens=50)["max_tokens"] == 50
    assert req(max_tokens=50, max_completion_tokens=70)["max_tokens"] == 70
    assert req(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in req(stop=None)
    assert "stream" not in req()


def test_images_and_pdf():
    out = req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}]}])
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}]
    assert mock_anthropic._validate(out) is None
    e = refused(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}])
    assert e.param == "messages[0].content[0]"
    e = refused(messages=[{"role": "user", "content": [{"type": "image_url",
                                                         "image_url": {"url": "data:image/png,abc"}}]}])
    assert e.param == "messages[0].content[0]"
    e = refused(messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}])
    assert e.code == "unsupported_parameter"
    e = refused(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert e.code == "unsupported_parameter" and e.param == "messages[0].content[0]"


def test_tool_round_trip_merges_turns():
    """Two parallel tool results and the user message after them become one user turn, results first."""
    out = req(tools=[WEATHER_TOOL, TIME_TOOL], messages=[
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": '{"location": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "14:00"}]},
        {"role": "user", "content": "Thanks. Short answer please."}])
    assert out["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "14:00"}]},
            {"type": "text", "text": "Thanks. Short answer please."}]}]
    assert out["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"],
         "description": "Current weather for a city.", "strict": True},
        {"name": "get_time", "input_schema": TIME_TOOL["function"]["parameters"]}]
    assert mock_anthropic._validate(out) is None
    e = refused(messages=[{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}])
    assert e.param == "messages[0].tool_calls[0].function.arguments"
    assert refused(messages=[{"role": "tool", "content": "x"}]).param == "messages[0].tool_call_id"


@pytest.mark.parametrize("choice, parallel, expected", [
    (None, None, None),
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),
])
def test_tool_choice(choice, parallel, expected):
    body = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert req(**body).get("tool_choice") == expected
    # Without tools there is nothing to choose from: Anthropic would refuse a lone tool_choice.
    assert "tool_choice" not in req(tool_choice="none")


def test_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    out = req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in req(response_format={"type": "text"})
    assert refused(response_format={"type": "json_object"}).param == "response_format"


@pytest.mark.parametrize("body, param", [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
])
def test_refused(body, param):
    e = refused(**body)
    assert e.code == "unsupported_parameter" and e.param == param
    assert b'"unsupported_parameter"' in e.body()


def test_dropped_fields_are_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(ir, "_noted", set())
    with caplog.at_level(logging.INFO, logger="fastgw.providers.anthropic"):
        out = req(frequency_penalty=0.5, seed=7, logit_bias={"1": 2}, n=1, logprobs=False, stream_options={})
        req(frequency_penalty=0.1)
    for k in ("frequency_penalty", "seed", "logit_bias", "n", "logprobs", "stream_options"):
        assert k not in out
    notes = [r.getMessage() for r in caplog.records if r.name == "fastgw.providers.anthropic"]
    assert len(notes) == 3 and all("dropped" in n for n in notes)  # once per field: not for n=1, logprobs=False
    assert {f for f in ("frequency_penalty", "seed", "logit_bias") if any(repr(f) in n for n in notes)} == \
        {"frequency_penalty", "seed", "logit_bias"}


def test_build_request():
    r = ADAPTER.build_request(target(), "chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}]}, True)
    assert (r.scheme, r.host, r.port, r.method, r.path) == ("https", "api.anthropic.com", 443, "POST", "/v1/messages")
    h = dict(r.headers)
    assert h[b"x-api-key"] == KEY.encode() and h[b"anthropic-version"] == b"2023-06-01"
    assert h[b"accept"] == b"text/event-stream" and b"authorization" not in h
    assert orjson.loads(r.body)["stream"] is True
    r = ADAPTER.build_request(target("http://127.0.0.1:8080/anthropic/v1",
                                     extra_headers=[(b"anthropic-version", b"2024-01-01")]),
                              "chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, False)
    assert r.path == "/anthropic/v1/messages" and r.port == 8080
    assert [v for n, v in r.headers if n == b"anthropic-version"] == [b"2024-01-01"]
    for endpoint in ("embeddings", "completions"):
        with pytest.raises(GatewayError) as e:
            ADAPTER.build_request(target(), endpoint, {"model": MODEL, "input": "x"}, False)
        assert e.value.status == 400 and e.value.code == "unsupported_endpoint"


# ---- stream translation ---------------------------------------------------------------------------------------

COMPLETE = ["text", "email", "tools", "parallel", "max_tokens", "stop_sequence", "refusal", "thinking"]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def translate(stream: bytes, pieces: list[bytes] | None = None, include_usage: bool = False) -> list:
    """Feed the pieces; return the OpenAI events (id/created removed), then the error raised, if any."""
    body = {"stream_options": {"include_usage": True}} if include_usage else {}
    t = ADAPTER.stream_translator(target(), body)
    out = b""
    err: Exception | None = None
    try:
        for p in pieces if pieces is not None else [stream]:
            out += fed(t, p)
        out += finished(t)
    except GatewayError as e:
        err = e
    events: list = []
    ids = set()
    for ev in SSEDecoder().feed(out):
        if ev.data == "[DONE]":
            events.append("[DONE]")
            continue
        obj = orjson.loads(ev.data)
        ids.add((obj.pop("id"), obj.pop("created")))
        events.append(obj)
    assert len(ids) <= 1  # one id and created for the whole stream
    return events + ([err] if err is not None else [])


def chunk(delta: dict, finish: str | None = None, usage: bool = False) -> dict:
    c = {"object": "chat.completion.chunk", "model": UPSTREAM_MODEL,
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage:
        c["usage"] = None
    return c


def test_text_stream_events():
    assert translate(fixture("text.sse")) == [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}), chunk({"content": "! How can I"}),
        chunk({"content": " help you today?"}), chunk({}, "stop"), "[DONE]"]


def test_usage_chunk():
    events = translate(fixture("email.sse"), include_usage=True)
    assert all(e["usage"] is None for e in events[:-2])
    assert events[-2] == {"object": "chat.completion.chunk", "model": UPSTREAM_MODEL,
                          "choices": [], "usage": {"prompt_tokens": 43, "completion_tokens": 14, "total_tokens": 57,
                                                   "prompt_tokens_details": {"cached_tokens": 12}}}
    assert events[-1] == "[DONE]"


def test_tool_stream_events():
    events = translate(fixture("tools.sse"))
    calls = [e["choices"][0]["delta"]["tool_calls"] for e in events[:-1] if "tool_calls" in e["choices"][0]["delta"]]
    assert calls[0] == [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]
    assert all(c[0].keys() == {"index", "function"} and c[0]["index"] == 0 for c in calls[1:])
    args = "".join(c[0]["function"]["arguments"] for c in calls)
    assert json.loads(args) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_parallel_tool_stream_events():
    events = translate(fixture("parallel.sse"))
    by_index: dict[int, dict] = {}
    for e in events[:-1]:
        for c in e["choices"][0]["delta"].get("tool_calls", ()):
            slot = by_index.setdefault(c["index"], {"arguments": ""})
            if "id" in c:
                assert "id" not in slot
                slot.update(id=c["id"], name=c["function"]["name"])
            slot["arguments"] += c["function"]["arguments"]
    assert by_index == {
        0: {"id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "arguments": '{"location": "Paris"}'},
        1: {"id": "toolu_01B19r91rx91mr918936mr8", "name": "get_time", "arguments": '{"timezone": "Europe/Paris"}'}}


@pytest.mark.parametrize("name, finish", [("max_tokens", "length"), ("stop_sequence", "stop"),
                                          ("refusal", "content_filter"), ("thinking", "stop")])
def test_finish_reasons(name, finish):
    events = translate(fixture(f"{name}.sse"))
    assert events[-2]["choices"][0]["finish_reason"] == finish
    if name == "thinking":  # the thinking block is not part of the OpenAI answer
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "42"


def test_tool_input_given_whole_in_block_start():
    """A tool_use block with no input deltas still gets JSON arguments (its start input, or {})."""
    ev = mock_anthropic.events_of(fixture("parallel.sse"))
    start = next(e for e in ev if b'"content_block_start"' in e and b'"index":1' in e)
    stream = b"".join(e for e in ev if not (b"input_json_delta" in e and b'"index":1' in e))
    events = translate(stream.replace(start, start.replace(b'"input":{}', b'"input":{"timezone":"UTC"}')))
    args = [c["function"]["arguments"] for e in events[:-1]
            for c in e["choices"][0]["delta"].get("tool_calls", ()) if c["index"] == 1]
    assert "".join(args) == '{"timezone":"UTC"}'


def test_in_stream_error():
    events = translate(fixture("error.sse"))
    assert [e["choices"][0]["delta"] for e in events[:-1]] == [{"role": "assistant", "content": ""},
                                                                {"content": "Partial answer"}]
    err = events[-1]
    assert isinstance(err, UpstreamError) and err.code == "overloaded_error" and "Overloaded" in err.message
    assert orjson.loads(err.body())["error"]["type"] == "server_error"


def test_cut_and_malformed_streams():
    events = translate(fixture("cut.sse"))
    assert isinstance(events[-1], UpstreamProtocolError) and "middle of an event" in events[-1].message
    assert events[-2]["choices"][0]["delta"] == {"content": "This answer is cut"}
    # A clean end of the body without message_stop is a broken stream too.
    whole = fixture("text.sse")
    err = translate(whole[: whole.index(b"event: message_stop")])[-1]
    assert isinstance(err, UpstreamProtocolError) and "message_stop" in err.message
    assert isinstance(translate(b"event: ping\ndata: {not json\n\n")[-1], UpstreamProtocolError)


@pytest.mark.parametrize("name", COMPLETE + ["error", "cut"])
def test_byte_by_byte_equals_whole(name):
    whole = fixture(f"{name}.sse")
    expected = translate(whole, include_usage=True)
    got = translate(whole, [whole[i:i + 1] for i in range(len(whole))], include_usage=True)
    if isinstance(expected[-1], Exception):
        assert type(got[-1]) is type(expected[-1]) and got[-1].message == expected[-1].message
        expected, got = expected[:-1], got[:-1]
    assert got == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMPLETE + ["error", "cut"]), st.data())
def test_any_split_equals_whole(name, data):
    whole = fixture(f"{name}.sse")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(whole) - 1), max_size=40)))
    pieces = [whole[a:b] for a, b in zip([0] + cuts, cuts + [len(whole)])]
    expected = translate(whole, include_usage=True)
    got = translate(whole, pieces, include_usage=True)
    if isinstance(expected[-1], Exception):
        assert type(got[-1]) is type(expected[-1]) and got[-1].message == expected[-1].message
        expected, got = expected[:-1], got[:-1]
    assert got == expected


@pytest.mark.parametrize("name", COMPLETE)
def test_stream_adds_up_to_the_non_streamed_answer(name):
    """The chunks, accumulated, say what translate_response says of the same message."""
    events = translate(fixture(f"{name}.sse"))
    text, calls, finish = "", {}, None
    for e in events[:-1]:
        ch = e["choices"][0]
        text += ch["delta"].get("content") or ""
        for c in ch["delta"].get("tool_calls", ()):
            slot = calls.setdefault(c["index"], {"id": c.get("id"), "type": "function",
                                                 "function": {"name": c["function"].get("name"), "arguments": ""}})
            slot["function"]["arguments"] += c["function"]["arguments"]
        finish = ch["finish_reason"] or finish
    msg = mock_anthropic.message_of(fixture(f"{name}.sse"))
    status, body = ADAPTER.translate_response(target(), {}, 200, orjson.dumps(msg))
    out = orjson.loads(body)
    choice = out["choices"][0]
    assert status == 200 and choice["finish_reason"] == finish
    assert (choice["message"]["content"] or "") == text
    got_calls = choice["message"].get("tool_calls") or []
    assert [c["id"] for c in got_calls] == [c["id"] for c in calls.values()]
    assert [json.loads(c["function"]["arguments"]) for c in got_calls] == \
        [json.loads(c["function"]["arguments"]) for c in calls.values()]


# ---- non-streamed answers and errors --------------------------------------------------------------------------


def test_translate_response_text_and_tools():
    status, body = ADAPTER.translate_response(target(), {}, 200, fixture("text.json"))
    out = orjson.loads(body)
    assert status == 200 and out["object"] == "chat.completion" and out["model"] == UPSTREAM_MODEL
    assert out["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Hello! How can I help you today?", "refusal": None}}]
    assert out["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40,
                            "prompt_tokens_details": {"cached_tokens": 0}}
    out = orjson.loads(ADAPTER.translate_response(target(), {}, 200, fixture("tools.json"))[1])
    msg = out["choices"][0]["message"]
    assert msg["content"] == "Okay, let's check the weather for San Francisco, CA:"
    assert msg["tool_calls"] == [{"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"location":"San Francisco, CA","unit":"fahrenheit"}'}}]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("status, name, type_, code", [
    (400, "error_400.json", "invalid_request_error", "invalid_request_error"),
    (401, "error_401.json", "authentication_error", "authentication_error"),
    (429, "error_429.json", "rate_limit_error", "rate_limit_error"),
    (529, "error_529.json", "server_error", "overloaded_error"),
])
def test_error_envelopes(status, name, type_, code):
    got_status, body = ADAPTER.translate_response(target(), {}, status, fixture(name))
    err = orjson.loads(body)["error"]
    upstream = json.loads(fixture(name))["error"]
    assert got_status == status
    assert err == {"message": upstream["message"], "type": type_, "param": None, "code": code}


def test_error_without_anthropic_body():
    status, body = ADAPTER.translate_response(target(), {}, 502, b"<html>bad gateway</html>")
    assert status == 502 and "bad gateway" in orjson.loads(body)["error"]["message"]
    status, body = ADAPTER.translate_response(target(), {}, 200, b"not json")
    assert status == 502 and orjson.loads(body)["error"]["code"] == "upstream_protocol_error"


# ---- through the gateway, with the openai SDK -----------------------------------------------------------------
# What every provider does the same way through the gateway is in test_contract.py; here, what is Anthropic's
# own: the tool-result turn and thinking left out. `mock`, `client`: tests/providers/conftest.py.


def test_sdk_tool_calls_non_stream_and_results_back(client, mock):
    r = client.chat.completions.create(model=MODEL, messages=ask("tools"), tools=[WEATHER_TOOL],
                                       tool_choice="required", parallel_tool_calls=False)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].function.name == "get_weather"
    assert mock.last("/v1/messages")["body"]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    # The tool result goes back as Anthropic wants it (the mock checks the tool_use id and turn order).
    history = ask("tools") + [msg.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "64F, sunny"}]
    r2 = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL])
    assert r2.choices[0].message.content == "Hello! How can I help you today?"
    sent = mock.last("/v1/messages")["body"]["messages"]
    assert sent[-1] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "content": "64F, sunny"}]}
    assert sent[-2]["content"][-1]["input"] == {"location": "San Francisco, CA", "unit": "fahrenheit"}


def test_sdk_thinking_left_out(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ask("thinking"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "42"
    assert client.chat.completions.create(model=MODEL, messages=ask("thinking")).choices[0].message.content == "42"
