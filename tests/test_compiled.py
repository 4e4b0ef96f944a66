"""The hot modules `make` compiles with mypyc (the Makefile's COMPILED): the compiled form is the one in use and
is built from the current sources, and the pure-Python form still passes those modules' own tests."""

from __future__ import annotations

import ast
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
#: The Makefile's NATIVE_C: hand-written C modules built in the same step.
_C_LIST = re.search(r"^NATIVE_C := ((?:.*\\\n)*.*)$", (ROOT / "Makefile").read_text(), re.M)
NATIVE_C = _C_LIST[1].replace("\\\n", " ").split() if _C_LIST else []
#: The compiled modules' own tests, run again on the pure-Python sources (~22 s of one xdist worker; the suite's
#: 5-minute budget keeps out the slower ones, which exercise the same code compiled: the fold's redaction corpus,
#: the server through sockets, the h1 abuse and SSE vector files, Redis's half of the state backends).
PURE_TESTS = ["tests/scan/test_scanner.py", "tests/scan/test_fold.py", "tests/scan/test_scan_cost.py",
              "tests/proto/test_h1_reader.py", "tests/proto/test_framing_guard.py", "tests/proto/test_chunked.py",
              "tests/proto/test_sse.py", "tests/proto/test_writer.py", "tests/proto/test_flow.py",
              "tests/proto/test_client.py", "tests/proto/test_client_chunks.py", "tests/state/test_local_table.py", "tests/state/test_ratelimit_policy.py",
              "tests/state/test_asks.py", "tests/state/test_quota_cancel.py", "tests/test_quota_renew.py",
              "tests/test_pipeline.py", "tests/test_cancellation.py", "tests/policy/test_stream_policy.py",
              "tests/policy/test_stream_policy_texts.py", "tests/policy/test_stream_chunks.py",
              "tests/policy/test_stream_dialects.py", "tests/policy/test_stream_texts.py",
              "tests/policy/test_read_batch.py", "tests/policy/test_chain.py", "tests/policy/test_cpu_slices.py",
              "tests/policy/test_fields_coverage.py", "tests/policy/test_prefilter.py", "tests/test_early_write.py"]


def test_the_compiled_modules_are_in_use_and_built_from_the_current_sources() -> None:
    assert len(COMPILED) >= 10 and all(p.startswith("fastgw/") and p.endswith(".py") for p in COMPILED), COMPILED
    assert STAMP.exists(), f"{STAMP} is missing: run `make test` (it compiles the hot modules first)"
    built = dict(line.split()[::-1] for line in STAMP.read_text().splitlines())
    assert sorted(built) == sorted(COMPILED + NATIVE_C), "the stamp is not of the Makefile's COMPILED: run make"
    assert NATIVE_C == ["fastgw/state/_tablec.c", "fastgw/_accessline.c", "fastgw/api/_usagec.c",
                        "fastgw/proto/_headc.c", "fastgw/proto/_dechunkc.c", "fastgw/proto/_plainheadc.c",
                        "fastgw/proto/_ssec.c", "fastgw/policy/stream/_chunkc.c", "fastgw/scan/_holdc.c"], NATIVE_C
    for path in NATIVE_C:
        module = importlib.import_module(path.removesuffix(".c").replace("/", "."))
        assert (module.__file__ or "").endswith(".so") and Path(module.__file__ or "").parent == (ROOT / path).parent
        assert built[path] == hashlib.sha256((ROOT / path).read_bytes()).hexdigest(), f"{path}: stale build (run make)"
    from fastgw.state import _tablec, table
    assert table._c is _tablec, "the table's C record operations are built but not in use (a layout mismatch?)"
    from fastgw import _accessline, accesslog
    assert accesslog._c is _accessline, "the access log's C line is built but not in use"
    from fastgw import stream
    from fastgw.api import _usagec, sse
    assert sse.drop_null_usage is _usagec.drop_null_usage and stream._first_empty_choices is _usagec.first_empty_choices
    assert stream._count_data is _usagec.count_data
    from fastgw.proto import _headc, writer
    assert writer._c_head is _headc.head, "the C response head is built but not in use"
    from fastgw.proto import _dechunkc, client
    assert client._dechunk is _dechunkc.dechunk and client._head_cut is _dechunkc.head_cut, \
        "the C chunk decoder is built but not in use"
    from fastgw.proto import _plainheadc, h1
    assert h1.read_request is _plainheadc.request and client.read_response is _plainheadc.response, \
        "the C head readers are built but not in use"
    from fastgw.proto import _ssec, sse as proto_sse
    assert proto_sse._blocks is _ssec.blocks, "the SSE decoder's C forms are built but not in use"
    from fastgw.policy.stream import _chunkc, chat
    assert chat._PlainReader is _chunkc.PlainReader, "the chat chunk's C reader is built but not in use"
    from fastgw.scan import _holdc, scanner
    assert scanner._RUNS is _holdc.runs and scanner._HOLD is _holdc.hold, "the holdback's C forms are built but not in use"
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
    for part in ("tests/scan", "tests/proto", "tests/state", "tests/support", "tests/policy"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "bench").mkdir()
    for part in ("tests/conftest.py", "pyproject.toml", "bench/__init__.py", "bench/ports.py",
                 *[t for t in PURE_TESTS if t.count("/") == 1]):  # the pipeline's tests sit at the top
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


def _awaited_then_read_on_the_way_out(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of each local assigned from an `await` inside a `try` body and read in its handler or finally."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        assigned = {t.id for st in node.body for n in ast.walk(st)
                    if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, ast.Await)
                    for target in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    for t in ast.walk(target) if isinstance(t, ast.Name)}
        for part in [*node.handlers, *node.finalbody]:
            found += [(n.lineno, n.id) for n in ast.walk(part) if isinstance(n, ast.Name) and n.id in assigned]
    return found


def test_no_compiled_module_reads_an_awaited_local_on_the_way_out() -> None:
    """mypyc: when a task is cancelled in `x = await ...` inside a `try`, the handler or `finally` finds `x` None
    whatever its narrowed type says, and a compiled read of it raises TypeError (the pipeline once did)."""
    bad = [f"{path}:{line}: {name}" for path in COMPILED
           for line, name in _awaited_then_read_on_the_way_out(ast.parse((ROOT / path).read_text()))]
    assert not bad, bad
    sample = ast.parse("async def f():\n    out = None\n    try:\n        out = await g()\n    finally:\n"
                       "        use(out)\n")
    assert _awaited_then_read_on_the_way_out(sample) == [(6, "out")]  # the check sees the shape


def _bytes_needles(tree: ast.AST) -> list[int]:
    """Lines of each `needle in haystack` (or `not in`) whose needle is a bytes literal or a module constant bound
    to one."""
    consts = {t.id for node in getattr(tree, "body", []) if isinstance(node, (ast.Assign, ast.AnnAssign))
              and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bytes)
              for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    return sorted(n.lineno for n in ast.walk(tree) if isinstance(n, ast.Compare)
                  and any(isinstance(op, (ast.In, ast.NotIn)) for op in n.ops)
                  and ((isinstance(n.left, ast.Constant) and isinstance(n.left.value, bytes))
                       or (isinstance(n.left, ast.Name) and n.left.id in consts)))


def test_no_compiled_module_looks_for_a_bytes_needle_with_in() -> None:
    """`b"x" in data` first tries the needle as an int (`13 in data`), raising and clearing a TypeError on every
    call (~1,800 instructions): the request path had five of them, each run per request, read or scan. The compiled
    modules use an int needle (memchr) or `find`."""
    bad = [f"{path}:{line}" for path in COMPILED for line in _bytes_needles(ast.parse((ROOT / path).read_text()))]
    assert not bad, bad
    sample = ast.parse('TAIL = b"[DONE]"\nif b"json" in c or TAIL in b[-16:] or 13 in b or "s" in t or x in y:\n'
                       '    pass\n')
    assert _bytes_needles(sample) == [2, 2]  # the check sees both shapes (and not an int, str or unknown needle)


#: Module constants a test patches (a Final is inlined where it is read, so patching it would change nothing).
_PATCHED_CONSTANTS = {("fastgw/scan/scanner.py", "DENSE_RUN"), ("fastgw/state/table.py", "MAX_CAPACITY"),
                      ("fastgw/metrics.py", "MAX_SERIES_PER_METRIC"), ("fastgw/metrics.py", "MAX_UNVETTED_MODELS"),
                      ("fastgw/policy/ratelimit.py", "SLOT_LEASE"), ("fastgw/policy/ratelimit.py", "RENEW_EVERY")}


def _plain_constants(tree: ast.Module) -> list[str]:
    """Module-level UPPER_CASE names bound to a literal (or arithmetic on literals and names) without `Final`."""
    def literal(v: ast.expr) -> bool:
        if isinstance(v, ast.BinOp):
            return literal(v.left) and literal(v.right)
        return isinstance(v, ast.UnaryOp) and literal(v.operand) or isinstance(v, (ast.Constant, ast.Name))
    return [t.id for node in tree.body if isinstance(node, ast.Assign) and literal(node.value)
            for t in node.targets if isinstance(t, ast.Name) and t.id.lstrip("_")[:1].isupper() and t.id.isupper()]


def test_compiled_modules_constants_are_final() -> None:
    """A plain module global read by compiled code is a lookup in the module's dict each time (two per event in
    the SSE decoder and two per text piece in the stream policy before they were Final); mypyc inlines a Final
    literal or keeps the value in a C static."""
    bad = [f"{path}:{name}" for path in COMPILED for name in _plain_constants(ast.parse((ROOT / path).read_text()))
           if (path, name) not in _PATCHED_CONSTANTS]
    assert not bad, bad
    sample = ast.parse("A = 1\n_B: Final = 2\nC = A * 4 + -1\nd = 3\nE = f()\nF: int = 5\n")
    assert _plain_constants(sample) == ["A", "C"]  # (not a call's result, a lower-case name or an annotated one)


def _awaits_while_handling(tree: ast.AST) -> list[int]:
    """Lines of each `await` (`async for`, `async with`) inside an `except` handler or a `finally` block."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for part in [*node.handlers, *node.finalbody]:
                found += [n.lineno for n in ast.walk(part) if isinstance(n, (ast.Await, ast.AsyncFor, ast.AsyncWith))]
    return sorted(set(found))


def test_no_compiled_coroutine_awaits_while_handling_an_exception() -> None:
    """mypyc keeps no exception state per coroutine: one suspended inside an `except` or a `finally` leaves its
    exception as the thread's handled one while other tasks run, and a compiled `await` in one of them re-raised
    it (a client's CancelledError raised again, traceback and all, in the next request; mypyc/mypyc#1177 is one
    form of it). Compiled modules await after the handler instead (app.py and pipeline.py show how)."""
    bad = [f"{path}:{line}" for path in COMPILED for line in _awaits_while_handling(ast.parse((ROOT / path).read_text()))]
    assert not bad, bad
    sample = ast.parse("async def f():\n    try:\n        await g()\n    except E:\n        await h()\n    finally:\n"
                       "        async with m():\n            pass\n")
    assert _awaits_while_handling(sample) == [5, 7]  # the check sees the shapes (not the await in the body)


#: Every slice with both bounds in a compiled module, each read for whether its end can fall before its start:
#: mypyc's bytes slice does not clamp that case (CPyBytes_GetSlice passes a negative size: SystemError, where
#: Python gives b""; the scanner's `buf[end - 1:end]` with end 0 did, on a text starting "\n| --- |"). None here
#: can: the upper bound is the lower plus a length, or a find/limit at or after it, or the operand is a str,
#: memoryview or mmap (their slices clamp).
_REVIEWED_SLICES = {
    ("fastgw/scan/fold.py", "s[pos:end]"), ("fastgw/scan/fold.py", "s[pos:a]"),  # str
    ("fastgw/scan/scanner.py", "buf[nl + 1:end]"),  # nl = buf.rfind(b"\n", 0, end) < end
    ("fastgw/scan/scanner.py", "buf[start - base:end - base]"),
    ("fastgw/scan/scanner.py", "buf[mend - base:mend - base + MAX_LOOKAHEAD]"),
    ("fastgw/scan/scanner.py", "buf[end - base:end - base + MAX_LOOKAHEAD]"),
    ("fastgw/scan/scanner.py", "buf[max(start - MAX_TABLE_HEADER, base) - base:start - base]"),
    ("fastgw/scan/scanner.py", "buf[max(start - CONTEXT_BYTES, base) - base:start - base]"),
    ("fastgw/proto/framing_guard.py", "memoryview(data)[pos:i]"),
    ("fastgw/proto/framing_guard.py", "data[pos:i - 1 if i > pos and data[i - 1] == 13 else i]"),
    ("fastgw/proto/framing_guard.py", "data[i:i + 2]"), ("fastgw/proto/framing_guard.py", "data[pos:pos + 3]"),
    ("fastgw/proto/sse.py", "buf[raw_start:end]"), ("fastgw/proto/sse.py", "line[1:2]"),
    ("fastgw/proto/sse.py", "line[colon + 1:colon + 2]"),
    ("fastgw/proto/sse.py", "buf[content:lines_end]"),  # lines_end > content: the content byte is no line end
    ("fastgw/proto/sse.py", "buf[pos + 6:f]"),  # after `data: ` at pos, which holds no LF: f >= pos + 6
    ("fastgw/proto/sse.py", "buf[content:f]"),
    ("fastgw/policy/chain.py", "data[pos:sp.start]"),  # under `if sp.start > pos`
    ("fastgw/proto/sse.py", "buf[p + 6:lf]"),  # blocks_py returns first where lf - p < 6
    ("fastgw/proto/sse.py", "buf[raw_start:lf + 2]"),  # raw_start <= pos <= p <= lf
    ("fastgw/proto/server.py", "data[pos:end]"),
    ("fastgw/state/table.py", "self.mm[off:off + ENTRY]"), ("fastgw/state/table.py", "mm[_REDO_AT:_REDO_AT + 8 * n]"),
    ("fastgw/state/table.py", "mm[_REDO_RECS:_REDO_RECS + n * ENTRY]"), ("fastgw/state/table.py", "mm[off:off + ENTRY]"),
    ("fastgw/state/table.py", "mm[_OFF_BOOT:_OFF_BOOT + 16]"), ("fastgw/state/table.py", "e[24:32]"),
    ("fastgw/state/table.py", "recs[k * ENTRY:(k + 1) * ENTRY]"),
    ("fastgw/stream.py", "block[start:end]"),  # start <= i <= end
    ("fastgw/stream.py", "block[6:end if end > 0 else len(block)]"),  # the block starts with 'data: {"error"'
    ("fastgw/policy/stream/core.py", "data[i:i + piece]"),  # piece >= _PIECE_MIN > 0
    ("fastgw/policy/textscan.py", "data[i:i + piece]"),  # piece >= SLICE_PIECE > 0
    ("fastgw/policy/textscan.py", "data[pos - base:sp.start - base]"),  # under `if sp.start > pos`
    ("fastgw/policy/textscan.py", "data[pos:upto]"),  # upto = max(pos, ...), or len(data) >= every span's end
    ("fastgw/policy/textscan.py", "spans[i:i + _RECORD_RUN]"), ("fastgw/policy/textscan.py", "spans[k:k + _SPAN_RUN]"),
    ("fastgw/policy/textscan.py", "tags[k:k + _SPAN_RUN]"),  # lists, and the end is the start plus a run
    ("fastgw/providers/scope.py", "server[6:-1]"),  # a str (f"tools[{i}]")
    ("fastgw/accesslog.py", "data[start:end]"),  # end = size, or a newline's index + 1 found at or after start
    ("fastgw/proto/client.py", "data[start:end]"),  # end: a head's CR LF CR LF found at or after start, past it
    ("fastgw/proto/h1.py", "data[end:pos]"),  # pos = end + length, a Content-Length (digits: >= 0)
    ("fastgw/proto/client.py", "data[start:start + left]"),  # left: what remains of a Content-Length, > 0 there
}


def test_every_two_sided_slice_of_a_compiled_module_was_reviewed() -> None:
    found = {(path, ast.unparse(n)) for path in COMPILED for n in ast.walk(ast.parse((ROOT / path).read_text()))
             if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Slice)
             and n.slice.lower is not None and n.slice.upper is not None}
    assert found <= _REVIEWED_SLICES, sorted(found - _REVIEWED_SLICES)  # new: can its end fall before its start?


def _structs(tree: ast.AST) -> list[str]:
    """Names of the msgspec Structs a module declares."""
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            and any(ast.unparse(b).endswith("Struct") for b in node.bases)]


def test_msgspec_decodes_into_no_struct_of_a_compiled_module() -> None:
    """mypyc rewrites a compiled class's annotations (`str | None` becomes `type`): a msgspec Struct declared in a
    compiled module still builds by hand, but a decoder into it fails on every value."""
    structs = {name: path for path in COMPILED for name in _structs(ast.parse((ROOT / path).read_text()))}
    assert _structs(ast.parse("class E(msgspec.Struct, frozen=True):\n    a: int\nclass F:\n    pass\n")) == ["E"]
    decoded = set()
    for file in (ROOT / "fastgw").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("Decoder", "convert", "decode"):
                decoded |= {n.id for a in [*node.args, *(k.value for k in node.keywords)]
                            for n in ast.walk(a) if isinstance(n, ast.Name) and n.id in structs}
    assert not decoded, {name: structs[name] for name in decoded}


#: The dataclasses and NamedTuples of the compiled modules, each with why none is built on a request's way: their
#: generated constructors stay Python functions in a compiled module (an interpreted frame per instance: the
#: upstream request was one, and the quota's four asks, until issue 18 made them a plain class and Structs).
_GENERATED_CONSTRUCTORS = {
    "fastgw/providers/base.py": {"TargetRuntime": "once per target, at start-up"},
    "fastgw/policy/ratelimit.py": {"Pricing": "once per target and per plan's targets, cached by the quota",
                                   "Refusal": "for a refused request only"},
}


def _generated_constructors(tree: ast.Module) -> list[str]:
    """Names of the module-level dataclasses and NamedTuples of a module."""
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef) and (
        any(ast.unparse(d).split("(")[0].split(".")[-1] == "dataclass" for d in node.decorator_list)
        or any(ast.unparse(b).split(".")[-1] == "NamedTuple" for b in node.bases))]


def test_compiled_modules_build_no_generated_constructor_per_request() -> None:
    """A new dataclass or NamedTuple in a compiled module is listed here with the reason it stays off the
    request path, or is written as a plain class (its `__init__` compiles) or a msgspec Struct elsewhere."""
    found = {path: set(names) for path in COMPILED
             if (names := _generated_constructors(ast.parse((ROOT / path).read_text())))}
    assert found == {path: set(names) for path, names in _GENERATED_CONSTRUCTORS.items()}
    sample = ast.parse("@dataclass(slots=True)\nclass A:\n    x: int\n@dataclasses.dataclass\nclass B:\n    y: int\n"
                       "class C(typing.NamedTuple):\n    z: int\nclass D:\n    pass\n")
    assert _generated_constructors(sample) == ["A", "B", "C"]  # the check sees each form
