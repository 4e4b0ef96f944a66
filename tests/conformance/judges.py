"""Which schema judges each JSON object an endpoint answers with, and the judging itself.

OpenAI-dialect endpoints are judged by the vendored OpenAPI spec (`openapi.py`; a Responses stream event by the
member of `ResponseStreamEvent` its `type` names, its `error` event included); `/v1/messages` and its
`count_tokens` by the official `anthropic` SDK's pydantic types in strict mode (`Message`, `RawMessageStreamEvent`,
`ErrorResponse`, `MessageTokensCount`; `ping` is an event the SDK skips, so it is checked by hand). A new endpoint
is one `DIALECTS` entry.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tests.conformance import openapi

#: objects judged in this run, by the schema that judged them (the conformance conftest's terminal summary prints it)
JUDGED: Counter[str] = Counter()


@dataclass(frozen=True)
class Dialect:
    """The schemas of one endpoint: a 200 body, a stream event, an error envelope (body or in-stream)."""

    body: str | None
    event: str | None = None
    error: str = "ErrorResponse"
    anthropic: bool = False
    #: the schema of a stream event when the client set `stream_options.include_usage` (default: `event`)
    event_usage: str | None = None
    #: `event` is a union of typed events: each is judged by the member its `type` names (`openapi.member`)
    typed: bool = False
    #: a stream ends with `data: [DONE]` (OpenAI chat and completions; not Responses, not Anthropic)
    done: bool = True
    #: stream events carry `sequence_number` 0, 1, 2, ... (Responses)
    sequenced: bool = False


DIALECTS: dict[str, Dialect] = {
    "/v1/chat/completions": Dialect("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"),
    # streamed: `finish_reason` null until a choice ends, and `usage` null when asked for (see openapi.DERIVED)
    "/v1/completions": Dialect("CreateCompletionResponse", "CreateCompletionResponse+streamed",
                               event_usage="CreateCompletionResponse+streamed+usage"),
    "/v1/embeddings": Dialect("CreateEmbeddingResponse"),
    "/v1/models": Dialect("ListModelsResponse"),
    "/v1/responses": Dialect("Response", "ResponseStreamEvent", typed=True, done=False, sequenced=True),
    "/v1/messages": Dialect("Message", "RawMessageStreamEvent", "ErrorResponse", anthropic=True, done=False),
    "/v1/messages/count_tokens": Dialect("MessageTokensCount", anthropic=True),
}

#: The schemas of an in-stream error: the chat envelope as a data event, the Responses `error` event, Anthropic's.
STREAM_ERRORS = frozenset({"ErrorResponse", "ResponseErrorEvent", "anthropic.types.ErrorResponse"})


def dialect_of(path: str) -> Dialect:
    """The dialect of a request path (`/v1/models/{id}` answers one `Model`; an unknown path, an error)."""
    if path in DIALECTS:
        return DIALECTS[path]
    if path.startswith("/v1/models/"):
        return Dialect("Model")
    return Dialect(None)


def judge(dialect: Dialect, status: int, streamed: bool, event: str, obj: Any, body: str | None = None,
          asked_usage: bool = False) -> tuple[str, list[str]]:
    """(the schema that judged `obj`, its violations); `body` names the schema of a 200 body where the request
    decides it (embeddings in base64), `asked_usage` says the client set `stream_options.include_usage`."""
    if dialect.anthropic:
        return _judge_anthropic(dialect, status, streamed, event, obj)
    problems = []
    if status != 200 or (isinstance(obj, dict) and "error" in obj and "object" not in obj):
        name = dialect.error
    elif streamed and dialect.typed and dialect.event:
        kind = obj.get("type") if isinstance(obj, dict) else None
        if event != kind:
            problems.append(f"SSE event name {event!r} is not the data's type {kind!r}")
        name = openapi.member(dialect.event, kind) or "?"
        if name == "?":
            return dialect.event, [*problems, f"{dialect.event}: no event has the type {kind!r}"]
    elif streamed:
        name = (asked_usage and dialect.event_usage) or dialect.event or "?"
    else:
        name = body or dialect.body or "?"
    if name == "?":
        return name, [f"no schema for a {'stream event' if streamed else 'body'} of this endpoint"]
    return name, problems + openapi.violations(name, obj)


@functools.cache
def _adapter(name: str) -> Any:
    import anthropic.types as at
    from pydantic import TypeAdapter

    return TypeAdapter(getattr(at, name))


def _judge_anthropic(dialect: Dialect, status: int, streamed: bool, event: str, obj: Any) -> tuple[str, list[str]]:
    from pydantic import ValidationError

    kind = obj.get("type") if isinstance(obj, dict) else None
    if status != 200 or kind == "error":
        name = dialect.error
    elif streamed:
        name = dialect.event or "?"
        if kind == "ping":
            return "ping", [] if obj == {"type": "ping"} else [f"ping event with more than its type: {obj}"]
    else:
        name = dialect.body or "?"
    problems = []
    if streamed and event != kind:
        problems.append(f"SSE event name {event!r} is not the data's type {kind!r}")
    try:
        _adapter(name).validate_python(obj, strict=True)
    except ValidationError as e:
        problems += [f"anthropic.types.{name} {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
    return f"anthropic.types.{name}", problems
