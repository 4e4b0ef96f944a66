"""The contract every translated provider keeps, checked with the real `openai` SDK through the gateway in front of
each provider's wire-format mock (`tests/support/mock_*.py`): text streamed and not, tool calls streamed and not
(one and parallel), usage with `stream_options.include_usage`, finish reasons, upstream HTTP errors relayed with
their status and SDK exception, an error in the stream after some text, a cut stream, a refused parameter
(400 `unsupported_parameter`), the client's key never forwarded and the target's key used, and pii-detector
redacting an address split across upstream events.

What differs between providers (the scenario that makes each mock answer so, the recorded texts, ids, usage,
error codes, the request the mock saw) is in CONTRACTS, one row per provider. What each provider does on its own
wire (request translation, the recorded streams under any split, its error mapping) is in its own test file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from tests.providers.stack import CLIENT_KEY, PROVIDERS, SPECS, ask, finishes, last, raw_post, stream_text
from tests.support import mock_bedrock

ANY: Any = object()  # "not part of this provider's contract row"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["location"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}


@dataclass(frozen=True)
class Call:
    id: str  # a regular expression the whole id matches
    name: str
    args: dict


@dataclass(frozen=True)
class Finish:
    scenario: str
    finish: str
    kwargs: dict = field(default_factory=dict)
    content: Any = ANY


@dataclass(frozen=True)
class HttpError:
    scenario: str
    exc: type[openai.APIStatusError]
    status: int
    attrs: dict = field(default_factory=dict)  # dotted path on the exception -> value
    needle: str = ""  # in the message


@dataclass(frozen=True)
class InStream:
    scenario: str
    text: str  # what reached the client before the failure
    needle: str  # in the error's message (its body, with `in_body`)
    not_streamed_is_5xx: bool = False  # the same scenario, not streamed: the SDK's InternalServerError
    in_body: bool = False


@dataclass(frozen=True)
class Contract:
    # text, not streamed: what is asked, what comes back, what the mock saw (dotted path -> value), the keys
    text_kwargs: dict
    text: str
    model: str
    usage: tuple[int, int, int]
    sent: dict
    key_prefix: dict = field(default_factory=dict)  # header -> how its value starts
    # text, streamed (the same text when `stream_text` is ANY)
    stream: str = "text"
    stream_text: Any = ANY
    stream_usage: dict = field(default_factory=dict)  # dotted path on the usage chunk's usage -> value
    stream_sent: dict = field(default_factory=dict)
    # one tool call, forced with tool_choice="required"
    tool: str = "tools"
    tool_content: Any = ANY
    tool_call: Call | None = None
    tool_sent: dict = field(default_factory=dict)
    # parallel tool calls
    parallel: str = "parallel"
    parallel_tools: tuple = (WEATHER_TOOL,)
    parallel_content: Any = ANY
    parallel_calls: tuple[Call, ...] = ()
    finishes: tuple[Finish, ...] = ()
    errors: tuple[HttpError, ...] = ()
    refused: tuple[dict, str] = ({"n": 2}, "n")
    in_stream: tuple[InStream, ...] = ()
    cut: str = "cut"
    cut_text: Any = ANY  # what reached the client before a cut stream broke
    pii: tuple[str, str, tuple[bytes, ...]] = ("email", "", ())  # scenario, redacted text, pieces never sent


def _key(provider: str) -> str:
    return next(v for k, v in SPECS[provider].env.items() if k.startswith("FASTGW_TEST_"))


BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
BEDROCK_PATH = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0"
GEMINI_PATH = "/v1beta/models/gemini-2.5-flash"
SKY = "The sky is blue because of Rayleigh scattering."

CONTRACTS = {
    "anthropic": Contract(
        text_kwargs={"messages": ask("text"), "max_tokens": 64},
        text="Hello! How can I help you today?", model="claude-sonnet-4-5-20250929", usage=(25, 15, 40),
        sent={"path": "/v1/messages", "headers.x-api-key": _key("anthropic"),
              "headers.anthropic-version": "2023-06-01", "headers.authorization": None,
              "body": {"model": "claude-sonnet-4-5", "max_tokens": 64, "system": "Be brief.",
                       "messages": [{"role": "user", "content": "text"}]}},
        stream="email", stream_text="Sure, write to alice.smith@example.com for help.",
        stream_usage={"prompt_tokens": 43, "completion_tokens": 14, "prompt_tokens_details.cached_tokens": 12},
        stream_sent={"body.stream": True},
        tool_content="Okay, let's check the weather for San Francisco, CA:",
        tool_call=Call("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather",
                       {"location": "San Francisco, CA", "unit": "fahrenheit"}),
        tool_sent={"body.tool_choice": {"type": "any"}},
        parallel_tools=(WEATHER_TOOL, TIME_TOOL),
        parallel_calls=(Call("toolu_01A09q90qw90lq917835lq9", "get_weather", {"location": "Paris"}),
                        Call("toolu_01B19r91rx91mr918936mr8", "get_time", {"timezone": "Europe/Paris"})),
        finishes=(Finish("max_tokens", "length"), Finish("stop_sequence", "stop"),
                  Finish("refusal", "content_filter")),
        errors=(HttpError("http-429", openai.RateLimitError, 429, {"body.type": "rate_limit_error"}, "rate limit"),
                HttpError("http-400", openai.BadRequestError, 400, {}, "text content blocks must be non-empty"),
                HttpError("http-529", openai.InternalServerError, 529, {"body.code": "overloaded_error"})),
        in_stream=(InStream("error", "Partial answer", "Overloaded", True),),
        pii=("email", "Sure, write to [REDACTED:EMAIL] for help.", (b"alice", b"ith@exam", b"example.com"))),
    "cohere": Contract(
        text_kwargs={"model": "command-a", "messages": ask("text"), "max_tokens": 64, "top_p": 1},
        text=SKY, model="command-a-03-2025", usage=(5, 9, 14),
        sent={"path": "/v2/chat", "headers.authorization": f"Bearer {_key('cohere')}",
              "body": {"model": "command-a-03-2025", "messages": [{"role": "system", "content": "Be brief."},
                                                                  {"role": "user", "content": "text"}],
                       "stream": False, "p": 0.99, "max_tokens": 64}},
        stream_usage={"prompt_tokens": 5, "completion_tokens": 9}, stream_sent={"body.stream": True},
        tool_content="I will look up the weather in Paris.",
        tool_call=Call("get_weather_1byjy32y4hvq", "get_weather", {"location": "Paris, FR"}),
        tool_sent={"body.tool_choice": "REQUIRED"},
        parallel_content="I will look up both cities.",
        parallel_calls=(Call("get_weather_k88p0m8504w5", "get_weather", {"location": "Paris, FR"}),
                        Call("get_weather_wj1m2v6q8d3c", "get_weather", {"location": "Tokyo, JP"})),
        finishes=(Finish("max_tokens", "length"), Finish("stop_sequence", "stop")),
        errors=(HttpError("http-429", openai.RateLimitError, 429, {"body.type": "rate_limit_error"}, "Trial key"),
                HttpError("http-400", openai.BadRequestError, 400, {}, "at least 1 token long"),
                HttpError("http-500", openai.InternalServerError, 500)),
        in_stream=(InStream("error", "The sky", "internal server error", True),),
        pii=("email", "Sure, write to [REDACTED:EMAIL] any time.", (b"john", b"e@example", b"example.com"))),
    "ollama": Contract(
        text_kwargs={"model": "local-llama", "messages": ask("text"), "max_tokens": 64, "temperature": 0.2},
        text=SKY, model="llama3.2", usage=(26, 9, 35),
        sent={"path": "/api/chat", "headers.authorization": f"Bearer {_key('ollama')}",
              "body": {"model": "llama3.2", "messages": [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "text"}],
                       "stream": False, "options": {"temperature": 0.2, "num_predict": 64}}},
        stream_usage={"prompt_tokens": 26, "completion_tokens": 9}, stream_sent={"body.stream": True},
        tool_content=None,  # Ollama cannot force a call: "required" is sent as auto
        tool_call=Call("call_.*", "get_weather", {"location": "Paris, FR", "format": "celsius"}),
        parallel_calls=(Call("call_.*", "get_weather", {"location": "Paris, FR", "format": "celsius"}),
                        Call("call_.*", "get_weather", {"location": "Tokyo, JP", "format": "celsius"})),
        finishes=(Finish("length", "length", {"max_tokens": 4}, "Once upon a time"),),
        errors=(HttpError("http-429", openai.RateLimitError, 429, {}, "hourly usage limit"),
                HttpError("http-400", openai.BadRequestError, 400, {}, "cannot unmarshal"),
                HttpError("http-404", openai.NotFoundError, 404, {"body.code": "model_not_found"},
                          "try pulling it first"),
                HttpError("http-503", openai.InternalServerError, 503)),
        in_stream=(InStream("error", "The sky", "unexpected EOF", True),),
        pii=("email", "Sure, write to [REDACTED:EMAIL] any time.", (b"john", b"e@example", b"example.com"))),
    "gemini": Contract(
        text_kwargs={"messages": ask("fixture:text", "Be nice."), "temperature": 0.5, "max_tokens": 50},
        text="Hello there! How can I help you today?", model="gemini-2.5-flash", usage=(9, 9, 18),
        sent={"path": f"{GEMINI_PATH}:generateContent", "headers.x-goog-api-key": _key("gemini"),
              "headers.authorization": None,
              "body.systemInstruction": {"parts": [{"text": "Be nice."}]},
              "body.generationConfig": {"temperature": 0.5, "maxOutputTokens": 50}},
        stream="fixture:text", stream_usage={"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
        stream_sent={"path": f"{GEMINI_PATH}:streamGenerateContent", "query": "alt=sse",
                     "headers.x-goog-api-key": _key("gemini"), "headers.authorization": None},
        tool="fixture:tool_call", tool_call=Call(".+", "get_weather", {"location": "Paris", "unit": "celsius"}),
        tool_sent={"body.toolConfig.functionCallingConfig.mode": "ANY"},
        parallel="fixture:parallel_tools",
        parallel_calls=(Call(".+", "get_weather", {"location": "Paris"}),
                        Call(".+", "get_weather", {"location": "London"})),
        finishes=(Finish("fixture:text", "stop"), Finish("fixture:max_tokens", "length"),
                  Finish("fixture:safety", "content_filter"), Finish("fixture:recitation", "content_filter"),
                  Finish("fixture:prompt_blocked", "content_filter")),
        errors=(HttpError("http:429", openai.RateLimitError, 429, {"code": "RESOURCE_EXHAUSTED"}, "quota"),
                HttpError("http:400", openai.BadRequestError, 400, {"code": "INVALID_ARGUMENT"}, "temperature"),
                HttpError("http:503", openai.InternalServerError, 503, {"code": "UNAVAILABLE"}, "overloaded")),
        refused=({"tools": [{"type": "custom", "custom": {"name": "t"}}]}, "tools[0]"),
        in_stream=(InStream("fixture:error_midstream", "Starting the answer", "overloaded"),),
        cut_text="Hello",
        pii=("fixture:email_split", "Sure, write to [REDACTED:EMAIL] and I will reply.", (b"jane", b"example.com"))),
    "bedrock": Contract(
        text_kwargs={"messages": ask("text"), "max_tokens": 50, "temperature": 0.1},
        text="".join(mock_bedrock.TEXT), model=BEDROCK_MODEL, usage=(13, 18, 31),
        sent={"path": f"{BEDROCK_PATH}/converse", "model": BEDROCK_MODEL,
              "headers.x-amz-security-token": mock_bedrock.SESSION_TOKEN,
              "body": {"messages": [{"role": "user", "content": [{"text": "text"}]}],
                       "system": [{"text": "Be brief."}], "inferenceConfig": {"maxTokens": 50, "temperature": 0.1}}},
        key_prefix={"authorization": f"AWS4-HMAC-SHA256 Credential={mock_bedrock.ACCESS_KEY}/"},
        stream_usage={"prompt_tokens": 13}, stream_sent={"path": f"{BEDROCK_PATH}/converse-stream"},
        tool="tool", tool_content="Let me check the weather.",
        tool_call=Call(mock_bedrock.WEATHER[0], "get_weather", {"location": "Seattle, WA", "unit": "c"}),
        tool_sent={"body.toolConfig.toolChoice": {"any": {}}},
        parallel="tools2", parallel_tools=(WEATHER_TOOL, TIME_TOOL),
        parallel_calls=(Call(mock_bedrock.WEATHER[0], "get_weather", {"location": "Seattle, WA", "unit": "c"}),
                        Call(mock_bedrock.TIME[0], "get_time", {"timezone": "America/Los_Angeles"})),
        finishes=tuple(Finish(f"finish:{reason}", finish) for reason, finish in (
            ("max_tokens", "length"), ("stop_sequence", "stop"), ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"), ("end_turn", "stop"))),
        errors=(HttpError("error429", openai.RateLimitError, 429, {"code": "ThrottlingException"}, "Too many requests"),
                HttpError("error400", openai.BadRequestError, 400, {"code": "ValidationException"}),
                # the operator's credentials refused: 502 upstream_auth_error, never relayed as the client's 403
                HttpError("error403", openai.InternalServerError, 502, {"body.code": "upstream_auth_error"}),
                HttpError("error500", openai.InternalServerError, 500)),
        in_stream=(InStream("instream-error", "Partial answer", "modelStreamErrorException", in_body=True),
                   InStream("throttle-instream", "", "throttlingException", in_body=True),
                   InStream("error-frame", "", "InternalFailure", in_body=True)),
        pii=("email", "You can reach Jane at [REDACTED:EMAIL] any time.", (b"jane.doe", b"@exam"))),
}


def dig(obj: Any, path: str) -> Any:
    """`a.b.c` through dicts (keys) and objects (attributes); None where a step is missing."""
    for step in path.split("."):
        obj = obj.get(step) if isinstance(obj, dict) else getattr(obj, step, None)
    return obj


def cases(attr: str) -> list:
    """(provider, row) for every row of every provider's `attr`, with readable ids."""
    return [pytest.param(p, row, id=f"{p}-{getattr(row, 'scenario', i)}")
            for p in PROVIDERS for i, row in enumerate(getattr(CONTRACTS[p], attr))]


def create(client: openai.OpenAI, provider: str, text: str, **kw):
    kw.setdefault("model", SPECS[provider].model)
    return client.chat.completions.create(messages=ask(text), **kw)


def check_sent(seen: dict, expected: dict) -> None:
    assert {k: dig(seen, k) for k in expected} == expected


per_provider = pytest.mark.parametrize("provider", PROVIDERS)
both = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


# ---- text ------------------------------------------------------------------------------------------------------


@per_provider
def test_text_not_streamed_and_the_keys(client, mock, provider):
    c = CONTRACTS[provider]
    r = client.chat.completions.create(**{"model": SPECS[provider].model, **c.text_kwargs})
    assert r.choices[0].message.content == c.text
    assert r.choices[0].finish_reason == "stop" and r.model == c.model
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == c.usage
    seen = last(mock)
    check_sent(seen, c.sent)
    for header, prefix in c.key_prefix.items():
        assert seen["headers"][header].startswith(prefix)
    # The target's key went up, the client's never did.
    assert not any(CLIENT_KEY in v for v in seen["headers"].values())


@per_provider
@pytest.mark.parametrize("include_usage", [False, True], ids=["", "usage"])
def test_text_streamed(client, mock, provider, include_usage):
    c = CONTRACTS[provider]
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(create(client, provider, c.stream, stream=True, **kw))
    assert stream_text(chunks) == (c.text if c.stream_text is ANY else c.stream_text)
    assert finishes(chunks) == ["stop"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert len({ch.id for ch in chunks}) == 1
    seen = last(mock)
    check_sent(seen, c.stream_sent)
    assert not any(CLIENT_KEY in v for v in seen["headers"].values())
    if include_usage:
        assert chunks[-1].choices == [] and all(ch.usage is None for ch in chunks[:-1])
        assert {k: dig(chunks[-1].usage, k) for k in c.stream_usage} == c.stream_usage
    else:
        assert all(ch.usage is None for ch in chunks)


# ---- tool calls ------------------------------------------------------------------------------------------------


def final_of(client: openai.OpenAI, provider: str, text: str, stream: bool, tools, **kw):
    """The completion, streamed through the SDK's accumulating helper or not."""
    if not stream:
        return create(client, provider, text, tools=list(tools), **kw)
    with client.chat.completions.stream(model=SPECS[provider].model, messages=ask(text), tools=list(tools),
                                        **kw) as s:
        for _ in s:
            pass
        return s.get_final_completion()


def check_calls(got, expected: tuple[Call, ...]) -> None:
    assert [(c.function.name, json.loads(c.function.arguments)) for c in got] == [(e.name, e.args) for e in expected]
    for c, e in zip(got, expected):
        assert re.fullmatch(e.id, c.id) and c.type == "function", (c.id, e.id)
    assert len({c.id for c in got}) == len(got)


@per_provider
@both
def test_tool_call(client, mock, provider, stream):
    c = CONTRACTS[provider]
    r = final_of(client, provider, c.tool, stream, [WEATHER_TOOL], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    if c.tool_content is not ANY:
        assert choice.message.content == c.tool_content
    check_calls(choice.message.tool_calls, (c.tool_call,))
    check_sent(last(mock), c.tool_sent)


@per_provider
@both
def test_parallel_tool_calls(client, provider, stream):
    c = CONTRACTS[provider]
    choice = final_of(client, provider, c.parallel, stream, c.parallel_tools).choices[0]
    assert choice.finish_reason == "tool_calls"
    if c.parallel_content is not ANY:
        assert choice.message.content == c.parallel_content
    check_calls(choice.message.tool_calls, c.parallel_calls)


# ---- finish reasons and errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider, row", cases("finishes"))
def test_finish_reason(client, provider, row: Finish):
    r = create(client, provider, row.scenario, **row.kwargs)
    chunks = list(create(client, provider, row.scenario, stream=True, **row.kwargs))
    assert r.choices[0].finish_reason == row.finish
    assert finishes(chunks) == [row.finish]
    if row.content is not ANY:
        assert r.choices[0].message.content == row.content


@pytest.mark.parametrize("provider, row", cases("errors"))
@both
def test_http_error_relayed(client, provider, row: HttpError, stream):
    with pytest.raises(row.exc) as e:
        r = create(client, provider, row.scenario, stream=stream)
        if stream:
            list(r)
    assert e.value.status_code == row.status and row.needle in e.value.message
    assert {k: dig(e.value, k) for k in row.attrs} == row.attrs


@per_provider
@both
def test_refused_parameter(client, provider, stream):
    body, param = CONTRACTS[provider].refused
    with pytest.raises(openai.BadRequestError) as e:
        create(client, provider, "text", stream=stream, **body)
    assert e.value.status_code == 400
    assert e.value.body["code"] == e.value.code == "unsupported_parameter"
    assert e.value.body["param"] == e.value.param == param


@pytest.mark.parametrize("provider, row", cases("in_stream"))
def test_error_in_the_stream_after_text(client, provider, row: InStream):
    chunks = []
    with pytest.raises(openai.APIError) as e:
        for ch in create(client, provider, row.scenario, stream=True):
            chunks.append(ch)
    assert chunks and stream_text(chunks) == row.text  # the events before the failure reached the client
    assert row.needle in (str(e.value.body) if row.in_body else e.value.message)
    if row.not_streamed_is_5xx:
        with pytest.raises(openai.InternalServerError):
            create(client, provider, row.scenario)


@per_provider
@both
def test_cut_stream(client, provider, stream):
    c = CONTRACTS[provider]
    chunks = []
    with pytest.raises(openai.APIError):
        r = create(client, provider, c.cut, stream=stream)
        if stream:
            for ch in r:
                chunks.append(ch)
    if stream and c.cut_text is not ANY:
        assert stream_text(chunks) == c.cut_text


# ---- a policy over the translated stream -----------------------------------------------------------------------


@per_provider
def test_pii_split_across_events_is_redacted(pii_client, pii_gw, provider):
    scenario, redacted, pieces = CONTRACTS[provider].pii
    assert stream_text(create(pii_client, provider, scenario, stream=True)) == redacted
    # The raw bytes on the wire: no piece of the address, in any event.
    raw = raw_post(pii_gw, {"model": SPECS[provider].model, "messages": ask(scenario), "stream": True})
    assert b"[REDACTED:EMAIL]" in raw and raw.endswith(b"data: [DONE]\n\n")
    for piece in pieces:
        assert piece not in raw
    assert create(pii_client, provider, scenario).choices[0].message.content == redacted
