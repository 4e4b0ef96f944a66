"""The records the output stream policy keeps per text and per event (`fastgw.policy.stream.core`).

Compiled with mypyc with the policy: `Segment` and `Held` are native classes, so the policy reads their fields
as C struct members and builds them without a Python-level call (as msgspec Structs, each field read from
compiled code was a generic attribute lookup: a redacted stream cost 7.6 % more instructions, bench/RESULTS.md).
`TextKey` stays a frozen msgspec Struct (a dict key, hashed and compared in C), in
`fastgw.policy.stream.textkey`: a Struct with an `object` field cannot be built in a compiled module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgw.policy.stream.textkey import TextKey
from fastgw.proto.sse import SSEEvent

if TYPE_CHECKING:
    from fastgw.policy.stream.core import TextStream

__all__ = ["TextKey", "Segment", "Held"]


class Segment:
    """One event's piece of one text stream: bytes [start, end) of the stream."""

    __slots__ = ("text", "start", "end", "data", "value", "choice_pos", "tool_pos", "escapes", "path")

    def __init__(self, text: TextStream, start: int, end: int, data: bytes, value: str, choice_pos: int,
                 tool_pos: int, escapes: int | None, path: tuple | None = None) -> None:
        self.text = text
        self.start = start
        self.end = end
        #: The piece as UTF-8 (what is scanned and redacted) and as the event's str (the released text when no
        #: policy changed it: no decoding of its bytes again).
        self.data = data
        self.value = value
        #: Position of its choice in the event's `choices` (chat): where a changed text goes back.
        self.choice_pos = choice_pos
        #: Position of its tool call in the delta's `tool_calls` (chat), -1 when none.
        self.tool_pos = tool_pos
        #: JSON source (arguments): the backslashes ending the stream's text before it; None for prose.
        self.escapes = escapes
        #: Where the text sits in the event object (keys and list positions from its root), when the dialect
        #: says so this way (every field but the chat fast path's); a logprobs `token` fixes its siblings too.
        self.path = path


class Held:
    """An event in the hold queue."""

    __slots__ = ("ev", "obj", "segs", "whole", "seq", "edited", "repeats")

    def __init__(self, ev: SSEEvent | None, obj: dict | None, segs: list[Segment], whole: bool = False,
                 seq: int = -1, edited: bool = False, repeats: list | None = None) -> None:
        #: As the upstream sent it; None for a structured chunk (encoded when released).
        self.ev = ev
        #: The event as an object, when one is at hand (a structured chunk; a Responses or Messages event that
        #: may be rewritten): changes apply to it without decoding the event again.
        self.obj = obj
        self.segs = segs
        #: The event repeats whole texts (Responses `.done`, `response.completed`): rewritten at release.
        self.whole = whole
        #: Its Responses sequence_number (-1: none).
        self.seq = seq
        #: The object was changed already (logprobs dropped): written back even when no text changes.
        self.edited = edited
        #: (path, text key) of the whole texts a Responses event repeats (rewritten as released).
        self.repeats = repeats
