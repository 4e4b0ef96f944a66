"""Native pass-through endpoints: the Anthropic Messages API (`/v1/messages`) to `anthropic` targets, sent as the
client wrote it (model rewritten if aliased), with the target's own key."""

from __future__ import annotations

import orjson

from fastgw.providers.anthropic import ANTHROPIC_VERSION
from fastgw.providers.base import TargetRuntime, UpstreamRequest, json_post

__all__ = ["messages_request"]


def messages_request(target: TargetRuntime, body: dict, stream: bool,
                     client_headers: list[tuple[bytes, bytes]]) -> UpstreamRequest:
    """POST {base_url}/v1/messages with x-api-key; the client's anthropic-version/-beta headers are kept
    (they select API behaviour), its x-api-key / Authorization never are."""
    # The body the policies judged, encoded once (never the client's bytes; see OpenAIAdapter.build_request).
    raw = orjson.dumps(body if body.get("model") == target.model else {**body, "model": target.model})
    version = ANTHROPIC_VERSION
    beta: bytes | None = None
    for n, v in client_headers:
        if n == b"anthropic-version":
            version = v
        elif n == b"anthropic-beta":
            beta = v
    auth = [(b"anthropic-version", version)]
    if beta is not None:
        auth.append((b"anthropic-beta", beta))
    if target.api_key:
        auth.append((b"x-api-key", target.api_key.encode()))
    return json_post(target, "/v1/messages", raw, stream, auth)
