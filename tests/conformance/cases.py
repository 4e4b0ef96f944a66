"""The conformance cases: every provider through every endpoint and path the gateway writes JSON on.

A provider is one `Row` (how its mock is asked for each scenario); `cases()` crosses the rows with the endpoints
(`ENDPOINTS`: how a scenario becomes a request body on each path) and the variants (not streamed, streamed,
streamed with usage), and adds the gateway's own answers (`OWN`). A new endpoint is one `ENDPOINTS` entry (and its
`judges.DIALECTS` entry); a new scenario one `Row` field and one line in `_provider_cases`.

`gateway` names the gateway a case goes to (see `conftest.py`): `plain` (every target, no policy), `redact` and
`block` (pii-detector on the output), `guarded` (rbac and a rate limit in front of the mock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tests.providers.stack import SPECS
from tests.providers.test_contract import CONTRACTS, TIME_TOOL, WEATHER_TOOL

#: the key the `guarded` gateway knows (rbac), and a model its role may not use
GUARDED_KEY = "fgw-conformance-key"
FORBIDDEN_MODEL = "mock-forbidden"
#: a model served by a target whose upstream answers errors without `param` and `code`
BARE_ERRORS_MODEL = "bare-errors"


@dataclass(frozen=True)
class Ask:
    """A scenario as one provider's mock understands it: the last user message, and fields to add to the body."""

    text: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    id: str
    gateway: str
    path: str
    body: dict | bytes | None
    method: str = "POST"
    headers: dict = field(default_factory=dict)
    #: the HTTP status the gateway must answer with
    status: int = 200
    #: a streamed answer must carry an error event (True), must not (False), or may (None: a cut's timing decides)
    stream_error: bool | None = False
    #: the schema of a 200 body, where the request decides it (else the endpoint's, `judges.DIALECTS`)
    schema: str | None = None
    #: the scenario (a `Row` field): `length` and `tools` also check the answer says so (`judges.meaning`)
    scenario: str = ""

    @property
    def asked_usage(self) -> bool:
        """The client set `stream_options.include_usage`."""
        so = self.body.get("stream_options") if isinstance(self.body, dict) else None
        return isinstance(so, dict) and bool(so.get("include_usage"))


@dataclass(frozen=True)
class Row:
    """How a provider's mock is asked for each scenario (None: the mock has no such scenario)."""

    model: str
    text: Ask = Ask("text")
    tools: Ask | None = None
    parallel: Ask | None = None
    length: Ask | None = None
    #: upstream HTTP errors: the ask and the status the client must get
    http_errors: tuple[tuple[Ask, int], ...] = ()
    #: an upstream error after some text (and the status the same ask gets when not streamed)
    in_stream: tuple[tuple[Ask, int], ...] = ()
    cut: Ask | None = None
    email: Ask | None = None
    #: the model of its legacy completions and embeddings (None: the provider has none: an error is judged)
    completions: str | None = None
    embeddings: str | None = None
    #: a parameter the provider refuses (400 unsupported_parameter made by the gateway)
    refused: dict | None = None


#: The in-stream error scenarios asked without streaming: Anthropic's mock answers 529, Gemini's and Bedrock's a
#: whole body (the error is an event of their streams only), the others 500.
_IN_STREAM_PLAIN = {"anthropic": 529, "gemini": 200, "bedrock": 200}


def _row_from_contract(name: str) -> Row:
    c = CONTRACTS[name]
    tools = {"tools": [WEATHER_TOOL], "tool_choice": "required"}
    length = next((f for f in c.finishes if f.finish == "length"), None)
    return Row(
        model=SPECS[name].model,
        text=Ask(c.text_kwargs["messages"][-1]["content"]),
        tools=Ask(c.tool, tools),
        parallel=Ask(c.parallel, {"tools": list(c.parallel_tools)}),
        length=Ask(length.scenario, length.kwargs) if length else None,
        http_errors=tuple((Ask(e.scenario), e.status) for e in c.errors),
        in_stream=tuple((Ask(e.scenario), _IN_STREAM_PLAIN.get(name, 500)) for e in c.in_stream),
        cut=Ask(c.cut),
        email=Ask(c.pii[0]),
        refused={**c.refused[0], "model": SPECS[name].model},
    )


ROWS: dict[str, Row] = {
    # the OpenAI-compatible mock upstream (tests/support/upstream.py): faults are models
    "openai": Row(
        model="gpt-test",
        text=Ask("hello"),
        tools=Ask("what is the weather in Paris?", {"tools": [WEATHER_TOOL], "tool_choice": "required"}),
        parallel=Ask("hello", {"n": 2}),  # its mock makes one tool call: two choices interleaved instead
        length=Ask("hello", {"max_tokens": 3}),
        http_errors=((Ask("hello", {"model": "fault-500"}), 500), (Ask("hello", {"model": "fault-429"}), 429),
                     (Ask("hello", {"model": BARE_ERRORS_MODEL}), 404)),
        in_stream=((Ask("hello", {"model": "fault-close-midstream"}), 502),),
        email=Ask("write to alice.smith@example.com please"),
        completions="instruct-test",
        embeddings="text-embedding-test",
    ),
    # the built-in mock model
    "mock": Row(
        model="mock-1",
        # the mock calls the functions the message names (two here: parallel calls)
        tools=Ask("what is the weather in Paris? use get_weather and get_time", {"tools": [WEATHER_TOOL, TIME_TOOL]}),
        length=Ask("text", {"max_tokens": 2}),
        email=Ask("text", {"model": "mock-pii"}),
        completions="mock-1",
        embeddings="mock-1",
    ),
    **{name: _row_from_contract(name) for name in ("anthropic", "gemini", "ollama", "cohere", "bedrock")},
}
# Gemini refuses logprobs like the others (issue 17: it dropped them silently).
ROWS["gemini"] = replace(ROWS["gemini"], refused={"model": ROWS["gemini"].model, "logprobs": True})


# ---- endpoints: how an ask becomes a request body ---------------------------------------------------------------


def _chat(row: Row, ask: Ask) -> dict:
    return {"model": row.model, "messages": [{"role": "user", "content": ask.text}], **ask.extra}


def _completion(row: Row, ask: Ask) -> dict:
    extra = {k: v for k, v in ask.extra.items() if k not in ("tools", "tool_choice")}
    return {"model": row.completions or row.model, "prompt": ask.text, **extra}


def _responses(row: Row, ask: Ask) -> dict:
    extra = {k: v for k, v in ask.extra.items() if k not in ("tools", "max_tokens", "n")}
    if "max_tokens" in ask.extra:
        extra["max_output_tokens"] = ask.extra["max_tokens"]
    if "tools" in ask.extra:  # Responses function tools are flat
        extra["tools"] = [{"type": "function", "name": t["function"]["name"],
                           "description": t["function"].get("description", ""),
                           "parameters": t["function"]["parameters"],
                           **({"strict": t["function"]["strict"]} if "strict" in t["function"] else {})}
                          for t in ask.extra["tools"]]
    return {"model": row.model, "input": ask.text, **extra}


def _messages(row: Row, ask: Ask) -> dict:
    extra = {k: v for k, v in ask.extra.items() if k not in ("tools", "tool_choice", "n")}
    if "tools" in ask.extra:
        extra["tools"] = [{"name": t["function"]["name"], "description": t["function"].get("description", ""),
                           "input_schema": t["function"]["parameters"]} for t in ask.extra["tools"]]
        if ask.extra.get("tool_choice") == "required":
            extra["tool_choice"] = {"type": "any"}
    return {"model": row.model, "max_tokens": 64, "messages": [{"role": "user", "content": ask.text}], **extra}


@dataclass(frozen=True)
class Endpoint:
    path: str
    body: Callable[[Row, Ask], dict]
    #: the providers it is judged for (the others answer on it too, but with an error judged elsewhere)
    providers: tuple[str, ...] = tuple(ROWS)
    #: which scenarios apply (the names of `Row` fields)
    scenarios: tuple[str, ...] = ("text", "tools", "parallel", "length", "http_errors", "in_stream", "cut", "email")
    usage: bool = True  # has stream_options.include_usage


#: The Responses API and Anthropic Messages on every provider: native on openai (Responses) and anthropic
#: (Messages), translated through chat completions by `fastgw.front` on the others. Neither has `include_usage`
#: (both always report usage).
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/v1/chat/completions", _chat),
    Endpoint("/v1/completions", _completion, providers=("openai", "mock"),
             scenarios=("text", "length", "http_errors", "in_stream", "email")),
    Endpoint("/v1/responses", _responses, usage=False),
    Endpoint("/v1/messages", _messages, usage=False),
)


def _variants(ep: Endpoint, name: str, body: dict) -> list[tuple[str, dict]]:
    out = [(f"{name}", {**body, "stream": False}), (f"{name}-stream", {**body, "stream": True})]
    if ep.usage:
        out.append((f"{name}-stream-usage", {**body, "stream": True, "stream_options": {"include_usage": True}}))
    return out


def _provider_cases(provider: str, row: Row, ep: Endpoint) -> list[Case]:
    out: list[Case] = []
    tag = f"{provider}{ep.path.removeprefix('/v1')}"

    def add(scenario: str, ask: Ask, gateway: str = "plain", status: int = 200, stream_status: int = 200,
            stream_error: bool | None = False) -> None:
        for vid, body in _variants(ep, f"{tag}-{scenario}", ep.body(row, ask)):
            streamed = body["stream"]
            out.append(Case(vid, gateway, ep.path, body, status=stream_status if streamed else status,
                            stream_error=stream_error if streamed and stream_status == 200 else False,
                            scenario=scenario))

    if "text" in ep.scenarios:
        add("text", row.text)
    for scenario in ("tools", "parallel", "length"):
        ask = getattr(row, scenario)
        if scenario == "parallel" and ask is not None and "n" in ask.extra and ep.path != "/v1/chat/completions":
            continue  # `n` is chat's (and legacy completions'): without it the ask is `text` again
        if scenario in ep.scenarios and ask is not None:
            add(scenario, ask)
    if "http_errors" in ep.scenarios:
        for ask, status in row.http_errors:
            add(f"http-{status}-{ask.text.replace(':', '-')}", ask, status=status, stream_status=status)
    if "in_stream" in ep.scenarios:
        for ask, status in row.in_stream:
            add(f"in-stream-{ask.text}", ask, status=status, stream_error=True)
    if "cut" in ep.scenarios and row.cut is not None:
        add("cut", row.cut, status=502, stream_error=None)
    if "email" in ep.scenarios and row.email is not None:
        add("redact", row.email, gateway="redact")
        add("block", row.email, gateway="block", status=409, stream_error=True)
    return out


def _refusals() -> list[Case]:
    """Parameters a provider cannot take: the gateway's own 400 `unsupported_parameter`, streamed or not."""
    out = []
    for provider, row in ROWS.items():
        if row.refused is None:
            continue
        body = {"messages": [{"role": "user", "content": "text"}], **row.refused}
        for stream in (False, True):
            out.append(Case(f"{provider}-refused{'-stream' if stream else ''}", "plain", "/v1/chat/completions",
                            {**body, "stream": stream}, status=400))
    return out


def _embeddings() -> list[Case]:
    out = []
    for provider, row in ROWS.items():
        model = row.embeddings or row.model
        status = 200 if row.embeddings else 400
        for fmt in ("float", "base64"):
            out.append(Case(f"{provider}-embeddings-{fmt}", "plain", "/v1/embeddings",
                            {"model": model, "input": ["hello", "world"], "encoding_format": fmt}, status=status,
                            schema="CreateEmbeddingResponse+base64" if fmt == "base64" else None))
    return out


def _own() -> list[Case]:
    """Answers the gateway makes itself: its refusals (400, 401, 403, 404, 405, 429) on chat, Responses, Messages
    and count_tokens, and its model list."""
    chat = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
    key = {"authorization": f"Bearer {GUARDED_KEY}"}
    out = [
        Case("own-400-invalid-json", "plain", "/v1/chat/completions", b"{not json", status=400),
        Case("own-400-body-not-object", "plain", "/v1/chat/completions", b"[1, 2]", status=400),
        Case("own-400-no-model", "plain", "/v1/chat/completions", {"messages": chat["messages"]}, status=400),
        Case("own-404-unknown-model", "plain", "/v1/chat/completions", {**chat, "model": "no-such-model"},
             status=404),
        Case("own-404-unknown-model-completions", "plain", "/v1/completions",
             {"model": "no-such-model", "prompt": "hi"}, status=404),
        Case("own-404-unknown-model-embeddings", "plain", "/v1/embeddings",
             {"model": "no-such-model", "input": "hi"}, status=404),
        Case("own-404-unknown-path", "plain", "/v1/no-such-path", chat, status=404),
        Case("own-405-wrong-method", "plain", "/v1/chat/completions", None, method="GET", status=405),
        Case("own-models", "plain", "/v1/models", None, method="GET"),
        Case("own-model", "plain", "/v1/models/mock-1", None, method="GET"),
        Case("own-404-model", "plain", "/v1/models/no-such-model", None, method="GET", status=404),
        Case("own-401-no-key", "guarded", "/v1/chat/completions", chat, status=401),
        Case("own-401-wrong-key", "guarded", "/v1/chat/completions", chat,
             headers={"authorization": "Bearer fgw-wrong"}, status=401),
        Case("own-403-model-not-allowed", "guarded", "/v1/chat/completions", {**chat, "model": FORBIDDEN_MODEL},
             headers=key, status=403),
        Case("own-429-over-token-limit", "guarded", "/v1/chat/completions", {**chat, "max_tokens": 5000},
             headers=key, status=429),
        Case("own-200-guarded", "guarded", "/v1/chat/completions", chat, headers=key),
    ]
    out += _own_refusals("/v1/responses", {"model": "mock-1", "input": "hi"}, "max_output_tokens",
                         {"previous_response_id": "resp_1"})
    out += _own_refusals("/v1/messages", {"model": "mock-1", "max_tokens": 16, "messages": chat["messages"]},
                         "max_tokens", {"container": "container_1"})
    out += [Case("own-messages-400-no-max-tokens", "plain", "/v1/messages",
                 {"model": "mock-1", "messages": chat["messages"]}, status=400),
            Case("own-messages-404-unknown-model-anthropic-name", "plain", "/v1/messages",
                 {"model": "claude-no-such-model", "max_tokens": 16, "messages": chat["messages"]}, status=404)]
    # The same refusals for a streamed request (they come before any byte: an HTTP error, not an event).
    out += [replace(c, id=c.id + "-stream", body={**c.body, "stream": True}) for c in out
            if isinstance(c.body, dict) and c.path in ("/v1/chat/completions", "/v1/responses", "/v1/messages")]
    out += _count_tokens()
    return out


def _own_refusals(path: str, body: dict, max_key: str, front_refused: dict) -> list[Case]:
    """The gateway's own refusals on a client API other than chat: 400 (bad JSON, no model, a field the front
    cannot serve), 401, 403, 404, 429, and a 200 through the guarded gateway."""
    key = {"authorization": f"Bearer {GUARDED_KEY}"}
    tag = "own-" + path.removeprefix("/v1/").replace("/", "-")
    return [
        Case(f"{tag}-400-invalid-json", "plain", path, b"{not json", status=400),
        Case(f"{tag}-400-body-not-object", "plain", path, b"[1, 2]", status=400),
        Case(f"{tag}-400-no-model", "plain", path, {k: v for k, v in body.items() if k != "model"}, status=400),
        Case(f"{tag}-400-front-refuses", "plain", path, {**body, **front_refused}, status=400),
        Case(f"{tag}-404-unknown-model", "plain", path, {**body, "model": "no-such-model"}, status=404),
        Case(f"{tag}-401-no-key", "guarded", path, body, status=401),
        Case(f"{tag}-401-wrong-key", "guarded", path, body, headers={"authorization": "Bearer fgw-wrong"},
             status=401),
        Case(f"{tag}-403-model-not-allowed", "guarded", path, {**body, "model": FORBIDDEN_MODEL}, headers=key,
             status=403),
        Case(f"{tag}-429-over-token-limit", "guarded", path, {**body, max_key: 5000}, headers=key, status=429),
        Case(f"{tag}-200-guarded", "guarded", path, body, headers=key),
    ]


COUNT_TOKENS = "/v1/messages/count_tokens"


def _count_tokens() -> list[Case]:
    """`/v1/messages/count_tokens` on every provider (Anthropic's own count, the gateway's estimate elsewhere), and
    its refusals."""
    messages = [{"role": "user", "content": "how many tokens is this?"}]
    out = [Case(f"{provider}-count-tokens", "plain", COUNT_TOKENS, {"model": row.model, "messages": messages})
           for provider, row in ROWS.items()]
    key = {"authorization": f"Bearer {GUARDED_KEY}"}
    body = {"model": "mock-1", "messages": messages}
    out += [
        Case("own-count-tokens-400-invalid-json", "plain", COUNT_TOKENS, b"{not json", status=400),
        Case("own-count-tokens-400-no-messages", "plain", COUNT_TOKENS, {"model": "mock-1"}, status=400),
        Case("own-count-tokens-400-no-model", "plain", COUNT_TOKENS, {"messages": messages}, status=400),
        Case("own-count-tokens-404-unknown-model", "plain", COUNT_TOKENS, {**body, "model": "no-such-model"},
             status=404),
        Case("own-count-tokens-401-no-key", "guarded", COUNT_TOKENS, body, status=401),
        Case("own-count-tokens-403-model-not-allowed", "guarded", COUNT_TOKENS, {**body, "model": FORBIDDEN_MODEL},
             headers=key, status=403),
        Case("own-count-tokens-200-guarded", "guarded", COUNT_TOKENS, body, headers=key),
    ]
    return out


def cases() -> list[Case]:
    out: list[Case] = []
    for ep in ENDPOINTS:
        for provider in ep.providers:
            out += _provider_cases(provider, ROWS[provider], ep)
    out += _refusals() + _embeddings() + _own()
    return out
