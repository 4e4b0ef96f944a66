"""Google Gemini (Generative Language API): OpenAI chat requests become `generateContent` /
`streamGenerateContent?alt=sse` calls; Gemini's answers become OpenAI `chat.completion` bodies and chunks.
(Over 500 lines: the JSON-schema rewrite to Gemini's OpenAPI subset is a third of it and belongs to this wire;
the shared parts live in `ir.py` and `chunks.py`.)

Wire: `POST {base_url}/v1beta/models/{model}:generateContent` (non-stream) or
`:streamGenerateContent?alt=sse` (stream), key in `x-goog-api-key`. A base_url that already ends in
`/v1beta` or `/v1` is used as the version prefix. The stream is SSE whose every `data:` line is a whole
`GenerateContentResponse`; there is no end event, the end of the HTTP body is the end of the stream.

Provider table (what happens to each OpenAI request field):

- mapped: `messages` (system/developer -> `systemInstruction`; user -> `user`; assistant text and
  `tool_calls` -> `model` with `functionCall` parts; `tool` results -> `functionResponse` parts named
  after the assistant call they answer, JSON-object content as is, anything else as `{"output": ...}`;
  consecutive turns of one role are merged), content parts `text`, `image_url` (data: URL ->
  `inline_data`, http(s)/gs:// URL -> `file_data`), `input_audio` -> `inline_data`, `file` with a data:
  URL in `file_data` -> `inline_data`; `tools` (function) -> `functionDeclarations`; `tool_choice`
  (auto -> AUTO, none -> NONE, required -> ANY, named -> ANY + allowedFunctionNames); `temperature`,
  `top_p`, `max_completion_tokens`/`max_tokens` -> maxOutputTokens, `stop` -> stopSequences, `n` ->
  candidateCount, `presence_penalty`, `frequency_penalty`, `seed`, `response_format` (json_object ->
  responseMimeType application/json; json_schema -> that plus responseSchema).
- JSON schemas (tool parameters, responseSchema) are rewritten to Gemini's OpenAPI subset: local `$ref`s
  are inlined (a recursive one becomes a bare OBJECT), `allOf` is merged, `oneOf` becomes `anyOf`,
  `type: [T, "null"]` and `anyOf [..., {"type": "null"}]` become `nullable`, `const` becomes a one-value
  `enum`, types are upper-cased; keywords Gemini rejects are dropped (`additionalProperties`, `$schema`,
  `$id`, `$defs`, `definitions`, `strict`, `examples`, `exclusiveMinimum`/`Maximum`, `multipleOf`,
  `uniqueItems`, `patternProperties`, `not`, ...), as are string formats other than `enum`/`date-time`,
  number formats other than float/double/int32/int64 and non-string enums. A function without
  parameters is sent without `parameters`.
- thought signatures: a Gemini `thoughtSignature` on a functionCall part is returned (non-stream only:
  `ChunkWriter` has no field for it) in the tool call's `extra_content.google.thought_signature`, the
  field Google's own OpenAI-compatible endpoint uses; a client that echoes it back has it restored. For
  `gemini-3*` models a replayed assistant turn whose first tool call carries none gets Google's
  documented `skip_thought_signature_validator`.
- dropped with a log note (once per field per worker, at INFO: `ir.note_dropped`): `parallel_tool_calls`,
  `logit_bias`, `logprobs: false`,
  `top_logprobs`, `user`, `metadata`, `store`, `service_tier`, `reasoning_effort`, `prediction`,
  `modalities`, `audio`, `web_search_options`, tool `strict`, image `detail`, message `name`,
  assistant `refusal`, any unknown field; Gemini "thought" parts and non-text output parts in answers.
- refused (400 invalid_request_error, code `unsupported_parameter`): `logprobs: true`, legacy `functions`/`function_call`,
  tools that are not functions, content parts other than the above (and `file_id` files, data: URLs that
  are not base64), `response_format` types other than text/json_object/json_schema. Malformed input is
  400 too (code `invalid_value`: a tool result whose `tool_call_id` matches no earlier assistant tool
  call, arguments that are not JSON, fields of the wrong type; `invalid_schema`: an unresolvable `$ref`,
  a schema over 10,000 nodes once inlined). Endpoints other than chat completions: 400
  `unsupported_endpoint` (no embeddings, no legacy completions).

Answers: finishReason STOP -> stop (tool_calls when the candidate made function calls), MAX_TOKENS ->
length, SAFETY/RECITATION/BLOCKLIST/PROHIBITED_CONTENT/SPII/IMAGE_SAFETY/LANGUAGE -> content_filter,
anything else -> stop; a prompt blocked by `promptFeedback.blockReason` -> an empty answer with
finish_reason content_filter. Usage: prompt_tokens = promptTokenCount (+ toolUsePromptTokenCount),
completion_tokens = candidatesTokenCount + thoughtsTokenCount, cached_tokens = cachedContentTokenCount,
reasoning_tokens = thoughtsTokenCount (the last usageMetadata of a stream wins). HTTP errors keep their
status with Gemini's `{"error": {code, message, status}}` turned into the OpenAI envelope (`code` is
Gemini's `status`, e.g. RESOURCE_EXHAUSTED); an `error` object inside a stream becomes the in-stream
error event (code: Gemini's `status`); a stream that ends inside an event, before any finishReason or
with a choice left unfinished is an upstream protocol error (`upstream_protocol_error`).
"""

from __future__ import annotations

import mimetypes
import os
from urllib.parse import quote, urlsplit

import orjson

from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, envelope
from fastgw.proto.sse import SSEDecoder, SSEEvent
from fastgw.providers.base import TargetRuntime, UpstreamRequest, chat_only, encode_json, json_post, split_base_url
from fastgw.providers.chunks import StreamTranslator, completion_body, map_finish, upstream_json, usage_dict
from fastgw.providers.ir import ChatRequest, Message, Part, ToolCall, fold_turns, note_dropped, parse_chat

__all__ = ["GeminiAdapter", "GeminiTranslator", "translate_request", "translate_schema", "usage_from"]


#: Google's documented placeholder for a replayed Gemini 3 function call whose signature was lost.
SKIP_SIGNATURE = "skip_thought_signature_validator"

_FINISH = {
    "STOP": "stop", "MAX_TOKENS": "length",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
}

#: OpenAI fields read by this module, or by the gateway itself (model, stream, stream_options).
_MAPPED = frozenset({
    "model", "messages", "stream", "stream_options", "tools", "tool_choice", "temperature", "top_p",
    "max_tokens", "max_completion_tokens", "stop", "n", "presence_penalty", "frequency_penalty", "seed",
    "response_format",
})
_REFUSED = ("functions", "function_call")

#: Schema keywords Gemini's OpenAPI subset accepts (v1beta `Schema`); every other keyword is dropped.
_SCHEMA_KEEP = frozenset({
    "description", "title", "nullable", "maxItems", "minItems", "minProperties", "maxProperties", "minLength",
    "maxLength", "pattern", "example", "propertyOrdering", "default", "minimum", "maximum",
})
_STRING_FORMATS = frozenset({"enum", "date-time"})
_NUMBER_FORMATS = frozenset({"float", "double", "int32", "int64"})
_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN", "array": "ARRAY",
          "object": "OBJECT"}
#: Nesting depth for schemas and inlined $refs (Gemini itself refuses deeper schemas; this bounds our work).
_MAX_SCHEMA_DEPTH = 64
#: Schema nodes one translation may produce: inlining `$ref`s that fan out grows exponentially, and a
#: client-sent schema must not buy unbounded CPU in a worker (Gemini refuses schemas far smaller than this).
_MAX_SCHEMA_NODES = 10_000

_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3", "flac": "audio/flac", "aac": "audio/aac",
               "ogg": "audio/ogg", "opus": "audio/ogg", "pcm16": "audio/l16", "m4a": "audio/mp4"}

_ERR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
             422: "invalid_request_error", 429: "rate_limit_error"}

PROVIDER = "gemini"


def _note(what: str) -> None:
    """Log a dropped field once per worker (bounded: `ir.note_dropped`)."""
    note_dropped(PROVIDER, what)


def _bad(message: str, param: str | None, code: str = "unsupported_parameter") -> GatewayError:
    return GatewayError(message, status=400, type="invalid_request_error", code=code, param=param, no_retry=True)


def _call_id() -> str:
    return "call_" + os.urandom(12).hex()


# ---- JSON schema -> Gemini Schema ------------------------------------------------------------


class _SchemaCtx:
    __slots__ = ("root", "expanding", "param", "nodes")

    def __init__(self, root: dict, param: str) -> None:
        self.root = root
        self.expanding: list[str] = []
        self.param = param
        self.nodes = 0


def _resolve(ref: str, ctx: _SchemaCtx) -> dict | None:
    if not ref.startswith("#/"):
        return None
    node: object = ctx.root
    for key in ref[2:].split("/"):
        key = key.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def _merge_all_of(s: dict) -> dict:
    """allOf members folded into the schema itself (properties and required united)."""
    out = {k: v for k, v in s.items() if k != "allOf"}
    for m in s["allOf"]:
        if not isinstance(m, dict):
            continue
        for k, v in m.items():
            if k == "properties" and isinstance(v, dict):
                out["properties"] = {**out.get("properties", {}), **v}
            elif k == "required" and isinstance(v, list):
                out["required"] = list(dict.fromkeys([*out.get("required", []), *v]))
            else:
                out.setdefault(k, v)
    return out


def _schema(s: object, ctx: _SchemaCtx, depth: int) -> dict:
    """One schema node in Gemini's subset; {} for a node that is no object or is nested too deep."""
    if not isinstance(s, dict) or depth > _MAX_SCHEMA_DEPTH:
        return {}
    ctx.nodes += 1
    if ctx.nodes > _MAX_SCHEMA_NODES:
        raise _bad(f"JSON schema too large once its $refs are inlined (over {_MAX_SCHEMA_NODES} nodes)", ctx.param,
                   "invalid_schema")
    ref = s.get("$ref")
    if isinstance(ref, str):
        return _inline_ref(s, ref, ctx, depth)
    if isinstance(s.get("allOf"), list):
        return _schema(_merge_all_of(s), ctx, depth + 1)
    t, kinds, nullable = _split_type(s.get("type"))
    if kinds:
        union = [_schema({**s, "type": k}, ctx, depth + 1) for k in kinds]
        return {"anyOf": union, **({"nullable": True} if nullable else {})}
    out: dict = {}
    if isinstance(t, str) and t.lower() in _TYPES:
        out["type"] = _TYPES[t.lower()]
    alts = s.get("anyOf", s.get("oneOf"))
    if isinstance(alts, list):
        inner, nullable = _any_of(s, alts, out, nullable, ctx, depth)
        if inner is not None:
            return inner
    _keywords(s, out)
    _children(s, out, ctx, depth)
    if nullable:
        out["nullable"] = True
    return out


def _inline_ref(s: dict, ref: str, ctx: _SchemaCtx, depth: int) -> dict:
    if ref in ctx.expanding:
        return {"type": "OBJECT"}  # recursive: Gemini's subset has no references
    target = _resolve(ref, ctx)
    if target is None:
        raise _bad(f"cannot resolve JSON schema reference {ref!r}", ctx.param, "invalid_schema")
    ctx.expanding.append(ref)
    # Siblings of $ref (description, ...) override the target's own.
    inlined = _schema({**target, **{k: v for k, v in s.items() if k != "$ref"}}, ctx, depth + 1)
    ctx.expanding.pop()
    return inlined


def _split_type(t: object) -> tuple[object, list | None, bool]:
    """`type` as (one type or None, the non-null types when there are several, whether null is allowed)."""
    nullable = False
    if isinstance(t, list):
        kinds = [x for x in t if x != "null"]
        nullable = len(kinds) < len(t)
        if len(kinds) > 1:
            return None, kinds, nullable
        t = kinds[0] if kinds else None
    if t == "null":
        return None, None, True
    return t, None, nullable


def _any_of(s: dict, alts: list, out: dict, nullable: bool, ctx: _SchemaCtx, depth: int) -> tuple[dict | None, bool]:
    """anyOf/oneOf into out; a null member makes the node nullable. Returns the node to use instead when only
    one member is left and the node has no type of its own, and the updated nullable."""
    kept = []
    for a in alts:
        if isinstance(a, dict) and a.get("type") == "null" and len(a) == 1:
            nullable = True
        else:
            kept.append(_schema(a, ctx, depth + 1))
    if len(kept) == 1 and "type" not in out:
        inner = kept[0]
        for k in ("description", "title", "default"):
            if k in s:
                inner[k] = s[k]
        if nullable:
            inner["nullable"] = True
        return inner, nullable
    if kept:
        out["anyOf"] = kept
    return None, nullable


def _keywords(s: dict, out: dict) -> None:
    """The node's own keywords that Gemini accepts: kept ones, string enums (`const` too) and known formats."""
    for k, v in s.items():
        if k in _SCHEMA_KEEP:
            out[k] = v
    if "const" in s and isinstance(s["const"], str):
        out["enum"] = [s["const"]]
        out.setdefault("type", "STRING")
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        if all(isinstance(e, str) for e in enum):
            out["enum"] = enum
            out.setdefault("type", "STRING")
    fmt = s.get("format")
    if isinstance(fmt, str):
        kind = out.get("type")
        if (kind == "STRING" and fmt in _STRING_FORMATS) or (kind in ("NUMBER", "INTEGER") and fmt in _NUMBER_FORMATS):
            out["format"] = fmt


def _children(s: dict, out: dict, ctx: _SchemaCtx, depth: int) -> None:
    """`properties` (with the `required` names they hold) and `items` (a tuple form keeps its first schema)."""
    props = s.get("properties")
    if isinstance(props, dict):
        out["properties"] = {name: _schema(p, ctx, depth + 1) for name, p in props.items()}
        out.setdefault("type", "OBJECT")
        req = s.get("required")
        if isinstance(req, list):
            kept_req = [r for r in req if r in props]
            if kept_req:
                out["required"] = kept_req
    items = s.get("items")
    if isinstance(items, list):
        items = items[0] if items else None
    if isinstance(items, dict):
        out["items"] = _schema(items, ctx, depth + 1)
        out.setdefault("type", "ARRAY")


def translate_schema(schema: dict, param: str = "tools") -> dict:
    """A JSON schema rewritten to the OpenAPI subset Gemini's `Schema` accepts (see the module docstring)."""
    return _schema(schema, _SchemaCtx(schema, param), 0)


# ---- request ---------------------------------------------------------------------------------


def _data_url(url: str, param: str) -> dict:
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise _bad("only base64 data: URLs are supported", param)
    mime = head[: -len(";base64")].split(";")[0] or "application/octet-stream"
    return {"inline_data": {"mime_type": mime, "data": data}}


def _url_part(url: str, param: str) -> dict:
    if url.startswith("data:"):
        return _data_url(url, param)
    if url.startswith(("http://", "https://", "gs://")):
        fd: dict = {"file_uri": url}
        mime = mimetypes.guess_type(urlsplit(url).path)[0]
        if mime:
            fd["mime_type"] = mime
        return {"file_data": fd}
    raise _bad("image_url must be a data: URL or an http(s):// or gs:// URL", param)


def _parts(m: Message, user: bool) -> list[dict]:
    """Content parts of a message: text always, media only in user turns."""
    content = m.content
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    out: list[dict] = []
    for j, part in enumerate(content):
        pp = f"{m.param}.content[{j}]"
        kind = part.type
        p = part.raw
        if kind == "text":
            if part.text:
                out.append({"text": part.text})
        elif kind == "refusal" and not user:
            _note("assistant refusal content")
        elif user and kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str):
                raise _bad("image_url.url is required", pp, "invalid_value")
            if isinstance(iu, dict) and "detail" in iu:
                _note("image_url.detail")
            out.append(_url_part(url, pp))
        elif user and kind == "input_audio":
            a = p.get("input_audio") or {}
            fmt = str(a.get("format", "wav"))
            out.append({"inline_data": {"mime_type": _AUDIO_MIME.get(fmt, "audio/" + fmt), "data": a.get("data", "")}})
        elif user and kind == "file":
            f = p.get("file") or {}
            data = f.get("file_data")
            if not isinstance(data, str):
                raise _bad("only files given inline (file.file_data) are supported, not file_id", pp)
            out.append(_data_url(data, pp) if data.startswith("data:")
                       else {"inline_data": {"mime_type": mimetypes.guess_type(str(f.get("filename", "")))[0]
                                             or "application/pdf", "data": data}})
        else:
            raise _bad(f"content part type {kind!r} is not supported for Gemini in this message", pp)
    return out


def _tool_response(content: str | list[Part] | None) -> dict:
    """A tool result as Gemini's `response` object: a JSON object as is, anything else under "output"."""
    if isinstance(content, list):
        text = "".join(p.text if isinstance(p.text, str) else "" for p in content if p.type == "text")
    else:
        text = content or ""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"output": text}
    return value if isinstance(value, dict) else {"output": value}


def _function_call(tc: ToolCall, param: str, first: bool, sentinel: bool) -> dict:
    if not tc.has_function or not isinstance(tc.name, str):
        raise _bad("a tool call needs function.name", param, "invalid_value")
    raw_args = tc.arguments or "{}"
    try:
        args = orjson.loads(raw_args) if isinstance(raw_args, str) else raw_args
    except orjson.JSONDecodeError:
        raise _bad("tool call arguments must be JSON", f"{param}.function.arguments", "invalid_value") from None
    if not isinstance(args, dict):
        args = {"value": args}
    part: dict = {"functionCall": {"name": tc.name, "args": args}}
    extra = tc.raw.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    if isinstance(sig, str) and sig:
        part["thoughtSignature"] = sig
    elif first and sentinel:
        part["thoughtSignature"] = SKIP_SIGNATURE
    return part


def _messages(req: ChatRequest, model: str) -> tuple[list[dict], list[dict]]:
    names: dict[str, str] = {}  # tool_call_id -> function name, for the functionResponse parts that follow
    sentinel = model.removeprefix("models/").startswith("gemini-3")

    def assistant(m: Message) -> list[dict]:
        parts = _parts(m, False)
        if m.raw.get("refusal"):
            _note("assistant refusal")
        for j, tc in enumerate(m.tool_calls or ()):
            parts.append(_function_call(tc, f"{m.param}.tool_calls[{j}]", j == 0, sentinel))
            if isinstance(tc.id, str) and isinstance(tc.name, str):
                names[tc.id] = tc.name
        return parts

    def tool(m: Message) -> list[dict]:
        cid = m.tool_call_id
        name = names.get(cid) if isinstance(cid, str) else None
        if name is None:
            raise _bad("tool message's tool_call_id matches no earlier assistant tool call",
                       m.param + ".tool_call_id", "invalid_value")
        return [{"functionResponse": {"name": name, "response": _tool_response(m.content)}}]

    if any("name" in m.raw for m in req.messages):
        _note("message name")
    return fold_turns(req, system=lambda m: _parts(m, False), user=lambda m: _parts(m, True), assistant=assistant,
                      tool=tool, assistant_role="model", key="parts")


def _tools(tools: object) -> list[dict]:
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools", "invalid_value")
    decls = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise _bad("only function tools are supported for Gemini", f"tools[{i}]")
        fn = t["function"]
        if not isinstance(fn.get("name"), str):
            raise _bad("a function tool needs a name", f"tools[{i}].function.name", "invalid_value")
        d: dict = {"name": fn["name"]}
        if fn.get("description"):
            d["description"] = fn["description"]
        if "strict" in fn:
            _note("tool function strict")
        params = fn.get("parameters")
        if isinstance(params, dict):
            s = translate_schema(params, f"tools[{i}].function.parameters")
            if s.get("properties") or s.get("type", "OBJECT") != "OBJECT":
                d["parameters"] = s
        decls.append(d)
    return decls


def _tool_choice(tc: object) -> dict:
    if tc in ("auto", None):
        return {"mode": "AUTO"}
    if tc == "none":
        return {"mode": "NONE"}
    if tc == "required":
        return {"mode": "ANY"}
    if isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("function"), dict):
        return {"mode": "ANY", "allowedFunctionNames": [tc["function"].get("name")]}
    raise _bad("tool_choice must be auto, none, required or a function", "tool_choice", "invalid_value")


#: Our sampling fields -> Gemini's generationConfig names.
_SAMPLING = {"temperature": "temperature", "top_p": "topP", "presence_penalty": "presencePenalty",
             "frequency_penalty": "frequencyPenalty", "seed": "seed", "max_tokens": "maxOutputTokens",
             "stop": "stopSequences"}


def _generation_config(req: ChatRequest) -> dict:
    body = req.body
    sp = req.sampling
    gc = sp.named(_SAMPLING)
    n = body.get("n")
    if n is not None and n != 1:
        gc["candidateCount"] = n
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_object":
            gc["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            gc["responseMimeType"] = "application/json"
            js = rf.get("json_schema") or {}
            if isinstance(js.get("schema"), dict):
                gc["responseSchema"] = translate_schema(js["schema"], "response_format.json_schema.schema")
        elif kind not in (None, "text"):
            raise _bad(f"response_format type {kind!r} is not supported", "response_format.type")
    return gc


def translate_request(target: TargetRuntime, body: dict, stream: bool) -> dict:
    """The Gemini `GenerateContentRequest` for an OpenAI chat completions body (see the module docstring).
    `stream` does not change the body (streaming is in the path); the signature is every provider's."""
    for k in _REFUSED:
        if k in body:
            raise _bad(f"{k} (legacy function calling) is not supported for Gemini: use tools", k)
    if body.get("logprobs"):
        # A client that asks for logprobs reads them: an answer without them is not the answer it asked for.
        raise _bad("logprobs are not supported for Gemini targets", "logprobs")
    for k in body:
        if k not in _MAPPED:
            _note(k)
    req = parse_chat(body, PROVIDER)
    system, contents = _messages(req, target.model)
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    if body.get("tools"):
        out["tools"] = [{"functionDeclarations": _tools(body["tools"])}]
        if "tool_choice" in body:
            out["toolConfig"] = {"functionCallingConfig": _tool_choice(body["tool_choice"])}
    elif body.get("tool_choice") not in (None, "none", "auto"):
        raise _bad("tool_choice needs tools", "tool_choice", "invalid_value")
    gc = _generation_config(req)
    if gc:
        out["generationConfig"] = gc
    return out


# ---- answers ---------------------------------------------------------------------------------


def usage_from(um: dict) -> dict:
    """OpenAI usage from Gemini `usageMetadata` (completion tokens include the thinking tokens, as OpenAI's do)."""
    prompt = int(um.get("promptTokenCount") or 0) + int(um.get("toolUsePromptTokenCount") or 0)
    thoughts = um.get("thoughtsTokenCount")
    completion = int(um.get("candidatesTokenCount") or 0) + int(thoughts or 0)
    cached = um.get("cachedContentTokenCount")
    return usage_dict(prompt, completion, None if cached is None else int(cached),
                      None if thoughts is None else int(thoughts))


def _finish(reason: str, has_calls: bool) -> str:
    f = map_finish(reason, _FINISH) or "stop"
    return "tool_calls" if f == "stop" and has_calls else f


def _error_fields(err: object, status: int) -> tuple[str, str | None, int]:
    """(message, Gemini status string, HTTP-ish code) of a Gemini error object."""
    if not isinstance(err, dict):
        return str(err), None, status
    code = err.get("code")
    gstatus = err.get("status")
    return (str(err.get("message") or "Gemini error"), gstatus if isinstance(gstatus, str) else None,
            code if isinstance(code, int) and 400 <= code <= 599 else status)


def _error_envelope(status: int, data: bytes) -> bytes:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # some Google front ends wrap the error in a one-element array
    if isinstance(obj, dict) and "error" in obj:
        message, code, _ = _error_fields(obj["error"], status)
    else:
        message, code = f"Gemini answered HTTP {status}: {data[:200].decode('utf-8', 'replace')}", None
    type_ = _ERR_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return envelope(message, type_, code)


def _answer_parts(c: dict) -> list[dict]:
    content = c.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


class GeminiTranslator(StreamTranslator):
    """Gemini's SSE body -> OpenAI `chat.completion.chunk` objects, incrementally (bounded by the SSE decoder)."""

    __slots__ = ("_calls", "_open", "_ended")

    provider = PROVIDER

    def __init__(self, model: str, body: dict) -> None:
        super().__init__(model, body, SSEDecoder())
        #: candidate index -> function calls seen so far
        self._calls: dict[int, int] = {}
        #: candidates started and not yet finished
        self._open: set[int] = set()
        #: a finishReason (or a prompt block) was seen
        self._ended = False

    def _close(self) -> None:
        dec = self._dec
        dec.close()
        if dec.has_partial:
            raise UpstreamProtocolError("the Gemini stream ended inside an event")
        if self._open or not self._ended:
            raise UpstreamProtocolError("the Gemini stream ended before a finishReason")

    def _one(self, ev: SSEEvent) -> None:
        if ev.data is None or ev.data == "[DONE]":
            return
        try:
            self._event(ev.data)
        except GatewayError:
            raise
        except (TypeError, AttributeError, ValueError, KeyError):
            # Valid JSON of the wrong shape (a part that is not an object, ...): the stream is broken.
            raise UpstreamProtocolError("Gemini sent a stream event of an unexpected shape") from None

    def _event(self, data: str) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("Gemini sent a stream event that is not JSON") from None
        if isinstance(obj, list) and len(obj) == 1:
            obj = obj[0]
        if not isinstance(obj, dict):
            raise UpstreamProtocolError("Gemini sent a stream event that is not a JSON object")
        if "error" in obj:
            message, code, status = _error_fields(obj["error"], 502)
            raise UpstreamError(message, code=code or "upstream_error", status=status)
        um = obj.get("usageMetadata")
        if isinstance(um, dict):
            self._usage = usage_from(um)
        cands = obj.get("candidates")
        if cands:
            for c in cands:
                self._candidate(c)
            return
        pf = obj.get("promptFeedback")
        if isinstance(pf, dict) and pf.get("blockReason") and not self._ended:
            self._w.start(0)
            self._w.finish("content_filter", 0)
            self._ended = True

    def _candidate(self, c: dict) -> None:
        w = self._w
        idx = c.get("index", 0)
        if idx in w.finished:
            return  # nothing may follow a choice's finish chunk
        if idx not in self._open:
            self._open.add(idx)
            w.start(idx)
        for p in _answer_parts(c):
            if "text" in p:
                if not p.get("thought"):
                    w.text(p["text"], idx)
            elif "functionCall" in p:
                fc = p["functionCall"]
                n = self._calls.get(idx, 0)
                self._calls[idx] = n + 1
                args = upstream_json(fc.get("args") or {})
                w.tool_start(n, fc.get("id") or "", fc.get("name") or "", idx, args)
            else:
                _note("answer parts other than text and functionCall")
        reason = c.get("finishReason")
        if reason and reason != "FINISH_REASON_UNSPECIFIED":
            w.finish(_finish(reason, idx in self._calls), idx)
            self._open.discard(idx)
            self._ended = True


def _choice(c: dict) -> tuple[int, str | None, list[dict], str]:
    texts: list[str] = []
    calls: list[dict] = []
    for p in _answer_parts(c):
        if "text" in p:
            if not p.get("thought"):
                texts.append(p["text"])
        elif "functionCall" in p:
            fc = p["functionCall"]
            args = upstream_json(fc.get("args") or {})
            call: dict = {"id": fc.get("id") or _call_id(), "type": "function",
                          "function": {"name": fc.get("name") or "", "arguments": args}}
            if p.get("thoughtSignature"):
                call["extra_content"] = {"google": {"thought_signature": p["thoughtSignature"]}}
            calls.append(call)
    finish = _finish(c.get("finishReason") or "STOP", bool(calls))
    text = "".join(texts) if texts else (None if calls or finish == "content_filter" else "")
    return int(c.get("index", 0)), text, calls, finish


def translate_completion(model: str, status: int, data: bytes) -> tuple[int, bytes]:
    """A whole `generateContent` answer (or error) as an OpenAI chat.completion (or error envelope)."""
    try:
        return _completion(model, status, data)
    except (TypeError, AttributeError, ValueError, KeyError):
        return 502, UpstreamProtocolError("Gemini answered with a body of an unexpected shape").body()


def _completion(model: str, status: int, data: bytes) -> tuple[int, bytes]:
    if status >= 400:
        return status, _error_envelope(status, data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return 502, UpstreamProtocolError("Gemini answered with a body that is not JSON").body()
    if isinstance(obj, dict) and "error" in obj:
        st = _error_fields(obj["error"], 502)[2]
        return st, _error_envelope(st, data)
    if not isinstance(obj, dict):
        return 502, UpstreamProtocolError("Gemini answered with a body that is not a JSON object").body()
    um = obj.get("usageMetadata")
    usage = usage_from(um) if isinstance(um, dict) else None
    cands = obj.get("candidates") or []
    if not cands:
        pf = obj.get("promptFeedback")
        if isinstance(pf, dict) and pf.get("blockReason"):
            return 200, completion_body(model, None, "content_filter", usage)
        return 502, UpstreamProtocolError("Gemini answered without candidates").body()
    choices = sorted((_choice(c) for c in cands if isinstance(c, dict)), key=lambda ch: ch[0])
    _, text, calls, finish = choices[0]
    body = completion_body(model, text, finish, usage, calls or None)
    if len(choices) == 1:
        return 200, body
    whole = orjson.loads(body)
    first = whole["choices"][0]
    for idx, text, calls, finish in choices[1:]:
        message: dict = {"role": "assistant", "content": text, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        whole["choices"].append({**first, "index": idx, "message": message, "finish_reason": finish})
    return 200, orjson.dumps(whole)


class GeminiAdapter:
    """The Gemini adapter (pure: builds the request bytes, translates answers)."""

    def path(self, target: TargetRuntime, prefix: str, stream: bool) -> str:
        """The request path after the base URL's own path `prefix`."""
        model = quote(target.model.removeprefix("models/"), safe="-._~@")
        version = "" if prefix.endswith(("/v1beta", "/v1", "/v1alpha")) else "/v1beta"
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{version}/models/{model}:{method}"

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        chat_only("gemini", endpoint)
        assert target.base_url is not None
        try:
            payload = encode_json(translate_request(target, body, stream), body)
        except (TypeError, AttributeError, ValueError) as e:
            # A field of an unexpected JSON type somewhere deep in the body: the client's error, not ours.
            raise _bad(f"the request body could not be translated for Gemini: {e}", None, "invalid_value") from None
        auth = [(b"x-goog-api-key", target.api_key.encode())] if target.api_key else []
        path = self.path(target, split_base_url(target.base_url)[3], stream)
        return json_post(target, path, payload, stream, auth)

    def stream_translator(self, target: TargetRuntime, body: dict) -> GeminiTranslator:
        return GeminiTranslator(target.model, body)

    def is_stream(self, content_type: bytes) -> bool:
        return content_type.startswith(b"text/event-stream")

    def translate_response(self, target: TargetRuntime, body: dict, status: int, data: bytes) -> tuple[int, bytes]:
        return translate_completion(target.model, status, data)
