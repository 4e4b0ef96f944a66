"""The Cohere adapter: request translation to v2 Chat, the SSE stream translator under any split of the recorded
streams, the non-streamed answer and error mapping, and the real `openai` SDK through the gateway in front of the
mock Cohere API (`tests/support/mock_cohere.py`), pii-detector included."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.api.errors import UpstreamError, UpstreamProtocolError
from fastgw.api.errors import GatewayError
from fastgw.proto.sse import SSEDecoder
from fastgw.providers import adapter_for, ir
from fastgw.providers.base import TargetRuntime
from fastgw.providers.cohere import CohereTranslator, translate_request
from tests.conftest import GatewayFactory
from tests.providers.relay import fed, finished
from tests.providers.stack import ask, client_for, gw_config
from tests.support import mock_cohere

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cohere"
PROVIDER = "cohere"  # for the `mock` and `client` fixtures (tests/providers/conftest.py)
MODEL = "command-a-03-2025"
KEY = "co-test-key"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}
PLAIN_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER_TOOL["function"].items() if k != "strict"}}

ADAPTER = adapter_for("cohere")


def target(base_url: str = "https://api.cohere.com", api_key: str | None = KEY) -> TargetRuntime:
    return TargetRuntime(id="co", provider="cohere", model=MODEL, base_url=base_url, api_key=api_key)


def req(stream: bool = False, **body) -> dict:
    body.setdefault("model", "co-alias")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    out = translate_request(target(), body, stream)
    assert mock_cohere.validate(out) is None  # what we send is a valid v2 body
    return out


def refused(**body) -> GatewayError:
    with pytest.raises(GatewayError) as e:
        req(**body)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value


# ---- request translation --------------------------------------------------------------------------------------


def test_plain_request_and_parameters():
    out = req(messages=[{"role": "system", "content": "Be brief."},
                        {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                        {"role": "user", "content": "Hello", "name": "bob"}],
              temperature=0.5, top_p=0.9, seed=7, presence_penalty=0.1, frequency_penalty=0.2, max_tokens=64,
              stop="###")
    assert out == {"model": MODEL, "stream": False, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "system", "content": "No emoji."},
        {"role": "user", "content": "Hello"}],
        "temperature": 0.5, "p": 0.9, "seed": 7, "frequency_penalty": 0.2, "presence_penalty": 0.1,
        "max_tokens": 64, "stop_sequences": ["###"]}
    assert req(stream=True)["stream"] is True
    assert req(max_tokens=10, max_completion_tokens=20, stop=["a", "b"])["max_tokens"] == 20
    # Outside Cohere's ranges: clamped (OpenAI's top_p 1 and negative penalties are valid there).
    out = req(top_p=1.0, frequency_penalty=-1.5, presence_penalty=2)
    assert (out["p"], out["frequency_penalty"], out["presence_penalty"]) == (0.99, 0.0, 1.0)


def test_images():
    out = req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    e = refused(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y"}}]}])
    assert e.param == "messages[0].content[0].image_url.url"
    e = refused(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert e.code == "unsupported_parameter" and e.param == "messages[0].content[0]"
    e = refused(messages=[{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    assert e.param == "messages[0].content[0]"


def test_tool_round_trip():
    out = req(tools=[WEATHER_TOOL, TIME_TOOL], messages=[
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "I will check both.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"location": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
        {"role": "assistant", "content": "It is 18C at 14:00."}])
    assert out["tools"] == [PLAIN_WEATHER, TIME_TOOL] and out["strict_tools"] is True
    assert out["messages"][1:] == [
        {"role": "assistant", "tool_plan": "I will check both.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"location": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "14:00"},
        {"role": "assistant", "content": "It is 18C at 14:00."}]
    assert "strict_tools" not in req(tools=[TIME_TOOL])
    assert refused(messages=[{"role": "tool", "content": "x"}]).param == "messages[0].tool_call_id"


@pytest.mark.parametrize("choice, tools, expected", [
    (None, [PLAIN_WEATHER, TIME_TOOL], None),
    ("auto", [PLAIN_WEATHER, TIME_TOOL], None),
    ("required", [PLAIN_WEATHER, TIME_TOOL], "REQUIRED"),
    ("none", [PLAIN_WEATHER, TIME_TOOL], "NONE"),
    ({"type": "function", "function": {"name": "get_time"}}, [TIME_TOOL], "REQUIRED"),
])
def test_tool_choice(choice, tools, expected):
    out = req(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice)
    assert out["tools"] == tools and out.get("tool_choice") == expected
    assert refused(tools=[TIME_TOOL], tool_choice={"type": "function", "function": {"name": "x"}}).param == \
        "tool_choice"


def test_response_format():
    assert req(response_format={"type": "json_object"})["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert req(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})[
        "response_format"] == {"type": "json_object", "json_schema": schema}
    assert "response_format" not in req(response_format={"type": "text"})


@pytest.mark.parametrize("body, param", [
    ({"n": 3}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"response_format": {"type": "grammar"}}, "response_format"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
])
def test_refused(body, param):
    assert refused(**body).param == param


def test_dropped_fields_are_logged(caplog, monkeypatch):
    monkeypatch.setattr(ir, "_noted", set())
    with caplog.at_level("INFO", logger="fastgw.providers.cohere"):
        out = req(logprobs=False, user="u1", parallel_tool_calls=False, logit_bias={"1": 2})
    assert not {"logprobs", "user", "parallel_tool_calls", "logit_bias"} & set(out)
    assert "logprobs" in caplog.text and "logit_bias" in caplog.text  # (logprobs: true is refused)


def test_build_request():
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = ADAPTER.build_request(target(), "chat/completions", body, True)
    assert (r.scheme, r.host, r.port, r.method, r.path) == ("https", "api.cohere.com", 443, "POST", "/v2/chat")
    headers = dict(r.headers)
    assert headers[b"host"] == b"api.cohere.com" and headers[b"authorization"] == b"Bearer " + KEY.encode()
    assert headers[b"accept"] == b"text/event-stream"
    assert orjson.loads(r.body) == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = ADAPTER.build_request(target("http://127.0.0.1:8080/cohere", api_key=None), "chat/completions", body, False)
    assert r.path == "/cohere/v2/chat" and b"authorization" not in dict(r.headers)
    with pytest.raises(GatewayError) as e:
        ADAPTER.build_request(target(), "embeddings", {"model": "x", "input": "a"}, False)
    assert e.value.status == 400 and e.value.code == "unsupported_endpoint"
    assert ADAPTER.is_stream(b"text/event-stream; charset=utf-8") and not ADAPTER.is_stream(b"application/json")


# ---- stream translation ---------------------------------------------------------------------------------------

COMPLETE = ["text", "email_split", "tool_call", "tool_calls_parallel", "max_tokens", "stop_sequence"]


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


def chunk(delta: dict, finish: str | None = None) -> dict:
    return {"object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_text_stream_events():
    words = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", "."]
    assert translate(fixture("text.sse")) == [chunk({"role": "assistant", "content": ""})] + [
        chunk({"content": w}) for w in words] + [chunk({}, "stop"), "[DONE]"]


def test_usage_chunk_prefers_billed_units():
    events = translate(fixture("email_split.sse"), include_usage=True)
    assert all(e["usage"] is None for e in events[:-2])
    assert events[-2]["choices"] == [] and events[-2]["usage"] == {
        "prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16}
    tokens_only = fixture("text.sse").replace(b'"billed_units":{"input_tokens":5,"output_tokens":9},', b"")
    assert translate(tokens_only, include_usage=True)[-2]["usage"] == {
        "prompt_tokens": 71, "completion_tokens": 9, "total_tokens": 80}


def test_tool_stream_events():
    assert translate(fixture("tool_call.sse")) == [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "I will"}), chunk({"content": " look up"}),
        chunk({"content": " the weather"}), chunk({"content": " in Paris."}),
        chunk({"tool_calls": [{"index": 0, "id": "get_weather_1byjy32y4hvq", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'location":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ', FR"}'}}]}),
        chunk({}, "tool_calls"), "[DONE]"]


def test_parallel_tool_stream_events():
    events = translate(fixture("tool_calls_parallel.sse"))
    calls: dict[int, list] = {}
    for e in events[:-2]:
        for tc in e["choices"][0]["delta"].get("tool_calls") or ():
            calls.setdefault(tc["index"], []).append(tc)
    assert sorted(calls) == [0, 1]
    assert [calls[i][0]["id"] for i in (0, 1)] == ["get_weather_k88p0m8504w5", "get_weather_wj1m2v6q8d3c"]
    assert [json.loads("".join(tc["function"]["arguments"] for tc in calls[i])) for i in (0, 1)] == [
        {"location": "Paris, FR"}, {"location": "Tokyo, JP"}]
    assert all("id" not in tc for i in (0, 1) for tc in calls[i][1:])
    assert events[-2:] == [chunk({}, "tool_calls"), "[DONE]"]


def test_thinking_and_citations_left_out():
    evs = [{"type": "content-start", "index": 0,
            "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}},
           {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"thinking": "Let me see."}}}},
           {"type": "content-end", "index": 0},
           {"type": "content-delta", "index": 1, "delta": {"message": {"content": {"text": "42"}}}},
           {"type": "citation-start", "index": 0, "delta": {"message": {"citations": {"start": 0, "end": 2}}}},
           {"type": "citation-end", "index": 0},
           {"type": "message-end", "delta": {"finish_reason": "COMPLETE"}}]
    body = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in evs)
    assert translate(body) == [chunk({"role": "assistant", "content": ""}), chunk({"content": "42"}),
                               chunk({}, "stop"), "[DONE]"]


def test_tool_events_without_index():
    """Events without `index` (and a tool call given as a one-item list) still land on the call being streamed."""
    evs = [{"type": "tool-call-start", "delta": {"message": {"tool_calls": [
               {"id": "t1", "type": "function", "function": {"name": "a", "arguments": ""}}]}}},
           {"type": "tool-call-delta", "delta": {"message": {"tool_calls": {"function": {"arguments": "{}"}}}}},
           {"type": "tool-call-start", "delta": {"message": {"tool_calls": {
               "id": "t2", "type": "function", "function": {"name": "b", "arguments": "{\"x\""}}}}},
           {"type": "tool-call-delta", "delta": {"message": {"tool_calls": {"function": {"arguments": ":1}"}}}}},
           {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL"}}]
    t = CohereTranslator(MODEL, {})
    out = fed(t, b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in evs)) + finished(t)
    deltas = [orjson.loads(e.data)["choices"][0]["delta"] for e in SSEDecoder().feed(out) if e.data != "[DONE]"]
    calls = [tc for d in deltas for tc in d.get("tool_calls") or ()]
    assert [(c["index"], c.get("id"), c["function"]) for c in calls] == [
        (0, "t1", {"name": "a", "arguments": ""}), (0, None, {"arguments": "{}"}),
        (1, "t2", {"name": "b", "arguments": '{"x"'}), (1, None, {"arguments": ":1}"})]


@pytest.mark.parametrize("name, finish", [("max_tokens", "length"), ("stop_sequence", "stop"), ("text", "stop")])
def test_finish_reasons(name, finish):
    assert translate(fixture(f"{name}.sse"))[-2] == chunk({}, finish)


def test_in_stream_error():
    events = translate(fixture("error.sse"))
    assert events[:3] == [chunk({"role": "assistant", "content": ""}), chunk({"content": "The"}),
                          chunk({"content": " sky"})]
    err = events[3]
    assert isinstance(err, UpstreamError) and err.code == "cohere_error" and "internal server error" in err.message
    assert len(events) == 4
    # An `error` typed event and a TIMEOUT finish are errors too.
    err = translate(b'event: error\ndata: {"type":"error","message":"boom"}\n\n')[-1]
    assert isinstance(err, UpstreamError) and err.message == "boom"
    err = translate(b'data: {"type":"message-end","delta":{"finish_reason":"TIMEOUT"}}\n\n')[-1]
    assert isinstance(err, UpstreamError) and "TIMEOUT" in err.message


def test_cut_and_malformed_streams():
    events = translate(fixture("cut.sse"))
    assert isinstance(events[-1], UpstreamProtocolError) and "inside an event" in events[-1].message
    assert [e["choices"][0]["delta"].get("content") for e in events[:-1]] == ["", "The", " sky", " is"]
    whole = fixture("text.sse")
    err = translate(whole[: whole.index(b"event: message-end")])[-1]
    assert isinstance(err, UpstreamProtocolError) and "message-end" in err.message
    assert isinstance(translate(b"event: content-delta\ndata: {not json\n\n")[-1], UpstreamProtocolError)
    # A trailing OpenAI-style [DONE] and comments are ignored.
    assert translate(whole + b": keep-alive\n\ndata: [DONE]\n\n") == translate(whole)


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
    """The mock's non-streamed answer (what the stream adds up to) translates to the same message."""
    events = translate(fixture(f"{name}.sse"), include_usage=True)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])
    calls: dict[int, dict] = {}
    for e in events[:-2]:
        for tc in e["choices"][0]["delta"].get("tool_calls") or () if e["choices"] else ():
            c = calls.setdefault(tc["index"], {"id": tc.get("id"), "name": "", "arguments": ""})
            c["name"] += tc["function"].get("name", "")
            c["arguments"] += tc["function"]["arguments"]
    finish = [e["choices"][0]["finish_reason"] for e in events if e != "[DONE]" and e["choices"]][-1]
    body = json.dumps(mock_cohere.response_of(fixture(f"{name}.sse"))).encode()
    status, out = ADAPTER.translate_response(target(), {}, 200, body)
    r = orjson.loads(out)
    assert status == 200 and r["object"] == "chat.completion"
    msg = r["choices"][0]["message"]
    assert (msg["content"] or "") == text and r["choices"][0]["finish_reason"] == finish
    assert [{"id": tc["id"], **tc["function"]} for tc in msg.get("tool_calls") or ()] == \
        [calls[i] for i in sorted(calls)]
    assert r["usage"] == events[-2]["usage"]


# ---- non-streamed answers and errors --------------------------------------------------------------------------


def test_translate_response_text_and_tools():
    status, body = ADAPTER.translate_response(target(), {}, 200, fixture("chat.json"))
    r = orjson.loads(body)
    assert status == 200 and r["model"] == MODEL and r["id"].startswith("chatcmpl-")
    assert r["choices"] == [{"index": 0, "message": {"role": "assistant",
                                                     "content": "LLMs stand for Large Language Models.",
                                                     "refusal": None}, "logprobs": None, "finish_reason": "stop"}]
    assert r["usage"] == {"prompt_tokens": 5, "completion_tokens": 418, "total_tokens": 423}
    r = orjson.loads(ADAPTER.translate_response(target(), {}, 200, fixture("tool_call.json"))[1])
    assert r["choices"][0]["finish_reason"] == "tool_calls"
    assert r["choices"][0]["message"]["content"] == "I will look up the weather in Paris."
    assert r["choices"][0]["message"]["tool_calls"] == [{"id": "get_weather_1byjy32y4hvq", "type": "function",
                                                         "function": {"name": "get_weather",
                                                                      "arguments": '{"location":"Paris, FR"}'}}]
    status, body = ADAPTER.translate_response(target(), {}, 200, b'{"finish_reason":"ERROR","message":{}}')
    assert status == 502 and orjson.loads(body)["error"]["code"] == "cohere_error"
    status, body = ADAPTER.translate_response(target(), {}, 200, b"<html>")
    assert status == 502 and orjson.loads(body)["error"]["code"] == "upstream_protocol_error"


@pytest.mark.parametrize("status, type_", [(400, "invalid_request_error"), (401, "authentication_error"),
                                           (429, "rate_limit_error"), (500, "server_error")])
def test_error_envelopes(status, type_):
    data = fixture(f"error_{status}.json")
    got_status, body = ADAPTER.translate_response(target(), {}, status, data)
    assert got_status == status
    assert orjson.loads(body) == {"error": {"message": json.loads(data)["message"], "type": type_, "param": None,
                                            "code": None}}


def test_error_without_cohere_body():
    status, body = ADAPTER.translate_response(target(), {}, 503, b"upstream connect error")
    err = orjson.loads(body)["error"]
    assert status == 503 and err["type"] == "server_error" and "upstream connect error" in err["message"]


# ---- through the gateway, with the openai SDK -----------------------------------------------------------------
# What every provider does the same way through the gateway is in test_contract.py; here, what is Cohere's
# own: the tool-result turn and its 401. `mock`, `client`: tests/providers/conftest.py.


def test_sdk_tool_results_back(client, mock):
    r = client.chat.completions.create(model=MODEL, messages=ask("tools"), tools=[WEATHER_TOOL],
                                       tool_choice="required")
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].function.name == "get_weather"
    assert mock.last("/v2/chat")["body"]["tool_choice"] == "REQUIRED"
    history = ask("tools") + [msg.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "18C, sunny"}]
    r2 = client.chat.completions.create(model=MODEL, messages=history + [{"role": "user", "content": "text"}],
                                        tools=[WEATHER_TOOL])
    assert r2.choices[0].message.content == "The sky is blue because of Rayleigh scattering."
    sent = mock.last("/v2/chat")["body"]["messages"]
    assert sent[2] == {"role": "assistant", "tool_plan": "I will look up the weather in Paris.", "tool_calls": [
        {"id": "get_weather_1byjy32y4hvq", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"location": "Paris, FR"}'}}]}
    assert sent[3] == {"role": "tool", "tool_call_id": "get_weather_1byjy32y4hvq", "content": "18C, sunny"}


def test_sdk_auth_error(mock, tmp_path):
    """A target without its key: Cohere's 401 is the operator's problem, a 502 `upstream_auth_error` (the SDK's
    InternalServerError) without Cohere's text: the client must not take it for its own key's."""
    cfg = gw_config({"cohere": mock})
    del cfg["providers"]["targets"][0]["secret_key_ref"]
    f = GatewayFactory(tmp_path)
    try:
        c = client_for(f.start(cfg), "x")
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model=MODEL, messages=ask("text"))
        assert e.value.status_code == 502 and e.value.body["code"] == "upstream_auth_error"
        assert "invalid api token" not in str(e.value.body)
    finally:
        f.close()
