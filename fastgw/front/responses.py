"""The OpenAI Responses API (`/v1/responses`) served through chat completions, for targets without it natively.

Request: `instructions` → a system message; `input` (a string, or items: messages with text, image and file
parts, `function_call` and `function_call_output` items; `reasoning` items are dropped) → messages; function
tools (flat: `{type, name, description, parameters, strict}`) → chat tools; `tool_choice`,
`parallel_tool_calls`, `max_output_tokens` (→ `max_tokens`), `temperature`, `top_p`, `user`,
`reasoning.effort` (→ `reasoning_effort`), `text.format` (json_schema / json_object → `response_format`);
`stream` asks for the usage chunk. Ignored: `include`, `truncation`, `metadata`, `service_tier`,
`safety_identifier`, `prompt_cache_key`, `prompt_cache_retention`, `stream_options`, `text.verbosity`,
`store: false`. Refused with 400 naming the field: what needs OpenAI's stored state or its tools
(`previous_response_id`, `conversation`, `prompt`, `store: true`, `background: true`, `item_reference` and
built-in tool items, non-function tools and tool choices), `max_tool_calls`, `top_logprobs`, unknown fields.

Answer: a whole chat answer becomes a `response` object (message and function_call output items, usage with
input/output token details); a stream becomes the Responses events, `sequence_number` from 0 and +1 per
event: `response.created`, `response.in_progress`, per item `output_item.added` / `content_part.added` /
`output_text.delta` (or `function_call_arguments.delta`) / the `.done` events, and `response.completed`, or
`response.incomplete` (`incomplete_details.reason` `max_output_tokens` for a chat finish `length`,
`content_filter`), or `response.failed` before the relay's `error` event when the upstream fails mid-stream.
"""

from __future__ import annotations

import time

import orjson

from fastgw.api.errors import GatewayError
from fastgw.front.common import Front, StreamWriter, ToolCall, event, new_id, obj_of, read_completion, refuse, \
    text_of

__all__ = ["ResponsesFront", "ResponsesWriter", "response_object"]

#: Fields this front reads.
_KNOWN = frozenset({"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                    "max_output_tokens", "temperature", "top_p", "stream", "user", "reasoning", "text"})
#: Fields with no effect on the answer here: accepted and not sent on.
_IGNORED = frozenset({"include", "truncation", "metadata", "service_tier", "safety_identifier", "prompt_cache_key",
                      "prompt_cache_retention", "stream_options", "store", "background"})
#: Fields that need OpenAI's stored state or features chat completions lack: 400 when set (not null/false/0).
_STATEFUL = {"previous_response_id": "needs the previous response, which only OpenAI's Responses API keeps",
             "conversation": "needs a conversation stored by OpenAI's Responses API",
             "prompt": "needs a prompt template stored by OpenAI",
             "store": "asks OpenAI to store the response; send `store: false` or leave it out",
             "background": "asks OpenAI to run the response in the background",
             "max_tool_calls": "cannot be enforced through chat completions",
             "top_logprobs": "is not supported through chat completions"}
_TEXT = frozenset({"input_text", "output_text", "text"})
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_SERVED_BY = "this model is served through chat completions"


class ResponsesFront(Front):
    """`/v1/responses` for a target served through chat completions."""

    __slots__ = ()

    # ---- request -------------------------------------------------------------------------------------------
    def chat_request(self) -> dict:
        body = self.body
        for k, v in body.items():
            if k in _STATEFUL and v not in (None, False, 0, ""):
                raise refuse(f"{k}: {_STATEFUL[k]}; {_SERVED_BY}", k)
            if k not in _KNOWN and k not in _IGNORED and k not in _STATEFUL:
                raise refuse(f"Unknown parameter: '{k[:64]}'.", k[:64], "unknown_parameter")
        for k in ("reasoning", "text"):
            if body.get(k) is not None and not isinstance(body[k], dict):
                raise refuse(f"{k}: expected an object", k, "invalid_type")
        messages: list[dict] = []
        instructions = body.get("instructions")
        if instructions is not None:
            messages.append({"role": "system", "content": text_of(instructions, "instructions", _TEXT)})
        inp = body.get("input")
        if isinstance(inp, str):
            messages.append({"role": "user", "content": inp})
        elif isinstance(inp, list):
            _items(inp, messages)
        else:
            raise refuse("input: expected a string or a list of input items", "input", "invalid_type")
        out: dict = {"model": body["model"], "messages": messages}
        tools = body.get("tools")
        if tools:
            out["tools"] = _tools(tools)
        choice = body.get("tool_choice")
        if choice is not None:
            out["tool_choice"] = _tool_choice(choice)
        for k in ("parallel_tool_calls", "temperature", "top_p", "user"):
            if body.get(k) is not None:
                out[k] = body[k]
        if body.get("max_output_tokens") is not None:
            out["max_tokens"] = body["max_output_tokens"]
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
            out["reasoning_effort"] = reasoning["effort"]
        fmt = _format(body.get("text"))
        if fmt is not None:
            out["response_format"] = fmt
        if body.get("stream") is True:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}  # the usage goes into response.completed
        return out

    # ---- answer --------------------------------------------------------------------------------------------
    def whole(self, data: bytes) -> bytes:
        c = read_completion(data, self.body["model"])
        rid = new_id("resp_")
        output: list[dict] = []
        incomplete = _INCOMPLETE.get(c.finish)
        status = "incomplete" if incomplete else "completed"
        if c.text or c.refusal or not c.tools:
            parts = []
            if c.text or not c.refusal:
                parts.append(_text_part(c.text or ""))
            if c.refusal:
                parts.append({"type": "refusal", "refusal": c.refusal})
            output.append({"id": "msg_" + rid[5:], "type": "message", "status": status, "role": "assistant",
                           "content": parts})
        for i, t in enumerate(c.tools):
            output.append(_call_item(f"fc_{rid[5:]}_{i}", t, "completed"))
        return orjson.dumps(response_object(self.body, rid, int(time.time()), c.model, status, output,
                                            _usage(c.usage), incomplete))

    def writer(self, input_estimate: int) -> StreamWriter:
        return ResponsesWriter(self.body)


def _text_part(text: str) -> dict:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _call_item(item_id: str, t: ToolCall, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": t.arguments, "call_id": t.id,
            "name": t.name}


def _usage(usage: dict | None) -> dict | None:
    """A chat usage object in the Responses API's names."""
    if usage is None:
        return None
    p = int(usage.get("prompt_tokens") or 0)
    c = int(usage.get("completion_tokens") or 0)
    pd = obj_of(usage.get("prompt_tokens_details"))
    cd = obj_of(usage.get("completion_tokens_details"))
    # cache_write_tokens: required by the current spec; chat usage has no such count (0).
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": int(pd.get("cached_tokens") or 0),
                                                        "cache_write_tokens": int(pd.get("cache_write_tokens") or 0)},
            "output_tokens": c, "output_tokens_details": {"reasoning_tokens": int(cd.get("reasoning_tokens") or 0)},
            "total_tokens": int(usage.get("total_tokens") or p + c)}


def _tool_echo(tool: dict) -> dict:
    """A request's function tool as a `response` echoes it: every field the schema requires, `strict` false when
    the request left it out (chat completions, which serves it, does not enforce a schema unless asked)."""
    return {"type": "function", "name": tool["name"], "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": bool(tool.get("strict"))}


def response_object(body: dict, rid: str, created: int, model: str, status: str, output: list, usage: dict | None,
                    incomplete: str | None = None, error: dict | None = None) -> dict:
    """A Responses API `response` object for this request (its parameters echoed as OpenAI does)."""
    text = obj_of(body.get("text"))
    return {"id": rid, "object": "response", "created_at": created, "status": status, "background": False,
            "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None, "model": model, "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": {"effort": obj_of(body.get("reasoning")).get("effort"), "summary": None},
            "store": False, "temperature": body.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": [_tool_echo(t) for t in body.get("tools") or []],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": usage, "user": body.get("user"),
            "metadata": body.get("metadata") or {}}


# ---- request pieces ----------------------------------------------------------------------------------------

def _items(items: list, messages: list[dict]) -> None:
    """Input items → chat messages (function calls join the assistant turn before them)."""
    for i, it in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(it, dict):
            raise refuse(f"{param}: expected an object", param, "invalid_type")
        kind = it.get("type", "message")
        if kind == "message":
            messages.append(_message(it, param))
        elif kind == "function_call":
            call = {"id": str(it.get("call_id") or ""), "type": "function",
                    "function": {"name": str(it.get("name") or ""), "arguments": str(it.get("arguments") or "")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = it.get("output")
            messages.append({"role": "tool", "tool_call_id": str(it.get("call_id") or ""),
                             "content": text_of(output, f"{param}.output", _TEXT)})
        elif kind == "reasoning":
            continue  # the model's own earlier reasoning: nothing a chat model takes back
        elif kind == "item_reference":
            raise refuse(f"{param}: item_reference needs the item stored by OpenAI's Responses API; {_SERVED_BY}: "
                         "send the item itself (the Vercel AI SDK does with providerOptions.openai.store = false)",
                         f"{param}.type")
        else:
            raise refuse(f"{param}: input items of type {str(kind)[:64]!r} are not supported; {_SERVED_BY}",
                         f"{param}.type")


def _message(it: dict, param: str) -> dict:
    role = it.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise refuse(f"{param}.role: expected user, assistant, system or developer", f"{param}.role", "invalid_value")
    content = it.get("content")
    if isinstance(content, str) or role != "user":
        if role == "assistant" and isinstance(content, list):  # an earlier answer's refusal parts, as text
            content = [{"type": "output_text", "text": p["refusal"]} if isinstance(p, dict)
                       and p.get("type") == "refusal" and isinstance(p.get("refusal"), str) else p for p in content]
        return {"role": role, "content": text_of(content, f"{param}.content", _TEXT)}
    if not isinstance(content, list):
        raise refuse(f"{param}.content: expected a string or a list of parts", f"{param}.content", "invalid_type")
    parts: list[dict] = []
    for k, p in enumerate(content):
        pp = f"{param}.content[{k}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in _TEXT and isinstance(p.get("text"), str):
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            image: dict = {"url": p["image_url"]}
            if p.get("detail") in ("low", "high", "auto"):
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and isinstance(p.get("file_data"), str):
            f = {"file_data": p["file_data"]}
            if isinstance(p.get("filename"), str):
                f["filename"] = p["filename"]
            parts.append({"type": "file", "file": f})
        else:
            raise refuse(f"{pp}: parts of type {str(kind)[:64]!r} are not supported here (images by URL or data "
                         f"URL, files as file_data); {_SERVED_BY}", pp)
    return {"role": "user", "content": parts}


def _tools(tools: object) -> list[dict]:
    if not isinstance(tools, list):
        raise refuse("tools: expected a list", "tools", "invalid_type")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
            kind = t.get("type") if isinstance(t, dict) else None
            raise refuse(f"tools[{i}]: only function tools can be used ({str(kind)[:64]!r} given); {_SERVED_BY}",
                         f"tools[{i}].type")
        fn: dict = {"name": t["name"]}
        if t.get("description") is not None:
            fn["description"] = t["description"]
        fn["parameters"] = t.get("parameters") or {"type": "object", "properties": {}}
        if t.get("strict") is not None:
            fn["strict"] = t["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: object) -> object:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise refuse(f"tool_choice: {str(kind)[:64]!r} is not supported (auto, none, required or a function); "
                 f"{_SERVED_BY}", "tool_choice")


def _format(text: object) -> dict | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is not None and not isinstance(fmt, dict):
        raise refuse("text.format: expected an object", "text.format", "invalid_type")
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        js = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": js}
    raise refuse(f"text.format: type {str(fmt.get('type'))[:64]!r} is not supported", "text.format.type")


# ---- stream ------------------------------------------------------------------------------------------------

class ResponsesWriter(StreamWriter):
    """A chat stream as Responses API events (see the module docstring)."""

    __slots__ = ("body", "id", "seq", "output", "_item", "_part", "_texts")

    def __init__(self, body: dict) -> None:
        super().__init__(str(body.get("model", "")))
        self.body = body
        self.id = new_id("resp_")
        self.seq = 0
        #: The output items, as they stand (each one's dict, completed in place).
        self.output: list[dict] = []
        #: The open message item's number in `output`, or -1.
        self._item = -1
        #: The open content part: "output_text" or "refusal", or "" for none.
        self._part = ""
        self._texts: list[str] = []

    def _ev(self, obj: dict) -> None:
        obj["sequence_number"] = self.seq
        self.seq += 1
        self._out.append(event(obj))

    def _response(self, status: str, incomplete: str | None = None, error: dict | None = None,
                  usage: dict | None = None) -> dict:
        return response_object(self.body, self.id, self.created, self.model, status, self.output, usage,
                               incomplete, error)

    def _open(self) -> None:
        snapshot = self._response("in_progress")
        snapshot["output"] = []
        self._ev({"type": "response.created", "response": snapshot})
        self._ev({"type": "response.in_progress", "response": snapshot})

    # ---- message items
    def _message(self) -> tuple[str, int]:
        if self._item < 0:
            self._close_item()
            self._item = len(self.output)
            item = {"id": f"msg_{self.id[5:]}_{self._item}", "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
            self.output.append(item)
            self._ev({"type": "response.output_item.added", "output_index": self._item, "item": {**item,
                                                                                                 "content": []}})
        return self.output[self._item]["id"], self._item

    def _text(self, text: str) -> None:
        self._delta("output_text", text)

    def _refusal(self, text: str) -> None:
        self._delta("refusal", text)

    def _delta(self, kind: str, text: str) -> None:
        item_id, n = self._message()
        content = self.output[n]["content"]
        if self._part != kind:
            self._close_part()
            self._part = kind
            part = _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            self._ev({"type": "response.content_part.added", "item_id": item_id, "output_index": n,
                      "content_index": len(content), "part": part})
            content.append(part)
        self._texts.append(text)
        ev: dict = {"type": f"response.{kind}.delta", "item_id": item_id, "output_index": n,
                    "content_index": len(content) - 1, "delta": text}
        if kind == "output_text":
            ev["logprobs"] = []
        self._ev(ev)

    def _close_part(self) -> None:
        if not self._part:
            return
        item = self.output[self._item]
        ci = len(item["content"]) - 1
        text = "".join(self._texts)
        self._texts = []
        key = "text" if self._part == "output_text" else "refusal"
        done: dict = {"type": f"response.{self._part}.done", "item_id": item["id"], "output_index": self._item,
                      "content_index": ci, key: text}
        if self._part == "output_text":
            done["logprobs"] = []
        self._ev(done)
        part = {**item["content"][ci], key: text}
        item["content"][ci] = part
        self._ev({"type": "response.content_part.done", "item_id": item["id"], "output_index": self._item,
                  "content_index": ci, "part": part})
        self._part = ""

    def _close_item(self, status: str = "completed") -> None:
        """Close the open message item (its text part first), or the open function call items."""
        if self._item >= 0:
            self._close_part()
            item = self.output[self._item]
            item["status"] = status
            self._ev({"type": "response.output_item.done", "output_index": self._item, "item": item})
            self._item = -1
        for n, item in enumerate(self.output):
            if item["type"] == "function_call" and item["status"] == "in_progress":
                item["status"] = "completed" if status == "completed" else status
                self._ev({"type": "response.function_call_arguments.done", "item_id": item["id"],
                          "output_index": n, "name": item["name"], "arguments": item["arguments"]})
                self._ev({"type": "response.output_item.done", "output_index": n, "item": item})

    # ---- function call items
    def _tool_start(self, call_id: str, name: str) -> int:
        self._close_item()
        n = len(self.output)
        item = {"id": f"fc_{self.id[5:]}_{n}", "type": "function_call", "status": "in_progress", "arguments": "",
                "call_id": call_id, "name": name}
        self.output.append(item)
        self._ev({"type": "response.output_item.added", "output_index": n, "item": dict(item)})
        return n

    def _tool_args(self, n: int, args: str) -> None:
        item = self.output[n]
        item["arguments"] += args
        self._ev({"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": n,
                  "delta": args})

    # ---- the end
    def _close(self) -> None:
        incomplete = _INCOMPLETE.get(self.finish or "stop")
        self._close_item("incomplete" if incomplete else "completed")
        usage = _usage(self.usage)
        if incomplete:
            self._ev({"type": "response.incomplete", "response": self._response("incomplete", incomplete,
                                                                                usage=usage)})
        else:
            self._ev({"type": "response.completed", "response": self._response("completed", usage=usage)})

    def _failed(self, err: GatewayError) -> None:
        self._close_item("incomplete")
        self._ev({"type": "response.failed", "response": self._response(
            "failed", error={"code": "server_error", "message": err.message}, usage=_usage(self.usage))})

