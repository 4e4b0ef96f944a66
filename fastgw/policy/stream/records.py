"""The records the output stream policy keeps per text and per event, as msgspec Structs: one of each is built
per event (a Struct ~4x cheaper than a slotted class in CPython), and a Struct class cannot be built inside a
module mypyc compiles, so they live here, apart from the policy (`fastgw.policy.stream.core`) that uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fastgw.proto.sse import SSEEvent

if TYPE_CHECKING:
    from fastgw.policy.stream.core import TextStream

__all__ = ["TextKey", "Segment", "Held"]


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


class Segment(msgspec.Struct, gc=False):
    """One event's piece of one text stream: bytes [start, end) of the stream."""

    text: TextStream
    start: int
    end: int
    data: bytes
    #: Position of its choice in the event's `choices` (chat): where a changed text goes back.
    choice_pos: int
    #: Position of its tool call in the delta's `tool_calls` (chat), -1 when none.
    tool_pos: int
    #: JSON source (arguments): the backslashes ending the stream's text before it; None for prose.
    escapes: int | None
    #: Where the text sits in the event object (keys and list positions from its root), when the dialect
    #: says so this way (every field but the chat fast path's); a logprobs `token` fixes its siblings too.
    path: tuple | None = None


class Held(msgspec.Struct, gc=False):
    """An event in the hold queue."""

    #: As the upstream sent it; None for a structured chunk (encoded when released).
    ev: SSEEvent | None
    #: The event as an object, when one is at hand (a structured chunk; a Responses or Messages event that
    #: may be rewritten): changes apply to it without decoding the event again.
    obj: dict | None
    segs: list[Segment]
    #: The event repeats whole texts (Responses `.done`, `response.completed`): rewritten at release.
    whole: bool = False
    #: Its Responses sequence_number (-1: none).
    seq: int = -1
    #: The object was changed already (logprobs dropped): written back even when no text changes.
    edited: bool = False
    #: (path, text key) of the whole texts a Responses event repeats (rewritten as released).
    repeats: list | None = None
