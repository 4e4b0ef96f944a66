"""The `pii-detector` policy: detection settings, redaction of whole texts, and the request/response fields it covers.

Streaming output goes through `fastgw.policy.stream` (holdback, per-event release);
this module handles what is whole: request bodies (input) and non-streamed
responses (output). Both paths use the same database and the same span resolution,
so a streamed answer is redacted exactly as the whole answer would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastgw.config import PiiDetector
from fastgw.policy.findings import Finding, Findings
from fastgw.proto.errors import GatewayError
from fastgw.scan.database import ScanDB, Span
from fastgw.scan.patterns import ENTITIES, custom_pattern, patterns_for
from fastgw.scan.scanner import find_spans

__all__ = ["PiiPolicy", "PolicyViolation", "STREAM_BLOCK_MESSAGE"]

NAME = "pii-detector"
STREAM_BLOCK_MESSAGE = "Stream terminated: PII detected"


class PolicyViolation(GatewayError):
    """A policy refused the request (input) or the answer (output): 409, never worth retrying."""

    status = 409
    type = "policy_violation"
    no_retry = True


def block_error(where: str, policy: str = NAME, streaming: bool = False) -> PolicyViolation:
    if where == "input":
        msg = "Request blocked: PII detected"
    else:
        msg = STREAM_BLOCK_MESSAGE if streaming else "Response blocked: PII detected"
    return PolicyViolation(msg, code=f"{where}_blocked", extra={"policy": policy})


class PiiPolicy:
    """Compiled pii-detector settings (built once in the master; `allocate_scratch` in each worker)."""

    name = NAME

    def __init__(self, settings: PiiDetector) -> None:
        patterns = patterns_for(settings.entities if settings.entities is not None else ENTITIES)
        patterns += [custom_pattern(c.name, c.regex, c.max_width) for c in settings.custom]
        self.db = ScanDB(patterns)
        self.action = settings.action
        self.buffered = settings.streaming_mode == "buffered"
        self.input = "input" in settings.apply_to
        self.output = "output" in settings.apply_to
        self._replacement = settings.replacement
        self._mask = settings.replacement if len(settings.replacement) == 1 else None
        self._cache: dict[str, bytes] = {}

    def allocate_scratch(self) -> None:
        self.db.allocate_scratch()

    # ---- redaction ------------------------------------------------------------------------
    def replacement(self, span: Span) -> bytes:
        """What a span becomes in the text: the template with its entity, or a mask of its length."""
        if self._mask is not None:
            return self._mask.encode() * (span.end - span.start)  # spans are ASCII: one mark per character
        r = self._cache.get(span.entity)
        if r is None:
            r = self._cache[span.entity] = self._replacement.replace("{entity}", span.entity).encode()
        return r

    def redact(self, data: bytes, spans: list[Span], base: int = 0, json_escapes: int | None = None) -> bytes:
        """`data` (which starts at stream offset `base`) with every span that starts in it replaced.

        `json_escapes` marks text that is JSON source (tool-call arguments): the number of backslashes
        that end the text before `data`. A span that starts right after an escaping backslash (`\n`,
        `\u00e9` read as part of the value) gets a backslash put back, so the escape stays valid JSON.
        """
        out: list[bytes] = []
        pos = base
        end = base + len(data)
        for sp in spans:
            if sp.end <= base or sp.start >= end:
                continue
            if sp.start > pos:
                out.append(data[pos - base:sp.start - base])
            if sp.start >= base:
                if json_escapes is not None and _escaping(data, sp.start - base, json_escapes):
                    out.append(b"\\")
                out.append(self.replacement(sp))
            pos = max(pos, min(sp.end, end))
        out.append(data[pos - base:])
        return b"".join(out)

    def scan_text(self, text: str) -> tuple[bytes, list[Span]]:
        """(UTF-8 bytes, spans) of a whole text."""
        data = text.encode()
        return data, find_spans(self.db, data)

    # ---- whole bodies ------------------------------------------------------------------------
    def apply(self, slots: Iterator[tuple[dict | list, Any, str, int | None]], where: str, findings: Findings,
              request_id: str) -> bool:
        """Scan text slots (container, key, field, choice); redact in place or raise on block. True if changed."""
        changed = False
        for container, key, fld, choice in slots:
            data, spans = self.scan_text(container[key])
            if not spans:
                continue
            for sp in spans:
                findings.record(Finding(NAME, sp.entity, where, sp.start, sp.end, self.action, request_id, choice,
                                        fld))
            if self.action == "block":
                raise block_error(where)
            if self.action == "redact":
                escapes = 0 if fld.endswith("arguments") else None
                container[key] = self.redact(data, spans, json_escapes=escapes).decode()
                changed = True
        return changed


def _escaping(data: bytes, i: int, before: int) -> bool:
    """Whether data[i] follows an odd run of backslashes (counting `before` that end the earlier text)."""
    head = data[:i]
    run = len(head) - len(head.rstrip(b"\\"))
    if run == len(head):
        run += before
    return run % 2 == 1


# ---- the text fields of requests and responses ------------------------------------------------

def request_slots(body: dict) -> Iterator[tuple[dict | list, Any, str, int | None]]:
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
    for key in ("prompt", "input"):
        v = body.get(key)
        if isinstance(v, str):
            yield body, key, key, None
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, str):
                    yield v, i, key, None


def response_slots(body: dict) -> Iterator[tuple[dict | list, Any, str, int | None]]:
    """Every generated text in a non-streamed chat or completions response."""
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


def _tool_call_slots(calls: object, choice: int | None) -> Iterator[tuple[dict | list, Any, str, int | None]]:
    if isinstance(calls, list):
        for tc in calls:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                yield fn, "arguments", "tool_calls.arguments", choice
