"""Amazon Bedrock Converse API: an OpenAI chat request becomes `POST {endpoint}/model/{modelId}/converse` (or
`/converse-stream`), signed with AWS SigV4; Bedrock's answer (JSON, or the AWS binary event stream) comes back as
an OpenAI `chat.completion` body or `chat.completion.chunk` events. (Over 500 lines: the Converse mapping, SigV4
signing with botocore's credential chain and the event-stream translator are one provider's wire; the shared parts
live in `ir.py` and `chunks.py`.)

Target: `model` is the Bedrock model id, inference profile id or ARN (URL-encoded into the path). The endpoint is
`https://bedrock-runtime.{region}.amazonaws.com`; `base_url` overrides it (VPC endpoints, proxies, tests). The
region (also the SigV4 signing region) is the target's `region`, else the one in a `bedrock-runtime.<region>.`
base_url host, else `AWS_REGION`, else `AWS_DEFAULT_REGION`; with none a request fails with a 500 naming it.
Credentials come from botocore's standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN,
AWS_PROFILE and the shared files, SSO, container and instance roles), resolved once per worker on first use and
refreshed when botocore says they expire; requests are signed by botocore's `SigV4Auth` (service `bedrock`).
botocore is the optional extra `pip install fastgw[bedrock]`, imported on first use. A target with
`secret_key_ref` sends that value as an Amazon Bedrock API key (`Authorization: Bearer`) instead, unsigned,
and needs no botocore.

Request (OpenAI chat -> Converse):

- mapped: `messages` (system/developer -> top-level `system` text blocks; user text and `image_url` parts with a
  base64 data: URL (png, jpeg, gif, webp) -> `image` blocks (`detail` dropped); assistant text and `tool_calls`
  -> `toolUse` blocks; `tool` messages -> `toolResult` blocks in a user message; consecutive same-role
  messages merged, empty text left out), `max_completion_tokens`/`max_tokens` -> `inferenceConfig.maxTokens`,
  `temperature`, `top_p` -> `topP`, `stop` -> `stopSequences`, `tools` (function tools -> `toolSpec` with
  `parameters` as `inputSchema.json`; `strict` dropped), `tool_choice` (auto -> auto, required -> any, named ->
  tool; none -> tools left out, or kept with auto when the conversation already holds tool calls, which
  Bedrock requires; a conversation with tool calls but no `tools` gets a schema-free declaration of the tools
  it used, for the same reason), `response_format` text (a no-op).
- dropped (logged once per worker at INFO on `fastgw.providers.bedrock`, by `ir.note_dropped`): `frequency_penalty`,
  `presence_penalty`, `logit_bias`, `seed`, `user`, `metadata`, `store`, `service_tier`, `parallel_tool_calls`,
  `reasoning_effort`, `prediction`, `verbosity`, `prompt_cache_key`, `safety_identifier`,
  `web_search_options`, `stream_options` (used by the gateway only), a message's `name`, and any other field.
- refused with 400 `unsupported_parameter`: `n` > 1, `logprobs: true`, `top_logprobs`, `response_format`
  json_object/json_schema, `audio`/`modalities` with audio, legacy `functions`/`function_call`, non-function
  tools, `image_url` with an http(s) URL (Converse takes image bytes or S3 only), `input_audio` and `file`
  parts, roles other than system/developer/user/assistant/tool. A malformed message, data: URL or tool-call
  arguments that are not JSON is a 400 `invalid_request_error`.

Answer (Converse -> OpenAI): text blocks -> `content`, `toolUse` -> `tool_calls` (arguments as JSON text);
reasoning, citation and other blocks are left out. `stopReason`: end_turn/stop_sequence -> stop,
max_tokens/model_context_window_exceeded -> length, tool_use -> tool_calls, guardrail_intervened/
content_filtered -> content_filter. Usage: prompt = inputTokens + cacheReadInputTokens + cacheWriteInputTokens
(Bedrock counts cache reads and writes apart from inputTokens), `cached_tokens` = cacheReadInputTokens.
Errors (`{"message": ...}`) keep their HTTP status and become the OpenAI envelope; `code` is Bedrock's
exception name (from the body's `__type` when present, else the one Bedrock documents for that status, since
the `x-amzn-errortype` header does not reach the adapter). In a stream, an `exception` message
(`throttlingException`, `validationException`, `modelStreamErrorException`, ...) becomes the in-stream error
envelope with that code, then `[DONE]`; a stream that ends before `messageStop`, or inside a frame, is an
upstream protocol error. Only `chat/completions` is served (no embeddings or legacy completions).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any
from urllib.parse import quote

import orjson

from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, envelope
from fastgw.proto.errors import ProtocolError
from fastgw.proto.eventstream import CONTENT_TYPE, EventStreamDecoder, Message
from fastgw.providers.base import (USER_AGENT, TargetRuntime, UpstreamRequest, chat_only, encode_json, host_header,
                                   json_object, split_base_url)
from fastgw.providers.chunks import StreamTranslator, completion_body, map_finish, upstream_json, usage_dict
from fastgw.providers.ir import ChatRequest, Part, fold_turns, invalid, note_dropped, parse_chat, unsupported
from fastgw.providers.ir import Message as ChatMessage

__all__ = ["BedrockAdapter", "BedrockStreamTranslator", "translate_request", "translate_converse", "resolve_region",
           "endpoint_url", "SERVICE"]

#: The SigV4 service name of bedrock-runtime.
SERVICE = "bedrock"
#: After botocore found no credentials, look again only this often: the chain may probe the instance metadata
#: service (about a second when it is absent), which must not block the worker's loop on every request.
_NO_CREDENTIALS_RETRY_S = 30.0

#: Converse stopReason -> OpenAI finish_reason (unknown ones become "stop": the message did end).
_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

#: HTTP status -> (OpenAI error type, the Bedrock exception the API reference documents for it).
_HTTP_ERRORS = {
    400: ("invalid_request_error", "ValidationException"),
    401: ("authentication_error", "UnrecognizedClientException"),
    403: ("permission_error", "AccessDeniedException"),
    404: ("not_found_error", "ResourceNotFoundException"),
    408: ("timeout_error", "ModelTimeoutException"),
    413: ("invalid_request_error", "RequestEntityTooLarge"),
    424: ("server_error", "ModelErrorException"),
    429: ("rate_limit_error", "ThrottlingException"),
    500: ("server_error", "InternalServerException"),
    503: ("server_error", "ServiceUnavailableException"),
}

_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}

#: OpenAI fields consumed by the translation below (or by the gateway itself).
_HANDLED = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stop", "tools", "tool_choice", "n", "logprobs", "top_logprobs", "response_format", "modalities", "audio",
    "functions", "function_call",
})

_REGION_IN_HOST = re.compile(r"(?:^|\.)bedrock-runtime(?:-fips)?\.([a-z]{2}(?:-[a-z]+)+-\d+)\.")

PROVIDER = "bedrock"


def _unsupported(message: str, param: str) -> GatewayError:
    return unsupported(PROVIDER, message, param)


def _config_error(message: str, code: str) -> GatewayError:
    # The gateway's own set-up, not the request, is at fault: retrying cannot help.
    return GatewayError(message, status=500, type="server_error", code=code, no_retry=True)


# ---- request translation --------------------------------------------------------------------


def _texts(content: str | list[Part] | None, param: str) -> list[str]:
    """The texts of a system/developer/tool message (a string or text parts)."""
    if isinstance(content, str):
        return [content]
    if content is None:
        return []
    out = []
    for k, part in enumerate(content):
        if part.type != "text" or not isinstance(part.text, str):
            raise invalid("only text parts are allowed here", f"{param}[{k}]")
        out.append(part.text)
    return out


def _image(part: dict, param: str) -> dict:
    img = part.get("image_url")
    url = img.get("url") if isinstance(img, dict) else img
    if not isinstance(url, str):
        raise invalid("image_url.url must be a string", f"{param}.image_url.url")
    if url.startswith(("http://", "https://")):
        raise _unsupported("image URLs are not supported: Converse takes image bytes; send a base64 data: URL",
                           f"{param}.image_url.url")
    # partition, not a regex: the data may be megabytes long.
    head, comma, data = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64") or not comma:
        raise invalid("image_url.url must be a base64 data: URL (data:image/png;base64,...)", f"{param}.image_url.url")
    mime = head[5:].split(";", 1)[0].strip().lower()
    fmt = _IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise _unsupported(f"image type {mime!r} is not supported (png, jpeg, gif, webp)", f"{param}.image_url.url")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _system(m: ChatMessage) -> list[dict]:
    return [{"text": t} for t in _texts(m.content, f"{m.param}.content") if t]


def _user(m: ChatMessage) -> list[dict]:
    content = m.content
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict] = []
    for k, part in enumerate(content or ()):
        p = f"{m.param}.content[{k}]"
        t = part.type
        if t == "text":
            if not isinstance(part.text, str):
                raise invalid("text must be a string", f"{p}.text")
            if part.text:
                blocks.append({"text": part.text})
        elif t == "image_url":
            blocks.append(_image(part.raw, p))
        elif t in ("input_audio", "file"):
            raise _unsupported(f"{t} content parts are not supported", p)
        else:
            raise invalid(f"unknown content part type {t!r}", p)
    return blocks


def _assistant(m: ChatMessage) -> list[dict]:
    param = m.param
    blocks: list[dict] = []
    content = m.content
    if isinstance(content, str):
        if content:
            blocks.append({"text": content})
    else:
        for k, part in enumerate(content or ()):
            if part.type not in ("text", "refusal"):
                raise invalid("assistant content parts must be text or refusal", f"{param}.content[{k}]")
            text = part.text if part.type == "text" else part.raw.get("refusal")
            if isinstance(text, str) and text:
                blocks.append({"text": text})
    for j, call in enumerate(m.tool_calls or ()):
        p = f"{param}.tool_calls[{j}]"
        if not call.has_function or not isinstance(call.id, str) or not isinstance(call.name, str):
            raise invalid("a tool call needs an id and a function name", p)
        args = call.arguments
        try:
            value = orjson.loads(args) if isinstance(args, str) and args.strip() else {}
        except orjson.JSONDecodeError:
            raise invalid("tool call arguments must be JSON", f"{p}.function.arguments") from None
        blocks.append({"toolUse": {"toolUseId": call.id, "name": call.name, "input": value}})
    if m.raw.get("function_call") is not None:
        raise _unsupported("legacy function_call messages are not supported; use tool_calls", f"{param}.function_call")
    return blocks


def _tool_result(m: ChatMessage) -> list[dict]:
    call_id = m.tool_call_id
    if not isinstance(call_id, str) or not call_id:
        raise invalid("a tool message needs tool_call_id", f"{m.param}.tool_call_id")
    texts = _texts(m.content, f"{m.param}.content")
    return [{"toolResult": {"toolUseId": call_id, "content": [{"text": t} for t in texts if t]}}]


def _messages(req: ChatRequest) -> tuple[list[dict], list[dict]]:
    """(system blocks, Converse messages): empty messages are left out (Converse refuses blank text blocks),
    consecutive same-role turns merged (Converse wants user and assistant turns to alternate)."""
    if any(m.raw.get("name") is not None for m in req.messages):
        note_dropped(PROVIDER, "messages[].name")
    return fold_turns(req, system=_system, user=_user, assistant=_assistant, tool=_tool_result)


def _tools(tools: object) -> list[dict]:
    if not isinstance(tools, list):
        raise invalid("tools must be a list", "tools")
    out = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise _unsupported("only function tools are supported", f"tools[{j}]")
        fn = tool["function"]
        if not isinstance(fn.get("name"), str):
            raise invalid("a function tool needs a name", f"tools[{j}].function.name")
        spec: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str) and fn["description"]:
            spec["description"] = fn["description"]
        params = fn.get("parameters")
        spec["inputSchema"] = {"json": params if isinstance(params, dict) else {"type": "object", "properties": {}}}
        if fn.get("strict") is not None:
            note_dropped(PROVIDER, "tools[].function.strict")
        out.append({"toolSpec": spec})
    return out


def _tool_choice(tc: object) -> dict | str | None:
    """The Converse toolChoice, "none" for OpenAI's none, or None (Bedrock's default, auto)."""
    if tc is None or tc == "auto":
        return {"auto": {}} if tc == "auto" else None
    if tc == "required":
        return {"any": {}}
    if tc == "none":
        return "none"
    if isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("function"), dict) \
            and isinstance(tc["function"].get("name"), str):
        return {"tool": {"name": tc["function"]["name"]}}
    raise _unsupported("tool_choice must be auto, none, required or a named function", "tool_choice")


def _refuse(body: dict) -> None:
    """The 400s for OpenAI features Converse has no counterpart for."""
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("n > 1 is not supported: Converse returns one choice", "n")
    if body.get("logprobs"):
        raise _unsupported("logprobs are not supported", "logprobs")
    if body.get("top_logprobs") is not None:
        raise _unsupported("logprobs are not supported", "top_logprobs")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise _unsupported("legacy functions/function_call are not supported; use tools/tool_choice",
                           "functions" if body.get("functions") is not None else "function_call")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise _unsupported("audio output is not supported", "audio" if body.get("audio") is not None
                           else "modalities")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type") == "text"):
        raise _unsupported("response_format: Converse has no JSON mode; only text is supported", "response_format")


def _inference_config(req: ChatRequest) -> dict[str, Any]:
    sp = req.sampling
    cfg: dict[str, Any] = {}
    if sp.max_tokens is not None:
        if not isinstance(sp.max_tokens, int) or isinstance(sp.max_tokens, bool) or sp.max_tokens < 1:
            raise invalid("max_tokens must be a positive integer", "max_tokens")
        cfg["maxTokens"] = sp.max_tokens
    for src, dst, v in (("temperature", "temperature", sp.temperature), ("top_p", "topP", sp.top_p)):
        if v is not None:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise invalid(f"{src} must be a number", src)
            cfg[dst] = v
    if sp.stop:
        cfg["stopSequences"] = sp.stop
    return cfg


def _tool_config(body: dict, messages: list[dict]) -> dict | None:
    has_tool_blocks = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    tools = body.get("tools")
    if tools:
        choice = _tool_choice(body.get("tool_choice"))
        if choice != "none":
            tc: dict[str, Any] = {"tools": _tools(tools)}
            if choice is not None:
                tc["toolChoice"] = choice
            return tc
        # Converse has no "none"; it does require toolConfig once the conversation holds toolUse/toolResult.
        if has_tool_blocks:
            note_dropped(PROVIDER, "tool_choice=none")
            return {"tools": _tools(tools)}
        return None
    if has_tool_blocks:
        # Bedrock refuses tool blocks without a toolConfig; declare the tools the history used, schema-free.
        names = sorted({b["toolUse"]["name"] for m in messages for b in m["content"] if "toolUse" in b})
        if names:
            return {"tools": [{"toolSpec": {"name": nm, "inputSchema": {"json": {"type": "object"}}}}
                              for nm in names]}
    return None


def translate_request(target: TargetRuntime, body: dict, stream: bool) -> dict:
    """The Converse request body for an OpenAI chat request (raises GatewayError 400 when refused).

    `target` and `stream` do not change the body (model and streaming are in the path); the signature is
    every provider's."""
    _refuse(body)
    req = parse_chat(body, PROVIDER)
    system, messages = _messages(req)
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    cfg = _inference_config(req)
    if cfg:
        out["inferenceConfig"] = cfg
    tool_config = _tool_config(body, messages)
    if tool_config is not None:
        out["toolConfig"] = tool_config
    for k in body:
        if k not in _HANDLED:
            note_dropped(PROVIDER, k)
    return out


# ---- endpoint, region, credentials ------------------------------------------------------------


def resolve_region(target: TargetRuntime) -> str:
    """The target's AWS region: its `region`, the region in a standard base_url host, AWS_REGION, AWS_DEFAULT_REGION."""
    if target.region:
        return target.region
    if target.base_url:
        m = _REGION_IN_HOST.search(split_base_url(target.base_url)[1])
        if m:
            return m.group(1)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    raise _config_error(f"bedrock target {target.id!r} has no AWS region: set `region` on the target or the "
                        "AWS_REGION environment variable", "provider_config_error")


def endpoint_url(target: TargetRuntime, region: str) -> str:
    return target.base_url or f"https://bedrock-runtime.{region}.amazonaws.com"


def _botocore() -> Any:
    try:
        import botocore.auth
        import botocore.awsrequest
        import botocore.session
    except ImportError:
        raise _config_error("provider bedrock needs botocore for AWS SigV4 signing: install the extra "
                            "`pip install fastgw[bedrock]` (or give the target a Bedrock API key in "
                            "secret_key_ref)", "provider_dependency_missing") from None
    return botocore


class _Credentials:
    """botocore's credentials, resolved once per worker on first use; botocore refreshes temporary ones."""

    __slots__ = ("_creds", "_failed_at")

    def __init__(self) -> None:
        self._creds: Any = None
        self._failed_at = 0.0

    def frozen(self, botocore: Any) -> Any:
        creds = self._creds
        if creds is None:
            now = time.monotonic()
            if self._failed_at and now - self._failed_at < _NO_CREDENTIALS_RETRY_S:
                raise self._missing()
            try:
                creds = botocore.session.get_session().get_credentials()
            except Exception as e:  # noqa: BLE001 - a broken profile or SSO cache: a clear answer, not a crash
                self._failed_at = now
                raise _config_error(f"bedrock: could not resolve AWS credentials: {e}",
                                    "provider_credentials_missing") from None
            if creds is None:
                self._failed_at = now
                raise self._missing()
            self._creds = creds
        try:
            # For temporary credentials botocore refreshes here when they are close to expiry (a blocking call,
            # at most once per credential lifetime); static ones are returned as they are.
            return creds.get_frozen_credentials()
        except Exception as e:  # noqa: BLE001 - refresh failed (STS, SSO, IMDS down)
            raise GatewayError(f"bedrock: refreshing AWS credentials failed: {e}", status=502,
                               type="server_error", code="provider_credentials_refresh_failed") from None

    @staticmethod
    def _missing() -> GatewayError:
        return _config_error("bedrock: no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "AWS_PROFILE and ~/.aws files, container or instance role)",
                             "provider_credentials_missing")


def sign(botocore: Any, credentials: Any, region: str, url: str, headers: dict[str, str], body: bytes,
         service: str = SERVICE) -> list[tuple[bytes, bytes]]:
    """`headers` plus the SigV4 ones (Authorization, X-Amz-Date, X-Amz-Security-Token) for POST `url` with
    exactly `body`, computed by botocore's signer; every header given is signed."""
    req = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
    botocore.auth.SigV4Auth(credentials, service, region).add_auth(req)
    return [(k.lower().encode("latin-1"), v.encode("latin-1") if isinstance(v, str) else v)
            for k, v in req.headers.items()]


# ---- answers --------------------------------------------------------------------------------


def _usage(u: object) -> dict:
    if not isinstance(u, dict):
        return usage_dict(0, 0)
    inp = u.get("inputTokens") or 0
    read = u.get("cacheReadInputTokens")
    write = u.get("cacheWriteInputTokens") or 0
    return usage_dict(inp + (read or 0) + write, u.get("outputTokens") or 0, read)


def _error_body(status: int, data: bytes) -> bytes:
    type_, code = _HTTP_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    message = None
    obj = json_object(data)
    if obj is not None:
        message = obj.get("message") or obj.get("Message")
        kind = obj.get("__type") or obj.get("code")
        if isinstance(kind, str) and kind:
            code = kind.rsplit("#", 1)[-1].split(":", 1)[0]
    if not isinstance(message, str) or not message:
        message = f"bedrock answered HTTP {status}: {data[:200].decode('utf-8', 'replace')}"
    return envelope(message, type_, code)


def translate_converse(obj: dict, model: str) -> bytes:
    """A Converse response -> an OpenAI `chat.completion` body."""
    output = obj.get("output")
    msg = output.get("message") if isinstance(output, dict) else None
    blocks = msg.get("content") if isinstance(msg, dict) else None
    texts: list[str] = []
    calls: list[dict] = []
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            tu = block["toolUse"]
            calls.append({"id": tu.get("toolUseId") or "", "type": "function",
                          "function": {"name": tu.get("name") or "",
                                       "arguments": upstream_json(tu.get("input", {}))}})
    content = "".join(texts) if texts or not calls else None
    finish = map_finish(obj.get("stopReason"), _STOP) or "stop"
    return completion_body(model, content, finish, _usage(obj.get("usage")), calls or None)


class BedrockStreamTranslator(StreamTranslator):
    """ConverseStream (AWS event stream) -> OpenAI chunks, incremental: each complete frame is translated by
    the `feed` that completes it; only the incomplete frame is held (bounded by the decoder's frame limit)."""

    __slots__ = ("_tools", "_args_seen", "_stopped")

    provider = PROVIDER

    def __init__(self, model: str, body: dict) -> None:
        super().__init__(model, body, EventStreamDecoder())
        #: contentBlockIndex of each toolUse block
        self._tools: set[object] = set()
        self._args_seen: set[object] = set()
        self._stopped = False

    def _close(self) -> None:
        try:
            self._dec.close()
        except ProtocolError as e:
            raise UpstreamProtocolError(f"bedrock {e.message}") from None
        if not self._stopped:
            raise UpstreamProtocolError("bedrock stream ended before messageStop")

    def _one(self, m: Message) -> None:
        h = m.headers
        mtype = h.get(":message-type")
        if mtype == "exception":
            kind = h.get(":exception-type")
            kind = kind if isinstance(kind, str) and kind else "exception"
            message = None
            obj = json_object(m.payload)
            if obj is not None:
                message = obj.get("message") or obj.get("Message") or obj.get("originalMessage")
            raise UpstreamError(f"bedrock: {message if isinstance(message, str) and message else kind}", code=kind)
        if mtype == "error":
            code = h.get(":error-code")
            code = code if isinstance(code, str) and code else "error"
            text = h.get(":error-message")
            raise UpstreamError(f"bedrock: {text if isinstance(text, str) and text else code}", code=code)
        if mtype != "event":
            return  # unknown message types are skipped, as the AWS SDKs do
        etype = h.get(":event-type")
        obj = json_object(m.payload)
        if obj is None:
            raise UpstreamProtocolError(f"bedrock stream: {etype!s} payload is not a JSON object")
        if etype in ("contentBlockDelta", "contentBlockStart", "contentBlockStop"):
            self._block(etype, obj)
        elif etype == "messageStart":
            self._w.start()
        elif etype == "messageStop":
            self._stopped = True
            self._w.finish(map_finish(obj.get("stopReason"), _STOP) or "stop")
        elif etype == "metadata":
            self._usage = _usage(obj.get("usage"))

    def _block(self, etype: object, obj: dict) -> None:
        w = self._w
        idx = obj.get("contentBlockIndex")
        if etype == "contentBlockDelta":
            d = obj.get("delta")
            if not isinstance(d, dict):
                return
            text = d.get("text")
            if isinstance(text, str):
                w.text(text)
                return
            tu = d.get("toolUse")
            args = tu.get("input") if isinstance(tu, dict) else None
            if isinstance(args, str) and args:
                self._args_seen.add(idx)
                self._tools.add(idx)  # a delta without its start: still one call per block
                w.tool_args(idx, args)
            # reasoningContent, citation deltas: not part of an OpenAI answer
        elif etype == "contentBlockStart":
            start = obj.get("start")
            tu = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(tu, dict):
                self._tools.add(idx)
                w.tool_start(idx, tu.get("toolUseId") or "", tu.get("name") or "")
        elif idx in self._tools and idx not in self._args_seen:
            # contentBlockStop of a tool call with no input deltas: OpenAI always gives arguments as JSON text.
            self._args_seen.add(idx)
            w.tool_args(idx, "{}")


# ---- the adapter ------------------------------------------------------------------------------


class BedrockAdapter:
    """Bedrock Converse / ConverseStream behind the OpenAI chat API."""

    __slots__ = ("_creds",)

    def __init__(self) -> None:
        self._creds = _Credentials()

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, stream: bool) -> UpstreamRequest:
        chat_only("bedrock", endpoint)
        payload = encode_json(translate_request(target, body, stream), body)
        # A Bedrock API key sent to an explicit base_url is the one case that needs no region (nothing is signed).
        region = "" if target.api_key and target.base_url else resolve_region(target)
        scheme, host, port, prefix = split_base_url(endpoint_url(target, region))
        # The model id is one path segment: ':' and '/' (inference profile ARNs) are escaped, as botocore does.
        path = f"{prefix}/model/{quote(target.model, safe='')}/{'converse-stream' if stream else 'converse'}"
        hosth = host_header(scheme, host, port)
        accept = b"application/vnd.amazon.eventstream" if stream else b"application/json"
        if target.api_key:
            headers = [(b"host", hosth), (b"content-type", b"application/json"),
                       (b"authorization", b"Bearer " + target.api_key.encode())]
        else:
            bc = _botocore()
            creds = self._creds.frozen(bc)
            hs = hosth.decode("ascii")
            headers = sign(bc, creds, region, f"{scheme}://{hs}{path}",
                           {"host": hs, "content-type": "application/json"}, payload)
        headers += [(b"accept", accept), (b"user-agent", USER_AGENT), *target.extra_headers]
        return UpstreamRequest(scheme, host, port, "POST", path, headers, payload)

    def stream_translator(self, target: TargetRuntime, body: dict) -> BedrockStreamTranslator:
        return BedrockStreamTranslator(target.model, body)

    def is_stream(self, content_type: bytes) -> bool:
        return content_type.startswith(CONTENT_TYPE)

    def translate_response(self, target: TargetRuntime, body: dict, status: int, data: bytes) -> tuple[int, bytes]:
        if status >= 400:
            return status, _error_body(status, data)
        obj = json_object(data)
        if obj is None:
            return 502, UpstreamProtocolError("bedrock answered with a body that is not a Converse response").body()
        return status, translate_converse(obj, target.model)
