"""Deep JSON is the client's 400, never a 500 (issue 15, item 8): a 960-level nested tool schema sent to
anthropic, bedrock or ollama targets answered 500 with a traceback on stderr (orjson encodes at most 254 levels).
Now every adapter refuses a body it cannot encode with 400 `nesting_too_deep` naming the parameter, and JSON nested
too deeply by an upstream (a tool input) is the upstream's protocol error, not a crash in the middle of a read."""

from __future__ import annotations

import orjson
import pytest

from fastgw.api.errors import GatewayError, UpstreamProtocolError
from fastgw.providers import adapter_for
from fastgw.providers.base import MAX_ENCODED_DEPTH, TargetRuntime, encode_json
from fastgw.providers.native import messages_request
from tests.providers.stack import SPECS, raw_post

#: JSON levels of the request the issue sent (orjson parses up to 1024, so it reached the adapters).
LEVELS = 960


def deep_schema_body(model: str, levels: int = LEVELS) -> bytes:
    """A chat request whose tool schema nests so that the whole body is `levels` deep (built as text: no encoder
    goes that deep)."""
    n = (levels - 5) // 2  # body, tools, tool, function; each schema level is two JSON levels; the leaf
    leaf = '{"type":"string"}' if (levels - 5) % 2 == 0 else '{"type":"string","enum":["x"]}'
    schema = '{"type":"object","properties":{"a":' * n + leaf + "}}" * n
    return (b'{"model":%s,"messages":[{"role":"user","content":"text"}],"tools":[{"type":"function","function":'
            b'{"name":"deep","parameters":%s}}]}' % (orjson.dumps(model), schema.encode()))


def nested(levels: int) -> object:
    x: object = 1
    for _ in range(levels):
        x = {"a": x}
    return x


def target(provider: str) -> TargetRuntime:
    return TargetRuntime(id="t", provider=provider, model="m", base_url="http://127.0.0.1:1", api_key="k",
                         region="us-east-1")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock", "ollama", "cohere", "gemini"])
def test_every_adapter_refuses_what_it_cannot_encode(provider: str) -> None:
    body = orjson.loads(deep_schema_body("m"))
    try:
        adapter_for(provider).build_request(target(provider), "chat/completions", body, False)
    except GatewayError as e:
        assert (e.status, e.type, e.code) == (400, "invalid_request_error", "nesting_too_deep")
        assert e.param == "tools[0].function.parameters" and f"{LEVELS} levels deep" in e.message
    else:
        assert provider == "gemini"  # its schema translation stops at 64 levels by itself


def test_native_messages_and_tool_arguments() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "x", "content": "ok"}]}], "metadata": nested(300)}
    with pytest.raises(GatewayError) as e:
        messages_request(target("anthropic"), body, False, [])
    assert e.value.param == "metadata.a.a" and e.value.code == "nesting_too_deep"
    # cohere re-encodes tool-call arguments given as an object: the param names where they are
    chat = {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": nested(300)}}]}]}
    with pytest.raises(GatewayError) as e:
        adapter_for("cohere").build_request(target("cohere"), "chat/completions", chat, False)
    assert e.value.param.startswith("messages[0].tool_calls[0].function.arguments")


def test_the_bound_is_the_encoders() -> None:
    assert encode_json(nested(MAX_ENCODED_DEPTH)) and MAX_ENCODED_DEPTH == 254
    with pytest.raises(GatewayError):
        encode_json(nested(MAX_ENCODED_DEPTH + 1))


def test_an_upstream_tool_input_nested_too_deeply_is_its_protocol_error() -> None:
    deep = nested(300)
    events = [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "c",
                                              "content": [], "usage": {"input_tokens": 1, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f",
                                                                      "input": deep}},
    ]
    sse = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), orjson.dumps(e)) for e in events[:1])
    sse += b"event: content_block_start\ndata: " + _text(events[1]) + b"\n\n"
    t = adapter_for("anthropic").stream_translator(target("anthropic"), {})
    with pytest.raises(UpstreamProtocolError):
        t.feed(sse)
        t.finish()
    whole = b'{"id":"m","type":"message","role":"assistant","model":"c","stop_reason":"tool_use","usage":' \
            b'{"input_tokens":1,"output_tokens":1},"content":[{"type":"tool_use","id":"t","name":"f","input":' \
            + _text(deep) + b"}]}"
    with pytest.raises(UpstreamProtocolError):
        adapter_for("anthropic").translate_response(target("anthropic"), {}, 200, whole)
    line = b'{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f",' \
           b'"arguments":' + _text(deep) + b"}}]},\"done\":false}\n"
    with pytest.raises(UpstreamProtocolError):
        adapter_for("ollama").stream_translator(target("ollama"), {}).feed(line)


def _text(obj: object) -> bytes:
    """JSON text of `obj` at any depth (orjson stops at 254 levels; the stdlib's recursion limit is higher)."""
    import json
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- through the gateway, on the providers' mocks -------------------------------------------------------------

@pytest.mark.parametrize("provider", ["anthropic", "bedrock", "ollama"])
def test_a_960_level_tool_schema_is_a_400_through_the_gateway(gw, provider: str) -> None:
    import urllib.error

    before = gw.stderr_text().count("Traceback")
    with pytest.raises(urllib.error.HTTPError) as e:
        _post(gw, deep_schema_body(SPECS[provider].model))
    assert e.value.code == 400
    err = orjson.loads(e.value.read())["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "nesting_too_deep",
                                                        "tools[0].function.parameters")
    assert gw.stderr_text().count("Traceback") == before  # no traceback, and the worker still serves
    assert b"[DONE]" in raw_post(gw, {"model": SPECS[provider].model, "stream": True,
                                      "messages": [{"role": "user", "content": "text"}]})


def _post(gw, data: bytes) -> bytes:
    import urllib.request

    rq = urllib.request.Request(gw.url + "/chat/completions", data=data, method="POST",
                                headers={"content-type": "application/json"})
    with urllib.request.urlopen(rq, timeout=20) as r:
        return r.read()
