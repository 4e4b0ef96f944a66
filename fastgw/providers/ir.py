"""The OpenAI chat request parsed once into typed structs that every translating provider reads.

`parse_chat(body, provider)` checks the shape every provider needs (a non-empty list of message
objects, a role, content that is a string, a list of parts or null, `tool_calls` a list of calls)
and normalises what every provider maps the same way: the `max_completion_tokens`/`max_tokens`
fallback, `stop` as a list of strings, `stream_options.include_usage`. What each provider accepts
of a part or a tool (image URLs, files, schemas) stays with the provider: the IR keeps those raw.

Also here, written once: the 400 errors a translation raises (`unsupported`, `invalid`), the
message loop (`fold_turns`: system collected, role dispatch, tool results, same-role turns merged)
and the bounded dropped-field log (`note_dropped`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from fastgw.api.errors import GatewayError, Origin

__all__ = ["ChatRequest", "Message", "Part", "ToolCall", "Sampling", "parse_chat", "unsupported", "invalid",
           "note_dropped", "fold_turns", "map_messages", "MAX_DROPPED_NOTES"]


# ---- errors ------------------------------------------------------------------------------------


def unsupported(provider: str, message: str, param: str | None) -> GatewayError:
    """400 `unsupported_parameter`: a valid OpenAI request this provider has no counterpart for."""
    return GatewayError(f"{message} (provider {provider})", status=400, type="invalid_request_error",
                        code="unsupported_parameter", param=param, no_retry=True, origin=Origin.CLIENT)


def invalid(message: str, param: str | None, code: str = "invalid_value") -> GatewayError:
    """400 `invalid_value` (or `code`): a malformed request, whatever the provider."""
    return GatewayError(message, status=400, type="invalid_request_error", code=code, param=param, no_retry=True,
                        origin=Origin.CLIENT)


# ---- dropped fields ------------------------------------------------------------------------------

#: Distinct (provider, field) notes one worker remembers. Field names are the client's choice: past this many,
#: nothing more is remembered or logged, so neither memory nor the log grows with what clients send
#: (the same bound the first Anthropic adapter had).
MAX_DROPPED_NOTES = 256
_noted: set[tuple[str, str]] = set()


def note_dropped(provider: str, what: str) -> None:
    """Log at INFO, once per worker, that `what` (a request field, a part kind...) is dropped for `provider`."""
    key = (provider, what)
    if key in _noted or len(_noted) >= MAX_DROPPED_NOTES:
        return
    _noted.add(key)
    # %r of a name cut to 64 characters: a client-chosen name can neither forge log lines nor flood one.
    logging.getLogger(f"fastgw.providers.{provider}").info(
        "%s: %r has no %s counterpart and is dropped", provider, what[:64], provider)


# ---- the IR ------------------------------------------------------------------------------------


class Part(msgspec.Struct, frozen=True, gc=False):
    """One content part: its `type`, its `text` when it has one, and the part object for the rest."""

    type: object
    text: object
    raw: dict


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """An assistant tool call as the client replays it (`name`/`arguments` unchecked: providers differ)."""

    id: object
    name: object
    arguments: object
    #: the `function` object is present and an object
    has_function: bool
    raw: dict


class Message(msgspec.Struct, frozen=True):
    """One message. `param` names it in errors (`messages[3]`)."""

    index: int
    role: object
    content: str | list[Part] | None
    tool_calls: list[ToolCall] | None
    raw: dict

    @property
    def param(self) -> str:
        return f"messages[{self.index}]"

    @property
    def tool_call_id(self) -> object:
        return self.raw.get("tool_call_id")


class Sampling(msgspec.Struct, frozen=True, gc=False):
    """Sampling parameters as the client gave them (None: not given); `max_tokens` is
    `max_completion_tokens` falling back to the legacy `max_tokens`, `stop` a list of strings."""

    max_tokens: Any = None
    temperature: Any = None
    top_p: Any = None
    seed: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    stop: list[str] | None = None

    def named(self, names: dict[str, str]) -> dict:
        """The parameters the client set, under the provider's names (`names`: our field -> theirs; a
        non-empty `stop` counts as set)."""
        out = {}
        for src, dst in names.items():
            value = getattr(self, src)
            if value is not None and value != []:
                out[dst] = value
        return out


class ChatRequest(msgspec.Struct, frozen=True):
    """An OpenAI chat completions request, parsed once."""

    provider: str
    messages: list[Message]
    sampling: Sampling
    include_usage: bool
    body: dict

    def get(self, name: str) -> Any:
        """A top-level field as sent (tools, tool_choice, response_format...: their checks are the provider's)."""
        return self.body.get(name)


def _content(content: object, param: str) -> str | list[Part] | None:
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid("content must be a string or a list of parts", param)
    return [Part(p.get("type"), p.get("text"), p) if isinstance(p, dict) else Part(None, None, {}) for p in content]


def _tool_calls(calls: object, param: str) -> list[ToolCall] | None:
    if calls is None:
        return None
    if not isinstance(calls, list):
        raise invalid("tool_calls must be a list", f"{param}.tool_calls")
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict):
            out.append(ToolCall(c.get("id"), fn.get("name"), fn.get("arguments"), True, c))
        else:
            out.append(ToolCall(c.get("id") if isinstance(c, dict) else None, None, None, False,
                                c if isinstance(c, dict) else {}))
    return out


def _stop(stop: object) -> list[str] | None:
    if stop is None or stop == "" or stop == []:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop must be a string or a list of strings", "stop")
    return stops


def parse_chat(body: dict, provider: str) -> ChatRequest:
    """The IR of an OpenAI chat request (raises the 400 `GatewayError` of a malformed message list or stop)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise invalid("messages must be a non-empty list", "messages")
    messages = []
    for i, m in enumerate(msgs):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid("a message must be an object", param)
        messages.append(Message(i, m.get("role"), _content(m.get("content"), f"{param}.content"),
                                _tool_calls(m.get("tool_calls"), param), m))
    mt = body.get("max_completion_tokens")
    sampling = Sampling(mt if mt is not None else body.get("max_tokens"), body.get("temperature"), body.get("top_p"),
                        body.get("seed"), body.get("frequency_penalty"), body.get("presence_penalty"),
                        _stop(body.get("stop")))
    so = body.get("stream_options")
    return ChatRequest(provider, messages, sampling, isinstance(so, dict) and bool(so.get("include_usage")), body)


# ---- the message loop ----------------------------------------------------------------------------

#: Converts one message to the provider's blocks (parts) of a turn.
Blocks = Callable[[Message], list]


def fold_turns(req: ChatRequest, *, system: Blocks, user: Blocks, assistant: Blocks, tool: Blocks,
               assistant_role: str = "assistant", key: str = "content", keep_empty: bool = False
               ) -> tuple[list, list[dict]]:
    """(system blocks, turns) for the providers whose turns alternate (Anthropic, Bedrock, Gemini).

    system/developer messages are collected apart; tool results become user turns; consecutive turns of one
    role are merged (parallel tool results and a user message right after them become one user turn, in order);
    a message without blocks is left out unless `keep_empty`. Any other role is a 400 `unsupported_parameter`.
    """
    sys_blocks: list = []
    turns: list[dict] = []
    for m in req.messages:
        role = m.role
        if role == "system" or role == "developer":
            sys_blocks.extend(system(m))
            continue
        if role == "user":
            blocks, turn_role = user(m), "user"
        elif role == "assistant":
            blocks, turn_role = assistant(m), assistant_role
        elif role == "tool":
            blocks, turn_role = tool(m), "user"
        else:
            raise unsupported(req.provider, f"message role {role!r} is not supported", f"{m.param}.role")
        if not blocks and not keep_empty:
            continue
        if turns and turns[-1]["role"] == turn_role:
            turns[-1][key].extend(blocks)
        else:
            turns.append({"role": turn_role, key: blocks})
    return sys_blocks, turns


def map_messages(req: ChatRequest, by_role: Mapping[str, Callable[[Message], dict]]) -> list[dict]:
    """One provider message per OpenAI message, in order (Cohere, Ollama: roles need not alternate there);
    a role without a converter is a 400 `unsupported_parameter`."""
    out = []
    for m in req.messages:
        convert = by_role.get(m.role) if isinstance(m.role, str) else None
        if convert is None:
            raise unsupported(req.provider, f"message role {m.role!r} is not supported", f"{m.param}.role")
        out.append(convert(m))
    return out
