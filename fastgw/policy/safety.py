"""The `safety-filter` policy: phrases and patterns from config lists and files, matched with Hyperscan
stream mode and the same zero-leak holdback as PII."""

from __future__ import annotations

import re
from pathlib import Path

from fastgw.config import SafetyFilter
from fastgw.policy.textscan import ScanPolicy
from fastgw.scan.database import Pattern, ScanDB

__all__ = ["SafetyPolicy", "load_terms", "term_expression"]


def load_terms(path: str) -> list[str]:
    """Phrases from a file: one per line; blank lines and lines starting with # are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


_ASCII_WORD = re.compile(r"[A-Za-z0-9_]")


def term_expression(term: str) -> bytes:
    """A phrase as a Hyperscan expression: literal, any whitespace run between words, whole words at the ends.

    Word boundaries are ASCII (Hyperscan has no Unicode \b), so an end that is a non-ASCII letter is not
    bounded: "école" also matches inside "préécole".
    """
    words = [re.escape(w) for w in term.split()]
    expr = r"\s+".join(words)
    t = term.strip()
    if _ASCII_WORD.match(t[:1]):
        expr = r"\b" + expr
    if _ASCII_WORD.match(t[-1:]):
        expr = expr + r"\b"
    return expr.encode()


class SafetyPolicy(ScanPolicy):
    """Compiled safety-filter settings."""

    name = "safety-filter"
    what = "unsafe content"

    def __init__(self, settings: SafetyFilter) -> None:
        terms = list(settings.terms)
        for f in settings.files:
            terms += load_terms(f)
        patterns = []
        for i, t in enumerate(dict.fromkeys(terms)):  # de-duplicated, order kept
            # Width: the phrase with each separator allowed to grow to a few whitespace bytes.
            width = len(t.encode()) + 8 * (len(t.split()) - 1) + (len(t.encode()) if settings.unicode else 0)
            patterns.append(Pattern(f"term{i}", "SAFETY_TERM", term_expression(t), max(width, 1),
                                    caseless=settings.case_insensitive, utf8=settings.unicode))
        for i, rx in enumerate(settings.regex):
            patterns.append(Pattern(f"regex{i}", "SAFETY_REGEX", rx.encode(), settings.max_width,
                                    caseless=settings.case_insensitive, utf8=settings.unicode))
        if not patterns:
            raise ValueError("safety-filter has no terms, regex or files")
        super().__init__(ScanDB(patterns), settings.action, settings.streaming_mode, settings.apply_to,
                         settings.replacement, settings.on_error)
