"""The gateway end to end over raw HTTP: routing, errors as envelopes, streaming framing, upstream failures."""

from __future__ import annotations

import socket
import time

import h11
import orjson
import pytest

from tests.conftest import gateway_config


def _request(gw, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 10.0) -> tuple[h11.Response, bytes, list[tuple[float, bytes]]]:
    """One request through h11 (an independent HTTP/1.1 parser); returns the response, body and timed body parts."""
    conn = h11.Connection(h11.CLIENT)
    s = socket.create_connection((gw.host, gw.port), timeout=timeout)
    hdrs = [("host", f"{gw.host}:{gw.port}")] + list((headers or {}).items())
    if body is not None:
        hdrs += [("content-type", "application/json"), ("content-length", str(len(body)))]
    s.sendall(conn.send(h11.Request(method=method, target=path, headers=hdrs)))
    if body is not None:
        s.sendall(conn.send(h11.Data(data=body)))
    s.sendall(conn.send(h11.EndOfMessage()))
    resp = None
    parts: list[tuple[float, bytes]] = []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(s.recv(65536))
            continue
        if isinstance(ev, h11.Response):
            resp = ev
        elif isinstance(ev, h11.Data):
            parts.append((time.monotonic(), bytes(ev.data)))
        elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    s.close()
    return resp, b"".join(p for _, p in parts), parts


def _chat(model: str, stream: bool, **extra) -> bytes:
    return orjson.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}], **extra})


def _events(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e]


def test_stream_through_gateway_is_chunked_sse_ending_in_done(gateway):
    resp, body, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("gpt-test", True))
    h = dict(resp.headers)
    assert resp.status_code == 200
    assert h[b"content-type"].startswith(b"text/event-stream")
    assert h[b"cache-control"] == b"no-cache"
    assert h[b"x-accel-buffering"] == b"no"
    assert h[b"transfer-encoding"] == b"chunked"
    ev = _events(body)
    assert ev[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") for e in ev)
    assert orjson.loads(ev[0][6:])["object"] == "chat.completion.chunk"


def test_stream_events_are_forwarded_as_produced(gateway):
    """fault-slow paces one event per 50 ms upstream: the client must see them spread out, not in one burst."""
    resp, body, parts = _request(gateway, "POST", "/v1/chat/completions", _chat("fault-slow", True))
    assert resp.status_code == 200
    assert len(parts) >= 20
    span = parts[-1][0] - parts[0][0]
    assert span > 0.5  # 40 events x 50 ms upstream; buffering would deliver them at once


def test_stream_bytes_are_identical_to_upstream(gateway, upstream):
    """Invariant 5: with no policy, every event goes out byte-identical (no JSON round trip)."""
    _, via_gw, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("gpt-test", True))
    import urllib.request
    req = urllib.request.Request(upstream.url + "/chat/completions", data=_chat("gpt-test", True),
                                 headers={"content-type": "application/json"})
    direct = urllib.request.urlopen(req, timeout=10).read()

    def strip_volatile(b: bytes) -> list[dict]:
        out = []
        for e in _events(b):
            if e == b"data: [DONE]":
                continue
            d = orjson.loads(e[6:])
            d.pop("id", None)
            d.pop("created", None)
            if d.get("usage", 1) is None:
                d.pop("usage")  # the gateway asks upstreams for usage: they add "usage": null, as OpenAI does
            out.append(d)
        return out

    assert strip_volatile(via_gw) == strip_volatile(direct)
    # And the exact bytes of each event (modulo id/created and that usage field) are the upstream's.
    assert [e.split(b'"object"')[1].replace(b',"usage":null', b"") for e in _events(via_gw)[:-1]] == \
        [e.split(b'"object"')[1] for e in _events(direct)[:-1]]


def test_non_stream_is_proxied_with_content_length(gateway):
    resp, body, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("gpt-test", False))
    assert resp.status_code == 200
    h = dict(resp.headers)
    assert int(h[b"content-length"]) == len(body)
    assert orjson.loads(body)["object"] == "chat.completion"


def test_upstream_close_midstream_gives_error_event_never_clean_end(gateway):
    resp, body, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("fault-close-midstream", True))
    assert resp.status_code == 200
    ev = _events(body)
    errors = [orjson.loads(e[6:]) for e in ev if e.startswith(b"data: {") and b'"error"' in e]
    assert errors, body
    assert errors[-1]["error"]["type"] == "upstream_error"
    assert errors[-1]["error"]["code"] == "upstream_disconnected"
    # the error comes after the content that did arrive, and the stream is then closed with [DONE]
    assert ev[-1] == b"data: [DONE]"
    assert ev.index(b"data: [DONE]") == len(ev) - 1
    # the content before the error event is whole events only (no truncated JSON)
    for e in ev[:-2]:
        orjson.loads(e[6:])


def test_upstream_500_maps_to_500_envelope(gateway):
    resp, body, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("fault-500", False))
    assert resp.status_code == 500
    assert orjson.loads(body)["error"]["message"]


def test_upstream_429_keeps_retry_after(gateway):
    resp, body, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("fault-429", True))
    assert resp.status_code == 429
    assert dict(resp.headers).get(b"retry-after") == b"1"
    assert orjson.loads(body)["error"]


def test_unreachable_upstream_is_a_502_envelope(gateway_factory):
    cfg = gateway_config("http://127.0.0.1:9/v1")  # discard port: nothing listens
    gw = gateway_factory.start(cfg)
    resp, body, _ = _request(gw, "POST", "/v1/chat/completions", _chat("gpt-test", True))
    assert resp.status_code == 502
    err = orjson.loads(body)["error"]
    assert err["type"] == "upstream_error" and err["code"] == "upstream_connect_error"


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/v1/chat/completions", _chat("no-such-model", False), 404, "model_not_found"),
    ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "missing_model"),
    ("POST", "/v1/chat/completions", b'{"model": "gpt-test", "stream": "yes"}', 400, "invalid_type"),
    ("POST", "/v1/nope", b"{}", 404, "unknown_url"),
    ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
])
def test_bad_requests_get_envelopes(gateway, method, path, body, status, code):
    resp, data, _ = _request(gateway, method, path, body)
    assert resp.status_code == status
    err = orjson.loads(data)["error"]
    assert err["code"] == code
    assert set(err) == {"message", "type", "param", "code"}
    if status == 405:
        assert dict(resp.headers)[b"allow"] == b"POST"
    if status in (400, 404):
        assert dict(resp.headers)[b"x-should-retry"] == b"false"


def test_models_health_ready(gateway):
    resp, body, _ = _request(gateway, "GET", "/v1/models")
    ids = {m["id"] for m in orjson.loads(body)["data"]}
    assert {"gpt-test", "mock-1", "text-embedding-test"} <= ids
    resp, body, _ = _request(gateway, "GET", "/v1/models/mock-1")
    assert orjson.loads(body)["id"] == "mock-1"
    assert _request(gateway, "GET", "/healthz")[0].status_code == 200
    assert _request(gateway, "GET", "/readyz")[0].status_code == 200


def test_client_authorization_is_not_forwarded_and_target_key_is(gateway_factory, upstream, monkeypatch):
    cfg = gateway_config(upstream.url)
    cfg["providers"]["targets"][0]["secret_key_ref"] = {"env": "FASTGW_TEST_KEY"}
    gw = gateway_factory.start(cfg, env={"FASTGW_TEST_KEY": "sk-upstream-key"})
    _request(gw, "POST", "/v1/chat/completions", _chat("gpt-test", False),
             headers={"authorization": "Bearer sk-client-secret"})
    seen = upstream.last("/v1/chat/completions")
    hdrs = {k.lower(): v for k, v in seen["headers"].items()}
    assert hdrs["authorization"] == "Bearer sk-upstream-key"


def test_alias_is_rewritten_to_target_model(gateway_factory, upstream):
    cfg = gateway_config(upstream.url)
    cfg["providers"]["targets"][0]["aliases"] = ["friendly-name"]
    gw = gateway_factory.start(cfg)
    resp, _, _ = _request(gw, "POST", "/v1/chat/completions", _chat("friendly-name", False))
    assert resp.status_code == 200
    assert upstream.last("/v1/chat/completions")["body"]["model"] == "gpt-test"


def test_upstream_keep_alive_connections_are_reused(gateway, upstream):
    """Sequential requests through one worker reuse pooled upstream connections (no connect per request)."""
    for _ in range(5):
        resp, _, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("gpt-test", True))
        assert resp.status_code == 200
    # The mock upstream counts connections it accepted; with 2 workers at most a handful are opened.
    stats = upstream.stats() if hasattr(upstream, "stats") else None
    if stats is not None:
        assert stats["connections"] < stats["requests"]


def test_mock_provider_streams_deterministic_reply(gateway):
    _, a, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("mock-1", True))
    _, b, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("mock-1", True))

    def content(body: bytes) -> str:
        out = ""
        for e in _events(body):
            if e != b"data: [DONE]":
                for c in orjson.loads(e[6:])["choices"]:
                    out += c["delta"].get("content") or ""
        return out

    assert content(a) == content(b) and "mock model" in content(a)


def test_mock_usage_when_include_usage(gateway):
    _, body, _ = _request(gateway, "POST", "/v1/chat/completions",
                          _chat("mock-1", True, stream_options={"include_usage": True}, max_tokens=5))
    ev = [orjson.loads(e[6:]) for e in _events(body) if e != b"data: [DONE]"]
    assert ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] == 5
    assert ev[-2]["choices"][0]["finish_reason"] == "length"


def test_mock_text_file_chunking_and_pacing(gateway_factory, tmp_path):
    reply = tmp_path / "reply.txt"
    reply.write_text("The quick brown fox jumps over the lazy dog.")
    cfg = {"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "m", "provider": "mock", "model": "m", "mock": {"text_file": str(reply), "chunk_size": 5,
                                                                  "delay": 0.03}}]}}
    gw = gateway_factory.start(cfg)
    resp, body, parts = _request(gw, "POST", "/v1/chat/completions", _chat("m", True))
    deltas = [c["delta"].get("content") for e in _events(body) if e != b"data: [DONE]"
              for c in orjson.loads(e[6:])["choices"]]
    content = [d for d in deltas if d]
    assert "".join(content) == reply.read_text()
    assert all(len(c) <= 5 for c in content) and len(content) == 9
    assert parts[-1][0] - parts[0][0] > 0.2  # 9 chunks 30 ms apart arrive paced, not in one burst
    resp, body, _ = _request(gw, "POST", "/v1/chat/completions", _chat("m", False))
    assert orjson.loads(body)["choices"][0]["message"]["content"] == reply.read_text()


def test_azure_target_uses_deployment_path_api_version_and_api_key(gateway_factory, upstream):
    base = upstream.url[: -len("/v1")]
    cfg = {"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "az", "provider": "azure", "model": "gpt-4o", "deployment": "dep1", "api_version": "2024-10-21",
         "base_url": base, "secret_key_ref": {"env": "FASTGW_AZ_KEY"}}]}}
    gw = gateway_factory.start(cfg, env={"FASTGW_AZ_KEY": "az-secret"})
    resp, body, _ = _request(gw, "POST", "/v1/chat/completions", _chat("gpt-4o", True))
    assert resp.status_code == 200 and body.endswith(b"data: [DONE]\n\n")
    seen = upstream.last("/openai/deployments/dep1/chat/completions")
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["headers"]["api-key"] == "az-secret" and "authorization" not in seen["headers"]


def test_openai_compatible_vendors_default_base_urls(tmp_path):
    from fastgw.app import build_targets
    from fastgw.config import load_config
    p = tmp_path / "c.yaml"
    p.write_text("pack: {name: t}\nproviders:\n  targets:\n"
                 "    - {id: g, provider: groq, model: llama}\n    - {id: m, provider: mistral, model: mistral-small}\n"
                 "    - {id: t, provider: together, model: x}\n")
    cfg, secrets = load_config(p)
    urls = {t.id: t.base_url for t in build_targets(cfg, secrets)}
    assert urls == {"g": "https://api.groq.com/openai/v1", "m": "https://api.mistral.ai/v1",
                    "t": "https://api.together.xyz/v1"}
    p.write_text("pack: {name: t}\nproviders:\n  targets:\n    - {id: v, provider: vllm, model: x}\n")
    with pytest.raises(Exception, match="base_url: required for provider 'vllm'"):
        load_config(p)


def test_every_response_carries_a_request_id_generated_or_propagated(gateway):
    resp, _, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("gpt-test", True))
    rid = dict(resp.headers)[b"x-request-id"]
    assert rid.startswith(b"req_")
    resp2, _, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("nope", False))
    assert resp2.status_code == 404 and dict(resp2.headers)[b"x-request-id"] != rid
    resp3, _, _ = _request(gateway, "POST", "/v1/chat/completions", _chat("gpt-test", False),
                           headers={"x-request-id": "trace-123.abc"})
    assert dict(resp3.headers)[b"x-request-id"] == b"trace-123.abc"
    resp4, _, _ = _request(gateway, "GET", "/v1/models", headers={"x-request-id": "bad id with spaces"})
    assert dict(resp4.headers)[b"x-request-id"].startswith(b"req_")


@pytest.mark.parametrize("chain", [False, True])
def test_vendor_extras_pass_through_untouched(gateway_factory, chain):
    """Groq puts usage in `x_groq`; vLLM and others add their own fields: relayed as sent, policy or not."""
    from tests.support.scripted_upstream import ScriptedUpstream, script_key
    up = ScriptedUpstream()
    try:
        key = script_key()
        base = {"id": "chatcmpl-g", "object": "chat.completion.chunk", "created": 1, "model": "llama"}
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
             "x_groq": {"id": "req_01"}},
            {**base, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
             "x_groq": {"id": "req_01", "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}},
        ]
        wire = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        up.scripts[key] = [wire]
        cfg = {"pack": {"name": "t"}, "providers": {"targets": [
            {"id": "g", "provider": "groq", "model": "llama", "base_url": up.url}]}}
        if chain:
            cfg["policies"] = {"chain": ["pii-detector"]}
        gw = gateway_factory.start(cfg)
        resp, body, _ = _request(gw, "POST", "/v1/chat/completions",
                                 orjson.dumps({"model": "llama", "stream": True,
                                               "messages": [{"role": "user", "content": key}]}))
        assert resp.status_code == 200
        assert body == wire  # byte for byte, extras included
    finally:
        up.stop()
