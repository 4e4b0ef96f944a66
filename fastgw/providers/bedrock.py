"""Amazon Bedrock Converse API: an OpenAI chat request becomes `POST {endpoint}/model/{modelId}/converse` (or
`/converse-stream`), signed with AWS SigV4; Bedrock's answer (JSON, or the AWS binary event stream) comes back as
an OpenAI `chat.completion` body or `chat.completion.chunk` events.

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
- dropped (logged once per process at INFO on `fastgw.providers.bedrock`): `frequency_penalty`,
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

import logging
import os
import re
import time
from typing import Any
from urllib.parse import quote

import orjson

from fastgw.api.errors import UpstreamError, UpstreamProtocolError
from fastgw.api.errors import GatewayError, envelope
from fastgw.proto.errors import ProtocolError
from fastgw.proto.eventstream import CONTENT_TYPE, EventStreamDecoder, Message
from fastgw.providers.base import (USER_AGENT, TargetRuntime, UpstreamRequest, chat_only, host_header, json_object,
                                   split_base_url)
from fastgw.providers.chunks import ChunkWriter, completion_body, map_finish, translate_all, usage_dict

__all__ = ["BedrockAdapter", "BedrockStreamTranslator", "translate_request", "translate_converse", "resolve_region",
           "endpoint_url", "SERVICE"]

log = logging.getLogger("fastgw.providers.bedrock")

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

#: Fields dropped that were already logged in this process (one note per field, not one per request).
_logged: set[str] = set()

_REGION_IN_HOST = re.compile(r"(?:^|\.)bedrock-runtime(?:-fips)?\.([a-z]{2}(?:-[a-z]+)+-\d+)\.")


def _unsupported(message: str, param: str) -> GatewayError:
    return GatewayError(f"{message} (provider bedrock)", status=400, type="invalid_request_error",
                        code="unsupported_parameter", param=param, no_retry=True)


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(message, status=400, type="invalid_request_error", code="invalid_value", param=param,
                        no_retry=True)


def _config_error(message: str, code: str) -> GatewayError:
    # The gateway's own set-up, not the request, is at fault: retrying cannot help.
    return GatewayError(message, status=500, type="server_error", code=code, no_retry=True)


def _drop(field: str) -> None:
    if field not in _logged:
        _logged.add(field)
        log.info("bedrock: request field %r has no Converse counterpart and is dropped", field)


# ---- request translation --------------------------------------------------------------------


def _text_parts(content: object, param: str) -> list[str]:
    """The texts of a system/developer/tool message (a string or text parts)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid("only text parts are allowed here", f"{param}[{k}]")
            out.append(part["text"])
        return out
    if content is None:
        return []
    raise _invalid("content must be a string or a list of text parts", param)


def _image(part: dict, param: str) -> dict:
    img = part.get("image_url")
    url = img.get("url") if isinstance(img, dict) else img
    if not isinstance(url, str):
        raise _invalid("image_url.url must be a string", f"{param}.image_url.url")
    if url.startswith(("http://", "https://")):
        raise _unsupported("image URLs are not supported: Converse takes image bytes; send a base64 data: URL",
                           f"{param}.image_url.url")
    # partition, not a regex: the data may be megabytes long.
    head, comma, data = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64") or not comma:
        raise _invalid("image_url.url must be a base64 data: URL (data:image/png;base64,...)", f"{param}.image_url.url")
    mime = head[5:].split(";", 1)[0].strip().lower()
    fmt = _IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise _unsupported(f"image type {mime!r} is not supported (png, jpeg, gif, webp)", f"{param}.image_url.url")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _user_blocks(content: object, param: str) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise _invalid("content must be a string or a list of parts", f"{param}.content")
    blocks: list[dict] = []
    for k, part in enumerate(content):
        p = f"{param}.content[{k}]"
        if not isinstance(part, dict):
            raise _invalid("a content part must be an object", p)
        t = part.get("type")
        if t == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _invalid("text must be a string", f"{p}.text")
            if text:
                blocks.append({"text": text})
        elif t == "image_url":
            blocks.append(_image(part, p))
        elif t in ("input_audio", "file"):
            raise _unsupported(f"{t} content parts are not supported", p)
        else:
            raise _invalid(f"unknown content part type {t!r}", p)
    return blocks


def _assistant_blocks(m: dict, param: str) -> list[dict]:
    blocks: list[dict] = []
    content = m.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"text": content})
    elif isinstance(content, list):
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise _invalid("assistant content parts must be text or refusal", f"{param}.content[{k}]")
            text = part.get("text") if part.get("type") == "text" else part.get("refusal")
            if isinstance(text, str) and text:
                blocks.append({"text": text})
    elif content is not None:
        raise _invalid("content must be a string, a list of parts or null", f"{param}.content")
    calls = m.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise _invalid("tool_calls must be a list", f"{param}.tool_calls")
        for j, call in enumerate(calls):
            p = f"{param}.tool_calls[{j}]"
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
                raise _invalid("a tool call needs an id and a function name", p)
            args = fn.get("arguments")
            try:
                value = orjson.loads(args) if isinstance(args, str) and args.strip() else {}
            except orjson.JSONDecodeError:
                raise _invalid("tool call arguments must be JSON", f"{p}.function.arguments") from None
            blocks.append({"toolUse": {"toolUseId": call["id"], "name": fn["name"], "input": value}})
    if m.get("function_call") is not None:
        raise _unsupported("legacy function_call messages are not supported; use tool_calls", f"{param}.function_call")
    return blocks


def _tool_result(m: dict, param: str) -> dict:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid("a tool message needs tool_call_id", f"{param}.tool_call_id")
    texts = _text_parts(m.get("content"), f"{param}.content")
    return {"toolResult": {"toolUseId": call_id, "content": [{"text": t} for t in texts if t]}}


def _messages(msgs: object) -> tuple[list[dict], list[dict]]:
    """(system blocks, Converse messages) for OpenAI `messages`."""
    if not isinstance(msgs, list) or not msgs:
        raise _invalid("messages must be a non-empty list", "messages")
    system: list[dict] = []
    out: list[dict] = []
    for i, m in enumerate(msgs):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid("a message must be an object", param)
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend({"text": t} for t in _text_parts(m.get("content"), f"{param}.content") if t)
            continue
        if role == "user":
            blocks, brole = _user_blocks(m.get("content"), param), "user"
        elif role == "assistant":
            blocks, brole = _assistant_blocks(m, param), "assistant"
        elif role == "tool":
            blocks, brole = [_tool_result(m, param)], "user"
        else:
            raise _unsupported(f"message role {role!r} is not supported", f"{param}.role")
        if m.get("name") is not None:
            _drop("messages[].name")
        if not blocks:
            continue  # Converse refuses blank text blocks; an empty message says nothing
        if out and out[-1]["role"] == brole:
            out[-1]["content"].extend(blocks)  # Converse wants user and assistant turns to alternate
        else:
            out.append({"role": brole, "content": blocks})
    return system, out


def _tools(tools: object) -> list[dict]:
    if not isinstance(tools, list):
        raise _invalid("tools must be a list", "tools")
    out = []
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise _unsupported("only function tools are supported", f"tools[{j}]")
        fn = tool["function"]
        if not isinstance(fn.get("name"), str):
            raise _invalid("a function tool needs a name", f"tools[{j}].function.name")
        spec: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str) and fn["description"]:
            spec["description"] = fn["description"]
        params = fn.get("parameters")
        spec["inputSchema"] = {"json": params if isinstance(params, dict) else {"type": "object", "properties": {}}}
        if fn.get("strict") is not None:
            _drop("tools[].function.strict")
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


def translate_request(body: dict) -> dict:
    """The Converse request body for an OpenAI chat request (raises GatewayError 400 when refused)."""
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

    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system

    cfg: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _invalid("max_tokens must be a positive integer", "max_tokens")
        cfg["maxTokens"] = max_tokens
    for src, dst in (("temperature", "temperature"), ("top_p", "topP")):
        v = body.get(src)
        if v is not None:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise _invalid(f"{src} must be a number", src)
            cfg[dst] = v
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("stop must be a string or a list of strings", "stop")
        if stops:
            cfg["stopSequences"] = stops
    if cfg:
        out["inferenceConfig"] = cfg

    tools = body.get("tools")
    if tools:
        choice = _tool_choice(body.get("tool_choice"))
        if choice == "none":
            # Converse has no "none"; it does require toolConfig once the conversation holds toolUse/toolResult.
            if any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"]):
                out["toolConfig"] = {"tools": _tools(tools)}
                _drop("tool_choice=none")
        else:
            tc: dict[str, Any] = {"tools": _tools(tools)}
            if choice is not None:
                tc["toolChoice"] = choice
            out["toolConfig"] = tc
    elif any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"]):
        # Bedrock refuses tool blocks without a toolConfig; declare the tools the history used, schema-free.
        names = sorted({b["toolUse"]["name"] for m in messages for b in m["content"] if "toolUse" in b})
        if names:
            out["toolConfig"] = {"tools": [{"toolSpec": {"name": nm, "inputSchema": {"json": {"type": "object"}}}}
                                           for nm in names]}

    for k in body:
        if k not in _HANDLED:
            _drop(k)
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
                                       "arguments": orjson.dumps(tu.get("input", {})).decode()}})
    content = "".join(texts) if texts or not calls else None
    finish = map_finish(obj.get("stopReason"), _STOP) or "stop"
    return completion_body(model, content, finish, _usage(obj.get("usage")), calls or None)


class BedrockStreamTranslator:
    """ConverseStream (AWS event stream) -> OpenAI chunk SSE, incremental: each complete frame is translated by
    the `feed` that completes it; only the incomplete frame is held (bounded by the decoder's frame limit)."""

    __slots__ = ("_decoder", "_w", "_tools", "_args_seen", "_usage", "_stopped", "_error")

    def __init__(self, model: str, body: dict) -> None:
        self._decoder = EventStreamDecoder()
        self._w = ChunkWriter(model, body)
        #: contentBlockIndex of each toolUse block
        self._tools: set[object] = set()
        self._args_seen: set[object] = set()
        self._usage: dict | None = None
        self._stopped = False
        #: An exception message that followed events in the same read: those go out first, it on the next call.
        self._error: UpstreamError | None = None

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            msgs = self._decoder.feed(data)
        except ProtocolError as e:  # a corrupt or oversized frame
            raise UpstreamProtocolError(f"bedrock {e.message}", code=e.code) from None
        out, self._error = translate_all(msgs, self._message)  # type: ignore[assignment]
        return out

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            self._decoder.close()
        except ProtocolError as e:
            raise UpstreamProtocolError(f"bedrock {e.message}") from None
        if not self._stopped:
            raise UpstreamProtocolError("bedrock stream ended before messageStop")
        return self._w.end(self._usage)

    def _message(self, m: Message) -> bytes:
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
            return b""  # unknown message types are skipped, as the AWS SDKs do
        etype = h.get(":event-type")
        obj = json_object(m.payload)
        if obj is None:
            raise UpstreamProtocolError(f"bedrock stream: {etype} payload is not a JSON object")
        w = self._w
        if etype == "contentBlockDelta":
            d = obj.get("delta")
            if not isinstance(d, dict):
                return b""
            text = d.get("text")
            if isinstance(text, str):
                return w.text(text)
            tu = d.get("toolUse")
            if isinstance(tu, dict):
                idx = obj.get("contentBlockIndex")
                args = tu.get("input")
                if isinstance(args, str) and args:
                    self._args_seen.add(idx)
                    if idx not in self._tools:  # a delta without its start: still one call per block
                        self._tools.add(idx)
                    return w.tool_args(idx, args)
            return b""  # reasoningContent, citation deltas: not part of an OpenAI answer
        if etype == "contentBlockStart":
            start = obj.get("start")
            tu = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(tu, dict):
                idx = obj.get("contentBlockIndex")
                self._tools.add(idx)
                return w.tool_start(idx, tu.get("toolUseId") or "", tu.get("name") or "")
            return b""
        if etype == "contentBlockStop":
            idx = obj.get("contentBlockIndex")
            if idx in self._tools and idx not in self._args_seen:
                # A tool call with no input deltas: OpenAI always gives arguments as JSON text.
                self._args_seen.add(idx)
                return w.tool_args(idx, "{}")
            return b""
        if etype == "messageStart":
            return w.start()
        if etype == "messageStop":
            self._stopped = True
            return w.finish(map_finish(obj.get("stopReason"), _STOP) or "stop")
        if etype == "metadata":
            self._usage = _usage(obj.get("usage"))
            return b""
        return b""


# ---- the adapter ------------------------------------------------------------------------------


class BedrockAdapter:
    """Bedrock Converse / ConverseStream behind the OpenAI chat API."""

    __slots__ = ("_creds",)

    def __init__(self) -> None:
        self._creds = _Credentials()

    def build_request(self, target: TargetRuntime, endpoint: str, body: dict, raw: bytes | None,
                      stream: bool) -> UpstreamRequest:
        chat_only("bedrock", endpoint)
        payload = orjson.dumps(translate_request(body))
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
