"""Deterministic reply texts for the mock upstream: English-like prose, optionally with PII values in it.

`make_text("prose", n, seed=s)` is exactly `n` characters of sentences drawn
(seeded) from a fixed list of common lower-case English words: no digits, no
`@`, nothing any pii-detector pattern can match, so a redacting gateway must
forward it unchanged. `make_text("pii", n, every=200)` is the same prose with
one PII value per `every` characters, inserted at the first word boundary
after the middle of each `every`-character block, cycling through
`PII_VALUES`. Values sit mid-sentence between spaces, never at the very end of
the text, so each is complete and delimited as a detector expects.
"""

from __future__ import annotations

import random

__all__ = ["WORDS", "PII_VALUES", "make_text", "expected_redaction"]

WORDS: tuple[str, ...] = tuple("""
the of and to in is it that was for on are with as his they be at one have this from or had by word but
what some we can out other were all there when up use your how said an each she which do their time if will
way about many then them write would like so these her long make thing see him two has look more day could go
come did number sound no most people my over know water than call first who may down side been now find any
new work part take get place made live where after back little only round man year came show every good me
give our under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end put home read
hand port large spell add even land here must big high such follow act why ask men change went light kind off
need house picture try us again animal point mother world near build self earth father head stand own page
should country found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left late run while press
close night real life few north open seem together next white children begin got walk example ease paper group
always music those both mark often letter until mile river car feet care second book carry took science eat
room friend began idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain
girl usual young ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half rock order fire
south problem piece told knew pass since top whole king space heard best hour better true during hundred five
remember step early hold west ground interest reach fast verb sing listen six table travel less morning ten
simple several vowel toward war lay against pattern slow center love person money serve appear road map rain
rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan
figure star box noun field rest correct able pound done beauty drive stood contain front teach week final gave
green oh quick develop ocean warm free minute strong special mind behind clear tail produce fact street inch
""".split())

#: (entity the gateway reports, value): one of each kind the issue lists, all valid for their validators.
PII_VALUES: tuple[tuple[str, str], ...] = (
    ("EMAIL", "jane.doe@example.com"),
    ("US_SSN", "123-45-6789"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    ("PHONE", "+44 20 7946 0958"),
    ("IP_ADDRESS", "192.168.10.20"),
    ("IBAN", "GB82 WEST 1234 5698 7654 32"),
    ("AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE"),
)


def make_text(kind: str, length: int, every: int = 200, seed: int = 1) -> tuple[str, list[tuple[int, str, str]]]:
    """(text of exactly `length` characters, [(offset, entity, value)] of the PII values in it)."""
    if kind not in ("prose", "pii"):
        raise ValueError(f"unknown text kind {kind!r}")
    if kind == "pii" and every <= 0:
        raise ValueError("every must be positive")
    rng = random.Random(seed)
    parts: list[str] = []
    n = 0
    values: list[tuple[int, str, str]] = []
    # Value k goes at the first word boundary after (k + 1/2) * every: one per `every`-character block, near
    # its middle, so that even a text of a single block (50 events x 4 characters, every=200) carries one.
    next_value = every // 2 if kind == "pii" else None
    k = 0
    while n < length:
        words = rng.randint(6, 16)
        for w in range(words):
            token = rng.choice(WORDS)
            if w == 0:
                token = token.capitalize()
            # A value goes mid-sentence (never first or last word), once the mark is passed,
            # and only if it ends well inside the text (so the truncation never cuts one).
            if next_value is not None and 0 < w < words - 1 and n >= next_value:
                entity, value = PII_VALUES[k % len(PII_VALUES)]
                if n + len(value) + 2 <= length:
                    values.append((n, entity, value))
                    token = value
                    k += 1
                next_value += every
                while next_value <= n:
                    next_value += every
            is_value = bool(values) and values[-1][0] == n
            comma = rng.random() < 0.08  # drawn for every word, so a value does not shift the prose after it
            sep = ". " if w == words - 1 else (" " if is_value or not comma else ", ")
            parts.append(token + sep)
            n += len(token) + len(sep)
    return "".join(parts)[:length], values


def expected_redaction(text: str, values: list[tuple[int, str, str]], template: str = "[REDACTED:{entity}]") -> str:
    """`text` with each listed value replaced as the pii-detector's default replacement does."""
    out, pos = [], 0
    for off, entity, value in sorted(values):
        out.append(text[pos:off])
        out.append(template.replace("{entity}", entity))
        pos = off + len(value)
    out.append(text[pos:])
    return "".join(out)
