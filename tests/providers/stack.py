"""The process tier of the provider tests: the five wire-format mocks (`tests/support/mock_*.py`) and the gateways in
front of them, started once per session and only when a test asks (the fixtures are in `conftest.py`).

One gateway serves every provider: each provider's targets are in it (the models and aliases are all different, so
no target falls back to another). Every target keeps its circuit closed: these tests provoke many upstream
429/5xx answers on one gateway, and an upstream 4xx is neutral for the breaker (it does not reset the failure
count)."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import openai
import orjson

from tests.conftest import GatewayFactory
from tests.support import mock_bedrock
from tests.support.procs import Gateway, Upstream, start_upstream

PROVIDERS = ("anthropic", "cohere", "ollama", "gemini", "bedrock")
#: The key the client gives the gateway: it must never reach an upstream.
CLIENT_KEY = "sk-client-secret"
NO_BREAKER = {"failures": 1000}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": mock_bedrock.ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": mock_bedrock.SECRET_KEY,
    "AWS_SESSION_TOKEN": mock_bedrock.SESSION_TOKEN,
    # Hermetic: no profile files, no instance metadata probing.
    "AWS_CONFIG_FILE": "/nonexistent/fastgw-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/fastgw-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class Provider:
    """A provider as the gateway tests see it: its mock, its targets' settings, the secrets the gateway gets."""

    name: str
    model: str  # what a client asks for by default
    targets: tuple[dict, ...]  # target settings without base_url and circuit_breaker
    env: dict = field(default_factory=dict)

    def target_configs(self, base: str) -> list[dict]:
        return [{**t, "base_url": base, "circuit_breaker": NO_BREAKER} for t in self.targets]


SPECS = {p.name: p for p in (
    Provider("anthropic", "claude-sonnet-4-5", (
        {"id": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5",
         "secret_key_ref": {"env": "FASTGW_TEST_ANTHROPIC_KEY"}},), {"FASTGW_TEST_ANTHROPIC_KEY": "sk-ant-test-key"}),
    Provider("cohere", "command-a-03-2025", (
        {"id": "co", "provider": "cohere", "model": "command-a-03-2025", "aliases": ["command-a"],
         "secret_key_ref": {"env": "FASTGW_TEST_COHERE_KEY"}},), {"FASTGW_TEST_COHERE_KEY": "co-test-key"}),
    Provider("ollama", "llama3.2", (
        {"id": "local", "provider": "ollama", "model": "llama3.2", "aliases": ["local-llama"],
         "secret_key_ref": {"env": "FASTGW_TEST_OLLAMA_KEY"}},), {"FASTGW_TEST_OLLAMA_KEY": "ollama-proxy-key"}),
    Provider("gemini", "gemini-2.5-flash", (
        {"id": "gem", "provider": "gemini", "model": "gemini-2.5-flash",
         "secret_key_ref": {"env": "FASTGW_TEST_GEMINI_KEY"}},), {"FASTGW_TEST_GEMINI_KEY": "gm-test-key-123"}),
    Provider("bedrock", "claude-bedrock", (
        {"id": "br", "provider": "bedrock", "model": "anthropic.claude-3-5-sonnet-20240620-v1:0",
         "aliases": ["claude-bedrock"], "region": "us-east-1"},
        {"id": "br-key", "provider": "bedrock", "model": "amazon.nova-lite-v1:0", "region": "us-east-1",
         "secret_key_ref": {"env": "FASTGW_TEST_BEDROCK_API_KEY"}}),
        {**AWS_ENV, "FASTGW_TEST_BEDROCK_API_KEY": mock_bedrock.API_KEY}),
)}


def gw_config(mocks: dict[str, Upstream], **extra) -> dict:
    """A gateway config with the targets of every provider in `mocks`, each on its mock."""
    targets = [t for name, up in mocks.items() for t in SPECS[name].target_configs(up.base)]
    return {"pack": {"name": "t"}, "providers": {"targets": targets}, **extra}


def gw_env(names) -> dict:
    return {k: v for name in names for k, v in SPECS[name].env.items()}


def ask(text: str, system: str | None = "Be brief.") -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def last(mock: Upstream) -> dict:
    """What the mock recorded of the last model request: `{"path", "headers", "body", ...}`."""
    with urllib.request.urlopen(mock.base + "/_last", timeout=10) as r:
        return json.loads(r.read())


def client_for(gw: Gateway, api_key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=api_key, max_retries=0, timeout=20)


def raw_post(gw: Gateway, body: dict, timeout: float = 10) -> bytes:
    """The exact bytes of a chat completion's answer body (to look at every byte of a stream)."""
    rq = urllib.request.Request(gw.url + "/chat/completions", data=orjson.dumps(body), method="POST",
                                headers={"content-type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(rq, timeout=timeout) as r:
        raw = r.read()
    assert time.monotonic() - t0 < timeout
    return raw


def stream_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finishes(chunks) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


class Stacks:
    """The mocks and gateways of one test session, each started the first time a test needs it."""

    def __init__(self, tmp: Path) -> None:
        self.factory = GatewayFactory(tmp)
        self.mocks: dict[str, Upstream] = {}
        self.gateways: dict[tuple[str, ...], Gateway] = {}

    def start_mocks(self) -> dict[str, Upstream]:
        if not self.mocks:
            with ThreadPoolExecutor(len(PROVIDERS)) as pool:
                started = pool.map(lambda n: start_upstream(module=f"tests.support.mock_{n}"), PROVIDERS)
                self.mocks.update(zip(PROVIDERS, started))
        return self.mocks

    def mock(self, name: str) -> Upstream:
        return self.start_mocks()[name]

    def gateway(self, *chain: str) -> Gateway:
        """The gateway in front of every mock, with this policy chain (none by default)."""
        if chain not in self.gateways:
            mocks = self.start_mocks()
            extra = {"policies": {"chain": list(chain)}} if chain else {}
            self.gateways[chain] = self.factory.start(gw_config(mocks, **extra), env=gw_env(mocks))
        return self.gateways[chain]

    def close(self) -> None:
        self.factory.close()
        for up in self.mocks.values():
            up.stop()
        self.mocks.clear()
