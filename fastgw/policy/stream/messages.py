"""Anthropic Messages streams: the text is in content blocks, one text stream per (content block, field).

`content_block_start` carries a block whole or its start: server-tool results
(`web_search_tool_result`, `web_fetch_tool_result`, `code_execution_tool_result`, `mcp_tool_result`...)
arrive whole there, `server_tool_use`/`mcp_tool_use` inputs, a text or thinking block's first text. Then
`content_block_delta`: `text_delta` (prose), `input_json_delta` (a tool call's JSON input: source text,
escapes matter), `thinking_delta`, `citations_delta`, and any delta type yet unknown (every string in it but
identifiers and signatures is text). A block's texts are final at its `content_block_stop`, all of them at
`message_stop`; `message_delta` carries the usage and the stop reason.
"""

from __future__ import annotations

from fastgw.api.dialects import MESSAGES
from fastgw.policy.stream.records import Segment, TextKey
from fastgw.policy.stream.typed import TypedEventPolicy

__all__ = ["MessagesStreamPolicy"]


class MessagesStreamPolicy(TypedEventPolicy):
    """The output policies on an Anthropic Messages stream."""

    dialect = "messages"
    wire = MESSAGES

    __slots__ = ()

    def _event(self, kind: object, obj: dict, segs: list[Segment]) -> bool:
        if kind == "content_block_delta":
            d = obj.get("delta")
            idx = obj.get("index", 0)
            if not isinstance(d, dict):
                return False
            dt = d.get("type")
            if dt == "text_delta" and isinstance(d.get("text"), str):
                if d["text"]:
                    self._seg(TextKey(0, "text", idx), d["text"], 0, 0, segs, ("delta", "text"))
            elif dt == "input_json_delta" and isinstance(d.get("partial_json"), str):
                if d["partial_json"]:
                    self._seg(TextKey(0, "arguments", idx), d["partial_json"], 0, 0, segs, ("delta", "partial_json"))
            elif dt == "citations_delta":
                self._walk(d.get("citation"), "citations", 0, idx, 0, ("delta", "citation"), segs)
            else:  # thinking_delta ("thinking"), and any other: its strings (not signatures) are text
                self._walk(d, "", 0, idx, 0, ("delta",), segs)
        elif kind == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict):
                idx = obj.get("index", 0)
                for k, v in block.items():
                    if k == "input" and isinstance(v, (dict, list)) and block.get("type") in ("tool_use",
                                                                                             "server_tool_use",
                                                                                             "mcp_tool_use"):
                        self._walk(v, "input", 0, idx, 0, ("content_block", k), segs, frozenset())
                    elif k == "text" and isinstance(v, str):
                        if v:  # continued by text_deltas: the same stream
                            self._seg(TextKey(0, "text", idx), v, 0, 0, segs, ("content_block", k))
                    else:
                        self._walk({k: v}, "", 0, idx, 0, ("content_block",), segs)
        elif kind == "message_start":
            msg = obj.get("message")
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                for i, block in enumerate(content):
                    if isinstance(block, dict):
                        self._walk(block, "", 0, ("start", i), 0, ("message", "content", i), segs)
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
