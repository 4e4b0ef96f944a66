"""The Node clients users drive the gateway with, through a real gateway to three kinds of target.

The clients are the Vercel AI SDK (its OpenAI provider's default model, which speaks `/v1/responses`; its
`.chat()` model; the OpenAI-compatible provider) and the official openai-node SDK (chat completions and
responses), at the versions `tests/node/package-lock.json` pins; `make test` installs them with `npm ci`.
`tests/node/clients.mjs` runs every case and prints one JSON result per case; each case is its own test here.

The targets: the built-in mock, an Anthropic target and a Gemini target, each on its test upstream
(`tests/support/mock_anthropic.py`, `mock_gemini.py`), which choose their answers by the last user message; and
an OpenAI target on the OpenAI test upstream (`tests/support/upstream.py`), where `/v1/responses` is passed through.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.conftest import GatewayFactory
from tests.providers.stack import SPECS
from tests.support import upstream as openai_upstream
from tests.support.procs import REPO_ROOT, Upstream, start_upstream

NODE_DIR = REPO_ROOT / "tests" / "node"
SCRIPT = NODE_DIR / "clients.mjs"
#: Written by `make test` after `npm ci` (see the Makefile): the packages match the lockfile.
STAMP = NODE_DIR / "node_modules" / ".stamp"
MIN_NODE = 20
#: The whole run's limit: each case has its own 20 s limit inside the script.
RUN_TIMEOUT = 240
CLIENT_KEY = "sk-node-client"

TOOL = "get_weather"
MOCK_TEXT = "Hello from the fastgw mock: a deterministic reply in small pieces."


@dataclass(frozen=True)
class Target:
    """A target as these tests use it: the model a client names, the prompts, what comes back."""

    model: str
    text_prompt: str
    text: str  # the whole reply to text_prompt
    tool_prompt: str
    tool_args: dict | None  # the arguments of the call; None: any arguments the tool's schema allows


TARGETS = {
    # tests/support/upstream.py echoes the prompt into a fixed reply, and calls a weather tool when asked for weather
    # (its arguments: the first enum value, "Paris" for a location).
    "openai": Target("gpt-test", "Say hello.", openai_upstream.reply_for("Say hello.", 0),
                     f"What is the weather in Paris? Use {TOOL}.", {"location": "Paris", "unit": "celsius"}),
    # The built-in mock: its reply text is configured below; the arguments of its tool calls are its own.
    "mock": Target("mock-1", "Say hello.", MOCK_TEXT, f"What is the weather in Paris? Use {TOOL}.", None),
    # mock_anthropic answers "text" (its default) with text.sse and "tools" with tools.sse (a get_weather call).
    "anthropic": Target(SPECS["anthropic"].model, "Say hello.", "Hello! How can I help you today?", "tools",
                        {"location": "San Francisco, CA", "unit": "fahrenheit"}),
    # mock_gemini echoes the prompt in 5-character events, and answers fixture:tool_call with a get_weather call.
    "gemini": Target(SPECS["gemini"].model, "Say hello.", "Echo: Say hello.", "fixture:tool_call",
                     {"location": "Paris", "unit": "celsius"}),
}
CLIENTS = ("ai-openai", "ai-openai-chat", "ai-compatible", "openai-chat", "openai-responses")
MODES = ("stream", "generate", "tool", "tool-stream")
CASES = [(t, c, m) for t in TARGETS for c in CLIENTS for m in MODES]
#: How each client says "done" for a text answer and for a tool call.
FINISH = {"ai-openai": ("stop", "tool-calls"), "ai-openai-chat": ("stop", "tool-calls"),
          "ai-compatible": ("stop", "tool-calls"), "openai-chat": ("stop", "tool_calls"),
          "openai-responses": ("completed", "completed")}


def node_problem() -> str | None:
    """Why the Node clients cannot run here, or None."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        return f"node and npm (Node {MIN_NODE}+) are needed for the Node client tests and are not on PATH"
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major = int(out.lstrip("v").split(".")[0]) if out.startswith("v") else 0
    if major < MIN_NODE:
        return f"Node {MIN_NODE}+ is needed for the Node client tests; `node --version` says {out!r}"
    lock = NODE_DIR / "package-lock.json"
    if not STAMP.exists() or STAMP.stat().st_mtime < lock.stat().st_mtime:
        return ("the Node clients are not installed from tests/node/package-lock.json: run `make test`, or "
                "`cd tests/node && npm ci --no-audit --no-fund && touch node_modules/.stamp`")
    return None


def case_id(target: str, client: str, mode: str) -> str:
    return f"{target}-{client}-{mode}"


def case_input(target: str, client: str, mode: str, gateway_url: str) -> dict:
    t = TARGETS[target]
    prompt = t.tool_prompt if mode.startswith("tool") else t.text_prompt
    return {"id": case_id(target, client, mode), "client": client, "mode": mode, "baseURL": gateway_url,
            "apiKey": CLIENT_KEY, "model": t.model, "prompt": prompt}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Every case's result, from one run of the script against one gateway in front of the three targets."""
    problem = node_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    mocks: dict[str, Upstream] = {}
    factory = GatewayFactory(tmp_path_factory.mktemp("node-sdks"))
    try:
        for name in ("anthropic", "gemini"):
            mocks[name] = start_upstream(module=f"tests.support.mock_{name}")
        mocks["openai"] = start_upstream()
        targets = [{"id": "mock", "provider": "mock", "model": "mock-1", "mock": {"text": MOCK_TEXT}},
                   {"id": "openai", "provider": "openai", "model": "gpt-test", "base_url": mocks["openai"].url}]
        targets += [t for name in ("anthropic", "gemini") for t in SPECS[name].target_configs(mocks[name].base)]
        env = {k: v for name in ("anthropic", "gemini") for k, v in SPECS[name].env.items()}
        gw = factory.start({"pack": {"name": "node-sdks"}, "providers": {"targets": targets}}, env=env)
        cases = [case_input(*c, gw.url) for c in CASES]
        proc = subprocess.run(["node", str(SCRIPT)], input=json.dumps({"cases": cases}), capture_output=True,
                              text=True, timeout=RUN_TIMEOUT, cwd=NODE_DIR, env={**os.environ, "NO_COLOR": "1"})
        assert proc.returncode == 0, f"clients.mjs exited with {proc.returncode}\n{proc.stderr}"
        out = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
        missing = sorted({case_id(*c) for c in CASES} - set(out))
        assert not missing, f"no result for {missing}\n{proc.stderr}"
        yield out
    finally:
        factory.close()
        for up in mocks.values():
            up.stop()


def check_tool_args(target: Target, args: object) -> None:
    if target.tool_args is not None:
        assert args == target.tool_args
        return
    # The mock's own arguments: an object the tool's schema accepts.
    assert isinstance(args, dict) and set(args) == {"location", "unit"}, args
    assert isinstance(args["location"], str) and args["unit"] in ("celsius", "fahrenheit"), args


@pytest.mark.parametrize(("target", "client", "mode"), [pytest.param(*c, id=case_id(*c)) for c in CASES])
def test_node_client(target: str, client: str, mode: str, results: dict[str, dict]) -> None:
    r = results[case_id(target, client, mode)]
    t = TARGETS[target]
    text_finish, tool_finish = FINISH[client]
    assert r["error"] is None, f"{r['error']['name']}: {r['error']['message']}"
    streamed = mode in ("stream", "tool-stream")
    if mode in ("stream", "generate"):
        assert r["text"] == t.text
        assert r["toolCalls"] == []
        assert r["finishReason"] == text_finish
        if streamed:
            # Streamed as a stream: the text came in more than one piece.
            assert r["parts"] > 1, r
    else:
        assert [t["name"] for t in r["toolCalls"]] == [TOOL], f"no {TOOL} call: {r}"
        check_tool_args(t, r["toolCalls"][0]["args"])
        assert r["finishReason"] == tool_finish
    if streamed and "streamed" in r:  # the AI SDK: its text promise agrees with the parts it streamed
        assert r["streamed"] == r["text"]
    if streamed and "completedText" in r:  # openai-node responses: response.completed agrees with the deltas
        assert r["completedText"] == r["text"]
