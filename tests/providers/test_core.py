"""The provider core: the registry of provider names, the chat request IR, the shared message loop, one
`translate_request` signature, and structured chunks (`ChunkWriter`, `encode_chunks`)."""

from __future__ import annotations

import importlib
import inspect
from typing import get_args

import orjson
import pytest

from fastgw import config
from fastgw.api.errors import GatewayError
from fastgw.proto.sse import SSEDecoder
from fastgw.providers import adapter_for, registry
from fastgw.providers.chunks import ChunkWriter, completion_body, encode_chunks
from fastgw.providers.ir import fold_turns, parse_chat

TRANSLATED = ("anthropic", "bedrock", "cohere", "gemini", "ollama")


# ---- registry ------------------------------------------------------------------------------------


def test_provider_names_live_in_one_place():
    assert config.Provider is registry.Provider and config.DEFAULT_BASE_URLS is registry.DEFAULT_BASE_URLS
    assert set(get_args(registry.Provider)) == set(registry.PROVIDERS)
    assert registry.DEFAULT_BASE_URLS == {
        "openai": "https://api.openai.com/v1", "groq": "https://api.groq.com/openai/v1",
        "mistral": "https://api.mistral.ai/v1", "together": "https://api.together.xyz/v1", "vllm": None,
        "azure": None, "anthropic": "https://api.anthropic.com", "gemini": "https://generativelanguage.googleapis.com",
        "ollama": "http://127.0.0.1:11434", "cohere": "https://api.cohere.com", "bedrock": None}
    assert registry.NATIVE_ENDPOINTS == {"responses": frozenset({"openai", "azure"}),
                                         "messages": frozenset({"anthropic"})}
    assert registry.OPENAI_COMPATIBLE == {"openai", "azure", "groq", "mistral", "together", "vllm", "mock"}
    assert registry.is_openai_compatible("groq") and not registry.is_openai_compatible("anthropic")


@pytest.mark.parametrize("name", sorted(registry.PROVIDERS))
def test_every_provider_has_its_adapter(name):
    module, cls = registry.PROVIDERS[name].adapter
    assert type(adapter_for(name)) is getattr(importlib.import_module(module), cls)


def test_the_mock_is_a_provider_like_the_others():
    """The built-in mock has an adapter and a registry entry like any provider (no special case in the
    pipeline); it serves the chat, completions and embeddings endpoints and has no HTTP request to build."""
    from fastgw.providers.mock import MockAdapter

    assert isinstance(adapter_for("mock"), MockAdapter)
    assert registry.PROVIDERS["mock"].serves == {"chat/completions", "completions", "embeddings"}
    with pytest.raises(KeyError):
        adapter_for("no-such-provider")


@pytest.mark.parametrize("name", TRANSLATED)
def test_one_translate_request_signature(name):
    fn = importlib.import_module(f"fastgw.providers.{name}").translate_request
    assert list(inspect.signature(fn).parameters) == ["target", "body", "stream"]


# ---- the IR ---------------------------------------------------------------------------------------


def test_parse_chat_types_and_normalises():
    req = parse_chat({"messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": "u"}},
                                     "not a part"]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}, {"id": "c2"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}],
        "max_tokens": 5, "max_completion_tokens": 7, "stop": "END", "temperature": 0.3,
        "stream_options": {"include_usage": True}}, "anthropic")
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool"]
    assert [m.param for m in req.messages] == ["messages[0]", "messages[1]", "messages[2]", "messages[3]"]
    parts = req.messages[1].content
    assert isinstance(parts, list) and [p.type for p in parts] == ["text", "image_url", None]
    assert parts[0].text == "t" and parts[1].raw["image_url"] == {"url": "u"}
    calls = req.messages[2].tool_calls
    assert calls is not None and [(c.id, c.name, c.arguments, c.has_function) for c in calls] == [
        ("c1", "f", "{}", True), ("c2", None, None, False)]
    assert req.messages[3].tool_call_id == "c1"
    assert (req.sampling.max_tokens, req.sampling.stop, req.sampling.temperature) == (7, ["END"], 0.3)
    assert req.include_usage is True
    assert parse_chat({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}, "x").sampling.max_tokens == 5
    assert parse_chat({"messages": [{"role": "user", "content": "x"}], "stop": []}, "x").sampling.stop is None


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
])
def test_parse_chat_refuses_malformed_requests(body, param):
    with pytest.raises(GatewayError) as e:
        parse_chat(body, "cohere")
    assert (e.value.status, e.value.code, e.value.param) == (400, "invalid_value", param)


def test_fold_turns_merges_same_role_turns_and_refuses_unknown_roles():
    req = parse_chat({"messages": [
        {"role": "developer", "content": "d"}, {"role": "user", "content": "a"},
        {"role": "tool", "tool_call_id": "1", "content": "r"}, {"role": "user", "content": ""},
        {"role": "assistant", "content": "b"}]}, "x")

    def text(m):
        return [m.content] if m.content else []

    system, turns = fold_turns(req, system=text, user=text, assistant=text, tool=text, assistant_role="model",
                               key="parts")
    assert system == ["d"] and turns == [{"role": "user", "parts": ["a", "r"]}, {"role": "model", "parts": ["b"]}]
    with pytest.raises(GatewayError) as e:
        fold_turns(parse_chat({"messages": [{"role": "function", "content": "x"}]}, "prov"), system=text,
                   user=text, assistant=text, tool=text)
    assert e.value.code == "unsupported_parameter" and e.value.param == "messages[0].role"
    assert "(provider prov)" in e.value.message


# ---- structured chunks ------------------------------------------------------------------------------


def test_chunk_writer_builds_dicts_and_encode_chunks_writes_sse_once():
    w = ChunkWriter("m", {"stream_options": {"include_usage": True}})
    w.start()
    w.text("hi\nthere")
    w.finish("stop")
    w.end({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    chunks = w.take()
    assert w.take() == [] and w.ended
    assert [c["choices"] for c in chunks][-1] == [] and chunks[-1]["usage"]["total_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])
    data = encode_chunks(chunks)
    assert data.count(b"\n\n") == len(chunks) and b"[DONE]" not in data
    assert [orjson.loads(e.data) for e in SSEDecoder().feed(data)] == chunks
    assert encode_chunks([]) == b""


def test_translated_chunks_and_bodies_have_no_null_system_fingerprint():
    # The spec types it as a string; a translated provider has none, so it is left out (issue 17).
    w = ChunkWriter("m", {})
    w.start()
    w.text("hi")
    w.finish("stop")
    w.end(None)
    chunks = w.take()
    assert chunks and not any("system_fingerprint" in c or "usage" in c for c in chunks)
    body = orjson.loads(completion_body("m", "hi", "stop", None))
    assert "system_fingerprint" not in body and body["object"] == "chat.completion"


def test_json_post_reuses_a_targets_encoded_head_and_frames_like_the_header_list():
    """The request line and headers are encoded once per target, path, accept and credentials (issue 18); the
    bytes sent are what the header list says, whatever the body, and the cache stays bounded."""
    from fastgw.api import limits
    from fastgw.providers.base import TargetRuntime, UpstreamRequest, json_post

    t = TargetRuntime("up", "openai", "m", base_url="http://127.0.0.1:9/v1", api_key="k",
                      extra_headers=[(b"x-team", b"a")])
    auth = [(b"authorization", b"Bearer k")]
    a = json_post(t, "/chat/completions", b'{"a":1}', True, auth)
    b = json_post(t, "/chat/completions", b'{"b":22}', True, list(auth))
    assert a.headers is b.headers and a.head is b.head  # built once
    for r, body in ((a, b'{"a":1}'), (b, b'{"b":22}')):
        plain = UpstreamRequest(r.scheme, r.host, r.port, r.method, r.path, list(r.headers), body)
        assert plain.head is None and r.encode() == plain.encode()
        assert r.encode() == (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"
                              b"content-type: application/json\r\naccept: text/event-stream\r\n"
                              b"user-agent: fastgw/0.1\r\nauthorization: Bearer k\r\nx-team: a\r\n"
                              b"content-length: %d\r\n\r\n%s" % (len(body), body))
    # Another accept, path or credential is another head, never the first one's.
    c = json_post(t, "/chat/completions", b"{}", False, auth)
    d = json_post(t, "/chat/completions", b"{}", True, [(b"authorization", b"Bearer other")])
    assert b"accept: application/json\r\n" in c.encode() and b"Bearer other" in d.encode()
    assert b"Bearer k" not in d.encode()
    for i in range(3 * limits.REQUEST_HEADS):  # a client varying a forwarded header
        json_post(t, f"/p{i}", b"{}", True, auth)
    assert 0 < len(t.heads) <= limits.REQUEST_HEADS
