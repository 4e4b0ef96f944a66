"""Audit records cannot be used against the operator (issue 15, item 4): every client-supplied string is bounded
(`MAX_LOGGED_STRING` bytes, its length noted), escaped and, for model and path, PII-redacted, so one hostile
request costs a few hundred bytes of audit whatever it sends: a `GET /v1/models/<65,000 x A>` wrote a 65 KB
record and a 15 MB model name a 15.7 MB one before."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import orjson
import pytest

from fastgw.policy.audit import REDACT_MARGIN, loggable, record_from_context
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain
from fastgw.proto.limits import MAX_LOGGED_STRING
from tests.abuse._h3support import audit_lines, audit_records, chat, request
from tests.conftest import GatewayFactory

#: A record whose every client-supplied string is hostile: the fixed fields and about eight capped strings of
#: ~270 bytes (up to twice that once JSON escapes the backslashes of escaped control characters).
MAX_RECORD_BYTES = 4096
#: A record of one hostile model name or path, as the gateway writes it (hash chain included).
MAX_ONE_FIELD_RECORD_BYTES = 1024
EMAIL = "jane.doe@example.com"
KEY = "team-key-0123456789"


@pytest.fixture(scope="module")
def redact():  # the audit's own redactor: the built-in PII detector, whatever the chain holds
    return Chain()._redact_for_audit


def test_a_long_string_is_cut_with_its_length_noted() -> None:
    out = loggable("A" * 65_000)
    assert out == "A" * MAX_LOGGED_STRING + "…[65000 bytes]"
    assert len(out.encode()) <= MAX_LOGGED_STRING + 20
    assert loggable("gpt-4o") == "gpt-4o"  # short and clean: as it was


def test_multibyte_text_is_cut_on_a_character_boundary() -> None:
    out = loggable("é" * 300)  # 600 bytes
    head, _, note = out.partition("…")
    assert note == "[600 bytes]" and head == "é" * (MAX_LOGGED_STRING // 2)
    head.encode()  # valid UTF-8: no half character


@pytest.mark.parametrize("raw, shown", [
    ("gpt-4o\n{\"forged\": true}", "gpt-4o\\x0a{\"forged\": true}"),  # a newline forges a line in any text view
    ("a\rb\x00c\x1bd\x7f", "a\\x0db\\x00c\\x1bd\\x7f"),
    ("x\u2028y\u2029z", "x\\u2028y\\u2029z"),  # JavaScript and some viewers break lines here
    ("safe\u202egnp.exe", "safe\\u202egnp.exe"),  # bidi override: reads other than it displays
    ("back\\slash", "back\\\\slash"),  # so an escape in the output always means an escaped character
    ("\ud800lone", "\\ud800lone"),  # not encodable as UTF-8: escaped, never an encoding error
])
def test_control_characters_are_escaped(raw: str, shown: str) -> None:
    assert loggable(raw) == shown


def test_escaping_does_not_lift_the_cap() -> None:
    out = loggable("\n" * 300)  # 300 bytes, 1200 once escaped
    assert len(out.encode()) <= MAX_LOGGED_STRING + 20 and out.endswith("…[300 bytes]")


def test_pii_is_redacted_even_where_the_cut_falls(redact) -> None:
    # An address that starts before the cut and ends after it: redacted whole, never half kept.
    value = "A" * (MAX_LOGGED_STRING - 10) + f" {EMAIL} " + "B" * 100_000
    out = loggable(value, redact)
    assert "jane" not in out and "[REDACTED" in out and out.endswith(f"…[{len(value)} bytes]")
    assert loggable(f"/v1/models/sk-proj-{'x1' * 20}", redact) == "/v1/models/[REDACTED:API_KEY]"


def test_cost_is_bounded_by_the_cap_not_the_string(redact) -> None:
    for hostile in ("a:" * 8_000_000, "A" * 15_000_000, "é" * 5_000_000):
        t0 = time.perf_counter()
        out = loggable(hostile, redact)
        assert time.perf_counter() - t0 < 0.1  # redaction and escaping see the first few hundred characters only
        assert len(out.encode()) < MAX_LOGGED_STRING + REDACT_MARGIN


def test_a_hostile_record_is_a_few_hundred_bytes(redact) -> None:
    ctx = RequestContext("r" * 128, "POST", "/v1/chat/completions/" + "A" * 65_000 + f"?key={KEY}", [],
                         client="203.0.113.9, " + "198.51.100.1, " * 5_000)
    ctx.model = f"{EMAIL} " + "M" * 15_000_000
    ctx.target = "openai"
    ctx.status = 404
    ctx.error = "model_not_found"
    ctx.finish = {0: "stop\n" * 1_000}
    ctx.decide("rbac", "input", "deny", principal="x" * 10_000, **{"k" * 10_000: "v" * 10_000})
    rec = record_from_context(ctx, redact)
    line = orjson.dumps(rec)
    assert len(line) < MAX_RECORD_BYTES
    assert EMAIL not in rec["model"] and rec["model"].endswith(f"…[{len(ctx.model)} bytes]")
    assert rec["path"].endswith("…[65021 bytes]") and KEY not in rec["path"]
    assert rec["client"].endswith("bytes]") and rec["finish"]["0"].startswith("stop\\x0astop")
    (detail,) = [d["detail"] for d in rec["decisions"]]
    assert all(len(k) < 300 and len(str(v)) < 300 for k, v in detail.items())


# ---- through a gateway ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("audit-bounds")
    cfg = {"pack": {"name": "t"},
           "providers": {"targets": [{"id": "mock", "provider": "mock", "model": "mock-1"}]},
           "policies": {"chain": ["rbac", "audit-logger"]},
           "policy": {"rbac": {"keys": [{"name": "team", "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                                         "roles": ["all"]}], "roles": {"all": {}}},
                      "audit-logger": {"path": str(tmp / "audit"), "fsync": "never"}}}
    f = GatewayFactory(tmp)
    try:
        yield f.start(cfg), tmp / "audit"
    finally:
        f.close()


def _new_lines(directory: Path, before: int) -> list[bytes]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = audit_lines(directory)
        if len(lines) > before:
            return lines[before:]
        time.sleep(0.02)
    raise AssertionError("no audit record was written")


def test_keyless_long_model_path_costs_a_few_hundred_bytes(audited) -> None:
    gw, directory = audited
    before = len(audit_lines(directory))
    status, _, _ = request(gw.base, "GET", "/v1/models/" + "A" * 65_000)
    assert status == 401
    (line,) = _new_lines(directory, before)
    assert len(line) < MAX_ONE_FIELD_RECORD_BYTES  # 65 KB before
    rec = orjson.loads(line)
    assert rec["status"] == 401 and rec["path"].endswith("…[65011 bytes]")


def test_a_15_mb_model_name_costs_a_few_hundred_bytes(audited) -> None:
    gw, directory = audited
    before = len(audit_lines(directory))
    model = f"{EMAIL}\n" + "M" * 15_000_000
    status, _, _ = request(gw.base, "POST", "/v1/chat/completions", chat(model),
                           {"authorization": f"Bearer {KEY}", "content-type": "application/json"}, timeout=60)
    assert status == 404
    (line,) = _new_lines(directory, before)
    assert len(line) < MAX_ONE_FIELD_RECORD_BYTES  # 15.7 MB before
    rec = orjson.loads(line)
    assert rec["model"].startswith("[REDACTED:EMAIL]\\x0aMMM") and rec["model"].endswith(f"…[{len(model)} bytes]")
    assert rec["principal"] == "team"
    assert all(r["worker"] == 1 for r in audit_records(directory))
