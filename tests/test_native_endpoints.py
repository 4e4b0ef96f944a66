"""/v1/responses (OpenAI Responses API) and /v1/messages (Anthropic Messages API) through the gateway, with the
official SDKs, plain and with the policy chain acting on their own event shapes."""

from __future__ import annotations

import openai
import orjson
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


def test_responses_served_for_every_target(gateway_factory, upstream):
    """The built-in mock has no Responses API of its own: the gateway serves it through chat completions."""
    gw = gateway_factory.start(_cfg(upstream.url))
    c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    r = c.responses.create(model="mock-1", input="x")
    assert r.status == "completed" and r.output_text.startswith("This is fastgw's built-in mock model.")


def test_responses_pass_through_cut_continues_the_sequence(gateway_factory, upstream):
    """An upstream that cuts a pass-through Responses stream: the error event we add continues the sequence numbers
    (no output policy runs: the plain relay reads the last one from the bytes)."""
    gw = gateway_factory.start(_cfg(upstream.url))
    c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    events = list(c.responses.create(model="fault-close-midstream", input="hello", stream=True))
    assert events[-1].type == "error" and events[-1].code == "upstream_disconnected"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events].count("response.output_text.delta") == 3


# ---- /v1/messages with the anthropic SDK ---------------------------------------------------------

@pytest.fixture(scope="module")
def anthropic_mock():
    import subprocess
    import sys

    from tests.support.procs import REPO_ROOT, _stop_process
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.mock_anthropic", "--host", "127.0.0.1", "--port",
                             "0"], cwd=str(REPO_ROOT), stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("LISTENING "), line
    yield f"http://127.0.0.1:{int(line.split()[1])}"
    _stop_process(proc, timeout=5)


def _anthropic_cfg(base: str, pii: dict | None = None) -> dict:
    cfg = {"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "claude", "provider": "anthropic", "model": "claude-gateway-test", "base_url": base,
         "secret_key_ref": {"env": "FASTGW_ANTHROPIC_KEY"}}]}}
    if pii is not None:
        cfg["policies"] = {"chain": ["pii-detector"]}
        cfg["policy"] = {"pii-detector": pii}
    return cfg


def test_messages_api_with_the_anthropic_sdk(gateway_factory, anthropic_mock):
    import anthropic
    gw = gateway_factory.start(_anthropic_cfg(anthropic_mock), env={"FASTGW_ANTHROPIC_KEY": "sk-ant-test"})
    client = anthropic.Anthropic(base_url=gw.base, api_key="client-key-not-forwarded", max_retries=0, timeout=20)
    msg = client.messages.create(model="claude-gateway-test", max_tokens=100,
                                 messages=[{"role": "user", "content": "text"}])
    assert msg.content[0].type == "text" and msg.content[0].text
    with client.messages.stream(model="claude-gateway-test", max_tokens=100,
                                messages=[{"role": "user", "content": "text"}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed and final.content[0].text == streamed
    with client.messages.stream(model="claude-gateway-test", max_tokens=100,
                                messages=[{"role": "user", "content": "tools"}]) as s:
        final = s.get_final_message()
    assert any(b.type == "tool_use" for b in final.content)
    import urllib.request
    seen = orjson.loads(urllib.request.urlopen(anthropic_mock + "/_last", timeout=5).read())
    assert seen["headers"]["x-api-key"] == "sk-ant-test"


def test_messages_api_redaction_and_block(gateway_factory, anthropic_mock):
    import anthropic
    gw = gateway_factory.start(_anthropic_cfg(anthropic_mock, {"action": "redact", "apply_to": ["output"]}),
                               env={"FASTGW_ANTHROPIC_KEY": "sk-ant-test"})
    client = anthropic.Anthropic(base_url=gw.base, api_key="x", max_retries=0, timeout=20)
    with client.messages.stream(model="claude-gateway-test", max_tokens=100,
                                messages=[{"role": "user", "content": "email"}]) as s:
        text = "".join(s.text_stream)
    assert "[REDACTED:EMAIL]" in text and "@" not in text
    gwb = gateway_factory.start(_anthropic_cfg(anthropic_mock, {"action": "block", "apply_to": ["output"]}),
                                env={"FASTGW_ANTHROPIC_KEY": "sk-ant-test"})
    cb = anthropic.Anthropic(base_url=gwb.base, api_key="x", max_retries=0, timeout=20)
    got = ""
    with pytest.raises(anthropic.APIStatusError) as e:
        with cb.messages.stream(model="claude-gateway-test", max_tokens=100,
                                messages=[{"role": "user", "content": "email"}]) as s:
            for t in s.text_stream:
                got += t
    assert "@" not in got
    # Only Anthropic's own error types in the stream (its SDKs lose the message on any other).
    assert e.value.body["error"] == {"type": "invalid_request_error", "message": "Stream terminated: PII detected"}
