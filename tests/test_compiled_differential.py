"""The compiled parsers and scanner answer hostile input exactly as their pure-Python sources do.

mypyc has miscompiled code here before (a bytes slice whose end fell before its start raised SystemError where
Python gives b""; see bench/RESULTS.md): unit tests pass on both forms, but only random input finds the corner a
test did not think of. Each run feeds the same generated cases (tests/support/differential.py: SSE streams, HTTP/1.1
requests, text for the PII scanner and the Unicode fold, cut at random points, chat, Responses and Messages
streams from well-formed to hostile through the output stream policy, and whole requests and non-streamed answers
through the whole-text policy path) to the package as installed
(compiled) and to a copy of its sources without any .so, and compares every output line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PROBE = ("import fastgw.proto.sse as s, fastgw.proto.h1 as h, fastgw.scan.scanner as c, "
          "fastgw.policy.stream.core as p, fastgw.policy.textscan as t; "
          "print(s.__file__, h.__file__, c.__file__, p.__file__, t.__file__)")


@pytest.fixture(scope="module")
def pure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package's sources (no compiled module) and of the case generator."""
    copy = tmp_path_factory.mktemp("pure")
    shutil.copytree(ROOT / "fastgw", copy / "fastgw", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (copy / "tests" / "support").mkdir(parents=True)
    for name in ("__init__.py", "differential.py", "sse_streams.py"):
        shutil.copy(ROOT / "tests" / "support" / name, copy / "tests" / "support" / name)
    (copy / "tests" / "__init__.py").touch()
    return copy


def _run(where: Path | None, *args: str) -> list[str]:
    env = None if where is None else {"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"}
    cwd = ROOT if where is None else where
    probe = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    want = ".py" if where is not None else ".so"
    assert all(f.endswith(want) for f in probe), f"expected the {want} forms, got {probe}"
    if where is not None:
        assert all(f.startswith(str(where)) for f in probe), probe
    r = subprocess.run([sys.executable, "-m", "tests.support.differential", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.splitlines()


def _compare(pure: Path, seed: int, cases: int) -> None:
    compiled, interpreted = _run(None, str(seed), str(cases)), _run(pure, str(seed), str(cases))
    assert len(compiled) == len(interpreted) == 5 * cases
    for a, b in zip(compiled, interpreted):
        assert a == b, f"the compiled form differs from the sources:\ncompiled: {a[:2000]}\nsources:  {b[:2000]}"
    # The cases reach what they are for (a generator gone blind would compare nothing).
    text = "\n".join(compiled)
    assert text.count("EXC ProtocolError") > cases // 50  # SSE events over the limit
    assert text.count("('error', ") > cases // 10 and text.count("('POST', ") > cases // 20  # refused and parsed
    assert text.count("'EMAIL'") > cases // 10 and text.count("'US_SSN'") > cases // 10  # spans found
    streams = [line for line in compiled if line.startswith("stream ")]
    assert sum("[REDACTED:" in line for line in streams) > cases // 10  # the stream policy redacted
    assert sum("BLOCKED" in line for line in streams) > cases // 50  # and blocked
    assert sum("cannot parse" in line for line in streams) > cases // 20  # and refused what it cannot read
    assert not [line for line in streams if "EXC" in line and "EXC GatewayError" not in line]  # never failed
    texts = [line for line in compiled if line.startswith("texts ")]
    assert sum("'redact'" in line for line in texts) > cases // 10  # whole texts redacted
    verdicts = [line.split(" | ")[1] for line in texts]
    assert verdicts.count("True") > cases // 50 and verdicts.count("False") > cases // 50  # the prefilter, both ways
    assert sum("EXC PolicyViolation" in line for line in texts) > cases // 50  # and refused
    assert not [line for line in texts if "EXC" in line and "EXC PolicyViolation" not in line]  # never failed


def test_compiled_and_pure_agree_on_hostile_input(pure: Path) -> None:
    _compare(pure, seed=18, cases=1500)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_and_pure_agree_on_more_hostile_input(pure: Path, seed: int) -> None:
    _compare(pure, seed=seed, cases=20000)
