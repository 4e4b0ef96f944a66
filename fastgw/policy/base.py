"""What every policy shares: the per-request context it reads and annotates, its decisions, its errors.

A request carries one `RequestContext` through the chain. Input policies may
refuse it (raise a `PolicyError` subclass) or change its body; output policies
see the answer; the audit logger records the context with every decision taken.
"""

from __future__ import annotations

import time

import msgspec

from fastgw.api.errors import GatewayError, Origin

__all__ = ["RequestContext", "Decision", "PolicyViolation", "PolicyFailure", "AuthError", "Forbidden"]


class Decision(msgspec.Struct, frozen=True, gc=False):
    """One policy's verdict on one request, as the audit log records it (never matched values)."""

    policy: str
    phase: str  # "input" | "output"
    outcome: str  # "allow" | "block" | "redact" | "observe" | "deny" | "error"
    detail: dict = msgspec.field(default_factory=dict)


class RequestContext:
    """Everything the chain knows about one request."""

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
        self.started = time.monotonic()
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
        self.decisions.append(Decision(policy, phase, outcome, dict(detail)))


class PolicyViolation(GatewayError):
    """A policy refused the request (input) or the answer (output): 409, never worth retrying."""

    status = 409
    type = "policy_violation"
    no_retry = True
    origin = Origin.POLICY

    def __init__(self, message: str, policy: str, where: str) -> None:
        super().__init__(message, code=f"{where}_blocked", extra={"policy": policy})
        self.policy = policy


class PolicyFailure(GatewayError):
    """A policy failed internally and fails closed: 500-class, names the policy."""

    status = 500
    type = "policy_error"
    code = "policy_failed"
    origin = Origin.POLICY

    def __init__(self, policy: str, message: str = "") -> None:
        super().__init__(f"policy {policy} failed{': ' + message if message else ''}; the request was refused",
                         extra={"policy": policy})
        self.policy = policy


class AuthError(GatewayError):
    """Missing or unknown gateway key: 401 (the SDKs raise AuthenticationError)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    no_retry = True
    origin = Origin.CLIENT

    def __init__(self, message: str) -> None:
        super().__init__(message, extra={"policy": "rbac"},
                         headers=[(b"www-authenticate", b'Bearer realm="fastgw"')])


class Forbidden(GatewayError):
    """A known key whose roles do not allow this request: 403 (PermissionDeniedError)."""

    status = 403
    type = "permission_error"
    no_retry = True
    origin = Origin.POLICY

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code=code, extra={"policy": "rbac"})
