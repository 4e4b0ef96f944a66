"""The Anthropic Messages API (`/v1/messages`) served through chat completions, for targets other than Anthropic.

Request: `system` (a string or text blocks) → a system message; `messages` → chat messages: text blocks,
images (base64 or URL source) and PDF documents (base64 → a `file` part; plain-text documents → text), an
assistant turn's `tool_use` blocks → its `tool_calls`, a user turn's `tool_result` blocks → `tool` messages
before the rest of the turn; `thinking` blocks are dropped. `tools` (custom tools: `name`, `description`,
`input_schema`) → function tools; `tool_choice` (auto, any → required, tool → a function, none;
`disable_parallel_tool_use` → `parallel_tool_calls: false`); `max_tokens`, `stop_sequences` → `stop`,
`temperature`, `top_p`, `metadata.user_id` → `user`, `output_format` / `output_config.format` json_schema →
`response_format`. Ignored: `top_k`, `thinking`, `service_tier`, `context_management`. Refused with 400:
`container`, `mcp_servers`, server tools (any tool `type` but `custom`), other block types, unknown fields.

Answer: a `message` (text and `tool_use` blocks, `stop_reason` end_turn / max_tokens / tool_use / refusal,
usage); a stream: `message_start` (usage: the gateway's prompt estimate as `input_tokens`, as the upstream
has not counted it yet), `ping`, per block `content_block_start` / `content_block_delta` (`text_delta`,
`input_json_delta`) / `content_block_stop`, `message_delta` (stop reason and the provider's usage:
`input_tokens`, `output_tokens`, `cache_read_input_tokens`), `message_stop`. A chat finish `stop` is
`end_turn`: chat completions does not say whether a stop sequence ended the text, so `stop_sequence` is
reported by Anthropic targets only (which keep the native API).
"""

from __future__ import annotations

import orjson

from fastgw.api.errors import ANTHROPIC_TYPES, anthropic_envelope, anthropic_type
from fastgw.front.common import Front, StreamWriter, event, new_id, read_completion, refuse, text_of

__all__ = ["MessagesFront", "MessagesWriter", "STOP_REASONS", "anthropic_error"]

_KNOWN = frozenset({"model", "messages", "max_tokens", "system", "temperature", "top_p", "stop_sequences", "stream",
                    "tools", "tool_choice", "metadata", "output_format", "output_config"})
_IGNORED = frozenset({"top_k", "thinking", "service_tier", "context_management"})
_REFUSED = {"container": "needs Anthropic's code execution containers",
            "mcp_servers": "needs Anthropic's MCP connector"}
#: Chat finish reasons → Anthropic stop reasons.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
_TEXT = frozenset({"text"})
_ERROR_TYPES = frozenset(ANTHROPIC_TYPES.values())
_SERVED_BY = "this model is served through chat completions"


class MessagesFront(Front):
    """`/v1/messages` for a target served through chat completions."""

    __slots__ = ()

    # ---- request -------------------------------------------------------------------------------------------
    def chat_request(self) -> dict:
        body = self.body
        for k, v in body.items():
            if k in _REFUSED and v:
                raise refuse(f"{k}: {_REFUSED[k]}; {_SERVED_BY}", k)
            if k not in _KNOWN and k not in _IGNORED and k not in _REFUSED:
                raise refuse(f"{k[:64]}: Extra inputs are not permitted", k[:64], "unknown_parameter")
        mt = body.get("max_tokens")
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise refuse("max_tokens: Field required (an integer >= 1)", "max_tokens", "invalid_value")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise refuse("messages: Field required (a non-empty list)", "messages", "invalid_value")
        out_msgs: list[dict] = []
        system = body.get("system")
        if system is not None:
            out_msgs.append({"role": "system", "content": text_of(system, "system", _TEXT)})
        for i, m in enumerate(msgs):
            _message(m, f"messages[{i}]", out_msgs)
        out: dict = {"model": body["model"], "messages": out_msgs, "max_tokens": mt}
        tools = body.get("tools")
        if tools:
            out["tools"] = _tools(tools)
            choice = body.get("tool_choice")
            if choice is not None:
                _tool_choice(choice, out)
        stop = body.get("stop_sequences")
        if stop:
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise refuse("stop_sequences: expected a list of strings", "stop_sequences", "invalid_type")
            out["stop"] = stop
        for k in ("temperature", "top_p"):
            if body.get(k) is not None:
                out[k] = body[k]
        meta = body.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
            out["user"] = meta["user_id"]
        fmt = body.get("output_format")
        if fmt is None and isinstance(body.get("output_config"), dict):
            fmt = body["output_config"].get("format")
        if fmt is not None:
            out["response_format"] = _format(fmt)
        if body.get("stream") is True:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}  # the usage goes into message_delta
        return out

    # ---- answer --------------------------------------------------------------------------------------------
    def whole(self, data: bytes) -> bytes:
        c = read_completion(data, self.body["model"])
        content: list[dict] = []
        text = (c.text or "") + (c.refusal or "")
        if text or not c.tools:
            content.append({"type": "text", "text": text})
        for t in c.tools:
            content.append({"type": "tool_use", "id": t.id, "name": t.name, "input": _input(t.arguments)})
        return orjson.dumps({"id": new_id("msg_"), "type": "message", "role": "assistant", "model": c.model,
                             "content": content, "stop_reason": STOP_REASONS.get(c.finish, "end_turn"),
                             "stop_sequence": None, "usage": _usage(c.usage, 0)})

    def writer(self, input_estimate: int) -> StreamWriter:
        return MessagesWriter(str(self.body.get("model", "")), input_estimate)

    def error_body(self, status: int, data: bytes) -> bytes:
        return anthropic_error(status, data)


def anthropic_error(status: int, data: bytes) -> bytes:
    """An upstream error body as Anthropic's envelope: Anthropic's own as it is, an OpenAI envelope's message with
    the Anthropic type of the status."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and obj.get("type") == "error" and isinstance(obj.get("error"), dict) \
            and isinstance(obj["error"].get("type"), str) and obj["error"]["type"] in _ERROR_TYPES:
        return data
    err = obj.get("error") if isinstance(obj, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return anthropic_envelope(str(message or f"upstream answered HTTP {status}"), anthropic_type(status))


def _input(arguments: str) -> dict:
    """A tool call's arguments as the `input` object (an object that is not one, under `arguments`)."""
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _usage(usage: dict | None, estimate: int) -> dict:
    if usage is None:
        return {"input_tokens": estimate, "output_tokens": 0}
    out = {"input_tokens": int(usage.get("prompt_tokens") or 0), "output_tokens": int(usage.get("completion_tokens")
                                                                                        or 0)}
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens"):
        out["cache_read_input_tokens"] = int(details["cached_tokens"])
    return out


# ---- request pieces ----------------------------------------------------------------------------------------

def _message(m: object, param: str, out: list[dict]) -> None:
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise refuse(f"{param}.role: Input should be 'user' or 'assistant'", f"{param}.role", "invalid_value")
    role = m["role"]
    content = m.get("content")
    if isinstance(content, str):
        out.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise refuse(f"{param}.content: expected a string or a list of blocks", f"{param}.content", "invalid_type")
    parts: list[dict] = []
    calls: list[dict] = []
    for k, b in enumerate(content):
        bp = f"{param}.content[{k}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            parts.append({"type": "text", "text": b["text"]})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: nothing a chat model takes back
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": str(b.get("id") or ""), "type": "function", "function": {
                "name": str(b.get("name") or ""), "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif kind == "tool_result" and role == "user":
            result = b.get("content", "")
            text = text_of(result, f"{bp}.content", _TEXT) if result is not None else ""
            if b.get("is_error") and not text:
                text = "error"
            out.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id") or ""), "content": text})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _source_url(b.get("source"), bp, "image")}})
        elif kind == "document" and role == "user":
            src = b.get("source")
            if isinstance(src, dict) and src.get("type") == "text" and isinstance(src.get("data"), str):
                parts.append({"type": "text", "text": src["data"]})
            else:
                parts.append({"type": "file", "file": {"file_data": _source_url(src, bp, "document")}})
        else:
            raise refuse(f"{bp}: {str(kind)[:64]!r} blocks are not supported in {role} turns here; {_SERVED_BY}",
                         f"{bp}.type")
    if role == "assistant":
        msg: dict = {"role": "assistant", "content": "".join(p["text"] for p in parts) or None}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    elif parts:
        text_only = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if text_only and len(parts) == 1
                    else parts})


def _source_url(src: object, param: str, what: str) -> str:
    """An image or document source as a URL (base64 → a data: URL)."""
    if isinstance(src, dict):
        if src.get("type") == "base64" and isinstance(src.get("data"), str):
            return f"data:{src.get('media_type') or 'application/octet-stream'};base64,{src['data']}"
        if src.get("type") == "url" and isinstance(src.get("url"), str):
            return src["url"]
    raise refuse(f"{param}.source: a {what} needs a base64 or url source here; {_SERVED_BY}", f"{param}.source")


def _tools(tools: object) -> list[dict]:
    if not isinstance(tools, list):
        raise refuse("tools: expected a list", "tools", "invalid_type")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type", "custom") not in ("custom", None) \
                or not isinstance(t.get("name"), str):
            kind = t.get("type") if isinstance(t, dict) else None
            raise refuse(f"tools[{i}]: only custom tools can be used ({str(kind)[:64]!r} given); {_SERVED_BY}",
                         f"tools[{i}]")
        fn: dict = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}
        if t.get("description") is not None:
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: object, out: dict) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise refuse(f"tool_choice: {str(kind)[:64]!r} is not a tool choice (auto, any, tool, none)", "tool_choice",
                     "invalid_value")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


def _format(fmt: object) -> dict:
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}
    raise refuse("output_format: only {\"type\": \"json_schema\", \"schema\": {...}} is supported", "output_format",
                 "invalid_value")


# ---- stream ------------------------------------------------------------------------------------------------

class MessagesWriter(StreamWriter):
    """A chat stream as Anthropic Messages events (see the module docstring)."""

    __slots__ = ("estimate", "_blocks", "_open_block")

    def __init__(self, model: str, estimate: int) -> None:
        super().__init__(model)
        self.estimate = estimate
        self._blocks = 0
        #: The open content block's index, or -1; its kind ("text" or "tool_use").
        self._open_block = (-1, "")

    def _ev(self, obj: dict) -> None:
        self._out.append(event(obj))

    def _open(self) -> None:
        self._ev({"type": "message_start", "message": {
            "id": new_id("msg_"), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": self.estimate, "output_tokens": 0}}})
        self._ev({"type": "ping"})

    def _stop_block(self) -> None:
        idx, _ = self._open_block
        if idx >= 0:
            self._ev({"type": "content_block_stop", "index": idx})
            self._open_block = (-1, "")

    def _text(self, text: str) -> None:
        idx, kind = self._open_block
        if kind != "text":
            self._stop_block()
            idx = self._blocks
            self._blocks += 1
            self._open_block = (idx, "text")
            self._ev({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}})
        self._ev({"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": text}})

    def _tool_start(self, call_id: str, name: str) -> int:
        self._stop_block()
        idx = self._blocks
        self._blocks += 1
        self._open_block = (idx, "tool_use")
        self._ev({"type": "content_block_start", "index": idx, "content_block": {
            "type": "tool_use", "id": call_id, "name": name, "input": {}}})
        return idx

    def _tool_args(self, n: int, args: str) -> None:
        self._ev({"type": "content_block_delta", "index": n, "delta": {"type": "input_json_delta",
                                                                       "partial_json": args}})

    def _close(self) -> None:
        self._stop_block()
        usage = _usage(self.usage, self.estimate)
        self._ev({"type": "message_delta", "delta": {"stop_reason": STOP_REASONS.get(self.finish or "stop",
                                                                                     "end_turn"),
                                                     "stop_sequence": None}, "usage": usage})
        self._ev({"type": "message_stop"})
