"""Which strings of a request or answer are text (`walk` in `fastgw.policy.textscan` yields them), and their
characters counted without building anything: the usage estimate every rate-limited request takes
(`fastgw.quota.prompt_estimate`). Apart from textscan so that it is compiled with the request path (mypyc)."""

from __future__ import annotations

from typing import Final

__all__ = ["SKIP", "JSON_VALUES", "TOOL_INPUT", "NOSKIP", "is_blob", "tool_input", "text_chars"]

#: Keys whose *string* values are identifiers, enums or opaque blobs, never text (a dict or list under such a
#: key is still walked). Every other string in a known container is scanned: new provider fields open no hole.
SKIP: Final = frozenset(("id", "type", "role", "index", "object", "model", "status", "call_id", "tool_call_id",
                         "tool_use_id", "item_id", "file_id", "response_id", "previous_response_id", "signature",
                         "encrypted_content", "media_type", "format", "detail", "finish_reason", "stop_reason",
                         "file_data", "b64_json", "partial_image_b64", "container_id", "approval_request_id",
                         "service_tier", "reasoning_effort", "truncation", "verbosity", "stop_sequence"))
#: Keys whose value is arbitrary JSON chosen by a caller or a model (tool inputs, schemas, metadata): every
#: string inside is scanned, whatever its key.
JSON_VALUES: Final = frozenset(("parameters", "input_schema", "schema", "metadata", "properties"))
TOOL_INPUT: Final = frozenset(("tool_use", "server_tool_use", "mcp_tool_use"))
NOSKIP: Final[frozenset[str]] = frozenset()


def is_blob(node: dict, key: str, value: str) -> bool:
    """An opaque blob, not text: base64 `data` (images, audio, PDFs, encrypted reasoning; a `text` document's
    `data` is text), an image generation `result`, a base64 data URL."""
    if key == "data":
        return node.get("type") != "text"
    if key == "result" and node.get("type") == "image_generation_call":
        return True
    return value[:5] == "data:" and ";base64," in value[:128]


def tool_input(node: dict) -> bool:
    """The object is a tool call whose `input` holds the call's JSON arguments (any `type` a client sends is
    looked at: a list or an object there is no tool call, and no error)."""
    t = node.get("type")
    return isinstance(t, str) and t in TOOL_INPUT


def text_chars(node: object, skip: frozenset[str] = SKIP) -> int:
    """The characters of every text `walk(node, ...)` yields, summed without building its slots (the usage
    estimate needs only their length: a third of the cost of summing `request_slots`)."""
    n = 0
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "":
                continue  # walk's `omit`
            if isinstance(v, str):
                if v and (k not in skip) and not is_blob(node, k, v):
                    n += len(v)
            elif isinstance(v, (dict, list)):
                sub = NOSKIP if (k in JSON_VALUES or (k == "input" and tool_input(node))) \
                    else skip
                n += text_chars(v, sub)
    elif isinstance(node, list):
        for v in node:
            if isinstance(v, str):
                n += len(v)
            elif isinstance(v, (dict, list)):
                n += text_chars(v, skip)
    return n
