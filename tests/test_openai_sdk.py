"""Drop-in (invariant 1): the official `openai` SDK through the gateway sees what it sees upstream.

Every comparison test runs twice, `direct` (SDK -> mock upstream; validates the mock)
and `gateway` (SDK -> fastgw -> mock upstream); both compare their result with a direct
call made by the same client code with only `base_url` switched.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

CLIENT_KEY = "sk-client-secret"
USER_TEXT = "hello gateway"
MESSAGES = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": USER_TEXT},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
    },
}
WEATHER_MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def sync_client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def async_client(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def usage_dict(usage: Any) -> dict | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": getattr(usage, "completion_tokens", None),
        "total_tokens": usage.total_tokens,
    }


@pytest.fixture(params=["direct", "gateway"])
def base_url(request: pytest.FixtureRequest, upstream: Any) -> str:
    """The `/v1` base the SDK talks to: the mock upstream itself, or the gateway in front of it."""
    if request.param == "direct":
        return upstream.url
    return request.getfixturevalue("gateway").url


# ---------------------------------------------------------------- chat completions


def chat_nonstream(base_url: str, **kw: Any) -> tuple[list[str | None], list[str], dict | None]:
    with sync_client(base_url) as client:
        resp = client.chat.completions.create(model="gpt-test", messages=MESSAGES, **kw)
    assert resp.object == "chat.completion"
    choices = sorted(resp.choices, key=lambda c: c.index)
    return [c.message.content for c in choices], [c.finish_reason for c in choices], usage_dict(resp.usage)


def chat_stream(base_url: str, **kw: Any) -> tuple[list[str], list[str | None], dict | None]:
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    roles: dict[int, str] = {}
    usage = None
    with sync_client(base_url) as client:
        stream = client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **kw
        )
        chunks = list(stream)
    assert chunks, "no chunks"
    for ch in chunks:
        assert ch.object == "chat.completion.chunk"
        if not ch.choices:
            usage = usage_dict(ch.usage)
            continue
        for c in ch.choices:
            if c.delta.role:
                roles[c.index] = c.delta.role
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    # The usage chunk (choices: []) is the last one before [DONE].
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert set(roles.values()) == {"assistant"}
    n = len(texts)
    return [texts[i] for i in range(n)], [finish.get(i) for i in range(n)], usage


def test_chat_create_sync(base_url: str, upstream: Any) -> None:
    got = chat_nonstream(base_url)
    assert got == chat_nonstream(upstream.url)
    contents, finishes, usage = got
    assert contents[0].startswith(f"Echo: {USER_TEXT} ")
    assert finishes == ["stop"]
    assert usage["completion_tokens"] >= 30 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_stream_sync(base_url: str, upstream: Any) -> None:
    got = chat_stream(base_url)
    assert got == chat_stream(upstream.url)
    contents, finishes, usage = got
    # Streamed and non-streamed answers agree.
    ref_contents, ref_finishes, ref_usage = chat_nonstream(upstream.url)
    assert contents == ref_contents and finishes == ref_finishes == ["stop"]
    assert usage == ref_usage


def test_chat_stream_without_usage(base_url: str, upstream: Any) -> None:
    def run(url: str) -> tuple[str, list[Any]]:
        with sync_client(url) as client:
            chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
        assert all(ch.choices for ch in chunks), "usage chunk sent without stream_options.include_usage"
        return "".join(ch.choices[0].delta.content or "" for ch in chunks), [
            ch.choices[0].finish_reason for ch in chunks
        ]

    text, finishes = run(base_url)
    assert (text, finishes) == run(upstream.url)
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])


def test_chat_n_choices_and_max_tokens(base_url: str, upstream: Any) -> None:
    got_stream = chat_stream(base_url, n=2, max_tokens=6)
    assert got_stream == chat_stream(upstream.url, n=2, max_tokens=6)
    contents, finishes, _ = got_stream
    assert len(contents) == 2 and contents[0] != contents[1]
    assert finishes == ["length", "length"]
    got = chat_nonstream(base_url, n=2, max_tokens=6)
    assert got[0] == contents and got[1] == finishes


def test_chat_async(base_url: str, upstream: Any) -> None:
    async def run(url: str) -> tuple[str, str, str, Any]:
        async with async_client(url) as client:
            resp = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
            stream = await client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            text = ""
            finish = None
            usage = None
            async for ch in stream:
                if ch.choices:
                    text += ch.choices[0].delta.content or ""
                    finish = ch.choices[0].finish_reason or finish
                else:
                    usage = usage_dict(ch.usage)
        return resp.choices[0].message.content, text, finish, (usage_dict(resp.usage), usage)

    async def both() -> tuple[Any, Any]:
        return await asyncio.gather(run(base_url), run(upstream.url))

    got, ref = asyncio.run(both())
    assert got == ref
    nonstream_text, stream_text, finish, (u1, u2) = got
    assert nonstream_text == stream_text and finish == "stop" and u1 == u2


def test_chat_async_concurrent(base_url: str, upstream: Any) -> None:
    """Twenty concurrent async streams, each with its own prompt, each gets its own answer."""

    async def one(client: AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": f"request {i}"}], stream=True
        )
        return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

    async def run() -> list[str]:
        async with async_client(base_url) as client:
            return await asyncio.gather(*(one(client, i) for i in range(20)))

    for i, text in enumerate(asyncio.run(run())):
        assert text.startswith(f"Echo: request {i} "), text


# ---------------------------------------------------------------- stream helpers


def test_stream_helper_content(base_url: str, upstream: Any) -> None:
    def run(url: str) -> tuple[str, str | None, str, dict | None]:
        deltas = []
        done = None
        with sync_client(url) as client:
            with client.chat.completions.stream(
                model="gpt-test", messages=MESSAGES, stream_options={"include_usage": True}
            ) as stream:
                for event in stream:
                    if event.type == "content.delta":
                        deltas.append(event.delta)
                    elif event.type == "content.done":
                        done = event.content
                final = stream.get_final_completion()
        choice = final.choices[0]
        assert choice.message.content == "".join(deltas)
        return "".join(deltas), done, choice.finish_reason, usage_dict(final.usage)

    got = run(base_url)
    assert got == run(upstream.url)
    text, done, finish, usage = got
    assert text.startswith(f"Echo: {USER_TEXT} ") and done == text and finish == "stop"
    assert usage is not None and usage["completion_tokens"] > 0


def test_stream_helper_tool_call(base_url: str, upstream: Any) -> None:
    def run(url: str) -> tuple[Any, ...]:
        arg_deltas = []
        done_events = []
        with sync_client(url) as client:
            with client.chat.completions.stream(
                model="gpt-test", messages=WEATHER_MESSAGES, tools=[WEATHER_TOOL]
            ) as stream:
                for event in stream:
                    if event.type == "tool_calls.function.arguments.delta":
                        arg_deltas.append(event.arguments_delta)
                    elif event.type == "tool_calls.function.arguments.done":
                        done_events.append((event.name, event.index, event.arguments, event.parsed_arguments))
                final = stream.get_final_completion()
        choice = final.choices[0]
        calls = choice.message.tool_calls or []
        assert len(calls) == 1
        call = calls[0]
        return (
            "".join(arg_deltas),
            done_events,
            choice.finish_reason,
            call.id,
            call.function.name,
            call.function.arguments,
            call.function.parsed_arguments,
        )

    got = run(base_url)
    assert got == run(upstream.url)
    deltas, done_events, finish, call_id, name, arguments, parsed = got
    assert len(deltas) > 1 or len(done_events) == 1
    assert done_events == [("get_weather", 0, arguments, {"location": "Paris"})]
    assert finish == "tool_calls" and name == "get_weather" and call_id.startswith("call_")
    assert parsed == {"location": "Paris"} and deltas == arguments


def test_stream_helper_async(base_url: str, upstream: Any) -> None:
    async def run(url: str) -> tuple[str, str | None, str | None]:
        text = ""
        async with async_client(url) as client:
            async with client.chat.completions.stream(model="gpt-test", messages=MESSAGES) as stream:
                async for event in stream:
                    if event.type == "content.delta":
                        text += event.delta
                final = await stream.get_final_completion()
        return text, final.choices[0].message.content, final.choices[0].finish_reason

    async def both() -> tuple[Any, Any]:
        return await asyncio.gather(run(base_url), run(upstream.url))

    got, ref = asyncio.run(both())
    assert got == ref
    assert got[0] == got[1] and got[2] == "stop"


def test_tool_call_nonstream(base_url: str, upstream: Any) -> None:
    def run(url: str) -> tuple[Any, ...]:
        with sync_client(url) as client:
            resp = client.chat.completions.create(model="gpt-test", messages=WEATHER_MESSAGES, tools=[WEATHER_TOOL])
        c = resp.choices[0]
        call = c.message.tool_calls[0]
        return c.finish_reason, c.message.content, call.id, call.function.name, call.function.arguments

    got = run(base_url)
    assert got == run(upstream.url)
    assert got[0] == "tool_calls" and got[1] is None and got[3] == "get_weather"


# ---------------------------------------------------------------- legacy completions


def test_completions(base_url: str, upstream: Any) -> None:
    def run(url: str) -> tuple[Any, ...]:
        with sync_client(url) as client:
            resp = client.completions.create(model="instruct-test", prompt="Say this is a test")
            chunks = list(
                client.completions.create(
                    model="instruct-test",
                    prompt="Say this is a test",
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
        usage = [usage_dict(ch.usage) for ch in chunks if not ch.choices]
        return resp.choices[0].text, resp.choices[0].finish_reason, usage_dict(resp.usage), text, finish, usage

    got = run(base_url)
    assert got == run(upstream.url)
    text, finish, usage, stream_text, stream_finish, stream_usage = got
    assert text.startswith("Echo: Say this is a test ") and stream_text == text
    assert finish == stream_finish == "stop" and stream_usage == [usage]


# ---------------------------------------------------------------- embeddings


def test_embeddings(base_url: str, upstream: Any) -> None:
    inputs = ["first text", "second text"]

    def run(url: str) -> tuple[Any, ...]:
        with sync_client(url) as client:
            default = client.embeddings.create(model="text-embedding-test", input=inputs)
            seen_default = upstream.last("/v1/embeddings")["body"].get("encoding_format")
            floats = client.embeddings.create(model="text-embedding-test", input=inputs, encoding_format="float")
            seen_float = upstream.last("/v1/embeddings")["body"].get("encoding_format")
        return (
            [(d.index, list(d.embedding)) for d in default.data],
            [(d.index, list(d.embedding)) for d in floats.data],
            usage_dict(default.usage),
            (seen_default, seen_float),
        )

    got = run(base_url)
    assert got == run(upstream.url)
    default, floats, usage, seen = got
    # The SDK asks for base64 by default and decodes it; the floats must be the same.
    assert seen == ("base64", "float")
    assert default == floats and len(default) == 2 and len(default[0][1]) == 16
    assert default[0][1] != default[1][1]
    assert usage["prompt_tokens"] == 4


def test_embeddings_async(base_url: str, upstream: Any) -> None:
    async def run(url: str) -> list[float]:
        async with async_client(url) as client:
            resp = await client.embeddings.create(model="text-embedding-test", input="one")
        return list(resp.data[0].embedding)

    assert asyncio.run(run(base_url)) == asyncio.run(run(upstream.url))


# ---------------------------------------------------------------- models


def test_models_direct(upstream: Any) -> None:
    with sync_client(upstream.url) as client:
        ids = {m.id for m in client.models.list()}
    assert {"gpt-test", "text-embedding-test", "instruct-test", "fault-500"} <= ids


def test_models_gateway(gateway: Any) -> None:
    """The gateway answers /v1/models from its config: target models and their aliases."""
    with sync_client(gateway.url) as client:
        models = list(client.models.list())
    ids = {m.id for m in models}
    expected = {
        "gpt-test",
        "gpt-test-alias",
        "text-embedding-test",
        "instruct-test",
        "mock-1",
        "fault-close-midstream",
        "fault-500",
        "fault-429",
        "fault-slow",
        "fault-hang",
    }
    assert expected <= ids, f"missing: {sorted(expected - ids)}"
    assert all(m.object == "model" for m in models)


def test_models_async(gateway: Any) -> None:
    async def run() -> set[str]:
        async with async_client(gateway.url) as client:
            return {m.id async for m in client.models.list()}

    assert {"gpt-test", "mock-1"} <= asyncio.run(run())


# ---------------------------------------------------------------- headers and routing


def test_client_authorization_recorded_direct(upstream: Any) -> None:
    """The mock records Authorization: this is what the gateway test relies on."""
    chat_nonstream(upstream.url)
    assert upstream.last("/v1/chat/completions")["headers"]["authorization"] == f"Bearer {CLIENT_KEY}"


def test_client_authorization_not_forwarded(gateway: Any, upstream: Any) -> None:
    for stream in (False, True):
        with sync_client(gateway.url) as client:
            resp = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=stream)
            if stream:
                list(resp)
        seen = upstream.last("/v1/chat/completions")
        assert seen is not None and seen["body"]["messages"][-1]["content"] == USER_TEXT
        leaked = {k: v for k, v in seen["headers"].items() if CLIENT_KEY in v}
        assert not leaked, f"client credential forwarded upstream: {leaked}"


def test_alias_rewritten_to_target_model(gateway: Any, upstream: Any) -> None:
    with sync_client(gateway.url) as client:
        resp = client.chat.completions.create(model="gpt-test-alias", messages=MESSAGES)
    assert resp.choices[0].message.content.startswith(f"Echo: {USER_TEXT} ")
    assert upstream.last("/v1/chat/completions")["body"]["model"] == "gpt-test"


# ---------------------------------------------------------------- errors


def test_unknown_model(gateway: Any) -> None:
    with sync_client(gateway.url) as client:
        with pytest.raises(openai.NotFoundError) as exc:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert exc.value.status_code == 404
    assert isinstance(exc.value.body, dict) and exc.value.body.get("code") == "model_not_found"
    assert exc.value.code == "model_not_found"


def test_unknown_model_stream_and_async(gateway: Any) -> None:
    with sync_client(gateway.url) as client:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)

    async def run() -> None:
        async with async_client(gateway.url) as client:
            await client.embeddings.create(model="no-such-model", input="x")

    with pytest.raises(openai.NotFoundError):
        asyncio.run(run())


def test_upstream_500(base_url: str) -> None:
    with sync_client(base_url) as client:
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as exc:
                client.chat.completions.create(model="fault-500", messages=MESSAGES, stream=stream)
            assert exc.value.status_code == 500
        with pytest.raises(openai.InternalServerError):
            client.embeddings.create(model="fault-500", input="x")


def test_upstream_429(base_url: str) -> None:
    with sync_client(base_url) as client:
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="fault-429", messages=MESSAGES)
    assert exc.value.status_code == 429
    assert exc.value.code == "rate_limit_exceeded"


def test_upstream_close_midstream(base_url: str, upstream: Any) -> None:
    full = chat_nonstream(upstream.url)[0][0]
    received = ""
    with sync_client(base_url) as client:
        stream = client.chat.completions.create(model="fault-close-midstream", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError):
            for ch in stream:
                if ch.choices:
                    received += ch.choices[0].delta.content or ""
    # What came before the failure was passed on as it arrived, and nothing else.
    assert received and full.startswith(received) and received != full


def test_upstream_close_midstream_async(base_url: str) -> None:
    async def run() -> str:
        received = ""
        async with async_client(base_url) as client:
            stream = await client.chat.completions.create(
                model="fault-close-midstream", messages=MESSAGES, stream=True
            )
            with pytest.raises(openai.APIError):
                async for ch in stream:
                    if ch.choices:
                        received += ch.choices[0].delta.content or ""
        return received

    assert asyncio.run(run()).startswith("Echo: ")


def test_upstream_slow_stream(base_url: str) -> None:
    """40 chunks 50 ms apart arrive as they are produced (no buffering to the end)."""
    arrivals = []
    with sync_client(base_url) as client:
        stream = client.chat.completions.create(model="fault-slow", messages=MESSAGES, stream=True)
        for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 40
    # Spread over ~2 s; a gateway that buffered would deliver them in one burst.
    assert arrivals[-1] - arrivals[0] > 1.0


# ---------------------------------------------------------------- built-in mock provider


def test_mock_provider(gateway: Any) -> None:
    def nonstream() -> tuple[str, str]:
        with sync_client(gateway.url) as client:
            resp = client.chat.completions.create(model="mock-1", messages=MESSAGES)
        return resp.choices[0].message.content, resp.choices[0].finish_reason

    def stream() -> tuple[str, str | None, bool]:
        with sync_client(gateway.url) as client:
            chunks = list(
                client.chat.completions.create(
                    model="mock-1", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
            )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
        return text, finish, any(ch.usage is not None for ch in chunks)

    first, second = nonstream(), nonstream()
    assert first == second and first[0] and first[1] == "stop"
    s1, s2 = stream(), stream()
    assert s1 == s2 and s1[0] and s1[1] == "stop" and s1[2]
    assert s1[0] == first[0]

    async def astream() -> str:
        async with async_client(gateway.url) as client:
            text = ""
            async with client.chat.completions.stream(model="mock-1", messages=MESSAGES) as st:
                async for event in st:
                    if event.type == "content.delta":
                        text += event.delta
            return text

    assert asyncio.run(astream()) == first[0]
