"""Findings: what a policy detected, recorded without the matched value, through one small interface.

Later layers (metrics, audit) subscribe by adding a sink; nothing here ever sees
the detected text, only its entity, place and size.
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec

__all__ = ["Finding", "FindingsSink", "LogSink", "Findings"]

log = logging.getLogger("fastgw.findings")


class Finding(msgspec.Struct, frozen=True, gc=False):
    """One detection. Offsets are bytes of UTF-8 within the text stream named by `where` and `choice`."""

    policy: str
    entity: str
    where: str  # "input" | "output"
    start: int
    end: int
    action: str
    request_id: str = ""
    choice: int | None = None
    field: str = "content"


class FindingsSink(Protocol):
    def record(self, finding: Finding) -> None: ...


class LogSink:
    """Logs findings (entity, offsets, policy, request id; never the value) at INFO."""

    def record(self, finding: Finding) -> None:
        log.info("finding policy=%s action=%s entity=%s where=%s field=%s choice=%s bytes=%d-%d request=%s",
                 finding.policy, finding.action, finding.entity, finding.where, finding.field, finding.choice,
                 finding.start, finding.end, finding.request_id)


class Findings:
    """Fan-out to the registered sinks; a failing sink never breaks a request."""

    __slots__ = ("sinks", "count")

    def __init__(self, sinks: list[FindingsSink] | None = None) -> None:
        self.sinks: list[FindingsSink] = sinks if sinks is not None else [LogSink()]
        self.count = 0

    def record(self, finding: Finding) -> None:
        self.count += 1
        for s in self.sinks:
            try:
                s.record(finding)
            except Exception:  # noqa: BLE001
                log.exception("findings sink %r failed", s)
