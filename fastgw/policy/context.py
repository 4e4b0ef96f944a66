"""The per-request context every policy reads and annotates (`fastgw.policy.base` re-exports it)."""

from __future__ import annotations

import time
from typing import Final

from fastgw.policy.decision import Decision

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call

__all__ = ["RequestContext"]


class RequestContext:
    """Everything the chain knows about one request. Compiled (a native class): the compiled request path reads
    and writes its fields dozens of times a request, each a C field access here where a Python class's slot is a
    generic attribute lookup; and its constructor is C."""

    __slots__ = ("request_id", "method", "path", "endpoint", "headers", "body", "model", "stream", "principal",
                 "roles", "client", "target", "decisions", "status", "usage", "texts", "finish", "started",
                 "first_byte", "error", "events", "trace")

    def __init__(self, request_id: str, method: str, path: str, headers: list[tuple[bytes, bytes]],
                 client: str = "") -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        #: Path without the /v1 prefix (e.g. "chat/completions"), set once routed.
        self.endpoint = ""
        self.headers = headers
        self.body: dict | None = None
        self.model: str | None = None
        self.stream = False
        #: Authenticated caller (rbac key name); None when the gateway is open.
        self.principal: str | None = None
        self.roles: tuple[str, ...] = ()
        self.client = client
        self.target: str | None = None
        self.decisions: list[Decision] = []
        self.status = 0
        self.usage: dict | None = None
        #: The answer as the client received it (after redaction), per choice index.
        self.texts: dict[int, str] = {}
        self.finish: dict[int, str] = {}
        self.started = _monotonic()
        self.first_byte: float | None = None
        self.error: str | None = None
        #: Streamed events relayed (for a usage estimate when the upstream reports none).
        self.events = 0
        #: The request's trace notes while telemetry is on (`fastgw.telemetry_sdk.Trace`); None otherwise.
        self.trace: object = None

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def decide(self, policy: str, phase: str, outcome: str, **detail: object) -> None:
        self.decisions.append(Decision(policy, phase, outcome, detail))  # `**detail` is a fresh dict already
