"""OpenAI chat streams (`chat.completion.chunk`, and legacy completions' `text`): where their text is, and how
a changed chunk is written back.

Text streams are per (choice, field): `delta.content`, `delta.refusal`,
`delta.reasoning_content`, `text` (completions), each tool call's `function.arguments`
and `name`, the legacy `function_call`, every other string in the delta (`reasoning`,
`reasoning_details`, audio transcripts, fields yet unknown: the loose view), and the
logprobs tokens (`logprobs.content`/`refusal`, legacy `tokens`: a text stream of their
own, see `TokenRun`; dropped instead with `logprobs: drop`). A choice's texts are final
at its `finish_reason`, all of them at `[DONE]`. Chunks come as SSE events (an upstream that speaks OpenAI) or as
structured chunks (`push_chunk`: a translated provider's dicts, never encoded
before the policy has seen them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec
import orjson

from fastgw.api.dialects import CHAT
from fastgw.api.sse import DONE, drop_null_usage, drop_null_usage_text
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.stream.chat_view import (Choice, Chunk, Delta, LooseChoice, LooseChunk, PlainChoice, ToolCall,
                                            decode_chunk, decode_loose)
from fastgw.policy.stream.core import StreamPolicy, TextStream, unreadable
from fastgw.policy.stream.records import Held, Segment, TextKey
from fastgw.policy.textscan import SKIP, ScanPolicy
from fastgw.proto.sse import SSEEvent

__all__ = ["ChatStreamPolicy"]


#: The end-of-stream sentinel as an event (a structured stream's end is queued as this).
_DONE_EVENT: Final = SSEEvent("[DONE]", None, None, None, DONE)
#: Delta fields whose value must be a string (or null) in any view: another type is an unreadable chunk.
_STR_FIELDS: Final = ("content", "refusal", "reasoning_content")
# What every event uses from other modules, as Finals: a compiled module reads an imported (non-native) name from
# its globals dict on every use, a Final from a C static. (Not `decode_chunk` nor `_PlainReader`:
# tests/test_pipeline.py replaces them to make the policy fail.)
_Choice: Final = Choice
_TextKey: Final = TextKey
#: A Struct's fields as a tuple, in declaration order: one call where reading them one by one from compiled code
#: is a generic attribute lookup each (~160 instructions; a chat chunk's choice and delta took ten per event).
_fields: Final = msgspec.structs.astuple


class _Reader(Protocol):
    def read(self, data: str, /) -> PlainChoice | str | None: ...


def _plain_reader() -> Callable[[], _Reader] | None:
    """The common chunk's one-pass reader in C, one a stream (fastgw/policy/stream/_chunkc.c: why, in its head
    comment and PlainReader's), or None where it is not built: every chunk then takes the typed view, which reads
    the same values."""
    try:
        from fastgw.policy.stream import _chunkc
    except ImportError:
        return None
    return _chunkc.PlainReader


_PlainReader = _plain_reader()


class ChatStreamPolicy(StreamPolicy):
    """The output policies on an OpenAI chat (or completions) stream."""

    dialect = "chat"
    wire = CHAT
    collected = frozenset(("content", "text"))

    __slots__ = ("_plain", "_last", "_last_field", "_last_idx", "_read_plain")

    def __init__(self, policies: list[ScanPolicy], findings: Findings, ctx: RequestContext, buffered: bool = False,
                 judge: Callable[[RequestContext], None] | None = None) -> None:
        super().__init__(policies, findings, ctx, buffered, judge)
        #: A choice's plain text streams (`delta.content`, `refusal`, `reasoning_content`, legacy `text`) by field
        #: and choice index: nearly every event carries a piece of one, found here without a TextKey built and
        #: hashed per event (the policy's `_texts` still holds them all).
        self._plain: dict[str, dict[int, TextStream]] = {}
        #: The stream of the last plain piece, its field and choice: the next piece is nearly always of it.
        self._last: TextStream | None = None
        self._last_field = ""
        self._last_idx = -1
        #: The common chunk's reader, this stream's own: it reads again only what differs from its last chunk.
        reader = _PlainReader
        self._read_plain = reader().read if reader is not None else None

    def push(self, ev: SSEEvent) -> None:
        data = ev.data
        if data and data[0] == "{":  # (a char compared: a compiled startswith is a call into the str's methods)
            read_plain = self._read_plain
            if read_plain is not None:
                plain = read_plain(data)
                if plain is not None:
                    self._take_plain(plain, ev)
                    return
            chunk: Chunk | LooseChunk
            try:
                chunk = decode_chunk(data)
            except msgspec.ValidationError:
                chunk = self._loose(decode_loose, data)
            except msgspec.DecodeError:
                raise unreadable() from None
            self._take(chunk, ev, None)
            return
        if data == "[DONE]":
            self._finish_all()
        self._queue.append(Held(ev, None, []))

    def push_chunk(self, obj: Any) -> None:
        """Take one structured chunk; the policy owns the dict from now on and encodes it once, when released.
        The same typed view reads it as reads an SSE chunk, so both give the same answer."""
        chunk: Chunk | LooseChunk
        try:
            chunk = msgspec.convert(obj, Chunk)
        except msgspec.ValidationError:
            chunk = self._loose(lambda o: msgspec.convert(o, LooseChunk), obj)
        self._take(chunk, None, obj)

    @staticmethod
    def _loose(decode: Callable[[Any], LooseChunk], data: Any) -> LooseChunk:
        try:
            chunk = decode(data)
        except msgspec.DecodeError:  # (ValidationError is one)
            raise unreadable() from None
        for ch in chunk.choices or ():
            d = ch.delta
            if d is not None and any(d.get(f) is not None and not isinstance(d.get(f), str) for f in _STR_FIELDS):
                raise unreadable()
        return chunk

    def push_done(self) -> None:
        """The structured stream's end: `data: [DONE]` is queued behind the chunks before it."""
        self.push(_DONE_EVENT)

    def _take_plain(self, plain: PlainChoice | str, ev: SSEEvent) -> None:
        """`_take` of a chunk whose one choice is plain text and whose usage is null (`_chunkc.PlainReader`: a str
        is choice 0's content alone)."""
        segs: list[Segment] = []
        if self.strip_null_usage:
            ev = _without_null_usage(ev)
        if isinstance(plain, str):
            if plain:
                self._plain_piece(0, "content", plain, 0, segs)
        else:
            idx, text, content, refusal, reasoning, finish = plain
            self._texts_of(idx, text, content, refusal, reasoning, finish, segs)
        self.events += 1
        self._queue.append(Held(ev, None, segs))

    def _take(self, chunk: Chunk | LooseChunk, ev: SSEEvent | None, obj: dict | None) -> None:
        segs: list[Segment] = []
        edited = False
        # The view's fields are generic attribute lookups from compiled code (msgspec Structs): each read once.
        usage = chunk.usage
        choices: list[Any] | None = chunk.choices
        if self.strip_null_usage and usage is None and ev is not None:
            ev = _without_null_usage(ev)
        if choices:
            for pos, ch in enumerate(choices):
                if self._drop and ch.logprobs is not None:
                    if obj is None:
                        assert ev is not None and ev.data is not None
                        obj = orjson.loads(ev.data)
                    assert obj is not None
                    obj["choices"][pos]["logprobs"] = None
                    edited = True
                if type(ch) is _Choice:
                    self._choice_segs(ch, pos, segs)
                else:
                    self._loose_segs(ch, pos, segs)
        ctx = self._ctx
        if usage is not None:
            ctx.usage = usage
            if self.strip_usage and not choices:
                return  # the usage chunk we asked for on the client's behalf: it does not see it
        self.events += 1
        self._queue.append(Held(ev, obj, segs, edited=edited))

    def _choice_segs(self, ch: Choice, pos: int, segs: list[Segment]) -> None:
        idx: int
        d: Delta | None
        text: str | None
        finish: str | None
        lp: dict | None
        idx, d, text, finish, lp = _fields(ch)  # (chat_view's order; tests/policy/test_chat_view.py holds it)
        if d is None:
            self._texts_of(idx, text, None, None, None, None, segs, pos)
        else:
            content: str | None
            refusal: str | None
            reasoning: str | None
            tool_calls: list[ToolCall] | None
            _, content, refusal, reasoning, tool_calls = _fields(d)
            self._texts_of(idx, text, content, refusal, reasoning, None, segs, pos)
            if tool_calls:
                for tpos, tc in enumerate(tool_calls):
                    fn = tc.function
                    if fn is not None:
                        if fn.arguments:
                            self._seg(TextKey(idx, "arguments", tc.index), fn.arguments, pos, tpos, segs)
                        if fn.name:
                            self._seg(TextKey(idx, "tool_calls.function.name", tc.index), fn.name, pos, tpos,
                                      segs, ("choices", pos, "delta", "tool_calls", tpos, "function", "name"))
        if lp is not None and not self._drop:
            self._logprobs(lp, idx, pos, segs)
        if finish is not None:
            self._ctx.finish[idx] = finish
            self._settle_choice(idx)

    def _texts_of(self, idx: int, text: str | None, content: str | None, refusal: str | None,
                  reasoning: str | None, finish: str | None, segs: list[Segment], pos: int = 0) -> None:
        """A choice's plain text pieces (legacy `text`, then the delta's), then its end where `finish` is given."""
        if text:
            self._plain_piece(idx, "text", text, pos, segs)
        if content:
            self._plain_piece(idx, "content", content, pos, segs)
        if refusal:
            self._plain_piece(idx, "refusal", refusal, pos, segs)
        if reasoning:
            self._plain_piece(idx, "reasoning_content", reasoning, pos, segs)
        if finish is not None:
            self._ctx.finish[idx] = finish
            self._settle_choice(idx)

    def _plain_piece(self, idx: int, field: str, text: str, pos: int, segs: list[Segment]) -> None:
        """A piece of a choice's plain text field (`_seg` with the stream found in `_plain`)."""
        t = self._last
        if t is None or field != self._last_field or idx != self._last_idx:
            by_choice = self._plain.get(field)
            if by_choice is None:
                by_choice = self._plain[field] = {}
            t = by_choice.get(idx)
            if t is None:
                t = by_choice[idx] = self._text_for(_TextKey(idx, field))
            self._last, self._last_field, self._last_idx = t, field, idx
        self._piece(t, text, pos, -1, segs)

    def _loose_segs(self, ch: LooseChoice, pos: int, segs: list[Segment]) -> None:
        """A choice whose delta has fields the typed view does not know: every text in the delta, walked."""
        idx = ch.index
        if ch.text:
            self._seg(TextKey(idx, "text"), ch.text, pos, -1, segs)
        d = ch.delta
        if d:
            base = ("choices", pos, "delta")
            for k, v in d.items():
                if k == "tool_calls" and isinstance(v, list):
                    for tpos, tc in enumerate(v):
                        if isinstance(tc, dict):
                            tci = tc.get("index", tpos)
                            fn = tc.get("function")
                            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str) and fn["arguments"]:
                                self._seg(TextKey(idx, "arguments", tci), fn["arguments"], pos, tpos, segs)
                            rest = {x: y for x, y in tc.items() if x != "function"}
                            self._walk(rest, "tool_calls", idx, tci, 0, base + (k, tpos), segs)
                            if isinstance(fn, dict):
                                self._walk({x: y for x, y in fn.items() if x != "arguments"},
                                           "tool_calls.function", idx, tci, 0, base + (k, tpos, "function"), segs)
                elif k == "function_call" and isinstance(v, dict):  # legacy function calling
                    args = v.get("arguments")
                    if isinstance(args, str) and args:
                        self._seg(TextKey(idx, "arguments", "function_call"), args, pos, -1, segs,
                                  base + (k, "arguments"))
                    self._walk({x: y for x, y in v.items() if x != "arguments"}, k, idx, None, 0, base + (k,),
                               segs)
                elif isinstance(v, str):
                    if v and k not in SKIP:
                        self._seg(TextKey(idx, k), v, pos, -1, segs, None if k in _STR_FIELDS else base + (k,))
                elif isinstance(v, (dict, list)):
                    self._walk(v, k, idx, None, 0, base + (k,), segs)
        if not self._drop:
            lp = ch.logprobs
            if lp is not None:
                self._logprobs(lp, idx, pos, segs)
        if ch.finish_reason is not None:
            self._ctx.finish[idx] = ch.finish_reason
            self._settle_choice(idx)

    def _logprobs(self, lp: dict, idx: int, pos: int, segs: list[Segment]) -> None:
        """A choice's logprobs: chat `content`/`refusal` entries, or legacy completions `tokens`."""
        base = ("choices", pos, "logprobs")
        for key in ("content", "refusal"):
            entries = lp.get(key)
            if isinstance(entries, list):
                self._tokens(entries, idx, "logprobs." + key, None, 0, base + (key,), segs)
        toks = lp.get("tokens")
        if isinstance(toks, list):
            for i, tok in enumerate(toks):
                if isinstance(tok, str) and tok:
                    self._seg(TextKey(idx, "logprobs.tokens"), tok, pos, -1, segs, base + ("tokens", i))

    def _apply(self, obj: dict, seg: Segment, text: str) -> None:
        if seg.path is not None:
            super()._apply(obj, seg, text)
            path = seg.path
            if path[-2] == "tokens":  # a legacy completions token: its alternatives follow
                lp = obj["choices"][path[1]]["logprobs"]
                _legacy_top(lp, path[-1], text)
            return
        ch = obj["choices"][seg.choice_pos]
        field = seg.text.key.field
        if field == "text":
            ch["text"] = text
        elif field == "arguments":
            ch["delta"]["tool_calls"][seg.tool_pos]["function"]["arguments"] = text
        else:
            ch["delta"][field] = text


def _without_null_usage(ev: SSEEvent) -> SSEEvent:
    """The event without its chunk's `"usage": null` (the usage we asked for on the client's behalf: the other
    chunks' null goes too)."""
    data = ev.data
    if data is None:
        return ev
    out = drop_null_usage_text(data)
    return ev if len(out) == len(data) else ev.replace(out, drop_null_usage(ev.raw))


def _legacy_top(lp: object, i: int, text: str) -> None:
    """A changed legacy token: its `top_logprobs` alternatives become the changed token."""
    if not isinstance(lp, dict):
        return
    top = lp.get("top_logprobs")
    if isinstance(top, list) and i < len(top) and isinstance(top[i], dict):
        vals = lp.get("token_logprobs")
        v = vals[i] if isinstance(vals, list) and i < len(vals) else None
        top[i] = {text: v if v is not None else next(iter(top[i].values()), 0.0)}
