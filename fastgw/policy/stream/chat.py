"""OpenAI chat streams (`chat.completion.chunk`, and legacy completions' `text`): where their text is, and how
a changed chunk is written back.

Text streams are per (choice, field): `delta.content`, `delta.refusal`,
`delta.reasoning_content`, `text` (completions) and each tool call's
`function.arguments`. A choice's texts are final at its `finish_reason`, all of them
at `[DONE]`. Chunks come as SSE events (an upstream that speaks OpenAI) or as
structured chunks (`push_chunk`: a translated provider's dicts, never encoded
before the policy has seen them).
"""

from __future__ import annotations

import msgspec

from fastgw.api.dialects import CHAT
from fastgw.api.sse import DONE
from fastgw.policy.stream.core import Held, Segment, StreamPolicy, TextKey, unreadable
from fastgw.proto.sse import SSEEvent

__all__ = ["ChatStreamPolicy"]


# Typed view of a chunk: only the fields we read (msgspec skips everything else without building it).
class _Fn(msgspec.Struct):
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    function: _Fn | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: dict | None = None


_decode = msgspec.json.Decoder(_Chunk).decode
#: The end-of-stream sentinel as an event (a structured stream's end is queued as this).
_DONE_EVENT = SSEEvent("[DONE]", None, None, None, DONE)


class ChatStreamPolicy(StreamPolicy):
    """The output policies on an OpenAI chat (or completions) stream."""

    dialect = "chat"
    wire = CHAT
    collected = frozenset(("content", "text"))

    __slots__ = ()

    def push(self, ev: SSEEvent) -> None:
        data = ev.data
        if data is not None and data[:1] == "{":
            try:
                chunk = _decode(data)
            except msgspec.DecodeError:
                raise unreadable() from None
            self._take(chunk, ev, None)
            return
        if data == "[DONE]":
            self._finish_all()
        self._queue.append(Held(ev, None, []))

    def push_chunk(self, obj: dict) -> None:
        """Take one structured chunk; the policy owns the dict from now on and encodes it once, when released.
        The same typed view reads it as reads an SSE chunk, so both give the same answer."""
        try:
            chunk = msgspec.convert(obj, _Chunk)
        except msgspec.ValidationError:
            raise unreadable() from None
        self._take(chunk, None, obj)

    def push_done(self) -> None:
        """The structured stream's end: `data: [DONE]` is queued behind the chunks before it."""
        self.push(_DONE_EVENT)

    def _take(self, chunk: _Chunk, ev: SSEEvent | None, obj: dict | None) -> None:
        segs: list[Segment] = []
        if chunk.choices:
            for pos, ch in enumerate(chunk.choices):
                self._choice_segs(ch, pos, segs)
        ctx = self._ctx
        if chunk.usage is not None:
            ctx.usage = chunk.usage
            if self.strip_usage and not chunk.choices:
                return  # the usage chunk we asked for on the client's behalf: it does not see it
        ctx.events += 1
        self._queue.append(Held(ev, obj, segs))

    def _choice_segs(self, ch: _Choice, pos: int, segs: list[Segment]) -> None:
        idx = ch.index
        if ch.text:
            self._seg(TextKey(idx, "text"), ch.text, pos, -1, segs)
        d = ch.delta
        if d is not None:
            if d.content:
                self._seg(TextKey(idx, "content"), d.content, pos, -1, segs)
            if d.refusal:
                self._seg(TextKey(idx, "refusal"), d.refusal, pos, -1, segs)
            if d.reasoning_content:
                self._seg(TextKey(idx, "reasoning_content"), d.reasoning_content, pos, -1, segs)
            if d.tool_calls:
                for tpos, tc in enumerate(d.tool_calls):
                    if tc.function is not None and tc.function.arguments:
                        self._seg(TextKey(idx, "arguments", tc.index), tc.function.arguments, pos, tpos, segs)
        if ch.finish_reason is not None:
            self._ctx.finish[idx] = ch.finish_reason
            self._settle_choice(idx)

    def _apply(self, obj: dict, seg: Segment, text: str) -> None:
        ch = obj["choices"][seg.choice_pos]
        field = seg.text.key.field
        if field == "text":
            ch["text"] = text
        elif field == "arguments":
            ch["delta"]["tool_calls"][seg.tool_pos]["function"]["arguments"] = text
        else:
            ch["delta"][field] = text
