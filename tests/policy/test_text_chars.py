"""`text_chars`: the usage estimate's character count equals the length of every text `request_slots` yields."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.policy.textscan import request_slots, text_chars

_KEYS = st.sampled_from(["", "content", "text", "data", "type", "id", "role", "input", "result", "parameters",
                         "metadata", "name", "model", "arguments", "url"])
_STRINGS = st.sampled_from(["", "hello", "text", "tool_use", "image_generation_call", "data:image/png;base64,AAAA",
                            "mcp_tool_use", "héllo wörld"])
_JSON = st.recursive(_STRINGS | st.integers() | st.booleans() | st.none(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
                     max_leaves=30)


def _slots_chars(body: dict) -> int:
    return sum(len(c[k]) for c, k, _f, _i in request_slots(body))


def _outcome(count, body: dict) -> object:  # noqa: ANN001
    """The count, or the exception type both raise (an unhashable `type` next to an `input`: walk's own)."""
    try:
        return count(body)
    except TypeError as e:
        return type(e)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _JSON, max_size=6))
def test_text_chars_counts_what_request_slots_yields(body: dict) -> None:
    assert _outcome(text_chars, body) == _outcome(_slots_chars, body)


def test_text_chars_on_a_chat_request_with_tools_and_blobs() -> None:
    body = {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "describe"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "input": {"id": "kept", "q": "x"}}]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "metadata": {"role": "anything"}, "": "omitted"}
    assert text_chars(body) == _slots_chars(body) == len("describe" "kept" "x" "f" "object" "anything")
