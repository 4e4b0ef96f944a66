"""The dialects whose events are typed JSON objects (`"type": ...`): the Responses API and Anthropic Messages.

Each event is decoded whole (orjson) and read by its type; the object is kept with
the held event only when the event may be rewritten, so a change is applied without
decoding it again. A structured event (`push_chunk`) is encoded with its type as the
SSE `event` field, as these APIs send it.
"""

from __future__ import annotations

from abc import abstractmethod

from typing import Any, ClassVar

import orjson

from fastgw.policy.stream.core import StreamPolicy, unreadable
from fastgw.policy.stream.records import Held, Segment
from fastgw.proto.sse import SSEEvent, encode_event

__all__ = ["TypedEventPolicy", "parse_object"]


def parse_object(data: str | None) -> object:
    """The JSON value of an event's data when it is an object's text, else None; unparsable JSON raises."""
    if data and data[:1] == "{":
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise unreadable() from None
    return None


class TypedEventPolicy(StreamPolicy):
    """A typed-event dialect: each event decoded whole and read by its `type` (`_event`, per dialect)."""

    #: Events carry a `sequence_number` to continue (Responses).
    sequenced: ClassVar[bool] = False

    __slots__ = ()

    def push(self, ev: SSEEvent) -> None:
        self._take(ev, parse_object(ev.data))

    def push_chunk(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise unreadable()
        self._take(None, obj)

    def _take(self, ev: SSEEvent | None, obj: object) -> None:
        segs: list[Segment] = []
        whole = False
        seq = -1
        if isinstance(obj, dict):
            whole = self._event(obj.get("type"), obj, segs)
            if self.sequenced:
                s = obj.get("sequence_number")
                seq = s if isinstance(s, int) else -1
            # The object is kept only for an event that may be rewritten (or has no bytes yet).
            if self._ev_edited or self._ev_repeats is not None:
                self._queue.append(Held(ev, obj, segs, whole, seq, self._ev_edited, self._ev_repeats))
                self._ev_edited = False
                self._ev_repeats = None
            else:
                self._queue.append(Held(ev, obj if segs or whole or ev is None else None, segs, whole, seq))
        else:
            self._queue.append(Held(ev, None, segs))

    @abstractmethod
    def _event(self, kind: object, obj: dict, segs: list[Segment]) -> bool:
        """Find the event's text segments, settle what it finishes; True when it repeats whole texts."""

    def _encode(self, ev: SSEEvent | None, obj: dict) -> bytes:
        if ev is None:  # a structured event: its SSE `event` field is its type, as these APIs send it
            kind = obj.get("type")
            return encode_event(orjson.dumps(obj), event=kind if isinstance(kind, str) else None)
        return super()._encode(ev, obj)
