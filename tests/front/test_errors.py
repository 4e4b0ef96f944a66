"""Errors on /v1/messages in Anthropic's envelope, also those the HTTP server itself answers (a body too large, a
framing error), which `render` sees with the request whose head was read."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from fastgw.api.errors import GatewayError, render
from fastgw.proto.errors import HttpError


def _rendered(err: HttpError, path: str | None) -> dict:
    err.request = SimpleNamespace(path=path) if path else None  # type: ignore[assignment]
    return orjson.loads(render(err)[1])


def test_server_errors_on_messages_paths_in_anthropic_envelope():
    too_big = HttpError("request body larger than 16 MiB", status=413, code="body_too_large")
    assert _rendered(too_big, "/v1/messages") == {"type": "error", "error": {
        "type": "request_too_large", "message": "request body larger than 16 MiB"}}
    assert _rendered(HttpError("slow", status=408), "/v1/messages/count_tokens")["error"]["type"] == \
        "invalid_request_error"
    assert _rendered(too_big, "/v1/chat/completions")["error"]["type"] == "invalid_request_error"
    assert "param" in _rendered(too_big, None)["error"]  # OpenAI's envelope elsewhere


def test_gateway_errors_styled_anthropic_take_the_type_of_their_status():
    err = GatewayError("upstream answered HTTP 502", status=502, type="upstream_error").anthropic()
    assert orjson.loads(render(err)[1]) == {"type": "error", "error": {"type": "api_error",
                                                                       "message": "upstream answered HTTP 502"}}
