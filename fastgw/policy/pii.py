"""The `pii-detector` policy: the built-in PII library (plus custom patterns) as a text-scanning policy.

Also its settings (`PiiDetector`, `CustomPattern`) and their checks beyond types (`problems`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from fastgw.policy.settings import OnError, Phase, Problems, Settings
from fastgw.policy.textscan import ScanPolicy
from fastgw.scan.database import PatternError, ScanDB, compile_patterns
from fastgw.scan.patterns import ENTITIES, custom_pattern, patterns_for
from fastgw.scan.phones import unknown_regions

__all__ = ["PiiPolicy", "PiiDetector", "CustomPattern", "STREAM_BLOCK_MESSAGE", "MAX_CUSTOM_WIDTH", "problems"]

STREAM_BLOCK_MESSAGE = "Stream terminated: PII detected"

#: The widest custom pattern a config may declare: the holdback per stream and choice grows with it
#: (64 KiB, the size of a large request header block in nginx/Envoy, is far beyond any real identifier).
MAX_CUSTOM_WIDTH = 65536

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class CustomPattern(Settings):
    name: str
    regex: str
    #: Longest match in bytes (bounds memory and the streaming holdback); scan.patterns.DEFAULT_CUSTOM_WIDTH if unset.
    max_width: Annotated[int, msgspec.Meta(ge=1, le=MAX_CUSTOM_WIDTH)] | None = None


class PiiDetector(Settings):
    action: Literal["redact", "block", "observe"] = "redact"
    streaming_mode: Literal["realtime", "buffered"] = "realtime"
    #: Built-in entities to detect; all of them when not set.
    entities: list[str] | None = None
    #: "{entity}" is replaced by the entity name; a single character masks the span instead.
    replacement: str = "[REDACTED:{entity}]"
    apply_to: list[Phase] = msgspec.field(default_factory=lambda: ["input", "output"])
    custom: list[CustomPattern] = msgspec.field(default_factory=list)
    on_error: OnError = "block"
    #: ISO 3166 regions national-format phone numbers may come from (international `+CC` numbers are judged
    #: for their own country whatever this says). Default `scan.phones.DEFAULT_REGIONS`: North America, the
    #: large EU economies and neighbours, Iberia and Latin America, UK and Commonwealth, East and South Asia
    #: (23 regions). Each region added lets more digit runs pass as "valid somewhere": list only the regions
    #: your traffic writes numbers for.
    regions: list[str] | None = None
    #: Logprobs tokens (and their alternatives) in answers: "redact" them as the text they spell, or "drop"
    #: the logprobs from every answer and event that carries them.
    logprobs: Literal["redact", "drop"] = "redact"


def problems(pii: PiiDetector) -> Problems:
    """What the types cannot say: unknown entities, an empty replacement, custom names and regexes Hyperscan refuses."""
    errs: Problems = []
    for i, e in enumerate(pii.entities or []):
        if e not in ENTITIES:
            errs.append((f"entities[{i}]", f"unknown entity {e!r} (known: {', '.join(ENTITIES)})"))
    if not pii.replacement:
        errs.append(("replacement", "expected a non-empty string"))
    if pii.regions is not None:
        if not pii.regions:
            errs.append(("regions", "expected at least one region (omit it for the default set)"))
        for r in unknown_regions(pii.regions):
            errs.append((f"regions[{pii.regions.index(r)}]", f"unknown phone region {r!r} (ISO 3166 alpha-2, upper case)"))
    names: set[str] = set(ENTITIES)
    for i, c in enumerate(pii.custom):
        if not _IDENT.fullmatch(c.name) or c.name in names:
            errs.append((f"custom[{i}].name", f"expected a new identifier (letters, digits, _), got {c.name!r}"))
        names.add(c.name)
        try:
            compile_patterns([custom_pattern(c.name, c.regex, c.max_width)])
        except PatternError as e:
            errs.append((f"custom[{i}].regex", str(e)))
    return errs


class PiiPolicy(ScanPolicy):
    """Compiled pii-detector settings."""

    def __init__(self, settings: PiiDetector) -> None:
        patterns = patterns_for(settings.entities if settings.entities is not None else ENTITIES, regions=settings.regions)
        patterns += [custom_pattern(c.name, c.regex, c.max_width) for c in settings.custom]
        super().__init__("pii-detector", "PII", ScanDB(patterns), settings.action, settings.streaming_mode,
                         settings.apply_to, settings.replacement, settings.on_error)
        self.logprobs = settings.logprobs
