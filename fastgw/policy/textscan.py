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

from collections.abc import Collection, Iterator
from typing import Any

from fastgw.policy.base import PolicyViolation, RequestContext
from fastgw.policy.findings import Finding, Findings
from fastgw.scan.database import ScanDB, Span
from fastgw.scan.scanner import find_spans

__all__ = ["ScanPolicy", "Tagged", "merge_spans", "redact", "process_slots", "request_slots", "response_slots"]

#: A final span and the policy that found it.
Tagged = tuple[Span, "ScanPolicy"]


class ScanPolicy:
    """A compiled text-scanning policy (built in the master; `allocate_scratch` in each worker)."""

    name = ""
    #: What the block message says was detected ("PII", "unsafe content").
    what = ""

    def __init__(self, db: ScanDB, action: str, streaming_mode: str, apply_to: Collection[str], replacement: str,
                 on_error: str) -> None:
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
        if sp.start >= base:
            if json_escapes is not None and _escaping(data, sp.start - base, json_escapes):
                out.append(b"\\")
            out.append(pol.replacement(sp))
        pos = max(pos, min(sp.end, end))
    out.append(data[pos - base:])
    return b"".join(out)


def _escaping(data: bytes, i: int, before: int) -> bool:
    """Whether data[i] follows an odd run of backslashes (counting `before` that end the earlier text)."""
    head = data[:i]
    run = len(head) - len(head.rstrip(b"\\"))
    if run == len(head):
        run += before
    return run % 2 == 1


# ---- whole texts -------------------------------------------------------------------------------

Slot = tuple[Any, Any, str, "int | None"]  # (container, key, field, choice)


def process_slots(policies: list[ScanPolicy], slots: Iterator[Slot], where: str, findings: Findings,
                  ctx: RequestContext) -> bool:
    """Run the scanning policies over whole texts in place: record, then refuse (first policy in chain
    order that blocks) or redact. Returns True when a text changed."""
    changed = False
    hits: dict[str, int] = {}
    for container, key, fld, choice in slots:
        data = container[key].encode()
        found: list[Tagged] = []
        blocker: ScanPolicy | None = None
        for pol in policies:
            spans = find_spans(pol.db, data)
            if not spans:
                continue
            for sp in spans:
                findings.record(Finding(pol.name, sp.entity, where, sp.start, sp.end, pol.action, ctx.request_id,
                                        choice, fld))
                hits[pol.name] = hits.get(pol.name, 0) + 1
            if pol.action == "block" and blocker is None:
                blocker = pol
            elif pol.action == "redact":
                found += [(sp, pol) for sp in spans]
        if blocker is not None:
            _decide(ctx, policies, where, hits, blocker)
            raise blocker.block_error(where)
        if found:
            escapes = 0 if fld.endswith("arguments") else None
            container[key] = redact(data, merge_spans(found), json_escapes=escapes).decode()
            changed = True
    _decide(ctx, policies, where, hits, None)
    return changed


def _decide(ctx: RequestContext, policies: list[ScanPolicy], where: str, hits: dict[str, int],
            blocker: ScanPolicy | None) -> None:
    for pol in policies:
        n = hits.get(pol.name, 0)
        if pol is blocker:
            ctx.decide(pol.name, where, "block", findings=n)
            return
        ctx.decide(pol.name, where, ("observe" if pol.action == "observe" else pol.action) if n else "allow",
                   findings=n)


def request_slots(body: dict) -> Iterator[Slot]:
    """Every user-supplied text in an OpenAI request: message contents and text parts, tool-call
    arguments in the history, `prompt` (completions) and `input` (embeddings)."""
    msgs = body.get("messages")
    if isinstance(msgs, list):
        for m in msgs:
            if not isinstance(m, dict):
                continue
            c = m.get("content")
            if isinstance(c, str):
                yield m, "content", "messages.content", None
            elif isinstance(c, list):
                for part in c:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield part, "text", "messages.content.text", None
            yield from _tool_call_slots(m.get("tool_calls"), None)
    for key in ("prompt", "input", "instructions", "system"):
        v = body.get(key)
        if isinstance(v, str):
            yield body, key, key, None
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, str):
                    yield v, i, key, None
                elif isinstance(item, dict):  # Responses API input items, Anthropic system blocks
                    if isinstance(item.get("text"), str):
                        yield item, "text", key, None
                    c = item.get("content")
                    if isinstance(c, str):
                        yield item, "content", key, None
                    elif isinstance(c, list):
                        for part in c:
                            if isinstance(part, dict) and isinstance(part.get("text"), str):
                                yield part, "text", key, None


def response_slots(body: dict) -> Iterator[Slot]:
    """Every generated text in a non-streamed chat, completions, Responses API or Anthropic Messages response."""
    output = body.get("output")
    if isinstance(output, list):  # Responses API
        for item in output:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call" and isinstance(item.get("arguments"), str):
                yield item, "arguments", "tool_calls.arguments", 0
            parts = item.get("content")
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict):
                    for key in ("text", "refusal"):
                        if isinstance(part.get(key), str):
                            yield part, key, key, 0
    content = body.get("content")
    if isinstance(content, list):  # Anthropic Messages
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                yield block, "text", "text", 0
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
            for key in ("content", "refusal", "reasoning_content"):
                if isinstance(msg.get(key), str):
                    yield msg, key, key, idx
            yield from _tool_call_slots(msg.get("tool_calls"), idx)


def _tool_call_slots(calls: object, choice: int | None) -> Iterator[Slot]:
    if isinstance(calls, list):
        for tc in calls:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                yield fn, "arguments", "tool_calls.arguments", choice
