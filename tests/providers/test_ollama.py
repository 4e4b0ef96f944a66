"""The Ollama adapter: request translation, the NDJSON stream translator under any split of the recorded streams, the
non-streamed answer and error mapping, and the real `openai` SDK through the gateway in front of the mock Ollama
server (`tests/support/mock_ollama.py`), pii-detector included."""

from __future__ import annotations

import json
import re
from pathlib import Path

import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.api.errors import UpstreamError, UpstreamProtocolError
from fastgw.api.errors import GatewayError
from fastgw.proto.errors import ProtocolError
from fastgw.proto.sse import SSEDecoder
from fastgw.providers import adapter_for, ir
from fastgw.providers.base import TargetRuntime
from fastgw.providers.ollama import OllamaTranslator, translate_request
from tests.providers.relay import fed, finished
from tests.providers.stack import ask
from tests.support import mock_ollama

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"
PROVIDER = "ollama"  # for the `mock` and `client` fixtures (tests/providers/conftest.py)
MODEL = "llama3.2"
KEY = "ollama-proxy-key"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "format": {"type": "string"}},
                   "required": ["location"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

ADAPTER = adapter_for("ollama")


def target(base_url: str = "http://127.0.0.1:11434", api_key: str | None = None) -> TargetRuntime:
    return TargetRuntime(id="local", provider="ollama", model=MODEL, base_url=base_url, api_key=api_key)


def req(stream: bool = False, **body) -> dict:
    body.setdefault("model", "local-alias")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    out = translate_request(target(), body, stream)
    assert mock_ollama.validate(out) is None  # what we send decodes as Ollama's structs
    return out


def refused(**body) -> GatewayError:
    with pytest.raises(GatewayError) as e:
        req(**body)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value


# ---- request translation --------------------------------------------------------------------------------------


def test_plain_request_and_options():
    out = req(messages=[{"role": "system", "content": "Be brief."},
                        {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                        {"role": "user", "content": "Hello", "name": "bob"}],
              temperature=0.5, top_p=0.9, seed=7, presence_penalty=0.1, frequency_penalty=0.2, max_tokens=64,
              stop="###")
    assert out == {"model": MODEL, "stream": False, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "system", "content": "No emoji."},
        {"role": "user", "content": "Hello"}],
        "options": {"temperature": 0.5, "top_p": 0.9, "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2,
                    "num_predict": 64, "stop": ["###"]}}
    # Ollama streams by default: the field is always sent.
    assert req(stream=True)["stream"] is True and req()["stream"] is False
    assert "options" not in req()
    assert req(max_tokens=10, max_completion_tokens=20, stop=["a", "b"])["options"] == {
        "num_predict": 20, "stop": ["a", "b"]}


def test_images():
    out = req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:text/plain,hi%20there"}}]}])
    assert out["messages"] == [{"role": "user", "content": "What is in this?",
                                "images": [PNG, "aGkgdGhlcmU="]}]
    e = refused(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert e.code == "unsupported_parameter" and e.param == "messages[0].content[0].image_url"
    e = refused(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert e.code == "unsupported_parameter" and e.param == "messages[0].content[0]"
    e = refused(messages=[{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert e.param == "messages[0].content[0]"


def test_tool_round_trip():
    out = req(tools=[WEATHER_TOOL, TIME_TOOL], messages=[
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"location": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]}])
    assert out["tools"] == [WEATHER_TOOL, TIME_TOOL]
    assert out["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}},
            {"id": "call_2", "function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "18C", "tool_call_id": "call_1", "tool_name": "get_weather"},
        {"role": "tool", "content": "14:00", "tool_call_id": "call_2", "tool_name": "get_time"}]
    e = refused(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}])
    assert e.param == "messages[0].tool_calls[0].function.arguments"


def test_tool_choice():
    assert "tools" not in req(tools=[WEATHER_TOOL], tool_choice="none")
    assert req(tools=[WEATHER_TOOL], tool_choice="auto")["tools"] == [WEATHER_TOOL]
    assert req(tools=[WEATHER_TOOL], tool_choice="required")["tools"] == [WEATHER_TOOL]
    assert req(tools=[WEATHER_TOOL, TIME_TOOL],
               tool_choice={"type": "function", "function": {"name": "get_time"}})["tools"] == [TIME_TOOL]
    assert refused(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "x"}}).param == \
        "tool_choice"


def test_response_format():
    assert req(response_format={"type": "json_object"})["format"] == "json"
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert req(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})["format"] \
        == schema
    assert "format" not in req(response_format={"type": "text"})
    assert refused(response_format={"type": "json_schema", "json_schema": {}}).param == "response_format"


@pytest.mark.parametrize("body, param", [
    ({"n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"response_format": {"type": "grammar"}}, "response_format"),
])
def test_refused(body, param):
    assert refused(**body).param == param


def test_dropped_fields_are_logged(caplog, monkeypatch):
    monkeypatch.setattr(ir, "_noted", set())
    with caplog.at_level("INFO", logger="fastgw.providers.ollama"):
        out = req(logprobs=False, user="u1", parallel_tool_calls=False, reasoning_effort="low")
    assert not {"logprobs", "user", "parallel_tool_calls", "reasoning_effort"} & set(out)
    assert "logprobs" in caplog.text and "reasoning_effort" in caplog.text  # logprobs: true is refused


def test_build_request():
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = ADAPTER.build_request(target("http://gpu-box:11434/ollama/"), "chat/completions", body, True)
    assert (r.scheme, r.host, r.port, r.method, r.path) == ("http", "gpu-box", 11434, "POST", "/ollama/api/chat")
    headers = dict(r.headers)
    assert headers[b"host"] == b"gpu-box:11434" and headers[b"accept"] == b"application/x-ndjson"
    assert b"authorization" not in headers
    assert orjson.loads(r.body) == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = ADAPTER.build_request(target("https://ollama.example.com", api_key="k1"), "chat/completions", body, False)
    assert dict(r.headers)[b"authorization"] == b"Bearer k1" and r.port == 443
    assert dict(r.headers)[b"accept"] == b"application/json"
    with pytest.raises(GatewayError) as e:
        ADAPTER.build_request(target(), "embeddings", {"model": "x", "input": "a"}, False)
    assert e.value.status == 400 and e.value.code == "unsupported_endpoint"
    assert ADAPTER.is_stream(b"application/x-ndjson") and not ADAPTER.is_stream(b"application/json")


# ---- stream translation ---------------------------------------------------------------------------------------

COMPLETE = ["text", "email_split", "tool_call", "tool_calls_parallel", "length"]
_CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def translate(stream: bytes, pieces: list[bytes] | None = None, include_usage: bool = False) -> list:
    """Feed the pieces; return the OpenAI events (id/created and generated call ids removed), then the error."""
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
        for c in obj["choices"]:
            for tc in c["delta"].get("tool_calls") or ():
                if "id" in tc:
                    assert _CALL_ID.match(tc["id"])
                    tc["id"] = "call_*"
        events.append(obj)
    assert len(ids) <= 1  # one id and created for the whole stream
    return events + ([err] if err is not None else [])


def chunk(delta: dict, finish: str | None = None, usage: bool = False) -> dict:
    c = {"object": "chat.completion.chunk", "model": MODEL,
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage:
        c["usage"] = None
    return c


def test_text_stream_events():
    words = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", "."]
    assert translate(fixture("text.ndjson")) == [chunk({"role": "assistant", "content": ""})] + [
        chunk({"content": w}) for w in words] + [chunk({}, "stop"), "[DONE]"]


def test_usage_chunk():
    events = translate(fixture("email_split.ndjson"), include_usage=True)
    assert all(e["usage"] is None for e in events[:-2])
    assert events[-2] == {"object": "chat.completion.chunk", "model": MODEL,
                          "choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 8, "total_tokens": 39}}
    assert events[-1] == "[DONE]"


def test_tool_stream_events():
    args = json.dumps({"location": "Paris, FR", "format": "celsius"}, separators=(",", ":"))
    assert translate(fixture("tool_call.ndjson")) == [
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_*", "type": "function",
                                                    "function": {"name": "get_weather", "arguments": args}}]}),
        chunk({}, "tool_calls"), "[DONE]"]


def test_parallel_tool_stream_events():
    events = translate(fixture("tool_calls_parallel.ndjson"))
    calls = [e["choices"][0]["delta"]["tool_calls"][0] for e in events[:2]]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])["location"])
            for c in calls] == [(0, "get_weather", "Paris, FR"), (1, "get_weather", "Tokyo, JP")]
    assert events[2:] == [chunk({}, "tool_calls"), "[DONE]"]
    # Calls spread over two lines (and an id when Ollama gives one) come out the same way.
    lines = [b'{"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_abc","function":'
             b'{"name":"a","arguments":{}}}]},"done":false}\n',
             b'{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"b",'
             b'"arguments":{"x":1}}}]},"done":false}\n',
             b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n']
    t = OllamaTranslator(MODEL, {})
    out = b"".join(fed(t, x) for x in lines) + finished(t)
    objs = [orjson.loads(e.data) for e in SSEDecoder().feed(out) if e.data != "[DONE]"]
    assert [o["choices"][0]["delta"]["tool_calls"][0].get("id") for o in objs[:2]][0] == "call_abc"
    assert objs[1]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert objs[1]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "b", "arguments": '{"x":1}'}


def test_thinking_left_out():
    lines = (b'{"message":{"role":"assistant","content":"","thinking":"Let me see."},"done":false}\n'
             b'{"message":{"role":"assistant","content":"42"},"done":false}\n'
             b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n'
             b'{"error":"late"}\n')  # the answer is complete at the done line: what follows is ignored
    assert translate(lines) == [chunk({"role": "assistant", "content": ""}), chunk({"content": "42"}),
                                chunk({}, "stop"), "[DONE]"]


def test_length_finish():
    assert translate(fixture("length.ndjson"))[-2] == chunk({}, "length")


def test_in_stream_error():
    events = translate(fixture("error.ndjson"))
    assert events[:3] == [chunk({"role": "assistant", "content": ""}), chunk({"content": "The"}),
                          chunk({"content": " sky"})]
    err = events[3]
    assert isinstance(err, UpstreamError) and err.code == "ollama_error" and "unexpected EOF" in err.message
    assert len(events) == 4


def test_cut_and_malformed_streams():
    events = translate(fixture("cut.ndjson"))
    assert isinstance(events[-1], UpstreamProtocolError) and "inside a line" in events[-1].message
    assert [e["choices"][0]["delta"].get("content") for e in events[:-1]] == ["", "The", " sky", " is"]
    whole = fixture("text.ndjson")
    err = translate(whole[: whole.rindex(b'{"model"')])[-1]  # clean end, but no done line
    assert isinstance(err, UpstreamProtocolError) and "done" in err.message
    assert isinstance(translate(b"{not json\n")[-1], UpstreamProtocolError)
    assert isinstance(translate(b"[1, 2]\n")[-1], UpstreamProtocolError)
    t = OllamaTranslator(MODEL, {})
    t._dec._max = 64  # a line past the limit is refused, not held
    with pytest.raises(UpstreamProtocolError, match="exceeds max_line_bytes"):
        fed(t, b'{"message":{"content":"' + b"x" * 100)


@pytest.mark.parametrize("name", COMPLETE + ["error", "cut"])
def test_byte_by_byte_equals_whole(name):
    whole = fixture(f"{name}.ndjson")
    expected = translate(whole, include_usage=True)
    got = translate(whole, [whole[i:i + 1] for i in range(len(whole))], include_usage=True)
    if isinstance(expected[-1], Exception):
        assert type(got[-1]) is type(expected[-1]) and got[-1].message == expected[-1].message
        expected, got = expected[:-1], got[:-1]
    assert got == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMPLETE + ["error", "cut"]), st.data())
def test_any_split_equals_whole(name, data):
    whole = fixture(f"{name}.ndjson")
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
    events = translate(fixture(f"{name}.ndjson"), include_usage=True)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])
    calls = [tc["function"] for e in events[:-2] if e["choices"] for tc in e["choices"][0]["delta"].get("tool_calls")
             or ()]
    finish = [e["choices"][0]["finish_reason"] for e in events if e != "[DONE]" and e["choices"]][-1]
    body = json.dumps(mock_ollama.message_of(fixture(f"{name}.ndjson"))).encode()
    status, out = ADAPTER.translate_response(target(), {}, 200, body)
    r = orjson.loads(out)
    assert status == 200 and r["object"] == "chat.completion"
    msg = r["choices"][0]["message"]
    assert (msg["content"] or "") == text and r["choices"][0]["finish_reason"] == finish
    assert [tc["function"] for tc in msg.get("tool_calls") or ()] == calls
    assert r["usage"] == events[-2]["usage"]


# ---- non-streamed answers and errors --------------------------------------------------------------------------


def test_translate_response_text():
    status, body = ADAPTER.translate_response(target(), {}, 200, fixture("chat.json"))
    r = orjson.loads(body)
    assert status == 200 and r["model"] == MODEL and r["id"].startswith("chatcmpl-")
    assert r["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello! How are you today?",
                                                     "refusal": None}, "logprobs": None, "finish_reason": "stop"}]
    assert r["usage"] == {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324}
    status, body = ADAPTER.translate_response(target(), {}, 200, b"<html>")
    assert status == 502 and orjson.loads(body)["error"]["code"] == "upstream_protocol_error"


@pytest.mark.parametrize("status, type_, code", [(400, "invalid_request_error", None),
                                                 (404, "not_found_error", "model_not_found"),
                                                 (429, "rate_limit_error", None), (503, "server_error", None)])
def test_error_envelopes(status, type_, code):
    data = fixture(f"error_{status}.json")
    got_status, body = ADAPTER.translate_response(target(), {}, status, data)
    assert got_status == status
    assert orjson.loads(body) == {"error": {"message": json.loads(data)["error"], "type": type_, "param": None,
                                            "code": code}}


def test_error_without_ollama_body():
    status, body = ADAPTER.translate_response(target(), {}, 502, b"Bad Gateway")
    err = orjson.loads(body)["error"]
    assert status == 502 and err["type"] == "server_error" and "Bad Gateway" in err["message"]


# ---- through the gateway, with the openai SDK -----------------------------------------------------------------
# What every provider does the same way through the gateway is in test_contract.py; here, what is Ollama's
# own: the tool-result turn and images. `mock`, `client`: tests/providers/conftest.py.


def test_sdk_tool_results_back(client, mock):
    r = client.chat.completions.create(model=MODEL, messages=ask("tools"), tools=[WEATHER_TOOL])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    history = ask("tools") + [msg.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "18C, sunny"}]
    history.append({"role": "user", "content": "text"})
    r2 = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL])
    assert r2.choices[0].message.content == "The sky is blue because of Rayleigh scattering."
    sent = mock.last("/api/chat")["body"]["messages"]
    assert sent[2]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": {"location": "Paris, FR", "format": "celsius"}}
    assert sent[3] == {"role": "tool", "content": "18C, sunny", "tool_call_id": msg.tool_calls[0].id,
                       "tool_name": "get_weather"}


def test_sdk_image_data_url(client, mock):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "text"}]}])
    assert r.choices[0].finish_reason == "stop"
    assert mock.last("/api/chat")["body"]["messages"] == [{"role": "user", "content": "text", "images": [PNG]}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert e.value.body["code"] == "unsupported_parameter"
