"""Anthropic Messages API: an OpenAI chat request becomes `POST {base_url}/v1/messages`; Anthropic's answer, whole
or streamed (SSE), comes back as an OpenAI `chat.completion` body or `chat.completion.chunk` events.

Request (OpenAI chat -> Anthropic Messages):

- mapped: `messages` (system/developer -> top-level `system`, joined with a blank line; user text, `image_url`
  (data: URL -> base64 source, http(s) URL -> url source; `detail` dropped) and PDF `file` parts (data: URL ->
  base64 document); assistant text and `tool_calls` -> `tool_use` blocks; `tool` messages -> `tool_result`
  blocks; consecutive same-role messages merged), `max_completion_tokens`/`max_tokens` -> `max_tokens`
  (default 4096, Anthropic requires one), `temperature` (as is: Anthropic refuses more than 1), `top_p`,
  `stop` -> `stop_sequences`, `tools` (function tools: `parameters` -> `input_schema`, `strict` kept),
  `tool_choice` (auto, none, required -> any, named -> tool; sent only with tools), `parallel_tool_calls: false`
  -> `disable_parallel_tool_use`, `response_format` json_schema -> `output_config.format`, `user` (or
  `safety_identifier`) -> `metadata.user_id`, `stream`.
- dropped (logged once per worker at INFO on `fastgw.providers.anthropic`, by `ir.note_dropped`): `frequency_penalty`,
  `presence_penalty`, `logit_bias`, `seed`, `service_tier`, `store`, `metadata`, `prediction`,
  `reasoning_effort`, `verbosity`, `prompt_cache_key`, `web_search_options`, `top_logprobs`, and any other field
  Anthropic has no counterpart for (`stream_options` is read by the gateway's chunk writer, `n: 1` and
  `logprobs: false` are no-ops).
- refused with 400 `unsupported_parameter`: `n` > 1, `logprobs: true`, `response_format` json_object,
  `audio`/`modalities` with audio, legacy `functions`/`function_call`, non-function tools, `input_audio`
  parts, files other than a PDF data: URL, roles other than system/developer/user/assistant/tool; a malformed
  message, image URL or tool-call arguments that are not a JSON object is a 400 `invalid_request_error`.

Answer (Anthropic -> OpenAI): text blocks -> `content`, `tool_use` -> `tool_calls` (arguments as JSON text);
thinking, redacted thinking and server-tool blocks are left out. `stop_reason`: end_turn/stop_sequence/
pause_turn -> stop, max_tokens/model_context_window_exceeded -> length, tool_use -> tool_calls,
refusal -> content_filter. Usage: prompt = input + cache read + cache creation tokens, `cached_tokens` = cache
read tokens. Errors `{"type":"error","error":{"type","message"}}` keep their HTTP status and become the OpenAI
envelope with `type` mapped (`_ERROR_TYPES`) and `code` = Anthropic's error type; an in-stream `error` event
becomes the in-stream error envelope then `[DONE]`; a stream that ends before `message_stop` is an
upstream protocol error. Only `chat/completions` is served (no embeddings or legacy completions).
"""

from __future__ import annotations

from collections.abc import Iterable

from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, envelope
from fastgw.proto.sse import SSEDecoder, SSEEvent
from fastgw.providers.base import (TargetRuntime, UpstreamRequest, chat_only, encode_json, json_object, json_post,
                                   split_base_url)
from fastgw.providers.chunks import StreamTranslator, completion_body, map_finish, upstream_json, usage_dict
from fastgw.providers.ir import ChatRequest, Message, Part, fold_turns, invalid, note_dropped, parse_chat, unsupported

__all__ = ["AnthropicAdapter", "AnthropicStreamTranslator", "translate_request", "translate_message",
           "ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS"]

#: The API version header every Messages call carries (the only stable version; a target may override it with
#: `headers: {anthropic-version: ...}`).
ANTHROPIC_VERSION = b"2023-06-01"
#: Anthropic requires `max_tokens`; OpenAI clients often send none. 4096 is the largest value every Claude model
#: accepts (the Claude 3 models' output cap), as LiteLLM defaults to for Anthropic.
DEFAULT_MAX_TOKENS = 4096


#: Anthropic stop_reason -> OpenAI finish_reason (unknown ones become "stop": the message did end).
_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: Anthropic error type -> OpenAI error type (the Anthropic type is kept as `code`).
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "billing_error": "insufficient_quota",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
}

#: OpenAI fields consumed by the translation below (or by the gateway itself).
_HANDLED = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stop", "tools", "tool_choice", "parallel_tool_calls", "n", "logprobs", "top_logprobs", "response_format",
    "modalities", "audio", "functions", "function_call", "user", "safety_identifier",
})

PROVIDER = "anthropic"


def _unsupported(message: str, param: str) -> GatewayError:
    return unsupported(PROVIDER, message, param)


# ---- request translation --------------------------------------------------------------------


def _text_of(content: str | list[Part] | None, param: str) -> str:
    """The text of a system/developer message or tool result part list (text parts only)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    out = []
    for k, part in enumerate(content):
        if part.type != "text" or not isinstance(part.text, str):
            raise invalid("only text parts are allowed here", f"{param}[{k}]")
        out.append(part.text)
    return "".join(out)


def _data_url(url: str, param: str) -> tuple[str, str]:
    """'data:image/png;base64,AAAA' -> ('image/png', 'AAAA')."""
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise invalid("a data: URL must be base64 encoded (data:<media type>;base64,<data>)", param)
    return head[:-7], data


def _image(part: dict, param: str) -> dict:
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str):
        raise invalid("image_url.url must be a string", param)
    if url.startswith("data:"):
        media, data = _data_url(url, param)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid("image_url.url must be an http(s) URL or a base64 data: URL", param)


def _file(part: dict, param: str) -> dict:
    f = part.get("file")
    data_url = f.get("file_data") if isinstance(f, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:application/pdf;"):
        raise _unsupported("only PDF files given inline as a data: URL (file.file_data) are supported", param)
    media, data = _data_url(data_url, param)
    return {"type": "document", "source": {"type": "base64", "media_type": media, "data": data}}


def _system(m: Message) -> list[str]:
    return [_text_of(m.content, f"{m.param}.content")]


def _user(m: Message) -> list[dict]:
    content = m.content
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        raise invalid("content must be a string or a list of parts", f"{m.param}.content")
    out: list[dict] = []
    for k, part in enumerate(content):
        p = f"{m.param}.content[{k}]"
        t = part.type
        if t == "text" and isinstance(part.text, str):
            out.append({"type": "text", "text": part.text})
        elif t == "image_url":
            out.append(_image(part.raw, p))
        elif t == "file":
            out.append(_file(part.raw, p))
        elif t == "input_audio":
            raise _unsupported("audio input is not supported", p)
        else:
            raise invalid(f"unknown content part type {t!r}", p)
    return out


def _assistant(m: Message) -> list[dict]:
    param = m.param
    content = m.content
    out: list[dict] = []
    if isinstance(content, str):
        if content:
            out.append({"type": "text", "text": content})
    elif content is not None:
        for k, part in enumerate(content):
            if part.type == "text" and isinstance(part.text, str):
                if part.text:
                    out.append({"type": "text", "text": part.text})
            elif part.type != "refusal":  # a refusal the model gave: nothing to replay
                raise invalid(f"unknown assistant content part type {part.type!r}", f"{param}.content[{k}]")
    for k, c in enumerate(m.tool_calls or ()):
        p = f"{param}.tool_calls[{k}]"
        if not c.has_function or not isinstance(c.id, str):
            raise invalid("a tool call needs an id and a function", p)
        args = c.arguments or "{}"
        value = json_object(args) if isinstance(args, str) else None
        if value is None:
            raise invalid("tool call arguments must be a JSON object", f"{p}.function.arguments")
        out.append({"type": "tool_use", "id": c.id, "name": c.name or "", "input": value})
    if m.raw.get("function_call") is not None:
        raise _unsupported("legacy function_call messages are not supported; use tool_calls", f"{param}.function_call")
    if not out and isinstance(content, str):
        out.append({"type": "text", "text": content})  # keep the turn; Anthropic says what it thinks of it
    return out


def _tool_result(m: Message) -> list[dict]:
    call_id = m.tool_call_id
    if not isinstance(call_id, str):
        raise invalid("a tool message needs tool_call_id", f"{m.param}.tool_call_id")
    content = m.content
    block: dict = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        block["content"] = content
    elif content is not None:
        block["content"] = [{"type": "text", "text": _text_of([part], f"{m.param}.content")} for part in content]
    return [block]


def _messages(req: ChatRequest) -> tuple[str | None, list[dict]]:
    system, out = fold_turns(req, system=_system, user=_user, assistant=_assistant, tool=_tool_result,
                             keep_empty=True)
    for m in out:
        c = m["content"]
        if len(c) == 1 and c[0]["type"] == "text":
            m["content"] = c[0]["text"]  # the plain form, as a hand-written request has it
    return ("\n\n".join(system) if system else None), out


def _tools(tools: object) -> list[dict]:
    if not isinstance(tools, list):
        raise invalid("tools must be a list", "tools")
    out = []
    for j, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise _unsupported("only function tools are supported", f"tools[{j}]")
        tool: dict = {"name": fn.get("name", ""),
                      "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            tool["description"] = fn["description"]
        if fn.get("strict"):
            tool["strict"] = True
        out.append(tool)
    return out


def _tool_choice(tc: object, parallel: object) -> dict | None:
    choice: dict | None
    if tc is None:
        choice = {"type": "auto"} if parallel is False else None
    elif tc == "auto":
        choice = {"type": "auto"}
    elif tc == "none":
        choice = {"type": "none"}
    elif tc == "required":
        choice = {"type": "any"}
    elif isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("function"), dict):
        choice = {"type": "tool", "name": tc["function"].get("name", "")}
    else:
        raise _unsupported("tool_choice must be auto, none, required or a named function", "tool_choice")
    if choice is not None and parallel is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    return choice


def _refuse(body: dict) -> None:
    """The 400s for OpenAI features Anthropic has no counterpart for."""
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("n > 1 is not supported: Anthropic returns one choice", "n")
    if body.get("logprobs"):
        raise _unsupported("logprobs are not supported", "logprobs")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise _unsupported("legacy functions/function_call are not supported; use tools/tool_choice",
                           "functions" if body.get("functions") is not None else "function_call")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise _unsupported("audio output is not supported", "audio" if body.get("audio") is not None
                           else "modalities")


def translate_request(target: TargetRuntime, body: dict, stream: bool) -> dict:
    """The Anthropic Messages request body for an OpenAI chat request (raises GatewayError 400 when refused)."""
    for key in body:
        if key not in _HANDLED:
            note_dropped(PROVIDER, key)
    _refuse(body)
    if body.get("top_logprobs") is not None:
        note_dropped(PROVIDER, "top_logprobs")
    req = parse_chat(body, PROVIDER)
    system, messages = _messages(req)
    sp = req.sampling
    out: dict = {"model": target.model, "max_tokens": DEFAULT_MAX_TOKENS if sp.max_tokens is None else sp.max_tokens,
                 "messages": messages}
    if system is not None:
        out["system"] = system
    out.update(sp.named({"temperature": "temperature", "top_p": "top_p", "stop": "stop_sequences"}))
    tools = body.get("tools")
    if tools:
        # tool_choice and parallel_tool_calls mean nothing without tools (and Anthropic refuses a lone tool_choice).
        out["tools"] = _tools(tools)
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") not in (None, "text"):
        if rf.get("type") == "json_schema" and isinstance(rf.get("json_schema"), dict) \
                and isinstance(rf["json_schema"].get("schema"), dict):
            out["output_config"] = {"format": {"type": "json_schema", "schema": rf["json_schema"]["schema"]}}
        else:
            raise _unsupported("response_format: only json_schema (with a schema) is supported", "response_format")
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    return out


# ---- answer translation ---------------------------------------------------------------------


def _usage(u: object) -> dict:
    if not isinstance(u, dict):
        return usage_dict(0, 0)
    read = u.get("cache_read_input_tokens")
    prompt = (u.get("input_tokens") or 0) + (read or 0) + (u.get("cache_creation_input_tokens") or 0)
    return usage_dict(prompt, u.get("output_tokens") or 0, read if isinstance(read, int) else None)


def _error_body(status: int, data: bytes) -> bytes:
    """An Anthropic error body as the OpenAI envelope (ours, quoting the body, when it is not Anthropic's)."""
    parsed = json_object(data)
    err = parsed.get("error") if parsed is not None else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        kind = str(err.get("type") or "api_error")
        return envelope(err["message"], _ERROR_TYPES.get(kind, "server_error" if status >= 500 else
                                                         "invalid_request_error"), kind)
    text = data[:200].decode("utf-8", "replace")
    return UpstreamError(f"upstream answered HTTP {status}: {text}", status=status).body()


def translate_message(msg: dict, model: str) -> bytes:
    """An Anthropic `message` object as an OpenAI `chat.completion` body."""
    texts: list[str] = []
    calls: list[dict] = []
    for block in msg.get("content") or ():
        if not isinstance(block, dict):
            continue
        t = block.get("type")
        if t == "text":
            texts.append(block.get("text") or "")
        elif t == "tool_use":
            calls.append({"id": block.get("id") or "", "type": "function",
                          "function": {"name": block.get("name") or "",
                                       "arguments": upstream_json(block.get("input") or {})}})
    content = "".join(texts) if texts or not calls else None
    finish = map_finish(msg.get("stop_reason"), _STOP) or "stop"
    return completion_body(msg.get("model") or model, content, finish, _usage(msg.get("usage")), calls or None)


class AnthropicStreamTranslator(StreamTranslator):
    """Anthropic Messages SSE -> OpenAI chunks, incremental: each complete Anthropic event is translated by the
    `feed` that completes it; only the incomplete event is held (bounded by the SSE decoder's limit)."""

    __slots__ = ("_tools", "_args_seen", "_umeta", "_finished", "_stopped")

    provider = PROVIDER

    def __init__(self, model: str, body: dict) -> None:
        super().__init__(model, body, SSEDecoder())
        #: content block index -> the tool_use block's start (for its input when no delta carries it)
        self._tools: dict[int, dict] = {}
        self._args_seen: set[int] = set()
        #: Anthropic's usage counts, merged from message_start and message_delta
        self._umeta: dict = {}
        self._finished = False
        self._stopped = False

    def _items(self, data: bytes) -> Iterable[SSEEvent]:
        if self._stopped:
            return ()  # anything after message_stop (there should be nothing) is ignored
        return super()._items(data)

    def _close(self) -> None:
        partial = self._dec.has_partial
        self._dec.close()
        if partial:
            raise UpstreamProtocolError("anthropic stream ended in the middle of an event")
        raise UpstreamProtocolError("anthropic stream ended before message_stop")

    def _one(self, ev: SSEEvent) -> None:
        if ev.data is None or self._stopped:
            return
        obj = json_object(ev.data)
        if obj is None:
            raise UpstreamProtocolError("anthropic stream: event data is not a JSON object")
        t = obj.get("type") or ev.event
        if t == "content_block_delta":
            d = obj.get("delta") or {}
            dt = d.get("type")
            if dt == "text_delta":
                self._w.text(d.get("text") or "")
            elif dt == "input_json_delta":
                idx = obj.get("index")
                if idx in self._tools:
                    pj = d.get("partial_json") or ""
                    if pj:
                        self._args_seen.add(idx)
                    self._w.tool_args(idx, pj)
            # thinking_delta, signature_delta, citations_delta: not part of an OpenAI answer
        elif t in ("content_block_start", "content_block_stop"):
            self._block(t, obj)
        elif t in ("message_start", "message_delta", "message_stop"):
            self._message(t, obj)
        elif t == "error":
            err = obj.get("error") or {}
            kind = str(err.get("type") or "api_error")
            raise UpstreamError(f"anthropic: {err.get('message') or kind}", code=kind,
                                type=_ERROR_TYPES.get(kind, "upstream_error"))
        # ping, and event types added after this was written: nothing to send

    def _block(self, t: str, obj: dict) -> None:
        idx = obj.get("index")
        w = self._w
        if t == "content_block_start":
            block = obj.get("content_block") or {}
            bt = block.get("type")
            if bt == "text":
                w.text(block.get("text") or "")
            elif bt == "tool_use":
                self._tools[idx] = block  # type: ignore[index]
                w.tool_start(idx, block.get("id") or "", block.get("name") or "")
            return
        tool = self._tools.get(idx)  # type: ignore[arg-type]
        if tool is not None and idx not in self._args_seen:
            # A tool call whose input came whole in content_block_start (or empty): OpenAI always has JSON text.
            self._args_seen.add(idx)  # type: ignore[arg-type]
            w.tool_args(idx, upstream_json(tool.get("input") or {}))

    def _message(self, t: str, obj: dict) -> None:
        w = self._w
        if t == "message_start":
            msg = obj.get("message") or {}
            if isinstance(msg.get("model"), str) and msg["model"] and not w.began:
                w.model = msg["model"]  # before the first chunk: the whole stream names the model that answered
            if isinstance(msg.get("usage"), dict):
                self._umeta.update(msg["usage"])
            w.start()
        elif t == "message_delta":
            if isinstance(obj.get("usage"), dict):
                self._umeta.update({k: v for k, v in obj["usage"].items() if v is not None})
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason is not None:
                self._finished = True
                w.finish(map_finish(reason, _STOP) or "stop")
        else:  # message_stop: the answer is complete; the usage chunk goes out with it
            self._stopped = True
            if not self._finished:
                w.finish("tool_calls" if w.has_tools else "stop")
            w.end(_usage(self._umeta))


class AnthropicAdapter:
    """The Anthropic Messages API (`/v1/messages`, `x-api-key`, `anthropic-version`)."""

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        chat_only("anthropic", endpoint)
        assert target.base_url is not None
        prefix = split_base_url(target.base_url)[3]
        auth: list[tuple[bytes, bytes]] = []
        if target.api_key:
            auth.append((b"x-api-key", target.api_key.encode()))
        if not any(n == b"anthropic-version" for n, _ in target.extra_headers):
            auth.append((b"anthropic-version", ANTHROPIC_VERSION))
        payload = encode_json(translate_request(target, body, stream), body)
        return json_post(target, "/messages" if prefix.endswith("/v1") else "/v1/messages", payload, stream, auth)

    def stream_translator(self, target: TargetRuntime, body: dict) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(target.model, body)

    def is_stream(self, content_type: bytes) -> bool:
        return content_type.startswith(b"text/event-stream")

    def translate_response(self, target: TargetRuntime, body: dict, status: int, data: bytes) -> tuple[int, bytes]:
        if status >= 400:
            return status, _error_body(status, data)
        msg = json_object(data)
        if msg is None:
            return 502, UpstreamProtocolError("anthropic answered with a body that is not a JSON object").body()
        if msg.get("type") == "error":
            return 502, _error_body(502, data)
        return status, translate_message(msg, target.model)
