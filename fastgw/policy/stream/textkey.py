"""Which text of an answer a stream policy's text stream carries (`fastgw.policy.stream.records` re-exports it)."""

from __future__ import annotations

import msgspec

__all__ = ["TextKey"]


class TextKey(msgspec.Struct, frozen=True, gc=False):
    """Which text a stream carries, named the same way in every dialect."""

    #: Chat choice index (0 in the Responses and Messages dialects: they carry one answer).
    choice: int
    #: "content", "refusal", "reasoning_content", "text", or "arguments" (tool-call JSON source).
    field: str
    #: What it belongs to: a chat tool call's index, a Responses item_id, a Messages content block index.
    item: object = None
    #: Responses content_index.
    part: object = 0
