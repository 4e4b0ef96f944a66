"""Routes: the endpoint table, the simple endpoints, and the dispatch that wraps every /v1 request.

One `App` per worker. A model endpoint's request goes to the pipeline
(`fastgw.pipeline`); health, readiness, metrics and the model list are answered
here. Every /v1 request is authenticated, recorded (refusals too) and counted.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import re
import time
from typing import Awaitable, Callable

import orjson

from fastgw import accesslog, metrics
from fastgw.api.errors import GatewayError
from fastgw.attempt import Attempt
from fastgw.config import DEFAULT_BASE_URLS, Config
from fastgw.pipeline import JSON, ModelNotFound, Pipeline
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain
from fastgw.proto.client import UpstreamPool
from fastgw.proto.server import Request, Responder
from fastgw.providers.base import Endpoint, TargetRuntime
from fastgw.providers.mock import MockModel
from fastgw.routing import Router
from fastgw.upstreams import HttpUpstream, MockUpstream, Upstream

__all__ = ["App", "build_targets"]

log = logging.getLogger("fastgw.app")
_RID_OK = re.compile(rb"[A-Za-z0-9._:-]+")

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
            breaker_cooldown=t.circuit_breaker.cooldown, weight=t.weight, options=options,
            anthropic_versions=tuple(t.anthropic_versions), anthropic_betas=tuple(t.anthropic_betas),
            allow_server_tools=t.allow_server_tools, allow_mcp=t.allow_mcp))
    return out


class App:
    """The routes of one worker."""

    def __init__(self, cfg: Config, targets: list[TargetRuntime], loop: asyncio.AbstractEventLoop,
                 chain: Chain | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.loop = loop
        self.chain = chain or Chain()
        self.pool = UpstreamPool(loop)
        self.router = Router(cfg, targets, clock=clock)
        upstreams: dict[str, Upstream] = {"mock": MockUpstream(loop)}
        self.pipeline = Pipeline(self.chain, self.router,
                                 Attempt(self.chain, loop, upstreams, HttpUpstream(self.pool)))
        self.draining = False
        self._ids = itertools.count(1)
        # Unique across workers and restarts without a getrandom syscall per request: pid and a random salt.
        self._id_prefix = "%x%s" % (os.getpid(), os.urandom(3).hex())
        names = {name for t in targets for name in (t.model, *t.aliases)}
        self._models_body = self._render_models(targets)
        metrics.known_models(names)
        ref = cfg.server.metrics_token_ref
        token = os.environ.get(ref.env, "") if ref is not None else ""
        self._metrics_auth = b"Bearer " + token.encode() if token else None
        get = frozenset({"GET", "HEAD"})
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
        }

    # ---- dispatch -----------------------------------------------------------------------
    async def __call__(self, req: Request, resp: Responder) -> None:
        path = req.path
        plain = self.plain.get(path)
        if plain is not None:
            _check_method(req, plain[0])
            await plain[1](req, resp)
            return
        route = self.routes.get(path)
        if route is None and path.startswith("/v1/models/"):
            route = (frozenset({"GET", "HEAD"}), self._model)
        if route is None:
            raise GatewayError(f"Unknown request URL: {req.method} {path}. See the gateway's README for the "
                               "endpoints it serves.", status=404, type="invalid_request_error",
                               code="unknown_url", no_retry=True)
        _check_method(req, route[0])
        # Every /v1 request runs the chain and is audited, refused ones included.
        ctx = RequestContext(self._request_id(req), req.method, path, req.headers)
        resp.extra_headers.append((b"x-request-id", ctx.request_id.encode()))
        metrics.request_started()
        try:
            self.chain.authenticate(ctx)
            target = route[1]
            if isinstance(target, str):
                await self.pipeline.run(target, req, resp, ctx)
            else:
                await target(req, resp, ctx)
        except GatewayError as e:
            ctx.status = e.status
            ctx.error = e.code
            await self.pipeline.record(ctx, resp)
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
            raise ModelNotFound(f"The model `{name}` does not exist on this gateway.", param="model")
        ctx.status = 200
        await self.pipeline.record(ctx, resp)
        resp.send(200, [JSON], orjson.dumps(entry))


def _check_method(req: Request, methods: frozenset[str]) -> None:
    if req.method not in methods:
        allow = ", ".join(sorted(methods))
        raise GatewayError(f"Method {req.method} not allowed on {req.path}; use {allow}", status=405,
                           type="invalid_request_error", code="method_not_allowed", no_retry=True,
                           headers=[(b"allow", allow.encode())])
