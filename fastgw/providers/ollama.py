"""Ollama's native chat API (`POST /api/chat`): OpenAI chat requests out, NDJSON streams back as OpenAI chunks.

Only `chat/completions` is translated; other endpoints are refused (400 `unsupported_endpoint`).

Request (OpenAI -> Ollama):

- mapped: `messages` (system/developer -> system; user text and image parts; assistant text and
  `tool_calls`, arguments decoded to the object Ollama wants; tool results with `tool_call_id` and the
  `tool_name` found from the assistant call they answer); image parts given as `data:` URLs -> the
  message's base64 `images`; `tools` (same shape); `tool_choice` "none" (tools not sent), "auto";
  `temperature`, `top_p`, `seed`, `presence_penalty`, `frequency_penalty`, `stop` -> `options`;
  `max_completion_tokens`/`max_tokens` -> `options.num_predict`; `response_format` json_object ->
  `format: "json"`, json_schema -> the schema object as `format`; `stream` always sent explicitly
  (Ollama streams by default).
- best effort, logged once per worker at INFO (logger `fastgw.providers.ollama`, `ir.note_dropped`):
  `tool_choice` "required" (tools sent,
  the model is not forced), `tool_choice` naming a function (only that tool is sent, not forced).
- dropped, logged: `logprobs: false`, `top_logprobs`, `logit_bias`, `reasoning_effort`, `prediction`,
  `parallel_tool_calls`, `user`, `metadata`, `store`, `service_tier`; a message's `name` (silently).
- refused (400 `unsupported_parameter`): `n` > 1; `logprobs: true`; image parts with an http(s) URL (Ollama cannot
  fetch them; send a data: URL); audio/file parts; images outside user messages.

Answer: text, whole tool calls (arguments re-encoded as a JSON string), `done_reason` stop/length
(stop becomes `tool_calls` when the answer called tools), usage from `prompt_eval_count` /
`eval_count`. A thinking model's `message.thinking` text is not forwarded. An `{"error": ...}` line
in the stream becomes the in-stream error event; an HTTP error keeps its status with an OpenAI envelope.
"""

from __future__ import annotations

import base64
import os
from urllib.parse import unquote_to_bytes

from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, envelope
from fastgw.proto.ndjson import NDJSONDecoder
from fastgw.providers.base import TargetRuntime, UpstreamRequest, bearer, chat_only, encode_json, json_object, json_post
from fastgw.providers.chunks import StreamTranslator, completion_body, upstream_json, usage_dict
from fastgw.providers.ir import ChatRequest, Message, invalid, map_messages, note_dropped, parse_chat, unsupported

__all__ = ["OllamaAdapter", "OllamaTranslator", "translate_request"]

#: Fields with no Ollama equivalent that change nothing the client relies on when dropped.
_DROPPED = ("logprobs", "top_logprobs", "logit_bias", "reasoning_effort", "prediction", "parallel_tool_calls",
            "user", "metadata", "store", "service_tier")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}


PROVIDER = "ollama"


def _bad(message: str, param: str | None = None) -> GatewayError:
    return unsupported(PROVIDER, message, param)


# --- request -------------------------------------------------------------------------------------------------


def _image(url: object, where: str) -> str:
    """The base64 payload of a data: URL image (Ollama wants bare base64, no media type)."""
    if not isinstance(url, str):
        raise invalid("image_url.url must be a string", where)
    if not url.startswith("data:"):
        raise _bad("ollama accepts images only as data: URLs (base64); fetch the image and inline it", where)
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise invalid("malformed data: URL", where)
    if head.endswith(";base64"):
        return payload
    return base64.b64encode(unquote_to_bytes(payload)).decode("ascii")


def _content(m: Message, images: list[str] | None) -> str:
    """The text of a message's content; image parts go to `images` (None: images refused here)."""
    content = m.content
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for j, part in enumerate(content):
        p = f"{m.param}.content[{j}]"
        kind = part.type
        if kind == "text":
            if not isinstance(part.text, str):
                raise invalid("text part without text", p)
            texts.append(part.text)
        elif kind == "image_url":
            if images is None:
                raise _bad("image parts are only accepted in user messages", p)
            iu = part.raw.get("image_url")
            images.append(_image(iu.get("url") if isinstance(iu, dict) else iu, p + ".image_url"))
        elif kind == "refusal":
            texts.append(str(part.raw.get("refusal") or ""))
        else:
            raise _bad(f"content part type {kind!r} is not supported", p)
    return "\n".join(texts)


def _arguments(raw: object, where: str) -> dict:
    """OpenAI sends tool arguments as a JSON string; Ollama wants the object."""
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        value = json_object(raw)
        if value is not None:
            return value
    raise invalid("tool call arguments must be a JSON object (as a string)", where)


def _system(m: Message) -> dict:
    return {"role": "system", "content": _content(m, None)}


def _user(m: Message) -> dict:
    images: list[str] = []
    msg: dict = {"role": "user", "content": _content(m, images)}
    if images:
        msg["images"] = images
    return msg


def _assistant(m: Message, names: dict[str, str]) -> dict:
    msg: dict = {"role": "assistant", "content": _content(m, None)}
    if m.tool_calls:
        tcs = []
        for k, c in enumerate(m.tool_calls):
            where = f"{m.param}.tool_calls[{k}]"
            if not isinstance(c.name, str):
                raise invalid("tool call without a function name", where)
            args = _arguments(c.arguments, where + ".function.arguments")
            tc: dict = {"function": {"name": c.name, "arguments": args}}
            if isinstance(c.id, str) and c.id:
                tc["id"] = c.id
                names[c.id] = c.name
            tcs.append(tc)
        msg["tool_calls"] = tcs
    return msg


def _tool_result(m: Message, names: dict[str, str]) -> dict:
    msg = {"role": "tool", "content": _content(m, None)}
    cid = m.tool_call_id
    if isinstance(cid, str) and cid:
        msg["tool_call_id"] = cid
        if cid in names:
            msg["tool_name"] = names[cid]  # Ollama matches results to calls by name
    return msg


def _messages(req: ChatRequest) -> list[dict]:
    names: dict[str, str] = {}  # tool_call_id -> function name, for the tool results that follow
    return map_messages(req, {"system": _system, "developer": _system, "user": _user,
                              "assistant": lambda m: _assistant(m, names), "tool": lambda m: _tool_result(m, names)})


def _tools(body: dict) -> list | None:
    tools = body.get("tools")
    if not tools:
        return None
    if not isinstance(tools, list):
        raise invalid("tools must be a list", "tools")
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        return tools
    if choice == "none":
        return None
    if choice == "required":
        note_dropped(PROVIDER, "tool_choice=required")  # tools sent as auto: the call cannot be forced
        return tools
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        keep = [t for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
                and t["function"].get("name") == name]
        if not keep:
            raise invalid(f"tool_choice names a function that is not in tools: {name!r}", "tool_choice")
        note_dropped(PROVIDER, "tool_choice=function")  # only that tool is sent; the call is not forced
        return keep
    raise invalid("tool_choice must be 'none', 'auto', 'required' or a function", "tool_choice")


def _format(rf: object) -> object:
    if not isinstance(rf, dict):
        return None
    kind = rf.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if not isinstance(schema, dict):
            raise invalid("response_format.json_schema.schema must be an object", "response_format")
        return schema
    if kind != "text":
        raise _bad(f"response_format type {kind!r} is not supported", "response_format")
    return None


#: Our sampling fields -> Ollama's `options` names.
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "presence_penalty": "presence_penalty",
             "frequency_penalty": "frequency_penalty", "max_tokens": "num_predict", "stop": "stop"}


def translate_request(target: TargetRuntime, body: dict, stream: bool) -> dict:
    """The `/api/chat` request body for an OpenAI chat request."""
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("ollama returns one choice; n must be 1", "n")
    if body.get("logprobs"):
        # A client that asks for logprobs reads them: an answer without them is not the answer it asked for.
        raise _bad("logprobs are not supported for Ollama targets", "logprobs")
    req = parse_chat(body, PROVIDER)
    out: dict = {"model": target.model, "messages": _messages(req), "stream": stream}
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    sp = req.sampling
    options = sp.named(_SAMPLING)
    if options:
        out["options"] = options
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        out["format"] = fmt
    for k in _DROPPED:
        if body.get(k) is not None:
            note_dropped(PROVIDER, k)
    return out


# --- stream --------------------------------------------------------------------------------------------------


def _args_text(args: object) -> str:
    if isinstance(args, str):
        return args
    return upstream_json(args if args is not None else {})


def _finish(reason: object, tools: bool) -> str:
    if reason == "length":
        return "length"
    return "tool_calls" if tools else "stop"


def _usage(obj: dict) -> dict:
    p = obj.get("prompt_eval_count")
    c = obj.get("eval_count")
    return usage_dict(p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)


class OllamaTranslator(StreamTranslator):
    """Ollama NDJSON lines in, OpenAI `chat.completion.chunk` objects out (one per line that carries something;
    deferred errors: `StreamTranslator`)."""

    __slots__ = ("_tools", "_done")

    provider = PROVIDER

    def __init__(self, model: str, body: dict) -> None:
        super().__init__(model, body, NDJSONDecoder())
        self._tools = 0
        self._done = False

    def _close(self) -> None:
        self._dec.close()
        if self._dec.has_partial:
            raise UpstreamProtocolError("ollama stream ended inside a line")
        if not self._done:
            raise UpstreamProtocolError("ollama stream ended before its final (done) line")

    def _one(self, line: bytes) -> None:
        obj = json_object(line)
        if obj is None:
            raise UpstreamProtocolError("ollama sent a stream line that is not a JSON object")
        if self._done:
            return  # the answer is complete at the done line; nothing follows it, and anything that does is ignored
        err = obj.get("error")
        if err is not None:
            raise UpstreamError(err if isinstance(err, str) else upstream_json(err), code="ollama_error")
        w = self._w
        msg = obj.get("message")
        if isinstance(msg, dict):
            text = msg.get("content")
            if text and isinstance(text, str):
                w.start()
                w.text(text)
            calls = msg.get("tool_calls")
            if calls and isinstance(calls, list):
                for c in calls:
                    fn = c.get("function") if isinstance(c, dict) else None
                    if not isinstance(fn, dict):
                        raise UpstreamProtocolError("ollama sent a tool call without a function")
                    cid = c.get("id")
                    w.tool_start(self._tools, cid if isinstance(cid, str) else "", str(fn.get("name") or ""),
                                 arguments=_args_text(fn.get("arguments")))
                    self._tools += 1
        if obj.get("done"):
            self._done = True
            w.finish(_finish(obj.get("done_reason"), w.has_tools))
            self._usage = _usage(obj)


# --- adapter -------------------------------------------------------------------------------------------------


def _error_body(status: int, data: bytes) -> bytes:
    """Ollama's `{"error": "..."}` (or any body) as an OpenAI error envelope."""
    message = None
    parsed = json_object(data)
    if parsed is not None:
        err = parsed.get("error")
        if isinstance(err, str):
            message = err
        elif isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
    if message is None:
        message = f"ollama answered HTTP {status}: {data[:200].decode('utf-8', 'replace')}"
    type_ = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = "model_not_found" if status == 404 else None
    return envelope(message, type_, code)


class OllamaAdapter:
    """Ollama's `/api/chat`, streamed as NDJSON."""

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        chat_only("ollama", endpoint)
        payload = encode_json(translate_request(target, body, stream), body)
        return json_post(target, "/api/chat", payload, stream, bearer(target), stream_type=b"application/x-ndjson")

    def stream_translator(self, target: TargetRuntime, body: dict) -> OllamaTranslator:
        return OllamaTranslator(target.model, body)

    def is_stream(self, content_type: bytes) -> bool:
        return content_type.startswith(b"application/x-ndjson")

    def translate_response(self, target: TargetRuntime, body: dict, status: int, data: bytes) -> tuple[int, bytes]:
        if status >= 400:
            return status, _error_body(status, data)
        obj = json_object(data)
        if obj is None:
            return 502, UpstreamProtocolError("ollama answered with a body that is not a JSON object").body()
        err = obj.get("error")
        if err is not None:
            return 502, UpstreamError(str(err), code="ollama_error").body()
        msg = obj.get("message")
        if not isinstance(msg, dict):
            msg = {}
        calls = []
        raw_calls = msg.get("tool_calls")
        for c in raw_calls if isinstance(raw_calls, list) else ():
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict):
                continue
            cid = c.get("id")
            calls.append({"id": cid if isinstance(cid, str) and cid else "call_" + os.urandom(12).hex(),
                          "type": "function",
                          "function": {"name": str(fn.get("name") or ""),
                                       "arguments": _args_text(fn.get("arguments"))}})
        text = msg.get("content")
        content = text if isinstance(text, str) and (text or not calls) else None
        return 200, completion_body(target.model, content, _finish(obj.get("done_reason"), bool(calls)), _usage(obj),
                                    calls)
