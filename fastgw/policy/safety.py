"""The `safety-filter` policy: phrases and patterns from config lists and files, matched with Hyperscan
stream mode and the same zero-leak holdback as PII; and its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from fastgw.policy.settings import OnError, Phase, Problems, Settings
from fastgw.policy.textscan import ScanPolicy
from fastgw.scan.database import Pattern, PatternError, ScanDB, compile_patterns
from fastgw.scan.patterns import DEFAULT_CUSTOM_WIDTH
from fastgw.scan.terms import term_expression

__all__ = ["SafetyPolicy", "SafetyFilter", "load_terms", "term_expression", "problems"]


class SafetyFilter(Settings):
    action: Literal["block", "redact", "observe"] = "block"
    streaming_mode: Literal["realtime", "buffered"] = "realtime"
    #: Phrases matched literally (whitespace inside a phrase matches any run of whitespace).
    terms: list[str] = msgspec.field(default_factory=list)
    #: Hyperscan regular expressions.
    regex: list[str] = msgspec.field(default_factory=list)
    #: Files with one phrase per line (# comments and blank lines ignored).
    files: list[str] = msgspec.field(default_factory=list)
    case_insensitive: bool = True
    #: Match with Unicode semantics (UTF-8, Unicode case folding and word classes).
    unicode: bool = False
    #: Longest match in bytes for `regex` entries (bounds the streaming holdback).
    max_width: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_CUSTOM_WIDTH
    replacement: str = "[FILTERED]"
    apply_to: list[Phase] = msgspec.field(default_factory=lambda: ["input", "output"])
    on_error: OnError = "block"


def problems(sf: SafetyFilter) -> Problems:
    """Missing phrase files, regexes Hyperscan refuses, and a filter with nothing to match."""
    errs: Problems = []
    for i, f in enumerate(sf.files):
        if not Path(f).is_file():
            errs.append((f"files[{i}]", f"no such file {f!r}"))
    for i, rx in enumerate(sf.regex):
        try:
            compile_patterns([_regex_pattern(i, rx, sf)])
        except PatternError as e:
            errs.append((f"regex[{i}]", str(e)))
    if not (sf.terms or sf.regex or sf.files):
        errs.append(("", "expected at least one of terms, regex or files"))
    return errs


def _regex_pattern(i: int, rx: str, sf: SafetyFilter) -> Pattern:
    return Pattern(f"regex{i}", "SAFETY_REGEX", rx.encode(), sf.max_width, caseless=sf.case_insensitive,
                   utf8=sf.unicode)


def load_terms(path: str) -> list[str]:
    """Phrases from a file: one per line; blank lines and lines starting with # are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


class SafetyPolicy(ScanPolicy):
    """Compiled safety-filter settings."""

    def __init__(self, settings: SafetyFilter) -> None:
        terms = list(settings.terms)
        for f in settings.files:
            terms += load_terms(f)
        patterns = []
        for i, t in enumerate(dict.fromkeys(terms)):  # de-duplicated, order kept
            # Width: the phrase with each separator allowed to grow to a few whitespace bytes.
            width = len(t.encode()) + 8 * (len(t.split()) - 1) + (len(t.encode()) if settings.unicode else 0)
            patterns.append(Pattern(f"term{i}", "SAFETY_TERM", term_expression(t), max(width, 1),
                                    caseless=settings.case_insensitive, utf8=settings.unicode, term=t))
        patterns += [_regex_pattern(i, rx, settings) for i, rx in enumerate(settings.regex)]
        if not patterns:
            raise ValueError("safety-filter has no terms, regex or files")
        super().__init__("safety-filter", "unsafe content", ScanDB(patterns), settings.action,
                         settings.streaming_mode, settings.apply_to, settings.replacement, settings.on_error)
