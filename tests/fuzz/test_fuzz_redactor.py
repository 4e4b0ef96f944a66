"""Fuzz streaming redaction: any split of any text gives exactly the whole-text redaction.

tests/scan and tests/policy check this on prose built from a word list with valid PII values, cut at
character or small-step byte offsets. Here the texts are hostile: arbitrary Unicode (any plane, controls,
combining marks), valid values next to near-misses built to sit on the detectors' edges (a Luhn digit
off, a value glued to a letter or to a non-ASCII neighbour, truncated, with a foreign separator), and
safety-filter phrases in Unicode mode (case-folded, multi-byte) whose bytes are cut *inside* characters.

- Scanner level (bytes): a StreamScanner fed the UTF-8 bytes cut anywhere settles the spans that
  find_spans gives for the whole text, never reports a span past its safe offset, and redacting each
  released range as it settles concatenates to the whole-text redaction.
- Policy level (the real streaming path): an OpenAI chat stream carrying the text, cut into events at
  random characters and into reads at random bytes, through SSEDecoder and StreamPolicy with two
  redacting policies (pii-detector, safety-filter): the client reads what process_slots makes of the
  whole text.
"""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from fastgw.config import PiiDetector, SafetyFilter
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.pii import PiiPolicy
from fastgw.policy.safety import SafetyPolicy
from fastgw.policy.stream import open_stream
from fastgw.policy.textscan import ScanPolicy, process_slots
from fastgw.proto.sse import SSEDecoder
from fastgw.scan import validators as v
from fastgw.scan.fold import fold_bytes
from fastgw.scan.scanner import StreamScanner, find_spans
from tests.fuzz.fuzzing import fuzz, split_at
from tests.support.sse_streams import build_stream

_POLICIES: dict[str, ScanPolicy] = {}


def pii() -> PiiPolicy:
    if "pii" not in _POLICIES:
        p = PiiPolicy(PiiDetector(action="redact"))
        p.allocate_scratch()
        _POLICIES["pii"] = p
    return _POLICIES["pii"]  # type: ignore[return-value]


TERMS = ["école", "Straße", "日本語", "bad word", "ÆØÅ secret", "naïve plan", "x"]


def safety() -> SafetyPolicy:
    if "safety" not in _POLICIES:
        p = SafetyPolicy(SafetyFilter(action="redact", terms=TERMS, regex=[r"\bkill\s+\w+", "€[0-9]{2,6}"],
                                      unicode=True, case_insensitive=True, replacement="#"))
        p.allocate_scratch()
        _POLICIES["safety"] = p
    return _POLICIES["safety"]  # type: ignore[return-value]


# --- values, near-misses, hostile text ------------------------------------------------------------------------

_digits = st.text("0123456789", min_size=1, max_size=1)


def _luhn_complete(body: str) -> str:
    for d in "0123456789":
        if v.luhn((body + d).encode()):
            return body + d
    raise AssertionError


@st.composite
def card(draw: st.DrawFn) -> str:
    n = draw(st.sampled_from([13, 15, 16, 16, 19]))
    first = draw(st.sampled_from(["4", "51", "37", "6011", "35"]))
    body = first + "".join(draw(_digits) for _ in range(n - 1 - len(first)))
    num = _luhn_complete(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(num[i:i + 4] for i in range(0, len(num), 4)) if sep else num


_email = st.builds(lambda a, b, c: f"{a}@{b}.{c}", st.text("abcxyz019._+-", min_size=1, max_size=10).filter(
    lambda s: s[0].isalnum()), st.text("abcdexample0-", min_size=1, max_size=10).filter(lambda s: s[0].isalnum()),
    st.sampled_from(["com", "org", "io", "co.uk", "xn--p1ai"]))
_phone = st.sampled_from(["+44 20 7946 0958", "(212) 555-0147", "+1 (555) 123-4567", "555.123.4567",
                          "+49-30-1234567", "1-800-555-0199", "+33.1.23.45.67.89"])
_other = st.sampled_from(["123-45-6789", "078 05 1120", "192.168.10.20", "2001:db8::8a2e:370:7334",
                          "GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", "AKIAIOSFODNN7EXAMPLE",
                          "sk-proj-abcdefghijklmnopqrstuvwxyz0123", "-----BEGIN RSA PRIVATE KEY-----",
                          "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl"])
value = st.one_of(card(), _email, _phone, _other)


@st.composite
def near_miss(draw: st.DrawFn) -> str:
    """A value pushed just off (or just onto) a detector's edge."""
    s = draw(value)
    how = draw(st.integers(0, 6))
    i = draw(st.integers(0, max(0, len(s) - 1)))
    if how == 0 and s:  # one character changed (a Luhn or checksum digit off, a separator swapped)
        return s[:i] + draw(st.sampled_from(list("0123456789 -.@:xÉ\u00a0"))) + s[i + 1:]
    if how == 1:  # truncated
        return s[:i]
    if how == 2:  # glued to an ASCII word on one side
        return draw(st.sampled_from(["ref", "x", "_", "9"])) + s if draw(st.booleans()) else s + "z9"
    if how == 3:  # glued to non-ASCII neighbours (non-word bytes: the value is still found)
        return draw(st.sampled_from(["é", "日", "😀", "\u0301"])) + s + draw(st.sampled_from(["ß", "€", ""]))
    if how == 4:  # a character inside replaced by a multi-byte look-alike
        return s[:i] + draw(st.sampled_from(["\uff10", "\u2013", "\uff20", "\u0660"])) + s[i + 1:]
    if how == 5:  # doubled
        return s + s
    return s + draw(st.sampled_from(["0", "1", ".", "-1"]))  # one more digit / part


def _case(draw: st.DrawFn, t: str) -> str:
    return draw(st.sampled_from([t, t.upper(), t.lower(), t.title(), t.replace(" ", "  \t"), t.replace(" ", "\n")]))


@st.composite
def term(draw: st.DrawFn) -> str:
    t = _case(draw, draw(st.sampled_from(TERMS + ["kill   time", "€1234", "ecole", "strasse"])))
    return draw(st.sampled_from(["", "pr", "é", " "])) + t + draw(st.sampled_from(["", "s", "é", " "]))


_noise = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_sep = st.sampled_from([" ", "", "\n", ", ", "é", "日", "\u00a0", "\t", "😀", "\u0301", ": "])


@st.composite
def hostile_text(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 10))):
        parts.append(draw(st.one_of(_noise, value, near_miss(), term())))
        parts.append(draw(_sep))
    return "".join(parts)


# --- scanner level: byte splits anywhere -----------------------------------------------------------------------


def stream_redact(pol: ScanPolicy, data: bytes, pieces: list[bytes]) -> bytes:
    """Redact as the stream does: release each settled range as soon as it is final."""
    sc = StreamScanner(pol.db)
    out: list[bytes] = []
    done = 0
    fed = 0
    spans = []
    try:
        for final, piece in [(False, p) for p in pieces] + [(True, b"")]:
            sc.feed(piece)
            fed += len(piece)
            safe, new = sc.settle(final=final)
            assert done <= safe <= fed
            assert all(done <= s.start and s.end <= safe for s in new), (done, safe, new)
            spans += new
            out.append(pol.redact(data[done:safe], spans, base=done))
            done = safe
    finally:
        sc.close()
    assert done == len(data) and sc.scanned == len(fold_bytes(data))  # each canonical byte once
    assert spans == find_spans(pol.db, data)
    return b"".join(out)


@fuzz(250)
@given(hostile_text(), st.data())
def test_scanner_any_byte_split_equals_whole_text(text, data):
    raw = text.encode()
    how = data.draw(st.integers(0, 2), "how")
    if how == 0:
        pieces = [raw[i:i + 1] for i in range(len(raw))]
    elif how == 1:
        # cuts inside multi-byte characters on purpose
        inner = [i for i in range(1, len(raw)) if raw[i] & 0xC0 == 0x80]
        pieces = split_at(raw, data.draw(st.lists(st.sampled_from(inner), max_size=10)) if inner else [])
    else:
        pieces = split_at(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=16)))
    for pol in (pii(), safety()):
        whole = pol.redact(raw, find_spans(pol.db, raw))
        assert stream_redact(pol, raw, pieces) == whole


# --- policy level: the real streaming path, two policies --------------------------------------------------------


def _ctx() -> RequestContext:
    return RequestContext("fuzz", "POST", "/v1/chat/completions", [])


def whole_text(policies: list[ScanPolicy], text: str) -> str:
    slot = {"content": text}
    process_slots(policies, iter([(slot, "content", "content", 0)]), "output", Findings([]), _ctx())
    return slot["content"]


def client_text(out: list[bytes]) -> str:
    text = ""
    for e in SSEDecoder().feed(b"".join(out)):
        if e.data and e.data != "[DONE]":
            for ch in orjson.loads(e.data)["choices"]:
                text += ch["delta"].get("content") or ""
    return text


@fuzz(150)
@given(hostile_text(), st.data())
def test_stream_policy_any_split_equals_whole_text(text, data):
    policies = [pii(), safety()]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text) // 2 + 1), "events"))
    events = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]) if b > a]
    wire = build_stream(events)
    reads = split_at(wire, data.draw(st.lists(st.integers(0, len(wire)), max_size=30), "reads"))
    sp = open_stream(policies, Findings([]), _ctx())
    dec = SSEDecoder()
    out: list[bytes] = []
    try:
        for r in reads:
            for ev in dec.feed(r):
                sp.push(ev)
            out += sp.release()
        out += sp.finish()
    finally:
        sp.close()
    assert client_text(out) == whole_text(policies, text)
    for t in sp._texts.values():
        assert len(set(t.scanned())) == 1 and len(t.scanned()) == len(policies)


# --- the canonical view: disguised values ------------------------------------------------------------------------

_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
_SPACES = "\u00a0\u2009\u202f\u2007\u3000"


@st.composite
def disguised(draw: st.DrawFn) -> str:
    """A value the detectors find once folded, written with full-width characters, Unicode dashes and
    spaces, and zero-width characters inside (the evasions of issue 14)."""
    s = draw(st.sampled_from(["jo.smith@example.com", "AKIAIOSFODNN7EXAMPLE", "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
                              "123-45-6789", "4111 1111 1111 1111", "5500-0000-0000-0004"]))
    out = []
    for i, c in enumerate(s):
        how = draw(st.integers(0, 5))
        if how == 0 and "!" <= c <= "~":
            c = chr(ord(c) + 0xFEE0)  # full width
        elif how == 1 and c == "-" and s[0].isdigit():
            c = draw(st.sampled_from(_DASHES))
        elif how == 1 and c == " ":
            c = draw(st.sampled_from(_SPACES))
        out.append(c)
        if 0 < i < len(s) - 1 and draw(st.integers(0, 6)) == 0 and not s[0].isdigit():
            out.append(draw(st.sampled_from(_INVISIBLE)))
    return "".join(out)


@fuzz(200)
@given(st.lists(st.one_of(disguised(), _noise, value), min_size=1, max_size=6), st.data())
def test_disguised_values_never_leak_under_any_split(parts, data):
    text = " ".join(parts)
    raw = text.encode()
    pol = pii()
    spans = find_spans(pol.db, raw)
    whole = pol.redact(raw, spans)
    pieces = split_at(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    assert stream_redact(pol, raw, pieces) == whole
    found = {raw[s.start:s.end] for s in spans}
    for p in parts:
        if p and fold_bytes(p.encode()) != p.encode() and p.encode() in found:
            assert p.encode() not in whole  # a disguised value found is removed, all of its bytes
