"""Native pass-through endpoints: the Anthropic Messages API (`/v1/messages`) to `anthropic` targets, sent as the
client wrote it (model rewritten if aliased), with the target's own key."""

from __future__ import annotations

import orjson

from fastgw.providers.base import TargetRuntime, UpstreamRequest, host_header, split_base_url

__all__ = ["messages_request", "ANTHROPIC_VERSION"]

ANTHROPIC_VERSION = b"2023-06-01"


def messages_request(target: TargetRuntime, body: dict, raw: bytes | None, stream: bool,
                     client_headers: list[tuple[bytes, bytes]]) -> UpstreamRequest:
    """POST {base_url}/v1/messages with x-api-key; the client's anthropic-version/-beta headers are kept
    (they select API behaviour), its x-api-key / Authorization never are."""
    assert target.base_url is not None
    scheme, host, port, prefix = split_base_url(target.base_url)
    if raw is None or body.get("model") != target.model:
        raw = orjson.dumps({**body, "model": target.model})
    version = ANTHROPIC_VERSION
    beta: bytes | None = None
    for n, v in client_headers:
        if n == b"anthropic-version":
            version = v
        elif n == b"anthropic-beta":
            beta = v
    headers = [(b"host", host_header(scheme, host, port)), (b"content-type", b"application/json"),
               (b"accept", b"text/event-stream" if stream else b"application/json"),
               (b"anthropic-version", version)]
    if beta is not None:
        headers.append((b"anthropic-beta", beta))
    if target.api_key:
        headers.append((b"x-api-key", target.api_key.encode()))
    headers.extend(target.extra_headers)
    return UpstreamRequest(scheme, host, port, "POST", f"{prefix}/v1/messages", headers, raw)
