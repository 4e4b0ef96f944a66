"""The built-in PII and secret detectors, and the constructor for config-defined ones.

Every expression is written for the engine in `database`/`scanner`: Hyperscan
reports, per end offset, the leftmost start; candidates are checked against
`max_width` and the validator; overlaps resolve leftmost-longest. So expressions
start at a word boundary (or a literal such as `+`, `(`, `-----`), end at one
where the value does, and leave checksums and ranges to `validators`. Digit-ending
values (SSN, NANP phone, card, IBAN, IPv4) end with a lookahead instead
(`Pattern.not_followed_by`): no digit may follow (for IPv4 not '.' and a digit
either), so a prefix of a longer digit or dotted run is never reported, yet a
value glued to the letter after it ('379-57-2229Ground') is found. Alphabets stay tight (no `.`, no
lower case where the value has none) because the stream holdback keeps the
trailing run of alphabet bytes.

Patterns see the scanner's canonical view (`fastgw.scan.fold`): full-width forms, Unicode dashes and
spaces arrive as ASCII, zero-width characters and soft hyphens are gone, so one ASCII layout covers them.

Boundaries are ASCII: a value glued to a letter or digit before it ('ref4111...', 'x123-45-6789')
is not found by the digit patterns, on purpose: otherwise every alphanumeric id would be
Luhn- or range-tested. Non-ASCII
neighbours (accents, CJK, emoji) are non-word bytes, so values touching them are found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from fastgw.scan import validators as v
from fastgw.scan.database import DIGITS, NO_HOLD, NOT_DIGIT, NOT_DOTTED, Pattern, PatternError
from fastgw.scan.phones import (CANDIDATE, CANDIDATE_GLUED, CANDIDATE_LOOSE, CANDIDATE_WIDTH, DEFAULT_REGIONS, VETO,
                                PhoneValidator, phone_label)

__all__ = ["BUILTIN", "ENTITIES", "patterns_for", "custom_pattern", "DEFAULT_CUSTOM_WIDTH", "PEM_WIDTH"]

#: Entity names, in the order config and docs list them.
ENTITIES: tuple[str, ...] = (
    "EMAIL", "US_SSN", "CREDIT_CARD", "PHONE", "IP_ADDRESS", "IBAN", "AWS_ACCESS_KEY", "API_KEY", "JWT",
    "PRIVATE_KEY",
)

#: Width of a config-defined pattern when none is given: bounds its holdback like the secret keys'
#: (precedent: gitleaks rules rarely exceed a couple of hundred bytes).
DEFAULT_CUSTOM_WIDTH = 256

# --- building blocks ---------------------------------------------------------------------------

_HEX = rb"[0-9A-Fa-f]{1,4}"
_V4 = rb"\d{1,3}(?:\.\d{1,3}){3}"

_IPV6 = b"|".join((
    rb"\b" + _HEX + rb"(?::" + _HEX + rb"){7}\b",                                  # 8 groups, uncompressed
    rb"(?:\b" + _HEX + rb"(?::" + _HEX + rb"){0,6})?::(?:" + _HEX + rb"(?::" + _HEX + rb"){0,6}\b)?",  # '::'
    rb"\b" + _HEX + rb"(?::" + _HEX + rb"){5}:" + _V4 + rb"\b",                    # 6 groups + dotted quad
    rb"(?:\b" + _HEX + rb"(?::" + _HEX + rb"){0,4})?::(?:" + _HEX + rb":){0,5}" + _V4 + rb"\b",
))
# What every form above has (`Pattern.prefilter`): '::', or six groups in a row (the two full forms).
_IPV6_AROUND = rb"::|" + _HEX + rb"(?::" + _HEX + rb"){5}"

# One separator throughout a number (mixed ones are not a card layout): space, dash or dot; a number wrapped
# across lines (a narrow table cell, a reflowed paragraph) may mix spaces and line breaks. NBSP, thin space and
# ZWJ arrive folded to a space or nothing.
_CARD_SEPS = (rb" ", rb"-", rb"\.", rb"(?: |\r?\n)")
_CARD = b"|".join((rb"\d{13,19}",) + tuple(                # contiguous
    alt
    for sep in _CARD_SEPS
    for alt in (
        rb"\d{4}(?:" + sep + rb"\d{4}){2}" + sep + rb"(?:\d{1,4}|\d{4}" + sep + rb"\d{1,3})",  # 4-4-4-(1..4)[-(1..3)]
        rb"\d{4}" + sep + rb"\d{6}" + sep + rb"\d{4,5}",  # Amex 4-6-5, Diners 4-6-4
    )))

# Exchange and line number. The numbering plan starts exchanges with 2-9, but the numbers people write
# as examples and test data ("555-123-4567") do not: separators already make the form strict, so any digit.
_NANP_TAIL = rb"\d{3}[ .-]\d{4}"  # then no digit (not_followed_by)

# A 2-byte UTF-8 letter (U+00C0-U+04FF: Latin, Greek, Cyrillic) in an e-mail local part.
_U2 = rb"[\xc3-\xd3][\x80-\xbf]"
# What every address has (`Pattern.prefilter`): a local-part byte (the last of `_U2`'s included), '@', a domain
# byte. Spelled out as four alternatives: Hyperscan finds those by the '@' literal, where the same set written as
# two classes around it walked every byte of prose again (measured: bench/RESULTS.md).
_EMAIL_AROUND = rb"[\w.%+-]@[A-Za-z0-9-]|[\w.%+-]@[\x80-\xff]|[\x80-\xbf]@[A-Za-z0-9-]|[\x80-\xbf]@[\x80-\xff]"

_PEM_LABEL = rb"(?:(?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY|PGP PRIVATE KEY BLOCK)"
#: Bound on a held private-key block (see PRIVATE_KEY).
PEM_WIDTH = 16384

# The validator of the built-in PHONE pattern (DEFAULT_REGIONS); patterns_for(regions=...) makes others. Loaded
# when patterns_for hands it out (in the master, before fork) or at its first judgement, not at import: every
# worker imports these patterns, and libphonenumber is ~1.5 MB of a worker that never judges a phone (issue 18).
_PHONE = PhoneValidator(DEFAULT_REGIONS, load=False)


def _not_vetoed(value: bytes, before: bytes, table: bytes = b"") -> bool:
    """A NANP-layout number is a phone unless a label says otherwise ('Order #: 455 355 0519', an Order column)."""
    return phone_label(before, table) != VETO


# --- the detectors -------------------------------------------------------------------------------

BUILTIN: tuple[Pattern, ...] = (
    # RFC 5321 4.5.3.1: a path is at most 256 octets with '<>', so an address at most 254. No trailing
    # \b: the longest TLD wins anyway, and 'jo@example.com123' still yields the address. RFC 6531 (SMTPUTF8)
    # allows UTF-8 in both parts: the local part takes Latin, Greek and Cyrillic letters (2-byte UTF-8,
    # 'josé'); wider scripts only after the '@', where they cannot drag a neighbouring CJK word into the span
    # ('例え.jp', TLD 'рф'), and punycode labels ('xn--') anywhere in the domain.
    Pattern("EMAIL", "EMAIL",
            rb"(?:\b\w|" + _U2 + rb")(?:[\w.%+-]|" + _U2 + rb")*@(?:[A-Za-z0-9\x80-\xff-]+\.)+"
            rb"(?:[A-Za-z]{2,}|xn--[A-Za-z0-9-]+|[\x80-\xff]{4,})",
            254, v.email, prefilter=_EMAIL_AROUND),
    # Separated: dashes (Unicode dashes fold to '-'), spaces or dots, one kind per number.
    Pattern("US_SSN", "US_SSN", rb"\b\d{3}(?:-\d{2}-|\.\d{2}\.| \d{2} )\d{4}", 11, v.ssn,
            not_followed_by=NOT_DIGIT),
    # Bare nine digits only after an SSN word (validators.ssn_context).
    Pattern("US_SSN_BARE", "US_SSN", rb"\b\d{9}", 9, v.ssn, context_validator=v.ssn_context,
            not_followed_by=NOT_DIGIT),
    # ISO/IEC 7812: at most 19 digits; four separators (two bytes for CRLF) in the 4-4-4-4-3 layout.
    # A card next to another grouped number ('9441 5625 5571 1000 6573 51', a tracking number whose middle
    # groups pass Luhn) is still reported: telling the two apart would leak two cards written side by side.
    Pattern("CREDIT_CARD", "CREDIT_CARD", rb"\b(?:" + _CARD + rb")", 27, v.card, not_followed_by=NOT_DIGIT),
    # Candidates of every layout, confirmed by libphonenumber's rules (fastgw.scan.phones).
    # Hyperscan compiles the unbounded form (`loose`); libphonenumber's judgements are budgeted (`costly`).
    Pattern("PHONE", "PHONE", CANDIDATE, CANDIDATE_WIDTH, context_validator=_PHONE, table_context=True,
            loose=CANDIDATE_LOOSE, costly=True),
    # Glued to the word after it: the letter is matched, then cut off (`trailing`); the PHONE group's holdback
    # already holds the digits while the letter has not come.
    Pattern("PHONE_GLUED", "PHONE", CANDIDATE_GLUED, CANDIDATE_WIDTH + 1, context_validator=_PHONE,
            table_context=True, trailing=1, hold_from=NO_HOLD, costly=True),
    # NANP written in its own layout is a phone without libphonenumber's say: that layout is the evidence,
    # and it keeps the fictional 555 numbers of examples and test data (which libphonenumber calls invalid).
    # The area code starts with 2-9; '+1 (555) 123-4567' is the widest form (17).
    Pattern("PHONE_NANP", "PHONE",
            rb"(?:\+1[ .-]?|\b1[ .-])?\([2-9]\d{2}\)[ .-]?" + _NANP_TAIL
            + rb"|(?:\+1[ .-]?|\b1[ .-]|\b)[2-9]\d{2}[ .-]" + _NANP_TAIL,
            17, not_followed_by=NOT_DIGIT, context_validator=_not_vetoed, table_context=True),
    # Not the tail of a longer dotted run nor a labelled version (validators.ipv4_context), nor its front
    # (NOT_DOTTED: '1.2.3.4' of '1.2.3.4.5'; '10.0.0.1.' ending a sentence is still an address).
    Pattern("IPV4", "IP_ADDRESS", rb"\b\d{1,3}(?:\.\d{1,3}){3}", 15, v.ipv4, context_validator=v.ipv4_context,
            not_followed_by=NOT_DOTTED),
    # RFC 4291 2.2: 8 groups of 4 hex (39), or 6 groups and a dotted quad (45).
    Pattern("IPV6", "IP_ADDRESS", _IPV6, 45, v.ipv6, prefilter=_IPV6_AROUND),
    # ISO 13616: at most 34 characters; printed in groups of four, so 8 spaces.
    Pattern("IBAN", "IBAN",
            rb"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7} [A-Z0-9]{1,4})", 42, v.iban,
            not_followed_by=NOT_DIGIT),
    # Lower case, unspaced ('de89370400440532013000'): its alphabet has no space, so it shares the holdback
    # of words (e-mail, keys) instead of holding every lower-case word of prose.
    Pattern("IBAN_LOWER", "IBAN", rb"\b[a-z]{2}\d{2}[a-z0-9]{11,30}\b", 34, v.iban),
    # Lower case in groups ('gb16 lkbb 8661 5093 4659 29'): its alphabet (lower case, digits, space) is most of
    # prose, so its holdback starts only where a match could be in progress (`hold_from`): a word of two
    # letters and two digits and the groups after it, or a last word of at most two letters.
    Pattern("IBAN_LOWER_GROUPED", "IBAN", rb"\b[a-z]{2}\d{2}(?: [a-z0-9]{4}){2,7} [a-z0-9]{1,4}", 42, v.iban,
            not_followed_by=NOT_DIGIT, hold_from=v.iban_grouped_hold, hold_word=(DIGITS, 2)),
    # AWS IAM unique-id prefixes (IAM User Guide, "Unique identifier prefixes"): 4 + 16 characters.
    Pattern("AWS_ACCESS_KEY", "AWS_ACCESS_KEY",
            rb"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}\b", 20),
    # Secret keys: 256 bytes bound the holdback; a longer key is reported as its first 256 bytes.
    # (Bounded repeats such as {20,253} are too large for Hyperscan with SOM: widths are enforced by the engine.)
    Pattern("OPENAI_KEY", "API_KEY", rb"\bsk-[A-Za-z0-9_-]{20,}", 256, v.openai_key),
    Pattern("ANTHROPIC_KEY", "API_KEY", rb"\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{20,}", 256),
    # RFC 7519 compact JWS: header and payload are base64url JSON objects, so both start 'eyJ' ('{"').
    # 4096: the cookie size browsers guarantee (RFC 6265 6.1); bigger tokens are reported as their first 4096.
    # No leading \b: the header check is strict enough to find a token glued to a word ('\neyJ...' in JSON).
    Pattern("JWT", "JWT", rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", 4096, v.jwt),
    # RFC 7468 labels plus OpenSSH and OpenPGP armour: the whole block, BEGIN line to END line (a block
    # pattern: the scanner holds it from its header). 16 KiB: an 8192-bit RSA key in PKCS#1 PEM is ~6.3 KiB,
    # an OpenPGP secret key with subkeys ~7-12 KiB; a longer block is removed in 16 KiB pieces, never sent.
    Pattern("PRIVATE_KEY", "PRIVATE_KEY", rb"-----BEGIN " + _PEM_LABEL + rb"-----", PEM_WIDTH,
            block_until=rb"-----END " + _PEM_LABEL + rb"-----"),
)


def patterns_for(entities: Iterable[str], regions: Sequence[str] | None = None) -> list[Pattern]:
    """The built-in patterns of the given entities, in BUILTIN order; an unknown entity raises ValueError naming it.

    `regions` (ISO 3166 codes) are where national-format phone numbers may come from; DEFAULT_REGIONS if None.
    """
    wanted = set()
    for e in entities:
        if e not in ENTITIES:
            raise ValueError(f"unknown entity {e!r}; known: {', '.join(ENTITIES)}")
        wanted.add(e)
    out = [p for p in BUILTIN if p.entity in wanted]
    if regions is not None and tuple(regions) != DEFAULT_REGIONS:
        phone = PhoneValidator(regions)
        out = [dataclasses.replace(p, context_validator=phone) if p.context_validator is _PHONE else p for p in out]
    elif "PHONE" in wanted:
        _PHONE.load()
    return out


def custom_pattern(name: str, regex: str, max_width: int | None = None) -> Pattern:
    """A config-defined detector: entity = name, no validator; Hyperscan judges the regex when the database compiles."""
    width = DEFAULT_CUSTOM_WIDTH if max_width is None else max_width
    if not name:
        raise PatternError(name, "a custom pattern needs a name")
    if not regex:
        raise PatternError(name, "empty regex")
    if width <= 0:
        raise PatternError(name, f"max_width must be positive, got {width}")
    return Pattern(name, name, regex.encode(), width)
