"""Compiling patterns into one Hyperscan stream-mode database, and what the holdback needs to know about each.

A `Pattern` is a name, an entity, a Hyperscan expression (ASCII), a maximum
width and an optional validator. From the expression we derive the bytes a match
can contain (its alphabet) and the bytes it can start with, so the holdback rule
("keep only a tail that could still grow into a match") needs no hand-kept tables.
"""

from __future__ import annotations

import re
import re._parser as sre_parse
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import hyperscan
import msgspec

from fastgw.scan.terms import exact_holdback, prefix_expressions, term_expression

__all__ = ["Pattern", "ScanDB", "JointDB", "PatternError", "Span", "CONTEXT_BYTES", "NO_HOLD", "DIGITS", "NOT_DIGIT",
           "NOT_DOTTED", "MAX_LOOKAHEAD"]

_ALL = bytes(range(256))


class PatternError(ValueError):
    """A pattern Hyperscan (or our analysis) cannot use; names the pattern."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"pattern {name!r}: {message}")
        self.name = name


#: Canonical bytes before a candidate that a `context_validator` sees: room for a label and its
#: punctuation ("Telefon (mobil):", "| Phone number |", "SSN#") a line or a table cell away, small
#: enough that the scanner's retained window (widest validated pattern + this) stays a few hundred bytes.
CONTEXT_BYTES = 64

#: The ASCII digits, a byte set for `Pattern.not_followed_by`.
DIGITS = b"0123456789"
#: `not_followed_by` of a value that is not a prefix of a longer digit run ('379-57-2229' in '379-57-22290').
NOT_DIGIT: tuple[tuple[bytes, ...], ...] = ((DIGITS,),)
#: ... nor the front of a longer dotted-number run ('1.2.3.4' in '1.2.3.4.5'; '10.0.0.1.' at a sentence end is
#: still an address).
NOT_DOTTED: tuple[tuple[bytes, ...], ...] = ((DIGITS,), (b".", DIGITS))
#: The longest `not_followed_by` sequence a pattern may have: the scanner holds a candidate that long at most.
MAX_LOOKAHEAD = 8
def NO_HOLD(run: bytes) -> int:  # noqa: N802 - a constant in use
    """`Pattern.hold_from` of a pattern with no holdback of its own: what could be its match in progress is held
    by another pattern's group (PHONE_GLUED: the digits are PHONE's; the letter that ends it ends the match)."""
    return 0


#: The longest markdown table header line the scanner remembers for `Pattern.table_context` (longer: none).
MAX_TABLE_HEADER = 512

# A markdown table's delimiter row ('| --- | :---: |', GFM 0.29 section 4.10) and a blank line, which ends a table.
# Matched in the same database as the detectors (ids after the closing markers) when a pattern wants tables.
_TABLE_RULE = rb"^[ ]{0,3}\|?[ ]*:?-+:?[ ]*(?:\|[ ]*:?-+:?[ ]*)+\|?[ ]*\r?$"
_BLANK_LINE = rb"\n[ \t]*\r?\n"


@dataclass(frozen=True, slots=True)
class Pattern:
    """One detector: `expression` is a Hyperscan regex over the canonical bytes (`fastgw.scan.fold`: full-width
    forms, Unicode dashes and spaces folded to ASCII, zero-width characters dropped, and in JSON-source mode
    escapes decoded); a span never exceeds `max_width` canonical bytes, and is reported as the original bytes
    of the characters that produced it.

    Validators see canonical bytes (so `０９０－３２０５` arrives as `090-3205`):

    - `validator(value) -> bool`: the matched bytes only.
    - `context_validator(value, before) -> bool`: also the up to `CONTEXT_BYTES` canonical bytes right before
      the match (fewer only at the start of the text), the same under every split of the stream. For labels
      that confirm (a phone or SSN word) or veto (order, SKU, tracking) a candidate. When both are given,
      both must accept. Nothing after the match is offered: that would need more holdback.

    `not_followed_by` (a small lookahead, which Hyperscan lacks): sequences of byte sets, each a short run of
    canonical bytes that must not come right after a match; a candidate whose next bytes fit any sequence is
    dropped (`NOT_DIGIT`: no digit; `NOT_DOTTED`: no digit, nor '.' and a digit). It lets a digit-ending
    expression drop its trailing word boundary, so a value glued to a letter ('379-57-2229Ground') is found while a
    prefix of a longer digit run ('379-57-22290') is not. While those bytes have not arrived the scanner holds
    the text from the candidate's start (the same decision under every split); at the end of the text a
    sequence cut short does not match. Checked before the validators (so they need not judge every prefix of a
    digit run); each sequence at most `MAX_LOOKAHEAD`.

    Blocks (`block_until`, e.g. a PEM private key): `expression` matches the *opening marker only*
    (`-----BEGIN RSA PRIVATE KEY-----`), `block_until` the closing one (`-----END RSA PRIVATE KEY-----`; any
    match of it after the opening marker ends the block). Once an opening marker has matched (and passed its
    validators), the scanner holds everything from its first byte and reports the block, opening marker to
    the end of the first closing marker, as spans of this pattern's entity. `max_width` is the bound on that
    hold: a block longer than it is reported in consecutive pieces of `max_width` canonical bytes counted from
    the opening marker (each piece final and released, redacted, once complete; the last ends at the
    closing marker, or at the end of the text when none comes), so no byte of the block is ever sent
    unredacted and memory stays bounded. Pieces after the first carry `Span.cont = True`: the policy layer
    may remove their bytes without a second replacement. Inside a block no other pattern is reported; a
    match reaching into a block from before it is cut at the block's start. The opening marker's own width
    (for holdback and validation) is derived from the expression, which must therefore be bounded.
    """

    name: str
    entity: str
    expression: bytes
    max_width: int
    validator: Callable[[bytes], bool] | None = None
    caseless: bool = False
    #: UTF-8 mode (HS_FLAG_UTF8): characters, not bytes, and case folding beyond ASCII. Not HS_FLAG_UCP,
    #: which Hyperscan refuses together with \b.
    utf8: bool = False
    #: Overrides for the derived alphabet / start bytes (for expressions our analysis cannot read).
    alphabet: bytes | None = None
    start: bytes | None = None
    #: (value, up to CONTEXT_BYTES canonical bytes before it) -> accept; see the class docstring.
    context_validator: Callable[..., bool] | None = None
    #: Closing-marker expression of a block pattern (same flags as `expression`); see the class docstring.
    block_until: bytes | None = None
    #: Byte-set sequences that must not follow a match (a lookahead); see the class docstring.
    not_followed_by: tuple[tuple[bytes, ...], ...] = ()
    #: Call `context_validator` with the current markdown table header too; see the class docstring.
    table_context: bool = False
    #: Bytes the expression matches after the value (a letter the value is glued to): cut from every match
    #: before it is checked, validated and reported. `max_width` counts them.
    trailing: int = 0
    #: `hold_from(run) -> n`: of the trailing run of the pattern's alphabet (at most `max_width` bytes), how many
    #: last bytes could be a match in progress: the holdback of a pattern whose alphabet is most of prose
    #: (lower-case letters and spaces) without holding all of it. The pattern gets a holdback group of its
    #: own. None: from the first possible start byte of the run.
    hold_from: Callable[[bytes], int] | None = None
    #: With `hold_from`, (gate, n): what `hold_from` answers for a run holding no byte of `gate`, declared so that the
    #: scanner finds it without calling it (fastgw/scan/_holdc.c): the run's last word, its trailing bytes that can
    #: start a match, when it is at most n bytes and either the whole run or after a byte that is not an ASCII
    #: letter or digit; else 0. tests/scan/test_holdc.py holds each such pattern's `hold_from` to it.
    hold_word: tuple[bytes, int] | None = None
    #: A looser expression Hyperscan compiles in place of `expression` (its matches are a superset of
    #: `expression`'s, with the same or earlier starts): a large bounded repeat makes Hyperscan's start-of-match
    #: tracking scan backwards at every report (PHONE's `{6,16}`: 0.23 us/byte on '1 1 1 ...', 0.01 unbounded).
    #: Each report's true leftmost start is then found with Python's `re` over the last `max_width` bytes
    #: (`expression` anchored at the report's end); a report `expression` has no match for is dropped. ASCII
    #: expressions only (not `utf8`).
    loose: bytes | None = None
    #: A looser expression the block prefilter (`compile_any`) compiles in place of the pattern's: every text
    #: `expression` matches in must match it (a superset), since a text it reports nothing in is never scanned.
    #: A prefilter answers only whether anything could be there, so it needs neither the start nor the context
    #: of a match: EMAIL's unbounded local part and domain make Hyperscan walk most bytes of prose (~1.5 ns a
    #: byte), where the '@' with a byte either side is found by its literal matcher (bench/RESULTS.md).
    prefilter: bytes | None = None
    #: Its `context_validator` is costly (libphonenumber) and has a `quick(value, before, table) -> bool | None`
    #: that answers from cheap checks and cached verdicts, None when only the full judgement can: full
    #: judgements are drawn from the scan's `ScanBudget` (per request and policy), and with none left the
    #: candidate counts as a match (fails closed: redacted, never leaked).
    costly: bool = False
    #: The phrase this pattern is (`expression` must be `fastgw.scan.terms.term_expression(term)`): its holdback
    #: is exact and shared by every phrase of the database: the longest suffix of the text that is a prefix of
    #: a match of any of them, which Hyperscan reports (see `ScanDB.prefix_ids`). No alphabet-run group per
    #: phrase, so the cost per byte does not grow with the number of phrases.
    term: str | None = None


class Span(msgspec.Struct, frozen=True, gc=False):
    """A detected span in a stream, in bytes: [start, end). (Not tracked by the garbage collector: a text of
    values has one every few bytes, and a collection walking a million of them holds the loop ~100 ms.)"""

    start: int
    end: int
    entity: str
    pattern: str
    #: A later piece of a block longer than its pattern's bound: it continues the previous span of the same
    #: pattern (remove its bytes; the replacement was already written for the first piece).
    cont: bool = False


# --- expression analysis -------------------------------------------------------------------

def _class_bytes(items: list, caseless: bool) -> set[int]:
    out: set[int] = set()
    negate = False
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            out.add(av)
        elif name == "RANGE":
            out.update(range(av[0], av[1] + 1))
        elif name == "CATEGORY":
            out |= _category(str(av))
        else:
            raise ValueError(f"unsupported class item {name}")
    if negate:
        out = set(range(256)) - out
    return out


def _category(name: str) -> set[int]:
    if name == "CATEGORY_DIGIT":
        return set(range(48, 58))
    if name == "CATEGORY_NOT_DIGIT":
        return set(range(256)) - set(range(48, 58))
    word = set(range(48, 58)) | set(range(65, 91)) | set(range(97, 123)) | {95}
    if name == "CATEGORY_WORD":
        return word
    if name == "CATEGORY_NOT_WORD":
        return set(range(256)) - word
    space = {9, 10, 11, 12, 13, 32}
    if name == "CATEGORY_SPACE":
        return space
    if name == "CATEGORY_NOT_SPACE":
        return set(range(256)) - space
    raise ValueError(f"unsupported category {name}")


def _analyse(seq, caseless: bool) -> tuple[set[int], set[int], bool]:
    """(alphabet, first bytes, can be empty) of a parsed sequence."""
    alphabet: set[int] = set()
    first: set[int] = set()
    nullable = True
    for op, av in seq:
        name = str(op)
        if name == "LITERAL":
            a = {av}
            f, n = a, False
        elif name == "NOT_LITERAL":
            a = set(range(256)) - {av}
            f, n = a, False
        elif name == "ANY":
            a = set(range(256)) - {10}
            f, n = a, False
        elif name == "IN":
            a = _class_bytes(av, caseless)
            f, n = a, False
        elif name == "AT":
            continue  # \b, ^, $: zero width
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, _hi, sub = av
            a, f, n = _analyse(sub, caseless)
            n = n or lo == 0
        elif name == "SUBPATTERN":
            a, f, n = _analyse(av[-1], caseless)
        elif name == "BRANCH":
            a, f, n = set(), set(), False
            for alt in av[1]:
                aa, ff, nn = _analyse(alt, caseless)
                a |= aa
                f |= ff
                n = n or nn
        else:
            raise ValueError(f"unsupported construct {name}")
        alphabet |= a
        if nullable:
            first |= f
        nullable = nullable and n
    if caseless:
        for s in (alphabet, first):
            s |= {c ^ 0x20 for c in s if 65 <= c <= 90 or 97 <= c <= 122}
    return alphabet, first, nullable


def derive_alphabet(expression: bytes, caseless: bool = False) -> tuple[bytes, bytes]:
    """(alphabet, start bytes) of an expression; every byte when the expression is beyond our analysis."""
    try:
        parsed = sre_parse.parse(expression)
        caseless = caseless or bool(parsed.state.flags & re.IGNORECASE)
        alphabet, first, _ = _analyse(list(parsed), caseless)
    except (re.error, ValueError, TypeError, AttributeError):
        return _ALL, _ALL
    return bytes(sorted(alphabet)), bytes(sorted(first))


# --- the database ----------------------------------------------------------------------------

class _Group:
    """Patterns sharing alphabet, start bytes and width: the holdback treats them as one."""

    __slots__ = ("alphabet", "start", "start_re", "width", "hold_from", "hold_word")

    def __init__(self, alphabet: bytes, start: bytes, width: int,
                 hold_from: Callable[[bytes], int] | None = None, hold_word: tuple[bytes, int] | None = None) -> None:
        self.alphabet = alphabet
        self.start = start
        # None when any byte of the alphabet can start a match: the whole run is the holdback.
        starts_anywhere = set(start) >= set(alphabet)
        self.start_re = None if starts_anywhere or not start else \
            re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in start) + b"]")
        self.width = width
        self.hold_from = hold_from
        self.hold_word = hold_word if hold_from is not None else None

    @property
    def kind(self) -> int:
        """How the scanner finds its holdback in its run (fastgw/scan/_holdc.c's KIND_*): 0 from its first start
        byte, 1 the whole run (any byte can start a match), 2 its `hold_from`, 3 its `hold_word` unless a byte of
        the gate is in the run (then its `hold_from`)."""
        if self.hold_from is not None:
            return 3 if self.hold_word is not None else 2
        return 1 if self.start_re is None else 0

    def spec(self) -> bytes:
        """The group as fastgw/scan/_holdc.c reads it: kind (u8), last-word bound (u8), 6 bytes of padding, width
        (i64, little-endian), then 256-byte lookup tables of its start bytes and of its gate."""
        gate, word = self.hold_word if self.hold_word is not None else (b"", 0)
        if not 0 <= word < 256:
            raise ValueError(f"a hold_word bound of {word} bytes (0-255)")
        return struct.pack("<BB6xq", self.kind, word, self.width) + _table(self.start) + _table(gate)


def _table(members: bytes) -> bytes:
    """A 256-byte lookup table: 1 at each byte of `members`, 0 elsewhere."""
    t = bytearray(256)
    for b in members:
        t[b] = 1
    return bytes(t)


@dataclass(slots=True)
class ScanDB:
    """All enabled patterns compiled into one Hyperscan stream database (SOM leftmost). `prefilter`: also the
    block database `find_spans` looks at short texts with first (`any`); False for a caller that never asks."""

    patterns: list[Pattern]
    prefilter: bool = True
    hs: hyperscan.Database = field(init=False)
    #: Widest pattern: the most any stream ever holds back.
    max_width: int = field(init=False)
    #: Patterns grouped by (alphabet, start bytes, width): the holdback looks at each group once.
    groups: list[_Group] = field(init=False)
    #: The groups' alphabets, widths, `hold_from`s and start expressions in the same order: a scanner reads them on
    #: every scan and settle, as lists rather than attributes of each (interpreted) group.
    alphabets: list[bytes] = field(init=False)
    hold_widths: list[int] = field(init=False)
    hold_froms: list[Callable[[bytes], int] | None] = field(init=False)
    start_res: list[re.Pattern[bytes] | None] = field(init=False)
    #: The same as fastgw/scan/_holdc.c reads them: per group, a 256-byte lookup table of its alphabet, and its
    #: `_Group.spec`.
    members: bytes = field(init=False)
    hold_spec: bytes = field(init=False)
    #: Per pattern, the widest match it reports: `max_width`, or for a block pattern its opening marker's.
    widths: list[int] = field(init=False)
    #: Canonical bytes a scanner keeps for validators: the widest validated match, plus the context.
    window: int = field(init=False)
    #: Hyperscan id len(patterns) + i is the closing marker of block pattern closers[i].
    closers: list[int] = field(init=False)
    #: Whether any pattern is a block pattern.
    blocks: bool = field(init=False)
    #: Per pattern, its `not_followed_by` as sequences of byte sets (None: no lookahead).
    follow: list[tuple[tuple[frozenset[int], ...], ...] | None] = field(init=False)
    #: Hyperscan ids of the table delimiter row and of a blank line (-1: no pattern wants table context).
    table_rule: int = field(init=False)
    blank_line: int = field(init=False)
    #: Per pattern with a `loose` expression: its `expression` (`re`), as is and anchored at the end (for true
    #: starts).
    tails: list[tuple[re.Pattern[bytes], re.Pattern[bytes]] | None] = field(init=False)
    #: Hyperscan ids from this one on are the phrases' prefix expressions (`Pattern.term`); a report of one ending
    #: at the text's end is a phrase match in progress, from the report's start.
    prefix_ids: int = field(init=False)
    #: The widest phrase with a prefix expression (0: none): the most their holdback holds.
    term_width: int = field(init=False)
    #: The same expressions but the phrases' prefixes, in block mode without start of match: whether a short
    #: text holds anything at all that `hs` would report, in one scan (`fastgw.scan.scanner.find_spans`).
    any: hyperscan.Database | None = field(init=False)
    #: `hs`'s (pattern, expression, flags) in id order (a `JointDB` compiles several databases' as one).
    exprs: list[tuple[Pattern, bytes, int]] = field(init=False)

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("no patterns")
        names = [p.name for p in self.patterns]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate pattern names in {names}")
        # Patterns are merged into a few holdback classes (union of alphabets and start bytes, largest
        # width). A merged class can only hold back more than its members would, never less, and each
        # class costs one pass over every fed byte: few classes keep redaction of clean text cheap.
        classes: dict[object, tuple[set[int], set[int], int]] = {}
        held: dict[object, Callable[[bytes], int]] = {}
        words: dict[object, tuple[bytes, int]] = {}
        letters = set(range(65, 91)) | set(range(97, 123))
        self.widths = [_opening_width(p) if p.block_until is not None else p.max_width for p in self.patterns]
        self.closers = [i for i, p in enumerate(self.patterns) if p.block_until is not None]
        self.blocks = bool(self.closers)
        context = any(p.context_validator is not None for p in self.patterns)
        self.follow = [_follow(p) for p in self.patterns]
        self.tails = [_tail(p) for p in self.patterns]
        lookahead = max((len(seq) for f in self.follow if f for seq in f), default=0)
        self.window = max(self.widths) + (CONTEXT_BYTES if context else 0) + lookahead
        terms: dict[tuple[bool, bool], list[str]] = {}  # (caseless, utf8) -> phrases
        self.term_width = 0
        for p, width in zip(self.patterns, self.widths):
            if p.term is not None and p.block_until is None and exact_holdback(p.term):
                if p.expression != term_expression(p.term):
                    raise PatternError(p.name, "a term pattern's expression must be term_expression(term)")
                terms.setdefault((p.caseless, p.utf8), []).append(p.term)
                self.term_width = max(self.term_width, width)
                continue  # held by the prefix expressions, not by an alphabet-run group
            alphabet, start = derive_alphabet(p.expression, p.caseless)
            if p.utf8:
                # Unicode classes and case folding reach bytes the ASCII analysis cannot see.
                alphabet = bytes(sorted(set(alphabet) | set(range(0x80, 0x100))))
                start = bytes(sorted(set(start) | set(range(0xC2, 0xF5))))
            if p.alphabet is not None:
                alphabet = p.alphabet
            if p.start is not None:
                start = p.start
            a = set(alphabet)
            if p.hold_from is NO_HOLD:
                continue  # its matches in progress are another pattern's (see NO_HOLD)
            if p.hold_from is not None:
                key: object = ("hold_from", p.name)
                held[key] = p.hold_from
                if p.hold_word is not None:
                    words[key] = p.hold_word
            elif 32 not in a:
                key = "no-space"  # words, keys, addresses: a space always ends their run
            elif not a & letters:
                key = "spaced-digits"  # cards, SSNs, phones: digits with separators
            else:
                key = alphabet  # letters and spaces (IBAN groups, PEM headers): kept apart
            ca, cs, cw = classes.get(key, (set(), set(), 0))
            # A block pattern's holdback is its opening marker's: once that matches, the scanner holds the block.
            classes[key] = (ca | a, cs | set(start), max(cw, width))
        self.groups = [_Group(bytes(sorted(a)), bytes(sorted(st)), w, held.get(k), words.get(k))
                       for k, (a, st, w) in classes.items()]
        self.alphabets = [g.alphabet for g in self.groups]
        self.hold_widths = [g.width for g in self.groups]
        self.hold_froms = [g.hold_from for g in self.groups]
        self.start_res = [g.start_re for g in self.groups]
        self.members = b"".join(_table(g.alphabet) for g in self.groups)
        self.hold_spec = b"".join(g.spec() for g in self.groups)
        self.max_width = max(p.max_width for p in self.patterns)
        tables = any(p.table_context for p in self.patterns)
        if tables:
            self.window = max(self.window, 2 * MAX_TABLE_HEADER)  # a header line and its delimiter row
        n = len(self.patterns) + len(self.closers)
        self.table_rule, self.blank_line = (n, n + 1) if tables else (-1, -1)
        self.prefix_ids = n + 2 if tables else n
        prefixes = []
        for (caseless, utf8), ts in terms.items():
            f = hyperscan.HS_FLAG_SOM_LEFTMOST | (hyperscan.HS_FLAG_CASELESS if caseless else 0) | \
                (hyperscan.HS_FLAG_UTF8 if utf8 else 0)
            prefixes += [(e, f) for e in prefix_expressions(ts, utf8, caseless)]
        self.exprs = _stream_expressions(self.patterns, tables, prefixes)
        self.hs = _compile(self.exprs, _STREAM_MODE)
        self.any = compile_any(self.patterns, tables) if self.prefilter else None

    def allocate_scratch(self) -> None:
        """One scratch per worker process, allocated after fork (Hyperscan scratch is not shareable)."""
        self.hs.scratch = hyperscan.Scratch(self.hs)
        if self.any is not None:
            self.any.scratch = hyperscan.Scratch(self.any)


def _follow(p: Pattern) -> tuple[tuple[frozenset[int], ...], ...] | None:
    """A pattern's `not_followed_by` as byte sets; PatternError when a sequence is empty, too long or has an
    empty set, or the pattern is a block pattern (its end is the closing marker's)."""
    if not p.not_followed_by:
        return None
    if p.block_until is not None:
        raise PatternError(p.name, "not_followed_by is not supported on a block pattern")
    out = []
    for seq in p.not_followed_by:
        if not seq or len(seq) > MAX_LOOKAHEAD or not all(seq):
            raise PatternError(p.name, f"not_followed_by sequences need 1..{MAX_LOOKAHEAD} non-empty byte sets, "
                                       f"got {seq!r}")
        out.append(tuple(frozenset(b) for b in seq))
    return tuple(out)


def _tail(p: Pattern) -> tuple[re.Pattern[bytes], re.Pattern[bytes]] | None:
    """A `loose` pattern's exact expression for Python's `re`, as is and anchored to end where a search stops
    (PatternError when `re` cannot read it, or the pattern is UTF-8 or a block pattern)."""
    if p.loose is None:
        return None
    if p.utf8 or p.block_until is not None:
        raise PatternError(p.name, "a loose expression needs an ASCII, non-block pattern")
    flags = re.IGNORECASE if p.caseless else 0
    try:
        return re.compile(p.expression, flags), re.compile(b"(?:" + p.expression + rb")\Z", flags)
    except re.error as e:
        raise PatternError(p.name, f"Python cannot read the expression a loose one stands for: {e}") from None


def _opening_width(p: Pattern) -> int:
    """The widest match of a block pattern's opening marker (its expression), at most `max_width`; `max_width`
    when our analysis cannot bound it (then its holdback is as wide as the block's)."""
    try:
        hi = sre_parse.parse(p.expression).getwidth()[1]
    except (re.error, ValueError, TypeError, AttributeError, OverflowError):
        return p.max_width
    return min(int(hi), p.max_width) if 0 < hi < sre_parse.MAXREPEAT else p.max_width


def compile_patterns(patterns: Sequence[Pattern], tables: bool = False,
                     prefixes: Sequence[tuple[bytes, int]] = ()) -> hyperscan.Database:
    """One stream-mode database; a pattern Hyperscan rejects raises PatternError naming it.

    Ids 0..n-1 are the patterns; the closing markers of block patterns follow, in pattern order; with
    `tables`, then the table delimiter row and the blank line; then the `prefixes` (expression, flags) of the
    phrases (`Pattern.term`)."""
    return _compile(_stream_expressions(patterns, tables, prefixes), _STREAM_MODE)


_STREAM_MODE: Final = hyperscan.HS_MODE_STREAM | hyperscan.HS_MODE_SOM_HORIZON_LARGE


def _stream_expressions(patterns: Sequence[Pattern], tables: bool,
                        prefixes: Sequence[tuple[bytes, int]]) -> list[tuple[Pattern, bytes, int]]:
    """`compile_patterns`' (pattern, expression, flags) in id order."""
    exprs = _expressions(patterns, tables)
    marker = Pattern("(term prefixes)", "", b"", 1)
    return exprs + [(marker, e, f) for e, f in prefixes]


class JointDB:
    """Several databases' stream expressions compiled as one (the output policies of a chain): one Hyperscan scan
    of a text's bytes reports for all of them, where each database would take its own (issue 18: a stream call's
    fixed cost is most of a short piece's). Hyperscan reports each expression's matches whatever else the
    database holds, so every database gets the reports it would have had alone: report `i` is `local[i]` of
    `dbs[owner[i]]` (fastgw.scan.scanner.ScanGroup dispatches them)."""

    def __init__(self, dbs: Sequence[ScanDB]) -> None:
        if len(dbs) < 2:
            raise ValueError("a joint database is of two databases or more")
        self.dbs = list(dbs)
        exprs: list[tuple[Pattern, bytes, int]] = []
        self.owner: list[int] = []
        self.local: list[int] = []
        for i, db in enumerate(self.dbs):
            self.owner += [i] * len(db.exprs)
            self.local += range(len(db.exprs))
            exprs += db.exprs
        # Not kept serialized: the copy (~0.7 MB with the built-in detectors) would sit in every worker's memory,
        # for 0.17 s saved on a reload.
        self.hs = _compile(exprs, _STREAM_MODE, keep=False)

    def allocate_scratch(self) -> None:
        """One scratch per worker process, after fork (as `ScanDB.allocate_scratch`)."""
        self.hs.scratch = hyperscan.Scratch(self.hs)


def compile_any(patterns: Sequence[Pattern], tables: bool = False) -> hyperscan.Database:
    """A block-mode database of `compile_patterns`' expressions less the phrases' prefixes (whose reports are
    no match), without start of match, and with each pattern's `prefilter` expression where it has one: it
    reports whenever the stream database would report a match (exactly then, but for those patterns, whose
    reports are a superset), and one block scan costs a fifth to a quarter of opening, scanning and closing a
    stream (bench/RESULTS.md)."""
    som = hyperscan.HS_FLAG_SOM_LEFTMOST
    exprs = _expressions(patterns, tables)
    # The first len(patterns) are the patterns' own expressions (then closers and table rows, kept as they are).
    return _compile([(p, p.prefilter if i < len(patterns) and p.prefilter is not None else e, f & ~som)
                     for i, (p, e, f) in enumerate(exprs)], hyperscan.HS_MODE_BLOCK)


def _expressions(patterns: Sequence[Pattern], tables: bool) -> list[tuple[Pattern, bytes, int]]:
    """(pattern, expression, flags) in Hyperscan id order: the patterns, their closing markers, the table rows."""
    exprs: list[tuple[Pattern, bytes, int]] = []
    for p in patterns:
        f = hyperscan.HS_FLAG_SOM_LEFTMOST
        if p.caseless:
            f |= hyperscan.HS_FLAG_CASELESS
        if p.utf8:
            f |= hyperscan.HS_FLAG_UTF8
        exprs.append((p, p.loose if p.loose is not None else p.expression, f))
    for p, _, f in list(exprs):
        if p.block_until is not None:
            if not p.block_until:
                raise PatternError(p.name, "empty block_until")
            exprs.append((p, p.block_until, f))
    if tables:
        marker = Pattern("(table rows)", "", b"", 1)
        exprs.append((marker, _TABLE_RULE, hyperscan.HS_FLAG_SOM_LEFTMOST | hyperscan.HS_FLAG_MULTILINE))
        exprs.append((marker, _BLANK_LINE, hyperscan.HS_FLAG_SOM_LEFTMOST))
    return exprs


#: Databases this process compiled, serialized, by what they were compiled from (mode, expressions, flags), the
#: least recently used dropped past COMPILED_KEPT: building the same patterns again (a reload whose policies did
#: not change, the audit log's redactor beside the pii-detector, a test process's many gateways) loads a copy in
#: a few ms instead of compiling (~0.4 s for the built-in detectors). A copy, never the object: each database has its
#: own scratch, and two users of one (the audit writer's thread and the event loop) would share it.
_compiled: OrderedDict[tuple[int, tuple[tuple[bytes, int], ...]], bytes] = OrderedDict()
#: Serialized databases kept (the built-in detectors' pair is ~0.9 MB).
COMPILED_KEPT = 8


def _compile(exprs: list[tuple[Pattern, bytes, int]], mode: int, keep: bool = True) -> hyperscan.Database:
    """`keep=False`: not kept serialized (nor looked up), for a database whose copy would cost more memory in every
    worker than compiling it again costs a reload (`JointDB`)."""
    key = (mode, tuple((e, f) for _, e, f in exprs))
    done = _compiled.get(key) if keep else None
    if done is not None:
        _compiled.move_to_end(key)
        db = hyperscan.loadb(done, mode)
        db.scratch = hyperscan.Scratch(db)
        return db
    db = hyperscan.Database(mode=mode)
    try:
        db.compile(expressions=[e for _, e, _ in exprs], ids=list(range(len(exprs))), elements=len(exprs),
                   flags=[f for _, _, f in exprs])
        if not keep:
            return db
        _compiled[key] = hyperscan.dumpb(db)
        if len(_compiled) > COMPILED_KEPT:
            _compiled.popitem(last=False)
    except hyperscan.error:
        # Compile one by one to say which pattern is at fault and why.
        for p, expr, f in exprs:
            one = hyperscan.Database(mode=mode)
            try:
                one.compile(expressions=[expr], ids=[0], elements=1, flags=[f])
            except hyperscan.error as e:
                raise PatternError(p.name, f"Hyperscan cannot compile {expr.decode(errors='replace')!r}: "
                                           f"{e}") from None
        raise
    return db
