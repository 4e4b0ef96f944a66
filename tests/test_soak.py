"""The soak test (`python -m bench.soak`): mixed traffic with injected upstream faults, client aborts, slow readers
and policy blocks through a 2-worker gateway. It must end with no unexpected outcome, no dead worker, flat memory,
and fds / upstream connections back to baseline; and every outcome class, every injected fault and both kinds of
policy block must really have happened.

Two forms with the same checks: `test_soak_short` (20 s, concurrency 16) runs in `make test`; `test_soak_long`
(600 s, concurrency 32; FASTGW_SOAK_SECONDS changes the length) is marked `slow` and runs in `make test-slow`.

The classifier is also checked directly on hand-made responses (a 5xx no fault explains, a truncated stream, a
leaked e-mail are "unexpected"), so a lenient classifier cannot make the soak pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.faulty_upstream import FAULTS, expected_text
from bench.soak import OUTCOMES, SCENARIOS, Response, classify

REPO = Path(__file__).resolve().parents[1]
SHORT_SECONDS = 14
LONG_SECONDS = int(os.environ.get("FASTGW_SOAK_SECONDS", "600"))


@pytest.mark.timeout(110)
def test_soak_short(tmp_path: Path) -> None:
    _soak(tmp_path, SHORT_SECONDS, 16, "--warmup", "2", "--quiet", "1.5")


@pytest.mark.slow
@pytest.mark.timeout(LONG_SECONDS + 300)
def test_soak_long(tmp_path: Path) -> None:
    _soak(tmp_path, LONG_SECONDS, 32)


def _soak(tmp_path: Path, seconds: int, concurrency: int, *extra: str) -> None:
    """Run the soak for `seconds` and check everything its JSON report says."""
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "bench.soak", "--seconds", str(seconds), "--concurrency", str(concurrency),
           "--workers", "2", "--json", str(out), "-v", *extra]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + 240)
    report = p.stdout + p.stderr
    assert p.returncode == 0, f"soak failed (exit {p.returncode}):\n{report}"
    res = json.loads(out.read_text())
    assert res["pass"] is True and res["reasons"] == []

    main = res["main"]
    assert main["requests"] >= 200, report
    for outcome in OUTCOMES:
        if outcome != "unexpected":
            assert main["outcomes"][outcome] > 0, f"no {outcome} outcome in the run:\n{report}"
    assert main["outcomes"]["unexpected"] == 0

    # every injected fault was exercised and handled, on either route
    scen = main["by_scenario"]
    for f in FAULTS:
        handled = sum(n for name in (f"fault_{f}_fallback", f"fault_{f}_direct")
                      for k, n in scen.get(name, {}).items() if k.startswith("injected_fault_handled"))
        assert handled > 0, f"fault {f} never exercised:\n{report}"
    # faults went both ways: answered by the fallback target, and as the fault's own error (HTTP or in-stream)
    details = [k for name, c in scen.items() if name.startswith("fault_") for k in c]
    assert any("fallback answered" in k for k in details), details
    assert any("HTTP 5" in k or "HTTP 429" in k for k in details), details
    assert any("in-stream upstream_" in k for k in details), details
    # both kinds of policy block, and the redactions
    assert any(k.startswith("policy_blocked: 409 input_blocked") for k in scen.get("block_injection", {})), scen
    assert any(k.startswith("policy_blocked") for k in scen.get("block_term_in_answer", {})), scen
    assert any(k.startswith("ok") for k in scen.get("pii_in_answer", {})), scen
    assert any(k.startswith("ok") for k in scen.get("slow_reader", {})), scen

    # resource samples: every ~5% of the run, RSS and fds of both workers
    workers = [str(w) for w in res["workers_start"]]
    assert len(workers) == 2 and res["workers_start"] == res["workers_end"]
    samples = res["samples"]
    assert len(samples) >= 15, len(samples)
    for s in samples:
        for w in workers:
            assert s["workers"][w]["rss_mb"] > 0 and s["workers"][w]["fds"] > 0, s
    for w in workers:
        r = res["rss"][w]
        assert r["start"] > 0 and r["middle"] > 0 and r["end"] > 0 and r["flat"], r
        f = res["fds"][w]
        assert f["baseline"] > 0 and f["end"] > 0 and f["delta_non_upstream"] <= 3, f
        assert f["client_conns_end"] == 0, f
    assert res["end"]["upstream"]["busy_total"] == 0
    assert res["end"]["gauges"]["fastgw_inflight_requests"] == 0
    assert res["end"]["gauges"]["fastgw_active_streams"] == 0


# ---------------------------------------------------------------------------------------------
# the classifier
# ---------------------------------------------------------------------------------------------

def _sc(name: str):  # noqa: ANN202
    return next(s for s in SCENARIOS if s.name == name)


def _sse(content: str, errors: list[dict] | None = None, done: bool = True) -> Response:
    r = Response(status=200, headers={"content-type": "text/event-stream"}, content=content, errors=errors or [],
                 done=done, complete=True, events=3)
    return r


def _json(status: int, body: dict) -> Response:
    return Response(status=status, headers={"content-type": "application/json"}, body=json.dumps(body).encode(),
                    complete=True)


def test_classify_ok_and_unexpected() -> None:
    sc = _sc("stream")
    assert classify(sc, True, _sse(expected_text("normal", "primary")), 0.1)[0] == "ok"
    assert classify(sc, True, _sse(expected_text("normal", "fallback")), 0.1)[0] == "ok"
    # truncated, no [DONE], a 5xx, an in-stream error no fault explains, a transport error: unexpected
    assert classify(sc, True, _sse(expected_text("normal", "primary")[:-5]), 0.1)[0] == "unexpected"
    assert classify(sc, True, _sse(expected_text("normal", "primary"), done=False), 0.1)[0] == "unexpected"
    err = {"error": {"message": "x", "type": "upstream_error", "code": "upstream_error"}}
    assert classify(_sc("json"), False, _json(502, err), 0.1)[0] == "unexpected"
    assert classify(sc, True, _sse("[served-by:primary] w0 ", [{"code": "upstream_timeout"}]), 0.1)[0] == "unexpected"
    r = _sse("[served-by:primary] w0 ")
    r.complete, r.transport_error = False, "IncompleteReadError"
    assert classify(sc, True, r, 0.1)[0] == "unexpected"
    assert classify(sc, True, Response(transport_error="ConnectionResetError"), 0.1)[0] == "unexpected"


def test_classify_policies_and_faults() -> None:
    leak = _sse(expected_text("pii", "primary"))
    assert classify(_sc("pii_in_answer"), True, leak, 0.1)[0] == "unexpected"
    redacted = _sse(expected_text("pii", "primary").replace("jane.doe@example.com", "[REDACTED:EMAIL]")
                    .replace("jane.doe@", "[REDACTED:EMAIL]").replace("example.com today", " today"))
    assert classify(_sc("pii_in_answer"), True, redacted, 0.1)[0] == "ok"
    saw = _json(200, {"choices": [{"message": {"content": expected_text("normal", "primary", saw_email=True)}}]})
    assert classify(_sc("pii_in_prompt"), False, saw, 0.1)[0] == "unexpected"
    blocked = _json(409, {"error": {"code": "input_blocked", "type": "policy_violation", "policy": "prompt-injection"}})
    assert classify(_sc("block_injection"), False, blocked, 0.1)[0] == "policy_blocked"
    assert classify(_sc("block_injection"), False, _json(200, {"choices": []}), 0.1)[0] == "unexpected"
    mid = _sse("[served-by:primary] w0 w1 ", [{"code": "output_blocked", "type": "policy_violation"}])
    assert classify(_sc("block_term_in_answer"), True, mid, 0.1)[0] == "policy_blocked"
    term = _sse("[served-by:primary] the forbidden fruit ", [{"code": "output_blocked"}])
    assert classify(_sc("block_term_in_answer"), True, term, 0.1)[0] == "unexpected"
    # faults: the fault's own envelope, the fallback's answer, or the in-stream error it must give
    e500 = _json(500, {"error": {"code": "injected_500", "type": "server_error", "message": "injected"}})
    assert classify(_sc("fault_http500_direct"), False, e500, 0.1)[0] == "injected_fault_handled"
    assert classify(_sc("fault_http500_fallback"), True, _sse(expected_text("normal", "fallback")), 0.1)[0] \
        == "injected_fault_handled"
    # ... but the primary's answer where a fault was injected, or another 5xx, is not
    assert classify(_sc("fault_http500_fallback"), True, _sse(expected_text("normal", "primary")), 0.1)[0] \
        == "unexpected"
    e502 = _json(502, {"error": {"code": "upstream_error", "type": "upstream_error", "message": "x"}})
    assert classify(_sc("fault_stall_head_direct"), False, e502, 0.1)[0] == "unexpected"
    garbage = _json(502, {"error": {"code": "upstream_protocol_error", "type": "upstream_error", "message": "x"}})
    assert classify(_sc("fault_garbage_sse_direct"), False, garbage, 0.1)[0] == "injected_fault_handled"
    assert classify(_sc("fault_http500_direct"), False, garbage, 0.1)[0] == "unexpected"
    reset = _sse("[served-by:primary] w0 w1 ", [{"code": "upstream_disconnected"}])
    assert classify(_sc("fault_reset_mid_direct"), True, reset, 0.1)[0] == "injected_fault_handled"
    assert classify(_sc("fault_stall_mid_direct"), True, reset, 0.1)[0] == "unexpected"
    aborted = Response(status=200, headers={"content-type": "text/event-stream"}, aborted=True)
    assert classify(_sc("abort_after_events"), True, aborted, 0.1)[0] == "client_aborted"
    aborted_err = Response(status=502, aborted=True)
    assert classify(_sc("abort_after_events"), True, aborted_err, 0.1)[0] == "unexpected"
