"""Literal phrases as Hyperscan expressions, and one expression for all their prefixes (the exact holdback).

A phrase's words are matched literally, any whitespace run between them, with an ASCII word boundary at an end
that is a word character (`term_expression`). A stream can only be inside a match of a phrase where a suffix of
its canonical text is a prefix of such a match; `prefix_expressions` writes every phrase's prefixes as a few
expressions of a trie (`s(?:t(?:olen)?)?`-like), which Hyperscan reports, with the leftmost start, at each byte
that ends one. The report at the text's end is the holdback of all the phrases together: its cost is one
Hyperscan report per such byte, whatever the number of phrases.
"""

from __future__ import annotations

import re

__all__ = ["term_expression", "prefix_expressions", "exact_holdback", "MAX_PREFIX_EXPRESSION", "MAX_PREFIX_TOKENS"]

_ASCII_WORD = re.compile(r"[A-Za-z0-9_]")
_SPACE = None  # the trie's token for a whitespace run between words

#: Longest phrase (trie tokens: characters or bytes, a whitespace run one) whose prefixes are written: its chain
#: of nested groups must fit one expression. A longer phrase keeps the alphabet-run holdback (`ScanDB`).
MAX_PREFIX_TOKENS = 256
#: Longest prefix expression written (characters): Hyperscan refuses an expression of 16,000 or more ("Pattern
#: length exceeds limit"); a larger trie is cut into several expressions of at most this.
MAX_PREFIX_EXPRESSION = 12_000


def _words(term: str) -> list[str]:
    return term.split()


def _bounded(term: str) -> tuple[bool, bool]:
    """Whether the phrase starts / ends with an ASCII word character (and so gets a word boundary there)."""
    t = term.strip()
    return bool(_ASCII_WORD.match(t[:1])), bool(_ASCII_WORD.match(t[-1:]))


def term_expression(term: str) -> bytes:
    """A phrase as a Hyperscan expression: literal, any whitespace run between words, whole words at the ends.

    Word boundaries are ASCII (Hyperscan has no Unicode \\b), so an end that is a non-ASCII letter is not
    bounded: "école" also matches inside "préécole".
    """
    expr = r"\s+".join(re.escape(w) for w in _words(term))
    head, tail = _bounded(term)
    if head:
        expr = r"\b" + expr
    if tail:
        expr = expr + r"\b"
    return expr.encode()


_Trie = dict  # token (a character, a byte, or _SPACE) -> _Trie


def _tokens(term: str, utf8: bool, caseless: bool) -> list[object]:
    """The phrase as trie tokens: its characters (UTF-8 mode) or bytes, with _SPACE between words. ASCII letters
    are lower-cased when `caseless` (Hyperscan folds them; merging them keeps the trie small)."""
    out: list[object] = []
    for i, w in enumerate(_words(term)):
        if i:
            out.append(_SPACE)
        if caseless:
            w = "".join(c.lower() if c.isascii() else c for c in w)
        out += list(w) if utf8 else list(w.encode())
    return out


def _token_expression(tok: object) -> str:
    if tok is _SPACE:
        return r"\s+"
    c = chr(tok) if isinstance(tok, int) else str(tok)
    if c.isascii() and c.isalnum():
        return c
    if isinstance(tok, int) or c.isascii():
        return f"\\x{ord(c):02x}"  # a byte (or an ASCII character): literal, whatever it is
    return c  # a non-ASCII character in UTF-8 mode: literal


def _alternatives(trie: _Trie, limit: int) -> list[str]:
    """The subtree's expression for "one of its children, then any prefix below it", as alternations of at most
    about `limit` characters each (together they match the same language)."""
    parts: list[str] = []
    for tok, child in trie.items():
        head = _token_expression(tok)
        if not child:
            parts.append(head)
            continue
        for sub in _alternatives(child, limit - len(head) - 5):
            parts.append(f"{head}(?:{sub})?")
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for p in parts:
        if cur and size + len(p) + 1 > limit:
            out.append("|".join(cur))
            cur, size = [], 0
        cur.append(p)
        size += len(p) + 1
    if cur:
        out.append("|".join(cur))
    return out


def exact_holdback(term: str) -> bool:
    """Whether `prefix_expressions` covers the phrase (it has words, and at most MAX_PREFIX_TOKENS tokens)."""
    return 0 < len(_tokens(term, False, False)) <= MAX_PREFIX_TOKENS


def prefix_expressions(terms: list[str], utf8: bool = False, caseless: bool = False,
                       limit: int = MAX_PREFIX_EXPRESSION) -> list[bytes]:
    """Expressions that together match every non-empty prefix of every match of the phrases'
    `term_expression`s (compiled with the same `utf8` and `caseless` flags), and nothing that is not one; each
    at most about `limit` characters. The leading word boundary stays; the trailing one is dropped (a phrase
    complete but for the boundary, which only the next byte decides, is a match in progress)."""
    tries: tuple[_Trie, _Trie] = ({}, {})  # phrases without and with a leading word boundary
    for t in terms:
        if not exact_holdback(t):
            continue
        toks = _tokens(t, utf8, caseless)
        node = tries[_bounded(t)[0]]
        for tok in toks:
            node = node.setdefault(tok, {})
    out: list[bytes] = []
    for bounded, trie in enumerate(tries):
        if trie:
            pre = r"\b" if bounded else ""
            out += [f"{pre}(?:{alt})".encode() for alt in _alternatives(trie, limit - 8)]
    return out
