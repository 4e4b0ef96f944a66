"""Anthropic Messages streams: the text is in `content_block_delta` events, one text stream per content block.

`text_delta` carries prose, `input_json_delta` a tool call's JSON input (source text:
escapes matter). A block's text is final at its `content_block_stop`, all of them at
`message_stop`; `message_delta` carries the usage and the stop reason.
"""

from __future__ import annotations

from fastgw.api.dialects import MESSAGES
from fastgw.policy.stream.core import Segment, TextKey
from fastgw.policy.stream.typed import TypedEventPolicy

__all__ = ["MessagesStreamPolicy"]


class MessagesStreamPolicy(TypedEventPolicy):
    """The output policies on an Anthropic Messages stream."""

    dialect = "messages"
    wire = MESSAGES

    __slots__ = ()

    def _event(self, kind: object, obj: dict, segs: list[Segment]) -> bool:
        if kind == "content_block_delta":
            d = obj.get("delta") or {}
            idx = obj.get("index", 0)
            if d.get("type") == "text_delta" and isinstance(d.get("text"), str):
                self._seg(TextKey(0, "text", idx), d["text"], 0, 0, segs)
            elif d.get("type") == "input_json_delta" and isinstance(d.get("partial_json"), str):
                self._seg(TextKey(0, "arguments", idx), d["partial_json"], 0, 0, segs)
        elif kind == "content_block_stop":
            self._settle_item(obj.get("index", 0))
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self._ctx.usage = usage
            reason = (obj.get("delta") or {}).get("stop_reason")
            if isinstance(reason, str):
                self._ctx.finish[0] = reason
        elif kind == "message_stop":
            self._finish_all()
        return False

    def _apply(self, obj: dict, seg: Segment, text: str) -> None:
        obj["delta"]["partial_json" if seg.text.key.field == "arguments" else "text"] = text
