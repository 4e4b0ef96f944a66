"""The canonical view: the fold table, streaming in any split equals whole-text folding, and the offset map."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.scan import fold as fold_mod
from fastgw.scan.fold import FOLD, MAX_PENDING, Folder, fold_bytes, fold_char, fold_text

# --- the table -----------------------------------------------------------------------------------------

DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
SPACES = "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"


def test_full_width_ascii() -> None:
    assert fold_text("０９０－３２０５－７９９７") == "090-3205-7997"
    assert fold_text("ｊｏ＠ｅｘａｍｐｌｅ．ｃｏｍ") == "jo@example.com"
    # Every full-width form of printable ASCII.
    assert fold_text("".join(chr(c) for c in range(0xFF01, 0xFF5F))) == "".join(chr(c) for c in range(0x21, 0x7F))


@pytest.mark.parametrize("c", DASHES)
def test_dashes(c: str) -> None:
    assert fold_text(f"123{c}45{c}6789") == "123-45-6789"


@pytest.mark.parametrize("c", SPACES)
def test_spaces(c: str) -> None:
    assert fold_text(f"4111{c}1111") == "4111 1111"


@pytest.mark.parametrize("c", INVISIBLE)
def test_invisible_dropped(c: str) -> None:
    assert fold_text(f"jo{c}hn@ex{c}ample.com") == "john@example.com"


def test_other_compatibility_forms() -> None:
    assert fold_text("ﬁle ①② ⑴ 𝐀𝐊𝐈𝐀 ¹²³ ℡ ․ ﹣") == "file 12 (1) AKIA 123 TEL . -"
    # NFKC that lands on a folded dash (U+FE58 small em dash -> U+2014 -> '-').
    assert fold_text("\ufe58") == "-"


def test_what_stays() -> None:
    text = "josé 日本語 Ω € 😀 ñ ü ß \u0301 \t\n"
    assert fold_text(text) == text
    assert fold_text("plain ascii \\u0040 stays") == "plain ascii \\u0040 stays"  # escapes only in JSON mode


def test_table_is_complete() -> None:
    """`_BLOCKS` (what the import scans) holds every character of Unicode whose fold is ASCII."""
    full = {}
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        r = fold_char(chr(cp))
        if r is not None:
            full[chr(cp)] = r
    assert full == FOLD
    assert all(r.isascii() for r in FOLD.values())
    assert all(c in FOLD for c in DASHES + SPACES + INVISIBLE)
    assert all(unicodedata.normalize("NFKC", c).isascii() or c in DASHES + SPACES + INVISIBLE or fold_char(c)
               for c in FOLD)


# --- JSON source ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "canon"), [
    (r"jo\u0040example.com", "jo@example.com"),
    (r"a\nb\tc\rd\be\ff", "a\nb\tc\rd\be\ff"),
    (r'\"q\" \\ \/', '"q" \\ /'),
    (r"\ud83d\ude00", "😀"),
    (r"\u00e9", "é"),
    (r"\uff10\uff19", "09"),          # a decoded character is folded too
    (r"4111\u00a01111", "4111 1111"),
    (r"jo\u200bhn", "john"),
    (r"\\u0040", "\\u0040"),          # an escaped backslash, then plain text
    (r"\x \u12", r"\x \u12"),         # invalid escapes stay as written
    (r"\ud83d x", r"\ud83d x"),       # a lone surrogate names no character
    (r"\ude00", r"\ude00"),
    ("\\", "\\"),                      # cut at the very end of the text
    (r"\u00", r"\u00"),
    (r"\ud83d\u", r"\ud83d\u"),
    ("０\\u0040", "0@"),
])
def test_json_escapes(src: str, canon: str) -> None:
    assert fold_text(src, json=True) == canon
    assert fold_bytes(src.encode(), json=True) == canon.encode()


# --- streaming -----------------------------------------------------------------------------------------

def stream(data: bytes, cuts: list[int], json: bool = False) -> tuple[bytes, Folder]:
    f = Folder(json=json)
    out = []
    prev = 0
    for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        if c <= prev:
            continue
        out.append(f.feed(data[prev:c]))
        assert f.consumed + f.pending == c
        assert f.pending <= MAX_PENDING
        prev = c
    out.append(f.flush())
    assert f.pending == 0 and f.consumed == len(data)
    return b"".join(out), f


_ALPHABET = st.sampled_from(list("ab@.-0 9\\u\"n") + list(DASHES + SPACES + INVISIBLE) +
                            list("０＠．ﬁ①é日😀") + [r"\u0040", r"\ud83d\ude00", r"\u00a0", r"\uff10", r"\n", r"\\"])
texts = st.lists(_ALPHABET, max_size=40).map("".join)


def test_fast_path_returns_the_bytes() -> None:
    f = Folder()
    data = b"plain ascii text"
    assert f.feed(data) is data
    j = Folder(json=True)
    assert j.feed(data) is data
    assert j.feed(b"a\\nb") == b"a\nb"


def test_byte_by_byte_equals_whole() -> None:
    text = r"mail jo\u0040ex．com, call ０９０－３２０５ or 4111 1111​1111 \ud83d\ude00 é".encode()
    for json in (False, True):
        assert stream(text, list(range(len(text))), json)[0] == fold_bytes(text, json)


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(st.integers(0, 200)), st.booleans())
def test_any_split_equals_whole(text: str, cuts: list[int], json: bool) -> None:
    data = text.encode()
    whole = fold_bytes(data, json)
    assert stream(data, cuts, json)[0] == whole
    assert whole.decode() == fold_text(text, json)


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(st.integers(0, 200)), st.booleans())
def test_offset_map(text: str, cuts: list[int], json: bool) -> None:
    """Each canonical byte maps to the whole original character (or escape) that produced it."""
    data = text.encode()
    canon, f = stream(data, cuts, json)
    starts = [f.start_of(c) for c in range(len(canon))]
    ends = [f.end_of(c) for c in range(len(canon))]
    assert starts == sorted(starts) and ends == sorted(ends)
    for c in range(len(canon)):
        a, b = starts[c], ends[c]
        assert 0 <= a < b <= len(data)
        piece = data[a:b]
        if piece == canon[c:c + 1]:
            continue  # an identity run: byte for byte (a character that does not fold is its own canonical form)
        piece.decode()  # a folded or decoded character: all of it
        # The original range folds (alone) to canonical bytes that include this one.
        assert canon[c:c + 1] in fold_bytes(piece, json)
    # Any canonical range of whole characters maps to whole original characters that fold to (at least) it.
    bounds = [i for i in range(len(canon) + 1) if i == len(canon) or canon[i] & 0xC0 != 0x80]
    for i, s in enumerate(bounds):
        for e in bounds[i + 1:i + 6]:
            piece = data[starts[s]:ends[e - 1]]
            piece.decode()
            assert canon[s:e] in fold_bytes(piece, json)
    assert f.safe_of(len(canon)) == len(data)


def test_forget_keeps_later_lookups() -> None:
    data = "ａｂ\u200bcd０１ef".encode()
    f = Folder()
    canon = f.feed(data)
    expect = [(f.start_of(c), f.end_of(c)) for c in range(len(canon))]
    for cut in range(len(canon) + 1):
        f.forget(cut)
        assert [(f.start_of(c), f.end_of(c)) for c in range(cut, len(canon))] == expect[cut:]
    assert len(f._pc) <= 2  # bounded: only the piece holding the last offset asked about (and none before)


def test_safe_of_holds_pending_and_keeps_dropped() -> None:
    f = Folder()
    assert f.feed("ab\u200b".encode()) == b"ab"
    assert f.safe_of(2) == 5  # a dropped character at the end is folded: nothing to hold
    assert f.feed(b"\xef\xbc") == b""  # half of a full-width digit: pending
    assert (f.pending, f.safe_of(2)) == (2, 5)
    assert f.feed(b"\x90") == b"0"
    assert (f.pending, f.start_of(2), f.end_of(2)) == (0, 5, 8)


def test_module_blocks_are_sorted() -> None:
    assert list(fold_mod._BLOCKS) == sorted(set(fold_mod._BLOCKS))
