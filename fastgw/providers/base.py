"""What every provider adapter provides: the upstream request for an OpenAI-shaped call, and how to read the answer.

Adapters are pure: they build bytes and headers and never touch sockets; the
request pipeline (`fastgw.app`) does the I/O.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import orjson

from fastgw.api import limits

__all__ = ["Endpoint", "UpstreamRequest", "TargetRuntime", "split_base_url", "Translator", "Adapter", "host_header",
           "encode_json", "request_head", "MAX_ENCODED_DEPTH"]

#: Deepest JSON nesting the upstream request can carry: orjson's encoder stops at 254 levels (its guard for the C
#: stack). A client body parses up to 1024 levels, so a body nested past this (after a provider's translation
#: wraps it in a few levels more) is refused as the client's 400 `nesting_too_deep`, never a 500.
MAX_ENCODED_DEPTH: Final = 254
#: Dict keys of the deepest path that name the parameter in that 400 (`tools[0].function.parameters`).
_PARAM_KEYS: Final = 3


class Endpoint:
    """The OpenAI endpoints the gateway serves (path suffix after /v1/)."""

    CHAT: Final = "chat/completions"
    COMPLETIONS: Final = "completions"
    EMBEDDINGS: Final = "embeddings"
    RESPONSES: Final = "responses"
    MESSAGES: Final = "messages"
    ALL: Final = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES)
    #: Anthropic's token count: answered by the route itself (the provider's count or the gateway's estimate).
    COUNT_TOKENS: Final = "messages/count_tokens"


class UpstreamRequest:
    """One HTTP request to an upstream, ready to frame; nothing changes one after it is built (a new one is). A
    plain class: a dataclass's generated `__init__` stays a Python function even in a compiled module (one
    interpreted frame a request, issue 18), this one compiles."""

    __slots__ = ("scheme", "host", "port", "method", "path", "headers", "body", "head")

    def __init__(self, scheme: str, host: str, port: int, method: str, path: str,
                 headers: list[tuple[bytes, bytes]], body: bytes, head: bytes | None = None) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        #: The request line and `headers` as encoded bytes, when the builder has them already (`json_post` keeps
        #: them per target); None: `encode` builds them.
        self.head = head

    def __repr__(self) -> str:
        return f"UpstreamRequest({self.method} {self.scheme}://{self.host}:{self.port}{self.path})"

    def encode(self) -> bytes:
        """The request as HTTP/1.1 bytes with Content-Length framing (one write)."""
        head = self.head
        if head is None:
            head = request_head(self.method, self.path, self.headers)
        return b"%scontent-length: %d\r\n\r\n%s" % (head, len(self.body), self.body)


def request_head(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request line and `headers` of an HTTP/1.1 request (without the framing header and the blank line)."""
    head = [b"%s %s HTTP/1.1\r\n" % (method.encode(), path.encode())]
    for n, v in headers:
        head += (n, b": ", v, b"\r\n")
    return b"".join(head)


@functools.lru_cache(maxsize=256)  # pure, and called per request with one of a handful of target URLs
def split_base_url(url: str) -> tuple[str, str, int, str]:
    """'https://api.openai.com/v1' -> ('https', 'api.openai.com', 443, '/v1')."""
    u = urlsplit(url)
    scheme = u.scheme
    host = u.hostname or ""
    port = u.port or (443 if scheme == "https" else 80)
    return scheme, host, port, u.path.rstrip("/")


@dataclass(slots=True)
class TargetRuntime:
    """A configured target with what was resolved at start-up (secret, parsed URL)."""

    id: str
    provider: str
    model: str
    aliases: tuple[str, ...] = ()
    base_url: str | None = None
    api_key: str | None = None
    ca_file: str | None = None
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    connect_timeout: float = limits.CONNECT_TIMEOUT
    ttft_timeout: float = limits.TTFT_TIMEOUT
    idle_timeout: float = limits.IDLE_TIMEOUT
    max_duration: float = limits.MAX_DURATION
    heartbeat: float = 0.0
    breaker_failures: int = limits.BREAKER_FAILURES
    breaker_cooldown: float = limits.BREAKER_COOLDOWN
    #: The breaker is counted in the shared state (every worker of every instance), not this worker's alone.
    breaker_shared: bool = False
    weight: float = 1.0
    #: The provider's own settings (a MockModel, Bedrock's signer...): typed Any, as a compiled dataclass cannot
    #: declare an `object` field (its annotations are looked up by name when the class is built).
    options: Any = None
    deployment: str | None = None
    api_version: str = "2024-10-21"
    region: str | None = None
    #: anthropic: client `anthropic-version` values forwarded on /v1/messages (none: the client's header is never
    #: forwarded and the adapter's own version is sent).
    anthropic_versions: tuple[str, ...] = ()
    #: anthropic: `anthropic-beta` flags a /v1/messages client may ask for (any other: 400).
    anthropic_betas: tuple[str, ...] = ()
    #: Provider-run tools (web search, code execution...) may be requested through this target.
    allow_server_tools: bool = False
    #: Remote MCP servers (`mcp_servers`, Responses `mcp` tools) may be requested through this target.
    allow_mcp: bool = False
    #: What `json_post` builds once, by path, accept and credentials (bounded: REQUEST_HEADS).
    heads: dict[tuple[object, ...], PostHead] = field(default_factory=dict, repr=False, compare=False)


class PostHead:
    """What `json_post` builds once per target, path, accept and credentials: where the request goes (the target's
    base URL split, no longer per request: ~600 instructions), its header list and its encoded head."""

    __slots__ = ("scheme", "host", "port", "path", "headers", "head")

    def __init__(self, scheme: str, host: str, port: int, path: str, headers: list[tuple[bytes, bytes]],
                 head: bytes) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.headers = headers
        self.head = head


# Compiled, constants: a module's attribute and a builtin are each a lookup at every call (~240 instructions).
_dumps: Final = orjson.dumps
_memoryview: Final = memoryview

#: What the gateway calls itself upstream.
USER_AGENT: Final = b"fastgw/0.1"


def chat_only(provider: str, endpoint: str) -> None:
    """Translated providers serve chat completions only: any other endpoint is a clear 400."""
    if endpoint != Endpoint.CHAT:
        from fastgw.api.errors import GatewayError

        raise GatewayError(f"provider {provider} serves only /v1/chat/completions, not /v1/{endpoint}", status=400,
                           type="invalid_request_error", code="unsupported_endpoint", no_retry=True)


def json_post(target: TargetRuntime, path: str, payload: bytes, stream: bool,
              auth: list[tuple[bytes, bytes]], stream_type: bytes = b"text/event-stream") -> UpstreamRequest:
    """A JSON POST to `{target.base_url}{path}` with the target's own credentials and extra headers. The header
    list and its encoded head are built once per target, path, accept and credentials (`TargetRuntime.heads`),
    not per request: the request shares them (a caller that adds a header builds a new list)."""
    accept = stream_type if stream else b"application/json"
    key = (path, accept, *auth)
    heads = target.heads
    built = heads.get(key)
    if built is None:
        assert target.base_url is not None
        scheme, host, port, prefix = split_base_url(target.base_url)
        headers: list[tuple[bytes, bytes]] = [
            (b"host", host_header(scheme, host, port)),
            (b"content-type", b"application/json"),
            (b"accept", accept),
            (b"user-agent", USER_AGENT),
            *auth,
            *target.extra_headers,
        ]
        built = PostHead(scheme, host, port, prefix + path, headers, request_head("POST", prefix + path, headers))
        if len(heads) >= limits.REQUEST_HEADS:
            heads.clear()
        heads[key] = built
    return UpstreamRequest(built.scheme, built.host, built.port, "POST", built.path, built.headers, payload,
                           built.head)


def encode_json(obj: object, client_body: dict | None = None, at: str = "") -> bytes:
    """`orjson.dumps(obj)`, with a body nested past `MAX_ENCODED_DEPTH` answered as the client's 400 naming the
    deepest parameter of `client_body` (the request as the client wrote it; else `obj`, found at param `at`)."""
    try:
        # An exact-size copy: orjson's bytes keep its whole output buffer (4 KiB at least), and an upstream body
        # lives as long as its request: ~4 KB of every open stream (issue 18); the copy costs ~0.3 µs.
        return bytes(_memoryview(_dumps(obj)))
    except orjson.JSONEncodeError:  # parsed JSON holds only encodable values: the nesting is what failed
        raise _too_deep(client_body if client_body is not None else obj, at) from None


def _deepest(obj: object) -> tuple[int, list[str | int]]:
    """(depth, path) of the most deeply nested container in `obj` (iterative: the nesting is the client's)."""
    best: tuple[int, list[str | int]] = (0, [])
    stack: list[tuple[object, int, list[str | int]]] = [(obj, 0, [])]
    while stack:
        node, depth, path = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None:
            continue
        if depth + 1 > best[0]:
            best = (depth + 1, path)
        for k, v in items:
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1, path + [k]))
    return best


def _too_deep(body: object, at: str = "") -> Exception:
    from fastgw.api.errors import InvalidRequest

    depth, path = _deepest(body)
    param, keys = at, 0
    for seg in path:
        if isinstance(seg, int):
            param += f"[{seg}]"
            continue
        if keys == _PARAM_KEYS:
            break
        keys += 1
        param += f".{str(seg)[:64]}" if param else str(seg)[:64]
    return InvalidRequest(f"The request nests JSON {depth} levels deep (at {param or 'the body'}): more than an "
                          f"upstream request can carry ({MAX_ENCODED_DEPTH} levels once translated).",
                          param=param or None, code="nesting_too_deep")


def json_object(data: bytes | str) -> dict | None:
    """`data` decoded when it is a JSON object; None when it is not JSON or JSON of another type."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def bearer(target: TargetRuntime) -> list[tuple[bytes, bytes]]:
    """`Authorization: Bearer <target key>` when the target has one."""
    return [(b"authorization", b"Bearer " + target.api_key.encode())] if target.api_key else []


@functools.lru_cache(maxsize=256)
def host_header(scheme: str, host: str, port: int) -> bytes:
    """The Host header value: the port only when it is not the scheme's default."""
    h = host.encode("idna")
    return h if port == (443 if scheme == "https" else 80) else b"%s:%d" % (h, port)


class Translator(Protocol):
    """Turns one provider's streamed body into OpenAI `chat.completion.chunk` objects (structured, not bytes).

    `feed(data)` takes raw body bytes as they arrive and returns the chunk dicts the events they complete
    translate to (maybe none); `finish()` is called at the clean end of the body and returns the last chunks,
    the usage chunk last when the client asked for `stream_options.include_usage`. Translators never emit
    `data: [DONE]`: the relay writes the terminator. Both raise `GatewayError` for a provider error event or
    a malformed stream (the relay turns it into the in-stream error envelope); an error met after other events
    of the same read is deferred: those chunks are returned, and the error is raised by the next call.
    The dicts are the relay's to keep (a translator never touches a chunk it has returned); callers that
    need bytes use `fastgw.providers.chunks.encode_chunks`.
    """

    def feed(self, data: bytes) -> list[dict]: ...
    def finish(self) -> list[dict]: ...


class Adapter(Protocol):
    """What a provider module offers the request pipeline (pure: no sockets)."""

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest: ...

    def stream_translator(self, target: TargetRuntime, body: dict) -> Translator | None: ...

    def is_stream(self, content_type: bytes) -> bool: ...

    def translate_response(self, target: TargetRuntime, body: dict, status: int, data: bytes) -> tuple[int, bytes]: ...
