"""The chat chunk view's field order: the chat stream policy unpacks a choice's and a delta's fields by position
(`msgspec.structs.astuple`, one call instead of a generic attribute lookup per field), so a field added, removed or
moved in `chat_view.py` must move the unpacking with it."""

from __future__ import annotations

import msgspec

from fastgw.policy.stream.chat_view import Choice, Delta, decode_chunk


def test_the_policy_unpacks_the_fields_in_declaration_order() -> None:
    assert Choice.__struct_fields__ == ("index", "delta", "text", "finish_reason", "logprobs")
    assert Delta.__struct_fields__ == ("role", "content", "refusal", "reasoning_content", "tool_calls")
    chunk = decode_chunk('{"choices":[{"index":2,"delta":{"role":"assistant","content":"hi","refusal":"no",'
                         '"reasoning_content":"why"},"text":"t","finish_reason":"stop","logprobs":{"content":[]}}]}')
    assert chunk.choices is not None
    ch = chunk.choices[0]
    assert msgspec.structs.astuple(ch)[0::2] == (2, "t", {"content": []})
    assert ch.delta is not None
    assert msgspec.structs.astuple(ch.delta)[:4] == ("assistant", "hi", "no", "why")
