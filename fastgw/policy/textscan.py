"""Text-scanning policies (pii-detector, safety-filter): what they share, and how several act on one text.

Each scanning policy has its own Hyperscan database, action and replacement.
Several policies on one text combine the same way whether the text is whole (a
request, a non-streamed answer) or streamed: spans merge leftmost-first (at equal
starts the earlier policy in the chain wins), so streaming and whole-text give the
same result. Refusal on whole texts follows chain order: the first policy that
blocks answers. On streams the earliest blocking span cuts the stream, so no byte
of any blocked span is ever sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterator
from typing import Any, Final

import hyperscan
from mypy_extensions import mypyc_attr

from fastgw.api.errors import RequestTooExpensive
from fastgw.api.limits import MAX_REQUEST_CPU, SCAN_SLICE
from fastgw.policy.base import PolicyViolation, RequestContext
from fastgw.policy.findings import Finding, Findings
from fastgw.policy.textkeys import JSON_VALUES, NOSKIP, SKIP, is_blob, text_chars, tool_input
from fastgw.scan.database import ScanDB, Span, compile_any
from fastgw.scan.scanner import ScanBudget, StreamScanner, block_reports, find_spans

__all__ = ["ScanPolicy", "Prefilter", "Tagged", "merge_spans", "redact", "process_slots", "process_slots_sliced",
           "request_slots", "text_chars", "response_slots", "walk", "TokenRun", "SKIP", "is_blob", "set_token",
           "decide_counts", "decide_clean", "Slicer", "RequestTooExpensive", "SLICE_PIECE"]

#: Smallest piece of a long text fed to its scanners between two looks at the clock (characters or bytes):
#: ~1.5 ms at the slowest text found (bench/scan_worst.py), so a slice overruns by less than one.
SLICE_PIECE: Final = 1024
#: Largest piece (clean prose scans at ~50 MB/s: a quarter of a 2 ms slice is ~25 KB).
_PIECE_MAX: Final = 65536
#: Spans redacted between two looks at the clock (~1 ms).
_SPAN_RUN: Final = 2048
#: Spans recorded as findings between two looks at the clock (a finding is logged: ~5 µs each).
_RECORD_RUN: Final = 256


class Slicer:
    """Cuts the policy work of one request into slices of about `slice` seconds of the event loop, and keeps its
    CPU time under `budget`.

    Work calls `due()` at its checkpoints (a clock read) and `await pause()` when it says so: the CPU time
    of the slice (`time.thread_time`) is charged, `RequestTooExpensive` raised past the budget, and the loop
    gets a turn (`asyncio.sleep(0)`) before the next slice starts."""

    __slots__ = ("slice", "budget", "spent", "yields", "_t0", "_deadline")

    def __init__(self, budget: float = MAX_REQUEST_CPU, spent: float = 0.0, slice_s: float = SCAN_SLICE) -> None:
        self.slice = slice_s
        self.budget = budget
        #: CPU seconds charged so far (this request's policies, both directions).
        self.spent = spent
        #: Turns given to the loop (tests count them).
        self.yields = 0
        self._t0 = time.thread_time()
        self._deadline = time.perf_counter() + slice_s

    def due(self) -> bool:
        """Whether this slice is used up."""
        return time.perf_counter() >= self._deadline

    def charge(self) -> None:
        """Add the CPU time since the slice started; past the budget, refuse the request."""
        now = time.thread_time()
        self.spent += now - self._t0
        self._t0 = now
        if self.spent > self.budget:
            raise RequestTooExpensive(self.budget)

    async def pause(self) -> None:
        """End the slice: charge it, let the loop run, start the next."""
        self.charge()
        self.yields += 1
        await asyncio.sleep(0)
        self._t0 = time.thread_time()
        self._deadline = time.perf_counter() + self.slice

#: A final span and the policy that found it.
Tagged = tuple[Span, "ScanPolicy"]


@mypyc_attr(allow_interpreted_subclasses=True)  # pii-detector and safety-filter: their settings are msgspec Structs
class ScanPolicy:
    """A compiled text-scanning policy (built in the master; `allocate_scratch` in each worker). `name`: the
    policy's; `what`: what its block message says was detected ("PII", "unsafe content")."""

    def __init__(self, name: str, what: str, db: ScanDB, action: str, streaming_mode: str, apply_to: Collection[str],
                 replacement: str, on_error: str) -> None:
        self.name = name
        self.what = what
        #: Logprobs tokens: "redact" (as the text they spell) or "drop" (removed from the answer).
        self.logprobs = "redact"
        self.db = db
        self.action = action
        self.buffered = streaming_mode == "buffered"
        self.input = "input" in apply_to
        self.output = "output" in apply_to
        self.on_error = on_error
        self.index = 0  # position among the chain's scanning policies (set by the chain)
        self._replacement = replacement
        self._mask = replacement if len(replacement) == 1 else None
        self._cache: dict[str, bytes] = {}

    def allocate_scratch(self) -> None:
        self.db.allocate_scratch()

    def replacement(self, span: Span) -> bytes:
        """What a span becomes: the template with `{entity}` filled in, or a mask of its length."""
        if self._mask is not None:
            return self._mask.encode() * (span.end - span.start)  # spans are ASCII: one mark per character
        r = self._cache.get(span.entity)
        if r is None:
            r = self._cache[span.entity] = self._replacement.replace("{entity}", span.entity).encode()
        return r

    def block_error(self, where: str, streaming: bool = False) -> PolicyViolation:
        if where == "input":
            msg = f"Request blocked: {self.what} detected"
        else:
            msg = (f"Stream terminated: {self.what} detected" if streaming
                   else f"Response blocked: {self.what} detected")
        return PolicyViolation(msg, self.name, where)

    # Single-policy conveniences (the CLI's `fastgw scan`, tests).
    def scan_text(self, text: str) -> tuple[bytes, list[Span]]:
        data = text.encode()
        return data, find_spans(self.db, data)

    def redact(self, data: bytes, spans: list[Span], base: int = 0, json_escapes: int | None = None) -> bytes:
        return redact(data, [(s, self) for s in spans], base, json_escapes)


def merge_spans(found: list[Tagged], after: int = 0) -> list[Tagged]:
    """Non-overlapping spans, leftmost first (ties: earlier policy, then longer), none starting before `after`."""
    out: list[Tagged] = []
    last = after
    for sp, pol in sorted(found, key=lambda t: (t[0].start, t[1].index, -t[0].end)):
        if sp.start >= last:
            out.append((sp, pol))
            last = sp.end
    return out


def redact(data: bytes, spans: list[Tagged], base: int = 0, json_escapes: int | None = None) -> bytes:
    """`data` (starting at stream offset `base`) with every span replaced by its policy's replacement; a span
    that started in earlier data only removes its bytes here.

    `json_escapes` marks text that is JSON source (tool-call arguments): the number of backslashes ending
    the text before `data`. A span right after an escaping backslash (`\\n`, `\\u00e9` read as part of the
    value) gets a backslash put back so the escape stays valid JSON.
    """
    out: list[bytes] = []
    pos = base
    end = base + len(data)
    for sp, pol in spans:
        if sp.end <= base or sp.start >= end:
            continue
        if sp.start > pos:
            out.append(data[pos - base:sp.start - base])
        if sp.start >= base and not sp.cont:  # a block's later pieces only remove their bytes
            if json_escapes is not None and _escaping(data, sp.start - base, json_escapes):
                out.append(b"\\")
            out.append(pol.replacement(sp))
        pos = max(pos, min(sp.end, end))
    out.append(data[pos - base:])
    return b"".join(out)


def _escaping(data: bytes, i: int, before: int) -> bool:
    """Whether data[i] follows an odd run of backslashes (counting `before` that end the earlier text)."""
    run = _backslashes(data, i)
    if run == i:
        run += before
    return run % 2 == 1


def _backslashes(data: bytes, i: int) -> int:
    """The backslashes right before data[i] (counted back, never copying the text before it: a long text with
    many spans would be copied once per span)."""
    j = i
    while j > 0 and data[j - 1] == 92:
        j -= 1
    return i - j


# ---- whole texts -------------------------------------------------------------------------------

Slot = tuple[Any, Any, str, "int | None"]  # (container, key, field, choice)

def walk(node: object, field: str, choice: int | None, skip: frozenset[str] = SKIP,
         omit: str = "") -> Iterator[Slot]:
    """Every text in a JSON value of a known container: strings not under a `skip` key and not blobs; lists
    and objects walked through (their `field` is the dotted path of keys). `omit`: a key of `node` walked
    otherwise (logprobs)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == omit:
                continue
            if isinstance(v, str):
                if v and (k not in skip) and not is_blob(node, k, v):
                    yield node, k, f"{field}.{k}" if field else k, choice
            elif isinstance(v, (dict, list)):
                sub = NOSKIP if (k in JSON_VALUES or (k == "input" and tool_input(node))) \
                    else skip
                yield from walk(v, f"{field}.{k}" if field else k, choice, sub)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, str):
                if v:
                    yield node, i, field, choice
            elif isinstance(v, (dict, list)):
                yield from walk(v, field, choice, skip)


class TokenRun:
    """A logprobs token list: one text spelled by its tokens (the answer's own text, token by token).

    Scanned as one text (the tokens joined); a token that overlaps a span gets the same treatment as a
    streamed piece of text: the first piece of the span carries the replacement, the rest of it is removed,
    so no value is ever spelled across tokens. A changed token's `bytes` and its `top_logprobs`
    alternatives become the changed token (the alternatives at a redacted position would spell the value).
    `drop` removes the logprobs instead (`logprobs: drop`).
    """

    __slots__ = ("owner", "key", "tokens", "legacy", "empty")

    def __init__(self, owner: dict, key: str, tokens: list, legacy: bool, empty: object) -> None:
        self.owner = owner  # the dict holding the logprobs ("logprobs" of a choice, or an output_text part)
        self.key = key
        self.tokens = tokens  # chat/Responses: entries {"token", "bytes", "top_logprobs"}; legacy: strings
        self.legacy = legacy
        self.empty = empty  # what `drop` leaves: None (chat, completions) or [] (Responses)

    def pieces(self) -> list[str]:
        if self.legacy:
            return [t if isinstance(t, str) else "" for t in self.tokens]
        out: list[str] = []
        for e in self.tokens:
            tok = e.get("token") if isinstance(e, dict) else None
            out.append(tok if isinstance(tok, str) else "")
        return out

    def set(self, i: int, text: str) -> None:
        if self.legacy:
            self.tokens[i] = text
            lp = self.owner.get(self.key)
            top = lp.get("top_logprobs") if isinstance(lp, dict) else None
            if isinstance(top, list) and i < len(top) and isinstance(top[i], dict):
                vals = lp.get("token_logprobs") if isinstance(lp, dict) else None
                v = vals[i] if isinstance(vals, list) and i < len(vals) else None
                top[i] = {text: v if v is not None else next(iter(top[i].values()), 0.0)}
        else:
            set_token(self.tokens[i], text)

    def drop(self) -> None:
        self.owner[self.key] = self.empty


def set_token(entry: dict, text: str) -> None:
    """A logprobs entry whose token changed: its bytes and every alternative become the changed token."""
    entry["token"] = text
    if isinstance(entry.get("bytes"), list):
        entry["bytes"] = list(text.encode())
    alts = entry.get("top_logprobs")
    if isinstance(alts, list):
        for a in alts:
            if isinstance(a, dict):
                a["token"] = text
                if isinstance(a.get("bytes"), list):
                    a["bytes"] = list(text.encode())


class Prefilter:
    """The scanning policies of one direction as one block database (`compile_any` of all their patterns): a body
    whose texts are all ASCII, none JSON source nor logprobs tokens, and make it report nothing, needs no policy's
    scan — one block scan per text for the chain, where each policy would take its own look at each text (and
    a long clean text its scanner). A text's canonical view is the text itself only when it is ASCII and not JSON
    source (`fastgw.scan.fold`): any other body goes to the policies as it is."""

    def __init__(self, policies: list[ScanPolicy]) -> None:
        self.db = compile_any([p for pol in policies for p in pol.db.patterns],
                              any(pol.db.table_rule >= 0 for pol in policies))

    def allocate_scratch(self) -> None:
        self.db.scratch = hyperscan.Scratch(self.db)

    def clean(self, slots: list[Slot]) -> bool:
        """Whether no policy of the set can find anything in these texts."""
        for container, key, fld, _ in slots:
            if isinstance(container, TokenRun) or fld.endswith("arguments"):
                return False
            text = container[key]
            if not isinstance(text, str) or not text.isascii() or not self.clean_prose(text.encode()):
                return False
        return True

    def clean_prose(self, data: bytes) -> bool:
        """Whether no policy of the set can find anything in this prose (UTF-8; neither JSON source nor logprobs
        tokens, which the caller tells): ASCII, and the database reports nothing."""
        return data.isascii() and not block_reports(self.db, data)


def process_slots(policies: list[ScanPolicy], slots: Iterator[Slot], where: str, findings: Findings,
                  ctx: RequestContext) -> bool:
    """Run the scanning policies over whole texts in place: record, then refuse (first policy in chain
    order that blocks) or redact. Returns True when a text changed.

    Decisions: one per policy and entity found (`entity`, `count`: never the value), "allow" for a policy
    that found nothing."""
    run = _SlotRun(policies, where, findings, ctx)
    for slot in slots:
        run.slot(slot)
    return run.done()


async def process_slots_sliced(policies: list[ScanPolicy], slots: Iterator[Slot], where: str, findings: Findings,
                               ctx: RequestContext, slicer: Slicer) -> bool:
    """`process_slots` in slices of the event loop (`Slicer`): the same decisions and the same texts, for
    bodies too large to check in one go. A long text is fed to its scanners in pieces, settled as it goes,
    and redacted in runs of spans; the walk over the body yields too."""
    run = _SlotRun(policies, where, findings, ctx)
    for container, key, fld, choice in slots:
        if slicer.due():
            await slicer.pause()
        if isinstance(container, TokenRun) or len(container[key]) <= SLICE_PIECE:
            run.slot((container, key, fld, choice))
            continue
        data = container[key].encode()
        json = fld.endswith("arguments")
        per = [await _spans_sliced(pol.db, data, json, run.budgets[i], slicer) for i, pol in enumerate(policies)]
        for i in range(0, max(map(len, per), default=0), _RECORD_RUN):
            # Findings a run of spans at a time (a text of values has one every few bytes; each is recorded).
            run.record([spans[i:i + _RECORD_RUN] for spans in per], fld, choice)
            if slicer.due():
                await slicer.pause()
        acting = [(pol, spans) for pol, spans in zip(policies, per) if spans and pol.action == "redact"]
        if len(acting) == 1 and not any(spans and pol.action == "block" for pol, spans in zip(policies, per)):
            # One policy redacts (the chain runs one at a time): its spans are in order and apart already, and
            # are tagged a run at a time as they are applied.
            pol, spans = acting[0]
            run.judge(per, fld, choice, recorded=True, merge=False)
            text = await _redact_sliced(data, spans, pol, 0 if json else None, slicer)
        else:
            merged = run.judge(per, fld, choice, recorded=True)
            if not merged:
                continue
            text = await _redact_sliced(data, [sp for sp, _ in merged], merged, 0 if json else None, slicer)
        container[key] = text.decode()
        run.changed = True
    return run.done()


class _SlotRun:
    """One `process_slots` run: the budgets, the counts, the refusal, the redaction of each text."""

    __slots__ = ("policies", "where", "findings", "ctx", "changed", "hits", "drop", "budgets")

    def __init__(self, policies: list[ScanPolicy], where: str, findings: Findings, ctx: RequestContext) -> None:
        self.policies = policies
        self.where = where
        self.findings = findings
        self.ctx = ctx
        self.changed = False
        self.hits: dict[tuple[str, str], int] = {}
        self.drop = any(p.logprobs == "drop" for p in policies)
        #: One per policy for the whole request: a body of many small texts gets no more judging than one text
        #: of their size (ScanBudget).
        self.budgets = [ScanBudget() for _ in policies]

    def slot(self, slot: Slot) -> None:
        """Scan one text whole, then record, refuse or redact."""
        container, key, fld, choice = slot
        run: TokenRun | None = None
        if isinstance(container, TokenRun):
            if self.drop:
                container.drop()
                self.changed = True
                return
            run = container
            pieces = [p.encode() for p in run.pieces()]
            data = b"".join(pieces)
        else:
            data = container[key].encode()
        json = fld.endswith("arguments")
        merged = self.judge([find_spans(pol.db, data, json, self.budgets[i]) for i, pol in enumerate(self.policies)],
                            fld, choice)
        if not merged:
            return
        if run is not None:
            base = 0
            for i, piece in enumerate(pieces):
                new = redact(piece, merged, base)
                if new != piece:
                    run.set(i, new.decode(errors="replace"))
                base += len(piece)
        else:
            container[key] = redact(data, merged, json_escapes=0 if json else None).decode()
        self.changed = True

    def record(self, per: list[list[Span]], fld: str, choice: int | None) -> None:
        """Record the spans each policy found (findings, and the counts the decisions give)."""
        hits = self.hits
        for pol, spans in zip(self.policies, per):
            for sp in spans:
                if sp.cont:
                    continue  # a later piece of a long block is the same finding
                self.findings.record(Finding(pol.name, sp.entity, self.where, sp.start, sp.end, pol.action,
                                             self.ctx.request_id, choice, fld))
                k = (pol.name, sp.entity)
                hits[k] = hits.get(k, 0) + 1

    def judge(self, per: list[list[Span]], fld: str, choice: int | None, recorded: bool = False,
              merge: bool = True) -> list[Tagged]:
        """Record the spans each policy found in one text (unless `recorded` already), refuse it (the first
        blocking policy in chain order), or return the spans to redact, merged (`merge=False`: the caller
        only needs the refusal)."""
        found: list[Tagged] = []
        blocker: tuple[ScanPolicy, str] | None = None
        hits = self.hits
        if not recorded:
            self.record(per, fld, choice)
        for pol, spans in zip(self.policies, per):
            if not spans:
                continue
            if pol.action == "block" and blocker is None:
                blocker = (pol, spans[0].entity)
            elif pol.action == "redact" and merge:
                found += [(sp, pol) for sp in spans]
        if blocker is not None:
            _decide(self.ctx, self.policies, self.where, hits, blocker)
            raise blocker[0].block_error(self.where)
        if not found:
            return found
        # One policy's spans are already in order and apart (its scanner resolved them): nothing to merge.
        return found if len(found) == 1 or all(t[1] is found[0][1] for t in found) else merge_spans(found)

    def done(self) -> bool:
        _decide(self.ctx, self.policies, self.where, self.hits, None)
        return self.changed


async def _spans_sliced(db: ScanDB, data: bytes, json: bool, budget: ScanBudget, slicer: Slicer) -> list[Span]:
    """`find_spans` of a long text, fed and settled in pieces sized to the slice (what the whole text gives:
    a scanner's spans do not depend on how its text is cut)."""
    sc = StreamScanner(db, json, budget)
    out: list[Span] = []
    try:
        i = 0
        piece = SLICE_PIECE
        n = len(data)
        while i < n:
            t0 = time.perf_counter()
            sc.feed(data[i:i + piece])
            out += sc.settle()[1]
            i += piece
            # The next piece: about a quarter of a slice at the rate this one took.
            rate = (time.perf_counter() - t0) / piece
            piece = int(min(_PIECE_MAX, max(SLICE_PIECE, slicer.slice / 4 / rate))) if rate > 0 else _PIECE_MAX
            if slicer.due():
                await slicer.pause()
        out += sc.settle(final=True)[1]
    finally:
        sc.close()
    return out


async def _redact_sliced(data: bytes, spans: list[Span], tags: ScanPolicy | list[Tagged], json_escapes: int | None,
                         slicer: Slicer) -> bytes:
    """`redact` of a long text with many spans (in order and apart), a run of spans at a time; `tags`: the one
    policy they all belong to, or the tagged spans (one per span)."""
    out: list[bytes] = []
    pos = 0
    for k in range(0, len(spans), _SPAN_RUN):
        run: list[Tagged] = [(sp, tags) for sp in spans[k:k + _SPAN_RUN]] if isinstance(tags, ScanPolicy) \
            else tags[k:k + _SPAN_RUN]
        last = k + _SPAN_RUN >= len(spans)
        upto = len(data) if last else max(pos, run[-1][0].end)
        esc = None
        if json_escapes is not None:
            esc = _backslashes(data, pos)
            if esc == pos:
                esc += json_escapes
        out.append(redact(data[pos:upto], run, pos, esc))
        pos = upto
        if slicer.due():
            await slicer.pause()
    return b"".join(out)


def _decide(ctx: RequestContext, policies: list[ScanPolicy], where: str, hits: dict[tuple[str, str], int],
            blocker: tuple[ScanPolicy, str] | None) -> None:
    for pol in policies:
        if blocker is not None and pol is blocker[0]:
            ent = blocker[1]
            ctx.decide(pol.name, where, "block", entity=ent, count=hits.get((pol.name, ent), 1))
            return
        decide_counts(ctx, pol, where, hits)


def decide_counts(ctx: RequestContext, pol: ScanPolicy, where: str, hits: dict[tuple[str, str], int]) -> None:
    """A policy's decisions on one request's texts: one per entity it found, with the count; else "allow"."""
    outcome = "observe" if pol.action == "observe" else pol.action
    any_hit = False
    for (name, entity), n in hits.items():
        if name == pol.name:
            ctx.decide(pol.name, where, outcome, entity=entity, count=n)
            any_hit = True
    if not any_hit:
        ctx.decide(pol.name, where, "allow", count=0)


def decide_clean(ctx: RequestContext, policies: list[ScanPolicy], where: str) -> None:
    """The decisions of policies that found nothing (what `process_slots` records for texts `Prefilter` vouched
    for, without its run)."""
    for pol in policies:
        ctx.decide(pol.name, where, "allow", count=0)


def request_slots(body: dict) -> Iterator[Slot]:
    """Every text in a request, whatever the endpoint: message contents and parts, names, tool calls and
    their arguments, tool results (`tool_result`, `function_call_output`), Anthropic `tool_use.input`,
    `system`, `instructions`, `prompt`, `input`, `user`, `metadata` values, tool descriptions and schemas,
    `prediction`, stop sequences; any string field not known to be an identifier or a blob (`SKIP`)."""
    return walk(body, "", None)  # the walk itself: a generator around it would be one more layer per slot


def response_slots(body: dict) -> Iterator[Slot]:
    """Every generated text in a non-streamed chat, completions, Responses API or Anthropic Messages
    response: each choice's message (content, refusal, reasoning in every form, tool calls, the legacy
    `function_call`, audio transcripts, annotations) and logprobs tokens; every Responses output item
    (messages, reasoning, function, MCP, web search, file search, code interpreter calls...) and
    `output_text`; every Messages content block (text, thinking, tool_use, server-tool results). Known fields
    of the wrong type are skipped; unknown string fields in those containers are scanned."""
    output = body.get("output")
    if isinstance(output, list):  # Responses API
        for item in output:
            if isinstance(item, dict):
                yield from _output_item(item)
    if isinstance(body.get("output_text"), str) and body["output_text"]:
        yield body, "output_text", "output_text", 0
    content = body.get("content")
    if isinstance(content, list):  # Anthropic Messages
        yield from walk([b for b in content if isinstance(b, dict)], "content", 0)
    choices = body.get("choices")
    if not isinstance(choices, list):
        return
    for ch in choices:
        if not isinstance(ch, dict):
            continue
        idx = ch.get("index") if isinstance(ch.get("index"), int) else None
        if isinstance(ch.get("text"), str):
            yield ch, "text", "text", idx
        msg = ch.get("message")
        if isinstance(msg, dict):
            yield from walk(msg, "", idx)
        lp = ch.get("logprobs")
        if isinstance(lp, dict):
            yield from _logprob_slots(ch, lp, idx)


def _output_item(item: dict) -> Iterator[Slot]:
    content = item.get("content")
    for k, v in item.items():
        if k == "content":
            continue
        if isinstance(v, str):
            if v and k not in SKIP and not is_blob(item, k, v):
                yield item, k, k if k != "arguments" else "tool_calls.arguments", 0
        elif isinstance(v, (dict, list)):
            yield from walk(v, k, 0, NOSKIP if k in JSON_VALUES else SKIP)
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            lp = part.get("logprobs")
            yield from walk(part, "", 0, omit="logprobs")
            if isinstance(lp, list) and lp:
                yield TokenRun(part, "logprobs", lp, False, []), None, "logprobs", 0


def _logprob_slots(ch: dict, lp: dict, idx: int | None) -> Iterator[Slot]:
    for key in ("content", "refusal"):
        entries = lp.get(key)
        if isinstance(entries, list) and entries:
            yield TokenRun(ch, "logprobs", entries, False, None), None, f"logprobs.{key}", idx
    toks = lp.get("tokens")
    if isinstance(toks, list) and toks:  # legacy completions
        yield TokenRun(ch, "logprobs", toks, True, None), None, "logprobs.tokens", idx
