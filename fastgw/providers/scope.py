"""What a client may make a provider do on the operator's key, decided by the operator (pure: no sockets).

- `anthropic_headers`: the `anthropic-version` / `anthropic-beta` headers a `/v1/messages` call sends upstream.
  A client's `anthropic-version` is forwarded only when the target lists it in `anthropic_versions` (none listed:
  the adapter's own version is sent and the client's is never forwarded); each `anthropic-beta` flag it asks for
  must be in `anthropic_betas`. Either header must be a token list of at most `MAX_HEADER_VALUE` bytes.
- `check_tools`: provider-run tools (Anthropic server tools, OpenAI Responses built-in tools, chat
  `web_search_options`) and remote MCP servers run on the provider with the operator's key and reach whatever
  URL the client names: refused with 400 `unsupported_parameter` naming the parameter, unless the target
  (`allow_server_tools`, `allow_mcp`) or one of the caller's roles allows them.

Refusals on `/v1/messages` render in Anthropic's envelope (`GatewayError.anthropic`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from fastgw.api.errors import GatewayError, InvalidRequest
from fastgw.providers.base import Endpoint, TargetRuntime
from fastgw.providers.registry import is_openai_compatible

__all__ = ["anthropic_headers", "check_tools", "requested", "SERVER_TOOLS", "MCP", "MAX_HEADER_VALUE",
           "ANTHROPIC_CUSTOM_TOOL_TYPES", "RESPONSES_CLIENT_TOOL_TYPES"]

#: Grant names: the target's and the rbac role's boolean of the same name allows the feature.
SERVER_TOOLS: Final = "allow_server_tools"
MCP: Final = "allow_mcp"
#: Longest `anthropic-version` / `anthropic-beta` value forwarded: real ones are under 100 bytes (a date, a few
#: dated flag names); the issue saw 60 KB values go upstream verbatim.
MAX_HEADER_VALUE: Final = 256
#: Anthropic tool types the client itself runs (a custom tool may omit `type`); any other type is run by
#: Anthropic (web_search_*, web_fetch_*, code_execution_*) or is an Anthropic-defined tool (bash_*,
#: text_editor_*, computer_*, memory_*) — the operator decides on those.
ANTHROPIC_CUSTOM_TOOL_TYPES = frozenset({"custom"})
#: Responses tool types the client itself runs; any other (web_search, file_search, code_interpreter,
#: computer_use_preview, image_generation, local_shell, ...) runs on OpenAI with the operator's key.
RESPONSES_CLIENT_TOOL_TYPES = frozenset({"function", "custom"})

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 tchar
_LIST_SEP = re.compile(rb"[ \t]*,[ \t]*")

#: Whether the caller's roles grant a feature (`SERVER_TOOLS`, `MCP`), asked only when a request needs it.
Grants = Callable[[str], bool]


def _bad(message: str, param: str | None, anthropic: bool, code: str = "invalid_request") -> GatewayError:
    err = InvalidRequest(message, param=param, code=code)
    return err.anthropic() if anthropic else err


def _tokens(name: str, values: list[bytes]) -> list[str]:
    """The comma-separated tokens of one header (all its lines), or 400 for a malformed or oversized value."""
    out: list[str] = []
    for v in values:
        if not v.strip(b" \t"):
            continue  # an empty field value asks for nothing
        if len(v) > MAX_HEADER_VALUE:
            raise _bad(f"{name}: value of {len(v)} bytes, longer than the {MAX_HEADER_VALUE} allowed", name, True)
        for tok in _LIST_SEP.split(v.strip(b" \t")):
            if not _TOKEN.fullmatch(tok):
                raise _bad(f"{name}: expected comma-separated tokens (letters, digits, '-', '_', '.')", name, True)
            out.append(tok.decode("ascii"))
    return out


def anthropic_headers(target: TargetRuntime, client_headers: list[tuple[bytes, bytes]],
                      default_version: bytes) -> list[tuple[bytes, bytes]]:
    """The `anthropic-version` and `anthropic-beta` headers to send upstream for a `/v1/messages` call (400 in
    Anthropic's envelope for a value the target does not allow, or that is malformed).

    A version pinned in the target's `headers` wins over the client's (and is sent by `json_post` itself)."""
    versions = [v for n, v in client_headers if n == b"anthropic-version"]
    betas = [v for n, v in client_headers if n == b"anthropic-beta"]
    out: list[tuple[bytes, bytes]] = []
    asked = _tokens("anthropic-version", versions)
    if len(asked) > 1:
        raise _bad("anthropic-version: one version, please (the header was sent more than once)",
                   "anthropic-version", True)
    pinned = any(n == b"anthropic-version" for n, _ in target.extra_headers)
    if asked and asked[0] in target.anthropic_versions and not pinned:
        out.append((b"anthropic-version", asked[0].encode()))
    elif asked and target.anthropic_versions and not pinned:
        raise _bad(f"anthropic-version: {asked[0]!r} is not enabled on this gateway", "anthropic-version", True)
    elif not pinned:
        out.append((b"anthropic-version", default_version))  # the client's is not forwarded: ours is
    flags = _tokens("anthropic-beta", betas)
    refused = [f for f in flags if f not in target.anthropic_betas]
    if refused:
        raise _bad(f"anthropic-beta: {refused[0]!r} is not enabled on this gateway", "anthropic-beta", True)
    if flags:
        out.append((b"anthropic-beta", ",".join(dict.fromkeys(flags)).encode()))
    return out


def requested(endpoint: str, body: dict, provider: str) -> tuple[str | None, str | None]:
    """(param of the first provider-run tool, param of the first MCP server) the request asks for, or None."""
    tools = body.get("tools")
    server = mcp = None
    if endpoint == Endpoint.MESSAGES:
        if body.get("mcp_servers"):
            mcp = "mcp_servers"
        for i, t in enumerate(tools if isinstance(tools, list) else ()):
            kind = t.get("type") if isinstance(t, dict) else None
            if kind is None or kind in ANTHROPIC_CUSTOM_TOOL_TYPES:
                continue
            if isinstance(kind, str) and kind.startswith("mcp"):  # mcp_toolset: tools of a remote server
                mcp = mcp or f"tools[{i}]"
            else:
                server = server or f"tools[{i}]"
    elif endpoint == Endpoint.RESPONSES:
        for i, t in enumerate(tools if isinstance(tools, list) else ()):
            kind = t.get("type") if isinstance(t, dict) else None
            if kind in RESPONSES_CLIENT_TOOL_TYPES:
                continue
            if kind == "mcp":
                mcp = mcp or f"tools[{i}]"
            else:
                server = server or f"tools[{i}]"
    elif (endpoint == Endpoint.CHAT and body.get("web_search_options") is not None and provider != "mock"
          and is_openai_compatible(provider)):
        server = "web_search_options"  # search-preview models search the web on the operator's key (translating
        # providers drop the field: nothing is searched there)
    return server, mcp


def check_tools(target: TargetRuntime, endpoint: str, body: dict, grants: Grants) -> None:
    """400 `unsupported_parameter` (naming it) for a provider-run tool or MCP server neither the target nor one of
    the caller's roles allows."""
    if endpoint not in (Endpoint.MESSAGES, Endpoint.RESPONSES, Endpoint.CHAT):
        return
    server, mcp = requested(endpoint, body, target.provider)
    anthropic = endpoint == Endpoint.MESSAGES
    if mcp is not None and not target.allow_mcp and not grants(MCP):
        raise _bad(f"{mcp}: remote MCP servers are not enabled for this model on this gateway (the provider would "
                   "call them with the gateway's credentials)", mcp, anthropic, "unsupported_parameter")
    if server is not None and not target.allow_server_tools and not grants(SERVER_TOOLS):
        what = body["tools"][int(server[6:-1])].get("type") if server.startswith("tools[") else server
        raise _bad(f"{server}: provider-run tools ({str(what)[:64]!r}) are not enabled for this model on this "
                   "gateway (they run with the gateway's credentials)", server, anthropic, "unsupported_parameter")
