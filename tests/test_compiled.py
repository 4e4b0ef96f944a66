"""The hot modules `make` compiles with mypyc (the Makefile's COMPILED): the compiled form is the one in use and
is built from the current sources, and the pure-Python form still passes those modules' own tests."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = ROOT / ".venv" / ".compiled"
#: The Makefile's COMPILED (its continuation lines joined).
_LIST = re.search(r"^COMPILED := ((?:.*\\\n)*.*)$", (ROOT / "Makefile").read_text(), re.M)
COMPILED = _LIST[1].replace("\\\n", " ").split() if _LIST else []
#: The compiled modules' own tests, run again on the pure-Python sources (~25 s): the scanner's, the fold's, the
#: HTTP/1.1 layer's and the local state backend's.
PURE_TESTS = ["tests/scan/test_scanner.py", "tests/scan/test_fold.py", "tests/scan/test_fold_redaction.py",
              "tests/scan/test_scan_cost.py", "tests/proto", "tests/state/test_local_table.py",
              "tests/state/test_state_backends.py", "tests/state/test_ratelimit_policy.py"]


def test_the_compiled_modules_are_in_use_and_built_from_the_current_sources() -> None:
    assert len(COMPILED) >= 10 and all(p.startswith("fastgw/") and p.endswith(".py") for p in COMPILED), COMPILED
    assert STAMP.exists(), f"{STAMP} is missing: run `make test` (it compiles the hot modules first)"
    built = dict(line.split()[::-1] for line in STAMP.read_text().splitlines())
    assert sorted(built) == sorted(COMPILED), "the stamp is not of the Makefile's COMPILED: run make"
    for path in COMPILED:
        name = path.removesuffix(".py").replace("/", ".")
        module = importlib.import_module(name)
        # What the path finder loads for it (a module its group's library initialised carries a made-up __file__).
        spec = importlib.machinery.PathFinder.find_spec(name, [str((ROOT / path).parent)])
        origin = getattr(spec, "origin", None) or ""
        assert origin.endswith(".so"), f"{path} is imported from {origin}, not its compiled form: run make"
        assert Path(origin).parent == (ROOT / path).parent, f"{path}: the compiled form came from {origin}"
        interpreted = [k for k, v in vars(module).items() if isinstance(v, types.FunctionType) and v.__module__ == name]
        assert not interpreted, f"{path}: {interpreted} are Python functions: the module in use is not compiled"
        now = hashlib.sha256((ROOT / path).read_bytes()).hexdigest()
        assert built[path] == now, f"{path} changed since it was compiled: the .so is stale (run make)"


def test_the_pure_python_form_passes_the_compiled_modules_tests(tmp_path: Path) -> None:
    """A copy of the package without any compiled module, with the tests it runs, first on the path: the same
    tests, on the sources."""
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "fastgw", copy / "fastgw", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for part in ("tests/scan", "tests/proto", "tests/state", "tests/support"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("tests/conftest.py", "pyproject.toml"):
        shutil.copy(ROOT / part, copy / part)
    env = {**os.environ, "PYTHONPATH": str(copy)}
    names = [p.removesuffix(".py").replace("/", ".") for p in COMPILED]
    probe = subprocess.run([sys.executable, "-c", f"import importlib; [print(importlib.import_module(m).__file__) "
                            f"for m in {names!r}]"], cwd=copy, env=env, capture_output=True, text=True, check=True)
    files = probe.stdout.split()
    assert len(files) == len(COMPILED), probe.stdout
    assert all(f.endswith(".py") and f.startswith(str(copy)) for f in files), probe.stdout
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *PURE_TESTS],
                         cwd=copy, env=env, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " skipped" not in run.stdout, run.stdout[-500:]
