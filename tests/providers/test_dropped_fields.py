"""The dropped-field log (`fastgw.providers.ir.note_dropped`): one INFO line per (provider, field) per worker,
and bounded. Field names are the client's choice, so neither the remembered set nor the log may grow with what
clients send (defect 3 of issue 13: bedrock's copy of the helper had lost the cap, so 5,000 requests with new
field names left 5,000 entries and wrote 5,000 lines)."""

from __future__ import annotations

import logging

import orjson
import pytest

from fastgw.providers import adapter_for
from fastgw.providers.base import TargetRuntime

CAP = 256
TARGETS = {
    "bedrock": TargetRuntime(id="b", provider="bedrock", model="m", base_url="http://127.0.0.1:1", api_key="k"),
    "anthropic": TargetRuntime(id="a", provider="anthropic", model="m", base_url="http://127.0.0.1:1", api_key="k"),
    "gemini": TargetRuntime(id="g", provider="gemini", model="m", base_url="http://127.0.0.1:1", api_key="k"),
}


def _build(provider: str, body: dict) -> dict:
    r = adapter_for(provider).build_request(TARGETS[provider], "chat/completions", body, False)
    return orjson.loads(r.body)


@pytest.fixture
def fresh_notes(monkeypatch):
    """An empty remembered set, as in a new worker (restored afterwards)."""
    from fastgw.providers import ir
    monkeypatch.setattr(ir, "_noted", set())
    return ir


@pytest.mark.parametrize("provider", ["bedrock", "anthropic", "gemini"])
def test_client_chosen_unknown_fields_leave_bounded_memory_and_log(provider, caplog, monkeypatch):
    """5,000 requests, each with a new unknown field: at most 256 log lines and 256 remembered entries."""
    try:
        from fastgw.providers import ir
        monkeypatch.setattr(ir, "_noted", set())
    except ImportError:  # the original code (d2aab78) has no shared helper: the log count below still applies
        ir = None
    with caplog.at_level(logging.INFO, logger=f"fastgw.providers.{provider}"):
        for i in range(5000):
            out = _build(provider, {"model": "m", "messages": [{"role": "user", "content": "hi"}], f"x_field_{i}": 1})
            assert f"x_field_{i}" not in out
    lines = [r for r in caplog.records if r.name == f"fastgw.providers.{provider}"]
    assert 0 < len(lines) <= CAP
    assert all(r.levelno == logging.INFO for r in lines)
    assert ir is not None and 0 < len(ir._noted) <= CAP


def test_once_per_provider_and_field_and_nothing_past_the_cap(fresh_notes, caplog):
    ir = fresh_notes
    with caplog.at_level(logging.INFO, logger="fastgw.providers"):
        ir.note_dropped("cohere", "seed")
        ir.note_dropped("cohere", "seed")
        ir.note_dropped("ollama", "seed")  # another provider: its own note
        assert [r.getMessage() for r in caplog.records] == [
            "cohere: 'seed' has no cohere counterpart and is dropped",
            "ollama: 'seed' has no ollama counterpart and is dropped"]
        assert [r.name for r in caplog.records] == ["fastgw.providers.cohere", "fastgw.providers.ollama"]
        for i in range(CAP * 2):
            ir.note_dropped("bedrock", f"f{i}")
    assert len(ir._noted) == CAP
    assert len(caplog.records) == CAP
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fastgw.providers"):
        ir.note_dropped("bedrock", "one more")
    assert caplog.records == [] and ("bedrock", "one more") not in ir._noted


def test_names_are_cut_and_quoted_in_the_log(fresh_notes, caplog):
    """A client-chosen name cannot forge a log line (repr quotes line ends) nor flood one (64 characters)."""
    ir = fresh_notes
    with caplog.at_level(logging.INFO, logger="fastgw.providers.anthropic"):
        ir.note_dropped("anthropic", "evil\nFAKE LOG LINE" + "x" * 500)
    [msg] = [r.getMessage() for r in caplog.records]
    assert "\n" not in msg and len(msg) < 200


@pytest.mark.parametrize("provider", ["cohere", "ollama"])
def test_cohere_and_ollama_log_once_at_info(provider, fresh_notes, caplog):
    """They logged at DEBUG on every request; now once per field, at INFO, like every provider."""
    target = TargetRuntime(id="t", provider=provider, model="m", base_url="http://127.0.0.1:1")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 2}, "user": "u"}
    with caplog.at_level(logging.DEBUG, logger=f"fastgw.providers.{provider}"):
        for _ in range(3):
            adapter_for(provider).build_request(target, "chat/completions", body, False)
    lines = [r for r in caplog.records if r.name == f"fastgw.providers.{provider}"]
    assert sorted(r.getMessage() for r in lines) == [
        f"{provider}: 'logit_bias' has no {provider} counterpart and is dropped",
        f"{provider}: 'user' has no {provider} counterpart and is dropped"]
    assert all(r.levelno == logging.INFO for r in lines)
