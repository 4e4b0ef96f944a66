"""The fronts without sockets: Responses and Messages requests as chat requests (and the 400s for what cannot be),
whole chat answers as Responses/Messages bodies, chat streams as their events (checked with the SDKs' own types,
`sequence_number` from 0 and +1), and `FrontSource` under any split of the upstream's bytes."""

from __future__ import annotations

import asyncio

import anthropic.types as at
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from fastgw.api.errors import GatewayError, UpstreamError, anthropic_type
from fastgw.front import FrontSource, front_for
from fastgw.front.messages import MessagesFront, anthropic_error
from fastgw.front.responses import ResponsesFront
from fastgw.proto.sse import SSEDecoder

RESPONSES_EVENT = TypeAdapter(ResponseStreamEvent)
MESSAGES_EVENT = TypeAdapter(at.RawMessageStreamEvent)
WEATHER = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None, choices: bool = True
          ) -> dict:
    c: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up-model",
               "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []}
    if usage is not None:
        c["usage"] = usage
    return c


USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 3}}
TEXT_STREAM = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}), chunk({"content": " world"}),
               chunk(finish="stop"), chunk(usage=USAGE, choices=False)]
TOOL_STREAM = [chunk({"role": "assistant", "content": "Let me check."}),
               chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": ""}}]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
               chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                      "function": {"name": "get_time", "arguments": "{}"}}]}),
               chunk(finish="tool_calls"), chunk(usage=USAGE, choices=False)]


def sse_events(data: bytes) -> list[dict]:
    """The JSON objects of an SSE body, each checked to name its type in its `event` field."""
    out = []
    for ev in SSEDecoder().feed(data):
        obj = orjson.loads(ev.data)
        assert ev.event == obj["type"]
        out.append(obj)
    return out


def responses_stream(chunks: list[dict], body: dict | None = None) -> list[dict]:
    w = ResponsesFront(body or {"model": "m", "input": "hi"}).writer(0)
    events = sse_events(w.feed(chunks) + w.end())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for e in events:
        RESPONSES_EVENT.validate_python(e)
    return events


def messages_stream(chunks: list[dict], estimate: int = 5) -> list[dict]:
    w = MessagesFront({"model": "m", "max_tokens": 10, "messages": []}).writer(estimate)
    events = sse_events(w.feed(chunks) + w.end())
    for e in events:
        if e["type"] != "ping":  # Anthropic's keep-alive, which the SDK skips (no type of its own)
            MESSAGES_EVENT.validate_python(e)
    return events


# ---- requests ------------------------------------------------------------------------------------------------


def test_responses_request_as_chat():
    body = {"model": "m", "instructions": "Be brief.", "stream": True, "max_output_tokens": 50, "temperature": 0.2,
            "top_p": 0.9, "parallel_tool_calls": False, "user": "u1", "store": False, "include": [],
            "reasoning": {"effort": "low"}, "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}},
            "tools": [{"type": "function", "name": "get_weather", "description": "Weather.", "parameters": WEATHER,
                       "strict": True}],
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                                   {"type": "input_image", "image_url": "https://x/y.png",
                                                    "detail": "low"}]},
                      {"type": "reasoning", "id": "rs_1", "summary": []},
                      {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure."}]},
                      {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                       "arguments": '{"location":"Paris"}'},
                      {"type": "function_call_output", "call_id": "call_1", "output": "22C"},
                      {"role": "developer", "content": "Answer in French."}]}
    assert ResponsesFront(body).chat_request() == {
        "model": "m", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 50,
        "temperature": 0.2, "top_p": 0.9, "parallel_tool_calls": False, "user": "u1", "reasoning_effort": "low",
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                                    "parameters": WEATHER, "strict": True}}],
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                                  {"type": "image_url", "image_url": {"url": "https://x/y.png",
                                                                                      "detail": "low"}}]},
                     {"role": "assistant", "content": "Sure.", "tool_calls": [
                         {"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
                     {"role": "developer", "content": "Answer in French."}]}


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"max_tool_calls": 2}, "max_tool_calls"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0]"),
    ({"input": 3}, "input"),
    ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
    ({"text": {"format": "json"}}, "text.format"),
    ({"reasoning": "high"}, "reasoning"),
])
def test_responses_refusals_name_the_parameter(extra, param):
    with pytest.raises(GatewayError) as e:
        ResponsesFront({"model": "m", "input": "hi", **extra}).chat_request()
    assert (e.value.status, e.value.type, e.value.param) == (400, "invalid_request_error", param)


def test_responses_tolerates_what_changes_nothing():
    body = {"model": "m", "input": "hi", "store": False, "background": False, "previous_response_id": None,
            "truncation": "auto", "metadata": {"a": "b"}, "include": ["message.output_text.logprobs"]}
    assert ResponsesFront(body).chat_request() == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_messages_request_as_chat():
    body = {"model": "m", "max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["###"], "temperature": 0.5, "top_k": 5, "metadata": {"user_id": "u1"},
            "stream": True, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "get_weather", "description": "Weather.", "input_schema": WEATHER}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                             {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                          "data": "iVBO"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                                  {"type": "text", "text": "Checking."},
                                                  {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                   "input": {"location": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "content": [{"type": "text", "text": "22C"}]},
                                             {"type": "text", "text": "And tomorrow?"}]}]}
    assert MessagesFront(body).chat_request() == {
        "model": "m", "max_tokens": 64, "stop": ["###"], "temperature": 0.5, "user": "u1", "stream": True,
        "stream_options": {"include_usage": True}, "tool_choice": "required", "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                                    "description": "Weather."}}],
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                                  {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                             "iVBO"}}]},
                     {"role": "assistant", "content": "Checking.", "tool_calls": [
                         {"id": "toolu_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
                     {"role": "tool", "tool_call_id": "toolu_1", "content": "22C"},
                     {"role": "user", "content": "And tomorrow?"}]}


@pytest.mark.parametrize("extra, param", [
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"container": "c1"}, "container"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
])
def test_messages_refusals_name_the_parameter(extra, param):
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(GatewayError) as e:
        MessagesFront(body).chat_request()
    assert (e.value.status, e.value.param) == (400, param)


def test_native_targets_get_no_front():
    body = {"model": "m"}
    assert front_for("responses", "openai", body) is None and front_for("responses", "azure", body) is None
    assert front_for("messages", "anthropic", body) is None
    assert front_for("chat/completions", "gemini", body) is None
    assert isinstance(front_for("responses", "anthropic", body), ResponsesFront)
    assert isinstance(front_for("messages", "vllm", body), MessagesFront)
    assert isinstance(front_for("messages", "mock", body), MessagesFront)


# ---- whole answers -----------------------------------------------------------------------------------------------

COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-model", "usage": USAGE,
              "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                  "role": "assistant", "content": "Let me check.", "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]}}]}


def test_whole_answer_as_a_response():
    r = Response.model_validate(orjson.loads(ResponsesFront({"model": "m", "input": "hi"}).whole(
        orjson.dumps(COMPLETION))))
    assert r.status == "completed" and r.model == "up-model" and r.output_text == "Let me check."
    call = r.output[1]
    assert (call.type, call.call_id, call.name, call.arguments) == ("function_call", "call_1", "get_weather",
                                                                    '{"location":"Paris"}')
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens,
            r.usage.input_tokens_details.cached_tokens) == (11, 7, 18, 3)
    cut = {**COMPLETION, "choices": [{"index": 0, "finish_reason": "length",
                                      "message": {"role": "assistant", "content": "Once upon"}}]}
    r = Response.model_validate(orjson.loads(ResponsesFront({"model": "m", "input": "hi"}).whole(orjson.dumps(cut))))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


def test_response_echoes_tools_with_every_field_the_spec_requires():
    # issue 17 (conformance, mock/responses-tools): the request's tool was echoed as given, without `strict`
    tools = [{"type": "function", "name": "get_time"},
             {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True, "description": "d"}]
    body = {"model": "m", "input": "hi", "tools": tools}
    echoed = orjson.loads(ResponsesFront(body).whole(orjson.dumps(COMPLETION)))["tools"]
    assert echoed == [
        {"type": "function", "name": "get_time", "description": None, "parameters": None, "strict": False},
        {"type": "function", "name": "get_weather", "description": "d", "parameters": WEATHER, "strict": True}]
    assert responses_stream(TEXT_STREAM, body)[0]["response"]["tools"] == echoed


def test_whole_answer_as_a_message():
    m = at.Message.model_validate(orjson.loads(MessagesFront({"model": "m", "max_tokens": 9, "messages": []}).whole(
        orjson.dumps(COMPLETION))))
    assert m.stop_reason == "tool_use" and m.content[0].text == "Let me check."
    assert (m.content[1].id, m.content[1].name, m.content[1].input) == ("call_1", "get_weather", {"location": "Paris"})
    assert (m.usage.input_tokens, m.usage.output_tokens, m.usage.cache_read_input_tokens) == (11, 7, 3)


def test_upstream_error_body_in_anthropic_envelope():
    body = MessagesFront({"model": "m"}).error_body(429, b'{"error":{"message":"slow down","type":"x"}}')
    assert orjson.loads(body) == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    own = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert anthropic_error(529, own) == own  # Anthropic's own, as it came
    assert orjson.loads(anthropic_error(502, b"<html>bad gateway</html>")) == {"type": "error", "error": {
        "type": "api_error", "message": "upstream answered HTTP 502"}}
    assert [anthropic_type(s) for s in (400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504, 529)] == [
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "invalid_request_error", "request_too_large", "invalid_request_error", "rate_limit_error", "api_error",
        "api_error", "overloaded_error", "api_error", "overloaded_error"]


# ---- streams -----------------------------------------------------------------------------------------------------


def test_text_stream_as_responses_events():
    events = responses_stream(TEXT_STREAM)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["model"] == "up-model"
    assert done["output"][0]["content"][0]["text"] == "Hello world" == events[6]["text"]
    assert done["usage"]["input_tokens"] == 11 and done["usage"]["output_tokens"] == 7


def test_tool_stream_as_responses_events():
    events = responses_stream(TOOL_STREAM)
    kinds = [e["type"] for e in events]
    assert kinds.count("response.function_call_arguments.delta") == 3
    calls = [e["item"] for e in events if e["type"] == "response.output_item.done"
             and e["item"]["type"] == "function_call"]
    assert [(c["call_id"], c["name"], c["arguments"]) for c in calls] == [
        ("call_1", "get_weather", '{"location":"Paris"}'), ("call_2", "get_time", "{}")]
    final = Response.model_validate(events[-1]["response"])
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]


def test_length_stream_is_incomplete():
    events = responses_stream([chunk({"content": "Once"}), chunk(finish="length")])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    events = messages_stream([chunk({"content": "Once"}), chunk(finish="length")])
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


def test_streams_as_messages_events():
    events = messages_stream(TEXT_STREAM, estimate=9)
    assert [e["type"] for e in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                           "content_block_delta", "content_block_stop", "message_delta",
                                           "message_stop"]
    assert events[0]["message"]["usage"] == {"input_tokens": 9, "output_tokens": 0}  # the estimate, at first
    assert events[-2]["usage"] == {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 3}
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    events = messages_stream(TOOL_STREAM)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    assert [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
            and e["delta"]["type"] == "input_json_delta"] == ['{"location":', '"Paris"}', "{}"]
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1, 2]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


# ---- FrontSource -------------------------------------------------------------------------------------------------


class Conn:
    def __init__(self) -> None:
        self.sink = None
        self.detached = False

    def set_sink(self, sink) -> None:
        self.sink = sink

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def detach(self) -> None:
        self.detached = True


class Relay:
    def __init__(self) -> None:
        self.done = asyncio.get_event_loop_policy().new_event_loop().create_future()
        self.data = b""
        self.ended = False
        self.error: BaseException | None = None

    def on_data(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None: ...

    def on_end(self) -> None:
        self.ended = True

    def on_error(self, exc: BaseException) -> None:
        self.error = exc


def run_source(pieces: list[bytes], front=None) -> tuple[Relay, Conn]:
    conn, relay = Conn(), Relay()
    src = FrontSource(conn, None, (front or ResponsesFront({"model": "m", "input": "hi"})).writer(0))
    src.set_sink(relay)
    for p in pieces:
        src.on_data(p)
        src.flush()
    src.on_end()
    return relay, conn


CHAT_SSE = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in TOOL_STREAM) + b"data: [DONE]\n\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(CHAT_SSE) - 1), max_size=8, unique=True))
def test_source_any_split_same_events(cuts):
    """The chat SSE body cut anywhere gives the same events (ids and times aside)."""
    cuts = sorted(cuts)
    pieces = [CHAT_SSE[a:b] for a, b in zip([0, *cuts], [*cuts, len(CHAT_SSE)])]
    relay, _ = run_source(pieces)
    whole, _ = run_source([CHAT_SSE])

    def shape(data: bytes) -> list:
        return [(e["type"], e["sequence_number"], e.get("delta"), e.get("arguments")) for e in sse_events(data)]
    assert relay.ended and relay.error is None
    assert shape(relay.data) == shape(whole.data)
    assert shape(relay.data)[-1][0] == "response.completed"


def test_source_error_before_any_event_is_the_relays():
    relay, conn = run_source([b'data: {"error": {"message": "overloaded"}}\n\n'])
    assert isinstance(relay.error, UpstreamError) and "overloaded" in relay.error.message
    assert relay.data == b"" and conn.detached  # nothing sent: the attempt may fall back


def test_source_error_after_text_fails_the_response_first():
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in TEXT_STREAM[:2])
    relay, conn = run_source([body + b'data: {"error": {"message": "overloaded"}}\n\n'])
    events = sse_events(relay.data)
    assert [e["type"] for e in events][-1] == "response.failed" and isinstance(relay.error, UpstreamError)
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": relay.error.message}
    for e in events:
        RESPONSES_EVENT.validate_python(e)


def test_source_stream_ending_unfinished_is_an_error():
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in TEXT_STREAM[:2])
    relay, _ = run_source([body])  # no finish_reason, no [DONE]: cut short
    assert isinstance(relay.error, GatewayError) and not relay.ended
    relay, _ = run_source([body + b"data: [DONE]\n\n"])
    assert relay.ended and relay.error is None
