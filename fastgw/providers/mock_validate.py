"""The built-in mock's request validation: the 400s OpenAI answers to the common mistakes, in OpenAI's words.

The gateway passes requests to real providers as they are (OpenAI validates upstream); the mock is the
upstream here, so it refuses what OpenAI refuses, with OpenAI's `message`, `param` and `code`, and code
tested offline against it meets the same refusals it will meet online. The wording is OpenAI's as observed
in its answers (its validator's templates: "Missing required parameter: 'x'.", "Invalid type for 'x':
expected ..., but got ... instead.", "Invalid 'x': integer below minimum value. ..."). What is checked is
listed in the README's mock section; anything else passes (unknown parameters included).

`refusal(endpoint, body)` is the one entry point: None for a request OpenAI would take, else the error body.
"""

from __future__ import annotations

import re

from fastgw.api.errors import envelope

__all__ = ["refusal", "Refused", "ROLES"]

#: The message roles OpenAI accepts, in the order its error lists them.
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_TOOL_TYPES = ("function", "custom")
_TOOL_CHOICES = ("none", "auto", "required")
_FORMAT_TYPES = ("json_object", "json_schema", "text")
_ENCODINGS = ("float", "base64")
#: OpenAI's pattern for a function name (its error quotes it).
_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
#: `n` above this is refused by OpenAI (integer_above_max_value).
MAX_N = 128
#: `stop` holds at most this many sequences on OpenAI.
MAX_STOP = 4
_API_REFERENCE = "https://platform.openai.com/docs/api-reference"


class Refused(Exception):
    """One refusal: OpenAI's message, param and code (None where OpenAI sends null)."""

    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> bytes:
        return envelope(self.message, "invalid_request_error", self.code, self.param)


def refusal(endpoint: str, body: dict) -> bytes | None:
    """The 400 body OpenAI would answer to this request on `endpoint`, or None when it would take it."""
    check = _CHECKS.get(endpoint)
    if check is None:
        return None
    try:
        check(body)
    except Refused as r:
        return r.body()
    return None


# ---- the validator's templates ----------------------------------------------------------------------


def _kind(value: object) -> str:
    """A JSON value's type as OpenAI's errors name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _listed(values: tuple[str, ...], last: str = "and") -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 2:
        return f"{quoted[0]} {last} {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", {last} {quoted[-1]}"


def _missing(param: str) -> Refused:
    return Refused(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _wrong_type(param: str, expected: str, value: object) -> Refused:
    return Refused(f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.", param,
                   "invalid_type")


def _object(parent: dict, key: str, param: str) -> dict:
    """`parent[key]`, which must be present and an object (else OpenAI's refusal naming `param`)."""
    value = parent.get(key)
    if value is None:
        raise _missing(param)
    if not isinstance(value, dict):
        raise _wrong_type(param, "an object", value)
    return value


def _bad_value(param: str, value: object, allowed: tuple[str, ...]) -> Refused:
    return Refused(f"Invalid value: '{value}'. Supported values are: {_listed(allowed)}.", param, "invalid_value")


def _empty(param: str) -> Refused:
    return Refused(f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty "
                   "array instead.", param, "empty_array")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(body: dict, name: str, low: int | None = None, high: int | None = None) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_int(v):
        raise _wrong_type(name, "an integer", v)
    assert isinstance(v, int)
    if low is not None and v < low:
        raise Refused(f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {v} "
                      "instead.", name, "integer_below_min_value")
    if high is not None and v > high:
        raise Refused(f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {v} "
                      "instead.", name, "integer_above_max_value")


def _decimal(body: dict, name: str, low: float, high: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_number(v):
        raise _wrong_type(name, "a decimal", v)
    # OpenAI reads the value as a float and quotes it so: `2` is "2.0" in its message.
    f = float(v)
    if f < low:
        raise Refused(f"Invalid '{name}': decimal below minimum value. Expected a value >= {low:g}, but got {f!r} "
                      "instead.", name, "decimal_below_min_value")
    if f > high:
        raise Refused(f"Invalid '{name}': decimal above maximum value. Expected a value <= {high:g}, but got {f!r} "
                      "instead.", name, "decimal_above_max_value")


def _boolean(body: dict, name: str) -> None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise _wrong_type(name, "a boolean", v)


def _string(body: dict, name: str) -> None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise _wrong_type(name, "a string", v)


def _stream_options(body: dict) -> None:
    so = body.get("stream_options")
    if so is None:
        return
    if body.get("stream") is not True:
        raise Refused("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options",
                      None)
    if not isinstance(so, dict):
        raise _wrong_type("stream_options", "an object", so)
    if "include_usage" in so and so["include_usage"] is not None and not isinstance(so["include_usage"], bool):
        raise _wrong_type("stream_options.include_usage", "a boolean", so["include_usage"])


def _stop(body: dict) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list):
        raise _wrong_type("stop", "one of a string or array of strings", stop)
    if len(stop) > MAX_STOP:
        raise Refused(f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, but got "
                      f"an array with length {len(stop)} instead.", "stop", "array_above_max_length")
    for i, s in enumerate(stop):
        if not isinstance(s, str):
            raise _wrong_type(f"stop[{i}]", "a string", s)


def _sampling(body: dict) -> None:
    """The numeric and flag parameters chat and legacy completions share."""
    _integer(body, "max_tokens", low=1)
    _decimal(body, "temperature", 0.0, 2.0)
    _decimal(body, "top_p", 0.0, 1.0)
    _decimal(body, "frequency_penalty", -2.0, 2.0)
    _decimal(body, "presence_penalty", -2.0, 2.0)
    _integer(body, "n", low=1, high=MAX_N)
    _integer(body, "seed")
    _string(body, "user")
    _stop(body)
    _stream_options(body)


# ---- chat completions ------------------------------------------------------------------------------


def _messages(body: dict) -> None:
    msgs = body.get("messages")
    if msgs is None:
        raise _missing("messages")
    if not isinstance(msgs, list):
        raise _wrong_type("messages", "an array of objects", msgs)
    if not msgs:
        raise _empty("messages")
    pending: set[object] = set()  # tool_call ids the last assistant message asked for, not yet answered
    asked_at = -1
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _wrong_type(p, "an object", m)
        role = m.get("role")
        if role is None:
            raise _missing(f"{p}.role")
        if not isinstance(role, str):
            raise _wrong_type(f"{p}.role", f"one of {_listed(ROLES, 'or')}", role)
        if role not in ROLES:
            raise _bad_value(f"{p}.role", role, ROLES)
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _wrong_type(f"{p}.content", "one of a string or array of objects", content)
        if "content" not in m and role in ("system", "developer", "user", "tool"):
            raise _missing(f"{p}.content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise _wrong_type(f"{p}.content[{j}]", "an object", part)
                if "type" not in part:
                    raise _missing(f"{p}.content[{j}].type")
        if role != "tool" and pending:
            # OpenAI's own wording, its param spelt `messages.[i].role` as it sends it.
            raise Refused("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                          "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                          + ", ".join(str(x) for x in sorted(pending, key=str)), f"messages.[{asked_at}].role", None)
        if role == "assistant":
            calls = m.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise _wrong_type(f"{p}.tool_calls", "an array of objects", calls)
                if not calls:
                    raise _empty(f"{p}.tool_calls")
                for j, c in enumerate(calls):
                    if not isinstance(c, dict):
                        raise _wrong_type(f"{p}.tool_calls[{j}]", "an object", c)
                    if "id" not in c:
                        raise _missing(f"{p}.tool_calls[{j}].id")
                    fn = c.get("function")
                    if c.get("type", "function") == "function" and not isinstance(fn, dict):
                        raise _missing(f"{p}.tool_calls[{j}].function")
                pending = {c.get("id") for c in calls}
                asked_at = i
            else:
                asked_at = -1
        elif role == "tool":
            if "tool_call_id" not in m:
                raise _missing(f"{p}.tool_call_id")
            if asked_at < 0:
                raise Refused("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                              "message with 'tool_calls'.", f"messages.[{i}].role", None)
            pending.discard(m.get("tool_call_id"))
        else:
            asked_at = -1
    if pending:
        raise Refused("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                      "'tool_call_id'. The following tool_call_ids did not have response messages: "
                      + ", ".join(str(x) for x in sorted(pending, key=str)), f"messages.[{asked_at}].role", None)


def _tools(body: dict) -> list[str]:
    """The function names `tools` declares (checked); [] without tools."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _wrong_type("tools", "an array of objects", tools)
    if not tools:
        raise _empty("tools")
    names = []
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(t, dict):
            raise _wrong_type(p, "an object", t)
        kind = t.get("type")
        if kind is None:
            raise _missing(f"{p}.type")
        if kind not in _TOOL_TYPES:
            raise _bad_value(f"{p}.type", kind, _TOOL_TYPES)
        if kind == "custom":
            continue
        fn = _object(t, "function", f"{p}.function")
        name = fn.get("name")
        if name is None:
            raise _missing(f"{p}.function.name")
        if not isinstance(name, str):
            raise _wrong_type(f"{p}.function.name", "a string", name)
        if not _NAME.match(name):
            raise Refused(f"Invalid '{p}.function.name': string does not match pattern. Expected a string that "
                          f"matches the pattern '{_NAME.pattern}'.", f"{p}.function.name", "invalid_value")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _wrong_type(f"{p}.function.parameters", "an object", params)
        names.append(name)
    return names


def _tool_choice(body: dict, names: list[str]) -> None:
    choice = body.get("tool_choice")
    has_tools = body.get("tools") is not None
    for key in ("tool_choice", "parallel_tool_calls"):
        if body.get(key) is not None and not has_tools:
            raise Refused(f"Invalid value for '{key}': '{key}' is only allowed when 'tools' are specified.", key, None)
    _boolean(body, "parallel_tool_calls")
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise _bad_value("tool_choice", choice, _TOOL_CHOICES)
        return
    if not isinstance(choice, dict):
        # Sic: OpenAI's message says "one of one of".
        raise _wrong_type("tool_choice", f"one of one of {_listed(_TOOL_CHOICES, 'or')} or object", choice)
    fn = _object(choice, "function", "tool_choice.function")
    name = fn.get("name")
    if name is None:
        raise _missing("tool_choice.function.name")
    if name not in names:
        raise Refused(f"Invalid value for 'tool_choice': no function named '{name}' was specified in the 'tools' "
                      "parameter.", "tool_choice", None)


def _mentions_json(msgs: list) -> bool:
    for m in msgs:
        c = m.get("content")
        if isinstance(c, str) and "json" in c.lower():
            return True
        if isinstance(c, list) and any(isinstance(p, dict) and isinstance(p.get("text"), str)
                                       and "json" in p["text"].lower() for p in c):
            return True
    return False


def _response_format(body: dict) -> None:
    rf = body.get("response_format")
    if rf is None:
        return
    if not isinstance(rf, dict):
        raise _wrong_type("response_format", "an object", rf)
    kind = rf.get("type")
    if kind is None:
        raise _missing("response_format.type")
    if kind not in _FORMAT_TYPES:
        raise _bad_value("response_format.type", kind, _FORMAT_TYPES)
    if kind == "json_object" and not _mentions_json(body["messages"]):
        raise Refused("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                      "'json_object'.", "messages", None)
    if kind != "json_schema":
        return
    js = _object(rf, "json_schema", "response_format.json_schema")
    name = js.get("name")
    if name is None:
        raise _missing("response_format.json_schema.name")
    schema = js.get("schema")
    got = schema.get("type") if isinstance(schema, dict) else None
    if got != "object":
        # OpenAI's structured-output check (strict mode); the mock applies it whether or not `strict` is set.
        shown = '"None"' if got is None else f'"{got}"'
        raise Refused(f"Invalid schema for response_format '{name}': schema must be a JSON Schema of "
                      f"'type: \"object\"', got 'type: {shown}'.", "response_format", "invalid_json_schema")


def _chat(body: dict) -> None:
    _messages(body)
    _integer(body, "max_completion_tokens", low=1)
    _sampling(body)
    _boolean(body, "logprobs")
    _integer(body, "top_logprobs", low=0, high=20)
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise Refused("The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled.", "top_logprobs",
                      None)
    names = _tools(body)
    _tool_choice(body, names)
    _response_format(body)


# ---- legacy completions and embeddings -------------------------------------------------------------


def _completion(body: dict) -> None:
    if body.get("prompt") is None:
        raise _missing("prompt")
    _sampling(body)


def _embeddings(body: dict) -> None:
    inp = body.get("input")
    if inp is None:
        raise _missing("input")
    if inp == "" or (isinstance(inp, list) and any(x == "" for x in inp)):
        raise Refused(f"'$.input' is invalid. Please check the API reference: {_API_REFERENCE}.", None, None)
    if isinstance(inp, list) and not inp:
        raise Refused("Invalid 'input': input cannot be an empty array.", None, None)
    if not isinstance(inp, (str, list)):
        raise _wrong_type("input", "one of a string or array", inp)
    _integer(body, "dimensions", low=1)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in _ENCODINGS:
        raise _bad_value("encoding_format", fmt, _ENCODINGS)


_CHECKS = {"chat/completions": _chat, "completions": _completion, "embeddings": _embeddings}
