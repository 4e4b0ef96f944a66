"""Every shipped example config is valid (`fastgw check --no-secrets`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.procs import REPO_ROOT

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_checks(path):
    r = subprocess.run([sys.executable, "-m", "fastgw", "check", "--no-secrets", "--config", str(path)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_there_are_examples():
    assert {"local.yaml", "openai.yaml", "production.yaml"} <= {p.name for p in EXAMPLES}
