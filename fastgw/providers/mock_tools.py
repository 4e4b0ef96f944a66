"""The built-in mock's tool calls: which functions it calls, with what arguments, and what it says after.

Deterministic rules (the README's mock section repeats them):

- No function in `tools`, or `tool_choice: "none"`: no call.
- `tool_choice: {"type": "function", "function": {"name": N}}`: one call to N.
- `tool_choice: "required"`: the functions the last user message names, else the first function in `tools`.
- `tool_choice: "auto"` or absent: the functions the last user message names (a name counts as a whole
  word, in the order the message names them); none named, or the last message is a `tool` answer: no call.
- `parallel_tool_calls: false` keeps the first call only.

Arguments are a JSON object built from the function's `parameters` schema: the required properties (every
property when the schema lists none), each with a sample of its type (`const`, `enum[0]`, `default`,
`examples[0]`, a format's sample, the minimum of a number range, ...). A `name=value` or `name: value` in the
last user message sets that property; the first plain string property gets the message's subject (the words
after the function's name, or the whole message).
"""

from __future__ import annotations

import hashlib
import re

import orjson

__all__ = ["plan_calls", "tool_result_text", "call_id", "last_user_text", "MAX_VALUES", "MAX_DEPTH", "MAX_QUOTED",
           "MAX_SCANNED"]

#: Values one argument object may hold: a schema of nested arrays with `minItems` cannot grow without bound.
MAX_VALUES = 512
#: Nesting a schema is followed to (its `$ref`s can point back at themselves).
MAX_DEPTH = 16
#: Characters of user text or of a tool result the mock copies into an argument or an answer.
MAX_QUOTED = 1000
#: Characters of the last user message read for function names and `key: value` settings: the rules look at
#: what a person types, and a megabyte of prompt must not cost a scan per declared function.
MAX_SCANNED = 16 * 1024
#: `minItems` honoured up to this many items per array.
_MAX_ITEMS = 8
_CONNECTORS = frozenset({"for", "in", "on", "with", "about", "of", "to", "at", "from", "by", "using", "please"})
# The `key:` alternative starts only at a word's start: a long run of word characters is scanned once, not once
# per position.
_CLAUSE_END = re.compile(r"[.!?](?:\s|$)|[,;\n]|(?<![A-Za-z0-9_-])(?:and(?![A-Za-z0-9_-])|[A-Za-z0-9_-]+\s*[:=])")
#: What follows `key` in a setting: `:` or `=`, then a quoted value or one up to a comma, semicolon or line end.
_VALUE = r"""\s*[:=]\s*(?:"([^"]{0,%d})"|'([^']{0,%d})'|([^,;\n]{1,%d}))""" % ((MAX_QUOTED,) * 3)
_FORMATS = {"date": "2024-01-01", "date-time": "2024-01-01T00:00:00Z", "time": "00:00:00", "email": "user@example.com",
            "uri": "https://example.com", "url": "https://example.com", "uuid": "00000000-0000-4000-8000-000000000000",
            "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "hostname": "example.com"}


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_user_text(msgs: list) -> str:
    for m in reversed(msgs):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))[:MAX_SCANNED]
    return ""


def _word(name: str) -> re.Pattern[str]:
    # A function name is [A-Za-z0-9_-]+: it is a whole word when no such character touches it.
    return re.compile(r"(?<![A-Za-z0-9_-])" + re.escape(name) + r"(?![A-Za-z0-9_-])")


def _functions(body: dict) -> dict[str, dict]:
    """The function tools by name, with their parameter schema (in `tools` order)."""
    out: dict[str, dict] = {}
    tools = body.get("tools")
    for t in tools if isinstance(tools, list) else ():
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out.setdefault(fn["name"], params if isinstance(params, dict) else {})
    return out


def plan_calls(body: dict) -> list[tuple[str, str]] | None:
    """The calls (function name, arguments JSON) the mock answers this chat request with, or None for text."""
    functions = _functions(body)
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return None
    msgs = body.get("messages")
    msgs = msgs if isinstance(msgs, list) else []
    said = _last_user_text(msgs)
    if isinstance(choice, dict):
        fn = choice.get("function")
        names = [fn["name"]] if isinstance(fn, dict) and fn.get("name") in functions else []
    else:
        found = sorted((m.start(), n) for n in functions if (m := _word(n).search(said)) is not None)
        names = [n for _, n in found]
        if choice == "required":
            names = names or [next(iter(functions))]
        elif msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "tool":
            return None  # auto: the tool answered; now the mock speaks
    if not names:
        return None
    if body.get("parallel_tool_calls") is False:
        names = names[:1]
    return [(n, _arguments(functions[n], n, said, list(functions))) for n in names]


def call_id(name: str, said: str, index: int, choice: int) -> str:
    """A deterministic `call_...` id: the same request gets the same ids, each call and choice its own."""
    h = hashlib.sha256(f"{name}\0{index}\0{choice}\0{said}".encode()).hexdigest()
    return "call_" + h[:24]


def last_user_text(body: dict) -> str:
    msgs = body.get("messages")
    return _last_user_text(msgs if isinstance(msgs, list) else [])


# ---- arguments from a schema ---------------------------------------------------------------------


def _subject(said: str, name: str, others: list[str]) -> str:
    """What the user asked the function about: the clause after its name, else the message's first clause
    (without the name), with no leading connectives. A clause ends at a sentence end, a comma, a semicolon,
    "and", another function's name or a `key: value` setting."""
    m = _word(name).search(said)
    if m is not None:
        after = _clause(said[m.end():], name, others)
        if after:
            return after
        said = said[:m.start()] + said[m.end():]
    return _clause(said, name, others)


def _clause(text: str, name: str, others: list[str]) -> str:
    text = text[:2 * MAX_QUOTED]  # what lies further cannot reach the (cut) subject
    ends = [_CLAUSE_END.search(text)] + [_word(o).search(text) for o in others if o != name]
    cut = min((e.start() for e in ends if e is not None), default=len(text))
    words = text[:cut].split()
    while words and words[0].lower() in _CONNECTORS:
        words.pop(0)
    return " ".join(words).strip(" \t\n.,;:!?\"'")[:MAX_QUOTED]


def _given(said: str, key: str) -> str | None:
    """A value the user set explicitly: `key=value`, `key: value`, quoted or up to a comma, semicolon or line end."""
    m = re.search(r"(?<![A-Za-z0-9_-])" + re.escape(key) + _VALUE, said)
    if m is None:
        return None
    v = m.group(1) if m.group(1) is not None else m.group(2) if m.group(2) is not None else m.group(3)
    return v.strip().rstrip(".!?")[:MAX_QUOTED]


def _coerce(text: str, kind: object) -> tuple[bool, object]:
    if kind == "integer":
        try:
            return True, int(text)
        except ValueError:
            return False, None
    if kind == "number":
        try:
            f = float(text)
        except ValueError:
            return False, None
        return f == f and f not in (float("inf"), float("-inf")), (int(f) if f.is_integer() else f)
    if kind == "boolean":
        low = text.lower()
        return low in ("true", "false"), low == "true"
    return kind in (None, "string"), text


class _Sampler:
    """Builds one sample value for a schema, within a value budget (each instance is used for one call)."""

    __slots__ = ("root", "left", "subject", "subject_used")

    def __init__(self, root: dict, subject: str) -> None:
        self.root = root
        self.left = MAX_VALUES
        self.subject = subject
        self.subject_used = False

    def _resolve(self, schema: dict, depth: int) -> dict:
        for _ in range(MAX_DEPTH):
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                break
            node: object = self.root
            for part in ref[1:].split("/")[1:]:
                node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                return {}
            schema = node
        for key in ("anyOf", "oneOf", "allOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches and depth < MAX_DEPTH:
                pick = next((b for b in branches if isinstance(b, dict) and b.get("type") != "null"), branches[0])
                return self._resolve(pick, depth + 1) if isinstance(pick, dict) else {}
        return schema

    @staticmethod
    def _type(schema: dict) -> object:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None and "properties" in schema:
            return "object"
        if kind is None and "items" in schema:
            return "array"
        return kind

    def value(self, schema: object, key: str, depth: int) -> object:
        self.left -= 1
        if self.left < 0 or depth > MAX_DEPTH or not isinstance(schema, dict):
            return None
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        if "default" in schema:
            return schema["default"]
        examples = schema.get("examples")
        if isinstance(examples, list) and examples:
            return examples[0]
        kind = self._type(schema)
        if kind == "object":
            return self.object(schema, depth + 1)
        if kind == "array":
            low = schema.get("minItems")
            count = min(low, _MAX_ITEMS) if isinstance(low, int) and low > 1 else 1
            if schema.get("maxItems") == 0:
                count = 0
            return [self.value(schema.get("items", {}), key, depth + 1) for _ in range(count)]
        if kind in ("integer", "number"):
            return self._number(schema, kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema, key)

    @staticmethod
    def _number(schema: dict, integer: bool) -> object:
        low, high = schema.get("minimum"), schema.get("maximum")
        xlow = schema.get("exclusiveMinimum")
        value: float = 1 if integer else 1.5
        if isinstance(low, (int, float)):
            value = low
        elif isinstance(xlow, (int, float)):
            value = xlow + 1 if integer else xlow + 0.5
        if isinstance(high, (int, float)) and value > high:
            value = high
        return int(value) if integer else value

    def _string(self, schema: dict, key: str) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt]
        text = key or "sample"
        if not self.subject_used and self.subject:
            self.subject_used = True
            text = self.subject
        high = schema.get("maxLength")
        return text[:high] if isinstance(high, int) and high >= 0 else text

    def object(self, schema: dict, depth: int) -> dict:
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        required = schema.get("required")
        keys = [k for k in required if k in props] if isinstance(required, list) else list(props)
        return {k: self.value(props[k], k, depth) for k in keys if isinstance(k, str)}


def _arguments(params: dict, name: str, said: str, others: list[str]) -> str:
    """The arguments JSON for a call to `name` (OpenAI's compact form: no spaces)."""
    sampler = _Sampler(params, _subject(said, name, others))
    root = sampler._resolve(params, 0)
    found = root.get("properties")
    props: dict = found if isinstance(found, dict) else {}
    # Explicit `key=value` settings first, so that the subject goes to the first string left unset.
    preset: dict[str, object] = {}
    for key, sub in props.items():
        text = _given(said, key) if isinstance(sub, dict) else None
        if text is not None:
            ok, value = _coerce(text, _Sampler._type(sampler._resolve(sub, 0)))
            if ok:
                preset[key] = value
    args = {}
    required = root.get("required")
    keys = [k for k in required if k in props] if isinstance(required, list) else list(props)
    for key in keys:
        args[key] = preset[key] if key in preset else sampler.value(props[key], key, 1)
    for key, value in preset.items():
        args.setdefault(key, value)
    return orjson.dumps(args).decode()


# ---- the answer after a tool round trip ------------------------------------------------------------


def tool_result_text(body: dict) -> str | None:
    """Text that reports the tool results ending the conversation (None when the last message is no tool's)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "tool":
        return None
    names: dict[object, str] = {}
    results = []
    for m in reversed(msgs):
        if not isinstance(m, dict) or m.get("role") != "tool":
            if isinstance(m, dict) and isinstance(m.get("tool_calls"), list):
                for c in m["tool_calls"]:
                    fn = c.get("function") if isinstance(c, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                        names[c.get("id")] = fn["name"]
            break
        results.append(m)
    parts = []
    for m in reversed(results):
        content = _text(m.get("content"))
        if len(content) > MAX_QUOTED:
            content = content[:MAX_QUOTED] + "…"
        parts.append(f"The tool {names.get(m.get('tool_call_id'), 'call')} returned: {content}")
    return " ".join(p if p.endswith((".", "!", "?")) else p + "." for p in parts)
