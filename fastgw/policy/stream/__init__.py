"""Output policies on a streamed answer: scan each event's text once per policy, hold only what could still be
a match, release whole events, re-encode only those a policy changed.

`core` is the hold/release engine every dialect shares (text streams with one
Hyperscan stream per scanning policy, safe offsets, the hold queue, redact, block);
`chat`, `responses` and `messages` are one class per dialect (the last two over
`typed`, for events that are typed JSON objects), saying where an event's text is
and how a changed event is written back. An event is released when
every text segment it carries lies before its stream's safe offset (the smallest
over the policies that can change text); events leave in upstream order, untouched
ones as the exact upstream bytes. A buffered policy in the chain holds the whole
answer; buffered checks (quality) then judge it before release.
"""

from __future__ import annotations

from collections.abc import Callable

from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.stream.chat import ChatStreamPolicy
from fastgw.policy.stream.core import StreamBlocked, StreamPolicy, TextStream
from fastgw.policy.stream.records import Held, Segment, TextKey
from fastgw.policy.stream.messages import MessagesStreamPolicy
from fastgw.policy.stream.responses import ResponsesStreamPolicy
from fastgw.policy.textscan import ScanPolicy

__all__ = ["StreamPolicy", "StreamBlocked", "ChatStreamPolicy", "ResponsesStreamPolicy", "MessagesStreamPolicy",
           "POLICIES", "open_stream", "TextKey", "TextStream", "Segment", "Held"]

#: The output stream policy class of each dialect.
POLICIES: dict[str, type[StreamPolicy]] = {p.dialect: p for p in (ChatStreamPolicy, ResponsesStreamPolicy,
                                                                    MessagesStreamPolicy)}


def open_stream(policies: list[ScanPolicy], findings: Findings, ctx: RequestContext, buffered: bool = False,
                judge: Callable[[RequestContext], None] | None = None, dialect: str = "chat") -> StreamPolicy:
    """The output engine for one streamed answer in this dialect ("chat", "responses", "messages")."""
    try:
        cls = POLICIES[dialect]
    except KeyError:
        raise ValueError(f"unknown stream dialect {dialect!r}") from None
    return cls(policies, findings, ctx, buffered=buffered, judge=judge)
