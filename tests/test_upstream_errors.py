"""Upstream error bodies relayed in the full OpenAI envelope (issue 17): `message`, `type`, `param` and `code` are
always there (the spec requires all four), the upstream's own values and extra fields are kept, an envelope that
has them all passes byte for byte, and Anthropic's envelope on /v1/messages keeps its shape."""

from __future__ import annotations

import orjson
import pytest

from fastgw.attempt import upstream_error_answer
from fastgw.providers.base import TargetRuntime
from tests.conformance.openapi import violations

KEY = "sk-operator-key-0123456789"
TARGET = TargetRuntime(id="up", provider="openai", model="m", api_key=KEY)


def _error(status: int, body: dict) -> dict:
    return orjson.loads(upstream_error_answer(status, orjson.dumps(body), [], TARGET).body)


@pytest.mark.parametrize("status, upstream, expected", [
    (404, {"error": {"message": "no script", "type": "invalid_request_error"}},
     {"message": "no script", "type": "invalid_request_error", "param": None, "code": None}),
    (400, {"error": {"message": "bad", "type": "invalid_request_error", "param": "temperature", "extra": 1}},
     {"message": "bad", "type": "invalid_request_error", "param": "temperature", "code": None, "extra": 1}),
    (429, {"error": {"message": "slow down", "code": 429}},  # a numeric code, no type
     {"message": "slow down", "type": "invalid_request_error", "param": None, "code": "429"}),
    (503, {"error": {"code": "overloaded"}},
     {"message": "the upstream answered HTTP 503", "type": "server_error", "param": None, "code": "overloaded"}),
    (500, {"error": {"message": {"detail": "x"}, "type": "server_error", "param": None, "code": None}},
     {"message": '{"detail":"x"}', "type": "server_error", "param": None, "code": None}),
])
def test_missing_fields_are_completed_and_the_rest_kept(status, upstream, expected) -> None:
    out = _error(status, upstream)
    assert out["error"] == expected
    assert violations("ErrorResponse", out) == []


def test_a_full_envelope_passes_byte_for_byte_and_is_still_scrubbed() -> None:
    body = b'{"error": {"message": "m", "type": "t", "param": null, "code": "c"}, "x": 1}'
    assert upstream_error_answer(400, body, [], TARGET).body == body
    leaky = orjson.dumps({"error": {"message": f"bad key {KEY}", "type": "invalid_request_error"}})
    out = upstream_error_answer(400, leaky, [], TARGET).body
    assert KEY.encode() not in out and orjson.loads(out)["error"]["code"] is None


def test_anthropic_envelope_keeps_its_shape() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert upstream_error_answer(529, body, [], TARGET).body == body
