"""The `pii-detector` policy: the built-in PII library (plus custom patterns) as a text-scanning policy."""

from __future__ import annotations

from fastgw.config import PiiDetector
from fastgw.policy.textscan import ScanPolicy
from fastgw.scan.database import ScanDB
from fastgw.scan.patterns import ENTITIES, custom_pattern, patterns_for

__all__ = ["PiiPolicy", "STREAM_BLOCK_MESSAGE"]

STREAM_BLOCK_MESSAGE = "Stream terminated: PII detected"


class PiiPolicy(ScanPolicy):
    """Compiled pii-detector settings."""

    name = "pii-detector"
    what = "PII"

    def __init__(self, settings: PiiDetector) -> None:
        patterns = patterns_for(settings.entities if settings.entities is not None else ENTITIES)
        patterns += [custom_pattern(c.name, c.regex, c.max_width) for c in settings.custom]
        super().__init__(ScanDB(patterns), settings.action, settings.streaming_mode, settings.apply_to,
                         settings.replacement, settings.on_error)
