"""Provider-run tools and remote MCP servers only where the operator allows them (issue 15, item 5): they run with
the operator's key and reach whatever URL the client names, so a request asking for one is a 400
`unsupported_parameter` naming the parameter unless the target (`allow_server_tools`, `allow_mcp`) or one of the
caller's rbac roles allows it."""

from __future__ import annotations

import asyncio
import hashlib

import anthropic
import openai
import orjson
import pytest

from fastgw.api.errors import GatewayError
from fastgw.attempt import Attempt
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain
from fastgw.providers.base import Endpoint, TargetRuntime
from fastgw.providers.scope import MCP, SERVER_TOOLS, check_tools, requested
from tests.abuse._h3support import CannedUpstream, request
from tests.conftest import GatewayFactory
from tests.support.procs import start_upstream

CUSTOM = {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}
MESSAGES = {"model": "claude-test", "max_tokens": 50, "messages": [{"role": "user", "content": "text"}]}
FUNCTION = {"type": "function", "name": "f", "parameters": {"type": "object"}}
#: The target's settings reach TargetRuntime once fastgw/app.py's build_targets passes them (see the report).


def no(name: str) -> bool:
    return False


def target(provider: str = "anthropic", **kw: object) -> TargetRuntime:
    return TargetRuntime(id="t", provider=provider, model="m", base_url="http://127.0.0.1:1", **kw)  # type: ignore


@pytest.mark.parametrize("endpoint, provider, body, server, mcp", [
    (Endpoint.MESSAGES, "anthropic", {"tools": [CUSTOM, {**CUSTOM, "type": "custom"}]}, None, None),
    (Endpoint.MESSAGES, "anthropic", {"tools": [CUSTOM, {"type": "web_search_20250305", "name": "web_search"}]},
     "tools[1]", None),
    (Endpoint.MESSAGES, "anthropic", {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "tools[0]",
     None),
    (Endpoint.MESSAGES, "anthropic", {"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
     "tools[0]", None),
    (Endpoint.MESSAGES, "anthropic", {"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0]", None),
    (Endpoint.MESSAGES, "anthropic", {"tools": [{"type": "text_editor_20250728", "name": "str_replace_editor"}]},
     "tools[0]", None),
    (Endpoint.MESSAGES, "anthropic", {"tools": [{"type": "computer_20250124", "name": "computer"}]}, "tools[0]", None),
    (Endpoint.MESSAGES, "anthropic", {"mcp_servers": [{"type": "url", "url": "https://evil.example/mcp",
                                                       "name": "x"}]}, None, "mcp_servers"),
    (Endpoint.MESSAGES, "anthropic", {"tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]}, None, "tools[0]"),
    (Endpoint.RESPONSES, "openai", {"tools": [FUNCTION, {"type": "custom", "name": "c"}]}, None, None),
    (Endpoint.RESPONSES, "openai", {"tools": [FUNCTION, {"type": "web_search"}]}, "tools[1]", None),
    (Endpoint.RESPONSES, "openai", {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]",
     None),
    (Endpoint.RESPONSES, "openai", {"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
     "tools[0]", None),
    (Endpoint.RESPONSES, "openai", {"tools": [{"type": "computer_use_preview"}]}, "tools[0]", None),
    (Endpoint.RESPONSES, "openai", {"tools": [{"type": "image_generation"}]}, "tools[0]", None),
    (Endpoint.RESPONSES, "openai", {"tools": [{"type": "local_shell"}]}, "tools[0]", None),
    (Endpoint.RESPONSES, "openai", {"tools": [{"type": "mcp", "server_url": "https://evil.example/mcp",
                                               "server_label": "x"}]}, None, "tools[0]"),
    (Endpoint.CHAT, "openai", {"web_search_options": {}}, "web_search_options", None),
    (Endpoint.CHAT, "anthropic", {"web_search_options": {}}, None, None),  # translated: dropped, never sent
    (Endpoint.CHAT, "mock", {"web_search_options": {}}, None, None),  # the built-in mock searches nothing
    (Endpoint.CHAT, "openai", {"tools": [{"type": "function", "function": {"name": "f"}}]}, None, None),
])
def test_what_counts_as_a_provider_run_tool_or_mcp(endpoint: str, provider: str, body: dict, server: str | None,
                                                     mcp: str | None) -> None:
    assert requested(endpoint, body, provider) == (server, mcp)


def test_refused_unless_the_target_or_a_role_allows() -> None:
    body = {"model": "m", "tools": [CUSTOM, {"type": "web_search_20250305", "name": "web_search"}],
            "mcp_servers": [{"type": "url", "url": "https://evil.example/mcp", "name": "x"}]}
    with pytest.raises(GatewayError) as e:
        check_tools(target(), Endpoint.MESSAGES, body, no)
    assert (e.value.status, e.value.code, e.value.param, e.value.style) == (400, "unsupported_parameter",
                                                                            "mcp_servers", "anthropic")
    with pytest.raises(GatewayError) as e:
        check_tools(target(allow_mcp=True), Endpoint.MESSAGES, body, no)
    assert e.value.param == "tools[1]" and "web_search_20250305" in e.value.message
    check_tools(target(allow_mcp=True, allow_server_tools=True), Endpoint.MESSAGES, body, no)
    asked: list[str] = []
    check_tools(target(), Endpoint.MESSAGES, body, lambda name: asked.append(name) or True)  # a role allows both
    assert asked == [MCP, SERVER_TOOLS]
    check_tools(target(), Endpoint.MESSAGES, {"tools": [CUSTOM]}, lambda name: pytest.fail("asked for nothing"))
    with pytest.raises(GatewayError) as e:
        check_tools(target("openai"), Endpoint.RESPONSES, {"tools": [{"type": "web_search"}]}, no)
    assert e.value.style == "openai" and orjson.loads(e.value.body())["error"]["param"] == "tools[0]"


class _Rbac:
    def __init__(self, granted: set[str]) -> None:
        self.granted = granted
        self.asked: list[tuple[str | None, str]] = []

    def grants(self, ctx: RequestContext, name: str) -> bool:
        self.asked.append((ctx.principal, name))
        return name in self.granted


def test_attempt_asks_the_rbac_policy_for_the_callers_roles() -> None:
    rbac = _Rbac({SERVER_TOOLS})
    chain = Chain(["rbac"], {"rbac": rbac})
    attempt = Attempt(chain, asyncio.new_event_loop(), {}, None)  # type: ignore[arg-type]
    ctx = RequestContext("r", "POST", "/v1/messages", [])
    ctx.principal = "team"
    grants = attempt._grants(ctx)
    assert grants(SERVER_TOOLS) and not grants(MCP)
    assert rbac.asked == [("team", SERVER_TOOLS), ("team", MCP)]
    assert Attempt(Chain(), asyncio.new_event_loop(), {}, None)._grants(ctx)(SERVER_TOOLS) is False  # type: ignore


# ---- through a gateway --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    mock = start_upstream(module="tests.support.mock_anthropic")
    canned = CannedUpstream()
    key = "team-key-0123456789"
    roles = {"plain": {}, "tooled": {"allow_server_tools": True, "allow_mcp": True}}
    cfg = {"pack": {"name": "t"},
           "providers": {"targets": [
               {"id": "claude", "provider": "anthropic", "model": "claude-test", "base_url": mock.base,
                "secret_key_ref": {"env": "H3_ANTHROPIC_KEY"}},
               {"id": "claude-tools", "provider": "anthropic", "model": "claude-tools", "base_url": mock.base,
                "secret_key_ref": {"env": "H3_ANTHROPIC_KEY"}, "allow_server_tools": True, "allow_mcp": True},
               {"id": "gpt", "provider": "openai", "model": "gpt-test", "base_url": canned.url}]},
           "policies": {"chain": ["rbac"]},
           "policy": {"rbac": {"keys": [
               {"name": "plain", "sha256": hashlib.sha256(key.encode()).hexdigest(), "roles": ["plain"]},
               {"name": "tooled", "sha256": hashlib.sha256(b"tooled-" + key.encode()).hexdigest(),
                "roles": ["tooled"]}], "roles": roles}}}
    f = GatewayFactory(tmp_path_factory.mktemp("scope-tools"))
    try:
        yield f.start(cfg, env={"H3_ANTHROPIC_KEY": "sk-ant-operator"}), mock, canned, key
    finally:
        f.close()
        mock.stop()
        canned.stop()


def _anthropic(gw, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base, api_key=key, max_retries=0, timeout=20)


@pytest.mark.parametrize("extra, param", [
    ({"mcp_servers": [{"type": "url", "url": "https://evil.example/mcp", "name": "x"}]}, "mcp_servers"),
    ({"tools": [CUSTOM, {"type": "web_fetch_20250910", "name": "web_fetch"}]}, "tools[1]"),
    ({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}, "tools[0]"),
])
def test_messages_refuses_server_tools_and_mcp(stack, extra: dict, param: str) -> None:
    gw, mock, _, key = stack
    mock.reset()
    with pytest.raises(anthropic.BadRequestError) as e:
        _anthropic(gw, key).messages.create(**MESSAGES, extra_body=extra)
    err = e.value.body
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(f"{param}:")
    assert mock.last("/v1/messages") is None  # nothing reached the provider


def test_messages_custom_tools_pass(stack) -> None:
    gw, mock, _, key = stack
    msg = _anthropic(gw, key).messages.create(**MESSAGES, tools=[CUSTOM])
    assert msg.content and mock.last("/v1/messages")["body"]["tools"] == [CUSTOM]


@pytest.mark.parametrize("tool", [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]},
                                  {"type": "mcp", "server_url": "https://evil.example/mcp", "server_label": "x",
                                   "require_approval": "never"}])
def test_responses_refuses_built_in_tools_and_mcp(stack, tool: dict) -> None:
    gw, _, canned, key = stack
    before = len(canned.seen)
    c = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="gpt-test", input="hi", tools=[tool])  # type: ignore[list-item]
    assert e.value.code == "unsupported_parameter" and e.value.param == "tools[0]"
    assert len(canned.seen) == before


def test_responses_function_tools_and_chat_search_options(stack) -> None:
    gw, _, canned, key = stack
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    status, _, _ = request(gw.base, "POST", "/v1/responses", orjson.dumps(
        {"model": "gpt-test", "input": "hi", "tools": [FUNCTION]}), auth)
    assert status == 200 and canned.seen[-1]["body"]["tools"] == [FUNCTION]
    status, _, body = request(gw.base, "POST", "/v1/chat/completions", orjson.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "web_search_options": {}}), auth)
    assert status == 400 and orjson.loads(body)["error"]["param"] == "web_search_options"


def test_a_target_that_allows_them_forwards_them(stack) -> None:
    gw, mock, _, key = stack
    extra = {"mcp_servers": [{"type": "url", "url": "https://mcp.example/sse", "name": "x"}],
             "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    _anthropic(gw, key).messages.create(**{**MESSAGES, "model": "claude-tools"}, extra_body=extra)
    assert mock.last("/v1/messages")["body"]["mcp_servers"] == extra["mcp_servers"]


def test_a_role_that_allows_them_forwards_them(stack) -> None:
    gw, mock, _, key = stack
    extra = {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    with pytest.raises(anthropic.BadRequestError):
        _anthropic(gw, key).messages.create(**MESSAGES, extra_body=extra)
    _anthropic(gw, "tooled-" + key).messages.create(**MESSAGES, extra_body=extra)
    assert mock.last("/v1/messages")["body"]["tools"] == extra["tools"]
