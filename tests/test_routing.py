"""Timeouts, retries, fallback and circuit breaking with fault-injecting upstreams and the real openai SDK."""

from __future__ import annotations

import time

import openai
import pytest

from fastgw.routing import Breaker, Verdict


def _target(tid: str, model: str, url: str, **extra) -> dict:
    return {"id": tid, "provider": "openai", "model": model, "base_url": url, **extra}


def _cfg(targets: list[dict], routing: list[dict] | None = None) -> dict:
    cfg = {"pack": {"name": "t"}, "providers": {"targets": targets}}
    if routing:
        cfg["routing"] = routing
    return cfg


def _client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=30)


def _ask(client, model: str, stream: bool) -> str:
    msgs = [{"role": "user", "content": "hello"}]
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model=model, messages=msgs, stream=True) if c.choices)
    return client.chat.completions.create(model=model, messages=msgs).choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("first", ["refused", "fault-500", "fault-429", "fault-hang"])
def test_fallback_to_the_second_target_before_the_first_byte(gateway_factory, upstream, first, stream):
    if first == "refused":
        primary = _target("primary", "gpt-x", "http://127.0.0.1:9/v1")
    else:
        primary = _target("primary", first, upstream.url, timeouts={"ttft": 0.5})
    cfg = _cfg([primary, _target("backup", "gpt-test", upstream.url)],
               [{"model": "gpt-x", "targets": ["primary", "backup"], "retry": {"attempts": 1}}])
    cfg["providers"]["targets"][0].setdefault("aliases", []).append("gpt-x")
    gw = gateway_factory.start(cfg)
    t0 = time.monotonic()
    assert "Echo: hello" in _ask(_client(gw), "gpt-x", stream)
    assert time.monotonic() - t0 < 10


def test_retry_on_the_same_target_honours_retry_after(gateway_factory, upstream):
    cfg = _cfg([_target("only", "fault-429", upstream.url)],
               [{"model": "fault-429", "targets": ["only"], "retry": {"attempts": 2, "max_retry_after": 5}}])
    gw = gateway_factory.start(cfg)
    before = upstream.count("/v1/chat/completions")
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        _ask(_client(gw), "fault-429", False)
    assert upstream.count("/v1/chat/completions") - before == 2  # tried twice
    assert time.monotonic() - t0 >= 0.9  # waited the upstream's Retry-After: 1 between the tries


def test_ttft_timeout_fires_although_headers_arrived(gateway_factory, upstream):
    gw = gateway_factory.start(_cfg([_target("slow", "fault-hang", upstream.url, timeouts={"ttft": 0.5})]))
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:  # nothing was sent yet: an HTTP error, not a stream
        _ask(_client(gw), "fault-hang", True)
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"
    assert time.monotonic() - t0 < 5


def test_idle_timeout_mid_stream_is_an_in_stream_error_without_fallback(gateway_factory, upstream):
    cfg = _cfg([_target("slow", "fault-slow", upstream.url, timeouts={"idle": 0.02}),
                _target("backup", "gpt-test", upstream.url, aliases=["fault-slow"])])
    gw = gateway_factory.start(cfg)
    got = ""
    with pytest.raises(openai.APIError) as e:
        for c in _client(gw).chat.completions.create(model="fault-slow", stream=True,
                                                     messages=[{"role": "user", "content": "x"}]):
            if c.choices:
                got += c.choices[0].delta.content or ""
    assert e.value.body["code"] == "upstream_timeout" and e.value.body["type"] == "upstream_error"
    assert "Echo" not in got  # no fallback once content was sent: the backup never answered


def test_max_duration(gateway_factory, upstream):
    gw = gateway_factory.start(_cfg([_target("slow", "fault-slow", upstream.url, timeouts={"max_duration": 0.5}),
                                     _target("hang", "fault-hang", upstream.url, timeouts={"max_duration": 0.5})]))
    with pytest.raises(openai.APIError) as e:  # after the first byte: an in-stream error
        _ask(_client(gw), "fault-slow", True)
    assert e.value.body["code"] == "upstream_timeout"
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e2:  # a non-streamed answer that never completes
        _ask(_client(gw), "fault-hang", False)
    assert e2.value.status_code == 504 and time.monotonic() - t0 < 5


def test_circuit_breaker_opens_skips_and_recovers(gateway_factory, upstream):
    cfg = _cfg([_target("flaky", "fault-500", upstream.url, aliases=["m"],
                        circuit_breaker={"failures": 2, "cooldown": 1.0}),
                _target("backup", "gpt-test", upstream.url, aliases=["m"])],
               [{"model": "m", "targets": ["flaky", "backup"], "retry": {"attempts": 1}}])
    gw = gateway_factory.start(cfg, workers=1)
    c = _client(gw)
    path = "/v1/chat/completions"
    for _ in range(2):
        assert "Echo" in _ask(c, "m", False)  # each falls back after a 500
    n = upstream.count(path)
    for _ in range(3):
        assert "Echo" in _ask(c, "m", False)
    assert upstream.count(path) - n == 3  # open: the flaky target was skipped, only the backup was asked
    time.sleep(1.1)
    n = upstream.count(path)
    assert "Echo" in _ask(c, "m", False)
    assert upstream.count(path) - n == 2  # half-open: one probe (failed again), then the backup


def test_only_target_open_answers_503_with_retry_after(gateway_factory, upstream):
    cfg = _cfg([_target("flaky", "fault-500", upstream.url, circuit_breaker={"failures": 1, "cooldown": 30})],
               [{"model": "fault-500", "targets": ["flaky"], "retry": {"attempts": 1}}])
    gw = gateway_factory.start(cfg, workers=1)
    with pytest.raises(openai.InternalServerError):
        _ask(_client(gw), "fault-500", False)
    with pytest.raises(openai.APIStatusError) as e:
        _ask(_client(gw), "fault-500", False)
    assert e.value.status_code == 503 and e.value.code == "upstream_unavailable"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 30


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_states():
    clock = _Clock()
    b = Breaker(2, 0.05, clock)
    assert b.allow()
    b.acquire().resolve(Verdict.FAILURE)
    assert b.state() == "closed"
    b.acquire().resolve(Verdict.FAILURE)
    assert b.state() == "open" and not b.allow() and b.acquire() is None
    clock.now += 0.06
    probe = b.acquire()
    assert b.state() == "half-open" and probe is not None and probe.probe
    assert not b.allow() and b.acquire() is None  # one probe at a time
    probe.resolve(Verdict.FAILURE)
    assert b.state() == "open"
    clock.now += 0.06
    assert b.allow()
    b.acquire().resolve(Verdict.SUCCESS)
    assert b.state() == "closed" and b.allow()


def test_a_probe_that_learns_nothing_frees_the_half_open_slot():
    """A neutral end (the client left, a policy acted, the upstream said 4xx) releases the probe: the next
    request probes again instead of the target answering 503 until the worker restarts."""
    clock = _Clock()
    b = Breaker(1, 0.05, clock)
    b.acquire().resolve(Verdict.FAILURE)
    clock.now += 0.06
    probe = b.acquire()
    assert probe is not None and b.acquire() is None
    probe.resolve(Verdict.NEUTRAL)
    assert b.state() == "half-open" and b.failures == 1
    again = b.acquire()
    assert again is not None and again.probe
    again.resolve(Verdict.SUCCESS)
    assert b.state() == "closed"


def test_a_permit_resolves_once():
    b = Breaker(1, 30.0, _Clock())
    p = b.acquire()
    p.resolve(Verdict.FAILURE)
    p.resolve(Verdict.FAILURE)
    p.resolve(Verdict.SUCCESS)
    assert b.failures == 1 and b.state() == "open"


def test_loadbalance_spreads_by_weight():
    from fastgw.app import build_targets
    from fastgw.config import Config, Pack, Providers, Route, Target
    from fastgw.routing import Router
    import random
    cfg = Config(pack=Pack(name="t"), providers=Providers(targets=[
        Target(id="a", provider="openai", model="m", base_url="http://a/v1", weight=3),
        Target(id="b", provider="openai", model="m", base_url="http://b/v1", weight=1)]),
        routing=[Route(model="m", targets=["a", "b"], strategy="loadbalance")])
    r = Router(cfg, build_targets(cfg, {}), random.Random(7))
    firsts = [r.plan("m").targets[0].id for _ in range(4000)]
    share = firsts.count("a") / len(firsts)
    assert 0.7 < share < 0.8
    assert all(len(r.plan("m").targets) == 2 for _ in range(10))


@pytest.mark.parametrize("chain", [False, True])
def test_error_as_the_first_event_falls_back(gateway_factory, upstream, chain):
    from tests.support.scripted_upstream import ScriptedUpstream
    bad = ScriptedUpstream()
    try:
        key = "hello"
        bad.scripts[key] = [b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n']
        cfg = _cfg([_target("bad", "m", bad.url), _target("good", "gpt-test", upstream.url, aliases=["m"])],
                   [{"model": "m", "targets": ["bad", "good"], "retry": {"attempts": 1}}])
        if chain:
            cfg["policies"] = {"chain": ["pii-detector"]}
        gw = gateway_factory.start(cfg)
        assert "Echo: hello" in _ask(_client(gw), "m", True)
    finally:
        bad.stop()


def test_heartbeats_while_waiting_then_the_timeout_is_in_stream(gateway_factory, upstream):
    import socket

    import orjson
    gw = gateway_factory.start(_cfg([_target("slow", "fault-hang", upstream.url,
                                             timeouts={"ttft": 1.0, "heartbeat": 0.2})]))
    s = socket.create_connection((gw.host, gw.port), timeout=10)
    body = orjson.dumps({"model": "fault-hang", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        assert chunk
        data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert data.count(b": ping\n\n") >= 3  # comments only: SDKs skip them
    assert b'"code":"upstream_timeout"' in data and data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
