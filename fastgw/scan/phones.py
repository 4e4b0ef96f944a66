"""Phone numbers: Hyperscan finds candidates with a loose pattern, Google's libphonenumber rules confirm them.

The split follows libphonenumber's own `PhoneNumberMatcher` (find broadly, confirm exactly), with a rule
for text whose locale is unknown. Valid-in-some-region alone matches about one decoy in ten across nine
regions (order and part numbers, epochs, dates), so:

- an international number (`+CC ...`, or `00CC ...`) is judged for its own country: valid there is enough;
- a national number must be valid for one of the configured regions *and* either have a phone word just
  before it (`Tel.`, `call`, `anrufen`, `ligar`, `belt`, `電話`, `tel:`, a `"phone":` key), or be written the
  way that region writes its numbers (libphonenumber's `STRICT_GROUPING` leniency, or grouped after the
  region's trunk prefix: `0151 98109301`, `(0406)-812415`) in a shape decoys rarely take: grouped (not a
  bare run: epochs, order numbers), 9+ digits, no slash, not a date, not thousands groups (`245 577 365`),
  not the SSN layout (`666-12-3456`);
- a label such as order, part, SKU, tracking, ref, invoice or ISBN just before it vetoes either kind.

"Just before" is the nearest label among the last `CONTEXT_CHARS` characters on the same line and in the same
sentence: the nearest word wins, so `order 123, call 0151 98109301` is a phone and `call about order 0151 981093`
is not, while `call Ana at 0151 98109301. Order: 2001-05-19` leaves the date alone (the phone word is in the
sentence before). In a markdown table row the label is the one in the value's own cell, else its column's
header (`| Phone |`, `| Bestellnummer |`): the scanner remembers the header line (`Pattern.table_context`).

A national number written as one bare run of digits passes on layout alone only when it starts with its
region's trunk prefix `0` (`04222369430`, `0684133243`): order numbers, epochs and ids rarely do, and
national numbers in most of Europe, Brazil, Japan and Australia always do.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

__all__ = ["DEFAULT_REGIONS", "CONTEXT_CHARS", "PhoneValidator", "phone_label", "unknown_regions", "NONE", "PHONE_WORD", "VETO",
           "CANDIDATE", "CANDIDATE_GLUED", "CANDIDATE_LOOSE", "CANDIDATE_WIDTH"]

#: Regions a national-format number may belong to when none are configured: the markets of the locales
#: LLM traffic is most often written in (North America, the large EU economies and their neighbours,
#: Iberia and Latin America, the UK and Commonwealth, East and South Asia). Each region added lets more
#: digit runs pass as "valid somewhere", so the list stops at the regions with the most speakers and
#: trade; international (`+CC`) numbers of every country are found whatever this list says.
DEFAULT_REGIONS: tuple[str, ...] = (
    "US", "CA", "MX", "BR", "AR", "GB", "IE", "FR", "BE", "NL", "DE", "AT", "CH", "IT", "ES", "PT", "PL",
    "SE", "JP", "KR", "CN", "IN", "AU",
)

#: How far back (characters, same line) a phone word or a vetoing label is looked for: a label and its value
#: sit within a few words of each other (Presidio's context enhancer looks 5 words back).
CONTEXT_CHARS = 40

# --- the candidate pattern ----------------------------------------------------------------------------

# Digits with at most two separators between them ('+44 (0) 20': ' (' and ') ') or one dot ('04.81.36'; never
# '. ', which ends a sentence, not a group), 7-17 digits (E.164's 15,
# a '(0)' trunk and a national '0'), then an optional extension ('x590', 'ext. 12', '#12'). Starts at '+',
# '(' or a word boundary; ends at a word boundary, so a prefix of a longer digit run is never a candidate.
CANDIDATE_BODY = (rb"(?:\+[ ]?\(?|\(|\b)\d(?:(?:[ ()/-]{1,2}|\.)?\d){6,16}"
                  rb"(?:[ ]?(?:[xX]|[eE][xX][tT]\.?|#)[ ]?\d{1,6})?")
CANDIDATE = CANDIDATE_BODY + rb"\b"
#: CANDIDATE with no upper bound on its digits, for Hyperscan (`Pattern.loose`): the bounded repeat costs its
#: start-of-match tracking 0.23 µs per byte of '1 1 1 ...'; the scanner finds each report's true start itself.
CANDIDATE_LOOSE = CANDIDATE.replace(rb"{6,16}", rb"{6,}")
assert CANDIDATE_LOOSE != CANDIDATE
#: The same number glued to the letter after it ('0151 98109301Ground'): the letter is matched and cut off
#: (`Pattern.trailing`). A pattern of its own, because dropping CANDIDATE's trailing \b would report (and
#: judge) every prefix of every digit run: +25 % CPU per event on digit-heavy text.
CANDIDATE_GLUED = CANDIDATE_BODY + rb"[A-Za-z]"
#: '+ (' + 17 digits with two separators each + ' ext. ' + 6 digits.
CANDIDATE_WIDTH = 3 + 17 + 16 * 2 + 6 + 6

# --- context words ------------------------------------------------------------------------------------

_PHONE_WORDS = (
    # en
    r"phone\w*", r"tel", r"tele?phone\w*", r"mobile?", r"cell\w*", r"fax", r"call\w*", r"dial", r"ring",
    r"sms", r"text(?: me| us)?", r"whats ?app", r"hotline", r"helpline", r"contact\w*", r"reach(?: \w+)? at",
    # de, nl ('Handynummer', 'Rufnummer'; 'bel me', 'belt u')
    r"(?:handy|mobil|ruf|fax|telefon)\w*", r"anruf\w*", r"rufen", r"erreichbar\w*", r"durchwahl",
    r"telefoon\w*", r"mobiel\w*", r"bel", r"belt", r"bellen", r"gsm",
    # fr, es, pt, it
    r"t[ée]l[ée]?", r"t[ée]l[ée]phone\w*", r"portable", r"appel\w*", r"joindre", r"tel[ée]fono\w*",
    r"m[óo]vil", r"celular", r"llam\w*", r"ligar?", r"ligue\w*", r"contat\w*", r"chiam\w*", r"cellulare",
    # markup
    r"tel:", r"callto:", r"msisdn",
)
# Han, kana and hangul words have no word boundary to hold on to ('お電話は'): matched anywhere.
_PHONE_CJK = (r"電話", r"携帯", r"手机", r"电话", r"전화", r"휴대폰", r"☎", r"📞")
_VETO_WORDS = (
    r"order\w*", r"ord", r"part", r"parts", r"p/?n", r"sku", r"tracking", r"track", r"ref\w*", r"invoice\w*",
    r"inv", r"isbn\w*", r"issn", r"id", r"uuid", r"serial", r"s/?n", r"account", r"acct", r"iban", r"bic",
    r"ticket", r"case", r"po", r"customer", r"item", r"article", r"model", r"version", r"build", r"v", r"zip",
    r"postal", r"plz", r"pin", r"otp", r"code", r"ssn", r"tin", r"vat", r"ust", r"tax", r"ein", r"card", r"ip",
    r"timestamp", r"epoch", r"ts", r"date", r"price", r"total", r"amount", r"batch", r"lot", r"rma", r"track\w*",
    r"created\w*", r"updated\w*", r"\w+_(?:at|id|no|ts)", r"n[°º]",
    # de, nl, fr, es, pt, it
    r"bestel\w*", r"auftrag\w*", r"rechnung\w*", r"artikel\w*", r"kunden\w*", r"sendung\w*", r"teil\w*",
    r"datum", r"onderdeel\w*", r"totaal", r"factuur\w*", r"commande", r"facture", r"r[ée]f[ée]rence",
    r"pedido", r"factura", r"referencia", r"fatura", r"ordine", r"fattura", r"fecha", r"data", r"c[óo]digo",
    r"pe[çc]a", r"nota fiscal", r"rastreio", r"seguimiento", r"env[íi]o", r"spedizione", r"codice", r"articolo",
)
_VETO_CJK = (r"注文", r"請求", r"品番", r"型番", r"追跡", r"伝票", r"日付", r"订单", r"주문")
# The nearest label wins: a phone word or a veto, searched as whole words in the text before a candidate.
_LABEL = re.compile(
    r"(?P<phone>(?<!\w)(?:" + "|".join(_PHONE_WORDS) + r")(?!\w)|" + "|".join(_PHONE_CJK) + ")"
    r"|(?P<veto>(?<!\w)(?:" + "|".join(_VETO_WORDS) + r")(?!\w)|" + "|".join(_VETO_CJK) + ")",
    re.IGNORECASE)

NONE, PHONE_WORD, VETO = 0, 1, 2

# A sentence ends between a label and the value: the label belongs to the sentence before.
# (A word of three letters or more, or a digit: 'No.', 'Nr.' and 'nº.' are abbreviations inside a label.)
_SENTENCE_END = re.compile(r"(?:[^\W\d_]{3}|\d)[.!?;]\s|[。！？]")
_ENDS_SENTENCE = re.compile(r"[.!?]\s")
_PIPE = re.compile(r"(?<!\\)\|")


# Every label has a letter (Han, kana and hangul are letters too) or is one of the two phone signs: a context
# without any is NONE at the cost of one search (a run of digits and separators needs no label search).
_LABEL_CHAR = re.compile(r"[^\W\d_]|[☎📞]")


@functools.lru_cache(maxsize=4096)
def _nearest(text: str) -> int:
    """The kind of the nearest label in `text` that shares the sentence of its end. (Cached: a streamed answer
    and a list of numbers repeat their contexts, and the label search costs ~15 µs.)"""
    if _LABEL_CHAR.search(text) is None:
        return NONE
    last = None
    for last in _LABEL.finditer(text):
        pass
    if last is None or _SENTENCE_END.search(text, last.end()):
        return NONE
    if last.group("phone") is not None:
        return PHONE_WORD
    # A vetoing word that ends its sentence ('... senior card. (907)803-2853') labels nothing after it; short
    # ones are abbreviations that label the value ('Ref. 0084975770', 'Art. 12-345').
    return NONE if last.end() - last.start() >= 4 and _ENDS_SENTENCE.match(text, last.end()) else VETO


def phone_label(before: bytes, table: bytes = b"") -> int:
    """NONE, PHONE_WORD or VETO: the nearest label in the last CONTEXT_CHARS characters of `before`'s last line;
    in a markdown table row (`table`: its header line), the label in the value's cell, else its column's."""
    text = before.decode("utf-8", "ignore")
    line = text[text.rfind("\n") + 1:]
    if not table or not line.lstrip().startswith("|"):
        return _nearest(line[-CONTEXT_CHARS:])
    cells = _PIPE.split(line)
    own = _nearest(cells[-1][-CONTEXT_CHARS:])
    if own != NONE:
        return own
    head = _PIPE.split(table.decode("utf-8", "ignore").strip())
    if head and head[0].strip() == "":
        head = head[1:]  # a leading pipe: cells[0] is the text before it, as in the row
    col = len(cells) - 2
    if 0 <= col < len(head):
        last = None
        for last in _LABEL.finditer(head[col]):
            pass
        if last is not None:
            return PHONE_WORD if last.group("phone") is not None else VETO
    return NONE


# --- the judgement ------------------------------------------------------------------------------------

_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Shapes that need a phone word before a national number passes on layout alone: a bare digit run (epochs,
# order and tracking numbers), fewer than 9 digits (times, short ids), slashes and dates, thousands groups.
_BARE = re.compile(r"\d+")
# A bare national number after the trunk prefix '0' (not the international '00'): 10 or 11 digits.
_TRUNK_RUN = re.compile(r"0[1-9]\d{8,9}")
_DATE = re.compile(r"\d{1,2}[./-]\d{1,2}[./-](?:19|20)\d\d|(?:19|20)\d\d[./-]\d{1,2}[./-]\d{1,2}")
_THOUSANDS = re.compile(r"\d{1,3}(?:[ .,]\d{3})+")
_EXTENSION = re.compile(r"\s?(?:[xX#]|[eE][xX][tT]\.?)\s?\d+$")
_GROUPED = re.compile(r"\(?(\d+)\)?[ .()/-]+\d")
# The SSN layout (3-2-4, one separator): an SSN the SSN validator refused ('666-12-3456') is no phone
# unless a phone word says so; no region in DEFAULT_REGIONS writes its numbers that way.
_SSN_SHAPE = re.compile(r"\d{3}([ .-])\d{2}\1\d{4}")


def unknown_regions(regions: Iterable[str]) -> list[str]:
    """The codes in `regions` libphonenumber has no metadata for."""
    import phonenumbers  # lazily: ~1 MB of modules a worker without the PHONE entity never needs (issue 18)

    known = phonenumbers.SUPPORTED_REGIONS
    return [r for r in regions if r not in known]


class PhoneValidator:
    """A `Pattern` validator for phone candidates: `(value, before) -> bool`, the rule of the module docstring."""

    __slots__ = ("regions", "_trunk", "_lengths", "_verdicts", "cost", "_loaded")

    def __init__(self, regions: Sequence[str] = DEFAULT_REGIONS, *, load: bool = True) -> None:
        """`load=False` defers checking the regions and loading libphonenumber to `load()` or the first
        judgement: the built-in PHONE pattern's validator exists in every process that imports the patterns,
        and libphonenumber with 23 regions' metadata is ~1.5 MB in a worker that never judges a phone."""
        self.regions = tuple(regions)
        self._trunk: dict[str, str | None] = {}
        #: National significant number lengths per region: a region no length fits is not parsed for (a parse
        #: costs ~50 us, and a national number is tried against every region).
        self._lengths: dict[str, frozenset[int]] = {}
        # The engine validates every candidate end offset, and a streamed answer repeats its numbers: a
        # bounded cache of verdicts (text and label) keeps libphonenumber (~25 µs a parse) off repeats. A dict,
        # not functools.lru_cache, so `quick` can look without judging.
        self._verdicts: dict[tuple[str, int], bool] = {}
        #: libphonenumber work done so far, in parses (a strict-grouping match counts 3): the scanner charges a
        #: full judgement's share of it to the request's budget (`Pattern.costly`).
        self.cost = 0
        self._loaded = False
        if load:
            self.load()

    def load(self) -> None:
        """Check the regions, read their metadata and warm libphonenumber (idempotent; raises ValueError naming
        unknown regions)."""
        if self._loaded:
            return
        import phonenumbers  # lazily: see __init__
        import phonenumbers.re_util

        bad = unknown_regions(self.regions)
        if bad:
            raise ValueError(f"unknown phone regions {bad}")
        # libphonenumber compiles its metadata's expressions through `re`, whose cache (512) the 23 default
        # regions overflow: every judgement recompiled a few. Its own cache keeps them (bounded by the metadata),
        # ~10 % a parse.
        phonenumbers.re_util.enable_pattern_cache()
        for r in self.regions:
            meta = phonenumbers.PhoneMetadata.metadata_for_region(r)
            self._trunk[r] = meta.national_prefix if meta is not None else None
            desc = meta.general_desc if meta is not None else None
            self._lengths[r] = frozenset((desc.possible_length or ()) + (desc.possible_length_local_only or ())) \
                if desc is not None else frozenset()
        self._loaded = True
        self._warm()

    def _warm(self) -> None:
        """Judge a few shapes once, so libphonenumber compiles its expressions for these regions now (in the
        master, before fork) and not in the first request that needs them (~10 ms each, 30 ms in all)."""
        for text in ("0151 98109301", "1 2 3 4 5 6 7 8 9", "12 34 56 78 90", "(0406)-812415", "+49 30 1234567"):
            for label in (NONE, PHONE_WORD):
                self._judge(text, label)
        self.cost = 0

    def __call__(self, value: bytes, before: bytes = b"", table: bytes = b"") -> bool:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return False
        return self.judge(text, phone_label(before, table))

    def quick(self, value: bytes, before: bytes = b"", table: bytes = b"") -> bool | None:
        """The verdict when cheap checks or a cached verdict give it; None when only libphonenumber can
        (`Pattern.costly`: the scanner draws that from its budget)."""
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return False
        label = phone_label(before, table)
        known = self._verdicts.get((text, label))
        return known if known is not None else _cheap(text, label)

    def judge(self, text: str, label: int) -> bool:
        """The verdict on a candidate's text under its label (cached)."""
        key = (text, label)
        v = self._verdicts.get(key)
        if v is None:
            v = self._judge(text, label)
            if len(self._verdicts) >= _VERDICTS:
                del self._verdicts[next(iter(self._verdicts))]  # the oldest: repeats come close together
            self._verdicts[key] = v
        return v

    def _judge(self, text: str, label: int) -> bool:
        cheap = _cheap(text, label)
        if cheap is not None:
            return cheap
        if not self._loaded:
            self.load()
        import phonenumbers  # lazily: see __init__ (a dict lookup once loaded; a judgement costs ~25 µs)
        from phonenumbers import NumberParseException

        try:
            if text[0] == "+":
                self.cost += 1
                return phonenumbers.is_valid_number(phonenumbers.parse(text, None))
            if text.startswith("00"):
                self.cost += 1
                if _intl_00(text):
                    return True
            if label != PHONE_WORD and not _layout_alone(text):
                return False
            main = _EXTENSION.sub("", text)
            digits = len(main) - len(main.translate(_NO_DIGITS))
            for region in self.regions:
                lengths = self._lengths[region]
                trunk = self._trunk[region]
                if lengths and digits not in lengths and not (trunk and digits - len(trunk) in lengths):
                    continue
                self.cost += 1
                try:
                    n = phonenumbers.parse(text, region)
                except NumberParseException:
                    continue  # not a number of this region (too long for its plan): the next may take it
                if not phonenumbers.is_valid_number_for_region(n, region):
                    continue
                if label == PHONE_WORD or self._layout(text, region):
                    return True
        except NumberParseException:
            return False
        return False

    def _layout(self, text: str, region: str) -> bool:
        """Whether `text` is written the way `region` writes national numbers."""
        trunk = self._trunk[region]
        if trunk == "0" and _BARE.fullmatch(text):
            return True  # a bare run after the trunk '0' (_layout_alone let only those through)
        if trunk:
            # Grouped after the trunk prefix: '0151 98109301', '(0406)-812415', '04.81.36.62.96'.
            m = _GROUPED.match(text)
            if m is not None and m.group(1).startswith(trunk) and len(m.group(1)) > len(trunk):
                return True
        # One try: only a match of the whole text counts, and that can only be the matcher's first candidate
        # parsed whole; the inner candidates it tries after a failure (~10 parses) start or end inside it.
        from phonenumbers import Leniency, PhoneNumberMatcher  # lazily: see __init__

        self.cost += 3  # a parse, the grouping check and formatting
        for match in PhoneNumberMatcher(text, region, leniency=Leniency.STRICT_GROUPING, max_tries=1):
            return match.start == 0 and match.end == len(text)
        return False


#: Verdicts a validator keeps (text and label): a few KB of strings; repeats come within a text or a stream.
_VERDICTS = 4096


def _cheap(text: str, label: int) -> bool | None:
    """`PhoneValidator._judge`'s verdict where no libphonenumber call is needed to give it, else None."""
    if label == VETO or _DOTTED_QUAD.fullmatch(text) and all(int(n) < 256 for n in text.split(".")):
        return False  # a label says it is something else; four dotted bytes are an address or a version
    if text[0] == "+" or text.startswith("00"):
        return None  # international: libphonenumber judges it for its own country
    if label != PHONE_WORD and not _layout_alone(text):
        return False
    return None


def _layout_alone(text: str) -> bool:
    """Whether a national number without a phone word may pass on its layout: see the shapes above."""
    # (Cheapest tests first: a text of digit groups offers a candidate every few bytes.)
    main = _EXTENSION.sub("", text) if _EXT_CHARS.search(text) else text
    if main.isdigit():  # ASCII (the caller decoded it so): `_BARE`
        return _TRUNK_RUN.fullmatch(main) is not None
    if len(main) - len(main.translate(_NO_DIGITS)) < 9 or "/" in main:
        return False
    return not (_DATE.fullmatch(main) or _THOUSANDS.fullmatch(main) or _SSN_SHAPE.fullmatch(main))


#: What an extension (`_EXTENSION`) starts with.
_EXT_CHARS = re.compile(r"[xX#eE]")


#: str.translate table deleting the ASCII digits (a count of digits at C speed; candidates are ASCII).
_NO_DIGITS = dict.fromkeys(range(48, 58))


def _intl_00(text: str) -> bool:
    """'0049 30 1234567': the ITU international prefix 00, judged like '+49 30 1234567'."""
    import phonenumbers  # lazily: see PhoneValidator
    from phonenumbers import NumberParseException

    try:
        return phonenumbers.is_valid_number(phonenumbers.parse("+" + text[2:].lstrip(" "), None))
    except NumberParseException:
        return False
