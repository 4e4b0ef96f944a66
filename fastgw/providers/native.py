"""Native pass-through endpoints: the Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`) to
`anthropic` targets, sent as the client wrote it (model rewritten if aliased), with the target's own key and only the API headers it allows."""

from __future__ import annotations

from fastgw.providers.anthropic import ANTHROPIC_VERSION
from fastgw.providers.base import TargetRuntime, UpstreamRequest, encode_json, json_post
from fastgw.providers.scope import anthropic_headers

__all__ = ["messages_request"]


def messages_request(target: TargetRuntime, body: dict, stream: bool, client_headers: list[tuple[bytes, bytes]],
                     path: str = "/v1/messages") -> UpstreamRequest:
    """POST {base_url}/v1/messages (or `path`: /v1/messages/count_tokens) with x-api-key. The client's `anthropic-version`/`anthropic-beta` go upstream
    only as the target allows (`scope.anthropic_headers`); its x-api-key / Authorization never do."""
    # The body the policies judged, encoded once (never the client's bytes; see OpenAIAdapter.build_request).
    raw = encode_json(body if body.get("model") == target.model else {**body, "model": target.model}, body)
    auth = anthropic_headers(target, client_headers, ANTHROPIC_VERSION)
    if target.api_key:
        auth.append((b"x-api-key", target.api_key.encode()))
    return json_post(target, path, raw, stream, auth)
