"""A mock Cohere v2 Chat API for tests, run as its own process; it imports nothing from fastgw.

`python -m tests.support.mock_cohere --host 127.0.0.1 --port 0` binds, prints one line
`LISTENING <port>` once it serves, and answers `POST /v2/chat` the way api.cohere.com does: it
checks `Authorization: Bearer <key>` (401), validates the body as v2 does (known top-level fields
only, message roles, tool messages answering an earlier tool call, `p` in [0.01, 0.99], penalties
in [0, 1]) and answers with the recorded streams in `tests/fixtures/cohere/` (see its README):
SSE with `event:` names when `"stream": true`, else the v2 chat response the stream adds up to.

The behaviour is chosen by the text of the last user message (so it survives any gateway):
`text` (the default for anything else), `email`, `tools` and `parallel` (when the request has
tools), `max_tokens`, `stop_sequence`, `error` (message-end with finish_reason ERROR, 50 ms after
some text; HTTP 500 when not streamed), `cut` (the stream stops mid-event and the TCP connection is
aborted), `http-400`, `http-429`, `http-500`.

`GET /_last` returns `{"headers": {...}, "body": ...}` of the last `/v2/chat` request (404 when
none); `POST /_reset` forgets it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support import mockkit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cohere"
STREAMS = {"text": "text", "email": "email_split", "tools": "tool_call", "parallel": "tool_calls_parallel",
           "max_tokens": "max_tokens", "stop_sequence": "stop_sequence", "error": "error", "cut": "cut"}
HTTP = {"http-400": 400, "http-429": 429, "http-500": 500}
FIELDS = {"model", "messages", "tools", "strict_tools", "documents", "citation_options", "response_format",
          "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty",
          "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking", "stream", "priority"}

REC = mockkit.Recorder()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def error(status: int, message: str) -> web.Response:
    return web.json_response({"id": "00000000-0000-4000-8000-000000000000", "message": message}, status=status)


# ---------------------------------------------------------------- request validation


def validate(body: Any) -> str | None:
    """What Cohere would answer (a 400 `message`) for this body, or None."""
    if not isinstance(body, dict):
        return "invalid request: body must be a JSON object"
    for key in body:
        if key not in FIELDS:
            return f"invalid request: unknown field: parameter {key} is not a valid field"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "invalid request: model is required"
    p = body.get("p")
    if p is not None and not (isinstance(p, (int, float)) and 0.01 <= p <= 0.99):
        return "invalid request: p must be between 0.01 and 0.99, inclusive"
    for name in ("frequency_penalty", "presence_penalty"):
        v = body.get(name)
        if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
            return f"invalid request: {name} must be between 0 and 1, inclusive"
    if body.get("tool_choice") not in (None, "REQUIRED", "NONE"):
        return "invalid request: tool_choice must be one of REQUIRED, NONE"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "invalid request: messages must not be empty"
    call_ids: set[str] = set()
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            return f"invalid request: messages[{i}].role must be one of system, user, assistant, tool"
        content = m.get("content")
        if role == "user":
            if isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                        return f"invalid request: messages[{i}].content has an unknown content type"
                    if part["type"] == "image_url" and not isinstance((part.get("image_url") or {}).get("url"), str):
                        return f"invalid request: messages[{i}].content image_url.url is required"
            elif not isinstance(content, str):
                return f"invalid request: messages[{i}].content must be a string or a list"
        elif role == "assistant":
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                if not isinstance(tc.get("id"), str) or not isinstance(fn.get("arguments"), str):
                    return f"invalid request: messages[{i}].tool_calls need an id and string arguments"
                call_ids.add(tc["id"])
            if content is None and not m.get("tool_calls"):
                return f"invalid request: messages[{i}] must have content or tool_calls"
        elif role == "tool":
            if m.get("tool_call_id") not in call_ids:
                return f"invalid request: messages[{i}].tool_call_id does not match any previous tool call"
            if not isinstance(content, (str, list)):
                return f"invalid request: messages[{i}].content must be a string or a list"
        elif not isinstance(content, (str, list)):
            return f"invalid request: messages[{i}].content must be a string or a list"
    return None


def scenario(body: dict) -> str:
    """The behaviour asked for: the text of the last user message when it names one."""
    for m in reversed(body["messages"]):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if p.get("type") == "text"]
            content = texts[-1] if texts else ""
        name = mockkit.pick(str(content or ""), (*STREAMS, *HTTP))
        return "text" if name in ("tools", "parallel") and not body.get("tools") else name
    return "text"


# ---------------------------------------------------------------- answers


def events_of(stream: bytes) -> list[bytes]:
    """The fixture cut into its events (each with its blank line); a trailing partial event stays last."""
    return mockkit.split_keep(stream)


def response_of(stream: bytes) -> dict:
    """The v2 chat response a complete recorded stream adds up to (what `"stream": false` returns)."""
    rid = ""
    text: list[str] = []
    plan: list[str] = []
    calls: list[dict] = []
    end: dict = {}
    for ev in events_of(stream):
        data = next((line[6:] for line in ev.split(b"\n") if line.startswith(b"data: ")), None)
        if data is None:
            continue
        obj = json.loads(data)
        t = obj["type"]
        d = obj.get("delta") or {}
        if t == "message-start":
            rid = obj["id"]
        elif t == "content-delta":
            text.append(d["message"]["content"]["text"])
        elif t == "tool-plan-delta":
            plan.append(d["message"]["tool_plan"])
        elif t == "tool-call-start":
            calls.append(json.loads(json.dumps(d["message"]["tool_calls"])))
        elif t == "tool-call-delta":
            calls[-1]["function"]["arguments"] += d["message"]["tool_calls"]["function"]["arguments"]
        elif t == "message-end":
            end = d
    message: dict = {"role": "assistant"}
    if text:
        message["content"] = [{"type": "text", "text": "".join(text)}]
    if plan:
        message["tool_plan"] = "".join(plan)
    if calls:
        message["tool_calls"] = calls
    return {"id": rid, "finish_reason": end["finish_reason"], "message": message, "usage": end["usage"]}


async def chat(request: web.Request) -> web.StreamResponse:
    _, body = await mockkit.read_json(request, REC)
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        return web.Response(body=fixture("error_401.json"), status=401, content_type="application/json")
    if body is None:
        return error(400, "invalid request: body must be valid JSON")
    problem = validate(body)
    if problem is not None:
        return error(400, problem)
    name = scenario(body)
    if name in HTTP:
        status = HTTP[name]
        return web.Response(body=fixture(f"error_{status}.json"), status=status, content_type="application/json")
    stream = fixture(f"{STREAMS[name]}.sse")

    if not body.get("stream"):
        if name == "error":
            return web.Response(body=fixture("error_500.json"), status=500, content_type="application/json")
        if name == "cut":
            return await mockkit.cut_body(request, "application/json",
                                          b'{"id":"a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d","finish_re')
        return web.json_response(response_of(stream))
    parts = events_of(stream)
    return await mockkit.stream(request, parts, {"content-type": "text/event-stream", "cache-control": "no-cache"},
                                late=lambda i, ev: name == "error" and i == len(parts) - 1, cut=name == "cut")


async def not_found(request: web.Request) -> web.Response:
    return error(404, f"page not found: {request.method} {request.path}")


def make_app() -> web.Application:
    return mockkit.make_app(REC, [("POST", "/v2/chat", chat)], not_found)


def main(argv: list[str] | None = None) -> int:
    return mockkit.main(make_app, "Mock Cohere v2 Chat API for fastgw tests.", argv)


if __name__ == "__main__":
    sys.exit(main())
