"""The gateways the conformance cases go to (`cases.Case.gateway`), each started the first time a case needs it, in
front of every provider's mock (`tests/providers/stack.py`), the OpenAI-compatible mock upstream, the built-in mock
and an upstream whose errors lack `param` and `code` (`ScriptedUpstream` answers 404 so to an unscripted request)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conformance.cases import BARE_ERRORS_MODEL, FORBIDDEN_MODEL, GUARDED_KEY
from tests.conftest import GatewayFactory
from tests.providers.stack import NO_BREAKER, Stacks, gw_config, gw_env
from tests.support.procs import Gateway, Upstream, start_upstream
from tests.support.scripted_upstream import ScriptedUpstream


def _targets(openai_url: str, bare_url: str) -> list[dict]:
    openai = [{"id": m, "provider": "openai", "model": m, "base_url": openai_url, "circuit_breaker": NO_BREAKER}
              for m in ("gpt-test", "instruct-test", "text-embedding-test", "fault-500", "fault-429",
                        "fault-close-midstream")]
    return openai + [
        {"id": "bare", "provider": "openai", "model": BARE_ERRORS_MODEL, "base_url": bare_url,
         "circuit_breaker": NO_BREAKER},
        {"id": "mock", "provider": "mock", "model": "mock-1"},
        {"id": "mock-pii", "provider": "mock", "model": "mock-pii",
         "mock": {"text": "Sure, write to alice.smith@example.com and I will answer."}},
        {"id": "mock-forbidden", "provider": "mock", "model": FORBIDDEN_MODEL},
    ]


class Gateways:
    """The mocks and the gateways of one session, started on first use."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stacks = Stacks(tmp / "stacks")
        self.factory = GatewayFactory(tmp / "gateways")
        self.openai: Upstream | None = None
        self.bare: ScriptedUpstream | None = None
        self.started: dict[str, Gateway] = {}

    def _config(self, **extra: object) -> tuple[dict, dict]:
        mocks = self.stacks.start_mocks()
        if self.openai is None:
            self.openai = start_upstream()
        if self.bare is None:
            self.bare = ScriptedUpstream()
        config = gw_config(mocks, **extra)
        config["providers"]["targets"] += _targets(self.openai.url, self.bare.url)
        return config, gw_env(mocks)

    def _start(self, name: str) -> Gateway:
        if name == "plain":
            config, env = self._config()
        elif name in ("redact", "block"):
            config, env = self._config(policies={"chain": ["pii-detector"]},
                                       policy={"pii-detector": {"action": name, "apply_to": ["output"]}})
        elif name == "guarded":
            digest = hashlib.sha256(GUARDED_KEY.encode()).hexdigest()
            config, env = self._config(
                state={"backend": "local", "path": str(self.tmp / "state")},
                policies={"chain": ["rbac", "rate-limiter"]},
                policy={"rbac": {"keys": [{"name": "team", "sha256": digest, "roles": ["user"]}],
                                 "roles": {"user": {"models": ["mock-1", "gpt-*"]}}},
                        "rate-limiter": {"completion_reserve": 16,
                                         "limits": [{"name": "tokens", "tokens_per_minute": 1000}]}})
        else:
            raise KeyError(name)
        return self.factory.start(config, env=env)

    def get(self, name: str) -> Gateway:
        if name not in self.started:
            self.started[name] = self._start(name)
        return self.started[name]

    def close(self) -> None:
        self.factory.close()
        self.stacks.close()
        if self.openai is not None:
            self.openai.stop()
        if self.bare is not None:
            self.bare.stop()
