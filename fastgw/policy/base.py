"""What every policy shares: the per-request context it reads and annotates, its decisions, its errors.

A request carries one `RequestContext` through the chain. Input policies may
refuse it (raise a `PolicyError` subclass) or change its body; output policies
see the answer; the audit logger records the context with every decision taken.
"""

from __future__ import annotations

from fastgw.api.errors import GatewayError, Origin
from fastgw.policy.context import RequestContext
from fastgw.policy.decision import Decision

__all__ = ["RequestContext", "Decision", "PolicyViolation", "PolicyFailure", "AuthError", "Forbidden"]


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
