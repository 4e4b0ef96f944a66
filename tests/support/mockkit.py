"""What the five wire-format mocks (`tests/support/mock_{anthropic,cohere,ollama,gemini,bedrock}.py`) share: the
record of the last model request and its `GET /_last` / `POST /_reset` endpoints, the app around a mock's routes,
reading the JSON body, the scenario picked from the last user message, and the scripted answers every provider
must survive: a recorded stream written one event per write (an error event a moment late, so the text before it
reaches the client first), a stream or a body `cut` mid-way with the TCP connection aborted, and the `main`.

It imports nothing from fastgw."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from tests.support import mockserver

#: How long a mock waits before a late failure (an in-stream error, an abort): the bytes before it go out first,
#: as from a real server (a gateway may answer a failure that precedes every byte with an HTTP error instead).
LATE = 0.05


class Recorder:
    """The last model request a mock saw: `{"path", "headers": {...}, "body", **extra}` (lower-case header names)."""

    def __init__(self) -> None:
        self.last: dict | None = None

    def record(self, request: web.Request, body: Any, **extra: Any) -> None:
        self.last = {**extra, "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}

    async def get(self, request: web.Request) -> web.Response:
        if self.last is None:
            return web.json_response({"error": "no request seen"}, status=404)
        return web.json_response(self.last)

    async def reset(self, request: web.Request) -> web.Response:
        self.last = None
        return web.json_response({"ok": True})


def make_app(rec: Recorder, routes: Iterable[tuple[str, str, Callable]], fallback: Callable | None = None
             ) -> web.Application:
    """`routes` ((method, path, handler)), then `GET /_last` and `POST /_reset`, then `fallback` for anything else."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/_last", rec.get)
    app.router.add_post("/_reset", rec.reset)
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    if fallback is not None:
        app.router.add_route("*", "/{tail:.*}", fallback)
    return app


async def read_json(request: web.Request, rec: Recorder, **extra: Any) -> tuple[bytes, Any]:
    """The raw body and its JSON (None when it is not JSON), recorded as the last request (its `path` too)."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    rec.record(request, body, **{"path": request.path, **extra})
    return raw, body


def pick(text: str, known: Iterable[str], default: str = "text") -> str:
    """The scenario a user message names (trimmed, any case), or `default`."""
    text = text.strip().lower()
    return text if text in known else default


def split_keep(stream: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    """A recording cut into its events (each with its separator); a trailing partial event stays last."""
    parts = stream.split(sep)
    out = [p + sep for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def stream(request: web.Request, parts: list[bytes], headers: dict[str, str], *,
                 late: Callable[[int, bytes], bool] = lambda i, part: False, gap: float = 0.0,
                 cut: bool = False) -> web.StreamResponse:
    """A 200 stream, one write per part: `gap` seconds between parts, LATE more before a part `late` names; with
    `cut`, the connection is aborted LATE after the last part instead of ending the body."""
    resp = web.StreamResponse(status=200, headers=headers)
    await resp.prepare(request)
    for i, part in enumerate(parts):
        if i and gap:
            await asyncio.sleep(gap)
        if late(i, part):
            await asyncio.sleep(LATE)
        await resp.write(part)
    if cut:
        await asyncio.sleep(LATE)
        abort(request)
        return resp
    await resp.write_eof()
    return resp


async def cut_body(request: web.Request, content_type: str, prefix: bytes) -> web.StreamResponse:
    """A non-streamed answer that promises 4096 bytes, sends `prefix`, then aborts the connection."""
    resp = web.StreamResponse(status=200, headers={"content-type": content_type})
    resp.content_length = 4096
    await resp.prepare(request)
    await resp.write(prefix)
    await asyncio.sleep(LATE)
    abort(request)
    return resp


def main(make_app: Callable[[], web.Application], description: str, argv: list[str] | None = None) -> int:
    return mockserver.main(make_app, description, argv)
