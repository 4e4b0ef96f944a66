"""A mock Google Gemini API (Generative Language, v1beta) for tests, run as its own process.

`python -m tests.support.mock_gemini --host 127.0.0.1 --port 0` binds, prints one line
`LISTENING <port>` once it serves, and answers
`POST /v1beta/models/{model}:generateContent` and `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`
the way generativelanguage.googleapis.com does. It imports nothing from fastgw.

The answer is chosen by the text of the last `user` turn of the request:

- `fixture:NAME`: the recorded stream `tests/fixtures/gemini/NAME.sse`, written one event per write;
  without `alt=sse`, `NAME.json` when recorded, else the stream's events merged into one
  `GenerateContentResponse` (text joined, function calls kept, last finishReason and usageMetadata).
  Streams: text, email_split, tool_call (CRLF framing), parallel_tools, usage, max_tokens, safety,
  recitation, prompt_blocked, error_midstream, after_tool.
- `http:429` / `http:400`: that status with the recorded Gemini error body (`error_429.json`, `error_400.json`),
  stream or not; `http:500` / `http:503`: Google's INTERNAL / UNAVAILABLE body.
- `cut`: `text.sse` up to the middle of its second event, then the TCP connection is aborted.

Streamed events are written EVENT_GAP apart, so each normally reaches the gateway in a read of its own.
- a last user turn holding a `functionResponse`: the `after_tool` stream.
- anything else: `Echo: <text>` in 5-character events, STOP and a usage count.

A request without `x-goog-api-key` gets Google's 403 PERMISSION_DENIED body. `GET /_last` returns
`{"path", "query", "headers", "body"}` of the last generate request (404 when none); `POST /_reset` forgets it.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support import mockkit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gemini"
CHUNK_CHARS = 5
MODEL_VERSION = "gemini-2.5-flash"
#: Seconds between streamed events, so that each reaches the gateway in a read of its own (as from the real API).
EVENT_GAP = 0.01
#: Errors with no recording: Google's body for them (message, status).
UNRECORDED = {500: ("An internal error has occurred. Please retry or report in https://developers.generativeai.google/"
                    "guide/troubleshooting", "INTERNAL"),
              503: ("The model is overloaded. Please try again later.", "UNAVAILABLE")}
# One SSE event: everything up to and including its blank line (LF or CRLF framing).
_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n)", re.S)

REC = mockkit.Recorder()


def fixture_events(name: str) -> list[bytes]:
    """The exact bytes of a recorded stream, cut into its events."""
    return _EVENT.findall((FIXTURES / f"{name}.sse").read_bytes())


def event_json(ev: bytes) -> dict:
    return json.loads(ev.decode().strip()[len("data:"):])


def merge(events: list[bytes]) -> dict:
    """What `generateContent` answers for the same generation: the stream's responses folded into one."""
    parts: list[dict] = []
    out: dict[str, Any] = {}
    cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    for ev in events:
        obj = event_json(ev)
        for c in obj.get("candidates") or ():
            for p in (c.get("content") or {}).get("parts") or ():
                if "text" in p and parts and "text" in parts[-1] and len(p) == 1:
                    parts[-1] = {"text": parts[-1]["text"] + p["text"]}
                else:
                    parts.append(dict(p))
            for k, v in c.items():
                if k not in ("content", "index"):
                    cand[k] = v
        for k in ("usageMetadata", "promptFeedback", "modelVersion", "responseId"):
            if k in obj:
                out[k] = obj[k]
    if "promptFeedback" not in out or parts:
        out["candidates"] = [cand]
    return out


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\r\n\r\n"


def echo_events(text: str) -> list[bytes]:
    reply = f"Echo: {text}"
    pieces = [reply[i : i + CHUNK_CHARS] for i in range(0, len(reply), CHUNK_CHARS)]
    prompt = max(len(text.split()), 1)
    events = []
    for i, p in enumerate(pieces):
        cand: dict[str, Any] = {"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}
        usage: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        if i == len(pieces) - 1:
            cand["finishReason"] = "STOP"
            done = len(reply.split())
            usage = {"promptTokenCount": prompt, "candidatesTokenCount": done, "totalTokenCount": prompt + done}
        events.append(sse({"candidates": [cand], "usageMetadata": usage, "modelVersion": MODEL_VERSION}))
    return events


def last_user(body: dict) -> tuple[str, bool]:
    """(text of the last user turn, whether it holds a functionResponse)."""
    for c in reversed(body.get("contents") or []):
        if c.get("role", "user") == "user":
            parts = c.get("parts") or []
            text = " ".join(p["text"] for p in parts if isinstance(p.get("text"), str))
            return text, any("functionResponse" in p for p in parts)
    return "", False


def google_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": code}}, status=status)


async def write_stream(request: web.Request, events: list[bytes], cut_at: int | None = None) -> web.StreamResponse:
    """The events EVENT_GAP apart; with `cut_at`, the first event, then the bytes up to `cut_at`, then an abort."""
    if cut_at is not None:
        whole = b"".join(events)
        events = [whole[:len(events[0])], whole[len(events[0]):cut_at]]
    return await mockkit.stream(request, events, {"content-type": "text/event-stream",
                                                  "x-content-type-options": "nosniff"},
                                gap=EVENT_GAP, cut=cut_at is not None)


async def generate(request: web.Request) -> web.StreamResponse:
    model, _, method = request.match_info["tail"].partition(":")
    _, body = await mockkit.read_json(request, REC, query=request.query_string)
    if not isinstance(body, dict):
        return google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
    if method not in ("generateContent", "streamGenerateContent"):
        return google_error(404, f"Method {method!r} not found.", "NOT_FOUND")
    if not request.headers.get("x-goog-api-key"):
        return google_error(403, "Method doesn't allow unregistered callers (callers without established "
                                 "identity). Please use API Key or other form of API consumer identity to call "
                                 "this API.", "PERMISSION_DENIED")
    if not body.get("contents"):
        return google_error(400, "* GenerateContentRequest.contents: contents is not specified\n", "INVALID_ARGUMENT")
    stream = method == "streamGenerateContent"
    if stream and request.query.get("alt") != "sse":
        return google_error(400, "this mock only streams with alt=sse", "INVALID_ARGUMENT")
    text, tool_result = last_user(body)
    m = re.search(r"http:(\d{3})", text)
    if m:
        status = int(m.group(1))
        if status in UNRECORDED:
            return google_error(status, *UNRECORDED[status])
        data = (FIXTURES / f"error_{status}.json").read_bytes()
        return web.Response(status=status, body=data, content_type="application/json")
    m = re.search(r"fixture:([a-z_]+)", text)
    name = m.group(1) if m else ("after_tool" if tool_result else None)
    if "cut" in text.split():
        events = fixture_events("text")
        return await write_stream(request, events, len(events[0]) + len(events[1]) // 2)
    events = fixture_events(name) if name else echo_events(text)
    if stream:
        return await write_stream(request, events)
    if name and (FIXTURES / f"{name}.json").exists():
        return web.Response(body=(FIXTURES / f"{name}.json").read_bytes(), content_type="application/json")
    merged = merge(events)
    return web.json_response(merged)


def make_app() -> web.Application:
    return mockkit.make_app(REC, [("POST", "/v1beta/models/{tail}", generate)])


def main(argv: list[str] | None = None) -> int:
    return mockkit.main(make_app, "Mock Google Gemini API for fastgw tests.", argv)


if __name__ == "__main__":
    sys.exit(main())
