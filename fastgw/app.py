"""Routes and the request pipeline: parse the OpenAI request, pick a target, forward it, relay the answer.

One `App` per worker. It owns the upstream pool and the resolved targets; the
HTTP server calls it once per request with the parsed request and a responder.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import time
import logging
import os
import re
from typing import Awaitable, Callable

import orjson

from fastgw import accesslog, metrics
from fastgw.config import Config
from fastgw.policy.base import PolicyFailure, PolicyViolation, RequestContext
from fastgw.policy.chain import Chain
from fastgw.api.errors import (GatewayError, UpstreamConnectError, UpstreamDisconnected, UpstreamError,
                               UpstreamTimeout, from_transport)
from fastgw.proto.client import TransportError, TransportTimeout, UpstreamConnection, UpstreamPool
from fastgw.proto.server import Request, Responder
from fastgw.config import DEFAULT_BASE_URLS
from fastgw.providers import adapter_for
from fastgw.providers.native import messages_request
from fastgw.providers.openai import OpenAIAdapter
from fastgw.providers.base import Endpoint, TargetRuntime
from fastgw.providers.mock import MockModel
from fastgw.routing import Router
from fastgw.stream import PolicyRelay, SSERelay, Source, TimedSource, TranslatedSource

__all__ = ["App", "build_targets"]

log = logging.getLogger("fastgw.app")
_RID_OK = re.compile(rb"[A-Za-z0-9._:-]+")
_PASS = OpenAIAdapter()  # pass-through: SSE relayed as is, bodies untouched

_JSON = (b"content-type", b"application/json")
# Headers for streamed answers: no caching, and tell nginx not to buffer (X-Accel-Buffering).
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
# Upstream response headers worth passing to the client (rate-limit and request-id information SDKs read).
_PASS_HEADERS = frozenset({b"openai-processing-ms", b"openai-version", b"openai-organization",
                           b"retry-after", b"retry-after-ms", b"x-ratelimit-limit-requests",
                           b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-requests",
                           b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-requests",
                           b"x-ratelimit-reset-tokens", b"x-should-retry"})


#: Endpoints that speak one provider family's own API, and the providers that serve them.
_NATIVE = {Endpoint.RESPONSES: frozenset({"openai", "azure"}), Endpoint.MESSAGES: frozenset({"anthropic"})}
_DIALECT = {Endpoint.RESPONSES: "responses", Endpoint.MESSAGES: "messages"}


class _Retryable(Exception):
    """A failure before any byte reached the client: another try, or another target, may still answer.

    `answer` sends (or raises) the final response when nothing else is left to try."""

    def __init__(self, kind: str, answer: Callable[[], Awaitable[None]], retry_after: float | None = None) -> None:
        self.kind = kind  # "connect_error" | "timeout" | "429" | "5xx"
        self.answer = answer
        self.retry_after = retry_after


def _account(ctx: RequestContext, partial: bool) -> None:
    """The usage record: the provider's count when it gave one, else an estimate (marked), and `partial`
    when the client left before the end."""
    if ctx.usage is None:
        prompt = 0
        if ctx.body:
            from fastgw.policy.textscan import request_slots
            prompt = sum(len(c[k]) for c, k, _f, _i in request_slots(ctx.body)) // 4 + 1
        completion = sum(len(t) for t in ctx.texts.values()) // 4 if ctx.texts else max(0, ctx.events - 3)
        ctx.usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion, "estimated": True}
    if partial:
        ctx.usage = {**ctx.usage, "partial": True}


def _raiser(err: GatewayError) -> Callable[[], Awaitable[None]]:
    """The final answer for a failure that has no better one: the error itself, as an HTTP error envelope."""
    async def answer() -> None:
        raise err
    return answer


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
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


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    no_retry = True


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    no_retry = True


def build_targets(cfg: Config, secrets: dict[str, str]) -> list[TargetRuntime]:
    """Resolve configured targets (keys, mock models) once, at start-up."""
    out = []
    for t in cfg.providers.targets:
        options = None
        if t.provider == "mock":
            m = t.mock
            options = MockModel(t.model, text=m.text if m else None, text_file=m.text_file if m else None,
                                chunk_size=m.chunk_size if m else 4, chunks=m.chunks if m else None,
                                delay=m.delay if m else 0.0, ttft=m.ttft if m else 0.0)
        out.append(TargetRuntime(
            id=t.id, provider=t.provider, model=t.model, aliases=tuple(t.aliases),
            base_url=t.base_url or DEFAULT_BASE_URLS.get(t.provider),
            deployment=t.deployment, api_version=t.api_version, region=t.region,
            api_key=secrets.get(t.id), ca_file=t.ca_file,
            extra_headers=[(k.lower().encode(), v.encode()) for k, v in t.headers.items()],
            connect_timeout=t.timeouts.connect, ttft_timeout=t.timeouts.ttft, idle_timeout=t.timeouts.idle,
            max_duration=t.timeouts.max_duration, heartbeat=t.timeouts.heartbeat,
            breaker_failures=t.circuit_breaker.failures,
            breaker_cooldown=t.circuit_breaker.cooldown, weight=t.weight, options=options))
    return out


class App:
    """The request pipeline of one worker."""

    def __init__(self, cfg: Config, targets: list[TargetRuntime], loop: asyncio.AbstractEventLoop,
                 chain: Chain | None = None) -> None:
        self.cfg = cfg
        self.loop = loop
        self.chain = chain or Chain()
        self.pool = UpstreamPool(loop)
        self.router = Router(cfg, targets)
        self.draining = False
        self._ids = itertools.count(1)
        # Unique across workers and restarts without a getrandom syscall per request: pid and a random salt.
        self._id_prefix = "%x%s" % (os.getpid(), os.urandom(3).hex())
        self.by_model: dict[str, list[TargetRuntime]] = {}
        for t in targets:
            for name in (t.model, *t.aliases):
                self.by_model.setdefault(name, []).append(t)
        self._models_body = self._render_models(targets)
        metrics.known_models(self.by_model)
        ref = cfg.server.metrics_token_ref
        token = os.environ.get(ref.env, "") if ref is not None else ""
        self._metrics_auth = b"Bearer " + token.encode() if token else None
        post = {"POST"}
        get = {"GET", "HEAD"}
        self.routes: dict[str, tuple[set[str], Callable[[Request, Responder], Awaitable[None]]]] = {
            "/v1/chat/completions": (post, self._chat),
            "/v1/completions": (post, self._completions),
            "/v1/embeddings": (post, self._embeddings),
            "/v1/responses": (post, self._responses),
            "/v1/messages": (post, self._messages),
            "/v1/models": (get, self._models),
            "/healthz": (get, self._healthz),
            "/metrics": (get, self._metrics),
            "/readyz": (get, self._readyz),
        }

    # ---- dispatch -----------------------------------------------------------------------
    async def __call__(self, req: Request, resp: Responder) -> None:
        path = req.path
        route = self.routes.get(path)
        if route is None and path.startswith("/v1/models/"):
            route = ({"GET", "HEAD"}, self._model)
        if route is None:
            raise GatewayError(f"Unknown request URL: {req.method} {path}. See the gateway's README for the "
                               "endpoints it serves.", status=404, type="invalid_request_error",
                               code="unknown_url", no_retry=True)
        methods, handler = route
        if req.method not in methods:
            allow = ", ".join(sorted(methods)).encode()
            raise GatewayError(f"Method {req.method} not allowed on {path}; use {', '.join(sorted(methods))}",
                               status=405, type="invalid_request_error", code="method_not_allowed",
                               no_retry=True, headers=[(b"allow", allow)])
        if not path.startswith("/v1/"):
            await handler(req, resp)
            return
        # Every /v1 request runs the chain and is audited, refused ones included.
        ctx = RequestContext(self._request_id(req), req.method, path, req.headers)
        resp.extra_headers.append((b"x-request-id", ctx.request_id.encode()))
        metrics.request_started()
        try:
            self.chain.authenticate(ctx)
            await handler(req, resp, ctx)
        except GatewayError as e:
            ctx.status = e.status
            ctx.error = e.code
            await self._record(ctx, resp)
            raise
        finally:
            if not ctx.status:
                ctx.status = resp.status or 499  # the client left before an answer
            if ctx.first_byte is None:
                ctx.first_byte = resp.first_write
            metrics.request_finished(ctx, path)
            accesslog.log_request(ctx, path, resp.bytes_sent)

    def _request_id(self, req: Request) -> str:
        """The client's x-request-id when it is a sane token (tracing across hops), else a fresh one."""
        given = req.header(b"x-request-id")
        if given and len(given) <= 128 and _RID_OK.fullmatch(given):
            return given.decode()
        return f"req_{self._id_prefix}{next(self._ids):06x}"

    async def _record(self, ctx: RequestContext, resp: Responder) -> None:
        """The audit record is handed to the OS before the response's last byte (if audit is on)."""
        if self.chain.audit is None:
            return
        ctx.first_byte = resp.first_write
        if not ctx.status:
            ctx.status = resp.status or 200
        try:
            await self.chain.record(ctx)
        except Exception:  # noqa: BLE001 - an audit trail that cannot be written must not be skipped quietly
            log.exception("audit record for %s could not be written", ctx.request_id)
            raise PolicyFailure("audit-logger", "cannot write the audit record") from None

    # ---- simple endpoints ------------------------------------------------------------------
    async def _metrics(self, req: Request, resp: Responder) -> None:
        if self._metrics_auth is not None:
            given = req.header(b"authorization") or b""
            if not hmac.compare_digest(given, self._metrics_auth):
                raise GatewayError("metrics need the metrics token", status=401, type="invalid_request_error",
                                   code="invalid_api_key", no_retry=True)
        body, ctype = metrics.render()  # every worker's figures, summed (Prometheus multiprocess mode)
        resp.send(200, [(b"content-type", ctype.encode())], body)

    async def _healthz(self, req: Request, resp: Responder) -> None:
        resp.send(200, [_JSON], b'{"status":"ok"}')

    async def _readyz(self, req: Request, resp: Responder) -> None:
        if self.draining:
            resp.send(503, [_JSON], b'{"status":"draining"}')
        else:
            resp.send(200, [_JSON], b'{"status":"ready"}')

    def _render_models(self, targets: list[TargetRuntime]) -> bytes:
        seen: dict[str, dict] = {}
        for t in targets:
            for name in (t.model, *t.aliases):
                seen.setdefault(name, {"id": name, "object": "model", "created": 0,
                                       "owned_by": "fastgw-mock" if t.provider == "mock" else t.provider})
        self._model_entries = seen
        return orjson.dumps({"object": "list", "data": list(seen.values())})

    async def _models(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        body = self._models_body
        rbac = self.chain.rbac
        if rbac is not None:
            rbac.authorize(ctx, ctx.path, None, False)
            visible = rbac.visible_models(ctx, list(self._model_entries))
            body = orjson.dumps({"object": "list", "data": [self._model_entries[m] for m in visible]})
        ctx.status = 200
        await self._record(ctx, resp)
        resp.send(200, [_JSON], body)

    async def _model(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        name = req.path[len("/v1/models/"):]
        entry = self._model_entries.get(name)
        rbac = self.chain.rbac
        if rbac is not None:
            rbac.authorize(ctx, "/v1/models", None, False)
            if entry is not None and not rbac.visible_models(ctx, [name]):
                entry = None  # not for this caller: as if it did not exist
        if entry is None:
            raise ModelNotFound(f"The model `{name}` does not exist on this gateway.", param="model")
        ctx.status = 200
        await self._record(ctx, resp)
        resp.send(200, [_JSON], orjson.dumps(entry))

    # ---- model endpoints ---------------------------------------------------------------------
    async def _chat(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        await self._proxy(Endpoint.CHAT, req, resp, ctx)

    async def _completions(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        await self._proxy(Endpoint.COMPLETIONS, req, resp, ctx)

    async def _embeddings(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        await self._proxy(Endpoint.EMBEDDINGS, req, resp, ctx)

    async def _responses(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        await self._proxy(Endpoint.RESPONSES, req, resp, ctx)

    async def _messages(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        await self._proxy(Endpoint.MESSAGES, req, resp, ctx)

    def _parse(self, req: Request) -> dict:
        ctype = req.header(b"content-type")
        if ctype is not None and b"json" not in ctype.lower():
            raise GatewayError("Content-Type must be application/json", status=415, type="invalid_request_error",
                               code="unsupported_media_type", no_retry=True)
        if not req.body:
            raise InvalidRequest("The request body is empty; expected a JSON object.")
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"We could not parse the JSON body of your request: {e.msg} "
                                 f"(line {e.lineno}, column {e.colno}).", code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter", param="model", code="missing_model")
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean", param="stream", code="invalid_type")
        return body

    async def _proxy(self, endpoint: str, req: Request, resp: Responder, ctx: RequestContext) -> None:
        body = self._parse(req)
        model = body["model"]
        stream = body.get("stream") is True and endpoint != Endpoint.EMBEDDINGS
        ctx.endpoint, ctx.body, ctx.model, ctx.stream = endpoint, body, model, stream
        raw: bytes | None = req.body
        if self.chain.check_input(ctx, body):
            raw = None  # a policy changed the request: re-encode it
        plan = self.router.plan(model)
        if plan is None:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                param="model")
        first = plan.targets[0]
        native = _NATIVE.get(endpoint)
        if native is not None and first.provider not in native:
            raise InvalidRequest(f"/v1/{endpoint} is served for {', '.join(sorted(native))} targets; model `{model}` "
                                 f"is on a {first.provider} target", code="unsupported_endpoint", param="model")
        if first.provider == "mock":
            ctx.target = first.id
            await self._mock(first, endpoint, body, stream, resp, ctx)
            return
        await self._fallback(plan, endpoint, body, raw, stream, resp, ctx)

    async def _fallback(self, plan, endpoint: str, body: dict, raw: bytes | None, stream: bool,  # noqa: ANN001
                        resp: Responder, ctx: RequestContext) -> None:
        """Try the plan's targets in order, retrying each per the retry policy, until one answers. Only
        failures before the first byte to the client get here; after it, errors are in-stream."""
        retry = plan.retry
        last: _Retryable | None = None
        wait_hint: list[float] = []
        for target in plan.targets:
            breaker = self.router.breakers[target.id]
            if target.provider == "mock" or not breaker.allow():
                wait_hint.append(breaker.retry_after())
                continue
            for attempt in range(retry.attempts):
                ctx.target = target.id
                try:
                    await self._upstream(target, endpoint, body, raw, stream, resp, ctx)
                    breaker.success()
                    metrics.upstream_attempt(target.id, "ok")
                    return
                except _Retryable as f:
                    breaker.failure()
                    metrics.upstream_attempt(target.id, f.kind)
                    last = f
                    ctx.decide("routing", "upstream", "retry", target=target.id, kind=f.kind, attempt=attempt + 1)
                    if f.kind not in retry.on or attempt + 1 >= retry.attempts:
                        metrics.fallback(ctx.model, f.kind)
                        break
                    delay = f.retry_after if f.retry_after is not None else retry.backoff * (2 ** attempt)
                    if delay > retry.max_retry_after or not breaker.allow():
                        break  # too long to wait here: the next target may answer sooner
                    await asyncio.sleep(delay)
        if last is not None:
            await last.answer()
            return
        after = max(1, int(min(wait_hint) + 0.999)) if wait_hint else 1
        raise GatewayError("all targets for this model are unavailable (circuit open); retry later", status=503,
                           type="upstream_error", code="upstream_unavailable",
                           headers=[(b"retry-after", str(after).encode())])

    def _relay(self, resp: Responder, source: Source, ctx: RequestContext) -> SSERelay:
        """The relay for a streamed answer: plain pass-through, or through the output policies."""
        # Deferred end: the audit record goes to the OS before the last byte, and a buffered answer that is
        # blocked before any byte was sent can still become an HTTP 409.
        defer = self.chain.audit is not None or self.chain.buffered
        dialect = _DIALECT.get(ctx.endpoint, "chat")
        if self.chain.decodes_output:
            return PolicyRelay(resp, source, self.loop, self.chain.stream_policy(ctx, dialect), defer_end=defer)
        return SSERelay(resp, source, self.loop, defer_end=defer, dialect=dialect)

    async def _stream(self, resp: Responder, source: Source, ctx: RequestContext,
                      headers: list[tuple[bytes, bytes]],
                      deadlines: tuple[float, float, float, float] | None = None) -> None:
        resp.start_stream(200, headers)
        metrics.stream_opened()
        opened = time.monotonic()
        relay = self._relay(resp, source, ctx)
        if not isinstance(relay, PolicyRelay):
            relay.usage_sink = ctx
            relay.strip_usage = ctx.strip_usage
        if deadlines is not None:
            relay.arm(*deadlines)
        relay.start()
        try:
            await relay.done
        finally:
            metrics.stream_closed(time.monotonic() - opened, relay.clock)
        if resp.first_write is not None:
            metrics.ttft(ctx.model, ctx.target, resp.first_write - ctx.started)
        ctx.status = 200
        ctx.events = ctx.events or relay.events
        # The client left before the end (no tail to write, no error, not a clean end): what was counted is partial.
        _account(ctx, partial=relay.tail is None and relay.error is None and not relay.ok)
        err = relay.error
        if err is not None:
            ctx.error = err.code
            if relay.tail is not None and resp.head_pending and not relay.content:
                resp.unstart()
                if isinstance(err, PolicyViolation):
                    # Nothing was sent yet (buffered): refuse with a status the SDKs raise before iterating.
                    ctx.status = err.status
                    await self._record(ctx, resp)
                    raise err
                # The upstream failed before its first event: nothing is committed, another target may answer.

                async def answer() -> None:
                    ctx.status = err.status
                    await self._record(ctx, resp)
                    raise err

                raise _Retryable("timeout" if isinstance(err, UpstreamTimeout) else "5xx", answer)
        if relay.tail is not None:
            await self._record(ctx, resp)
            resp.end(relay.tail)
        elif self.chain.audit is not None:
            await self._record(ctx, resp)  # the client left: the record still says what happened

    async def _mock(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool, resp: Responder,
                    ctx: RequestContext) -> None:
        mock: MockModel = target.options  # type: ignore[assignment]
        if endpoint == Endpoint.EMBEDDINGS:
            await self._send_ok(resp, ctx, [_JSON], mock.embeddings(body), endpoint)
            return
        reply = mock.chat(body, ctx.request_id) if endpoint == Endpoint.CHAT else mock.completion(body, ctx.request_id)
        if not stream:
            if reply.ttft or reply.delay:
                await asyncio.sleep(reply.ttft + reply.delay * len(reply.events))
            await self._send_ok(resp, ctx, [_JSON], reply.json, endpoint)
            return
        await self._stream(resp, TimedSource(self.loop, reply.events, reply.ttft, reply.delay), ctx, _SSE_HEADERS)

    async def _send_ok(self, resp: Responder, ctx: RequestContext, headers: list[tuple[bytes, bytes]], data: bytes,
                       endpoint: str) -> None:
        """A non-streamed success through the output policies and the audit record."""
        if endpoint != Endpoint.EMBEDDINGS:
            data = self.chain.check_output_body(ctx, data)
        ctx.status = 200
        await self._record(ctx, resp)
        resp.send(200, headers, data)

    async def _upstream(self, target: TargetRuntime, endpoint: str, body: dict, raw: bytes | None, stream: bool,
                        resp: Responder, ctx: RequestContext) -> None:
        adapter = adapter_for(target.provider)
        if endpoint == Endpoint.MESSAGES:
            ureq = messages_request(target, body, raw, stream, ctx.headers)
            adapter = _PASS  # the client speaks the provider's own API: nothing to translate
        else:
            if stream and endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS) and isinstance(adapter, OpenAIAdapter):
                so = body.get("stream_options")
                if not (isinstance(so, dict) and so.get("include_usage")):
                    # Ask for the provider's own count; the extra usage chunk is taken out again on the way back.
                    body = {**body, "stream_options": {**(so if isinstance(so, dict) else {}), "include_usage": True}}
                    raw = None
                    ctx.strip_usage = True
            ureq = adapter.build_request(target, endpoint, body, raw, stream)
        now = self.loop.time()
        deadlines = (now + target.ttft_timeout, target.idle_timeout, now + target.max_duration, target.heartbeat)
        try:
            conn: UpstreamConnection = await self.pool.exchange(
                (ureq.scheme, ureq.host, ureq.port), ureq.encode(), connect_timeout=target.connect_timeout,
                head_timeout=target.ttft_timeout, ca_file=target.ca_file)
        except TransportError as t:
            e = from_transport(t)
            if isinstance(e, (UpstreamConnectError, UpstreamDisconnected, UpstreamTimeout)):
                raise _Retryable("timeout" if isinstance(e, UpstreamTimeout) else "connect_error", _raiser(e)) from None
            raise _Retryable("5xx", _raiser(e)) from None
        try:
            status = conn.status
            ctype = conn.header(b"content-type") or b""
            passed = [(n, v) for n, v in conn.headers if n in _PASS_HEADERS]
            upstream_rid = conn.header(b"x-request-id") or conn.header(b"request-id")
            if upstream_rid is not None:
                passed.append((b"x-upstream-request-id", upstream_rid))
            if stream and status == 200 and adapter.is_stream(ctype):
                translator = adapter.stream_translator(target, body)
                source: Source = conn if translator is None else TranslatedSource(conn, translator)
                await self._stream(resp, source, ctx, _SSE_HEADERS + passed, deadlines)
                return
            try:
                data = await conn.read_body(timeout=max(0.001, deadlines[2] - self.loop.time()),
                                            first_by=deadlines[0], idle=target.idle_timeout)
            except TransportTimeout:
                raise
            except TransportError as e:
                # Reset or broken framing mid-body: nothing reached the client, so another target may answer.
                raise _Retryable("5xx", _raiser(from_transport(e))) from None
            status, data = adapter.translate_response(target, body, status, data)
            if status >= 400:
                async def answer() -> None:
                    ctx.status = status
                    await self._record(ctx, resp)
                    self._send_upstream_error(resp, status, data, passed)
                if status == 429 or status >= 500:
                    raise _Retryable("429" if status == 429 else "5xx", answer, _retry_after(conn.headers))
                await answer()
                return
            if adapter is not _PASS and target.provider not in ("openai", "azure", "groq", "mistral", "together",
                                                                "vllm"):
                ctype = b"application/json"  # translated to an OpenAI body
            await self._send_ok(resp, ctx, [(b"content-type", ctype or b"application/json")] + passed, data,
                                endpoint)
        except TransportTimeout as e:
            raise _Retryable("timeout", _raiser(from_transport(e))) from None
        finally:
            self.pool.release(conn)

    def _send_upstream_error(self, resp: Responder, status: int, data: bytes,
                             passed: list[tuple[bytes, bytes]]) -> None:
        """Relay an upstream error: its own envelope when it has one, ours otherwise, same status."""
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            out = data
        else:
            text = data[:200].decode("utf-8", "replace")
            out = UpstreamError(f"upstream answered HTTP {status}: {text}", status=status).body()
        headers = [_JSON] + passed
        # Retrying a request the upstream found invalid cannot help (4xx other than 408/409/429).
        if 400 <= status < 500 and status not in (408, 409, 429) and not any(n == b"x-should-retry"
                                                                                  for n, _ in passed):
            headers.append((b"x-should-retry", b"false"))
        resp.send(status, headers, out)
