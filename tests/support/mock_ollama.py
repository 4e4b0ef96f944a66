"""A mock Ollama server (native API) for tests, run as its own process; it imports nothing from fastgw.

`python -m tests.support.mock_ollama --host 127.0.0.1 --port 0` binds, prints one line
`LISTENING <port>` once it serves, and answers `POST /api/chat` the way Ollama does: it decodes the
body as Ollama's Go structs would (message `content` a string, `images` base64 strings, tool call
`arguments` an object, `options` an object; a type mismatch is a 400 with Go's decoder message),
streams NDJSON (`application/x-ndjson`) unless `"stream": false` (streaming is Ollama's default when
the field is absent), and answers with the recorded streams in `tests/fixtures/ollama/` (see its README).

The behaviour is chosen by the text of the last user message (so it survives any gateway):
`text` (the default for anything else), `email`, `tools` and `parallel` (when the request has
tools), `length`, `error` (an `{"error": ...}` line 50 ms after some text; HTTP 500 when not
streamed), `cut` (the stream stops mid-line and the TCP connection is aborted), `http-400`,
`http-404`, `http-429`, `http-503`. Streamed answers send the fixture's bytes exactly, one write per line; non-streamed
answers send the one message the stream adds up to, as Ollama does with `"stream": false`.

`GET /_last` returns `{"headers": {...}, "body": ...}` of the last `/api/chat` request (404 when
none); `POST /_reset` forgets it.
"""
from __future__ import annotations

import base64
import binascii
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support import mockkit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"
STREAMS = {"text": "text", "email": "email_split", "tools": "tool_call", "parallel": "tool_calls_parallel",
           "length": "length", "error": "error", "cut": "cut"}
HTTP = {"http-400": 400, "http-404": 404, "http-429": 429, "http-503": 503}
NDJSON = "application/x-ndjson"

REC = mockkit.Recorder()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# ---------------------------------------------------------------- request decoding (Go's encoding/json, in spirit)


def _go_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return "null"


def _mismatch(v: Any, field: str, want: str) -> str:
    return f"json: cannot unmarshal {_go_type(v)} into Go struct field {field} of type {want}"


def validate(body: Any) -> str | None:
    """What Ollama would answer (400 `error` text) for this body, or None."""
    if not isinstance(body, dict):
        return _mismatch(body, "ChatRequest", "api.ChatRequest")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    if "stream" in body and not isinstance(body["stream"], bool):
        return _mismatch(body["stream"], "ChatRequest.stream", "bool")
    if "options" in body and not isinstance(body["options"], dict):
        return _mismatch(body["options"], "ChatRequest.options", "map[string]interface {}")
    opts = body.get("options") or {}
    if "num_predict" in opts and not isinstance(opts["num_predict"], int):
        return 'option "num_predict" must be of type integer'
    if "stop" in opts and not (isinstance(opts["stop"], list) and all(isinstance(s, str) for s in opts["stop"])):
        return 'option "stop" must be of an array of strings'
    fmt = body.get("format")
    if fmt is not None and not (fmt in ("", "json") or isinstance(fmt, dict)):
        return f"invalid format: {json.dumps(fmt)}"
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return _mismatch(msgs, "ChatRequest.messages", "[]api.Message")
    for m in msgs:
        if not isinstance(m, dict):
            return _mismatch(m, "ChatRequest.messages", "api.Message")
        if not isinstance(m.get("role"), str):
            return _mismatch(m.get("role"), "Message.messages.role", "string")
        if "content" in m and not isinstance(m["content"], str):
            return _mismatch(m["content"], "Message.messages.content", "string")
        for img in m.get("images") or []:
            if not isinstance(img, str):
                return _mismatch(img, "Message.messages.images", "api.ImageData")
            try:
                base64.b64decode(img, validate=True)
            except (binascii.Error, ValueError):
                return "illegal base64 data at input byte 0"
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("arguments", {}), dict):
                args = fn.get("arguments") if isinstance(fn, dict) else fn
                return _mismatch(args, "ToolCallFunction.messages.tool_calls.function.arguments",
                                 "api.ToolCallFunctionArguments")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            return f"invalid role: {m['role']}"
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return _mismatch(tools, "ChatRequest.tools", "api.Tools")
    return None


def scenario(body: dict) -> str:
    """The behaviour asked for: the text of the last user message when it names one."""
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            name = mockkit.pick(str(m.get("content") or ""), (*STREAMS, *HTTP))
            return "text" if name in ("tools", "parallel") and not body.get("tools") else name
    return "text"


# ---------------------------------------------------------------- answers


def lines_of(stream: bytes) -> list[bytes]:
    """The fixture cut into its lines (each with its LF); a trailing partial line stays last."""
    return mockkit.split_keep(stream, b"\n")


def message_of(stream: bytes) -> dict:
    """The single response a complete recorded stream adds up to (what `"stream": false` returns)."""
    content: list[str] = []
    calls: list[dict] = []
    final: dict = {}
    for line in lines_of(stream):
        obj = json.loads(line)
        msg = obj.get("message") or {}
        content.append(msg.get("content") or "")
        calls += msg.get("tool_calls") or []
        if obj.get("done"):
            final = obj
    out = dict(final)
    out["message"] = {"role": "assistant", "content": "".join(content)}
    if calls:
        out["message"]["tool_calls"] = calls
    return out


async def chat(request: web.Request) -> web.StreamResponse:
    raw, body = await mockkit.read_json(request, REC)
    if body is None:
        return error(400, "unexpected EOF" if not raw else "invalid character in request body")
    problem = validate(body)
    if problem is not None:
        return error(400, problem)
    name = scenario(body)
    if name in HTTP:
        status = HTTP[name]
        return web.Response(body=fixture(f"error_{status}.json"), status=status, content_type="application/json")
    stream = fixture(f"{STREAMS[name]}.ndjson")
    streaming = body.get("stream", True)  # Ollama streams unless told not to

    if not streaming:
        if name == "error":
            return error(500, json.loads(lines_of(stream)[-1])["error"])
        if name == "cut":
            return await mockkit.cut_body(request, "application/json; charset=utf-8",
                                          b'{"model":"llama3.2","created_at":"2024-07-22T20:33:01.123457Z","mess')
        return web.json_response(message_of(stream))
    parts = lines_of(stream)
    return await mockkit.stream(request, parts, {"content-type": NDJSON},
                                late=lambda i, line: name == "error" and i == len(parts) - 1, cut=name == "cut")


async def not_found(request: web.Request) -> web.Response:
    return web.Response(status=404, text="404 page not found")


def make_app() -> web.Application:
    return mockkit.make_app(REC, [("POST", "/api/chat", chat)], not_found)


def main(argv: list[str] | None = None) -> int:
    return mockkit.main(make_app, "Mock Ollama native API for fastgw tests.", argv)


if __name__ == "__main__":
    sys.exit(main())
