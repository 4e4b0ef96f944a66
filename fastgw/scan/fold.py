"""The canonical view scanners see: Unicode look-alikes of ASCII folded to ASCII, with a map back to the original bytes.

Folding (per character, so it streams): compatibility forms whose NFKC form is ASCII (`０９０－３２０５`,
`＠`, `．`, `𝐚`, `①`, `ﬁ`) become that ASCII; Unicode dashes and minus signs become `-`; Unicode spaces
become ` `; zero-width characters and the soft hyphen are dropped. In JSON-source mode (tool-call
arguments) string escapes are decoded first (`\\u0040` -> `@`, `\\n` -> newline, surrogate pairs joined),
and the decoded character is folded like any other.

`Folder` takes the original UTF-8 bytes in arbitrary pieces and returns canonical bytes; an incomplete
tail (a UTF-8 sequence or an escape cut short) stays pending until the next piece, and `pending` says how
many original bytes that is (they must be held back). Its offset map answers, for a canonical byte, which
original bytes produced it; the scanner turns canonical spans and safe offsets into original ones with it.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from typing import Final

__all__ = ["BACKSLASH", "FOLD", "Folder", "fold_bytes", "fold_char", "fold_text", "MAX_PENDING"]

#: Longest incomplete tail kept pending: a high-surrogate escape and a low one cut one byte short
#: (`\ud83d\ude0`, 11 bytes); a UTF-8 sequence cut short is at most 3.
MAX_PENDING: Final = 11

_DASHES: Final = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"
_SPACES: Final = "\u00a0" + "".join(map(chr, range(0x2000, 0x200B))) + "\u202f\u205f\u3000"
#: `BACKSLASH in data` is memchr; with a bytes needle (`b"\\" in data`) CPython first tries the needle as an int,
#: raising and clearing a TypeError on every call.
BACKSLASH: Final = 0x5C
_INVISIBLE: Final = "\u00ad\u200b\u200c\u200d\u2060\ufeff"

#: The 256-code-point blocks holding every character whose fold is ASCII (tests/scan/test_fold.py checks
#: this list against all of Unicode; scanning only these keeps the import at a few milliseconds).
_BLOCKS: Final = (0x00, 0x01, 0x02, 0x03, 0x1D, 0x1F, 0x20, 0x21, 0x22, 0x24, 0x2A, 0x2C, 0x30, 0x32, 0x33, 0xA7,
                  0xFB, 0xFE, 0xFF, 0x107, 0x1D4, 0x1D5, 0x1D6, 0x1D7, 0x1F1, 0x1FB)


def fold_char(c: str) -> str | None:
    """The ASCII a character folds to ("" when dropped), or None when it stays as it is."""
    if c in _DASHES:
        return "-"
    if c in _SPACES:
        return " "
    if c in _INVISIBLE:
        return ""
    if c.isascii():
        return None
    r = unicodedata.normalize("NFKC", c)
    if r.isascii():
        return r
    # NFKC may land on a dash or space we fold (U+FE58 small em dash -> U+2014).
    r = "".join("-" if x in _DASHES else " " if x in _SPACES else "" if x in _INVISIBLE else x for x in r)
    return r if r.isascii() else None


def _build() -> dict[str, str]:
    table: dict[str, str] = {}
    for block in _BLOCKS:
        for cp in range(max(block << 8, 0x80), (block + 1) << 8):
            c = chr(cp)
            r = fold_char(c)
            if r is not None:
                table[c] = r
    return table


#: Character -> the ASCII it folds to ("" when dropped).
FOLD: Final[dict[str, str]] = _build()
#: Character -> (its fold as bytes, its own UTF-8 length): what `Folder._fold_plain` needs per character.
_FOLD_BYTES: Final = {c: (r.encode(), len(c.encode("utf-8"))) for c, r in FOLD.items()}
_TRANSLATE: Final = {ord(k): v for k, v in FOLD.items()}

def _ranges(chars: list[str]) -> str:
    """A character class of `chars` as ranges of consecutive code points."""
    spans: list[list[int]] = []
    for cp in sorted(map(ord, chars)):
        if spans and spans[-1][1] == cp - 1:
            spans[-1][1] = cp
        else:
            spans.append([cp, cp])
    return "[" + "".join(re.escape(chr(a)) if a == b else re.escape(chr(a)) + "-" + re.escape(chr(b))
                         for a, b in spans) + "]"


# Every character that folds. `re` tests a class of BMP characters with a bitmap, but one that also holds astral
# characters (mathematical letters, enclosed ones) as a list, item by item: 0.33 µs per character of any
# non-ASCII text. So the astral ones are a branch of their own, entered only at an astral character.
_CLASS: Final = ("(?:" + _ranges([c for c in FOLD if ord(c) <= 0xFFFF]) + "|(?=[\U00010000-\U0010ffff])"
                 + _ranges([c for c in FOLD if ord(c) > 0xFFFF]) + ")")
_PLAIN_RE: Final = re.compile(_CLASS)
# JSON source: escapes (a surrogate pair first, so it is read as one character), a possibly cut escape
# (only at the end of the text is it pending; elsewhere it is invalid JSON: the backslash is left as it
# is and what follows is read as text), foldables.
_JSON_RE: Final = re.compile(
    r"\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    r"|u([0-9a-fA-F]{4})"
    r"|([\"\\/bfnrt])"
    r"|(u[0-9a-fA-F]{0,3}|))"
    r"|" + _CLASS, re.S)
_SIMPLE_ESCAPES: Final = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def fold_text(text: str, json: bool = False) -> str:
    """The canonical form of a whole text (what a `Folder` fed its UTF-8 bytes gives, decoded)."""
    if not json:
        return text.translate(_TRANSLATE)
    return fold_bytes(text.encode("utf-8", "surrogatepass"), json=True).decode("utf-8", "surrogatepass")


def fold_bytes(data: bytes, json: bool = False) -> bytes:
    """The canonical bytes of a whole text given as UTF-8."""
    f = Folder(json=json)
    return f.feed(data) + f.flush()


def _utf8_tail(b: bytes) -> int:
    """Length of a UTF-8 sequence cut short at the end of `b` (0 when the end is complete or invalid)."""
    n = len(b)
    for k in range(1, min(4, n) + 1):
        c = b[n - k]
        if c < 0x80:
            return 0
        if c >= 0xC0:
            need = 2 if c < 0xE0 else 3 if c < 0xF0 else 4 if c < 0xF8 else 1
            return k if need > k else 0
    return 0


class Folder:
    """Streaming fold of one text, original UTF-8 bytes in, canonical bytes out, with the offset map.

    The map is a list of pieces, each starting at a canonical offset: an identity run (canonical byte
    c comes from original byte o0 + (c - c0)), or one original character [o0, o1) that produced the
    piece's canonical bytes (a folded character, a decoded escape). Dropped characters produce no
    piece: a span covering bytes on both sides of one covers it too. `forget` drops pieces before a
    canonical offset no one will ask about again, so the map stays as small as the held text.
    """

    __slots__ = ("json", "consumed", "cend", "plain", "passthrough", "_pend", "_pc", "_po", "_pe", "_ident")

    def __init__(self, json: bool = False) -> None:
        #: JSON-source mode: decode string escapes before folding.
        self.json = json
        #: Original bytes folded so far (the pending tail is not).
        self.consumed = 0
        #: Canonical bytes produced so far.
        self.cend = 0
        self._pend = b""
        self._pc: list[int] = []  # piece: canonical start
        self._po: list[int] = []  # piece: original start
        self._pe: list[int] = []  # piece: original end of its one character, -1 for an identity run
        #: The last piece is an identity run that ends where the text does (the next one extends it).
        self._ident = False
        #: The live map is one identity run to the end: original offset = canonical + consumed - cend, no lookup
        #: needed (what ASCII prose keeps, so the scanner's per-event mapping is one subtraction).
        self.plain = True
        #: Nothing pending and the map ends in an identity run: an ASCII piece (without a backslash in JSON
        #: mode) is its own canonical form, and a caller on a hot path may take it as is, adding its length
        #: to `cend` and `consumed`, instead of calling `feed` (what `feed` itself would do).
        self.passthrough = False

    @property
    def pending(self) -> int:
        """Original bytes received but not folded yet (an incomplete tail): they must be held back."""
        return len(self._pend)

    def feed(self, data: bytes) -> bytes:
        """Canonical bytes for the next original bytes (an incomplete tail is kept for the next call)."""
        # Fast path, the common case on every streamed event: ASCII (and, in JSON mode, no escape) folds to
        # itself, and the map's last identity run just grows.
        if not self._pend and data.isascii() and not (self.json and BACKSLASH in data):
            n = len(data)
            if not self._ident and n:
                self._pc.append(self.cend)
                self._po.append(self.consumed)
                self._pe.append(-1)
                self._ident = self.passthrough = True
                self.plain = len(self._pc) == 1
            self.cend += n
            self.consumed += n
            return data
        return self._fold(self._pend + data if self._pend else data, False)

    def flush(self) -> bytes:
        """End of text: the pending tail, folded as it stands (a cut escape or sequence stays as it is)."""
        if not self._pend:
            return b""
        return self._fold(self._pend, True)

    # ---- folding -----------------------------------------------------------------------------------
    def _fold(self, buf: bytes, final: bool) -> bytes:
        if not self.json:
            return self._fold_plain(buf, final)
        cut = len(buf) if final else len(buf) - _utf8_tail(buf)
        s = buf[:cut].decode("utf-8", "surrogateescape")
        out: list[bytes] = []
        pos = 0  # str index in s up to which we have emitted
        opos = self.consumed  # original offset of s[pos]
        pend_at = -1  # str index where a cut escape begins (pending), -1 when none
        if self.json:
            matches = list(_JSON_RE.finditer(s))
            if matches and not final:
                pend_at = _json_cut(s, matches)
                if pend_at >= 0:
                    matches = [m for m in matches if m.start() < pend_at]
        else:
            matches = list(_PLAIN_RE.finditer(s))
        for m in matches:
            rep = _replacement(m) if self.json else FOLD[m.group()]
            if rep is None:
                continue  # left as it is: part of the identity run
            a = m.start()
            if a > pos:
                run = s[pos:a].encode("utf-8", "surrogateescape")
                self._identity(run)
                out.append(run)
                opos += len(run)
            olen = len(m.group().encode("utf-8", "surrogateescape"))
            if rep:
                rb = rep.encode("utf-8", "surrogatepass")
                self._pc.append(self.cend)
                self._po.append(opos)
                self._pe.append(opos + olen)
                self.cend += len(rb)
                out.append(rb)
            self._ident = self.plain = False
            opos += olen
            self.consumed = opos
            pos = m.end()
        end = len(s) if pend_at < 0 else pend_at
        if end > pos:
            run = s[pos:end].encode("utf-8", "surrogateescape")
            self._identity(run)
            out.append(run)
            opos += len(run)
        self.consumed = opos
        rest = buf[cut:] if pend_at < 0 else s[pend_at:].encode("utf-8", "surrogateescape") + buf[cut:]
        self._pend = rest
        self.passthrough = self._ident and not rest
        return b"".join(out) if len(out) != 1 else out[0]

    def _fold_plain(self, buf: bytes, final: bool) -> bytes:
        """`_fold` of prose (no escapes), its loop kept tight: text with a foldable character every few bytes
        (zero-width spaces between digits, full-width digits) runs it once per such character."""
        cut = len(buf) if final else len(buf) - _utf8_tail(buf)
        s = buf[:cut].decode("utf-8", "surrogateescape")
        out: list[bytes] = []
        pc, po, pe = self._pc, self._po, self._pe
        pos = 0
        opos = self.consumed
        cend = self.cend
        ident = self._ident
        plain = self.plain
        table = _FOLD_BYTES
        for m in _PLAIN_RE.finditer(s):
            a, b = m.span()
            rb, olen = table[m.group()]
            if a > pos:
                run = s[pos:a].encode("utf-8", "surrogateescape")
                if not ident:
                    pc.append(cend)
                    po.append(opos)
                    pe.append(-1)
                    ident = True
                    plain = len(pc) == 1
                cend += len(run)
                opos += len(run)
                out.append(run)
            if rb:
                pc.append(cend)
                po.append(opos)
                pe.append(opos + olen)
                cend += len(rb)
                out.append(rb)
            ident = plain = False
            opos += olen
            pos = b
        self.cend, self.consumed, self._ident, self.plain = cend, opos, ident, plain
        if len(s) > pos:
            run = s[pos:].encode("utf-8", "surrogateescape")
            self._identity(run)
            out.append(run)
        self._pend = buf[cut:]
        self.passthrough = self._ident and not self._pend
        return b"".join(out) if len(out) != 1 else out[0]

    def _identity(self, run: bytes) -> None:
        """Original bytes that are their own canonical form, at the current ends."""
        if not self._ident:
            self._pc.append(self.cend)
            self._po.append(self.consumed)
            self._pe.append(-1)
            self._ident = True
            self.plain = len(self._pc) == 1
        self.cend += len(run)
        self.consumed += len(run)

    # ---- the map ------------------------------------------------------------------------------------
    def start_of(self, c: int) -> int:
        """Original offset where the character that produced canonical byte `c` begins (c < cend)."""
        pc = self._pc
        i = len(pc) - 1 if c >= pc[-1] else bisect_right(pc, c) - 1
        e = self._pe[i]
        return self._po[i] + (c - pc[i]) if e < 0 else self._po[i]

    def end_of(self, c: int) -> int:
        """Original offset where the character that produced canonical byte `c` ends (c < cend)."""
        pc = self._pc
        i = len(pc) - 1 if c >= pc[-1] else bisect_right(pc, c) - 1
        e = self._pe[i]
        return self._po[i] + (c - pc[i]) + 1 if e < 0 else e

    def safe_of(self, c: int) -> int:
        """Original offset before which everything folded into canonical bytes before `c` lies (c <= cend).

        At the canonical end that is everything folded (dropped characters after the last canonical byte
        included, the pending tail not); elsewhere the start of the character producing byte c.
        """
        return self.consumed if c >= self.cend else self.start_of(c)

    def snap(self, c: int) -> int:
        """`c`, or where the character producing canonical byte c begins its canonical bytes when it produced
        several (`⒐` -> `9.`): a safe offset there would cut one original character in two."""
        pc = self._pc
        if c >= self.cend or not pc:
            return c
        i = len(pc) - 1 if c >= pc[-1] else bisect_right(pc, c) - 1
        return c if self._pe[i] < 0 else pc[i]

    def forget(self, c: int) -> None:
        """No canonical offset before `c` will be looked up again: drop the pieces that lie wholly before it."""
        pc = self._pc
        if len(pc) > 1 and pc[1] <= c:
            i = bisect_right(pc, c) - 1
            del pc[:i], self._po[:i], self._pe[:i]
            self.plain = len(pc) == 1 and self._pe[0] < 0 and self._ident


def _replacement(m: re.Match[str]) -> str | None:
    """What a JSON-mode match folds to: None when it stays as it is."""
    hi, lo, cp, simple, cut = m.groups()
    if hi is not None:
        c = chr(0x10000 + ((int(hi, 16) - 0xD800) << 10) + (int(lo, 16) - 0xDC00))
    elif cp is not None:
        n = int(cp, 16)
        if 0xD800 <= n < 0xE000:
            return None  # a lone surrogate escape names no character: left as written
        c = chr(n)
    elif simple is not None:
        return _SIMPLE_ESCAPES.get(simple)
    elif cut is not None:
        return None  # an escape cut short in the middle of the text: invalid JSON, left as written
    else:
        return FOLD[m.group()]
    r = FOLD.get(c)
    return c if r is None else r


def _json_cut(s: str, matches: list[re.Match[str]]) -> int:
    """Where a possibly unfinished escape at the end of `s` begins (-1 when none): a cut escape, or a
    high-surrogate escape that a low one may still follow."""
    last = matches[-1]
    if last.end() != len(s) or not last.group().startswith("\\"):
        return -1
    if last.group(5) is not None:
        if len(matches) > 1:
            prev = matches[-2]
            if prev.end() == last.start() and _high(prev):
                return prev.start()
        return last.start()
    if _high(last):
        return last.start()
    return -1


def _high(m: re.Match[str]) -> bool:
    cp = m.group(3)
    return cp is not None and 0xD800 <= int(cp, 16) < 0xDC00
