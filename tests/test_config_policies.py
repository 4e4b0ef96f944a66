"""Policy configuration: precise errors for bad chains, entities and custom patterns; `fastgw scan` on stdin."""

from __future__ import annotations

import re

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
    with pytest.raises(ConfigError, match=r"c.yaml:6:\d+: \$.policy.pii-detector: .*not in policies.chain"):
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


def test_every_missing_secret_and_file_is_reported_at_once(tmp_path, monkeypatch):
    for v in ("FASTGW_T_KEY_A", "FASTGW_T_KEY_B", "FASTGW_T_METRICS", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(v, raising=False)
    p = tmp_path / "c.yaml"
    p.write_text("pack: {name: t}\nserver: {metrics_token_ref: {env: FASTGW_T_METRICS}}\nproviders:\n  targets:\n"
                 "    - {id: a, provider: openai, model: m, secret_key_ref: {env: FASTGW_T_KEY_A}}\n"
                 "    - {id: b, provider: groq, model: m, secret_key_ref: {env: FASTGW_T_KEY_B}, ca_file: /nope.pem}\n"
                 "    - {id: c, provider: bedrock, model: m}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    lines = [re.sub(r"^(.*?:\d+):\d+: ", r"\1: ", line) for line in str(exc.value).splitlines()]  # (columns aside)
    assert lines == [
        f"{p}:2: $.server.metrics_token_ref.env: environment variable FASTGW_T_METRICS is not set (the /metrics token)",
        f"{p}:5: $.providers.targets[0].secret_key_ref.env: environment variable FASTGW_T_KEY_A is not set "
        "(target 'a' needs it for its API key)",
        f"{p}:6: $.providers.targets[1].secret_key_ref.env: environment variable FASTGW_T_KEY_B is not set "
        "(target 'b' needs it for its API key)",
        f"{p}:6: $.providers.targets[1].ca_file: no such file '/nope.pem'",
        f"{p}:7: $.providers.targets[2].region: bedrock target 'c' needs a region (set region, or AWS_REGION)",
    ]
    # without secrets (`fastgw check --no-secrets`) the same file is fine; with them set, they come back by target
    assert load_config(p, resolve_secrets=False)[1] == {}
    monkeypatch.setenv("FASTGW_T_KEY_A", "ka")
    monkeypatch.setenv("FASTGW_T_KEY_B", "kb")
    monkeypatch.setenv("FASTGW_T_METRICS", "tok")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    p.write_text(p.read_text().replace(", ca_file: /nope.pem", ""))
    assert load_config(p)[1] == {"a": "ka", "b": "kb"}


@pytest.mark.parametrize("extra, line, key, words", [
    ("server: {send_timeout: 0}\n", 5, "$.server.send_timeout", "expected `float` > 0"),
    ("server: {max_body_bytes: -1}\n", 5, "$.server.max_body_bytes", "expected `int` >= 1"),
    ("routing:\n  - {model: x, targets: [m], retry: {attempts: 0}}\n", 6, "$.routing[0].retry.attempts",
     "expected `int` >= 1"),
    ("policies: {chain: [quality-scorer]}\npolicy:\n  quality-scorer: {thresholds: {min_aggregate: 1.5}}\n", 7,
     "$.policy.quality-scorer.thresholds.min_aggregate", "expected `float` <= 1"),
    ("policies: {chain: [prompt-injection]}\npolicy:\n  prompt-injection: {threshold: .nan}\n", 7,
     "$.policy.prompt-injection.threshold", "expected `float` > 0"),
    ("policies: {chain: [pii-detector]}\npolicy:\n  pii-detector:\n    custom:\n"
     "      - {name: X, regex: x, max_width: 70000}\n", 9, "$.policy.pii-detector.custom[0].max_width",
     "expected `int` <= 65536"),
])
def test_range_constraints_on_fields_name_file_line_and_key(tmp_path, extra, line, key, words):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, extra)
    assert re.match(rf"{re.escape(str(tmp_path / 'c.yaml'))}:{line}:\d+: {re.escape(key)}: {re.escape(words)}",
                    str(exc.value)), str(exc.value)


def test_each_policy_reports_its_own_problems_all_at_once(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, "policies: {chain: [rbac, safety-filter, audit-logger]}\npolicy:\n  rbac:\n    keys:\n"
                        "      - {name: a, sha256: abc, roles: [nope]}\n      - {name: a, sha256: abc}\n"
                        "  safety-filter: {}\n  audit-logger: {retention_days: -1}\n")
    lines = [ln.split(": ", 1)[1] for ln in str(exc.value).splitlines()]
    assert [ln.split(": ", 1)[0] for ln in lines] == [
        "$.policy.safety-filter", "$.policy.rbac.keys[0].sha256", "$.policy.rbac.keys[0].roles[0]",
        "$.policy.rbac.keys[1].name", "$.policy.rbac.keys[1].sha256", "$.policy.audit-logger.retention_days",
    ]
    assert "duplicate key name 'a'" in lines[3] and "0 keeps every file" in lines[5]


def test_policy_settings_live_with_their_policies_and_config_composes_them(tmp_path):
    from fastgw import config
    from fastgw.policy import audit, injection, pii, quality, rbac, safety
    from fastgw.policy.chain import build_chain

    for struct, home in [(config.PiiDetector, pii), (config.CustomPattern, pii), (config.SafetyFilter, safety),
                         (config.PromptInjection, injection), (config.InjectionPattern, injection),
                         (config.Rbac, rbac), (config.RbacKey, rbac), (config.RbacRole, rbac),
                         (config.QualityScorer, quality), (config.QualityThresholds, quality),
                         (config.AuditLogger, audit)]:
        assert struct.__module__ == home.__name__
    (cfg, _), _ = _load(tmp_path, "policies: {chain: [prompt-injection, pii-detector]}\n"
                                  "policy:\n  pii-detector: {action: block}\n")
    assert cfg.chain_settings() == [("prompt-injection", None), ("pii-detector", cfg.policy.pii_detector)]
    chain = build_chain(cfg.chain_settings())
    assert chain.order == ["prompt-injection", "pii-detector"] and chain.pii is not None
    assert chain.pii.action == "block"
    cfg.pack.enabled = False  # a disabled pack runs no policy
    assert cfg.chain_settings() == [] and build_chain(cfg.chain_settings()).order == []


# --- config as users write it (issue 17) -------------------------------------------------------------------

def test_yaml_1_2_words_on_off_yes_no_are_strings(tmp_path):
    # The README's routing example: `on:` is the retry key "on", not the boolean true.
    p = tmp_path / "c.yaml"
    p.write_text("pack: {name: t}\nproviders:\n  targets:\n    - {id: m, provider: mock, model: mock-1}\n"
                 "routing:\n  - model: mock-1\n    targets: [m]\n    retry:\n      on: [connect_error, 5xx]\n")
    cfg, _ = load_config(p)
    assert cfg.routing[0].retry.on == ["connect_error", "5xx"]
    q = tmp_path / "d.yaml"
    q.write_text("pack: {name: t, enabled: off}\nproviders:\n  targets:\n    - {id: m, provider: mock, model: mock-1}\n")
    with pytest.raises(ConfigError, match=r"d.yaml:1:\d+: \$.pack.enabled: expected `bool`, got `str`"):
        load_config(q)
    q.write_text("pack: {name: t, enabled: False}\nproviders:\n  targets:\n    - {id: m, provider: mock, model: mock-1}\n")
    assert load_config(q)[0].pack.enabled is False


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pack: {name: t}\nproviders:\n  targets:\n    - {id: m, provider: mock, model: mock-1}\n"
                 "policies:\n  chain: [rbac]\n  chain: []\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == f"{p}:7:3: $.policies.chain: duplicate key (first at line 6)"


def test_every_type_error_is_reported_at_once_with_line_and_column(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pack: {name: t}\nserver:\n  workers: two\n  bogus: 1\nproviders:\n  targets:\n"
                 "    - {id: m, provider: mock, model: mock-1, weight: -1}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value).splitlines() == [
        f"{p}:3:12: $.server.workers: expected `int`, got `str`",
        f"{p}:4:3: $.server.bogus: unknown key (check the spelling; see the README's configuration reference)",
        f"{p}:7:54: $.providers.targets[0].weight: expected `float` >= 0.0",
    ]
