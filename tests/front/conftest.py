"""The process tier of the front tests: the five wire-format mocks (`tests/support/mock_*.py`), the OpenAI-compatible
test upstream (`tests/support/upstream.py`, as a `vllm` and an `openai` target) and the built-in mock, behind
gateways started once per session: `plain` (no policies), `redact` and `block` (pii-detector on input and
output), and `guarded` (rbac and a rate-limiter, on the built-in mock).

`TARGETS` says, per target, how to make its upstream answer each case: the model, and the last user message
that picks each mock's scenario (a `model:` prefix names a model instead: the OpenAI-compatible upstream picks
its faults by model)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.providers.stack import NO_BREAKER, Stacks, gw_config, gw_env
from tests.support.procs import Gateway, Upstream, start_upstream

#: The key the `guarded` gateway knows, with a role that may use /v1/messages on the mock (one request a minute),
#: and one whose role may use chat completions only.
KEY, CHAT_KEY = "fgw-front-key", "fgw-front-chat-key"


@dataclass(frozen=True)
class Target:
    model: str
    text: str  # a plain text answer
    tools: str | None  # a call of get_weather (the request offers it)
    length: str  # an answer cut at the token limit (`limit` tokens asked, or 64)
    limit: int | None = None
    http: str | None = None  # an upstream HTTP error before any byte, of status `status`
    status: int = 0
    cut: str | None = None  # an upstream failure after some text
    email: str | None = None  # an answer holding an email address
    native_messages: bool = False

    def ask(self, scenario: str) -> tuple[str, str]:
        """(model, last user message) for a scenario."""
        if scenario.startswith("model:"):
            return scenario[len("model:"):], "hello"
        return self.model, scenario


COMPAT = dict(text="hello", tools="what is the weather?", length="hello", limit=3,
              email="mail jane.doe@example.org now")
TARGETS = {
    "anthropic": Target("claude-sonnet-4-5", "text", "tools", "max_tokens", None, "http-529", 529, "error", "email",
                        native_messages=True),
    "cohere": Target("command-a-03-2025", "text", "tools", "max_tokens", None, "http-500", 500, "error", "email"),
    "ollama": Target("llama3.2", "text", "tools", "length", 4, "http-503", 503, "error", "email"),
    "gemini": Target("gemini-2.5-flash", "fixture:text", "fixture:tool_call", "fixture:max_tokens", None, "http:503",
                     503, "fixture:error_midstream", "fixture:email_split"),
    "bedrock": Target("claude-bedrock", "text", "tool", "finish:max_tokens", None, "error500", 500, "instream-error",
                      "email"),
    "compat": Target("compat-gpt", http="model:fault-500", status=500, cut="model:fault-close-midstream", **COMPAT),
    "openai": Target("openai-gpt", **COMPAT),
    "mock": Target("mock-1", "hello", None, "hello", 3),
}


def _extra_targets(up: Upstream) -> list[dict]:
    compat = {"provider": "vllm", "base_url": up.url, "circuit_breaker": NO_BREAKER}
    return [{"id": "compat", "model": "gpt-test", "aliases": ["compat-gpt"], **compat},
            {"id": "openai", "provider": "openai", "model": "gpt-test", "aliases": ["openai-gpt"], "base_url": up.url,
             "circuit_breaker": NO_BREAKER},
            {"id": "compat-500", "model": "fault-500", **compat},
            {"id": "compat-cut", "model": "fault-close-midstream", **compat},
            {"id": "mock", "provider": "mock", "model": "mock-1"},
            # An anthropic target whose server answers in OpenAI's envelope (a 404 for an unknown URL).
            {"id": "not-anthropic", "provider": "anthropic", "model": "claude-elsewhere", "base_url": up.url,
             "circuit_breaker": NO_BREAKER}]


class FrontStacks(Stacks):
    """The provider tests' stacks, with the OpenAI-compatible upstream and the built-in mock added."""

    def __init__(self, tmp) -> None:
        super().__init__(tmp)
        self.up: Upstream | None = None

    def upstream(self) -> Upstream:
        if self.up is None:
            self.up = start_upstream()
        return self.up

    def front_gateway(self, name: str) -> Gateway:
        key = (f"front-{name}",)
        if key not in self.gateways:
            mocks = self.start_mocks()
            extra: dict = {}
            if name in ("redact", "block"):
                extra = {"policies": {"chain": ["pii-detector"]},
                         "policy": {"pii-detector": {"action": name, "apply_to": ["input", "output"]}}}
            cfg = gw_config(mocks, **extra)
            cfg["providers"]["targets"] += _extra_targets(self.upstream())
            if name == "guarded":
                cfg = _guarded(cfg, self.factory.tmp_dir / "state")  # its own counters: a fresh minute each run
            self.gateways[key] = self.factory.start(cfg, env=gw_env(mocks))
        return self.gateways[key]

    def close(self) -> None:
        super().close()
        if self.up is not None:
            self.up.stop()


def _guarded(cfg: dict, state: Path) -> dict:
    def digest(k: str) -> str:
        return hashlib.sha256(k.encode()).hexdigest()
    return {**cfg, "state": {"backend": "local", "path": str(state)},
            "policies": {"chain": ["rbac", "rate-limiter"]}, "policy": {
        "rbac": {"keys": [{"name": "front", "sha256": digest(KEY), "roles": ["messages"]},
                          {"name": "chat", "sha256": digest(CHAT_KEY), "roles": ["chat"]}],
                 "roles": {"messages": {"models": ["mock-*"], "endpoints": ["/v1/messages*"]},
                           "chat": {"models": ["*"], "endpoints": ["/v1/chat/completions"]}}},
        "rate-limiter": {"limits": [{"name": "per-key", "per": "key", "requests_per_minute": 1}]}}}


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontStacks]:
    s = FrontStacks(tmp_path_factory.mktemp("front"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def gw(stacks: FrontStacks) -> Gateway:
    return stacks.front_gateway("plain")
