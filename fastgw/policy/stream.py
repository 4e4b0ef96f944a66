"""Output policies on a streamed answer: scan each event's text once, hold only what could still be a match,
release whole events, re-encode only those a policy changed.

Text streams are per (choice, field): `delta.content`, `delta.refusal`,
`delta.reasoning_content`, `text` (completions) and each tool call's
`function.arguments`. Each has its own Hyperscan stream. An event is released when
every text segment it carries lies before its stream's safe offset; events leave in
upstream order, untouched ones as the exact upstream bytes.
"""

from __future__ import annotations

from collections import deque

import msgspec
import orjson

from fastgw.policy.findings import Finding, Findings
from fastgw.policy.pii import PiiPolicy, block_error
from fastgw.proto.errors import GatewayError
from fastgw.proto.sse import SSEEvent, encode_event
from fastgw.scan.database import Span
from fastgw.scan.scanner import StreamScanner

__all__ = ["StreamPolicy", "StreamBlocked"]


# Typed view of a chunk: only the text fields we scan (msgspec skips everything else without building it).
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


_decode = msgspec.json.Decoder(_Chunk).decode
_DELTA_FIELDS = ("content", "refusal", "reasoning_content")


class StreamBlocked(Exception):
    """The policy ended the stream; `prefix` holds the events to write before the error event."""

    def __init__(self, prefix: list[bytes], error: GatewayError) -> None:
        self.prefix = prefix
        self.error = error


class _Text:
    """One text stream: its scanner, safe offset, and the final spans not yet fully released."""

    __slots__ = ("scanner", "safe", "spans", "done", "backslashes")

    def __init__(self, scanner: StreamScanner) -> None:
        self.scanner = scanner
        self.safe = 0
        self.spans: list[Span] = []
        self.done = False
        #: Backslashes ending the text so far (tool-call arguments are JSON source: escapes matter).
        self.backslashes = 0


# A text segment of an event: (stream key, start, end, bytes, choice position, field, tool-call position,
# backslashes ending the stream's text before this segment)
_Seg = tuple


class _Held:
    __slots__ = ("ev", "segs")

    def __init__(self, ev: SSEEvent, segs: list[_Seg]) -> None:
        self.ev = ev
        self.segs = segs


class StreamPolicy:
    """The output side of the chain for one streamed response."""

    def __init__(self, pii: PiiPolicy, findings: Findings, request_id: str) -> None:
        self.pii = pii
        self._findings = findings
        self._rid = request_id
        self._texts: dict[tuple, _Text] = {}
        self._dirty: list[tuple[tuple, _Text]] = []  # texts fed since the last release
        self._queue: deque[_Held] = deque()
        self._observe = pii.action == "observe"
        self._buffered = pii.buffered and not self._observe
        self._ended = False
        #: Events held back at the last release (for the holdback benchmark and tests).
        self.held = 0

    # ---- input -----------------------------------------------------------------------------
    def push(self, ev: SSEEvent) -> None:
        """Take one upstream event: scan its text, queue it."""
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
            # This choice will say no more: its text is final now, no need to wait for [DONE].
            for key, t in self._texts.items():
                if key[0] == idx:
                    self._settle(key, t, final=True)

    def _seg(self, key: tuple, text: str, pos: int, fld: str, tpos: int | None, segs: list[_Seg]) -> None:
        t = self._texts.get(key)
        if t is None:
            t = self._texts[key] = _Text(StreamScanner(self.pii.db))
        if t.done:
            raise GatewayError("upstream sent text after finishing the choice", status=502, type="upstream_error",
                               code="upstream_protocol_error")
        data = text.encode()
        start = t.scanner.end
        t.scanner.feed(data)
        self._dirty.append((key, t))
        segs.append((key, start, start + len(data), data, pos, fld, tpos, t.backslashes))
        if tpos is not None:
            run = len(data) - len(data.rstrip(b"\\"))
            t.backslashes = t.backslashes + run if run == len(data) else run

    # ---- settling ---------------------------------------------------------------------------------
    def _settle(self, key: tuple, t: _Text, final: bool) -> None:
        if t.done:
            return
        safe, spans = t.scanner.settle(final=final)
        if final:
            t.done = True
        t.safe = safe
        if spans:
            for sp in spans:
                self._findings.record(Finding(self.pii.name, sp.entity, "output", sp.start, sp.end, self.pii.action,
                                              self._rid, key[0], "arguments" if key[1] == "tool" else key[1]))
            if not self._observe:
                t.spans.extend(spans)

    def _finish_all(self) -> None:
        for key, t in self._texts.items():
            self._settle(key, t, final=True)
        self._ended = True

    # ---- output ----------------------------------------------------------------------------------
    def release(self) -> list[bytes]:
        """Events that may be written now, in order (raw bytes when untouched). Raises StreamBlocked."""
        if not self._buffered:
            if self._dirty:
                for key, t in self._dirty:
                    self._settle(key, t, final=False)  # (a text fed twice settles once: the second is a no-op)
                self._dirty.clear()
        elif not self._ended:
            self.held = len(self._queue)
            return []
        if self.pii.action == "block":
            self._check_block()
        out: list[bytes] = []
        q = self._queue
        texts = self._texts
        observe = self._observe
        while q:
            h = q[0]
            if not observe and h.segs and not self._releasable(h, texts):
                break
            q.popleft()
            out.append(self._render(h))
        self.held = len(q)
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
        return self.release()

    def close(self) -> None:
        """Free the scanners (client gone, stream over)."""
        for t in self._texts.values():
            t.scanner.close()

    def _render(self, h: _Held) -> bytes:
        if self._observe or not h.segs:
            return h.ev.raw
        texts = self._texts
        changes = []
        for seg in h.segs:
            key, a, b, data, pos, fld, tpos, backslashes = seg
            spans = [sp for sp in texts[key].spans if sp.start < b and sp.end > a]
            if spans:
                escapes = backslashes if tpos is not None else None
                changes.append((seg, self.pii.redact(data, spans, a, escapes)))
        for key, t in texts.items():
            if t.spans:
                # Spans wholly before what this event carries for the stream are done with.
                last = max((s[2] for s in h.segs if s[0] == key), default=None)
                if last is not None:
                    t.spans = [sp for sp in t.spans if sp.end > last]
        if not changes:
            return h.ev.raw  # invariant 5: untouched events leave byte-identical
        return self._reencode(h.ev, changes)

    @staticmethod
    def _reencode(ev: SSEEvent, changes: list[tuple[_Seg, bytes]]) -> bytes:
        obj = orjson.loads(ev.data)
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

    # ---- block -------------------------------------------------------------------------------------
    def _check_block(self) -> None:
        first: tuple[int, tuple, Span] | None = None  # (queue position, key, span)
        for key, t in self._texts.items():
            if not t.spans:
                continue
            sp = t.spans[0]
            for qpos, h in enumerate(self._queue):
                if any(seg[0] == key and seg[1] <= sp.start < seg[2] for seg in h.segs):
                    if first is None or qpos < first[0]:
                        first = (qpos, key, sp)
                    break
        if first is None:
            return
        qpos, key, sp = first
        # Buffered: the answer is judged whole and none of it is released.
        prefix = [] if self._buffered else self._clean_prefix(qpos, key, sp)
        self._queue.clear()
        raise StreamBlocked(prefix, block_error("output", self.pii.name, streaming=True))

    def _clean_prefix(self, qpos: int, key: tuple, sp: Span) -> list[bytes]:
        """The events before the first span, and the clean part of the event where it starts."""
        prefix: list[bytes] = []
        texts = self._texts
        for i in range(qpos):
            h = self._queue[i]
            if any(seg[2] > texts[seg[0]].safe for seg in h.segs):
                return prefix
            prefix.append(h.ev.raw)
        h = self._queue[qpos]
        changes = []
        for seg in h.segs:
            k, a, b, data, *_ = seg
            if k == key:
                changes.append((seg, data[:sp.start - a]))
            elif b > texts[k].safe:
                changes.append((seg, b""))  # another stream's text that is not final yet
        if any(new for seg, new in changes if seg[0] == key):
            prefix.append(self._reencode(h.ev, changes))
        return prefix
