"""The built-in mock behaves like OpenAI (issue 17), seen through a real gateway with the official `openai` SDK:
it refuses what OpenAI refuses (400, OpenAI's message, `param` and `code`) and answers tool calls
deterministically, streamed as OpenAI streams them (the SDK's stream helper reassembles the same calls the
non-streamed answer holds)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.support.procs import Gateway, start_gateway

MODEL = "mock-1"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["location", "unit", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "strict": True,
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"],
                   "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
ASK_WEATHER = [{"role": "user", "content": "Please use get_weather for Paris."}]
ASK_BOTH = [{"role": "user", "content": "Call get_weather for Rome, then get_time tz: Europe/Rome"}]
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway({"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "m", "provider": "mock", "model": MODEL, "mock": {"chunk_size": 5}}]}},
        tmp_path_factory.mktemp("mock-openai"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[OpenAI]:
    with OpenAI(base_url=gateway.url, api_key="sk-test", max_retries=0, timeout=20) as c:
        yield c


# ---- validation: the 400s OpenAI answers -------------------------------------------------------------

M = [{"role": "user", "content": "hi"}]
#: name -> (endpoint, body without model, param, code, message)
CASES: dict[str, tuple[str, dict, str | None, str | None, str]] = {
    "no messages": ("/chat/completions", {}, "messages", "missing_required_parameter",
                    "Missing required parameter: 'messages'."),
    "messages a string": ("/chat/completions", {"messages": "hi"}, "messages", "invalid_type",
                          "Invalid type for 'messages': expected an array of objects, but got a string instead."),
    "messages empty": ("/chat/completions", {"messages": []}, "messages", "empty_array",
                       "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
                       "array instead."),
    "message not an object": ("/chat/completions", {"messages": ["hi"]}, "messages[0]", "invalid_type",
                              "Invalid type for 'messages[0]': expected an object, but got a string instead."),
    "message without role": ("/chat/completions", {"messages": [{"content": "hi"}]}, "messages[0].role",
                             "missing_required_parameter", "Missing required parameter: 'messages[0].role'."),
    "unknown role": ("/chat/completions", {"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role",
                     "invalid_value", "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', "
                     "'function', 'tool', and 'developer'."),
    "user message without content": ("/chat/completions", {"messages": [{"role": "user"}]}, "messages[0].content",
                                     "missing_required_parameter",
                                     "Missing required parameter: 'messages[0].content'."),
    "content an integer": ("/chat/completions", {"messages": [{"role": "user", "content": 7}]},
                           "messages[0].content", "invalid_type", "Invalid type for 'messages[0].content': expected "
                           "one of a string or array of objects, but got an integer instead."),
    "orphan tool message": ("/chat/completions", {"messages": [*M, {"role": "tool", "tool_call_id": "c",
                                                                   "content": "x"}]},
                            "messages.[1].role", None, "Invalid parameter: messages with role 'tool' must be a "
                            "response to a preceeding message with 'tool_calls'."),
    "unanswered tool call": ("/chat/completions", {"messages": [*M, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, *M]},
        "messages.[1].role", None, "An assistant message with 'tool_calls' must be followed by tool messages "
        "responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: call_1"),
    "max_tokens -1": ("/chat/completions", {"messages": M, "max_tokens": -1}, "max_tokens", "integer_below_min_value",
                      "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got -1 instead."),
    "max_tokens a string": ("/chat/completions", {"messages": M, "max_tokens": "abc"}, "max_tokens", "invalid_type",
                            "Invalid type for 'max_tokens': expected an integer, but got a string instead."),
    "max_completion_tokens 0": ("/chat/completions", {"messages": M, "max_completion_tokens": 0},
                                "max_completion_tokens", "integer_below_min_value",
                                "Invalid 'max_completion_tokens': integer below minimum value. Expected a value >= 1, "
                                "but got 0 instead."),
    "temperature 3": ("/chat/completions", {"messages": M, "temperature": 3}, "temperature",
                      "decimal_above_max_value", "Invalid 'temperature': decimal above maximum value. Expected a "
                      "value <= 2, but got 3.0 instead."),
    "temperature -0.5": ("/chat/completions", {"messages": M, "temperature": -0.5}, "temperature",
                         "decimal_below_min_value", "Invalid 'temperature': decimal below minimum value. Expected a "
                         "value >= 0, but got -0.5 instead."),
    "temperature a string": ("/chat/completions", {"messages": M, "temperature": "hot"}, "temperature",
                             "invalid_type",
                             "Invalid type for 'temperature': expected a decimal, but got a string instead."),
    "top_p 1.5": ("/chat/completions", {"messages": M, "top_p": 1.5}, "top_p", "decimal_above_max_value",
                  "Invalid 'top_p': decimal above maximum value. Expected a value <= 1, but got 1.5 instead."),
    "n 0": ("/chat/completions", {"messages": M, "n": 0}, "n", "integer_below_min_value",
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."),
    "n a decimal": ("/chat/completions", {"messages": M, "n": 1.5}, "n", "invalid_type",
                    "Invalid type for 'n': expected an integer, but got a decimal number instead."),
    "seed a boolean": ("/chat/completions", {"messages": M, "seed": True}, "seed", "invalid_type",
                       "Invalid type for 'seed': expected an integer, but got a boolean instead."),
    "five stop sequences": ("/chat/completions", {"messages": M, "stop": list("abcde")}, "stop",
                            "array_above_max_length", "Invalid 'stop': array too long. Expected an array with maximum "
                            "length 4, but got an array with length 5 instead."),
    "tool_choice required without tools": ("/chat/completions", {"messages": M, "tool_choice": "required"},
                                           "tool_choice", None, "Invalid value for 'tool_choice': 'tool_choice' is "
                                           "only allowed when 'tools' are specified."),
    "parallel_tool_calls without tools": ("/chat/completions", {"messages": M, "parallel_tool_calls": False},
                                          "parallel_tool_calls", None, "Invalid value for 'parallel_tool_calls': "
                                          "'parallel_tool_calls' is only allowed when 'tools' are specified."),
    "tool_choice names an unknown function": (
        "/chat/completions", {"messages": M, "tools": TOOLS, "tool_choice": {"type": "function",
                                                                            "function": {"name": "nope"}}},
        "tool_choice", None,
        "Invalid value for 'tool_choice': no function named 'nope' was specified in the 'tools' parameter."),
    "tool_choice an unknown word": ("/chat/completions", {"messages": M, "tools": TOOLS, "tool_choice": "always"},
                                    "tool_choice", "invalid_value",
                                    "Invalid value: 'always'. Supported values are: 'none', 'auto', and 'required'."),
    "tool_choice an integer": ("/chat/completions", {"messages": M, "tools": TOOLS, "tool_choice": 7}, "tool_choice",
                               "invalid_type", "Invalid type for 'tool_choice': expected one of one of 'none', "
                               "'auto', or 'required' or object, but got an integer instead."),
    "tools a string": ("/chat/completions", {"messages": M, "tools": "none"}, "tools", "invalid_type",
                       "Invalid type for 'tools': expected an array of objects, but got a string instead."),
    "tools empty": ("/chat/completions", {"messages": M, "tools": []}, "tools", "empty_array",
                    "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array "
                    "instead."),
    "a web_search tool": ("/chat/completions", {"messages": M, "tools": [{"type": "web_search"}]}, "tools[0].type",
                          "invalid_value",
                          "Invalid value: 'web_search'. Supported values are: 'function' and 'custom'."),
    "a tool without function": ("/chat/completions", {"messages": M, "tools": [{"type": "function"}]},
                                "tools[0].function", "missing_required_parameter",
                                "Missing required parameter: 'tools[0].function'."),
    "a function without name": ("/chat/completions", {"messages": M, "tools": [
        {"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name",
        "missing_required_parameter", "Missing required parameter: 'tools[0].function.name'."),
    "a function name with a space": ("/chat/completions", {"messages": M, "tools": [
        {"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name", "invalid_value",
        "Invalid 'tools[0].function.name': string does not match pattern. Expected a string that matches the "
        "pattern '^[a-zA-Z0-9_-]+$'."),
    "response_format a string": ("/chat/completions", {"messages": M, "response_format": "json"}, "response_format",
                                 "invalid_type",
                                 "Invalid type for 'response_format': expected an object, but got a string instead."),
    "response_format of an unknown type": ("/chat/completions", {"messages": M, "response_format": {"type": "xml"}},
                                           "response_format.type", "invalid_value", "Invalid value: 'xml'. Supported "
                                           "values are: 'json_object', 'json_schema', and 'text'."),
    "json_object without the word": ("/chat/completions", {"messages": M, "response_format": {"type": "json_object"}},
                                     "messages", None, "'messages' must contain the word 'json' in some form, to use "
                                     "'response_format' of type 'json_object'."),
    "json_schema without json_schema": ("/chat/completions", {"messages": M,
                                                              "response_format": {"type": "json_schema"}},
                                        "response_format.json_schema", "missing_required_parameter",
                                        "Missing required parameter: 'response_format.json_schema'."),
    "json_schema without name": ("/chat/completions", {"messages": M, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}, "response_format.json_schema.name",
        "missing_required_parameter", "Missing required parameter: 'response_format.json_schema.name'."),
    "json_schema without schema": ("/chat/completions", {"messages": M, "response_format": {
        "type": "json_schema", "json_schema": {"name": "answer"}}}, "response_format", "invalid_json_schema",
        "Invalid schema for response_format 'answer': schema must be a JSON Schema of 'type: \"object\"', got "
        "'type: \"None\"'."),
    "stream_options without stream": ("/chat/completions", {"messages": M, "stream_options": {"include_usage": True}},
                                      "stream_options", None,
                                      "The 'stream_options' parameter is only allowed when 'stream' is enabled."),
    "top_logprobs without logprobs": ("/chat/completions", {"messages": M, "top_logprobs": 2}, "top_logprobs", None,
                                      "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled."),
    "user an object": ("/chat/completions", {"messages": M, "user": {"a": 1}}, "user", "invalid_type",
                       "Invalid type for 'user': expected a string, but got an object instead."),
    "completions without prompt": ("/completions", {}, "prompt", "missing_required_parameter",
                                   "Missing required parameter: 'prompt'."),
    "completions max_tokens -1": ("/completions", {"prompt": "hi", "max_tokens": -1}, "max_tokens",
                                  "integer_below_min_value", "Invalid 'max_tokens': integer below minimum value. "
                                  "Expected a value >= 1, but got -1 instead."),
    "embeddings without input": ("/embeddings", {}, "input", "missing_required_parameter",
                                 "Missing required parameter: 'input'."),
    "embeddings of an empty string": ("/embeddings", {"input": ""}, None, None, "'$.input' is invalid. Please check "
                                      "the API reference: https://platform.openai.com/docs/api-reference."),
    "embeddings with an empty string in the list": ("/embeddings", {"input": ["a", ""]}, None, None,
                                                    "'$.input' is invalid. Please check the API reference: "
                                                    "https://platform.openai.com/docs/api-reference."),
    "embeddings of an empty list": ("/embeddings", {"input": []}, None, None,
                                    "Invalid 'input': input cannot be an empty array."),
    "embeddings encoding_format": ("/embeddings", {"input": "a", "encoding_format": "hex"}, "encoding_format",
                                   "invalid_value",
                                   "Invalid value: 'hex'. Supported values are: 'float' and 'base64'."),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_mock_refuses_what_openai_refuses(client: OpenAI, name: str) -> None:
    path, body, param, code, message = CASES[name]
    with pytest.raises(openai.BadRequestError) as info:
        client.post(path, body={"model": MODEL, **body}, cast_to=object)
    err = info.value
    assert err.status_code == 400
    assert (err.param, err.code) == (param, code)
    assert isinstance(err.body, dict) and err.body["message"] == message
    assert err.body["type"] == "invalid_request_error"
    # A request the upstream found invalid is not worth retrying: the SDK is told so.
    assert err.response.headers.get("x-should-retry") == "false"


def test_a_streamed_request_is_refused_before_the_stream(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=M, stream=True, max_tokens=-1)
    assert (info.value.param, info.value.code) == ("max_tokens", "integer_below_min_value")


def test_the_sdk_s_own_calls_are_refused_the_same_way(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages="hi")  # type: ignore[arg-type]
    assert (info.value.param, info.value.code) == ("messages", "invalid_type")
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="")
    assert info.value.message.endswith("'$.input' is invalid. Please check the API reference: "
                                       "https://platform.openai.com/docs/api-reference.")


def test_a_missing_model_is_refused_by_the_gateway(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/completions", body={"prompt": "hi"}, cast_to=object)
    assert info.value.param == "model" and "you must provide a model parameter" in info.value.message


def test_valid_requests_still_pass(client: OpenAI) -> None:
    """What OpenAI takes, the mock takes: every checked parameter at a legal value, null optionals, custom tools,
    unknown parameters, a full tool conversation, json_object with the word json."""
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "developer", "content": "Answer in JSON."},
                               {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_tokens=3, max_completion_tokens=3, temperature=2, top_p=0, n=2, seed=1, stop=["x"], logprobs=True,
        top_logprobs=0, frequency_penalty=-2, presence_penalty=2, user="u", response_format={"type": "json_object"},
        tools=[WEATHER, {"type": "custom", "custom": {"name": "grammar"}}], tool_choice="auto",
        parallel_tool_calls=True, extra_body={"unknown_parameter": 1, "metadata": None})
    assert [c.finish_reason for c in resp.choices] == ["length", "length"]
    emb = client.embeddings.create(model=MODEL, input=["a", "b"], dimensions=4, encoding_format="float")
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 4
    text = client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert text.choices[0].finish_reason == "length"


# ---- tool calls ---------------------------------------------------------------------------------------


def _calls(message: Any) -> list[tuple[str, str, dict]]:
    return [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_a_tool_named_by_the_user_is_called(client: OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.role == "assistant"
    [(cid, name, args)] = _calls(choice.message)
    assert cid.startswith("call_") and len(cid) == 29
    assert name == "get_weather"
    # Required properties filled from the schema: the subject from the message, enum's first value, the minimum.
    assert args == {"location": "Paris", "unit": "celsius", "days": 1}
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    again = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS)
    assert _calls(again.choices[0].message) == _calls(choice.message)  # deterministic, ids included


def test_without_a_named_tool_the_mock_answers_text(client: OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.tool_calls is None
    assert "mock model" in (resp.choices[0].message.content or "")


def test_parallel_calls_and_their_opt_out(client: OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=ASK_BOTH, tools=TOOLS)
    calls = _calls(resp.choices[0].message)
    assert [(n, a) for _, n, a in calls] == [("get_weather", {"location": "Rome", "unit": "celsius", "days": 1}),
                                              ("get_time", {"tz": "Europe/Rome"})]
    assert len({c for c, _, _ in calls}) == 2
    one = client.chat.completions.create(model=MODEL, messages=ASK_BOTH, tools=TOOLS, parallel_tool_calls=False)
    assert [n for _, n, _ in _calls(one.choices[0].message)] == ["get_weather"]


def test_tool_choice_required_named_and_none(client: OpenAI) -> None:
    required = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls"
    # Nothing named: the first function in `tools`, its string argument the message's first clause.
    assert [(n, a) for _, n, a in _calls(required.choices[0].message)] == [
        ("get_weather", {"location": "hello", "unit": "celsius", "days": 1})]
    named = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [n for _, n, _ in _calls(named.choices[0].message)] == ["get_time"]
    none = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none")
    assert none.choices[0].finish_reason == "stop" and none.choices[0].message.tool_calls is None


def test_the_tool_round_trip_ends_in_text_that_reports_the_result(client: OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=ASK_BOTH, tools=TOOLS)
    msg = first.choices[0].message
    results = {"get_weather": '{"temperature": 21, "sky": "clear"}', "get_time": "14:05"}
    history: list[Any] = [*ASK_BOTH, msg.model_dump(exclude_none=True)]
    history += [{"role": "tool", "tool_call_id": c.id, "content": results[c.function.name]}
                for c in msg.tool_calls or []]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    choice = final.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content == ('The tool get_weather returned: {"temperature": 21, "sky": "clear"}. '
                                      "The tool get_time returned: 14:05.")
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, stream=True) if c.choices)
    assert streamed == choice.message.content


def test_streamed_calls_reassemble_into_the_whole_answer(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=ASK_BOTH, tools=TOOLS)
    with client.chat.completions.stream(model=MODEL, messages=ASK_BOTH, tools=TOOLS,
                                        stream_options={"include_usage": True}) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert _calls(final.choices[0].message) == _calls(whole.choices[0].message)
    assert final.choices[0].finish_reason == "tool_calls"
    # The helper parsed each strict call's arguments as they completed, in order.
    assert [(e.name, e.parsed_arguments) for e in done] == [(n, a) for _, n, a in _calls(whole.choices[0].message)]
    assert final.usage is not None and whole.usage is not None
    assert final.usage.completion_tokens == whole.usage.completion_tokens


def test_the_stream_has_openai_s_tool_call_shape(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK_BOTH, tools=TOOLS, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0] for c in chunks if c.choices]
    first = deltas[0].delta
    assert first.role == "assistant" and first.content is None and first.tool_calls is not None
    [head] = first.tool_calls
    assert (head.index, head.type, head.function and head.function.name, head.function and head.function.arguments) \
        == (0, "function", "get_weather", "")
    assert head.id and head.id.startswith("call_")
    opened = [d.delta.tool_calls[0] for d in deltas if d.delta.tool_calls and d.delta.tool_calls[0].id]
    assert [(t.index, t.function and t.function.name) for t in opened] == [(0, "get_weather"), (1, "get_time")]
    fragments = [d.delta.tool_calls[0] for d in deltas if d.delta.tool_calls and not d.delta.tool_calls[0].id]
    assert fragments and all(f.function and f.function.arguments and len(f.function.arguments) <= 5
                             and f.id is None and f.type is None for f in fragments)  # chunk_size 5
    assert [d.finish_reason for d in deltas].count("tool_calls") == 1 and deltas[-1].finish_reason == "tool_calls"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(fragments)
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(c)
    whole = client.chat.completions.create(model=MODEL, messages=ASK_BOTH, tools=TOOLS)
    assert _calls(state.get_final_completion().choices[0].message) == _calls(whole.choices[0].message)


def test_max_tokens_cuts_the_arguments(client: OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, max_tokens=2)
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    [call] = choice.message.tool_calls or []
    assert call.function.arguments == '{"location":"Paris"'[:10]
    assert resp.usage is not None and resp.usage.completion_tokens == 2


def test_each_choice_gets_its_own_call_ids(client: OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, n=2)
    a, b = (_calls(c.message) for c in sorted(resp.choices, key=lambda c: c.index))
    assert [x[1:] for x in a] == [x[1:] for x in b] and a[0][0] != b[0][0]
    state = ChatCompletionStreamState()
    for c in client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=TOOLS, n=2, stream=True):
        state.handle_chunk(c)
    streamed = sorted(state.get_final_completion().choices, key=lambda c: c.index)
    assert [_calls(c.message) for c in streamed] == [a, b]


def test_pacing_applies_to_tool_calls(tmp_path: Path) -> None:
    """The mock's options keep working with tool calls: `delay` paces the fragments like text chunks."""
    gw = start_gateway({"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "m", "provider": "mock", "model": MODEL, "mock": {"chunk_size": 50, "delay": 0.05}}]}}, tmp_path)
    try:
        with OpenAI(base_url=gw.url, api_key="sk-test", max_retries=0, timeout=20) as c:
            t0 = time.monotonic()
            chunks = list(c.chat.completions.create(model=MODEL, messages=ASK_BOTH, tools=TOOLS, stream=True))
            took = time.monotonic() - t0
        # chunk_size 50: each call's arguments fit in one fragment (head + fragment per call, then the finish).
        assert len(chunks) == 5
        assert took >= 0.05 * (len(chunks) - 1)  # a lower bound only: the pacing happened
    finally:
        gw.stop()
