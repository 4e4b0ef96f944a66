"""The typed view of an OpenAI chat chunk the chat stream policy reads (`fastgw.policy.stream.chat`), apart from
the policy because a Struct class cannot be built inside a module mypyc compiles."""

from __future__ import annotations

import msgspec

__all__ = ["Fn", "ToolCall", "Delta", "Choice", "Chunk", "LooseChoice", "LooseChunk", "PlainChoice", "decode_chunk",
           "decode_loose"]


# Typed view of a chunk: only the fields we read (msgspec skips everything else without building it). The delta
# and its tool calls forbid unknown fields: a chunk with a field this view does not know (a provider's reasoning
# variant, a legacy function_call, anything new) takes the loose view, whose delta is walked whole, so an unknown
# field is scanned as text, never skipped. Not tracked by the GC (`gc=False`: decoded JSON holds no cycles), which
# takes ~8 % off each chunk's decoding. The chat policy unpacks a Choice's and a Delta's fields by position:
# tests/policy/test_chat_view.py holds their order.
class Fn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    arguments: str | None = None
    name: str | None = None


class ToolCall(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    index: int = 0
    id: str | None = None
    type: str | None = None
    function: Fn | None = None


class Delta(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: Delta | None = None
    text: str | None = None
    finish_reason: str | None = None
    logprobs: dict | None = None


class Chunk(msgspec.Struct, gc=False):
    choices: list[Choice] | None = None
    usage: dict | None = None


# The loose view: the delta as a dict (walked: every string in it is text but identifiers).
class LooseChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: dict | None = None
    text: str | None = None
    finish_reason: str | None = None
    logprobs: dict | None = None


class LooseChunk(msgspec.Struct, gc=False):
    choices: list[LooseChoice] | None = None
    usage: dict | None = None


decode_chunk = msgspec.json.Decoder(Chunk).decode
decode_loose = msgspec.json.Decoder(LooseChunk).decode


#: (index, text, content, refusal, reasoning_content, finish_reason) of a chunk's one plain-text choice, as the C
#: reader of the common chunk returns it (fastgw/policy/stream/_chunkc.c).
PlainChoice = tuple[int, str | None, str | None, str | None, str | None, str | None]
