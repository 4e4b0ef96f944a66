"""The hold/release core every stream dialect shares: text streams, holdback, the hold queue, redact and block.

A dialect class (chat, Responses, Messages) finds the text segments of each event and
hands them to `_seg`; the core feeds each segment once to one Hyperscan stream per
scanning policy (a text's segments from one upstream read in one call, when it is next
settled), settles the streams (safe offset = the smallest over the policies that can
change text), queues the event, and releases queued events in upstream order once
every segment of theirs lies before its stream's safe offset. An event no
policy changed leaves as the upstream's bytes (a structured chunk is encoded once,
then); a changed one is rewritten through the dialect's `_apply` and encoded once.
A blocking span ends the stream with `StreamBlocked` and the clean prefix before it.

A text piece longer than `DEFER_BYTES` in one event is not scanned inside `push`: it is queued, with every
settling that must follow it, and `work(deadline)` scans it a piece at a time (the relay calls it in slices of
the loop); `release` and `finish` first do what is still queued, so a caller that does not slice sees no
difference.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final

import orjson

from fastgw.api.dialects import Dialect
from fastgw.api.errors import GatewayError
from fastgw.api.limits import MAX_STREAM_TEXTS
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Finding, Findings
from fastgw.policy.stream.records import Held, Segment, TextKey
from fastgw.policy.textkeys import JSON_VALUES, NOSKIP, tool_input
from fastgw.policy.textscan import (SKIP, Prefilter, ScanPolicy, Tagged, decide_counts, is_blob, merge_spans,
                                     redact, set_token)
from fastgw.proto.sse import SSEEvent, encode_data, encode_event
from fastgw.scan.database import JointDB
from fastgw.scan.scanner import ScanBudget, ScanGroup, StreamScanner

__all__ = ["StreamPolicy", "StreamBlocked", "TextKey", "TextStream", "Segment", "Held", "unreadable"]

#: The safe offset of a text no policy holds back: beyond any text's end.
_NO_HOLD: Final = 1 << 62
#: A text piece longer than this (bytes) is scanned as deferred work, in pieces between looks at the clock
#: (`StreamPolicy.work`), instead of inside `push`: one upstream event may carry up to 1 MiB of text (the SSE
#: limit), ~20 ms to scan as clean prose and far more as the slowest text.
DEFER_BYTES: Final = 16384
#: Piece sizes of deferred scanning: the smallest (~1.5 ms at the slowest text found) and the largest.
_PIECE_MIN: Final = 1024
_PIECE_MAX: Final = 65536
#: Keys whose value is JSON a caller or a model chose (tool inputs, schemas, metadata): every string scanned. (The
#: request side's `JSON_VALUES`, and a streamed event's `arguments`.)
_JSON_VALUES: Final = JSON_VALUES | {"arguments"}


class StreamBlocked(Exception):
    """A policy ended the stream; `prefix` holds the events to write before the error event."""

    def __init__(self, prefix: list[bytes], error: GatewayError) -> None:
        self.prefix = prefix
        self.error = error


def unreadable() -> GatewayError:
    """An event we cannot read: we cannot vouch for its text, so it must not pass."""
    return GatewayError("upstream sent an event the output policy cannot parse", status=502, type="upstream_error",
                        code="upstream_protocol_error")


class TextStream:
    """One text stream: a scanner per policy, the safe offset, final spans not yet fully released."""

    __slots__ = ("key", "json", "choice", "collect", "parts", "scanners", "group", "opened", "safe", "spans",
                 "pending", "merged_to", "block", "done", "backslashes", "fed", "unfed", "unfed_n", "dirty", "_scanned")

    def __init__(self, key: TextKey, json: bool, collect: bool) -> None:
        self.key = key
        # What every event of the text asks of its key, kept here (a TextKey is a Struct: each of its fields is a
        # generic attribute lookup from compiled code).
        #: Tool-call arguments: JSON source, scanned with its escapes decoded.
        self.json = json
        self.choice = key.choice
        #: Its released text is kept per choice (`ctx.texts`): one of the dialect's `collected` fields.
        self.collect = collect
        #: Its choice's list of released pieces in the policy's `_parts`, once a piece of it was released.
        self.parts: list[str] | None = None
        #: A scanner per policy, opened when the text is first given to them (`StreamPolicy._open`): a text the
        #: prefilter settles whole never opens any.
        self.scanners: list[StreamScanner] = []
        #: With a joint database (several policies), what feeds and ends them: one Hyperscan scan for all.
        self.group: ScanGroup | None = None
        self.opened = False
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
        #: Bytes of the text taken (scanned, or queued to be: `StreamPolicy.work`).
        self.fed = 0
        #: Pieces taken but not yet given to the scanners, and their length: the events of one upstream read are
        #: scanned in one call per policy when the text is next settled (see `StreamPolicy._seg`).
        self.unfed: list[bytes] = []
        self.unfed_n = 0
        #: In the policy's list of texts to settle at the next release (once, however many events fed it).
        self.dirty = False
        #: Bytes each policy's scanner took, kept when the scanners are dropped (`drop_scanners`).
        self._scanned: list[int] = []

    def scanned(self) -> list[int]:
        """Bytes each policy's Hyperscan stream took (each byte exactly once), open or dropped."""
        return [sc.scanned for sc in self.scanners] if self.scanners else self._scanned

    def drop_scanners(self) -> None:
        """The text is final and its spans reported: its scanners (~2 KB each, most of a text's memory) go now,
        not at the answer's end, so an answer of many items or choices holds those still open alone."""
        self._scanned = [sc.scanned for sc in self.scanners]
        self.close_scanners()
        self.scanners = []

    def close_scanners(self) -> None:
        """Release the text's Hyperscan streams (its group's, or each scanner's) without settling."""
        if self.group is not None:
            self.group.close()  # its stream: the scanners of a group hold none
            self.group = None
        for sc in self.scanners:
            sc.close()


class StreamPolicy(ABC):
    """The output side of the chain for one streamed answer; a subclass per dialect says where the text is."""

    #: The dialect's name ("chat", "responses", "messages") and its wire ends (done marker, error event).
    dialect: ClassVar[str] = ""
    wire: ClassVar[Dialect]
    #: The fields whose released text makes up `ctx.texts` (per choice).
    collected: ClassVar[frozenset[str]] = frozenset(("text",))
    #: Keep the released text per stream (for events that repeat whole texts).
    assembles: ClassVar[bool] = False

    __slots__ = ("policies", "last_seq", "held", "strip_usage", "strip_null_usage", "_assembled", "_rewritten",
                 "_findings", "_ctx", "_texts", "_dirty", "_queue", "_acting", "_holds", "_buffered", "_judge", "_parts",
                 "_ended", "_drop", "_counts", "_decided", "_ev_edited", "_ev_repeats", "_budgets", "_jobs",
                 "cpu_left", "cpu_budget", "prefilter", "joint", "_by_choice", "_by_item", "_blocked", "events",
                 "_events_before")

    def __init__(self, policies: list[ScanPolicy], findings: Findings, ctx: RequestContext,
                 buffered: bool = False, judge: Callable[[RequestContext], None] | None = None) -> None:
        self.policies = policies
        #: Released text per stream, as the client got it (to rewrite events that repeat whole texts).
        self._assembled: dict[TextKey, list[str]] | None = {} if self.assembles else None
        #: Last Responses API sequence_number sent (an error event we add continues it).
        self.last_seq = -1
        self._rewritten = False
        self._findings = findings
        self._ctx = ctx
        self._texts: dict[TextKey, TextStream] = {}
        # The texts of each choice and of each item, and those a blocking policy found a span in: a choice's or an
        # item's end and each release look at those alone, so the cost of an event does not grow with the number
        # of texts the answer has had (thousands of tool calls or items).
        self._by_choice: dict[int, list[TextStream]] = {}
        self._by_item: dict[object, list[TextStream]] = {}
        self._blocked: list[TextStream] = []
        self._dirty: list[TextStream] = []  # texts fed since the last release, each once
        # A list, not a deque: a compiled module's list operations are native calls, a deque's are generic method
        # calls (an append and a popleft per event).
        self._queue: list[Held] = []
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
        #: The gateway asked this upstream for a usage chunk the client did not ask for: take it out.
        self.strip_usage = False
        #: ... and the other chunks' `"usage": null` too (legacy completions, whose spec allows no null usage).
        self.strip_null_usage = False
        #: `logprobs: drop`: logprobs leave no event (else their tokens are text streams of their own).
        self._drop = any(p.logprobs == "drop" for p in policies)
        #: Findings per (policy position, entity), for the decisions recorded when the stream ends.
        self._counts: dict[tuple[int, str], int] = {}
        self._decided = False
        #: Set while a typed event is read: it was edited (logprobs dropped), the whole texts it repeats.
        self._ev_edited = False
        self._ev_repeats: list | None = None
        #: Costly judgements left per policy, shared by every text of the answer (see ScanBudget).
        self._budgets = [ScanBudget() for _ in policies]
        #: Deferred work, in order: ("feed", text, data, offset) and ("settle", text, final) (see `work`).
        self._jobs: deque[list] = deque()
        #: The policies' patterns as one block database (the chain's output `Prefilter`; None: none given): a text
        #: seen whole at its end, ASCII prose that makes it report nothing, needs no policy's scan (`_settle_now`).
        self.prefilter: Prefilter | None = None
        #: The policies' stream databases as one (the chain's, when it has several output policies; None: each
        #: policy's scanner scans on its own): one Hyperscan scan per piece of text for all of them.
        self.joint: JointDB | None = None
        #: CPU seconds the policies may still spend on this answer, and the request's whole budget (the chain
        #: sets both; the relay meters its work against them).
        self.cpu_left = math.inf
        self.cpu_budget = math.inf
        #: Events queued, a dialect's count for `ctx.events` (the usage estimate's fallback), kept here and given
        #: to the context with the texts: an attribute of the interpreted context costs a generic lookup per event.
        self.events = 0
        self._events_before = ctx.events

    # ---- input (each dialect) ---------------------------------------------------------------
    @abstractmethod
    def push(self, ev: SSEEvent) -> None:
        """Take one upstream event: scan its text, queue it."""

    @abstractmethod
    def push_chunk(self, obj: Any) -> None:
        """Take one structured event (a dict the policy owns from now on): scan its text, queue it. Anything but
        a dict is unreadable. (Typed Any: a compiled `dict` parameter would refuse it with a TypeError first.)"""

    def push_done(self) -> None:
        """The upstream says the answer is complete: every text is final."""
        self._finish_all()

    def _seg(self, key: TextKey, text: str, choice_pos: int, tool_pos: int, segs: list[Segment],
             path: tuple | None = None) -> None:
        """Scan the next piece of the text stream `key` (each byte once) and note where it sits in the event."""
        self._piece(self._text_for(key), text, choice_pos, tool_pos, segs, path)

    def _text_for(self, key: TextKey) -> TextStream:
        """The text stream `key` names, opened on its first piece."""
        t = self._text_of(key)
        if t is None:
            if len(self._texts) >= MAX_STREAM_TEXTS:
                raise GatewayError(f"upstream answer opened more than {MAX_STREAM_TEXTS} texts (choices, tool calls, "
                                   "items) for the output policies to scan", status=502, type="upstream_error",
                                   code="upstream_protocol_error")
            # Tool-call arguments are JSON source: scanned with their escapes decoded (`\u0040` is an `@`).
            json = key.field == "arguments"
            t = self._texts[key] = TextStream(key, json, key.field in self.collected)
            self._by_choice.setdefault(key.choice, []).append(t)
            self._by_item.setdefault(key.item, []).append(t)
        return t

    def _open(self, t: TextStream) -> None:
        """The text's scanners, one per policy, opened (with a joint database, as one group)."""
        if self.joint is not None:
            g = t.group = ScanGroup(self.joint, t.json, self._budgets)
            t.scanners = g.scanners
        else:
            t.scanners = [StreamScanner(p.db, t.json, b) for p, b in zip(self.policies, self._budgets)]
        t.opened = True

    def _feed(self, t: TextStream) -> None:
        """Give the text's waiting pieces to its scanners, in one call each."""
        if not t.opened:
            self._open(t)
        parts = t.unfed
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        t.unfed = []
        t.unfed_n = 0
        self._scan(t, data)

    def _scan(self, t: TextStream, data: bytes) -> None:
        """A piece of an opened text, to its scanners."""
        g = t.group
        if g is not None:
            g.feed(data)
        else:
            for sc in t.scanners:
                sc.feed(data)

    def _piece(self, t: TextStream, text: str, choice_pos: int, tool_pos: int, segs: list[Segment],
               path: tuple | None = None) -> None:
        """`_seg` for a text stream in hand."""
        if t.done:
            raise GatewayError("upstream sent text after finishing the choice", status=502, type="upstream_error",
                               code="upstream_protocol_error")
        data = text.encode()
        start = t.fed
        t.fed += len(data)
        if len(data) > DEFER_BYTES or self._jobs:
            if t.unfed:
                self._feed(t)  # what came before it, first
            self._jobs.append(["feed", t, data, 0])  # scanned by `work`, a piece at a time
        else:
            # Scanned when the text is next settled (the release after this read), with the rest of the read's
            # pieces of it: one scanner call per policy and text per read, not per event. Never more than
            # DEFER_BYTES waits, so no settle scans more at once than one deferred piece would.
            t.unfed.append(data)
            t.unfed_n += len(data)
            if t.unfed_n > DEFER_BYTES:
                self._feed(t)
        if not t.dirty:
            t.dirty = True
            self._dirty.append(t)
        if t.json:
            segs.append(Segment(t, start, start + len(data), data, text, choice_pos, tool_pos, t.backslashes, path))
            run = len(data) - len(data.rstrip(b"\\"))
            t.backslashes = t.backslashes + run if run == len(data) else run
        else:
            segs.append(Segment(t, start, start + len(data), data, text, choice_pos, tool_pos, None, path))

    def _text_of(self, key: TextKey) -> TextStream | None:
        """The text stream `key` names, if opened. An index or id the upstream sent as a list or an object cannot
        name one (it is no dict key): the event is unreadable, not a policy failure."""
        try:
            return self._texts.get(key)
        except TypeError:
            raise unreadable() from None

    def _walk(self, node: object, field: str, choice: int, item: object, part: object, path: tuple,
              segs: list[Segment], skip: frozenset[str] = SKIP, repeats: list | None = None) -> None:
        """Every text in a JSON value inside a known container, each string a segment of the text stream
        (choice, dotted field path, item, part): strings not under a `skip` key and not blobs. A list's
        objects are parts (their own `index` when they carry one, else their position). With `repeats`
        (events that repeat whole texts), a text whose stream exists already is noted there, not fed again."""
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str):
                    if v and k not in skip and not is_blob(node, k, v):
                        self._text(TextKey(choice, f"{field}.{k}" if field else k, item, part), v, path + (k,),
                                   segs, repeats)
                elif isinstance(v, (dict, list)):
                    sub = NOSKIP if k in _JSON_VALUES or (k == "input" and tool_input(node)) else skip
                    self._walk(v, f"{field}.{k}" if field else k, choice, item, part, path + (k,), segs, sub,
                               repeats)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, str):
                    if v:
                        self._text(TextKey(choice, field, item, (part, i)), v, path + (i,), segs, repeats)
                elif isinstance(v, (dict, list)):
                    sub_part = v.get("index", i) if isinstance(v, dict) else i
                    self._walk(v, field, choice, item, (part, sub_part), path + (i,), segs, skip, repeats)

    def _text(self, key: TextKey, v: str, path: tuple, segs: list[Segment], repeats: list | None) -> None:
        if repeats is not None and self._text_of(key) is not None:
            repeats.append((path, key))
        else:
            self._seg(key, v, 0, -1, segs, path)

    def _tokens(self, entries: list, choice: int, field: str, item: object, part: object, path: tuple,
                segs: list[Segment]) -> None:
        """Logprobs entries ({"token", "bytes", "top_logprobs"}): their tokens are a text stream of their own,
        each token a segment (a token over a span is redacted like any piece of text, see TokenRun)."""
        key = TextKey(choice, field, item, part)
        for i, e in enumerate(entries):
            if isinstance(e, dict):
                tok = e.get("token")
                if isinstance(tok, str) and tok:
                    self._seg(key, tok, 0, -1, segs, path + (i, "token"))

    # ---- deferred work ------------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        """Text waits to be scanned (a long piece): call `work` before `release` (or `finish`)."""
        return bool(self._jobs)

    def work(self, deadline: float) -> None:
        """Scan queued text, in pieces, until it is all done or `time.perf_counter()` passes `deadline`. Each
        piece is settled as it goes, so no later step has a whole long text's spans to handle at once."""
        jobs = self._jobs
        piece = _PIECE_MIN
        while jobs:
            job = jobs[0]
            t = job[1]
            if job[0] == "settle":
                jobs.popleft()
                self._settle_now(t, job[2])
            else:
                data, i = job[2], job[3]
                t0 = time.perf_counter()
                chunk = data[i:i + piece]
                if not t.opened:
                    self._open(t)
                self._scan(t, chunk)
                job[3] = i + len(chunk)
                if job[3] >= len(data):
                    jobs.popleft()
                if not t.done:
                    self._settle_now(t, False)
                took = time.perf_counter() - t0
                # The next piece: about a quarter of what is left of the slice at this one's rate.
                piece = int(min(_PIECE_MAX, max(_PIECE_MIN, len(chunk) * max(deadline - time.perf_counter(), 0.0)
                                                / 4 / took))) if took > 0 else _PIECE_MAX
            if time.perf_counter() >= deadline:
                return

    # ---- settling ---------------------------------------------------------------------------------
    def _settle(self, t: TextStream, final: bool) -> None:
        if self._jobs:
            self._jobs.append(["settle", t, final])  # after the text queued before it
            return
        self._settle_now(t, final)

    def _settle_now(self, t: TextStream, final: bool) -> None:
        if t.done:
            return
        if t.unfed:
            if final and self._clean_whole(t):
                return
            self._feed(t)
        elif not t.opened:
            self._open(t)
        if final and t.group is not None:
            t.group.end()
        key = t.key
        safe = None
        for i, (pol, sc) in enumerate(zip(self.policies, t.scanners)):
            s, spans = sc.settle(final=final)
            if self._acting[i]:
                safe = s if safe is None else min(safe, s)
            for sp in spans:
                if not sp.cont:  # a later piece of a long block is the same finding
                    self._findings.record(Finding(pol.name, sp.entity, "output", sp.start, sp.end, pol.action,
                                                  self._ctx.request_id, key.choice, key.field))
                    ck = (i, sp.entity)
                    self._counts[ck] = self._counts.get(ck, 0) + 1
                if pol.action == "block":
                    if t.block is None:
                        self._blocked.append(t)
                        t.block = (sp, pol)
                    elif sp.start < t.block[0].start:
                        t.block = (sp, pol)
                elif pol.action == "redact":
                    t.pending.append((sp, pol))
        if safe is None:  # only observers, or no policies: nothing to hold
            safe = t.scanners[0].end if t.scanners else _NO_HOLD
        t.safe = safe
        if final:
            t.done = True
            t.drop_scanners()
        if t.pending:
            ready = [x for x in t.pending if x[0].start < safe]
            if ready:
                t.pending = [x for x in t.pending if x[0].start >= safe]
                merged = merge_spans(ready, t.merged_to)
                if merged:
                    t.spans += merged
                    t.merged_to = merged[-1][0].end

    def _clean_whole(self, t: TextStream) -> bool:
        """Settle a final text that no scanner has seen a byte of (a short answer's, every event in one upstream read)
        with one block scan of the prefilter for all the policies, when that finds nothing: the scanners would
        find nothing either, as for a whole text (`Prefilter.clean`: ASCII prose is its own canonical view; JSON
        source and logprobs tokens are not prose). True when settled so."""
        prefilter = self.prefilter
        if prefilter is None or t.json or t.opened or t.key.field.startswith("logprobs"):
            return False
        parts = t.unfed
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not prefilter.clean_prose(data):
            if len(parts) > 1:
                t.unfed = [data]  # joined once: the scanners take it as it is
            return False
        t.unfed = []
        t.unfed_n = 0
        t.safe = t.fed
        t.done = True
        t._scanned = [0] * len(self.policies)  # no policy's stream took a byte of it
        return True

    def _settle_choice(self, choice: int) -> None:
        """A chat choice will say no more: its texts are final now, no need to wait for the end."""
        for t in self._by_choice.get(choice, ()):
            self._settle(t, final=True)

    def _settle_item(self, item: object) -> None:
        """A Responses item or Messages content block is finished: its texts are final now."""
        try:
            texts = self._by_item.get(item, ())
        except TypeError:  # an unhashable value from the upstream: no text's key holds it (keys are dict keys)
            return
        for t in texts:
            self._settle(t, final=True)

    def _finish_all(self) -> None:
        for t in self._texts.values():
            self._settle(t, final=True)
        self._ended = True

    # ---- output ----------------------------------------------------------------------------------
    def release(self) -> list[bytes]:
        """Events that may be written now, in order (raw bytes when untouched). Raises StreamBlocked. Text
        still queued is scanned first, whole (a caller that slices calls `work` until `has_work` is false)."""
        if self._jobs:
            self.work(math.inf)
        if not self._buffered:
            if self._dirty:
                for t in self._dirty:
                    t.dirty = False
                    self._settle(t, final=False)
                self._dirty.clear()
        elif not self._ended:
            self.held = len(self._queue)
            return []
        self._check_block()
        out: list[bytes] = []
        q = self._queue
        hold = self._holds
        n = 0
        for h in q:
            if hold and h.segs and not self._releasable(h):
                break
            out.append(self._render(h))
            n += 1
        if n:
            del q[:n]  # (the queue is short, but for a buffered answer, which is released once)
        self.held = len(q)
        if self._buffered and self._judge is not None:
            self._sync_texts()
            try:
                self._judge(self._ctx)  # buffered checks judge the whole answer, as the client would get it
            except GatewayError as e:
                raise StreamBlocked([], e) from None
        return out

    @staticmethod
    def _releasable(h: Held) -> bool:
        for seg in h.segs:
            if seg.end > seg.text.safe:
                return False
        return True

    def finish(self) -> list[bytes]:
        """End of stream (clean, or the upstream failed): everything held is final now (queued text is
        scanned first: an error path while a long event was being scanned)."""
        if self._jobs:
            self.work(math.inf)
        if not self._ended:
            self._finish_all()
        out = self.release()
        self._sync_texts()
        self._decide()
        return out

    def _decide(self) -> None:
        """The stream's decisions, once: per policy and entity, the action and how many values (never a
        value); "allow" for a policy that found nothing. A block was decided when it happened."""
        if self._decided:
            return
        self._decided = True
        ctx = self._ctx
        blocked = {d.policy for d in ctx.decisions if d.phase == "output" and d.outcome == "block"}
        for i, pol in enumerate(self.policies):
            if pol.name in blocked:
                continue
            decide_counts(ctx, pol, "output", {(pol.name, e): n for (j, e), n in self._counts.items() if j == i})

    def _sync_texts(self) -> None:
        """ctx.texts: the released text per choice (for the audit record, usage estimate, buffered checks)."""
        ctx = self._ctx
        if self.events:
            ctx.events = self._events_before + self.events
        texts = ctx.texts
        for idx, parts in self._parts.items():
            if len(parts) > 1:
                parts[:] = ["".join(parts)]
            texts[idx] = parts[0] if parts else ""

    def close(self) -> None:
        """Free the scanners (client gone, stream over); the decisions taken so far are recorded."""
        self._sync_texts()
        self._decide()
        for t in self._texts.values():
            t.close_scanners()

    def _render(self, h: Held) -> bytes:
        """The bytes of a released event: the upstream's own unless a policy changed its text."""
        if h.seq >= 0:
            self.last_seq = h.seq  # an error event we add continues from the last one sent
        segs = h.segs
        if not segs and not h.whole and not h.edited:
            ev = h.ev
            return ev.raw if ev is not None else self._untouched(h)  # no text: role, finish, usage, [DONE]
        changes: list[tuple[Segment, bytes]] | None = None  # (made when a text changed: nearly never per event)
        parts = self._parts
        assembled = self._assembled
        for seg in segs:
            t = seg.text
            released = seg.value
            if t.spans:
                a, b = seg.start, seg.end
                spans = [x for x in t.spans if x[0].start < b and x[0].end > a]
                if spans:
                    new = redact(seg.data, spans, a, seg.escapes)
                    if changes is None:
                        changes = []
                    changes.append((seg, new))
                    released = new.decode()
                    t.spans = [x for x in t.spans if x[0].end > b]  # spans done with leave the list
            if t.collect:
                p = t.parts
                if p is None:
                    p = parts.get(t.choice)
                    if p is None:
                        p = parts[t.choice] = []
                    t.parts = p
                p.append(released)
            if assembled is not None:
                assembled.setdefault(t.key, []).append(released)
        if changes is not None:
            self._rewritten = True
        if h.whole:
            return self._render_whole(h, changes if changes is not None else [])
        if changes is None and not h.edited:
            return self._untouched(h)  # invariant 5: untouched events leave byte-identical
        return self._rewrite(h, changes if changes is not None else [])

    def _untouched(self, h: Held) -> bytes:
        ev = h.ev
        if ev is not None:
            return ev.raw
        assert h.obj is not None
        return self._encode(None, h.obj)  # a structured chunk: encoded once, here

    def _rewrite(self, h: Held, changes: list[tuple[Segment, bytes]]) -> bytes:
        """The event with the changed texts put back, encoded once."""
        obj = h.obj
        if obj is None:
            assert h.ev is not None and h.ev.data is not None
            obj = orjson.loads(h.ev.data)
        for seg, new in changes:
            self._apply(obj, seg, new.decode())
        return self._encode(h.ev, obj)

    def _apply(self, obj: dict, seg: Segment, text: str) -> None:
        """Put a segment's changed text back into its event (each dialect knows where it sits; a segment
        with a `path` says it itself)."""
        path = seg.path
        if path is None:
            raise TypeError(f"{type(self).__name__}: no path for a segment of {seg.text.key}")
        node: object = obj
        for k in path[:-1]:
            node = node[k]  # type: ignore[index]
        last = path[-1]
        if last == "token" and isinstance(node, dict):
            set_token(node, text)  # a logprobs token: its bytes and alternatives follow
        else:
            node[last] = text  # type: ignore[index]

    def _encode(self, ev: SSEEvent | None, obj: dict) -> bytes:
        """An event object as SSE bytes, with the upstream event's `event`/`id` fields when it came as SSE."""
        if ev is None:
            return encode_data(orjson.dumps(obj))
        return encode_event(orjson.dumps(obj), event=ev.event, id=ev.id)

    def _render_whole(self, h: Held, changes: list[tuple[Segment, bytes]]) -> bytes:
        """An event that repeats whole texts (dialects that have them say how to rewrite it)."""
        return self._rewrite(h, changes) if changes or h.edited else self._untouched(h)

    # ---- block -------------------------------------------------------------------------------------
    def _check_block(self) -> None:
        if not self._blocked:
            return
        first: tuple[int, TextStream, Tagged] | None = None  # (queue position, text, blocking span)
        # Two blocked texts (the stream ends at this release): the earliest opened wins a tie, as it always did.
        blocked = self._blocked if len(self._blocked) == 1 else [t for t in self._texts.values() if t.block is not None]
        for t in blocked:
            assert t.block is not None
            cut = t.block[0].start
            for qpos, h in enumerate(self._queue):
                if any(seg.text is t and seg.start <= cut < seg.end for seg in h.segs):
                    if first is None or qpos < first[0]:
                        first = (qpos, t, t.block)
                    break
        if first is None:
            return
        qpos, text, (sp, pol) = first
        # Buffered: the answer is judged whole and none of it is released.
        prefix = [] if self._buffered else self._clean_prefix(qpos, text, sp.start)
        self._queue.clear()
        self._ctx.decide(pol.name, "output", "block", entity=sp.entity)
        raise StreamBlocked(prefix, pol.block_error("output", streaming=True))

    def _clean_prefix(self, qpos: int, text: TextStream, cut: int) -> list[bytes]:
        """The events before the blocking span, and the clean part of the event where it starts."""
        prefix: list[bytes] = []
        for i in range(qpos):
            h = self._queue[i]
            if h.segs and not self._releasable(h):
                return prefix
            prefix.append(self._render(h))
        h = self._queue[qpos]
        changes: list[tuple[Segment, bytes]] = []
        for seg in h.segs:
            t, a, b = seg.text, seg.start, seg.end
            if t is text:
                spans = [x for x in t.spans if x[0].start < cut and x[0].end > a]
                changes.append((seg, redact(seg.data[:cut - a], spans, a, seg.escapes)))
            elif b > t.safe:
                changes.append((seg, b""))  # another stream's text that is not final yet
            elif t.spans:
                spans = [x for x in t.spans if x[0].start < b and x[0].end > a]
                changes.append((seg, redact(seg.data, spans, a, seg.escapes)))
        if any(new for seg, new in changes if seg.text is text):
            if h.seq >= 0:
                self.last_seq = h.seq
            prefix.append(self._rewrite(h, changes))
        return prefix

