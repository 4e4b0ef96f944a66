"""/v1/responses (OpenAI Responses API) and /v1/messages (Anthropic Messages API) through the gateway, with the
official SDKs, plain and with the policy chain acting on their own event shapes."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import gateway_config


def _cfg(url: str, pii: dict | None = None) -> dict:
    cfg = gateway_config(url)
    if pii is not None:
        cfg["policies"] = {"chain": ["pii-detector"]}
        cfg["policy"] = {"pii-detector": pii}
    return cfg


def test_responses_api_stream_and_not(gateway_factory, upstream):
    gw = gateway_factory.start(_cfg(upstream.url))
    c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    r = c.responses.create(model="gpt-test", input="hello there")
    assert "Echo: hello there" in r.output_text
    events = list(c.responses.create(model="gpt-test", input="hello there", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith("Echo: hello there")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with c.responses.stream(model="gpt-test", input="stream helper") as s:
        final = s.get_final_response()
    assert "Echo: stream helper" in final.output_text


def test_responses_api_redaction_and_block(gateway_factory, upstream):
    gw = gateway_factory.start(_cfg(upstream.url, {"action": "redact", "apply_to": ["output"]}))
    c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    events = list(c.responses.create(model="gpt-test", input="mail jane.doe@example.org now", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "jane.doe@example.org" not in text and "[REDACTED:EMAIL]" in text
    done = [e for e in events if e.type == "response.output_text.done"][0]
    assert done.text == text  # events repeating the whole text carry the redacted one
    completed = [e for e in events if e.type == "response.completed"][0]
    assert completed.response.output_text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    r = c.responses.create(model="gpt-test", input="mail jane.doe@example.org now")
    assert "jane.doe@example.org" not in r.output_text and "[REDACTED:EMAIL]" in r.output_text

    gwb = gateway_factory.start(_cfg(upstream.url, {"action": "block", "apply_to": ["output"]}))
    cb = openai.OpenAI(base_url=gwb.url, api_key="x", max_retries=0, timeout=20)
    events = list(cb.responses.create(model="gpt-test", input="mail jane.doe@example.org now", stream=True))
    assert events[-1].type == "error" and events[-1].code == "output_blocked"
    assert events[-1].sequence_number == events[-2].sequence_number + 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "jane" not in text and text.startswith("Echo: mail ")


def test_responses_only_for_openai_targets(gateway_factory, upstream):
    gw = gateway_factory.start(_cfg(upstream.url))
    c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="mock-1", input="x")
    assert e.value.code == "unsupported_endpoint"
