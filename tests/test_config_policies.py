"""Policy configuration: precise errors for bad chains, entities and custom patterns; `fastgw scan` on stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from fastgw.config import ConfigError, load_config
from tests.support.procs import REPO_ROOT

BASE = "pack: {name: t}\nproviders:\n  targets:\n    - {id: m, provider: mock, model: m}\n"


def _load(tmp_path: Path, extra: str):
    p = tmp_path / "c.yaml"
    p.write_text(BASE + extra)
    return load_config(p), p


@pytest.mark.parametrize("extra, line, key, words", [
    ("policies: {chain: [pii-detectr]}\n", 5, "$.policies.chain[0]", "unknown policy"),
    ("policies: {chain: [pii-detector, pii-detector]}\n", 5, "$.policies.chain[1]", "twice"),
    ("policies: {chain: [pii-detector]}\npolicy:\n  pii-detector:\n    entities: [EMAIL, SSN]\n", 8,
     "$.policy.pii-detector.entities[1]", "unknown entity 'SSN'"),
    ("policies: {chain: [pii-detector]}\npolicy:\n  pii-detector:\n    action: scrub\n", 8,
     "$.policy.pii-detector.action", "invalid enum value"),
    ("policies: {chain: [pii-detector]}\npolicy:\n  pii-detector:\n    custom:\n"
     "      - {name: BAD, regex: '(a)\\1'}\n", 9, "$.policy.pii-detector.custom[0].regex", "Hyperscan cannot compile"),
    ("policies: {chain: [pii-detector]}\npolicy:\n  pii-detector:\n    custom:\n"
     "      - {name: EMAIL, regex: 'x'}\n", 9, "$.policy.pii-detector.custom[0].name", "new identifier"),
    ("policy:\n  pii-detector:\n    replacment: x\n", 7, "$.policy.pii-detector.replacment", "unknown key"),
])
def test_policy_config_errors_name_file_line_and_key(tmp_path, extra, line, key, words):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, extra)
    msg = str(exc.value)
    assert f"c.yaml:{line}:" in msg and key in msg and words in msg


def test_chain_enables_pii_with_defaults_and_custom_patterns(tmp_path):
    (cfg, _), _ = _load(tmp_path, "policies: {chain: [pii-detector]}\npolicy:\n  pii-detector:\n"
                                  "    custom: [{name: EMPLOYEE_ID, regex: 'EMP-\\d{6}', max_width: 10}]\n")
    pii = cfg.pii()
    assert pii is not None and pii.action == "redact" and pii.custom[0].name == "EMPLOYEE_ID"
    # settings alone do not enable a policy: the chain does, and a forgotten chain entry is an error
    with pytest.raises(ConfigError, match=r"c.yaml:6: \$.policy.pii-detector: .*not in policies.chain"):
        _load(tmp_path, "policy:\n  pii-detector: {action: block}\n")


def test_every_error_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, "server: {workers: -1}\npolicies: {chain: [pii-detector, nope]}\npolicy:\n"
                        "  pii-detector: {entities: [BAD]}\n  safety-filter: {terms: [x]}\n")
    lines = str(exc.value).splitlines()
    assert len(lines) == 4
    assert any("$.server.workers" in ln for ln in lines)
    assert any("$.policies.chain[1]" in ln for ln in lines)
    assert any("$.policy.safety-filter" in ln and "not in policies.chain" in ln for ln in lines)
    assert any("$.policy.pii-detector.entities[0]" in ln for ln in lines)


def test_fastgw_scan_redacts_stdin_and_lists_findings_without_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(BASE + "policies: {chain: [pii-detector]}\npolicy:\n  pii-detector:\n"
                        "    custom: [{name: EMPLOYEE_ID, regex: 'EMP-\\d{6}', max_width: 10}]\n")
    text = "Ask jane@example.org about EMP-123456, card 4111-1111-1111-1111.\n"
    r = subprocess.run([sys.executable, "-m", "fastgw", "scan", "--config", str(p)], input=text, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Ask [REDACTED:EMAIL] about [REDACTED:EMPLOYEE_ID], card [REDACTED:CREDIT_CARD]."
    assert [ln.split("\t")[0] for ln in lines[2:]] == ["EMAIL", "EMPLOYEE_ID", "CREDIT_CARD"]
    assert "jane@" not in "\n".join(lines[1:])
    r = subprocess.run([sys.executable, "-m", "fastgw", "scan", "--config", str(p), "--json"], input=text,
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    out = orjson.loads(r.stdout)
    assert out["findings"][0] == {"entity": "EMAIL", "pattern": "EMAIL", "start": 4, "end": 20}
