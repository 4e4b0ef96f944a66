"""Cohere's v2 Chat API (`POST /v2/chat`): OpenAI chat requests out, Cohere's typed SSE events back as OpenAI chunks.

Only `chat/completions` is translated; other endpoints are refused (400 `unsupported_endpoint`).

Request (OpenAI -> Cohere v2):

- mapped: `messages` (system/developer -> system; user text and `image_url` parts, data: and http(s)
  URLs with `detail`, as v2 takes them for vision models; assistant text, `tool_calls`, and the text
  that accompanies tool calls -> `tool_plan`; tool results with `tool_call_id`); `tools` (OpenAI function
  shape; any `strict: true` function -> `strict_tools: true`); `tool_choice` "required" -> "REQUIRED",
  "none" -> "NONE", "auto" -> omitted, a named function -> only that tool sent + "REQUIRED";
  `temperature`; `top_p` -> `p` (clamped into Cohere's [0.01, 0.99]); `max_completion_tokens`/`max_tokens`
  -> `max_tokens`; `stop` -> `stop_sequences`; `seed`; `frequency_penalty`, `presence_penalty` (clamped
  into Cohere's [0, 1]); `response_format` json_object ->
  `{"type": "json_object"}`, json_schema -> `{"type": "json_object", "json_schema": schema}`; `stream`.
- dropped, logged (logger `fastgw.providers.cohere`, debug): `logprobs`, `top_logprobs`, `logit_bias`,
  `reasoning_effort`, `prediction`, `parallel_tool_calls`, `user`, `metadata`, `store`, `service_tier`;
  a message's `name` (silently).
- refused (400 `unsupported_parameter`): `n` > 1; audio/file parts; images outside user messages.

Answer: `content-delta` text and `tool-plan-delta` text (the model's plan before it calls tools) become
content; `tool-call-start`/`-delta` become streamed tool calls; `message-end` finish reasons COMPLETE and
STOP_SEQUENCE -> stop, MAX_TOKENS -> length, TOOL_CALL -> tool_calls, ERROR/TIMEOUT (or a `delta.error`) ->
the in-stream error event; usage from `billed_units` (what is charged), else `tokens`. Thinking content
and citations are not forwarded. HTTP errors (`{"message": ...}`) keep their status with an OpenAI envelope.
"""

from __future__ import annotations

import logging

import orjson

from fastgw.api.errors import UpstreamError, UpstreamProtocolError
from fastgw.proto.errors import ProtocolError
from fastgw.api.errors import GatewayError, envelope
from fastgw.proto.sse import SSEDecoder, SSEEvent
from fastgw.providers.base import TargetRuntime, UpstreamRequest, bearer, chat_only, json_object, json_post
from fastgw.providers.chunks import ChunkWriter, completion_body, translate_all, usage_dict

__all__ = ["CohereAdapter", "CohereTranslator", "build_body"]

_log = logging.getLogger("fastgw.providers.cohere")

_DROPPED = ("logprobs", "top_logprobs", "logit_bias", "reasoning_effort", "prediction", "parallel_tool_calls",
            "user", "metadata", "store", "service_tier")
#: OpenAI field -> (Cohere field, the range Cohere accepts or None); values outside it are clamped into it
#: (OpenAI's top_p 1.0 is Cohere's p 0.99; OpenAI's penalties run from -2 to 2, Cohere's from 0 to 1).
_PARAMS = (("temperature", "temperature", None), ("top_p", "p", (0.01, 0.99)), ("seed", "seed", None),
           ("frequency_penalty", "frequency_penalty", (0.0, 1.0)), ("presence_penalty", "presence_penalty", (0.0, 1.0)))
_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls"}
_FAILED = ("ERROR", "TIMEOUT")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(message, status=400, type="invalid_request_error", code="unsupported_parameter", param=param)


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(message, status=400, type="invalid_request_error", code="invalid_value", param=param)


# --- request -------------------------------------------------------------------------------------------------


def _text(content: object, where: str) -> str:
    """The text of a message content that may hold only text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid("message content must be a string or a list of parts", where)
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind == "image_url":
            raise _bad("image parts are only accepted in user messages", f"{where}[{j}]")
        else:
            raise _bad(f"content part type {kind!r} is not supported here by cohere", f"{where}[{j}]")
    return "\n".join(texts)


def _user_content(content: object, where: str) -> str | list:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _invalid("message content must be a string or a list of parts", where)
    parts: list[dict] = []
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _invalid("text part without text", p)
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise _invalid("image_url.url must be a data: or http(s) URL", p + ".image_url.url")
            img: dict = {"url": url}
            detail = iu.get("detail") if isinstance(iu, dict) else None
            if detail in ("low", "high", "auto"):
                img["detail"] = detail
            parts.append({"type": "image_url", "image_url": img})
        else:
            raise _bad(f"content part type {kind!r} is not supported by cohere", p)
    return parts


def _messages(messages: object) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list", "messages")
    out: list[dict] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid("each message must be an object", where)
        role = m.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text(m.get("content"), where + ".content")})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(m.get("content"), where + ".content")})
        elif role == "assistant":
            text = _text(m.get("content"), where + ".content")
            msg: dict = {"role": "assistant"}
            calls = m.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise _invalid("tool_calls must be a list", where + ".tool_calls")
                tcs = []
                for k, c in enumerate(calls):
                    fn = c.get("function") if isinstance(c, dict) else None
                    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                        raise _invalid("tool call without a function name", f"{where}.tool_calls[{k}]")
                    args = fn.get("arguments")
                    tcs.append({"id": str(c.get("id") or f"call_{i}_{k}"), "type": "function",
                                "function": {"name": fn["name"],
                                             "arguments": args if isinstance(args, str) else orjson.dumps(
                                                 args if args is not None else {}).decode()}})
                msg["tool_calls"] = tcs
                if text:
                    msg["tool_plan"] = text  # the text that came with the calls is what v2 calls the plan
            else:
                msg["content"] = text
            out.append(msg)
        elif role == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str) or not cid:
                raise _invalid("tool messages need a tool_call_id", where + ".tool_call_id")
            out.append({"role": "tool", "tool_call_id": cid, "content": _text(m.get("content"), where + ".content")})
        else:
            raise _bad(f"message role {role!r} is not supported by cohere", where + ".role")
    return out


def _tool(t: object, k: int) -> tuple[dict, bool]:
    fn = t.get("function") if isinstance(t, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or t.get("type", "function") != "function":
        raise _bad("cohere accepts function tools only", f"tools[{k}]")
    f: dict = {"name": fn["name"]}
    if fn.get("description") is not None:
        f["description"] = fn["description"]
    if fn.get("parameters") is not None:
        f["parameters"] = fn["parameters"]
    return {"type": "function", "function": f}, fn.get("strict") is True


def build_body(target: TargetRuntime, body: dict, stream: bool) -> dict:
    """The `/v2/chat` request body for an OpenAI chat request."""
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("cohere returns one choice; n must be 1", "n")
    out: dict = {"model": target.model, "messages": _messages(body.get("messages")), "stream": stream}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _invalid("tools must be a list", "tools")
        converted = [_tool(t, k) for k, t in enumerate(tools)]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            fn = choice.get("function")
            name = fn.get("name") if isinstance(fn, dict) else None
            converted = [c for c in converted if c[0]["function"]["name"] == name]
            if not converted:
                raise _invalid(f"tool_choice names a function that is not in tools: {name!r}", "tool_choice")
            out["tool_choice"] = "REQUIRED"
        elif choice == "required":
            out["tool_choice"] = "REQUIRED"
        elif choice == "none":
            out["tool_choice"] = "NONE"
        elif choice not in (None, "auto"):
            raise _invalid("tool_choice must be 'none', 'auto', 'required' or a function", "tool_choice")
        out["tools"] = [c[0] for c in converted]
        if any(c[1] for c in converted):
            out["strict_tools"] = True
    for src, dst, bounds in _PARAMS:
        value = body.get(src)
        if value is not None:
            if bounds is not None and isinstance(value, (int, float)):
                value = min(max(value, bounds[0]), bounds[1])
            out[dst] = value
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_object":
            out["response_format"] = {"type": "json_object"}
        elif kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise _invalid("response_format.json_schema.schema must be an object", "response_format")
            out["response_format"] = {"type": "json_object", "json_schema": schema}
        elif kind != "text":
            raise _bad(f"response_format type {kind!r} is not supported by cohere", "response_format")
    dropped = [k for k in _DROPPED if body.get(k) is not None]
    if dropped:
        _log.debug("cohere: dropped fields with no equivalent: %s", ", ".join(dropped))
    return out


# --- answer --------------------------------------------------------------------------------------------------


def _usage(u: object) -> dict:
    """billed_units when given (what Cohere charges), else tokens (which count Cohere's own preamble too)."""
    if not isinstance(u, dict):
        return usage_dict(0, 0)
    counts = u.get("billed_units")
    if not isinstance(counts, dict) or counts.get("input_tokens") is None:
        counts = u.get("tokens") if isinstance(u.get("tokens"), dict) else {}
    cached = u.get("cached_tokens")
    return usage_dict(int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0),
                      int(cached) if isinstance(cached, (int, float)) and cached else None)


def _dig(obj: object, *keys: str) -> object:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


class CohereTranslator:
    """Cohere v2 SSE events in, OpenAI `chat.completion.chunk` SSE out.

    An error raises at once unless the same read already produced events; those go out first and the
    error is raised by the next `feed` or `finish`, so what the client sees does not depend on where
    reads split the stream.
    """

    __slots__ = ("_dec", "_w", "_tool", "_ntools", "_done", "_usage", "_error")

    def __init__(self, model: str, body: dict) -> None:
        self._dec = SSEDecoder()
        self._w = ChunkWriter(model, body)
        self._tool: object = None  # key of the tool call being streamed
        self._ntools = 0
        self._done = False
        self._usage: dict | None = None
        self._error: GatewayError | None = None

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            items = self._dec.feed(data)
        except ProtocolError as e:  # an oversized event
            raise UpstreamProtocolError(f"cohere {e.message}", code=e.code) from None
        out, self._error = translate_all(items, self._event)
        return out

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        self._dec.close()
        if not self._done:
            if self._dec.has_partial:
                raise UpstreamProtocolError("cohere stream ended inside an event")
            raise UpstreamProtocolError("cohere stream ended before message-end")
        return self._w.end(self._usage)

    def _event(self, ev: SSEEvent) -> bytes:
        data = ev.data
        if not data or data == "[DONE]":
            return b""
        obj = json_object(data)
        if obj is None:
            raise UpstreamProtocolError("cohere sent an event whose data is not a JSON object")
        kind = obj.get("type") or ev.event
        w = self._w
        if kind == "content-delta":
            text = _dig(obj, "delta", "message", "content", "text")
            return w.start() + w.text(text) if isinstance(text, str) and text else b""
        if kind == "tool-plan-delta":
            text = _dig(obj, "delta", "message", "tool_plan")
            return w.start() + w.text(text) if isinstance(text, str) and text else b""
        if kind == "tool-call-start":
            tc = _dig(obj, "delta", "message", "tool_calls")
            if isinstance(tc, list):
                tc = tc[0] if tc else None
            if not isinstance(tc, dict):
                raise UpstreamProtocolError("cohere sent tool-call-start without a tool call")
            fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
            idx = obj.get("index")
            self._tool = key = idx if isinstance(idx, int) else ("n", self._ntools)
            self._ntools += 1
            args = fn.get("arguments")
            return w.tool_start(key, str(tc.get("id") or ""), str(fn.get("name") or ""),
                                arguments=args if isinstance(args, str) else "")
        if kind == "tool-call-delta":
            args = _dig(obj, "delta", "message", "tool_calls", "function", "arguments")
            idx = obj.get("index")
            return w.tool_args(idx if isinstance(idx, int) else self._tool, args) if isinstance(args, str) else b""
        if kind == "message-end":
            delta = obj.get("delta") if isinstance(obj.get("delta"), dict) else {}
            reason = delta.get("finish_reason")
            err = delta.get("error")
            if err or reason in _FAILED:
                raise UpstreamError(str(err or f"cohere ended the message with {reason}"), code="cohere_error")
            self._done = True
            self._usage = _usage(delta.get("usage"))
            finish = _FINISH.get(reason) if isinstance(reason, str) else None
            return w.finish(finish or ("tool_calls" if w.has_tools else "stop"))
        if kind == "error":
            message = obj.get("message") or _dig(obj, "delta", "error") or "cohere reported an error"
            raise UpstreamError(str(message), code="cohere_error")
        # message-start, content-start/-end, tool-call-end, citation-start/-end, debug: nothing to send.
        return b""


def _message_of(data: bytes) -> str | None:
    parsed = json_object(data)
    if parsed is not None:
        for key in ("message", "error"):
            v = parsed.get(key)
            if isinstance(v, str):
                return v
            if isinstance(v, dict) and isinstance(v.get("message"), str):
                return v["message"]
    return None


def _error_body(status: int, data: bytes) -> bytes:
    message = _message_of(data) or f"cohere answered HTTP {status}: {data[:200].decode('utf-8', 'replace')}"
    return envelope(message, _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"))


class CohereAdapter:
    """Cohere's `/v2/chat`, streamed as SSE with typed events."""

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, raw: bytes | None,
                      stream: bool) -> UpstreamRequest:
        chat_only("cohere", endpoint)
        payload = orjson.dumps(build_body(target, body, stream))
        return json_post(target, "/v2/chat", payload, stream, bearer(target))

    def stream_translator(self, target: TargetRuntime, body: dict) -> CohereTranslator:
        return CohereTranslator(target.model, body)

    def is_stream(self, content_type: bytes) -> bool:
        return content_type.startswith(b"text/event-stream")

    def translate_response(self, target: TargetRuntime, body: dict, status: int, data: bytes) -> tuple[int, bytes]:
        if status >= 400:
            return status, _error_body(status, data)
        obj = json_object(data)
        if obj is None:
            return 502, UpstreamProtocolError("cohere answered with a body that is not a JSON object").body()
        reason = obj.get("finish_reason")
        if reason in _FAILED:
            return 502, UpstreamError(str(obj.get("error") or f"cohere ended the message with {reason}"),
                                      code="cohere_error").body()
        msg = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        texts = []
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content
                      if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str)]
        calls = []
        raw_calls = msg.get("tool_calls")
        for k, c in enumerate(raw_calls if isinstance(raw_calls, list) else ()):
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict):
                continue
            args = fn.get("arguments")
            calls.append({"id": str(c.get("id") or f"call_{k}"), "type": "function",
                          "function": {"name": str(fn.get("name") or ""),
                                       "arguments": args if isinstance(args, str) else orjson.dumps(
                                           args if args is not None else {}).decode()}})
        plan = msg.get("tool_plan")
        # The plan streams as content ahead of the calls (tool-plan-delta); the same text leads here.
        text = (plan if isinstance(plan, str) else "") + "".join(texts)
        finish = (_FINISH.get(reason) if isinstance(reason, str) else None) or ("tool_calls" if calls else "stop")
        return 200, completion_body(target.model, text if text or not calls else None, finish,
                                    _usage(obj.get("usage")), calls)
