"""pii-detector through the real gateway process: streamed redaction and blocking under any split of the upstream
stream, the real openai SDK's view of a block, input redaction and refusal, non-streamed answers."""

from __future__ import annotations

import socket

import h11
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from fastgw.config import PiiDetector
from fastgw.policy.pii import PiiPolicy
from fastgw.proto.sse import SSEDecoder
from fastgw.scan.scanner import find_spans
from tests.conftest import GatewayFactory, gateway_config
from tests.support.sse_streams import build_stream, streams
from tests.support.scripted_upstream import ScriptedUpstream, script_key


def _pii_config(upstream_url: str, **pii) -> dict:
    cfg = gateway_config(upstream_url)
    cfg["policies"] = {"chain": ["pii-detector"]}
    cfg["policy"] = {"pii-detector": pii}
    return cfg


@pytest.fixture(scope="module")
def scripted():
    up = ScriptedUpstream()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    f = GatewayFactory(tmp_path_factory.mktemp("pii"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def redact_gw(scripted, factory):
    return factory.start(_pii_config(scripted.url, action="redact"), workers=1)


@pytest.fixture(scope="module")
def block_gw(scripted, factory):
    return factory.start(_pii_config(scripted.url, action="block"), workers=1)


def _local(action: str) -> PiiPolicy:
    p = PiiPolicy(PiiDetector(action=action))
    p.allocate_scratch()
    return p


LOCAL = {"redact": None, "block": None}


def local(action: str) -> PiiPolicy:
    if LOCAL[action] is None:
        LOCAL[action] = _local(action)
    return LOCAL[action]  # type: ignore[return-value]


def _stream_through(gw, key: str) -> bytes:
    """POST a streamed chat whose last user message is `key`; return the SSE body bytes as received."""
    conn = h11.Connection(h11.CLIENT)
    body = orjson.dumps({"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": key}]})
    s = socket.create_connection((gw.host, gw.port), timeout=10)
    s.sendall(conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=[
        ("host", "x"), ("content-type", "application/json"), ("content-length", str(len(body)))])))
    s.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    out = b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(s.recv(65536))
        elif isinstance(ev, h11.Response):
            assert ev.status_code == 200
        elif isinstance(ev, h11.Data):
            out += bytes(ev.data)
        elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    s.close()
    return out


def _content(body: bytes) -> tuple[str, list[dict]]:
    text, errors = "", []
    for e in SSEDecoder().feed(body):
        if not e.data or e.data == "[DONE]":
            continue
        obj = orjson.loads(e.data)
        if "error" in obj:
            errors.append(obj["error"])
            continue
        for ch in obj["choices"]:
            text += ch["delta"].get("content") or ""
    return text, errors


def _wire_pieces(wire: bytes, cuts: list[int]) -> list[bytes]:
    out, prev = [], 0
    for c in sorted(set(cuts)) + [len(wire)]:
        if c > prev:
            out.append(wire[prev:c])
            prev = c
    return out


def test_script_keys_pass_every_detector_unchanged():
    """The keys that pick a scripted answer are never redacted on the way up (a uuid's hex once was: a phone)."""
    pol = local("redact")
    keys = [script_key().encode() for _ in range(5000)]
    assert len(set(keys)) == len(keys)
    assert [k for k in keys if find_spans(pol.db, k)] == []
    assert find_spans(pol.db, b"0674477154f44552917b590550fe9eb3")  # the hex key that failed CI: a phone to it


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(streams())
def test_gateway_redacts_any_split_like_the_whole_text(redact_gw, scripted, s):
    text, _pieces, wire, cuts = s
    key = script_key()
    scripted.scripts[key] = _wire_pieces(wire, cuts)
    got = _stream_through(redact_gw, key)
    pol = local("redact")
    data = text.encode()
    spans = find_spans(pol.db, data)
    content, errors = _content(got)
    assert not errors
    assert content == pol.redact(data, spans).decode()
    for sp in spans:
        value = data[sp.start:sp.end]
        if data.count(value) == 1:  # (the same bytes may also stand undetected elsewhere, e.g. glued to a word)
            assert value not in got
    assert got.endswith(b"data: [DONE]\n\n")


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(streams())
def test_gateway_blocks_before_any_byte_of_a_span(block_gw, scripted, s):
    text, _pieces, wire, cuts = s
    key = script_key()
    scripted.scripts[key] = _wire_pieces(wire, cuts)
    got = _stream_through(block_gw, key)
    data = text.encode()
    spans = find_spans(local("block").db, data)
    content, errors = _content(got)
    if not spans:
        assert not errors and content == text
        return
    assert content.encode() == data[:spans[0].start]
    assert errors == [{"message": "Stream terminated: PII detected", "type": "policy_violation",
                       "code": "output_blocked", "param": None, "policy": "pii-detector"}]
    assert got.endswith(b"data: [DONE]\n\n")
    first = data[spans[0].start:spans[0].end]
    if data.count(first) == 1:
        assert first not in got


def test_openai_sdk_sees_the_block_as_api_error(block_gw, scripted):
    key = script_key()
    scripted.scripts[key] = [build_stream(["Sure, my card is 4111 ", "1111 1111 1111", " and more"])]
    client = openai.OpenAI(base_url=block_gw.url, api_key="x", max_retries=0, timeout=20)
    text = ""
    with pytest.raises(openai.APIError) as exc:
        for chunk in client.chat.completions.create(model="gpt-test", stream=True,
                                                    messages=[{"role": "user", "content": key}]):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "Sure, my card is "
    assert exc.value.body == {"message": "Stream terminated: PII detected", "type": "policy_violation",
                              "code": "output_blocked", "param": None, "policy": "pii-detector"}


def test_openai_sdk_streams_redacted_text(redact_gw, scripted):
    key = script_key()
    scripted.scripts[key] = _wire_pieces(build_stream(["Mail joe.bl", "oggs@exam", "ple.com or call +44 20 ",
                                                       "7946 0958."]), list(range(0, 2000, 3)))
    client = openai.OpenAI(base_url=redact_gw.url, api_key="x", max_retries=0, timeout=20)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-test", stream=True, messages=[{"role": "user", "content": key}]) if c.choices)
    assert text == "Mail [REDACTED:EMAIL] or call [REDACTED:PHONE]."


def test_input_redaction_and_input_block(gateway_factory, upstream):
    gw = gateway_factory.start(_pii_config(upstream.url, action="redact", apply_to=["input"]))
    client = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    client.chat.completions.create(model="gpt-test", messages=[
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": [{"type": "text", "text": "my ssn is 123-45-6789"}]},
        {"role": "user", "content": "reach me at jane@example.org"}])
    sent = upstream.last("/v1/chat/completions")["body"]["messages"]
    assert sent[1]["content"][0]["text"] == "my ssn is [REDACTED:US_SSN]"
    assert sent[2]["content"] == "reach me at [REDACTED:EMAIL]"
    assert sent[0]["content"] == "be nice"

    gw2 = gateway_factory.start(_pii_config(upstream.url, action="block", apply_to=["input"]))
    before = upstream.count("/v1/chat/completions")
    client2 = openai.OpenAI(base_url=gw2.url, api_key="x", max_retries=2, timeout=20)
    with pytest.raises(openai.ConflictError) as exc:
        client2.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "ssn 123-45-6789"}])
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert exc.value.body["code"] == "input_blocked" and exc.value.body["policy"] == "pii-detector"
    assert upstream.count("/v1/chat/completions") == before  # refused before any upstream call, no retries


def test_non_streamed_output_redaction_and_block(gateway_factory, upstream):
    gw = gateway_factory.start(_pii_config(upstream.url, action="redact", apply_to=["output"]))
    client = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    r = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "jane@example.org"}])
    assert "jane@example.org" not in r.choices[0].message.content
    assert "[REDACTED:EMAIL]" in r.choices[0].message.content
    # the upstream saw the original (input is not in apply_to)
    assert upstream.last("/v1/chat/completions")["body"]["messages"][0]["content"] == "jane@example.org"

    gw2 = gateway_factory.start(_pii_config(upstream.url, action="block", apply_to=["output"]))
    client2 = openai.OpenAI(base_url=gw2.url, api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.ConflictError) as exc:
        client2.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "jane@example.org"}])
    assert exc.value.body["code"] == "output_blocked"
    assert exc.value.response.headers["x-should-retry"] == "false"


# ---- every decision counted (issue 14) ---------------------------------------------------------------------

def test_streamed_redactions_are_counted_in_metrics_and_audit(gateway_factory, upstream, tmp_path):
    """A realtime stream whose output was redacted: one decision per policy and entity with the count, in
    fastgw_policy_decisions_total{policy, action, entity} and in the audit record (never the value)."""
    import json
    import time
    import urllib.request

    d = tmp_path / "audit"
    cfg = gateway_config(upstream.url)
    cfg["policies"] = {"chain": ["pii-detector", "audit-logger"]}
    cfg["policy"] = {"pii-detector": {"action": "redact", "apply_to": ["output"]},
                     "audit-logger": {"path": str(d), "fsync": "never"}}
    gw = gateway_factory.start(cfg, workers=1)
    c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    text = ""
    for ch in c.chat.completions.create(model="gpt-test", stream=True, messages=[
            {"role": "user", "content": "mail jane.doe@example.org or bob@example.com"}]):
        if ch.choices:
            text += ch.choices[0].delta.content or ""
    assert "jane.doe@example.org" not in text and text.count("[REDACTED:EMAIL]") == 2
    recs = [json.loads(line) for f in sorted(d.glob("audit-*.jsonl")) for line in f.read_text().splitlines()
            if line.strip()]
    assert len(recs) == 1
    out = [x for x in recs[0]["decisions"] if x["phase"] == "output"]
    assert out == [{"policy": "pii-detector", "phase": "output", "outcome": "redact",
                    "detail": {"entity": "EMAIL", "count": 2}}]
    raw = "\n".join(f.read_text() for f in d.glob("*.jsonl"))
    assert "jane.doe@example.org" not in raw and "bob@example.com" not in raw
    want = 'fastgw_policy_decisions_total{action="redact",entity="EMAIL",policy="pii-detector"}'
    body = ""
    for _ in range(50):
        body = urllib.request.urlopen(gw.base + "/metrics", timeout=10).read().decode()
        if want in body:
            break
        time.sleep(0.2)
    line = [ln for ln in body.splitlines() if ln.startswith(want)]
    assert line and float(line[0].rsplit(" ", 1)[1]) >= 1, body[-2000:]
