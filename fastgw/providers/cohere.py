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
- dropped, logged once per worker at INFO (logger `fastgw.providers.cohere`, `ir.note_dropped`):
  `logprobs: false`, `top_logprobs`, `logit_bias`,
  `reasoning_effort`, `prediction`, `parallel_tool_calls`, `user`, `metadata`, `store`, `service_tier`;
  a message's `name` (silently).
- refused (400 `unsupported_parameter`): `n` > 1; `logprobs: true`; audio/file parts; images outside user messages.

Answer: `content-delta` text and `tool-plan-delta` text (the model's plan before it calls tools) become
content; `tool-call-start`/`-delta` become streamed tool calls; `message-end` finish reasons COMPLETE and
STOP_SEQUENCE -> stop, MAX_TOKENS -> length, TOOL_CALL -> tool_calls, ERROR/TIMEOUT (or a `delta.error`) ->
the in-stream error event; usage from `billed_units` (what is charged), else `tokens`. Thinking content
and citations are not forwarded. HTTP errors (`{"message": ...}`) keep their status with an OpenAI envelope.
"""

from __future__ import annotations

from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, envelope
from fastgw.proto.sse import SSEDecoder, SSEEvent
from fastgw.providers.base import TargetRuntime, UpstreamRequest, bearer, chat_only, encode_json, json_object, json_post
from fastgw.providers.chunks import StreamTranslator, completion_body, upstream_json, usage_dict
from fastgw.providers.ir import Message, Part, invalid, map_messages, note_dropped, parse_chat, unsupported

__all__ = ["CohereAdapter", "CohereTranslator", "translate_request"]

_DROPPED = ("logprobs", "top_logprobs", "logit_bias", "reasoning_effort", "prediction", "parallel_tool_calls",
            "user", "metadata", "store", "service_tier")
_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls"}
_FAILED = ("ERROR", "TIMEOUT")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}


PROVIDER = "cohere"


def _bad(message: str, param: str | None = None) -> GatewayError:
    return unsupported(PROVIDER, message, param)


# --- request -------------------------------------------------------------------------------------------------


def _text(content: str | list[Part] | None, where: str) -> str:
    """The text of a message content that may hold only text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.type
        if kind == "text" and isinstance(part.text, str):
            texts.append(part.text)
        elif kind == "refusal":
            texts.append(str(part.raw.get("refusal") or ""))
        elif kind == "image_url":
            raise _bad("image parts are only accepted in user messages", f"{where}[{j}]")
        else:
            raise _bad(f"content part type {kind!r} is not supported here", f"{where}[{j}]")
    return "\n".join(texts)


def _image(part: dict, p: str) -> dict:
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
        raise invalid("image_url.url must be a data: or http(s) URL", p + ".image_url.url")
    img: dict = {"url": url}
    detail = iu.get("detail") if isinstance(iu, dict) else None
    if detail in ("low", "high", "auto"):
        img["detail"] = detail
    return {"type": "image_url", "image_url": img}


def _user(m: Message) -> dict:
    content = m.content
    if content is None or isinstance(content, str):
        return {"role": "user", "content": content or ""}
    parts: list[dict] = []
    for j, part in enumerate(content):
        p = f"{m.param}.content[{j}]"
        if part.type == "text":
            if not isinstance(part.text, str):
                raise invalid("text part without text", p)
            parts.append({"type": "text", "text": part.text})
        elif part.type == "image_url":
            parts.append(_image(part.raw, p))
        else:
            raise _bad(f"content part type {part.type!r} is not supported", p)
    return {"role": "user", "content": parts}


def _system(m: Message) -> dict:
    return {"role": "system", "content": _text(m.content, m.param + ".content")}


def _assistant(m: Message) -> dict:
    text = _text(m.content, m.param + ".content")
    if not m.tool_calls:
        return {"role": "assistant", "content": text}
    tcs = []
    for k, c in enumerate(m.tool_calls):
        if not isinstance(c.name, str):
            raise invalid("tool call without a function name", f"{m.param}.tool_calls[{k}]")
        args = c.arguments
        if not isinstance(args, str):
            args = encode_json(args if args is not None else {},
                               at=f"{m.param}.tool_calls[{k}].function.arguments").decode()
        tcs.append({"id": str(c.id or f"call_{m.index}_{k}"), "type": "function",
                    "function": {"name": c.name, "arguments": args}})
    msg: dict = {"role": "assistant", "tool_calls": tcs}
    if text:
        msg["tool_plan"] = text  # the text that came with the calls is what v2 calls the plan
    return msg


def _tool_result(m: Message) -> dict:
    cid = m.tool_call_id
    if not isinstance(cid, str) or not cid:
        raise invalid("tool messages need a tool_call_id", m.param + ".tool_call_id")
    return {"role": "tool", "tool_call_id": cid, "content": _text(m.content, m.param + ".content")}


_ROLES = {"system": _system, "developer": _system, "user": _user, "assistant": _assistant, "tool": _tool_result}


def _tool(t: object, k: int) -> tuple[dict, bool]:
    fn = t.get("function") if isinstance(t, dict) else None
    if not isinstance(t, dict) or not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
            or t.get("type", "function") != "function":
        raise _bad("cohere accepts function tools only", f"tools[{k}]")
    f: dict = {"name": fn["name"]}
    if fn.get("description") is not None:
        f["description"] = fn["description"]
    if fn.get("parameters") is not None:
        f["parameters"] = fn["parameters"]
    return {"type": "function", "function": f}, fn.get("strict") is True


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    if not tools:
        return
    if not isinstance(tools, list):
        raise invalid("tools must be a list", "tools")
    converted = [_tool(t, k) for k, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        converted = [c for c in converted if c[0]["function"]["name"] == name]
        if not converted:
            raise invalid(f"tool_choice names a function that is not in tools: {name!r}", "tool_choice")
        out["tool_choice"] = "REQUIRED"
    elif choice == "required":
        out["tool_choice"] = "REQUIRED"
    elif choice == "none":
        out["tool_choice"] = "NONE"
    elif choice not in (None, "auto"):
        raise invalid("tool_choice must be 'none', 'auto', 'required' or a function", "tool_choice")
    out["tools"] = [c[0] for c in converted]
    if any(c[1] for c in converted):
        out["strict_tools"] = True


def _response_format(rf: object) -> dict | None:
    if not isinstance(rf, dict):
        return None
    kind = rf.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if not isinstance(schema, dict):
            raise invalid("response_format.json_schema.schema must be an object", "response_format")
        return {"type": "json_object", "json_schema": schema}
    if kind != "text":
        raise _bad(f"response_format type {kind!r} is not supported", "response_format")
    return None


def translate_request(target: TargetRuntime, body: dict, stream: bool) -> dict:
    """The `/v2/chat` request body for an OpenAI chat request."""
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("cohere returns one choice; n must be 1", "n")
    if body.get("logprobs"):
        # A client that asks for logprobs reads them: an answer without them is not the answer it asked for.
        raise _bad("logprobs are not supported for Cohere targets", "logprobs")
    req = parse_chat(body, PROVIDER)
    out: dict = {"model": target.model, "messages": map_messages(req, _ROLES), "stream": stream}
    _tools(body, out)
    sp = req.sampling
    # Values outside the range Cohere accepts are clamped into it (OpenAI's top_p 1.0 is Cohere's p 0.99;
    # OpenAI's penalties run from -2 to 2, Cohere's from 0 to 1).
    for dst, value, bounds in (("temperature", sp.temperature, None), ("p", sp.top_p, (0.01, 0.99)),
                               ("seed", sp.seed, None), ("frequency_penalty", sp.frequency_penalty, (0.0, 1.0)),
                               ("presence_penalty", sp.presence_penalty, (0.0, 1.0))):
        if value is not None:
            if bounds is not None and isinstance(value, (int, float)):
                value = min(max(value, bounds[0]), bounds[1])
            out[dst] = value
    if sp.max_tokens is not None:
        out["max_tokens"] = sp.max_tokens
    if sp.stop:
        out["stop_sequences"] = sp.stop
    rf = _response_format(body.get("response_format"))
    if rf is not None:
        out["response_format"] = rf
    for k in _DROPPED:
        if body.get(k) is not None:
            note_dropped(PROVIDER, k)
    return out


# --- answer --------------------------------------------------------------------------------------------------


def _usage(u: object) -> dict:
    """billed_units when given (what Cohere charges), else tokens (which count Cohere's own preamble too)."""
    if not isinstance(u, dict):
        return usage_dict(0, 0)
    counts = u.get("billed_units")
    if not isinstance(counts, dict) or counts.get("input_tokens") is None:
        tokens = u.get("tokens")
        counts = tokens if isinstance(tokens, dict) else {}
    cached = u.get("cached_tokens")
    return usage_dict(int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0),
                      int(cached) if isinstance(cached, (int, float)) and cached else None)


def _dig(obj: object, *keys: str) -> object:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


class CohereTranslator(StreamTranslator):
    """Cohere v2 SSE events in, OpenAI `chat.completion.chunk` objects out (deferred errors: `StreamTranslator`)."""

    __slots__ = ("_tool", "_ntools", "_done")

    provider = PROVIDER

    def __init__(self, model: str, body: dict) -> None:
        super().__init__(model, body, SSEDecoder())
        self._tool: object = None  # key of the tool call being streamed
        self._ntools = 0
        self._done = False

    def _close(self) -> None:
        self._dec.close()
        if not self._done:
            if self._dec.has_partial:
                raise UpstreamProtocolError("cohere stream ended inside an event")
            raise UpstreamProtocolError("cohere stream ended before message-end")

    def _one(self, ev: SSEEvent) -> None:
        data = ev.data
        if not data or data == "[DONE]":
            return
        obj = json_object(data)
        if obj is None:
            raise UpstreamProtocolError("cohere sent an event whose data is not a JSON object")
        kind = obj.get("type") or ev.event
        w = self._w
        if kind == "content-delta" or kind == "tool-plan-delta":
            text = _dig(obj, "delta", "message", "content", "text") if kind == "content-delta" else \
                _dig(obj, "delta", "message", "tool_plan")
            if isinstance(text, str) and text:
                w.start()
                w.text(text)
        elif kind == "tool-call-start":
            self._tool_start(obj)
        elif kind == "tool-call-delta":
            args = _dig(obj, "delta", "message", "tool_calls", "function", "arguments")
            idx = obj.get("index")
            if isinstance(args, str):
                w.tool_args(idx if isinstance(idx, int) else self._tool, args)
        elif kind == "message-end":
            delta = obj.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            reason = delta.get("finish_reason")
            err = delta.get("error")
            if err or reason in _FAILED:
                raise UpstreamError(str(err or f"cohere ended the message with {reason}"), code="cohere_error")
            self._done = True
            self._usage = _usage(delta.get("usage"))
            finish = _FINISH.get(reason) if isinstance(reason, str) else None
            w.finish(finish or ("tool_calls" if w.has_tools else "stop"))
        elif kind == "error":
            message = obj.get("message") or _dig(obj, "delta", "error") or "cohere reported an error"
            raise UpstreamError(str(message), code="cohere_error")
        # message-start, content-start/-end, tool-call-end, citation-start/-end, debug: nothing to send.

    def _tool_start(self, obj: dict) -> None:
        tc = _dig(obj, "delta", "message", "tool_calls")
        if isinstance(tc, list):
            tc = tc[0] if tc else None
        if not isinstance(tc, dict):
            raise UpstreamProtocolError("cohere sent tool-call-start without a tool call")
        fn = tc.get("function")
        fn = fn if isinstance(fn, dict) else {}
        idx = obj.get("index")
        self._tool = key = idx if isinstance(idx, int) else ("n", self._ntools)
        self._ntools += 1
        args = fn.get("arguments")
        self._w.tool_start(key, str(tc.get("id") or ""), str(fn.get("name") or ""),
                           arguments=args if isinstance(args, str) else "")


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

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        chat_only("cohere", endpoint)
        payload = encode_json(translate_request(target, body, stream), body)
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
        msg = obj.get("message")
        if not isinstance(msg, dict):
            msg = {}
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
                                       "arguments": args if isinstance(args, str) else upstream_json(
                                           args if args is not None else {})}})
        plan = msg.get("tool_plan")
        # The plan streams as content ahead of the calls (tool-plan-delta); the same text leads here.
        text = (plan if isinstance(plan, str) else "") + "".join(texts)
        finish = (_FINISH.get(reason) if isinstance(reason, str) else None) or ("tool_calls" if calls else "stop")
        return 200, completion_body(target.model, text if text or not calls else None, finish,
                                    _usage(obj.get("usage")), calls)
