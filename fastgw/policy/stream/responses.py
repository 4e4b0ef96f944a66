"""OpenAI Responses API streams: the text is in `*.delta` events, whole-text events repeat it as the client got it.

Text streams are per (field, item_id, content_index): `response.output_text.delta`,
`response.refusal.delta` and `response.function_call_arguments.delta`. An item's texts
are final at its `.done` events, all texts at `response.completed` / `.incomplete` /
`.failed`. Those events repeat whole texts: once any text was changed they are
rewritten from the text the client received, never the original. The last
`sequence_number` sent is kept so an error event we add continues the sequence.
"""

from __future__ import annotations

from fastgw.api.dialects import RESPONSES
from fastgw.policy.stream.core import Held, Segment, TextKey
from fastgw.policy.stream.typed import TypedEventPolicy

__all__ = ["ResponsesStreamPolicy"]

_DELTAS = {"response.output_text.delta": "text", "response.refusal.delta": "refusal",
           "response.function_call_arguments.delta": "arguments"}
#: Events that finish an item's texts and repeat them whole.
_ITEM_DONE = frozenset(("response.output_text.done", "response.refusal.done", "response.function_call_arguments.done",
                        "response.content_part.done", "response.output_item.done"))
#: Events that end the response and repeat every text.
_RESPONSE_DONE = frozenset(("response.completed", "response.incomplete", "response.failed"))


class ResponsesStreamPolicy(TypedEventPolicy):
    """The output policies on a Responses API stream."""

    dialect = "responses"
    wire = RESPONSES
    assembles = True
    sequenced = True

    __slots__ = ()

    def _event(self, kind: object, obj: dict, segs: list[Segment]) -> bool:
        item = obj.get("item_id")
        field = _DELTAS.get(kind) if isinstance(kind, str) else None
        if field is not None:
            delta = obj.get("delta")
            if isinstance(delta, str):
                part = 0 if field == "arguments" else obj.get("content_index", 0)
                self._seg(TextKey(0, field, item, part), delta, 0, 0, segs)
        elif kind in _ITEM_DONE:
            self._settle_item(item)
            return True
        elif kind in _RESPONSE_DONE:
            self._finish_all()
            return True
        return False

    def _apply(self, obj: dict, seg: Segment, text: str) -> None:
        obj["delta"] = text

    # ---- events that repeat whole texts ------------------------------------------------------------
    def _render_whole(self, h: Held) -> bytes:
        """Events that repeat whole texts carry the text as the client received it, never the original."""
        if not self._rewritten:
            return self._untouched(h)  # no text was changed: the whole texts it repeats are the originals
        obj = h.obj
        assert obj is not None
        kind = obj.get("type")
        iid = obj.get("item_id")
        if kind == "response.output_text.done":
            self._put(obj, "text", self._text_of("text", iid, obj.get("content_index", 0)))
        elif kind == "response.refusal.done":
            self._put(obj, "refusal", self._text_of("refusal", iid, obj.get("content_index", 0)))
        elif kind == "response.function_call_arguments.done":
            self._put(obj, "arguments", self._text_of("arguments", iid, 0))
        elif kind == "response.content_part.done" and isinstance(obj.get("part"), dict):
            self._fix_item({"id": iid, "content": [None] * obj.get("content_index", 0) + [obj["part"]]})
        elif kind == "response.output_item.done" and isinstance(obj.get("item"), dict):
            self._fix_item(obj["item"])
        elif isinstance(obj.get("response"), dict):
            for it in obj["response"].get("output") or []:
                if isinstance(it, dict):
                    self._fix_item(it)
        return self._encode(h.ev, obj)

    @staticmethod
    def _put(obj: dict, name: str, text: str | None) -> None:
        if text is not None:
            obj[name] = text

    def _text_of(self, field: str, item: object, part: object) -> str | None:
        """The released text of one stream, or None when the stream never carried text."""
        assert self._assembled is not None
        parts = self._assembled.get(TextKey(0, field, item, part))
        return "".join(parts) if parts is not None else None

    def _fix_item(self, it: dict) -> None:
        """An output item (message or function call) with its texts as released."""
        iid = it.get("id")
        if it.get("type") == "function_call":
            self._put(it, "arguments", self._text_of("arguments", iid, 0))
        for ci, part in enumerate(it.get("content") or []):
            if isinstance(part, dict):
                field = "text" if part.get("type") == "output_text" else "refusal"
                self._put(part, field, self._text_of(field, iid, ci))
