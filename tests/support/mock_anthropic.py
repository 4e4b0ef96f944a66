"""A mock Anthropic Messages API for tests, run as its own process; it imports nothing from fastgw.

`python -m tests.support.mock_anthropic --host 127.0.0.1 --port 0` binds, prints one line
`LISTENING <port>` once it serves, and answers `POST /v1/messages` the way api.anthropic.com
does: it checks `x-api-key` (401) and `anthropic-version` (400), validates the body as the
Messages API does (required fields, no unknown top-level fields, user/assistant alternation,
tool results answering the previous turn's tool_use ids, temperature in [0, 1]) and answers with
the recorded streams and bodies in `tests/fixtures/anthropic/` (see its README).

The behaviour is chosen by the text of the last user message (so it survives any gateway):
`text` (the default for anything else), `email`, `tools`, `parallel`, `max_tokens`,
`stop_sequence`, `refusal`, `thinking`, `error` (in-stream error event 50 ms after the text before
it; 529 when not streamed),
`cut` (the stream stops mid-event and the TCP connection is aborted), `http-429`, `http-400`,
`http-529`. Streamed answers send the fixture's bytes exactly, one write per event; non-streamed
answers send `<name>.json` when it exists, else the message the stream adds up to.

`POST /v1/messages/count_tokens` answers `{"input_tokens": 1000 + words}` (see `count_tokens`).

`GET /_last` returns `{"headers": {...}, "body": ...}` of the last `/v1/messages` request (404
when none); `POST /_reset` forgets it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support import mockkit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "anthropic"
SCENARIOS = ("text", "email", "tools", "parallel", "max_tokens", "stop_sequence", "refusal", "thinking", "error",
             "cut", "http-429", "http-400", "http-529")
#: Top-level fields the Messages API accepts; anything else is "Extra inputs are not permitted".
ALLOWED_FIELDS = {"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences",
                  "stream", "tools", "tool_choice", "metadata", "thinking", "output_config", "service_tier",
                  "container", "mcp_servers"}
BLOCK_TYPES = {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}

REC = mockkit.Recorder()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def error(status: int, type_: str, message: str, headers: dict | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": type_, "message": message}}
    return web.json_response(body, status=status, headers={"request-id": "req_mock", **(headers or {})})


def fixture_error(status: int, name: str, headers: dict | None = None) -> web.Response:
    return web.Response(body=fixture(name), status=status, content_type="application/json",
                        headers={"request-id": "req_mock", **(headers or {})})


# ---------------------------------------------------------------- request validation


def _validate(body: Any) -> str | None:
    """What api.anthropic.com would say about this body (an invalid_request_error message), or None."""
    if not isinstance(body, dict):
        return "body: Input should be an object"
    for key in body:
        if key not in ALLOWED_FIELDS:
            return f"{key}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: Field required (an integer >= 1)"
    t = body.get("temperature")
    if t is not None and not (isinstance(t, (int, float)) and 0 <= t <= 1):
        return "temperature: Input should be less than or equal to 1"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or list"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: Field required (a non-empty list)"
    prev_role = None
    prev_tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if m["role"] == prev_role:
            return f"messages.{i}: roles must alternate between \"user\" and \"assistant\""
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return f"messages.{i}.content: Input should be a valid string or list"
        tool_ids: set[str] = set()
        seen_other = False
        for k, b in enumerate(blocks):
            if not isinstance(b, dict) or b.get("type") not in BLOCK_TYPES:
                return f"messages.{i}.content.{k}: unknown content block type"
            bt = b["type"]
            if bt == "text" and (not isinstance(b.get("text"), str)
                                 or (not b["text"] and not isinstance(content, str))):
                return f"messages.{i}.content.{k}: text content blocks must be non-empty"
            if bt == "tool_use":
                if m["role"] != "assistant" or not isinstance(b.get("input"), dict):
                    return f"messages.{i}.content.{k}: tool_use blocks need an object input, in assistant turns"
                tool_ids.add(b.get("id"))
            if bt == "tool_result":
                if m["role"] != "user" or b.get("tool_use_id") not in prev_tool_ids:
                    return (f"messages.{i}.content.{k}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                            f"`tool_use` block in the previous message.")
                if seen_other:
                    return f"messages.{i}.content.{k}: tool_result blocks must come first"
            else:
                seen_other = True
            if bt in ("image", "document"):
                src = b.get("source")
                if not isinstance(src, dict) or src.get("type") not in ("base64", "url"):
                    return f"messages.{i}.content.{k}.source: Input should be a base64 or url source"
        prev_role = m["role"]
        prev_tool_ids = tool_ids
    return None


def _scenario(body: dict) -> str:
    """The behaviour asked for: the text of the last user message when it names one."""
    for m in reversed(body["messages"]):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            text = content
        else:
            texts = [b.get("text", "") for b in content if b.get("type") == "text"]
            text = texts[-1] if texts else ""
        return mockkit.pick(text, SCENARIOS)
    return "text"


# ---------------------------------------------------------------- answers


def events_of(stream: bytes) -> list[bytes]:
    """The fixture cut into its events (each with its blank line); a trailing partial event stays last."""
    return mockkit.split_keep(stream)


def message_of(stream: bytes) -> dict:
    """The Message a complete recorded stream adds up to (what the non-streamed call returns)."""
    msg: dict = {}
    partial: dict[int, str] = {}
    for ev in events_of(stream):
        data = next((line[6:] for line in ev.split(b"\n") if line.startswith(b"data: ")), None)
        if data is None:
            continue
        obj = json.loads(data)
        t = obj["type"]
        if t == "message_start":
            msg = obj["message"]
        elif t == "content_block_start":
            msg["content"].append(dict(obj["content_block"]))
        elif t == "content_block_delta":
            block = msg["content"][obj["index"]]
            d = obj["delta"]
            if d["type"] == "text_delta":
                block["text"] += d["text"]
            elif d["type"] == "input_json_delta":
                partial[obj["index"]] = partial.get(obj["index"], "") + d["partial_json"]
            elif d["type"] == "thinking_delta":
                block["thinking"] += d["thinking"]
            elif d["type"] == "signature_delta":
                block["signature"] = d["signature"]
        elif t == "content_block_stop" and obj["index"] in partial:
            msg["content"][obj["index"]]["input"] = json.loads(partial.pop(obj["index"]) or "{}")
        elif t == "message_delta":
            msg.update(obj["delta"])
            msg["usage"].update(obj["usage"])
    return msg


async def messages(request: web.Request) -> web.StreamResponse:
    _, body = await mockkit.read_json(request, REC)
    if not request.headers.get("x-api-key"):
        return fixture_error(401, "error_401.json")
    if not request.headers.get("anthropic-version"):
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    if body is None:
        return error(400, "invalid_request_error", "There was an error parsing the body of your request")
    problem = _validate(body)
    if problem is not None:
        return error(400, "invalid_request_error", problem)
    scenario = _scenario(body)
    if scenario == "http-429":
        return fixture_error(429, "error_429.json", {"retry-after": "1"})
    if scenario == "http-400":
        return fixture_error(400, "error_400.json")
    if scenario == "http-529" or (scenario == "error" and not body.get("stream")):
        return fixture_error(529, "error_529.json")
    stream = fixture(f"{scenario}.sse")

    if not body.get("stream"):
        if scenario == "cut":
            return await mockkit.cut_body(request, "application/json",
                                          b'{"id":"msg_01StreamCutMidway00001","type":"message",')
        js = FIXTURES / f"{scenario}.json"
        data = js.read_bytes() if js.exists() else json.dumps(message_of(stream)).encode()
        return web.Response(body=data, content_type="application/json", headers={"request-id": "req_mock"})
    return await mockkit.stream(request, events_of(stream), {
        "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "request-id": "req_mock"},
        late=lambda i, ev: ev.startswith(b"event: error"), cut=scenario == "cut")


async def count_tokens(request: web.Request) -> web.Response:
    """`POST /v1/messages/count_tokens`: `{"input_tokens": 1000 + the words of every text}` (1000 more than any
    estimate of these small prompts, so a test can tell the provider's count from the gateway's)."""
    _, body = await mockkit.read_json(request, REC)
    if not request.headers.get("x-api-key"):
        return fixture_error(401, "error_401.json")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not isinstance(body.get("messages"),
                                                                                               list):
        return error(400, "invalid_request_error", "model and messages: Field required")
    words = len(json.dumps([body.get("system"), body["messages"], body.get("tools")]).split())
    return web.json_response({"input_tokens": 1000 + words}, headers={"request-id": "req_mock"})


async def not_found(request: web.Request) -> web.Response:
    return error(404, "not_found_error", f"Not found: {request.method} {request.path}")


def make_app() -> web.Application:
    return mockkit.make_app(REC, [("POST", "/v1/messages", messages), ("POST", "/v1/messages/count_tokens",
                                                                         count_tokens)], not_found)


def main(argv: list[str] | None = None) -> int:
    return mockkit.main(make_app, "Mock Anthropic Messages API for fastgw tests.", argv)


if __name__ == "__main__":
    sys.exit(main())
