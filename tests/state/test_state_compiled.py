"""The `local` state backend's modules that `make` compiles with mypyc (the Makefile's COMPILED, issue 18): the
compiled form is the one in use and is built from the current sources, and the pure-Python form still passes the
state's own tests (the table's kill-at-every-step tests included)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fastgw.state.core as core
import fastgw.state.local as local
import fastgw.state.table as table

ROOT = Path(__file__).resolve().parents[2]
STAMP = ROOT / ".venv" / ".compiled"
MODULES = {"fastgw/state/table.py": table, "fastgw/state/core.py": core, "fastgw/state/local.py": local}
#: The table's, the backends' and the policy's tests, run again on the pure-Python sources.
PURE_TESTS = ["tests/state/test_local_table.py", "tests/state/test_state_backends.py",
              "tests/state/test_ratelimit_policy.py"]


def test_the_compiled_modules_are_in_use_and_built_from_the_current_sources() -> None:
    assert STAMP.exists(), f"{STAMP} is missing: run `make test` (it compiles the hot modules first)"
    built = dict(line.split()[::-1] for line in STAMP.read_text().splitlines())
    mine = sorted(p for p in built if p.startswith("fastgw/state/"))
    assert mine == sorted(MODULES), "the Makefile's COMPILED and this test name different modules"
    for path, module in MODULES.items():
        file = module.__file__ or ""
        assert file.endswith(".so"), f"{path} is imported from {file}, not its compiled form: run make"
        assert Path(file).parent == (ROOT / path).parent, f"{path}: the compiled form came from {file}"
        now = hashlib.sha256((ROOT / path).read_bytes()).hexdigest()
        assert built[path] == now, f"{path} changed since it was compiled: the .so is stale (run make)"


def test_the_pure_python_form_passes_the_states_tests(tmp_path: Path) -> None:
    """A copy of the package without any compiled module, with the tests it runs, first on the path: the same
    tests, on the sources."""
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "fastgw", copy / "fastgw", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for part in ("tests/state", "tests/support"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("tests/__init__.py", "tests/conftest.py", "pyproject.toml"):
        if (ROOT / part).exists():
            shutil.copy(ROOT / part, copy / part)
    env = {**os.environ, "PYTHONPATH": str(copy)}
    probe = subprocess.run([sys.executable, "-c", "import fastgw.state.table as t, fastgw.state.core as c, "
                            "fastgw.state.local as l; print(t.__file__); print(c.__file__); print(l.__file__)"],
                           cwd=copy, env=env, capture_output=True, text=True, check=True)
    assert all(line.endswith(".py") and line.startswith(str(copy)) for line in probe.stdout.split()), probe.stdout
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *PURE_TESTS],
                         cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-500:]
