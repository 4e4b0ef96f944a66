"""One upstream attempt: send the request to one target and say, explicitly, how it ended.

An attempt returns one of three outcomes, each carrying who caused it:
- `Streamed`: a streamed answer ended (bytes went to the client, or only its tail
  is left to write after the audit record); nothing can fall back any more.
- `Retry`: a failure before any byte reached the client that another try or
  target may fix (kind, retry-after, and the answer to give if none does).
- `Final`: an answer to send as it is (a success body, an upstream 4xx, a policy
  refusal, a gateway error).
Each outcome has a breaker `verdict`: only the upstream's own failures count
against a target; a policy that acted, a client that left or an upstream 4xx
teach nothing about its health.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import typing

import orjson

from fastgw import metrics, telemetry
from fastgw.api.errors import GatewayError, Origin, UpstreamAuthError, UpstreamError, UpstreamTimeout, from_transport
from fastgw.front import FRONTS, Front, FrontSource, front_for
from fastgw.front.messages import anthropic_error
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import SYNC_OUTPUT_BYTES, Chain
from fastgw.proto.client import TransportError, TransportTimeout
from fastgw.proto.server import ConnectionTracker, Responder
from fastgw.providers import ADAPTERS, adapter_for
from fastgw.providers.base import Adapter, Endpoint, TargetRuntime, Translator, UpstreamRequest
from fastgw.providers.native import messages_request
from fastgw.providers.openai import OpenAIAdapter
from fastgw.providers.scope import Grants, check_tools
from fastgw.routing import Verdict
from fastgw.policy_relay import PolicyRelay
from fastgw.quota import prompt_estimate
from fastgw.stream import Source, SSERelay, StreamEnd, TranslatedSource
from fastgw.upstreams import Call, Connection, Upstream

_monotonic: typing.Final = time.monotonic  # compiled: a constant, not a lookup per call

__all__ = ["Attempt", "Streamed", "Retry", "Final", "Outcome", "Answer", "SSE_HEADERS", "JSON"]

log = logging.getLogger("fastgw.attempt")

# The registries read per attempt, as Final aliases of the same dicts (compiled, an imported name is a dictionary
# lookup at each use).
_ADAPTERS: typing.Final = ADAPTERS
_FRONTS: typing.Final = FRONTS
JSON: typing.Final = (b"content-type", b"application/json")
# Headers for streamed answers: no caching, and tell nginx not to buffer (X-Accel-Buffering).
SSE_HEADERS: typing.Final = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                             (b"x-accel-buffering", b"no")]
# Upstream response headers worth passing to the client (rate-limit and request-id information SDKs read).
# Not `openai-organization`: it names the operator's OpenAI organization.
_PASS_HEADERS: typing.Final = frozenset({b"openai-processing-ms", b"openai-version",
                                         b"retry-after", b"retry-after-ms", b"x-ratelimit-limit-requests",
                                         b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-requests",
                                         b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-requests",
                                         b"x-ratelimit-reset-tokens", b"x-should-retry"})
_DIALECT: typing.Final = {Endpoint.RESPONSES: "responses", Endpoint.MESSAGES: "messages"}
#: Endpoints whose clients parse Anthropic's error envelope.
_ANTHROPIC: typing.Final = frozenset({Endpoint.MESSAGES, Endpoint.COUNT_TOKENS})
#: Endpoints whose answers carry no generated text for the output policies.
_NO_OUTPUT: typing.Final = frozenset({Endpoint.EMBEDDINGS, Endpoint.COUNT_TOKENS})
#: Upstream statuses that mean "the operator's credentials were refused": a 502 for the client, never relayed (an
#: OpenAI 401 quotes the key's last characters; the client would also take it for a problem with its own key).
_AUTH_STATUSES: typing.Final = frozenset({401, 403, 407})
#: What an upstream error body may say about the operator's account, taken out before it is relayed: key-shaped
#: strings (OpenAI quotes `sk-proj-****abcd`), organization and project ids (a 429 names `org-...`).
_ACCOUNT_IDS: typing.Final = re.compile(rb"\b(?:sk|rk|pk)-[A-Za-z0-9_*\-]{3,}|\b(?:org|proj)[-_][A-Za-z0-9]{8,}"
                                        rb"|\bAIza[0-9A-Za-z_\-]{20,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_REDACTED: typing.Final = b"[redacted]"
#: Seconds between two log lines about one target's refused key or unreachable address (one per request would
#: let every client request write an operator log line while a key or a host is broken).
_ALARM_INTERVAL: typing.Final = 1.0
_alarms: typing.Final[dict[tuple[str, str], float]] = {}


class Answer:
    """A whole HTTP answer to send."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Streamed:
    """A streamed answer ended; `relay.close_with(end.tail)` writes what it left (after the audit record)."""

    __slots__ = ("end", "relay", "verdict")

    def __init__(self, end: StreamEnd, relay: SSERelay, verdict: str) -> None:
        self.end = end
        self.relay = relay
        self.verdict = verdict


class Retry:
    """Nothing reached the client and another try may answer: `answer` (or `error`) if none does."""

    __slots__ = ("kind", "error", "answer", "retry_after", "verdict")

    def __init__(self, kind: str, error: GatewayError, answer: Answer | None = None,
                 retry_after: float | None = None) -> None:
        self.kind = kind  # "connect_error" | "timeout" | "429" | "5xx"
        self.error = error
        self.answer = answer
        self.retry_after = retry_after
        self.verdict = Verdict.FAILURE


class Final:
    """An answer to send as it is: `answer` (a body) or `error` (an error envelope)."""

    __slots__ = ("answer", "error", "verdict")

    def __init__(self, verdict: str, answer: Answer | None = None, error: GatewayError | None = None) -> None:
        self.answer = answer
        self.error = error
        self.verdict = verdict


Outcome = Streamed | Retry | Final


def retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The upstream's Retry-After (or retry-after-ms) in seconds, if it sent one that parses."""
    for n, v in headers:
        if n == b"retry-after-ms":
            try:
                return float(v) / 1000
            except ValueError:
                pass
        if n == b"retry-after":
            try:
                return float(v)
            except ValueError:
                return None
    return None


def _kind(err: GatewayError) -> str:
    return "timeout" if isinstance(err, UpstreamTimeout) else "5xx"


def _ask_usage(body: dict) -> dict | None:
    """The body with `stream_options.include_usage` set, or None when the client asked for usage already."""
    so = body.get("stream_options")
    if isinstance(so, dict) and so.get("include_usage"):
        return None
    return {**body, "stream_options": {**(so if isinstance(so, dict) else {}), "include_usage": True}}


class Attempt:
    """Sends one request to one target and returns its `Outcome`."""

    def __init__(self, chain: Chain, loop: asyncio.AbstractEventLoop, upstreams: dict[str, Upstream],
                 http: Upstream, tracker: ConnectionTracker | None = None) -> None:
        self.chain = chain
        self.loop = loop
        self._upstreams = upstreams
        self._http = http
        #: The worker's connections: a stream answered while no other request is in flight may spend a write
        #: on its first event (`SSERelay.early_write`).
        self._tracker = tracker

    async def run(self, target: TargetRuntime, call: Call, resp: Responder, ctx: RequestContext) -> Outcome:
        """Send `call` to `target`. Errors the gateway itself finds for this target (a parameter the provider
        cannot take) are a `Final` answer; nothing here raises for an upstream failure."""
        audit = self.chain.audit
        if audit is not None:
            audit.check(ctx)  # a request that cannot be audited never reaches an upstream (503 audit_unavailable)
        ctx.target = target.id
        upstream = self._upstreams.get(target.provider, self._http)
        endpoint = call.endpoint  # the client's (a front sends the target a chat call)
        try:
            adapter, sent, front = self._prepare(target, call, ctx)
            request = upstream.prepare(target, adapter, sent)
        except GatewayError as e:
            return Final(Verdict.NEUTRAL, error=_styled(e, endpoint))
        if telemetry.ON:
            request = telemetry.attempt_started(ctx, target, request)  # + traceparent
        now = self.loop.time()
        try:
            conn = await upstream.open(target, request, sent)
        except TransportError as t:
            err = from_transport(t, target.id)  # the client's error names the target; the operator's log, its address
            kind = "timeout" if isinstance(err, UpstreamTimeout) else (
                "5xx" if err.code == "upstream_protocol_error" else "connect_error")
            if kind == "connect_error":
                _alarm(target.id, "connect", "target %s: %s", target.id, t)
            return Retry(kind, _styled(err, endpoint))
        # Written: an open stream's frame keeps neither the encoded request nor its headers (issue 18).
        del request
        try:
            status = conn.status
            passed = [(n, v) for n, v in conn.headers if n in _PASS_HEADERS]
            upstream_rid = conn.header(b"x-request-id") or conn.header(b"request-id")
            if upstream_rid is not None:
                passed.append((b"x-upstream-request-id", upstream_rid))
            ctype = conn.header(b"content-type") or b""
            if sent.stream and status == 200 and adapter.is_stream(ctype):
                translator = adapter.stream_translator(target, sent.body)
                strip_usage = sent.strip_usage
                # Nor the call as sent: its body may be a copy made for `include_usage` (`_ask_usage`).
                del sent
                deadlines = (now + target.ttft_timeout, target.idle_timeout, now + target.max_duration,
                             target.heartbeat)
                if front is not None:
                    return await self._front_stream(front, conn, translator, resp, ctx, SSE_HEADERS + passed,
                                                    deadlines)
                source: Source = conn if translator is None else TranslatedSource(conn, translator)
                return await self._stream(source, resp, ctx, SSE_HEADERS + passed, deadlines, strip_usage)
            # The body is awaited here, not in a helper coroutine: one frame less on its resume.
            try:
                data = await conn.read_body(timeout=max(0.001, now + target.max_duration - self.loop.time()),
                                            first_by=now + target.ttft_timeout, idle=target.idle_timeout)
            except TransportTimeout as t:
                return Retry("timeout", _styled(from_transport(t), endpoint))
            except TransportError as t:
                # Reset or broken framing mid-body: nothing reached the client, so another target may answer.
                return Retry("5xx", _styled(from_transport(t), endpoint))
            return await self._whole(target, adapter, sent, conn, ctx, ctype, passed, data, front)
        finally:
            upstream.release(conn)

    def _prepare(self, target: TargetRuntime, call: Call, ctx: RequestContext) -> tuple[Adapter, Call, Front | None]:
        """The adapter for this target, the call as this target gets it (400 for a provider-run tool or MCP
        server neither the target nor the caller's roles allow), and the front that translates a client API
        the target lacks (Responses, Messages) to a chat call and its answer back."""
        check_tools(target, call.endpoint, call.body, self._grants(ctx))
        adapter = _ADAPTERS.get(target.provider) or adapter_for(target.provider)
        if call.endpoint in _FRONTS:
            front = front_for(call.endpoint, target.provider, call.body)
            if front is not None:
                return adapter, Call(Endpoint.CHAT, front.chat_request(), call.stream, call.request_id,
                                     call.headers), front
            if call.endpoint == Endpoint.MESSAGES:
                return _NativeMessages(call), call, None
            return adapter, call, None
        if call.endpoint == Endpoint.COUNT_TOKENS:
            return _NativeMessages(call, "/v1/messages/count_tokens"), call, None
        if (call.stream and call.endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS)
                and isinstance(adapter, OpenAIAdapter)):
            asked = _ask_usage(call.body)
            if asked is not None:
                # Ask for the provider's own count; the extra usage chunk is taken out again on the way back.
                call = Call(call.endpoint, asked, True, call.request_id, call.headers, strip_usage=True)
        return adapter, call, None

    def _grants(self, ctx: RequestContext) -> Grants:
        """Whether one of the caller's rbac roles grants a feature (`allow_server_tools`, `allow_mcp`); asked only
        for requests that need one. Without rbac (an open gateway) nothing is granted beyond the target's own."""
        rbac = self.chain.rbac
        # (getattr with a default on None formats and clears an AttributeError on every request without rbac)
        grants = getattr(rbac, "grants", None) if rbac is not None else None  # RbacPolicy.grants(ctx, name)
        if grants is None:
            return _nothing
        return lambda name: bool(grants(ctx, name))

    async def _stream(self, source: Source, resp: Responder, ctx: RequestContext,
                      headers: list[tuple[bytes, bytes]], deadlines: tuple[float, float, float, float],
                      strip_usage: bool) -> Outcome:
        chain = self.chain
        # Deferred end: the audit record goes to the OS before the last byte, and a buffered answer that is
        # blocked before any byte was sent can still become an HTTP 409.
        defer = chain.audit is not None or chain.buffered
        head = (200, headers)
        relay: SSERelay
        # With the usage chunk, a legacy completion loses the `"usage": null` its other chunks got because we asked
        # (the spec allows no null usage there; a chat chunk's null usage is allowed and left: no cost per event).
        null_usage = strip_usage and ctx.endpoint == Endpoint.COMPLETIONS
        if chain.decodes_output:
            dialect = _DIALECT.get(ctx.endpoint, "chat")
            policy = chain.stream_policy(ctx, dialect, strip_usage)
            policy.strip_null_usage = null_usage
            relay = PolicyRelay(resp, source, self.loop, head, policy, defer_end=defer)
        else:
            relay = SSERelay(resp, source, self.loop, head, defer_end=defer, dialect=_DIALECT.get(ctx.endpoint,
                                                                                                 "chat"))
            relay.usage_sink = ctx
            relay.strip_usage = strip_usage
            relay.strip_null_usage = null_usage
        tracker = self._tracker
        relay.early_write = tracker is not None and tracker.requests_in_flight <= 1
        opened = _monotonic()
        relay.start()  # the bytes that came with the head go out first; the gauge below can wait for them
        metrics.stream_opened()
        if not relay.done.done():
            # Armed after the bytes that came with the head: a stream they completed needs no timer at all,
            # and one they began gets its idle deadline at once (not a TTFT timer cancelled and set again).
            relay.arm(*deadlines)
        try:
            end = await relay.done
        finally:
            metrics.stream_closed(_monotonic() - opened, relay.clock)
        err = end.error
        if end.before_first_byte:
            assert err is not None
            if err.origin == Origin.UPSTREAM:
                return Retry(_kind(err), err)  # nothing is committed: another target may answer
            return Final(Verdict.NEUTRAL, error=err)  # a policy refused it before any byte: never retried
        # The target answered: a cut after the first byte is reported in-stream and does not open its circuit.
        # A client that left or a policy that ended the stream says nothing about the target.
        verdict = Verdict.SUCCESS
        if end.client_left or (err is not None and err.origin != Origin.UPSTREAM):
            verdict = Verdict.NEUTRAL
        return Streamed(end, relay, verdict)

    async def _front_stream(self, front: Front, conn: Connection, translator: Translator | None,
                            resp: Responder, ctx: RequestContext, headers: list[tuple[bytes, bytes]],
                            deadlines: tuple[float, float, float, float]) -> Outcome:
        """A chat stream relayed as the client API's events (`fastgw.front`); its usage is the upstream's."""
        estimate = prompt_estimate(ctx.body) if ctx.endpoint == Endpoint.MESSAGES and ctx.body else 0
        source = FrontSource(conn, translator, front.writer(estimate))
        outcome = await self._stream(source, resp, ctx, headers, deadlines, False)
        if source.writer.usage is not None:
            ctx.usage = source.writer.usage  # chat names: what the usage record and the quota settlement read
        return outcome

    async def _whole(self, target: TargetRuntime, adapter: Adapter, call: Call, conn: Connection,
                     ctx: RequestContext, ctype: bytes, passed: list[tuple[bytes, bytes]], data: bytes,
                     front: Front | None = None) -> Outcome:
        """The outcome of a whole (non-streamed) answer: translated (to the client API's body through `front`),
        checked by the output policies."""
        status, data = adapter.translate_response(target, call.body, conn.status, data)
        if status in _AUTH_STATUSES:
            # The operator's key was refused: say so to the operator, and to the client without the upstream's text.
            _alarm(target.id, "auth", "target %s refused the gateway's credentials (HTTP %d); fix its "
                   "secret_key_ref", target.id, status)
            return Retry("auth", _styled(UpstreamAuthError(target.id, status), ctx.endpoint))
        if status >= 400:
            answer = upstream_error_answer(status, data, passed, target)
            if front is not None:
                answer.body = front.error_body(status, answer.body)
            elif call.endpoint in _ANTHROPIC:
                answer.body = anthropic_error(status, answer.body)  # one the gateway wrote for a bare upstream error
            if status == 429 or status >= 500:
                err = UpstreamError(f"upstream answered HTTP {status}", status=status)
                return Retry("429" if status == 429 else "5xx", err, answer, retry_after(conn.headers))
            return Final(Verdict.NEUTRAL, answer=answer)
        if not isinstance(adapter, OpenAIAdapter):
            ctype = b"application/json"  # translated to an OpenAI body (OpenAI-family bodies pass as they came)
        if front is not None:
            try:
                data = front.whole(data)
            except GatewayError as e:
                return Retry("5xx", _styled(e, ctx.endpoint))  # not a chat completion: another target may answer
            ctype = b"application/json"
        if call.endpoint not in _NO_OUTPUT and self.chain.decodes_output:
            try:
                chain = self.chain
                # In one go when small (the common case: no coroutine to make); in slices when it is large.
                data = (chain.check_output_body(ctx, data) if len(data) <= SYNC_OUTPUT_BYTES
                        else await chain.check_output_body_async(ctx, data))
            except GatewayError as e:
                # The upstream answered; a policy refused the answer (or could not read it).
                return Final(Verdict.NEUTRAL if e.origin != Origin.UPSTREAM else Verdict.FAILURE, error=e)
        return Final(Verdict.SUCCESS, answer=Answer(200, [(b"content-type", ctype or b"application/json")] + passed,
                                                    data))


class _NativeMessages(OpenAIAdapter):
    """The Anthropic Messages API (or its token count) to an anthropic target: the client's body, the target's key."""

    __slots__ = ("_call", "_path")

    def __init__(self, call: Call, path: str = "/v1/messages") -> None:
        self._call = call
        self._path = path

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        return messages_request(target, body, stream, self._call.headers, self._path)


def _nothing(name: str) -> bool:
    return False


def _styled(err: GatewayError, endpoint: str) -> GatewayError:
    """`err` in the envelope the client parses: Anthropic's on /v1/messages (and its count_tokens)."""
    return err.anthropic() if endpoint in _ANTHROPIC else err


def _alarm(target: str, what: str, msg: str, *args: object) -> None:
    """An ERROR line about a target, at most once per `_ALARM_INTERVAL` per (target, what)."""
    now = _monotonic()
    key = (target, what)
    if now - _alarms.get(key, -_ALARM_INTERVAL) >= _ALARM_INTERVAL:
        _alarms[key] = now
        log.error(msg, *args)


def scrub(data: bytes, target: TargetRuntime | None = None) -> bytes:
    """An upstream error body without what it says of the operator's account: the target's key, key-shaped
    strings and organization/project ids (`_ACCOUNT_IDS`)."""
    key = target.api_key.encode() if target is not None and target.api_key else b""
    if key and key in data:
        data = data.replace(key, _REDACTED)
    return _ACCOUNT_IDS.sub(_REDACTED, data)


def _full_envelope(parsed: dict, data: bytes, status: int) -> bytes:
    """An upstream's OpenAI error envelope with the four fields the spec requires of it (`message`, `type`, `param`,
    `code`; strings, `param` and `code` may be null), the upstream's own values kept: the bytes as they came when
    nothing is missing. Anthropic's envelope (`"type": "error"`, native /v1/messages) keeps its own shape."""
    err = parsed["error"]
    if parsed.get("type") == "error":
        return data
    fixed = dict(err)
    if not isinstance(fixed.get("message"), str):
        fixed["message"] = f"the upstream answered HTTP {status}" if fixed.get("message") is None else \
            orjson.dumps(fixed["message"]).decode()
    if not isinstance(fixed.get("type"), str):
        fixed["type"] = "invalid_request_error" if status < 500 else "server_error"
    for name in ("param", "code"):
        value = fixed.get(name)
        fixed[name] = value if value is None or isinstance(value, str) else str(value)  # Gemini-style numeric codes
    if fixed == err:
        return data
    return orjson.dumps({**parsed, "error": fixed})


def upstream_error_answer(status: int, data: bytes, passed: list[tuple[bytes, bytes]],
                          target: TargetRuntime | None = None) -> Answer:
    """An upstream error relayed: its own envelope when it has one (completed to the four fields OpenAI's have,
    scrubbed of account details), ours otherwise (its text is the upstream's, which may be a proxy's page naming
    internal hosts: logged, not relayed)."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        out = scrub(_full_envelope(parsed, data, status), target)
    else:
        who = f"target {target.id!r}" if target is not None else "the upstream"
        log.warning("%s answered HTTP %d without an error envelope: %r", who, status, data[:200])
        out = UpstreamError(f"{who} answered HTTP {status} without an error envelope", status=status).body()
    headers = [JSON] + passed
    # Retrying a request the upstream found invalid cannot help (4xx other than 408/409/429).
    if 400 <= status < 500 and status not in (408, 409, 429) and not any(n == b"x-should-retry" for n, _ in passed):
        headers.append((b"x-should-retry", b"false"))
    return Answer(status, headers, out)
