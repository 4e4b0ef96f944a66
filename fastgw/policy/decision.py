"""A policy's verdict on one request (`fastgw.policy.base` re-exports it), apart from the request context because
a Struct class cannot be built inside a module mypyc compiles (`fastgw.policy.context` is compiled)."""

from __future__ import annotations

import msgspec

__all__ = ["Decision"]


class Decision(msgspec.Struct, frozen=True, gc=False):
    """One policy's verdict on one request, as the audit log records it (never matched values)."""

    policy: str
    phase: str  # "input" | "output"
    outcome: str  # "allow" | "block" | "redact" | "observe" | "deny" | "error"
    detail: dict = msgspec.field(default_factory=dict)
