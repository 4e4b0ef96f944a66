"""Output policies on a streamed answer: scan each event's text once per policy, hold only what could still be
a match, release whole events, re-encode only those a policy changed.

Text streams are per (choice, field): `delta.content`, `delta.refusal`,
`delta.reasoning_content`, `text` (completions) and each tool call's
`function.arguments`. Each has one Hyperscan stream per scanning policy. An event is
released when every text segment it carries lies before its stream's safe offset
(the smallest over the policies that can change text); events leave in upstream
order, untouched ones as the exact upstream bytes. A buffered policy in the chain
holds the whole answer; buffered checks (quality) then judge it before release.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import msgspec
import orjson

from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Finding, Findings
from fastgw.policy.textscan import ScanPolicy, Tagged, merge_spans, redact
from fastgw.api.errors import GatewayError
from fastgw.proto.sse import SSEEvent, encode_event
from fastgw.scan.scanner import StreamScanner

__all__ = ["StreamPolicy", "StreamBlocked"]


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


class StreamBlocked(Exception):
    """A policy ended the stream; `prefix` holds the events to write before the error event."""

    def __init__(self, prefix: list[bytes], error: GatewayError) -> None:
        self.prefix = prefix
        self.error = error


class _Text:
    """One text stream: a scanner per policy, the safe offset, final spans not yet fully released."""

    __slots__ = ("key", "scanners", "safe", "spans", "pending", "merged_to", "block", "done", "backslashes")

    def __init__(self, key: tuple, scanners: list[StreamScanner]) -> None:
        self.key = key
        self.scanners = scanners
        self.safe = 0
        #: Merged final spans (leftmost-first across policies) still to be applied to events.
        self.spans: list[Tagged] = []
        #: Final spans of redacting policies not merged yet (they start at or after `safe`).
        self.pending: list[Tagged] = []
        self.merged_to = 0
        #: Earliest final span of a blocking policy.
        self.block: Tagged | None = None
        self.done = False
        #: Backslashes ending the text so far (tool-call arguments are JSON source: escapes matter).
        self.backslashes = 0


# A text segment of an event: (stream key, start, end, bytes, choice position, field, tool-call position,
# backslashes ending the stream's text before this segment)
_Seg = tuple


class _Held:
    __slots__ = ("ev", "segs", "whole", "seq")

    def __init__(self, ev: SSEEvent, segs: list[_Seg], whole: bool = False, seq: int = -1) -> None:
        self.ev = ev
        self.segs = segs
        self.seq = seq  # Responses API sequence_number
        #: The event repeats whole texts (Responses API `.done` / `response.completed`): rewritten at release.
        self.whole = whole


class StreamPolicy:
    """The output side of the chain for one streamed response."""

    def __init__(self, policies: list[ScanPolicy], findings: Findings, ctx: RequestContext,
                 buffered: bool = False, judge: Callable[[RequestContext], None] | None = None,
                 dialect: str = "chat") -> None:
        self.policies = policies
        #: "chat" (chat.completion.chunk), "responses" (Responses API events), "messages" (Anthropic events).
        self.dialect = dialect
        #: Released text per stream key, as the client got it (to rewrite events that repeat whole texts).
        self._assembled: dict[tuple, list[str]] = {}
        #: Last Responses API sequence_number sent (an error event we add continues it).
        self.last_seq = -1
        self._rewritten = False
        self._findings = findings
        self._ctx = ctx
        self._texts: dict[tuple, _Text] = {}
        self._dirty: list[_Text] = []  # texts fed since the last release
        self._queue: deque[_Held] = deque()
        # Observing policies record but never change text: they need no holdback.
        self._acting = [p.action != "observe" for p in policies]
        self._holds = any(self._acting)
        self._buffered = buffered or any(p.buffered and p.action != "observe" for p in policies)
        self._judge = judge
        #: Released text per choice, in parts: joined into ctx.texts only when read (end, judge), since adding
        #: each event to a growing str copies the whole answer every time (quadratic in its length).
        self._parts: dict[int, list[str]] = {}
        self._ended = False
        #: Events held back at the last release (for the holdback benchmark and tests).
        self.held = 0

    # ---- input -----------------------------------------------------------------------------
    def push(self, ev: SSEEvent) -> None:
        """Take one upstream event: scan its text, queue it."""
        if self.dialect != "chat":
            self._push_other(ev)
            return
        data = ev.data
        segs: list[_Seg] = []
        if data is not None and data != "[DONE]" and data[:1] == "{":
            try:
                chunk = _decode(data)
            except msgspec.DecodeError:
                # Not a chunk we can read: we cannot vouch for its text, so it must not pass.
                raise GatewayError("upstream sent an event the output policy cannot parse", status=502,
                                   type="upstream_error", code="upstream_protocol_error") from None
            if chunk.choices:
                for pos, ch in enumerate(chunk.choices):
                    self._choice_segs(ch, pos, segs)
            if chunk.usage is not None:
                self._ctx.usage = chunk.usage
                if self._ctx.strip_usage and not chunk.choices:
                    return  # the usage chunk we asked for on the client's behalf: it does not see it
            self._ctx.events += 1
        elif data == "[DONE]":
            self._finish_all()
        self._queue.append(_Held(ev, segs))

    def _choice_segs(self, ch: _Choice, pos: int, segs: list[_Seg]) -> None:
        idx = ch.index
        if ch.text:
            self._seg((idx, "text"), ch.text, pos, "text", None, segs)
        d = ch.delta
        if d is not None:
            if d.content:
                self._seg((idx, "content"), d.content, pos, "content", None, segs)
            if d.refusal:
                self._seg((idx, "refusal"), d.refusal, pos, "refusal", None, segs)
            if d.reasoning_content:
                self._seg((idx, "reasoning_content"), d.reasoning_content, pos, "reasoning_content", None, segs)
            if d.tool_calls:
                for tpos, tc in enumerate(d.tool_calls):
                    if tc.function is not None and tc.function.arguments:
                        self._seg((idx, "tool", tc.index), tc.function.arguments, pos, "arguments", tpos, segs)
        if ch.finish_reason is not None:
            self._ctx.finish[idx] = ch.finish_reason
            # This choice will say no more: its text is final now, no need to wait for [DONE].
            for key, t in self._texts.items():
                if key[0] == idx:
                    self._settle(key, t, final=True)

    def _seg(self, key: tuple, text: str, pos: int, fld: str, tpos: int | None, segs: list[_Seg]) -> None:
        t = self._texts.get(key)
        if t is None:
            t = self._texts[key] = _Text(key, [StreamScanner(p.db) for p in self.policies])
        if t.done:
            raise GatewayError("upstream sent text after finishing the choice", status=502, type="upstream_error",
                               code="upstream_protocol_error")
        data = text.encode()
        start = t.scanners[0].end if t.scanners else 0
        for sc in t.scanners:
            sc.feed(data)
        self._dirty.append(t)
        segs.append((key, start, start + len(data), data, pos, fld, tpos, t.backslashes))
        if tpos is not None:
            run = len(data) - len(data.rstrip(b"\\"))
            t.backslashes = t.backslashes + run if run == len(data) else run

    # ---- settling ---------------------------------------------------------------------------------
    def _settle(self, key: tuple, t: _Text, final: bool) -> None:
        if t.done:
            return
        safe = None
        if self.dialect == "chat":
            choice, fld = key[0], ("arguments" if key[1] == "tool" else key[1])
        else:
            choice, fld = 0, ("arguments" if key[0] == "args" else key[0])
        for i, (pol, sc) in enumerate(zip(self.policies, t.scanners)):
            s, spans = sc.settle(final=final)
            if self._acting[i]:
                safe = s if safe is None else min(safe, s)
            for sp in spans:
                self._findings.record(Finding(pol.name, sp.entity, "output", sp.start, sp.end, pol.action,
                                              self._ctx.request_id, choice, fld))
                if pol.action == "block":
                    if t.block is None or sp.start < t.block[0].start:
                        t.block = (sp, pol)
                elif pol.action == "redact":
                    t.pending.append((sp, pol))
        if final:
            t.done = True
        if safe is None:  # only observers, or no policies: nothing to hold
            safe = t.scanners[0].end if t.scanners else 1 << 62
        t.safe = safe
        if t.pending:
            ready = [x for x in t.pending if x[0].start < safe]
            if ready:
                t.pending = [x for x in t.pending if x[0].start >= safe]
                merged = merge_spans(ready, t.merged_to)
                if merged:
                    t.spans += merged
                    t.merged_to = merged[-1][0].end

    def _finish_all(self) -> None:
        for key, t in self._texts.items():
            self._settle(key, t, final=True)
        self._ended = True

    # ---- output ----------------------------------------------------------------------------------
    def release(self) -> list[bytes]:
        """Events that may be written now, in order (raw bytes when untouched). Raises StreamBlocked."""
        if not self._buffered:
            if self._dirty:
                for t in self._dirty:
                    self._settle(t.key, t, final=False)  # (a text fed twice settles twice; the second is cheap)
                self._dirty.clear()
        elif not self._ended:
            self.held = len(self._queue)
            return []
        self._check_block()
        out: list[bytes] = []
        q = self._queue
        texts = self._texts
        hold = self._holds
        while q:
            h = q[0]
            if hold and h.segs and not self._releasable(h, texts):
                break
            q.popleft()
            out.append(self._render(h))
        self.held = len(q)
        if self._buffered and self._judge is not None:
            self._sync_texts()
            try:
                self._judge(self._ctx)  # buffered checks judge the whole answer, as the client would get it
            except GatewayError as e:
                raise StreamBlocked([], e) from None
        return out

    @staticmethod
    def _releasable(h: _Held, texts: dict[tuple, _Text]) -> bool:
        for seg in h.segs:
            if seg[2] > texts[seg[0]].safe:
                return False
        return True

    def finish(self) -> list[bytes]:
        """End of stream (clean, or the upstream failed): everything held is final now."""
        if not self._ended:
            self._finish_all()
        out = self.release()
        self._sync_texts()
        return out

    def _sync_texts(self) -> None:
        """ctx.texts: the released text per choice (for the audit record, usage estimate, buffered checks)."""
        texts = self._ctx.texts
        for idx, parts in self._parts.items():
            if len(parts) > 1:
                parts[:] = ["".join(parts)]
            texts[idx] = parts[0] if parts else ""

    def close(self) -> None:
        """Free the scanners (client gone, stream over)."""
        self._sync_texts()
        for t in self._texts.values():
            for sc in t.scanners:
                sc.close()

    def _render(self, h: _Held) -> bytes:
        if h.seq >= 0:
            self.last_seq = h.seq  # an error event we add continues from the last one sent
        if h.whole:
            return self._rewrite_whole(h.ev)
        if not h.segs:
            return h.ev.raw
        texts = self._texts
        changes = []
        collect = self._parts
        for seg in h.segs:
            key, a, b, data, pos, fld, tpos, backslashes = seg
            t = texts[key]
            new = data
            if t.spans:
                spans = [x for x in t.spans if x[0].start < b and x[0].end > a]
                if spans:
                    new = redact(data, spans, a, backslashes if tpos is not None else None)
                    changes.append((seg, new))
                    t.spans = [x for x in t.spans if x[0].end > b]  # spans done with leave the list
            if self.dialect != "chat":
                self._assembled.setdefault(key, []).append(new.decode())
                if fld == "text":
                    collect.setdefault(0, []).append(new.decode())
            elif fld == "content" or fld == "text":
                collect.setdefault(key[0], []).append(new.decode())
        if not changes:
            return h.ev.raw  # invariant 5: untouched events leave byte-identical
        self._rewritten = True
        return self._reencode(h.ev, changes)

    def _reencode(self, ev: SSEEvent, changes: list[tuple[_Seg, bytes]]) -> bytes:
        obj = orjson.loads(ev.data)
        if self.dialect != "chat":
            for (_key, _a, _b, _data, _pos, fld, _tpos, _bs), new in changes:
                if self.dialect == "messages":
                    obj["delta"]["partial_json" if fld == "arguments" else "text"] = new.decode()
                else:
                    obj["delta"] = new.decode()
            return encode_event(orjson.dumps(obj), event=ev.event, id=ev.id)
        for (_key, _a, _b, _data, pos, fld, tpos, _bs), new in changes:
            ch = obj["choices"][pos]
            text = new.decode()
            if fld == "text":
                ch["text"] = text
            elif fld == "arguments":
                ch["delta"]["tool_calls"][tpos]["function"]["arguments"] = text
            else:
                ch["delta"][fld] = text
        return encode_event(orjson.dumps(obj), event=ev.event, id=ev.id)

    # ---- Responses API and Anthropic Messages events --------------------------------------------
    def _push_other(self, ev: SSEEvent) -> None:
        data = ev.data
        segs: list[_Seg] = []
        whole = False
        obj = None
        if data and data[:1] == "{":
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise GatewayError("upstream sent an event the output policy cannot parse", status=502,
                                   type="upstream_error", code="upstream_protocol_error") from None
        if isinstance(obj, dict):
            kind = obj.get("type")
            if self.dialect == "responses":
                seq = obj.get("sequence_number")
                whole = self._responses_event(kind, obj, segs)
                self._queue.append(_Held(ev, segs, whole, seq if isinstance(seq, int) else -1))
                return
            self._messages_event(kind, obj, segs)
        self._queue.append(_Held(ev, segs, whole))

    def _responses_event(self, kind: object, obj: dict, segs: list[_Seg]) -> bool:
        item = obj.get("item_id")
        if kind in ("response.output_text.delta", "response.refusal.delta") and isinstance(obj.get("delta"), str):
            fld = "text" if kind == "response.output_text.delta" else "refusal"
            self._seg((fld, item, obj.get("content_index", 0)), obj["delta"], 0, fld, None, segs)
        elif kind == "response.function_call_arguments.delta" and isinstance(obj.get("delta"), str):
            self._seg(("args", item, 0), obj["delta"], 0, "arguments", 0, segs)
        elif kind in ("response.output_text.done", "response.refusal.done", "response.function_call_arguments.done",
                      "response.content_part.done", "response.output_item.done"):
            self._settle_where(lambda key: key[1] == item, final=True)
            return True
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self._finish_all()
            return True
        return False

    def _messages_event(self, kind: object, obj: dict, segs: list[_Seg]) -> None:
        if kind == "content_block_delta":
            d = obj.get("delta") or {}
            idx = obj.get("index", 0)
            if d.get("type") == "text_delta" and isinstance(d.get("text"), str):
                self._seg(("text", idx, 0), d["text"], 0, "text", None, segs)
            elif d.get("type") == "input_json_delta" and isinstance(d.get("partial_json"), str):
                self._seg(("args", idx, 0), d["partial_json"], 0, "arguments", 0, segs)
        elif kind == "content_block_stop":
            idx = obj.get("index", 0)
            self._settle_where(lambda key: key[1] == idx, final=True)
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self._ctx.usage = usage
            reason = (obj.get("delta") or {}).get("stop_reason")
            if isinstance(reason, str):
                self._ctx.finish[0] = reason
        elif kind == "message_stop":
            self._finish_all()

    def _settle_where(self, pred: Callable[[tuple], bool], final: bool) -> None:
        for key, t in self._texts.items():
            if pred(key):
                self._settle(key, t, final)

    def _rewrite_whole(self, ev: SSEEvent) -> bytes:
        """Events that repeat whole texts carry the text as the client received it, never the original."""
        if not self._rewritten:
            return ev.raw  # no text was changed: the whole texts it repeats are the originals, untouched
        obj = orjson.loads(ev.data)
        a = self._assembled

        def text_of(fld: str, item: object, ci: int) -> str | None:
            parts = a.get((fld, item, ci))
            return "".join(parts) if parts is not None else None

        def fix_item(it: dict) -> None:
            iid = it.get("id")
            if it.get("type") == "function_call":
                t = text_of("args", iid, 0)
                if t is not None:
                    it["arguments"] = t
            for ci, part in enumerate(it.get("content") or []):
                if isinstance(part, dict):
                    key = "text" if part.get("type") == "output_text" else "refusal"
                    t = text_of(key, iid, ci)
                    if t is not None:
                        part[key if key == "refusal" else "text"] = t

        kind = obj.get("type")
        iid = obj.get("item_id")
        if kind == "response.output_text.done":
            t = text_of("text", iid, obj.get("content_index", 0))
            if t is not None:
                obj["text"] = t
        elif kind == "response.refusal.done":
            t = text_of("refusal", iid, obj.get("content_index", 0))
            if t is not None:
                obj["refusal"] = t
        elif kind == "response.function_call_arguments.done":
            t = text_of("args", iid, 0)
            if t is not None:
                obj["arguments"] = t
        elif kind == "response.content_part.done" and isinstance(obj.get("part"), dict):
            fix_item({"id": iid, "content": [None] * obj.get("content_index", 0) + [obj["part"]]})
        elif kind == "response.output_item.done" and isinstance(obj.get("item"), dict):
            fix_item(obj["item"])
        elif isinstance(obj.get("response"), dict):
            for it in obj["response"].get("output") or []:
                if isinstance(it, dict):
                    fix_item(it)
        return encode_event(orjson.dumps(obj), event=ev.event, id=ev.id)

    # ---- block -------------------------------------------------------------------------------------
    def _check_block(self) -> None:
        first: tuple[int, tuple, Tagged] | None = None  # (queue position, key, blocking span)
        for key, t in self._texts.items():
            if t.block is None:
                continue
            sp = t.block[0]
            for qpos, h in enumerate(self._queue):
                if any(seg[0] == key and seg[1] <= sp.start < seg[2] for seg in h.segs):
                    if first is None or qpos < first[0]:
                        first = (qpos, key, t.block)
                    break
        if first is None:
            return
        qpos, key, (sp, pol) = first
        # Buffered: the answer is judged whole and none of it is released.
        prefix = [] if self._buffered else self._clean_prefix(qpos, key, sp.start)
        self._queue.clear()
        self._ctx.decide(pol.name, "output", "block", entity=sp.entity)
        raise StreamBlocked(prefix, pol.block_error("output", streaming=True))

    def _clean_prefix(self, qpos: int, key: tuple, cut: int) -> list[bytes]:
        """The events before the blocking span, and the clean part of the event where it starts."""
        prefix: list[bytes] = []
        texts = self._texts
        for i in range(qpos):
            h = self._queue[i]
            if h.segs and not self._releasable(h, texts):
                return prefix
            prefix.append(self._render(h))
        h = self._queue[qpos]
        changes = []
        for seg in h.segs:
            k, a, b, data, _pos, _fld, tpos, backslashes = seg
            if k == key:
                spans = [x for x in texts[k].spans if x[0].start < cut and x[0].end > a]
                changes.append((seg, redact(data[:cut - a], spans, a, backslashes if tpos is not None else None)))
            elif b > texts[k].safe:
                changes.append((seg, b""))  # another stream's text that is not final yet
            elif texts[k].spans:
                spans = [x for x in texts[k].spans if x[0].start < b and x[0].end > a]
                changes.append((seg, redact(data, spans, a, backslashes if tpos is not None else None)))
        if any(new for seg, new in changes if seg[0] == key):
            if h.seq >= 0:
                self.last_seq = h.seq
            prefix.append(self._reencode(h.ev, changes))
        return prefix
