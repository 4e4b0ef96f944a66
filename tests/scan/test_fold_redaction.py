"""The canonical view plus its offset map never lets a byte of a detected span out, under any split.

Values are disguised the ways people (and attackers) write them: full-width digits and letters, Unicode
dashes, NBSP and thin spaces as separators, zero-width characters inside e-mails and `sk-`/`AKIA` keys,
`\\u0040` escapes in JSON source. Each text is redacted whole and streamed in random splits (settling after
every piece and releasing only up to the safe offset): the outputs are identical, what was released at any
moment is a prefix of the whole redaction, and no disguised value's bytes appear in it. Also: block
patterns (a PEM key held header to footer, bounded) and validator context.
"""

from __future__ import annotations

import json as jsonlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.scan.database import CONTEXT_BYTES, Pattern, ScanDB, Span
from fastgw.scan.fold import fold_bytes
from fastgw.scan.scanner import StreamScanner, find_spans

PATTERNS = [
    Pattern("EMAIL", "EMAIL", rb"\b\w[\w.%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}", 254),
    Pattern("OPENAI_KEY", "API_KEY", rb"\bsk-[A-Za-z0-9_-]{20,}", 256),
    Pattern("AWS", "AWS_ACCESS_KEY", rb"\bAKIA[A-Z0-9]{16}\b", 20),
    Pattern("SSN", "US_SSN", rb"\b\d{3}-\d{2}-\d{4}\b", 11),
    Pattern("CARD", "CREDIT_CARD", rb"\b\d{4}(?: \d{4}){3}\b", 19),
]
#: A small bound, so the tests cross it often.
KEY_BOUND = 80
KEY = Pattern("PRIVATE_KEY", "PRIVATE_KEY", rb"-----BEGIN (?:RSA )?PRIVATE KEY-----", KEY_BOUND,
              block_until=rb"-----END (?:RSA )?PRIVATE KEY-----")

_DBS: dict[str, ScanDB] = {}


def db(name: str = "pii") -> ScanDB:
    if name not in _DBS:
        d = ScanDB(PATTERNS + [KEY]) if name == "pii" else ScanDB([KEY])
        d.allocate_scratch()
        _DBS[name] = d
    return _DBS[name]


# --- redaction as the policy layer does it ----------------------------------------------------------------

def redact(data: bytes, spans: list[Span], base: int = 0) -> bytes:
    """`data` (at stream offset `base`) with each span replaced; a span begun earlier (or a block's later
    piece) only removes its bytes."""
    out, pos, end = [], base, base + len(data)
    for sp in spans:
        if sp.end <= base or sp.start >= end:
            continue
        if sp.start > pos:
            out.append(data[pos - base:sp.start - base])
        if sp.start >= base and not sp.cont:
            out.append(f"[{sp.entity}]".encode())
        pos = max(pos, min(sp.end, end))
    out.append(data[pos - base:])
    return b"".join(out)


def streamed(d: ScanDB, data: bytes, cuts: list[int], json: bool = False) -> tuple[bytes, list[Span], StreamScanner]:
    """Feed in pieces, settle after each, release redacted text up to each safe offset; check as we go that
    what is out is a prefix of the whole redaction."""
    whole = redact(data, find_spans(d, data, json))
    sc = StreamScanner(d, json)
    spans: list[Span] = []
    out: list[bytes] = []
    done = 0
    prev = 0
    try:
        for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
            if c > prev:
                sc.feed(data[prev:c])
                prev = c
            for final in ((False, True) if c == len(data) else (False,)):
                safe, new = sc.settle(final=final)
                assert done <= safe <= c
                assert all(s.start < safe for s in new)
                spans += new
                out.append(redact(data[done:safe], spans, done))
                done = safe
                assert whole.startswith(b"".join(out))  # nothing released is ever taken back
    finally:
        sc.close()
    assert done == len(data)
    return b"".join(out), spans, sc


# --- disguised values ---------------------------------------------------------------------------------------

DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
SPACES = "\u00a0\u2009\u200a\u202f\u2007\u3000"
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"


def wide(c: str) -> str:
    return chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c


@st.composite
def disguise(draw: st.DrawFn, s: str, zero_width: bool = True) -> str:
    """`s` with some characters full-width and zero-width characters slipped in."""
    out = []
    for i, c in enumerate(s):
        if draw(st.integers(0, 3)) == 0:
            c = wide(c)
        out.append(c)
        if zero_width and 0 < i < len(s) - 1 and draw(st.integers(0, 4)) == 0:
            out.append(draw(st.sampled_from(INVISIBLE)))
    return "".join(out)


_alnum = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=1, max_size=1)


@st.composite
def value(draw: st.DrawFn, n: int) -> str:
    kind = draw(st.sampled_from(["email", "sk", "akia", "ssn", "card"]))
    tag = f"{n:02d}"  # makes each value unique in its text
    if kind == "email":
        at = draw(st.sampled_from(["@", "＠", "﹫"]))
        dot = draw(st.sampled_from([".", "．", "﹒"]))
        return draw(disguise(f"user{tag}")) + at + draw(disguise("example")) + dot + "com"
    if kind == "sk":
        body = "".join(draw(_alnum) for _ in range(22)) + tag
        return draw(disguise("sk-" + body))
    if kind == "akia":
        body = "".join(draw(_alnum) for _ in range(14)) + tag
        return draw(disguise("AKIA" + body))
    if kind == "ssn":
        dash = draw(st.sampled_from(DASHES + "-"))
        digits = f"1{tag}45{draw(st.integers(1000, 9999))}"
        return draw(disguise(digits[:3], False)) + dash + draw(disguise(digits[3:5], False)) + dash + \
            draw(disguise(digits[5:], False))
    sep = draw(st.sampled_from(SPACES + " "))
    groups = [f"41{tag}", "1111", "2222", f"{draw(st.integers(1000, 9999))}"]
    return sep.join(draw(disguise(g, False)) for g in groups)


_WORDS = st.sampled_from(["the", "key", "mail", "call", "日本語", "é", "—", "4", "a-b", "sk", "AK", "@", "x.y",
                          "\u200b", "\u00a0", "０", "ﬁ", "😀"])


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts: list[str] = []
    values: list[str] = []
    for n in range(draw(st.integers(1, 4))):
        parts += draw(st.lists(_WORDS, max_size=4))
        v = draw(value(n))
        values.append(v)
        parts.append(v)
    parts += draw(st.lists(_WORDS, max_size=3))
    return " ".join(parts), values


_cuts = st.lists(st.integers(0, 400), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), _cuts)
def test_disguised_values_never_leak_under_any_split(doc: tuple[str, list[str]], cuts: list[int]) -> None:
    text, values = doc
    data = text.encode()
    out, spans, sc = streamed(db(), data, cuts)
    assert out == redact(data, find_spans(db(), data))
    assert spans == find_spans(db(), data)
    assert sc.scanned == len(fold_bytes(data))
    for v in values:
        assert v.encode() not in out, v
    out.decode()  # never half a character


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), _cuts, st.booleans(), st.booleans())
def test_json_source_escapes_never_leak(doc: tuple[str, list[str]], cuts: list[int], ascii_only: bool,
                                        escape_at: bool) -> None:
    """Tool-call arguments: the values inside a JSON string, escaped (`\\u0040`, `\\uff10`, `\\u200b`)."""
    text, values = doc
    src = jsonlib.dumps({"note": text}, ensure_ascii=ascii_only)
    if escape_at:
        src = src.replace("@", "\\u0040")
    data = src.encode()
    out, spans, _ = streamed(db(), data, cuts, json=True)
    assert out == redact(data, find_spans(db(), data, json=True))
    assert {sp.entity for sp in spans} >= {"EMAIL"} if any("@" in fold(v) for v in values) else True
    note = jsonlib.loads(out)["note"]  # still valid JSON
    for v in values:
        assert v not in note, v
        assert jsonlib.dumps(v, ensure_ascii=ascii_only)[1:-1].encode() not in out


def fold(s: str) -> str:
    return fold_bytes(s.encode()).decode()


def test_examples_from_the_issue() -> None:
    d = db()
    for text, entity in [
        ("call ０９０－３２０５－７９９７ now", None),  # (no phone pattern here: the digits are just folded)
        ("ssn 123\u201345\u20136789 .", "US_SSN"),
        ("ssn 123\u201145\u22126789 .", "US_SSN"),
        ("card 4111\u00a01111\u20091111\u202f1111 ok", "CREDIT_CARD"),
        ("mail ｊｏ＠ｅｘａｍｐｌｅ．ｃｏｍ ok", "EMAIL"),
        ("mail jo\u200b@exam\u200dple.com ok", "EMAIL"),
        ("key sk-abc\u200bdefghijklmnopqrstuvwx ok", "API_KEY"),
        ("key AKIA\u200bIOSFODNN7EXAMPLE ok", "AWS_ACCESS_KEY"),
    ]:
        data = text.encode()
        spans = find_spans(d, data)
        if entity is None:
            continue
        assert [s.entity for s in spans] == [entity], text
        out = redact(data, spans).decode()
        assert out == text[:text.index(" ") + 1] + f"[{entity}]" + text[text.rindex(" "):], text
    src = r'{"to": "jo\u0040example.com", "cc": "x\u200by@ex.com"}'.encode()
    assert redact(src, find_spans(d, src, json=True)) == b'{"to": "[EMAIL]", "cc": "[EMAIL]"}'
    # Without JSON mode the escape hides the address (what tool-call arguments must not get).
    assert b"jo" not in b"".join(src[s.start:s.end] for s in find_spans(d, src))


def test_zero_width_at_the_edges_stays_outside() -> None:
    """A span starts and ends at the characters that produced its bytes; zero-width ones inside count."""
    text = "a \u200bjo\u200b@ex.com\u200b b".encode()
    [sp] = find_spans(db(), text)
    assert text[sp.start:sp.end] == "jo\u200b@ex.com".encode()


# --- blocks -------------------------------------------------------------------------------------------------

BODY = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", min_size=1, max_size=30)


@st.composite
def pem_documents(draw: st.DrawFn) -> tuple[str, list[str], bool]:
    lines = draw(st.lists(BODY, min_size=1, max_size=12))
    lines = [f"Q{i:02d}{line}" for i, line in enumerate(lines)]  # each line unique and starting with Q
    label = draw(st.sampled_from(["", "RSA "]))
    closed = draw(st.booleans())
    block = f"-----BEGIN {label}PRIVATE KEY-----\n" + "\n".join(lines)
    if closed:
        block += f"\n-----END {label}PRIVATE KEY-----"
    before = draw(st.sampled_from(["", "here:\n", "key —\u00a0", "sk-abcdefghijklmnopqrstuvwx"]))
    after = draw(st.sampled_from(["", "\nthanks", " done -----END PRIVATE KEY-----"])) if closed else ""
    return before + block + after, lines, closed


@pytest.mark.parametrize("name", ["pii", "key"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=pem_documents(), cuts=_cuts)
def test_private_key_block_is_held_and_removed_whole(name: str, doc: tuple[str, list[str], bool],
                                                     cuts: list[int]) -> None:
    text, lines, closed = doc
    data = text.encode()
    out, spans, _ = streamed(db(name), data, cuts)
    keys = [s for s in spans if s.entity == "PRIVATE_KEY"]
    assert keys and not keys[0].cont and all(s.cont for s in keys[1:])
    assert all(a.end == b.start for a, b in zip(keys, keys[1:]))  # the pieces are contiguous
    start = data.index(b"-----BEGIN")
    assert keys[0].start == start
    end = data.index(b"PRIVATE KEY-----", data.index(b"-----END")) + 16 if closed else len(data)
    assert keys[-1].end == end
    assert all(s.end - s.start <= KEY_BOUND for s in keys)
    for line in lines:
        assert line.encode() not in out
    assert out.count(b"[PRIVATE_KEY]") == 1
    assert b"Q0" not in out and b"BEGIN" not in out


def test_block_released_in_bounded_pieces() -> None:
    """Past the bound the held block is released piece by piece, redacted: the hold never exceeds the bound."""
    body = "\n".join("QUJD" * 16 for _ in range(20))
    data = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\nbye".encode()
    sc = StreamScanner(db("key"))
    held_max = 0
    for i in range(len(data)):
        sc.feed(data[i:i + 1])
        safe, _ = sc.settle()
        held_max = max(held_max, i + 1 - safe)
    sc.settle(final=True)
    assert held_max <= KEY_BOUND + 1


def test_block_past_the_bound_without_end_runs_to_the_end() -> None:
    data = ("x -----BEGIN PRIVATE KEY-----\n" + "QUJD" * 100).encode()
    spans = find_spans(db("key"), data)
    assert spans[0].start == 2 and spans[-1].end == len(data)
    assert redact(data, spans) == b"x [PRIVATE_KEY]"


def test_match_reaching_into_a_block_is_cut_at_its_start() -> None:
    data = b"sk-abcdefghijklmnopqrstu-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY----- ok"
    spans = find_spans(db(), data)
    assert [(s.entity, data[s.start:s.end][:10]) for s in spans] == [("API_KEY", b"sk-abcdefg"),
                                                                      ("PRIVATE_KEY", b"-----BEGIN")]
    assert spans[0].end == spans[1].start
    assert redact(data, spans) == b"[API_KEY][PRIVATE_KEY] ok"


def test_nothing_else_is_reported_inside_a_block() -> None:
    data = b"-----BEGIN PRIVATE KEY-----\njo@example.com\n-----END PRIVATE KEY----- jo@example.com"
    assert [s.entity for s in find_spans(db(), data)] == ["PRIVATE_KEY", "EMAIL"]


# --- validator context ----------------------------------------------------------------------------------

def test_context_validator_sees_the_canonical_bytes_before_under_any_split() -> None:
    calls: list[tuple[bytes, bytes]] = []

    def near_ssn_word(value: bytes, before: bytes) -> bool:
        calls.append((value, before))
        return b"SSN" in before

    d = ScanDB([Pattern("SSN_BARE", "US_SSN", rb"\b\d{9}\b", 9, context_validator=near_ssn_word)])
    d.allocate_scratch()
    text = ("x" * 100 + " ＳＳＮ: １２３４５６７８９ and 987654321, " + "y" * 70 + " 111223333").encode()
    canon = fold_bytes(text)
    whole = find_spans(d, text)
    whole_calls = list(calls)
    assert [text[s.start:s.end].decode() for s in whole] == ["１２３４５６７８９", "987654321"]
    for value, before in whole_calls:
        i = canon.index(value)
        assert before == canon[max(0, i - CONTEXT_BYTES):i]
    assert len(whole_calls[0][1]) == CONTEXT_BYTES
    for step in (1, 2, 3, 7, 13):
        calls.clear()
        sc = StreamScanner(d)
        spans = []
        for i in range(0, len(text), step):
            sc.feed(text[i:i + step])
            spans += sc.settle()[1]
        spans += sc.settle(final=True)[1]
        assert spans == whole and calls == whole_calls


def test_context_at_the_start_of_the_text_is_short() -> None:
    seen = []

    def ctx(value: bytes, before: bytes) -> bool:
        seen.append(before)
        return True

    d = ScanDB([Pattern("N", "N", rb"\b\d{4}\b", 4, context_validator=ctx, validator=lambda v: v != b"0000")])
    d.allocate_scratch()
    assert [s.start for s in find_spans(d, b"1234 0000 \xe2\x80\x8b5678")] == [0, 13]
    assert seen == [b"", b"1234 0000 "]  # the validator refused 0000 before the context was asked
