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

__all__ = ["ScanPolicy", "Tagged", "merge_spans", "redact", "process_slots", "request_slots", "response_slots",
           "walk", "TokenRun", "SKIP", "is_blob", "set_token", "decide_counts"]

#: A final span and the policy that found it.
Tagged = tuple[Span, "ScanPolicy"]


class ScanPolicy:
    """A compiled text-scanning policy (built in the master; `allocate_scratch` in each worker)."""

    name = ""
    #: What the block message says was detected ("PII", "unsafe content").
    what = ""
    #: Logprobs tokens: "redact" (as the text they spell) or "drop" (removed from the answer).
    logprobs = "redact"

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
        if sp.start >= base and not sp.cont:  # a block's later pieces only remove their bytes
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

#: Keys whose *string* values are identifiers, enums or opaque blobs, never text (a dict or list under such a
#: key is still walked). Every other string in a known container is scanned: new provider fields open no hole.
SKIP = frozenset(("id", "type", "role", "index", "object", "model", "status", "call_id", "tool_call_id",
                  "tool_use_id", "item_id", "file_id", "response_id", "previous_response_id", "signature",
                  "encrypted_content", "media_type", "format", "detail", "finish_reason", "stop_reason",
                  "file_data", "b64_json", "partial_image_b64", "container_id", "approval_request_id",
                  "service_tier", "reasoning_effort", "truncation", "verbosity", "stop_sequence"))
#: Keys whose value is arbitrary JSON chosen by a caller or a model (tool inputs, schemas, metadata): every
#: string inside is scanned, whatever its key.
_JSON_VALUES = frozenset(("parameters", "input_schema", "schema", "metadata", "properties"))
_TOOL_INPUT = frozenset(("tool_use", "server_tool_use", "mcp_tool_use"))
_NOSKIP: frozenset[str] = frozenset()


def is_blob(node: dict, key: str, value: str) -> bool:
    """An opaque blob, not text: base64 `data` (images, audio, PDFs, encrypted reasoning; a `text` document's
    `data` is text), an image generation `result`, a base64 data URL."""
    if key == "data":
        return node.get("type") != "text"
    if key == "result" and node.get("type") == "image_generation_call":
        return True
    return value[:5] == "data:" and ";base64," in value[:128]


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
                sub = _NOSKIP if (k in _JSON_VALUES or (k == "input" and node.get("type") in _TOOL_INPUT)) \
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


def process_slots(policies: list[ScanPolicy], slots: Iterator[Slot], where: str, findings: Findings,
                  ctx: RequestContext) -> bool:
    """Run the scanning policies over whole texts in place: record, then refuse (first policy in chain
    order that blocks) or redact. Returns True when a text changed.

    Decisions: one per policy and entity found (`entity`, `count`: never the value), "allow" for a policy
    that found nothing."""
    changed = False
    hits: dict[tuple[str, str], int] = {}
    drop = any(p.logprobs == "drop" for p in policies)
    for container, key, fld, choice in slots:
        run: TokenRun | None = None
        if isinstance(container, TokenRun):
            if drop:
                container.drop()
                changed = True
                continue
            run = container
            pieces = [p.encode() for p in run.pieces()]
            data = b"".join(pieces)
        else:
            data = container[key].encode()
        found: list[Tagged] = []
        blocker: tuple[ScanPolicy, str] | None = None
        for pol in policies:
            spans = find_spans(pol.db, data, json=fld.endswith("arguments"))
            if not spans:
                continue
            for sp in spans:
                if sp.cont:
                    continue  # a later piece of a long block is the same finding
                findings.record(Finding(pol.name, sp.entity, where, sp.start, sp.end, pol.action, ctx.request_id,
                                        choice, fld))
                k = (pol.name, sp.entity)
                hits[k] = hits.get(k, 0) + 1
            if pol.action == "block" and blocker is None:
                blocker = (pol, spans[0].entity)
            elif pol.action == "redact":
                found += [(sp, pol) for sp in spans]
        if blocker is not None:
            _decide(ctx, policies, where, hits, blocker)
            raise blocker[0].block_error(where)
        if found:
            merged = merge_spans(found)
            if run is not None:
                base = 0
                for i, piece in enumerate(pieces):
                    new = redact(piece, merged, base)
                    if new != piece:
                        run.set(i, new.decode(errors="replace"))
                    base += len(piece)
            else:
                escapes = 0 if fld.endswith("arguments") else None
                container[key] = redact(data, merged, json_escapes=escapes).decode()
            changed = True
    _decide(ctx, policies, where, hits, None)
    return changed


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


def request_slots(body: dict) -> Iterator[Slot]:
    """Every text in a request, whatever the endpoint: message contents and parts, names, tool calls and
    their arguments, tool results (`tool_result`, `function_call_output`), Anthropic `tool_use.input`,
    `system`, `instructions`, `prompt`, `input`, `user`, `metadata` values, tool descriptions and schemas,
    `prediction`, stop sequences; any string field not known to be an identifier or a blob (`SKIP`)."""
    yield from walk(body, "", None)


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
            yield from walk(v, k, 0, _NOSKIP if k in _JSON_VALUES else SKIP)
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
