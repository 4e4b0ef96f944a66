"""Safety-filter phrases (`Pattern.term`): one exact holdback for all of them (the longest suffix of the text that is a
prefix of a phrase match, reported by Hyperscan), no holdback group per phrase, and no leak under any split with
1,000 phrases: phrases cut at every position, sharing prefixes, one a prefix of another, in disguise (case,
full-width forms, Unicode spaces, zero-width characters) and with whitespace runs."""

from __future__ import annotations

import random
import re

import hyperscan
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.policy.safety import SafetyFilter, SafetyPolicy
from fastgw.scan.database import Pattern, PatternError, ScanDB, Span
from fastgw.scan.fold import fold_bytes
from fastgw.scan.scanner import StreamScanner, _reports, find_spans
from fastgw.scan.terms import MAX_PREFIX_TOKENS, prefix_expressions, term_expression

_R = random.Random(18)


def _word(r: random.Random) -> str:
    return "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(4, 9)))


#: First words shared by many phrases, so the phrases share prefixes (and some first words are prefixes of others).
_STEMS = [_word(_R) for _ in range(30)] + ["stole", "stolen", "card", "cards"]
#: Phrases a prefix of another, whitespace runs in the config, non-word ends, a non-ASCII letter.
SPECIAL = ["stolen pass", "stolen passport", "stolen passport office", "stole", "cloned   sim\tcard", "c++ exploit",
           "#darkweb", "naïve bomb", "card", "cards dump"]


def _terms(n: int) -> list[str]:
    out = dict.fromkeys(SPECIAL)
    while len(out) < n:
        words = [_R.choice(_STEMS)] + [_word(_R) for _ in range(_R.randint(0, 2))]
        out[" ".join(words)] = None
    return list(out)


TERMS = _terms(1000)
#: Words of ordinary text around the phrases (some are the phrases' own words: prefixes that lead nowhere).
PROSE = ["the", "a", "stolen", "card", "is", "on", "passports", "office", "sim", "naïve", "and", "c", "exploited",
         "darkweb", "#", "word", "stem"] + _STEMS[:10]

_WS = re.compile(rb"[ \t\n\v\f\r]+")


def _norm(s: bytes) -> bytes:
    return _WS.sub(b" ", s.lower())


_PREFIXES = {n[:i] for n in (_norm(t.encode()) for t in TERMS) for i in range(1, len(n) + 1)}


def _is_word(b: int) -> bool:
    return chr(b).isascii() and (chr(b).isalnum() or b == 0x5F)


def oracle_hold(text: bytes, width: int) -> int:
    """The longest suffix of `text` (canonical) that is a prefix of a match of some phrase, at most `width`."""
    for i in range(len(text)):
        s = text[i:]
        if _is_word(s[0]) and i > 0 and _is_word(text[i - 1]):
            continue  # the leading word boundary
        if _norm(s) in _PREFIXES and not s[:1].isspace():
            return min(len(s), width)
    return 0


@pytest.fixture(scope="module")
def pol() -> SafetyPolicy:
    p = SafetyPolicy(SafetyFilter(action="redact", terms=TERMS))
    p.allocate_scratch()
    return p


def stream(db: ScanDB, data: bytes, cuts: list[int]) -> list[Span]:
    """Feed `data` cut at `cuts`, settling after each piece; assert that nothing is released before every span of
    the whole-text scan that starts before it has been reported (no leak), and the spans are the whole text's."""
    whole = find_spans(db, data)
    sc = StreamScanner(db)
    got: list[Span] = []
    pos = 0
    for c in sorted(set(cuts)) + [len(data)]:
        sc.feed(data[pos:c])
        pos = c
        safe, new = sc.settle()
        got += new
        assert got == [w for w in whole if w.start < safe], (data, pos, safe)
    got += sc.settle(final=True)[1]
    assert got == whole
    return whole


def test_no_holdback_group_per_phrase(pol: SafetyPolicy) -> None:
    assert pol.db.groups == []
    assert pol.db.term_width == max(len(t.encode()) + 8 * (len(t.split()) - 1) for t in TERMS)


@pytest.mark.parametrize("limit", [300, 12_000])
def test_prefix_expressions_match_exactly_the_prefixes(limit: int) -> None:
    exprs = prefix_expressions(TERMS, caseless=True, limit=limit)
    assert all(len(e) <= limit for e in exprs)
    if limit == 300:
        assert len(exprs) > 10  # cut into many: the cut is covered too
    db = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM | hyperscan.HS_MODE_SOM_HORIZON_LARGE)
    f = hyperscan.HS_FLAG_SOM_LEFTMOST | hyperscan.HS_FLAG_CASELESS
    db.compile(expressions=exprs, ids=list(range(len(exprs))), elements=len(exprs), flags=[f] * len(exprs))
    r = random.Random(5)
    samples = set()
    for t in TERMS:
        b = t.encode()
        samples.update(b[:i] for i in range(1, len(b) + 1))
        samples.add(b.upper() + b"\t \n")
        samples.add(b + b"x")
        samples.add(b[:r.randint(1, len(b))] + bytes([r.randint(0x21, 0x7E)]))
    for s in samples:
        whole: list[tuple[int, int]] = []

        def on_match(i: int, a: int, e: int, fl: int, c: object) -> None:
            whole.append((a, e))

        sm = db.stream(match_event_handler=on_match)  # (the binding keeps no reference to the handler)
        sm.__enter__()
        sm.scan(s)
        sm.close(match_event_handler=on_match)
        oracle = _norm(s) in _PREFIXES and not s[:1].isspace()
        assert ((0, len(s)) in whole) == oracle, s


_fragments = st.sampled_from(PROSE + TERMS[:60] + [t.upper() for t in TERMS[:10]] + [" ", "  ", "\t", "\n", ", ", "."])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(_fragments, min_size=1, max_size=40), st.lists(st.integers(1, 12), min_size=1, max_size=50))
def test_holdback_is_the_longest_suffix_that_is_a_phrase_prefix(pol: SafetyPolicy, frags: list[str],
                                                                 sizes: list[int]) -> None:
    data = " ".join(frags).encode("ascii", "ignore")  # ASCII: its own canonical view
    sc = StreamScanner(pol.db)
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        i += 1
        sc.feed(data[pos:pos + n])
        pos = min(pos + n, len(data))
        assert sc.holdback() == oracle_hold(data[:pos], pol.db.term_width), data[:pos]
        sc.settle()
    sc.settle(final=True)


def _disguise(term: str, r: random.Random) -> str:
    """The phrase as an attacker may write it: case changed, letters full-width, zero-width characters inside
    words, Unicode or repeated whitespace between them (at most 8 bytes more in all)."""
    out = []
    extra = 0
    for k, w in enumerate(term.split()):
        if k:
            sep = r.choice([" ", "\u00a0", "\u3000", "\t", "  ", " \n "])
            extra += len(fold_bytes(sep.encode())) - 1
            out.append(sep if extra <= 8 else " ")
        chars = []
        for c in w:
            c = c.upper() if c.isascii() and r.random() < 0.3 else c  # (ASCII case folding unless `unicode`)
            if c.isascii() and c.isalpha() and r.random() < 0.2:
                c = chr(ord(c) - 0x21 + 0xFF01)  # full-width form
            chars.append(c)
            if r.random() < 0.05:
                chars.append("\u200b")
        out.append("".join(chars))
    return "".join(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(PROSE), st.sampled_from(TERMS), st.booleans()), min_size=1, max_size=8),
       st.integers(0, 2**32), st.lists(st.integers(1, 40), min_size=1, max_size=40))
def test_disguised_phrases_never_leak_under_any_split(pol: SafetyPolicy, parts: list, seed: int,
                                                      cuts: list[int]) -> None:
    r = random.Random(seed)
    text, where = "", []
    for prose, term, disguised in parts:
        text += prose + " "
        t = _disguise(term, r) if disguised else term
        where.append((len(text.encode()), len((text + t).encode())))
        text += t + " "
    data = text.encode()
    at = [sum(cuts[:k + 1]) for k in range(len(cuts))]
    whole = stream(pol.db, data, [c for c in at if c < len(data)])
    for a, b in where:
        # Each phrase was found (or lies in the span of an overlapping one found first).
        assert any(s.start < b and a < s.end for s in whole), (data[a:b], whole)


@pytest.mark.parametrize("term", TERMS[:: 25] + SPECIAL, ids=lambda t: t.replace(" ", "_"))
def test_phrase_cut_at_every_position_never_leaks(pol: SafetyPolicy, term: str) -> None:
    upper = "".join(c.upper() if c.isascii() else c for c in term)
    for shown in (term, upper, _disguise(term, random.Random(term))):
        data = f"We saw {shown}, then stole a {term[:len(term) // 2]}".encode()
        for p in range(1, len(data)):
            whole = stream(pol.db, data, [p])
            assert whole and whole[0].start == 7
        stream(pol.db, data, list(range(1, len(data))))  # byte by byte


def test_whitespace_runs_and_a_phrase_that_is_a_prefix_of_another(pol: SafetyPolicy) -> None:
    data = b"a stolen pass, a stolen passport, a stolen  passport\t office, cloned \t sim  card, stolen passports"
    spans = stream(pol.db, data, list(range(1, len(data))))
    assert [data[s.start:s.end] for s in spans] == [b"stolen pass", b"stolen passport",
                                                     b"stolen  passport\t office", b"cloned \t sim  card",
                                                     b"stolen"]  # (a phrase of its own; not "stolen passport")
    assert "stolen" in TERMS


def test_utf8_phrases_cut_inside_characters() -> None:
    pol = SafetyPolicy(SafetyFilter(action="redact", unicode=True, terms=["École été", "straße", "stolen card"]))
    pol.allocate_scratch()
    assert pol.db.groups == []
    data = "l'ÉCOLE  ÉTÉ et la STRASSE, straße, une stolen cardigan, stolen  card.".encode()
    for p in range(1, len(data)):
        stream(pol.db, data, [p])
    spans = stream(pol.db, data, list(range(1, len(data))))
    assert [data[s.start:s.end].decode() for s in spans] == ["ÉCOLE  ÉTÉ", "straße", "stolen  card"]


def test_a_phrase_too_long_for_a_prefix_expression_keeps_a_group() -> None:
    long = " ".join(["abcdefghi"] * (MAX_PREFIX_TOKENS // 10 + 1))
    pol = SafetyPolicy(SafetyFilter(action="redact", terms=[long, "short one"]))
    pol.allocate_scratch()
    assert len(pol.db.groups) == 1
    data = f"x {long} y short one".encode()
    assert len(stream(pol.db, data, list(range(0, len(data), 7)))) == 2


def test_a_term_pattern_must_be_its_term_expression() -> None:
    with pytest.raises(PatternError, match="term_expression"):
        ScanDB([Pattern("t", "SAFETY_TERM", rb"\bstolen\b", 6, term="stole")])
    db = ScanDB([Pattern("t", "SAFETY_TERM", term_expression("stolen car"), 10, term="stolen car")])
    assert db.groups == [] and db.term_width == 10


def test_phrase_prefixes_are_no_match_for_the_quick_check(pol: SafetyPolicy) -> None:
    # Short texts are first checked for any report at all: a prefix of a phrase is not one.
    assert not _reports(pol.db, b"a cloned si")
    assert find_spans(pol.db, b"a cloned si") == []
    assert _reports(pol.db, b"a cloned sim card!")
    assert find_spans(pol.db, b"a cloned sim card!") == [Span(2, 17, "SAFETY_TERM", "term4")]
