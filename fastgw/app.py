"""Routes: the endpoint table, the simple endpoints, and the dispatch that wraps every /v1 request.

One `App` per worker. A model endpoint's request goes to the pipeline
(`fastgw.pipeline`); health, readiness, metrics and the model list are answered
here. Every /v1 request is authenticated, recorded (refusals too) and counted.

The App is also the HTTP server's `ServerHooks`:

- `on_head` judges a request on its head, before its body is read: two `Authorization` (or `api-key`,
  `x-api-key`) headers are ambiguous (400); with `rbac` in the chain, a /v1 request without a valid key is
  refused (401), and one whose key may not use the endpoint too (403). The connection then closes.
- `refused` answers such a request (audited and counted like any /v1 refusal).
- `answered` writes the access line of what the server answered by itself (400, 408, 413, 431, 505, ...).

Every response gets one access line (`fastgw.accesslog`), except successful health and readiness probes (a
load balancer probes every second or so; their 200s say nothing). The line's `client` is the peer's address,
or, when the peer is in `server.trusted_proxies`, the rightmost address of X-Forwarded-For that is not one.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import time
from typing import Awaitable, Callable, Final

import orjson

from fastgw import accesslog, metrics, telemetry
from fastgw.api.errors import ANTHROPIC_PATH, GatewayError, InvalidRequest, ModelNotFound
from fastgw.attempt import Attempt
from fastgw.config import DEFAULT_BASE_URLS, Config
from fastgw.pipeline import JSON, Pipeline
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain
from fastgw.proto.client import UpstreamPool
from fastgw.proto.errors import HttpError
from fastgw.proto.limits import MAX_LOGGED_STRING
from fastgw.proto.server import ConnectionTracker, Request, Responder
from fastgw.quota import Quota, SharedBreakers
from fastgw.providers.base import Endpoint, TargetRuntime
from fastgw.providers.mock import MockModel
from fastgw.routing import Router
from fastgw.upstreams import HttpUpstream, MockUpstream, Upstream

__all__ = ["App", "build_targets"]

log = logging.getLogger("fastgw.app")
_RID_OK: Final = re.compile(rb"[A-Za-z0-9._:-]+")
#: A fresh request id's last two hex digits by the count's low byte (see `App._fresh_id`).
_HEX2: Final = tuple("%02x" % i for i in range(256))
_GET: Final = frozenset({"GET", "HEAD"})
#: Answered 2xx, these are not access-logged (see the module docstring).
_PROBES: Final = frozenset({"/healthz", "/readyz"})
#: Credential headers that must not come twice: which one would count is a guess an attacker could exploit.
_CREDENTIALS: Final = (b"authorization", b"api-key", b"x-api-key")
#: Peers whose trust was decided, remembered (bounded: an address parse per connection otherwise).
_TRUST_CACHE_MAX: Final = 4096
#: Longest error message sent (characters): errors that quote a client string (a model name, a path) are cut.
_MAX_MESSAGE: Final = 1024

Handler = Callable[[Request, Responder], Awaitable[None]]
ModelHandler = Callable[[Request, Responder, RequestContext], Awaitable[None]]


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
            breaker_cooldown=t.circuit_breaker.cooldown, breaker_shared=t.circuit_breaker.shared, weight=t.weight,
            options=options,
            anthropic_versions=tuple(t.anthropic_versions), anthropic_betas=tuple(t.anthropic_betas),
            allow_server_tools=t.allow_server_tools, allow_mcp=t.allow_mcp))
    return out


class App:
    """The routes of one worker."""

    def __init__(self, cfg: Config, targets: list[TargetRuntime], loop: asyncio.AbstractEventLoop,
                 chain: Chain | None = None, clock: Callable[[], float] = time.monotonic,
                 tracker: ConnectionTracker | None = None) -> None:
        self.cfg = cfg
        self.loop = loop
        self.chain = chain or Chain()
        self.chain.max_request_cpu = cfg.server.max_request_cpu
        self.pool = UpstreamPool(loop)
        self.router = Router(cfg, targets, clock=clock)
        upstreams: dict[str, Upstream] = {"mock": MockUpstream(loop)}
        self.pipeline = Pipeline(self.chain, self.router,
                                 Attempt(self.chain, loop, upstreams, HttpUpstream(self.pool), tracker),
                                 Quota.from_config(cfg), SharedBreakers.from_config(cfg))
        self.draining = False
        # Unique across workers and restarts without a getrandom syscall per request: pid and a random salt.
        self._id_prefix = "%x%s" % (os.getpid(), os.urandom(3).hex())
        self._id_count = 1
        self._id_high = "req_%s%04x" % (self._id_prefix, 0)  # `_fresh_id`'s id without its last two digits
        names = {name for t in targets for name in (t.model, *t.aliases)}
        self._models_body = self._render_models(targets)
        metrics.known_models(names)
        ref = cfg.server.metrics_token_ref
        token = os.environ.get(ref.env, "") if ref is not None else ""
        self._metrics_auth = b"Bearer " + token.encode() if token else None
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in cfg.server.trusted_proxies]
        self._trusted: dict[str, bool] = {}
        get = _GET
        #: Routes outside /v1: no key, no audit.
        self.plain: dict[str, tuple[frozenset[str], Handler]] = {
            "/healthz": (get, self._healthz),
            "/metrics": (get, self._metrics),
            "/readyz": (get, self._readyz),
        }
        #: /v1 routes: authenticated, audited, counted. A model endpoint's value is its name for the pipeline.
        post = frozenset({"POST"})
        self.routes: dict[str, tuple[frozenset[str], ModelHandler | str]] = {
            "/v1/models": (get, self._models),
            **{"/v1/" + endpoint: (post, endpoint) for endpoint in Endpoint.ALL},
            "/v1/" + Endpoint.COUNT_TOKENS: (post, self.pipeline.count_tokens),
        }
        # Model names and paths in access lines pass the pii-detector (when the chain has one) and the built-in
        # secret patterns, except the names this config defines.
        accesslog.set_redactor(self.chain.redact_for_log if self.chain.pii is not None else None,
                               [*names, *self.plain, *self.routes])

    # ---- dispatch -----------------------------------------------------------------------
    async def __call__(self, req: Request, resp: Responder) -> None:
        path = req.path
        plain = self.plain.get(path)
        if plain is not None and path in _PROBES and req.method in plain[0]:
            # The hot probe path: no context, no line unless it failed; its id still names the answer.
            resp.extra_headers.append((b"x-request-id", self._request_id(req).encode()))
            await plain[1](req, resp)
            if resp.status >= 300:
                self._log(self._context(req), req, resp)
            return
        # Set at head time when rbac authenticated the request there (see on_head).
        authed = isinstance(req.context, RequestContext)
        ctx = req.context if isinstance(req.context, RequestContext) else self._context(req)
        resp.extra_headers.append((b"x-request-id", ctx.request_id.encode()))  # every answer, 404 and 405 too
        try:
            if plain is not None:
                _check_method(req, plain[0])
                await plain[1](req, resp)
                ctx.status = resp.status
                return
            route = self._route(path)
            if route is None:
                raise GatewayError(f"Unknown request URL: {req.method} {_shown(path)}. See the gateway's README for "
                                   "the endpoints it serves.", status=404, type="invalid_request_error",
                                   code="unknown_url", no_retry=True)
            _check_method(req, route[0])
            # Every /v1 request runs the chain and is audited, refused ones included.
            metrics.request_started()
            refused: GatewayError | None = None
            try:
                try:
                    if not authed and self.chain.rbac is not None:
                        self.chain.authenticate(ctx)
                    target = route[1]
                    if isinstance(target, str):
                        await self.pipeline.run(target, req, resp, ctx)
                    else:
                        await target(req, resp, ctx)
                except GatewayError as e:
                    ctx.status = e.status
                    ctx.error = e.code
                    refused = e
                if refused is not None:
                    # Recorded after its handler, not inside it: a coroutine compiled with mypyc that awaits while
                    # handling an exception leaves it as the thread's handled exception for the tasks that run
                    # meanwhile (tests/test_compiled.py refuses the shape).
                    try:
                        await self.pipeline.record(ctx, resp)
                        raise refused
                    finally:
                        refused = None  # (no frame-traceback cycle left behind)
            finally:
                if not ctx.status:
                    ctx.status = resp.status or 499  # the client left before an answer
                if ctx.first_byte is None:
                    ctx.first_byte = resp.first_write
                metrics.request_finished(ctx, path)
                if telemetry.ON:
                    telemetry.request_finished(ctx, path)
        except HttpError as e:
            ctx.status = ctx.status or e.status
            ctx.error = ctx.error or e.code
            if isinstance(e, GatewayError) and path.startswith(ANTHROPIC_PATH):
                e.anthropic()  # every error on /v1/messages in Anthropic's envelope: auth, rbac, limits, upstream
            if len(e.message) > _MAX_MESSAGE:  # a message quoting a client string never amplifies the request
                e.message = e.message[:_MAX_MESSAGE] + "… (cut)"
            if resp.started:
                raise
            resp.send_error(e)  # here rather than in the server: the access line counts the answer's bytes
        except Exception:
            ctx.status, ctx.error = 500, "internal_error"  # the server answers a bug with 500
            raise
        finally:
            self._log(ctx, req, resp)

    def _route(self, path: str) -> tuple[frozenset[str], ModelHandler | str] | None:
        route = self.routes.get(path)
        if route is None and path.startswith("/v1/models/"):
            return (_GET, self._model)
        return route

    def _context(self, req: Request) -> RequestContext:
        return RequestContext(self._request_id(req), req.method, req.path, req.headers, self._client(req))

    def _log(self, ctx: RequestContext, req: Request | None, resp: Responder) -> None:
        if not ctx.status:
            ctx.status = resp.status or 499
        if ctx.first_byte is None:
            ctx.first_byte = resp.first_write
        forwarded = None
        if req is not None and self._proxies and self._is_trusted(req.peer):
            forwarded = _forwarded_for(req.headers)
        accesslog.log_request(ctx, ctx.path, resp.bytes_sent, forwarded)

    # ---- the server's hooks ------------------------------------------------------------
    def on_head(self, req: Request) -> HttpError | None:
        """Judge a request on its head (see the module docstring); None lets its body be read."""
        seen = 0
        for name, _ in req.headers:
            if name in _CREDENTIALS:
                bit = 1 << _CREDENTIALS.index(name)
                if seen & bit:
                    return InvalidRequest(f"more than one {name.decode()} header: send the key once",
                                          code="ambiguous_credentials")
                seen |= bit
        rbac = self.chain.rbac
        if rbac is None:
            return None
        route = self._route(req.path)
        if route is None or req.method not in route[0]:
            return None  # 404 / 405 once read, as without rbac
        ctx = self._context(req)
        req.context = ctx
        try:
            self.chain.authenticate(ctx)
            # What the head decides: the endpoint (the model and streaming need the body).
            rbac.authorize(ctx, "/v1/models" if req.path.startswith("/v1/models/") else req.path, None, False)
        except GatewayError as e:
            return e
        return None

    async def refused(self, req: Request, resp: Responder) -> None:
        """Answer a request refused on its head: audited and counted like a /v1 refusal, then the error."""
        err = req.refusal
        assert err is not None
        ctx = req.context if isinstance(req.context, RequestContext) else self._context(req)
        ctx.status, ctx.error = err.status, err.code
        if isinstance(err, GatewayError) and req.path.startswith(ANTHROPIC_PATH):
            err.anthropic()
        try:
            resp.extra_headers.append((b"x-request-id", ctx.request_id.encode()))
            if self._route(req.path) is not None:
                metrics.request_started()
                try:
                    await self.pipeline.record(ctx, resp)
                finally:
                    metrics.request_finished(ctx, req.path)
                    if telemetry.ON:
                        telemetry.request_finished(ctx, req.path)
        finally:
            if not resp.started:
                resp.send_error(err)  # before the access line, which counts the answer's bytes
            self._log(ctx, req, resp)

    def answered(self, err: HttpError, resp: Responder, peer: str) -> None:
        """Access line of an error the server answered by itself (framing, limits, timeouts)."""
        req = err.request
        if req is not None:
            ctx = self._context(req)
        else:
            ctx = RequestContext(self._fresh_id(), "", "", [], peer)
        ctx.status, ctx.error = err.status, err.code
        if resp.first_write is not None:  # the context is made after the answer: it began no later than that
            ctx.started = min(ctx.started, resp.first_write)
        self._log(ctx, req, resp)

    # ---- the client's address -----------------------------------------------------------
    def _is_trusted(self, peer: str) -> bool:
        known = self._trusted.get(peer)
        if known is None:
            try:
                addr = ipaddress.ip_address(peer)
                known = any(addr in net for net in self._proxies)
            except ValueError:
                known = False
            if len(self._trusted) >= _TRUST_CACHE_MAX:
                self._trusted.clear()
            self._trusted[peer] = known
        return known

    def _client(self, req: Request) -> str:
        """The peer, or behind trusted proxies the rightmost X-Forwarded-For address that is not one of them."""
        peer = req.peer
        if not self._proxies or not self._is_trusted(peer):
            return peer
        chain = _forwarded_for(req.headers)
        if chain is None:
            return peer
        hops = [h.strip() for h in chain.split(",")]
        for hop in reversed(hops):
            if hop and not self._is_trusted(hop):
                # Whatever the client wrote there (the audit record keeps it too): capped like any client string.
                return accesslog.cap(hop)[0]
        return next((h for h in hops if h), peer)  # every hop a proxy: the farthest one

    def _request_id(self, req: Request) -> str:
        """The client's x-request-id when it is a sane token (tracing across hops), else a fresh one."""
        given = req.header(b"x-request-id")
        if given and len(given) <= 128 and _RID_OK.fullmatch(given):
            return given.decode()
        return self._fresh_id()

    def _fresh_id(self) -> str:
        """`"req_%s%06x" % (prefix, n)` for the worker's n-th id: the digits above the last two formatted once per
        256 ids, the last two from a table (the whole format was ~2,000 instructions of every request)."""
        n = self._id_count
        self._id_count = n + 1
        low = n & 0xFF
        if low == 0:
            self._id_high = "req_%s%04x" % (self._id_prefix, n >> 8)
        return self._id_high + _HEX2[low]

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
        resp.send(200, [JSON], b'{"status":"ok"}')

    async def _readyz(self, req: Request, resp: Responder) -> None:
        if self.draining:
            resp.send(503, [JSON], b'{"status":"draining"}')
        else:
            resp.send(200, [JSON], b'{"status":"ready"}')

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
        await self.pipeline.record(ctx, resp)
        resp.send(200, [JSON], body)

    async def _model(self, req: Request, resp: Responder, ctx: RequestContext) -> None:
        name = req.path[len("/v1/models/"):]
        entry = self._model_entries.get(name)
        rbac = self.chain.rbac
        if rbac is not None:
            rbac.authorize(ctx, "/v1/models", None, False)
            if entry is not None and not rbac.visible_models(ctx, [name]):
                entry = None  # not for this caller: as if it did not exist
        if entry is None:
            raise ModelNotFound(f"The model `{_shown(name)}` does not exist on this gateway.", param="model")
        ctx.status = 200
        await self.pipeline.record(ctx, resp)
        resp.send(200, [JSON], orjson.dumps(entry))


def _shown(client_string: str) -> str:
    """A client string as an error message may echo it: capped, so an answer never amplifies a request."""
    if len(client_string) <= MAX_LOGGED_STRING:
        return client_string
    return client_string[:MAX_LOGGED_STRING] + f"… ({len(client_string)} characters)"


def _forwarded_for(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Every X-Forwarded-For line, in order, as one comma-separated chain (None without one)."""
    values = [v for n, v in headers if n == b"x-forwarded-for"]
    if not values:
        return None
    return b",".join(values).decode("latin-1")


def _check_method(req: Request, methods: frozenset[str]) -> None:
    if req.method not in methods:
        allow = ", ".join(sorted(methods))
        raise GatewayError(f"Method {req.method} not allowed on {_shown(req.path)}; use {allow}", status=405,
                           type="invalid_request_error", code="method_not_allowed", no_retry=True,
                           headers=[(b"allow", allow.encode())])
