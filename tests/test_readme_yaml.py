"""Every YAML block in the README passes `fastgw check --no-secrets` (issue 17): a block that is a fragment (a
`policy:` or `providers:` section alone) is checked inside the smallest config that completes it, so the
keys, values and types it shows are exactly what the loader accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fastgw.config import _Loader
from tests.support.procs import REPO_ROOT

_BLOCKS = re.findall(r"```yaml\n(.*?)```", (REPO_ROOT / "README.md").read_text(encoding="utf-8"), re.S)
_MOCK = {"id": "mock", "provider": "mock", "model": "mock-1"}


def _complete(block: dict) -> dict:
    """The block inside the smallest config around it: a pack, a mock target, a chain naming its policies."""
    cfg = dict(block)
    cfg.setdefault("pack", {"name": "readme"})
    cfg.setdefault("providers", {"targets": [_MOCK]})
    if "policy" in cfg:
        chain = cfg.setdefault("policies", {}).setdefault("chain", [])
        chain += [name for name in cfg["policy"] if name not in chain]
    if "rbac" in cfg.get("policies", {}).get("chain", []) and "rbac" not in cfg.get("policy", {}):
        # A fragment that shows a chain with rbac but not its keys (they are shown in their own block).
        cfg.setdefault("policy", {})["rbac"] = {"keys": [{"name": "k", "sha256": "0" * 64, "roles": ["r"]}],
                                                "roles": {"r": {}}}
    return cfg


def test_the_readme_has_yaml_blocks() -> None:
    assert len(_BLOCKS) >= 6


@pytest.mark.parametrize("block", _BLOCKS, ids=[f"block{i}" for i in range(len(_BLOCKS))])
def test_readme_yaml_block_checks(block: str, tmp_path: Path) -> None:
    data = yaml.load(block, Loader=_Loader)  # noqa: S506 - a SafeLoader
    assert isinstance(data, dict), block
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(_complete(data), sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "fastgw", "check", "--no-secrets", "--config", str(p)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + "\n" + block
