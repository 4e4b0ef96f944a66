"""OpenAI Responses API streams: the text is in `*.delta` events and in output items; events that repeat whole
texts carry them as the client got them.

Text streams are per (field, item_id, part): every `response.*.delta` event whose `delta` is a string
(`output_text`, `refusal`, `function_call_arguments`, `mcp_call_arguments`, `reasoning_summary_text`,
`reasoning_text`, `custom_tool_call_input`, `code_interpreter_call_code`, `audio.transcript`, and any new
one), the logprobs tokens of `output_text` deltas, and every string of the output items that no delta
streams (`mcp_call.output`, `web_search_call.action`, `code_interpreter_call.outputs`, `file_search_call`
results, `mcp_list_tools` descriptions, annotations, names...): the first event that carries such a text
(`output_item.added`/`.done`, `content_part.*`, `response.completed`) feeds it whole. An item's texts are
final at its `.done` events, all texts at `response.completed` / `.incomplete` / `.failed`. A text an event
repeats (`.done` events, `output_item.done`, `response.completed`) is, once any text was changed, rewritten
from the text the client received, never the original. The last `sequence_number` sent is kept so an error
event we add continues the sequence.
"""

from __future__ import annotations

from typing import Any, Final

from fastgw.api.dialects import RESPONSES
from fastgw.policy.stream.core import _JSON_VALUES
from fastgw.policy.stream.records import Held, Segment, TextKey
from fastgw.policy.stream.typed import TypedEventPolicy
from fastgw.policy.textkeys import NOSKIP
from fastgw.policy.textscan import SKIP, is_blob, set_token

__all__ = ["ResponsesStreamPolicy"]

_DELTAS: Final = {"response.output_text.delta": "text", "response.refusal.delta": "refusal",
                  "response.function_call_arguments.delta": "arguments",
                  "response.mcp_call_arguments.delta": "arguments"}
#: Delta events that carry no text (base64 audio).
_BLOB_DELTAS: Final = frozenset(("response.audio.delta",))
#: Events that end the response and repeat every text.
_RESPONSE_DONE: Final = frozenset(("response.completed", "response.incomplete", "response.failed"))
#: The field of an item that a delta stream carries, per item type (the rest are whole texts).
_ITEM_STREAMED: Final = {("mcp_call", "arguments"): "arguments", ("function_call", "arguments"): "arguments",
                         ("custom_tool_call", "input"): "custom_tool_call_input",
                         ("code_interpreter_call", "code"): "code_interpreter_call_code"}
#: Text fields continued by deltas: a piece of them in an `.added` event is not final yet.
_STREAMED_FIELDS: Final = frozenset(("text", "refusal", "arguments", "custom_tool_call_input",
                                     "code_interpreter_call_code", "reasoning_summary_text", "reasoning_text",
                                     "logprobs", "audio.transcript"))
#: The whole-text field a `.done` event of a delta stream repeats.
_DONE_TEXT: Final = ("text", "refusal", "arguments", "input", "code", "transcript")


def _field(kind: str) -> str:
    """The text stream field of a `response.X.delta` / `response.X.done` event: its X (named as before for
    the first ones)."""
    f = _DELTAS.get(kind)
    if f is not None:
        return f
    stem = kind[len("response."):] if kind.startswith("response.") else kind
    stem = stem.rsplit(".", 1)[0]
    return _DELTAS.get(f"response.{stem}.delta", stem)


class ResponsesStreamPolicy(TypedEventPolicy):
    """The output policies on a Responses API stream."""

    dialect = "responses"
    wire = RESPONSES
    assembles = True
    sequenced = True

    __slots__ = ()

    def _event(self, kind: object, obj: dict, segs: list[Segment]) -> bool:
        if not isinstance(kind, str):
            return False
        item = obj.get("item_id")
        if kind.endswith(".delta"):
            delta = obj.get("delta")
            if isinstance(delta, str) and kind not in _BLOB_DELTAS:
                field = _field(kind)
                part = self._part_of(obj, field)
                self._seg(TextKey(0, field, item, part), delta, 0, 0, segs, ("delta",))
            lp = obj.get("logprobs")
            if isinstance(lp, list) and lp:
                if self._drop:
                    obj["logprobs"] = []
                    self._ev_edited = True
                else:
                    self._tokens(lp, 0, "logprobs", item, obj.get("content_index", 0), ("logprobs",), segs)
            return False
        if kind in _RESPONSE_DONE or kind.endswith(".done") or kind.endswith(".added") \
                or kind in ("response.created", "response.in_progress", "response.queued"):
            repeats: list = []
            first = len(segs)
            done = kind.endswith(".done")
            if done and item is not None:
                self._settle_item(item)  # the streams it repeats are final: they are repeats now
            if done and not kind.endswith((".output_item.done", ".content_part.done", "_part.done")):
                field = _field(kind)
                part = self._part_of(obj, field)
                for name in _DONE_TEXT:
                    if isinstance(obj.get(name), str) and obj[name]:
                        self._text(TextKey(0, field, item, part), obj[name], (name,), segs, repeats)
                lp = obj.get("logprobs")
                if isinstance(lp, list) and lp:
                    self._logprob_list(obj, "logprobs", TextKey(0, "logprobs", item, obj.get("content_index", 0)),
                                       ("logprobs",), segs, repeats)
            if isinstance(obj.get("item"), dict):
                self._item(obj["item"], ("item",), segs, repeats)
            part = obj.get("part")
            if isinstance(part, dict):
                idx = obj.get("summary_index") if "summary_index" in obj else obj.get("content_index", 0)
                lk = "summary" if "summary_index" in obj else "content"
                self._part(part, item, idx, lk, ("part",), segs, repeats)
            ann = obj.get("annotation")
            if isinstance(ann, dict):
                self._walk(ann, "annotations", 0, item, obj.get("content_index", 0), ("annotation",), segs,
                           repeats=repeats)
            resp = obj.get("response")
            if isinstance(resp, dict):
                out = resp.get("output")
                if isinstance(out, list):
                    for i, it in enumerate(out):
                        if isinstance(it, dict):
                            self._item(it, ("response", "output", i), segs, repeats)
                if isinstance(resp.get("output_text"), str) and resp["output_text"]:
                    self._text(TextKey(0, "output_text", None, 0), resp["output_text"], ("response", "output_text"),
                               segs, repeats)
            # Whole texts met here for the first time are final at once (unless deltas may still continue them).
            for seg in segs[first:]:
                if seg.text.key.field not in _STREAMED_FIELDS:
                    self._settle(seg.text, final=True)
            if repeats:
                self._ev_repeats = repeats
            if kind in _RESPONSE_DONE:
                self._finish_all()
                return True
            if done:
                if item is not None:
                    self._settle_item(item)
                return True
            return bool(repeats)
        return False

    @staticmethod
    def _part_of(obj: dict, field: str) -> object:
        if field == "arguments":
            return 0
        if "summary_index" in obj:
            return obj["summary_index"]
        return obj.get("content_index", 0)

    def _item(self, it: dict, path: tuple, segs: list[Segment], repeats: list) -> None:
        """An output item's texts: its content or summary parts, the field its deltas stream, and every other
        string (whole texts) but identifiers and blobs."""
        iid = it.get("id")
        typ = it.get("type")
        for k, v in it.items():
            if k in ("content", "summary") and isinstance(v, list):
                for ci, part in enumerate(v):
                    if isinstance(part, dict):
                        self._part(part, iid, ci, k, path + (k, ci), segs, repeats)
            elif isinstance(v, str):
                if v and k not in SKIP and not is_blob(it, k, v):
                    field = _ITEM_STREAMED.get((typ, k), k) if isinstance(typ, str) else k
                    self._text(TextKey(0, field, iid, 0), v, path + (k,), segs, repeats)
            elif isinstance(v, (dict, list)):
                self._walk(v, k, 0, iid, 0, path + (k,), segs, NOSKIP if k in _JSON_VALUES else SKIP, repeats)

    def _part(self, part: dict, iid: object, ci: object, listkey: str, path: tuple, segs: list[Segment],
              repeats: list) -> None:
        """A content part (output_text, refusal, reasoning_text) or a reasoning summary part."""
        ptype = part.get("type")
        for k, v in part.items():
            if k == "logprobs" and isinstance(v, list):
                if v:
                    self._logprob_list(part, k, TextKey(0, "logprobs", iid, ci), path + (k,), segs, repeats)
            elif isinstance(v, str):
                if v and k not in SKIP and not is_blob(part, k, v):
                    if k == "refusal":
                        field = "refusal"
                    elif k != "text":
                        field = f"{listkey}.{k}"
                    elif listkey == "summary":
                        field = "reasoning_summary_text"
                    elif ptype == "reasoning_text":
                        field = "reasoning_text"
                    else:
                        field = "text"
                    self._text(TextKey(0, field, iid, ci), v, path + (k,), segs, repeats)
            elif isinstance(v, (dict, list)):
                self._walk(v, f"{listkey}.{k}", 0, iid, ci, path + (k,), segs, repeats=repeats)

    def _logprob_list(self, owner: dict, k: str, key: TextKey, path: tuple, segs: list[Segment],
                      repeats: list) -> None:
        if self._drop:
            owner[k] = []
            self._ev_edited = True
        elif self._text_of(key) is not None:
            repeats.append((path, key))
        else:
            self._tokens(owner[k], 0, key.field, key.item, key.part, path, segs)

    # ---- events that repeat whole texts ------------------------------------------------------------
    def _render_whole(self, h: Held, changes: list[tuple[Segment, bytes]]) -> bytes:
        """Events that repeat whole texts carry the text as the client received it, never the original."""
        if not changes and not h.edited and not (self._rewritten and h.repeats):
            return self._untouched(h)  # nothing changed: the whole texts it repeats are the originals
        obj = h.obj
        assert obj is not None
        for seg, new in changes:
            self._apply(obj, seg, new.decode())
        if self._rewritten and h.repeats:
            assert self._assembled is not None
            for path, key in h.repeats:
                parts = self._assembled.get(key)
                if parts is None:
                    continue
                node: Any = obj
                for p in path[:-1]:
                    node = node[p]
                last = path[-1]
                if key.field == "logprobs":
                    entries = node[last]
                    toks = [e for e in entries if isinstance(e, dict) and isinstance(e.get("token"), str)
                            and e["token"]]
                    if len(toks) != len(parts):
                        node[last] = []  # cannot be matched to what was released: the tokens are dropped
                    else:
                        for e, t in zip(toks, parts):
                            if e["token"] != t:
                                set_token(e, t)
                else:
                    node[last] = "".join(parts)
        return self._encode(h.ev, obj)
