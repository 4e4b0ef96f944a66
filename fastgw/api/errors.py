"""One error hierarchy for the gateway's API: every error knows its status, its OpenAI envelope and its origin.

The origin says who failed — the upstream, a policy, the client or the gateway
itself — so that only upstream failures are retried on another target and count
against a circuit breaker. `render` turns any `proto` HTTP error into the envelope
the OpenAI SDKs parse: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import os

import orjson

from fastgw.proto.errors import HttpError, ProtocolError

__all__ = ["GatewayError", "Origin", "envelope", "anthropic_envelope", "anthropic_type", "ANTHROPIC_TYPES", "ANTHROPIC_PATH",
           "render", "ModelNotFound", "RequestTooExpensive",
           "UpstreamError",
           "UpstreamConnectError", "UpstreamTimeout", "UpstreamDisconnected", "UpstreamProtocolError",
           "UpstreamAuthError", "InvalidRequest", "from_transport"]


class Origin:
    """Who an error comes from."""

    UPSTREAM = "upstream"
    POLICY = "policy"
    CLIENT = "client"
    GATEWAY = "gateway"


def envelope(message: str, type_: str, code: str | None = None, param: str | None = None,
             extra: dict | None = None) -> bytes:
    """Render an OpenAI-style error envelope as JSON bytes (`extra` adds fields such as the policy name)."""
    err = {"message": message, "type": type_, "param": param, "code": code}
    if extra:
        err.update(extra)
    return orjson.dumps({"error": err})


#: Anthropic's error types by HTTP status (docs.anthropic.com/en/api/errors): the only types its SDKs know. Other
#: statuses take the type of their class (`anthropic_type`).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                   503: "overloaded_error", 529: "overloaded_error"}


def anthropic_type(status: int) -> str:
    """The Anthropic error type for an error of this HTTP status (a policy's 409 is an invalid request, an
    upstream's 502 or 504 an api_error)."""
    known = ANTHROPIC_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_envelope(message: str, type_: str) -> bytes:
    """Anthropic's error envelope, `{"type": "error", "error": {"type", "message"}}`, for `/v1/messages`."""
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


class GatewayError(HttpError):
    """An error that becomes an HTTP answer (or an in-stream error event once streaming)."""

    type: str = "server_error"
    #: Retrying the same request cannot help: tells SDKs not to retry (x-should-retry: false).
    no_retry: bool = False
    origin: str = Origin.GATEWAY
    #: "openai" or "anthropic": the envelope `body()` renders (`/v1/messages` clients parse Anthropic's).
    style: str = "openai"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        close: bool | None = None,
        no_retry: bool | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        extra: dict | None = None,
        origin: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, close=close, headers=headers)
        if type is not None:
            self.type = type
        if no_retry is not None:
            self.no_retry = no_retry
        if origin is not None:
            self.origin = origin
        self.param = param
        self.extra = extra

    def body(self) -> bytes:
        if self.style == "anthropic":
            return anthropic_envelope(self.message, anthropic_type(self.status))
        return envelope(self.message, self.type, self.code, self.param, self.extra)

    def anthropic(self) -> GatewayError:
        """This error, rendered in Anthropic's envelope (what a `/v1/messages` client parses)."""
        self.style = "anthropic"
        return self


class InvalidRequest(GatewayError):
    """The client's request cannot be served as written: 400, never worth retrying."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    no_retry = True
    origin = Origin.CLIENT


class ModelNotFound(GatewayError):
    """No model of that name on this gateway, or none the caller may use: 404."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    no_retry = True
    origin = Origin.CLIENT


class RequestTooExpensive(GatewayError):
    """The policies spent more CPU on one request than `server.max_request_cpu` allows: 413 before the
    upstream is called, an in-stream error after. Not worth retrying as it is."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_expensive"
    no_retry = True
    origin = Origin.CLIENT

    def __init__(self, budget: float) -> None:
        super().__init__(f"This request needs more than the {budget:g} s of policy CPU time a request may use "
                         f"(server.max_request_cpu); send less text or split it into several requests.")
        self.budget = budget


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    origin = Origin.UPSTREAM


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamDisconnected(UpstreamError):
    code = "upstream_disconnected"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamAuthError(UpstreamError):
    """The upstream refused the operator's credentials (HTTP 401/403): the client's request was fine, the gateway's
    key is not, so it is a 502 and never the client's own-looking 401 (whose text would quote the key)."""

    code = "upstream_auth_error"
    no_retry = True

    def __init__(self, target: str, status: int) -> None:
        super().__init__(f"target {target!r} refused the gateway's credentials (upstream HTTP {status}); "
                         "the operator must fix the target's key")


def _connect_reason(exc: BaseException) -> str:
    """Why a connect failed, without the address: `proto.client` words its errors with host:port, which is the
    operator's topology (and OSError.strerror from asyncio's connect quotes the address too)."""
    import socket
    import ssl

    cause = exc.__context__  # ConnectFailed is raised `from None`: the original error is still its context
    if isinstance(cause, TimeoutError):
        return "connect timed out"
    if isinstance(cause, ssl.SSLError):
        reason = getattr(cause, "reason", None)  # e.g. CERTIFICATE_VERIFY_FAILED; str(cause) may name the host
        return f"TLS handshake failed ({reason})" if reason else "TLS handshake failed"
    if isinstance(cause, socket.gaierror):
        return "cannot resolve its host name"
    if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno).lower()
    return "connect failed"


def from_transport(exc: BaseException, target: str | None = None) -> GatewayError:
    """The API error for a failure the upstream client reports (`proto.client.TransportError`), or any error.

    A connect failure names the target id (`target`), never its address."""
    from fastgw.proto import client

    if isinstance(exc, GatewayError):
        return exc
    message = str(exc)
    if isinstance(exc, client.ConnectFailed):
        who = f"target {target!r}" if target else "the upstream"
        return UpstreamConnectError(f"cannot connect to {who}: {_connect_reason(exc)}")
    if isinstance(exc, client.TransportTimeout):
        return UpstreamTimeout(message)
    if isinstance(exc, client.PeerClosed):
        return UpstreamDisconnected(message)
    if isinstance(exc, client.TransportError):
        return UpstreamProtocolError(message)
    return GatewayError("internal error", code="internal_error")


#: Requests under this path speak Anthropic's API (`/v1/messages`, `/v1/messages/count_tokens`): their errors are
#: in Anthropic's envelope.
ANTHROPIC_PATH = "/v1/messages"


def render(err: HttpError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of the HTTP answer for any error: the OpenAI envelope (Anthropic's for a request under
    `ANTHROPIC_PATH`), and `x-should-retry: false` when retrying cannot help (the Stainless-built SDKs read it)."""
    headers = [(b"content-type", b"application/json")]
    if isinstance(err, GatewayError):
        body = err.body()
        no_retry = err.no_retry
    else:
        if err.request is not None and err.request.path.startswith(ANTHROPIC_PATH):
            body = anthropic_envelope(err.message, anthropic_type(err.status))  # what its SDK parses
        else:
            type_ = "invalid_request_error" if err.status < 500 else "server_error"
            body = envelope(err.message, type_, err.code)
        no_retry = isinstance(err, ProtocolError)
    if no_retry:
        headers.append((b"x-should-retry", b"false"))
    headers.extend(err.headers)
    return headers, body
