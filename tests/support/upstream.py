"""A deterministic OpenAI-compatible upstream for tests, run as its own process.

`python -m tests.support.upstream --host 127.0.0.1 --port 0` binds, prints one line
`LISTENING <port>` once it serves, and answers under `/v1` the way api.openai.com does:
chat completions (stream and not, `n`, `max_tokens`, tool calls), responses (stream and not,
text and function calls, `max_output_tokens` → `incomplete`), legacy completions, embeddings (float and base64) and the model list. It imports nothing from fastgw.

Fault knobs are chosen by the request's `model`, so they survive any gateway:

- `fault-close-midstream`: a few chunks (Responses: text deltas), then the TCP connection is
  aborted (no chunked terminator, no `[DONE]`); not streamed, a third of the body, then the abort (chat,
  completions and responses).
- `fault-500`: HTTP 500 with an OpenAI error envelope (chat and responses).
- `fault-429`: HTTP 429, `retry-after: 1`, with an OpenAI error envelope (chat and responses).
- `fault-slow`: one chunk every 50 ms for 40 chunks.
- `fault-hang`: response headers, then nothing for 60 s.

`GET /_last?path=/v1/chat/completions` returns `{"headers": {...}, "body": ...}` of the
last request seen on that path (404 when none); `GET /_count?path=...` how many were
seen; `GET /_stats` returns `{"connections", "requests"}` counted over `/v1/` requests
(connections = distinct client ports seen); `POST /_reset` forgets all of it. No auth
is required; the `authorization` header is recorded like any other.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
import uuid
import sys
from typing import Any

from aiohttp import web

from tests.support import mockserver

FIXED_SENTENCE = (
    "This is a deterministic reply from the mock upstream, written so that every "
    "streamed answer spans a few dozen tokens and exercises chunk boundaries, "
    "punctuation, and plain ASCII words in a predictable order."
)
CHUNK_CHARS = 5  # content characters per streamed chunk ("a few characters")
CLOSE_AFTER_CHUNKS = 3  # content chunks sent before fault-close-midstream aborts
SLOW_CHUNKS = 40
SLOW_INTERVAL = 0.05
HANG_SECONDS = 60.0
EMBED_DIM = 16
CREATED = 1_700_000_000
FINGERPRINT = "fp_mock0001"
MODELS = (
    "gpt-test",
    "text-embedding-test",
    "instruct-test",
    "fault-close-midstream",
    "fault-500",
    "fault-429",
    "fault-slow",
    "fault-hang",
)


# ---------------------------------------------------------------- text helpers


def count_tokens(text: str) -> int:
    """A crude, deterministic token count: whitespace-separated words."""
    return len(text.split())


def content_text(content: Any) -> str:
    """Text of a chat message `content` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return str(content)


def last_user_text(messages: list[Any]) -> str:
    for msg in reversed(messages or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return content_text(msg.get("content"))
    return ""


def prompt_tokens_of_messages(messages: list[Any]) -> int:
    total = 0
    for msg in messages or []:
        if isinstance(msg, dict):
            total += count_tokens(content_text(msg.get("content"))) + 1
    return max(total, 1)


def reply_for(user_text: str, index: int) -> str:
    prefix = "" if index == 0 else f"({index}) "
    return f"{prefix}Echo: {user_text} {FIXED_SENTENCE}"


def limit_words(text: str, max_tokens: Any) -> tuple[str, str]:
    """Cut `text` to `max_tokens` words; return (text, finish_reason)."""
    if isinstance(max_tokens, int) and max_tokens > 0:
        words = text.split(" ")
        kept: list[str] = []
        n = 0
        for w in words:
            if w:
                if n == max_tokens:
                    return " ".join(kept), "length"
                n += 1
            kept.append(w)
    return text, "stop"


def split_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def request_id(prefix: str, body: Any) -> str:
    digest = hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:24]}"


# ---------------------------------------------------------------- tools


def _value_for(name: str, schema: Any) -> Any:
    t = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t in ("number", "integer"):
        return 1
    if t == "boolean":
        return True
    if t == "array":
        return []
    if t == "object":
        return {}
    if isinstance(schema, dict) and isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if any(k in name.lower() for k in ("location", "city", "place")):
        return "Paris"
    return "x"


def _weather_function(body: dict, user_text: str, functions: list[Any]) -> tuple[str, str] | None:
    """(name, JSON arguments) of the function to call: the weather one, else the last, when the user asks for
    weather and tools are allowed."""
    if not functions or "weather" not in user_text.lower() or body.get("tool_choice") == "none":
        return None
    fn = None
    for f in functions:
        fn = f
        if "weather" in str(f.get("name", "")).lower():
            break
    if fn is None:
        return None
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    args = {name: _value_for(name, schema) for name, schema in props.items()}
    return str(fn.get("name", "")), json.dumps(args, separators=(",", ":"))


def call_id(name: str) -> str:
    return "call_" + hashlib.sha1(name.encode()).hexdigest()[:24]


def tool_call_for(body: dict) -> dict | None:
    """A tool call when the request has tools and the last user message asks for weather."""
    functions = [t["function"] for t in body.get("tools") or []
                 if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)]
    call = _weather_function(body, last_user_text(body.get("messages") or []), functions)
    if call is None:
        return None
    name, arguments = call
    return {"id": call_id(name), "type": "function", "function": {"name": name, "arguments": arguments}}


# ---------------------------------------------------------------- recording


class Recorder:
    def __init__(self) -> None:
        self.last: dict[str, dict] = {}
        self.count: dict[str, int] = {}
        self.requests = 0
        # Distinct client (host, port) pairs seen: one per TCP connection the gateway opened.
        self.peers: set[Any] = set()

    def seen(self, request: web.Request) -> None:
        self.requests += 1
        transport = request.transport
        if transport is not None:
            self.peers.add(transport.get_extra_info("peername"))

    def record(self, request: web.Request, body: Any) -> None:
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            k = k.lower()
            headers[k] = v if k not in headers else headers[k] + ", " + v
        self.last[request.path] = {"headers": headers, "body": body, "method": request.method,
                                   "query": request.query_string}
        self.count[request.path] = self.count.get(request.path, 0) + 1


REC = Recorder()


async def read_json(request: web.Request) -> tuple[Any, web.Response | None]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        REC.record(request, raw.decode("utf-8", "replace"))
        return None, web.json_response(
            error_body("We could not parse the JSON body of your request.", "invalid_request_error", None),
            status=400,
        )
    REC.record(request, body)
    if not isinstance(body, dict):
        return None, web.json_response(
            error_body("The request body must be a JSON object.", "invalid_request_error", None), status=400
        )
    return body, None


# ---------------------------------------------------------------- faults


def status_fault(model: str) -> web.Response | None:
    if model == "fault-500":
        return web.json_response(
            error_body("The server had an error while processing your request.", "server_error", None),
            status=500,
        )
    if model == "fault-429":
        return web.json_response(
            error_body("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
            status=429,
            headers={"retry-after": "1"},
        )
    return None


def abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def cut_body(request: web.Request, payload: dict) -> web.StreamResponse:
    """A non-streamed answer cut: a third of the promised body, then the connection is aborted."""
    raw = json.dumps(payload).encode()
    resp = web.StreamResponse(status=200, headers={"content-type": "application/json"})
    resp.content_length = len(raw)
    await resp.prepare(request)
    await resp.write(raw[: len(raw) // 3])
    await asyncio.sleep(0.05)
    abort(request)
    return resp


async def hang(request: web.Request, content_type: str) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"content-type": content_type})
    await resp.prepare(request)  # StreamResponse sends its headers at once
    await asyncio.sleep(HANG_SECONDS)
    abort(request)
    return resp


# ---------------------------------------------------------------- chat completions


async def stream_events(
    request: web.Request, model: str, events: list[bytes], content_positions: list[int]
) -> web.StreamResponse:
    """Write SSE events, honouring the streaming fault knobs.

    `content_positions` are the indices in `events` that carry content, used to place
    the mid-stream close after a few content chunks.
    """
    resp = web.StreamResponse(
        status=200,
        headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"},
    )
    await resp.prepare(request)
    if model == "fault-close-midstream":
        cut = content_positions[min(CLOSE_AFTER_CHUNKS, len(content_positions)) - 1] + 1 if content_positions else 1
        for ev in events[:cut]:
            await resp.write(ev)
        await asyncio.sleep(0.05)
        abort(request)
        return resp
    if model == "fault-slow":
        content_set = set(content_positions)
        sent = 0
        for i, ev in enumerate(events):
            if i in content_set:
                if sent >= SLOW_CHUNKS:
                    continue
                sent += 1
                await asyncio.sleep(SLOW_INTERVAL)
            await resp.write(ev)
        await resp.write_eof()
        return resp
    for ev in events:
        await resp.write(ev)
    await resp.write_eof()
    return resp


def chat_replies(body: dict) -> list[tuple[str, str]]:
    n = body.get("n") if isinstance(body.get("n"), int) and body.get("n", 1) > 0 else 1
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    user = last_user_text(body.get("messages") or [])
    return [limit_words(reply_for(user, i), max_tokens) for i in range(n)]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body, bad = await read_json(request)
    if bad is not None:
        return bad
    model = str(body.get("model", ""))
    if not model:
        return web.json_response(
            error_body("you must provide a model parameter", "invalid_request_error", None), status=400
        )
    fault = status_fault(model)
    if fault is not None:
        return fault
    stream = bool(body.get("stream"))
    if model == "fault-hang":
        return await hang(request, "text/event-stream" if stream else "application/json")

    rid = request_id("chatcmpl", body)
    prompt_tokens = prompt_tokens_of_messages(body.get("messages") or [])
    call = tool_call_for(body)
    replies = chat_replies(body)
    if call is not None:
        completion_tokens = count_tokens(call["function"]["arguments"]) + 5
    else:
        completion_tokens = sum(count_tokens(text) for text, _ in replies)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }

    if not stream:
        if model == "fault-slow":
            await asyncio.sleep(SLOW_CHUNKS * SLOW_INTERVAL)
        choices = []
        if call is not None:
            choices.append(
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [call],
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "tool_calls",
                }
            )
        else:
            for i, (text, finish) in enumerate(replies):
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                )
        payload = {
            "id": rid,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": choices,
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        if model == "fault-close-midstream":
            return await cut_body(request, payload)
        return web.json_response(payload)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices: list[dict], usage_value: Any = None) -> bytes:
        obj: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage_value
        return sse(obj)

    def choice(index: int, delta: dict, finish: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    events: list[bytes] = []
    content_positions: list[int] = []
    if call is not None:
        fn = call["function"]
        events.append(
            chunk(
                [
                    choice(
                        0,
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": fn["name"], "arguments": ""},
                                }
                            ],
                            "refusal": None,
                        },
                    )
                ]
            )
        )
        for piece in split_chunks(fn["arguments"], 4):
            content_positions.append(len(events))
            events.append(chunk([choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})]))
        events.append(chunk([choice(0, {}, "tool_calls")]))
    else:
        pieces = [split_chunks(text) for text, _ in replies]
        for i in range(len(replies)):
            events.append(chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})]))
        # Interleave choices round-robin, one choice per chunk, as OpenAI does for n > 1.
        for k in range(max(len(p) for p in pieces)):
            for i, p in enumerate(pieces):
                if k < len(p) and p[k]:
                    content_positions.append(len(events))
                    events.append(chunk([choice(i, {"content": p[k]})]))
        for i, (_, finish) in enumerate(replies):
            events.append(chunk([choice(i, {}, finish)]))
    if include_usage:
        events.append(chunk([], usage))
    events.append(SSE_DONE)
    return await stream_events(request, model, events, content_positions)


# ---------------------------------------------------------------- legacy completions


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first
        return " ".join(str(t) for t in prompt if isinstance(t, int)) or str(first)
    return ""


async def responses(request: web.Request) -> web.StreamResponse:
    """OpenAI Responses API: a message item with one output_text part, streamed as the documented events."""
    body, bad = await read_json(request)
    if bad is not None:
        return bad
    inp = body.get("input")
    if isinstance(inp, str):
        user = inp
    else:
        user = last_user_text([{"role": i.get("role", "user"), "content": i.get("content")} for i in inp or []
                               if isinstance(i, dict)])
    model = str(body.get("model", ""))
    fault = status_fault(model)
    if fault is not None:
        return fault
    text, finish = limit_words(reply_for(user, 0), body.get("max_output_tokens"))
    incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
    rid, mid = "resp_" + uuid.uuid4().hex[:16], "msg_" + uuid.uuid4().hex[:16]
    usage = {"input_tokens": count_tokens(user), "output_tokens": count_tokens(text),
             "total_tokens": count_tokens(user) + count_tokens(text),
             "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}

    def response_obj(status: str, output: list) -> dict:
        return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status, "model": model,
                "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "usage": usage if status in ("completed", "incomplete") else None, "error": None,
                "incomplete_details": incomplete if status == "incomplete" else None,
                "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0, "text": {"format":
                {"type": "text"}}}

    status = "incomplete" if incomplete else "completed"
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"id": mid, "type": "message", "role": "assistant", "status": status, "content": [part]}
    # Responses function tools are flat: {"type": "function", "name", "parameters"}.
    call = _weather_function(body, user, [t for t in body.get("tools") or []
                                          if isinstance(t, dict) and t.get("type") == "function"])
    if call is not None:
        name, arguments = call
        text = arguments
        item = {"id": "fc_" + uuid.uuid4().hex[:16], "type": "function_call", "status": "completed",
                "call_id": call_id(name), "name": name, "arguments": arguments}
        usage = {**usage, "output_tokens": count_tokens(arguments),
                 "total_tokens": count_tokens(user) + count_tokens(arguments)}
    REC.record(request, body)
    if not body.get("stream"):
        if model == "fault-close-midstream":
            return await cut_body(request, response_obj(status, [item]))
        return web.json_response(response_obj(status, [item]))
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    seq = 0

    async def send(kind: str, **fields: Any) -> None:
        nonlocal seq
        await resp.write(f"event: {kind}\ndata: {json.dumps({'type': kind, **fields, 'sequence_number': seq})}\n\n"
                         .encode())
        seq += 1

    await send("response.created", response=response_obj("in_progress", []))
    await send("response.in_progress", response=response_obj("in_progress", []))
    if item["type"] == "function_call":
        await send("response.output_item.added", output_index=0, item={**item, "status": "in_progress",
                                                                       "arguments": ""})
        for i in range(0, len(text), 5):
            await send("response.function_call_arguments.delta", item_id=item["id"], output_index=0,
                       delta=text[i:i + 5])
        await send("response.function_call_arguments.done", item_id=item["id"], output_index=0, name=item["name"],
                   arguments=text)
        await send("response.output_item.done", output_index=0, item=item)
        await send("response.completed", response=response_obj("completed", [item]))
        await resp.write_eof()
        return resp
    await send("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
    await send("response.content_part.added", item_id=mid, output_index=0, content_index=0,
               part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    for n, i in enumerate(range(0, len(text), 5)):
        if model == "fault-close-midstream" and n == CLOSE_AFTER_CHUNKS:
            await asyncio.sleep(0.05)
            abort(request)  # no terminator: the stream is cut mid-answer
            return resp
        await send("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=text[i:i + 5],
                   logprobs=[])
    await send("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text, logprobs=[])
    await send("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=part)
    await send("response.output_item.done", output_index=0, item=item)
    await send(f"response.{status}", response=response_obj(status, [item]))
    await resp.write_eof()
    return resp


async def completions(request: web.Request) -> web.StreamResponse:
    body, bad = await read_json(request)
    if bad is not None:
        return bad
    model = str(body.get("model", ""))
    fault = status_fault(model)
    if fault is not None:
        return fault
    stream = bool(body.get("stream"))
    if model == "fault-hang":
        return await hang(request, "text/event-stream" if stream else "application/json")
    rid = request_id("cmpl", body)
    prompt = prompt_text(body.get("prompt"))
    n = body.get("n") if isinstance(body.get("n"), int) and body.get("n", 1) > 0 else 1
    replies = [limit_words(reply_for(prompt, i), body.get("max_tokens")) for i in range(n)]
    prompt_tokens = max(count_tokens(prompt), 1)
    completion_tokens = sum(count_tokens(t) for t, _ in replies)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if not stream:
        payload = {
            "id": rid,
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {"text": t, "index": i, "logprobs": None, "finish_reason": f}
                for i, (t, f) in enumerate(replies)
            ],
            "usage": usage,
        }
        if model == "fault-close-midstream":
            return await cut_body(request, payload)
        return web.json_response(payload)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices: list[dict], usage_value: Any = None) -> bytes:
        obj: dict[str, Any] = {
            "id": rid,
            "object": "text_completion",
            "created": CREATED,
            "choices": choices,
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        if include_usage:
            obj["usage"] = usage_value
        return sse(obj)

    events: list[bytes] = []
    content_positions: list[int] = []
    pieces = [split_chunks(t) for t, _ in replies]
    for k in range(max(len(p) for p in pieces)):
        for i, p in enumerate(pieces):
            if k < len(p) and p[k]:
                content_positions.append(len(events))
                events.append(chunk([{"text": p[k], "index": i, "logprobs": None, "finish_reason": None}]))
    for i, (_, f) in enumerate(replies):
        events.append(chunk([{"text": "", "index": i, "logprobs": None, "finish_reason": f}]))
    if include_usage:
        events.append(chunk([], usage))
    events.append(SSE_DONE)
    return await stream_events(request, model, events, content_positions)


# ---------------------------------------------------------------- embeddings


def embedding_vector(text: str, dim: int) -> list[float]:
    """Deterministic values that are exact in float32 (k/128), so float and base64 agree."""
    out: list[float] = []
    counter = 0
    while len(out) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((b - 128) / 128.0 for b in digest)
        counter += 1
    return out[:dim]


def embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(t, int) for t in value):
            return [" ".join(map(str, value))]
        return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]
    return [str(value)]


async def embeddings(request: web.Request) -> web.StreamResponse:
    body, bad = await read_json(request)
    if bad is not None:
        return bad
    model = str(body.get("model", ""))
    fault = status_fault(model)
    if fault is not None:
        return fault
    if model == "fault-hang":
        return await hang(request, "application/json")
    if "input" not in body:
        return web.json_response(
            error_body("'input' is a required property", "invalid_request_error", None, "input"), status=400
        )
    dim = body.get("dimensions") if isinstance(body.get("dimensions"), int) else EMBED_DIM
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        return web.json_response(
            error_body(f"Invalid encoding_format: {fmt!r}", "invalid_request_error", None, "encoding_format"),
            status=400,
        )
    data = []
    tokens = 0
    for i, text in enumerate(embedding_inputs(body["input"])):
        tokens += max(count_tokens(text), 1)
        vec = embedding_vector(text, dim)
        if fmt == "base64":
            emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# ---------------------------------------------------------------- models and test hooks


async def models(request: web.Request) -> web.Response:
    REC.record(request, None)
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": CREATED, "owned_by": "mock-upstream"} for m in MODELS],
        }
    )


async def last(request: web.Request) -> web.Response:
    path = request.query.get("path", "")
    entry = REC.last.get(path)
    if entry is None:
        return web.json_response({"error": f"no request seen on {path!r}"}, status=404)
    return web.json_response(entry)


async def count(request: web.Request) -> web.Response:
    return web.json_response({"count": REC.count.get(request.query.get("path", ""), 0)})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"connections": len(REC.peers), "requests": REC.requests})


async def reset(request: web.Request) -> web.Response:
    REC.last.clear()
    REC.count.clear()
    REC.peers.clear()
    REC.requests = 0
    return web.json_response({"ok": True})


async def not_found(request: web.Request) -> web.Response:
    REC.record(request, None)
    return web.json_response(
        error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error", None), status=404
    )


@web.middleware
async def count_api_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        REC.seen(request)
    return await handler(request)


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[count_api_requests])
    app.router.add_post("/v1/chat/completions", chat_completions)
    # Azure OpenAI's layout: deployment in the path, api-version in the query, key in `api-key`.
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_last", last)
    app.router.add_get("/_count", count)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def main(argv: list[str] | None = None) -> int:
    return mockserver.main(make_app, "Mock OpenAI-compatible upstream for fastgw tests.", argv)


if __name__ == "__main__":
    sys.exit(main())
