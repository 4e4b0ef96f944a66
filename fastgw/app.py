"""Routes and the request pipeline: parse the OpenAI request, pick a target, forward it, relay the answer.

One `App` per worker. It owns the upstream pool and the resolved targets; the
HTTP server calls it once per request with the parsed request and a responder.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Awaitable, Callable

import orjson

from fastgw.config import Config
from fastgw.policy.chain import Chain
from fastgw.policy.pii import request_slots, response_slots
from fastgw.policy.stream import StreamPolicy
from fastgw.proto.client import UpstreamConnection, UpstreamError, UpstreamPool
from fastgw.proto.errors import GatewayError
from fastgw.proto.server import Request, Responder
from fastgw.providers import openai as openai_provider
from fastgw.providers.base import Endpoint, TargetRuntime
from fastgw.providers.mock import MockModel
from fastgw.stream import PolicyRelay, SSERelay, Source, TimedSource

__all__ = ["App", "build_targets"]

_JSON = (b"content-type", b"application/json")
# Headers for streamed answers: no caching, and tell nginx not to buffer (X-Accel-Buffering).
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
# Upstream response headers worth passing to the client (rate-limit and request-id information SDKs read).
_PASS_HEADERS = frozenset({b"x-request-id", b"openai-processing-ms", b"openai-version", b"openai-organization",
                           b"retry-after", b"retry-after-ms", b"x-ratelimit-limit-requests",
                           b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-requests",
                           b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-requests",
                           b"x-ratelimit-reset-tokens", b"x-should-retry"})


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
            id=t.id, provider=t.provider, model=t.model, aliases=tuple(t.aliases), base_url=t.base_url,
            api_key=secrets.get(t.id), ca_file=t.ca_file,
            extra_headers=[(k.lower().encode(), v.encode()) for k, v in t.headers.items()],
            connect_timeout=t.connect_timeout, read_timeout=t.read_timeout, options=options))
    return out


class App:
    """The request pipeline of one worker."""

    def __init__(self, cfg: Config, targets: list[TargetRuntime], loop: asyncio.AbstractEventLoop,
                 chain: Chain | None = None) -> None:
        self.cfg = cfg
        self.loop = loop
        self.chain = chain or Chain(None)
        self.pool = UpstreamPool(loop)
        self.draining = False
        self._ids = itertools.count(1)
        self._id_prefix = "%x" % os.getpid()
        self.by_model: dict[str, list[TargetRuntime]] = {}
        for t in targets:
            for name in (t.model, *t.aliases):
                self.by_model.setdefault(name, []).append(t)
        self._models_body = self._render_models(targets)
        post = {"POST"}
        get = {"GET", "HEAD"}
        self.routes: dict[str, tuple[set[str], Callable[[Request, Responder], Awaitable[None]]]] = {
            "/v1/chat/completions": (post, self._chat),
            "/v1/completions": (post, self._completions),
            "/v1/embeddings": (post, self._embeddings),
            "/v1/models": (get, self._models),
            "/healthz": (get, self._healthz),
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
        await handler(req, resp)

    # ---- simple endpoints ------------------------------------------------------------------
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

    async def _models(self, req: Request, resp: Responder) -> None:
        resp.send(200, [_JSON], self._models_body)

    async def _model(self, req: Request, resp: Responder) -> None:
        name = req.path[len("/v1/models/"):]
        entry = self._model_entries.get(name)
        if entry is None:
            raise ModelNotFound(f"The model `{name}` does not exist on this gateway.", param="model")
        resp.send(200, [_JSON], orjson.dumps(entry))

    # ---- model endpoints ---------------------------------------------------------------------
    async def _chat(self, req: Request, resp: Responder) -> None:
        await self._proxy(Endpoint.CHAT, req, resp)

    async def _completions(self, req: Request, resp: Responder) -> None:
        await self._proxy(Endpoint.COMPLETIONS, req, resp)

    async def _embeddings(self, req: Request, resp: Responder) -> None:
        await self._proxy(Endpoint.EMBEDDINGS, req, resp)

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

    async def _proxy(self, endpoint: str, req: Request, resp: Responder) -> None:
        body = self._parse(req)
        model = body["model"]
        targets = self.by_model.get(model)
        if not targets:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.",
                                param="model")
        stream = body.get("stream") is True and endpoint != Endpoint.EMBEDDINGS
        rid = f"{self._id_prefix}{next(self._ids):x}"
        raw: bytes | None = req.body
        pii = self.chain.pii
        if pii is not None and pii.input:
            if pii.apply(request_slots(body), "input", self.chain.findings, rid):
                raw = None  # redacted: the body must be re-encoded
        target = targets[0]
        if target.provider == "mock":
            await self._mock(target, endpoint, body, stream, resp, rid)
        else:
            await self._upstream(target, endpoint, body, raw, stream, resp, rid)

    def _relay(self, resp: Responder, source: Source, rid: str) -> SSERelay:
        """The relay for a streamed answer: plain pass-through, or through the output policies."""
        if self.chain.output:
            assert self.chain.pii is not None
            return PolicyRelay(resp, source, self.loop, StreamPolicy(self.chain.pii, self.chain.findings, rid))
        return SSERelay(resp, source, self.loop)

    def _checked_body(self, data: bytes, rid: str) -> bytes:
        """A non-streamed answer after the output policies: the same bytes unless a policy changed it."""
        pii = self.chain.pii
        if pii is None or not pii.output or not data:
            return data
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data  # not JSON: nothing the OpenAI shapes say is generated text
        if isinstance(obj, dict) and pii.apply(response_slots(obj), "output", self.chain.findings, rid):
            return orjson.dumps(obj)
        return data

    async def _mock(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool, resp: Responder,
                    rid: str) -> None:
        mock: MockModel = target.options  # type: ignore[assignment]
        if endpoint == Endpoint.EMBEDDINGS:
            resp.send(200, [_JSON], mock.embeddings(body))
            return
        reply = mock.chat(body, rid) if endpoint == Endpoint.CHAT else mock.completion(body, rid)
        if not stream:
            if reply.ttft or reply.delay:
                await asyncio.sleep(reply.ttft + reply.delay * len(reply.events))
            resp.send(200, [_JSON], self._checked_body(reply.json, rid))
            return
        resp.start_stream(200, _SSE_HEADERS)
        relay = self._relay(resp, TimedSource(self.loop, reply.events, reply.ttft, reply.delay), rid)
        relay.start()
        await relay.done

    async def _upstream(self, target: TargetRuntime, endpoint: str, body: dict, raw: bytes | None, stream: bool,
                        resp: Responder, rid: str) -> None:
        ureq = openai_provider.build_request(target, endpoint, body, raw, stream)
        conn: UpstreamConnection = await self.pool.exchange(
            (ureq.scheme, ureq.host, ureq.port), ureq.encode(), connect_timeout=target.connect_timeout,
            head_timeout=target.read_timeout, ca_file=target.ca_file)
        try:
            status = conn.status
            ctype = conn.header(b"content-type") or b""
            passed = [(n, v) for n, v in conn.headers if n in _PASS_HEADERS]
            if stream and status == 200 and ctype.startswith(b"text/event-stream"):
                resp.start_stream(200, _SSE_HEADERS + passed)
                relay = self._relay(resp, conn, rid)
                relay.start()
                await relay.done
                return
            data = await conn.read_body(timeout=target.read_timeout)
            if status >= 400:
                self._send_upstream_error(resp, status, data, passed)
                return
            if not ctype:
                ctype = b"application/json"
            if endpoint != Endpoint.EMBEDDINGS:
                data = self._checked_body(data, rid)
            resp.send(status, [(b"content-type", ctype)] + passed, data)
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
