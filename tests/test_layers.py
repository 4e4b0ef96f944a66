"""The layer table of DESIGN.md, enforced from the source: who may import whom, no import cycles, bench stays outside.

Every `fastgw` import counts for the layer rules: at module level, inside a function (a lazy
import is still a dependency) and under `if TYPE_CHECKING:`. Cycles are looked for among the
imports that run when a module is imported (module level, class bodies included; functions and
TYPE_CHECKING blocks excluded). Each test lists every violation it finds, not only the first.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Package below `fastgw` -> the packages it may import (itself included). Top-level modules (config, app,
#: cli, master, worker, ...) may import every layer. A new package must be placed in this table.
ALLOWED: dict[str, frozenset[str]] = {
    "proto": frozenset({"proto"}),
    "scan": frozenset({"scan"}),
    "api": frozenset({"api", "proto"}),
    "providers": frozenset({"providers", "api", "proto"}),
    # proto for its codecs; state is the shared-counter package the quota policies will use.
    "policy": frozenset({"policy", "scan", "api", "proto", "state"}),
    # The client APIs served through the chat core: chat requests and chunks in, another API's bodies and events out.
    "front": frozenset({"front", "api", "proto", "providers"}),
    "state": frozenset({"state"}),
}
TOP = "top"
#: The only module that imports the OpenTelemetry SDK, and the only one that imports it: `fastgw.telemetry`, lazily
#: (in a function), so that a gateway without `telemetry:` never loads it (see fastgw/telemetry.py).
OTEL_MODULE = "fastgw.telemetry_sdk"
OTEL_LOADER = "fastgw.telemetry"
#: The only bench modules that import fastgw: they measure its functions in-process (their docstrings say why).
BENCH_INTERNALS = frozenset({"bench/micro.py", "bench/pii_eval.py", "bench/scan_worst.py",
                             "bench/telemetry_cost.py"})


@dataclass(frozen=True)
class Edge:
    src: str  #: the importing module
    dst: str  #: the imported fastgw module (as named: one not written yet, such as fastgw.state, keeps its name)
    file: str
    line: int
    at_import: bool  #: runs when `src` is imported (not in a function, not under TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.src} imports {self.dst}"


# ---- reading imports --------------------------------------------------------------------------------------

def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, at_import: bool = True) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under `node`, with whether it runs when the module is imported."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, at_import
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        at_import = False
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for s in node.body:
            yield from _import_nodes(s, False)
        for s in node.orelse:
            yield from _import_nodes(s, at_import)
        return
    for child in ast.iter_child_nodes(node):
        yield from _import_nodes(child, at_import)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, pkg: str, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            anchor = module.split(".") if is_pkg else module.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        # `from fastgw.policy import audit` imports the module fastgw.policy.audit when there is one.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    return [n for n in names if n == pkg or n.startswith(pkg + ".")]


def read_edges(root: Path, pkg: str = "fastgw", sources: list[Path] | None = None) -> list[Edge]:
    """Every import of `pkg` made by the `sources` (default: `pkg`'s own modules), files relative to `root`."""
    own = sorted((root / pkg).rglob("*.py"))
    # ... and the hand-written C modules (the Makefile's NATIVE_C: `from fastgw.state import _tablec` imports the
    # module fastgw.state._tablec, which imports nothing of the package).
    known = {_module_name(p, root) for p in [*own, *(root / pkg).rglob("*.c")]}
    edges: list[Edge] = []
    for path in sources if sources is not None else own:
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, at_import in _import_nodes(tree):
            for dst in _targets(node, module, path.name == "__init__.py", pkg, known):
                if dst != module:
                    edges.append(Edge(module, dst, str(path.relative_to(root)), node.lineno, at_import))
    return edges


# ---- the rules ----------------------------------------------------------------------------------------------

def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else TOP


def layer_violations(edges: list[Edge]) -> list[str]:
    out: list[str] = []
    for e in edges:
        src = layer_of(e.src)
        if src == TOP:
            continue
        allowed = ALLOWED.get(src)
        if allowed is None:
            out.append(f"{e.file}: package fastgw.{src} is not in the layer table (tests/test_layers.py ALLOWED)")
        elif layer_of(e.dst) not in allowed:
            out.append(f"{e}: fastgw.{src} may import only {', '.join(sorted(allowed))}")
    return sorted(set(out))


def cycles(edges: list[Edge]) -> list[str]:
    """One path per strongly connected component of the at-import graph, e.g. 'a -> b -> a'."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.at_import:
            graph.setdefault(e.src, set()).add(e.dst)
            graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is a few dozen modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [" -> ".join(_cycle_path(graph, comp)) for comp in comps]


def _cycle_path(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """The shortest way from the component's first module back to itself."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def _report(what: str, problems: list[str]) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


# ---- the tests ----------------------------------------------------------------------------------------------

def test_each_layer_imports_only_the_layers_below_it() -> None:
    problems = layer_violations(read_edges(ROOT))
    assert not problems, _report("import(s) against the layer table", problems)


def test_no_import_cycles() -> None:
    found = cycles(read_edges(ROOT))
    assert not found, _report("import cycle(s) at import time", found)


def test_bench_starts_fastgw_but_imports_it_only_to_measure_internals() -> None:
    sources = sorted((ROOT / "bench").rglob("*.py"))
    problems = [str(e) for e in read_edges(ROOT, sources=sources) if e.file not in BENCH_INTERNALS]
    assert not problems, _report("bench import(s) of fastgw", problems)
    for f in BENCH_INTERNALS:
        doc = ast.get_docstring(ast.parse((ROOT / f).read_text(encoding="utf-8"))) or ""
        assert "imports fastgw" in doc, f"{f}'s docstring must say why it imports fastgw internals"


def otel_violations(root: Path) -> list[str]:
    """Imports of `opentelemetry` outside OTEL_MODULE, and imports of OTEL_MODULE other than OTEL_LOADER's lazy
    one (TYPE_CHECKING imports cost nothing at run time and are allowed)."""
    out: list[str] = []
    for path in sorted((root / "fastgw").rglob("*.py")):
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, at_import in _type_checked_or_not(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            where = f"{path.relative_to(root)}:{node.lineno}"
            for name in names:
                if name.split(".")[0] == "opentelemetry" and module != OTEL_MODULE and at_import is not None:
                    out.append(f"{where}: {module} imports {name}: only {OTEL_MODULE} may")
                if name == OTEL_MODULE and at_import is not None and (module != OTEL_LOADER or at_import):
                    out.append(f"{where}: {module} imports {name}: only {OTEL_LOADER} may, inside a function")
    return out


def _type_checked_or_not(node: ast.AST, at_import: bool = True
                         ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool | None]]:
    """Every import with whether it runs at import time (True), later (False) or never (None: TYPE_CHECKING)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, at_import
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        at_import = False
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for s in node.body:
            for imp, _ in _import_nodes(s):
                yield imp, None
        for s in node.orelse:
            yield from _type_checked_or_not(s, at_import)
        return
    for child in ast.iter_child_nodes(node):
        yield from _type_checked_or_not(child, at_import)


def test_only_the_telemetry_sdk_module_imports_opentelemetry_and_only_lazily() -> None:
    problems = otel_violations(ROOT)
    assert not problems, _report("import(s) of the OpenTelemetry SDK outside its place", problems)


def test_the_otel_rule_reports_eager_and_stray_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "fastgw"
    pkg.mkdir()
    (pkg / "telemetry.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from fastgw.telemetry_sdk import R\ndef setup():\n"
                                      "    from fastgw.telemetry_sdk import R\n")
    (pkg / "telemetry_sdk.py").write_text("import opentelemetry.sdk\n")
    assert otel_violations(tmp_path) == []
    (pkg / "app.py").write_text("from opentelemetry import trace\nimport fastgw.telemetry_sdk\n")
    (pkg / "telemetry.py").write_text("from fastgw.telemetry_sdk import R\n")
    assert otel_violations(tmp_path) == [
        "fastgw/app.py:1: fastgw.app imports opentelemetry: only fastgw.telemetry_sdk may",
        "fastgw/app.py:2: fastgw.app imports fastgw.telemetry_sdk: only fastgw.telemetry may, inside a function",
        "fastgw/telemetry.py:1: fastgw.telemetry imports fastgw.telemetry_sdk: only fastgw.telemetry may, inside a "
        "function",
    ]


def test_the_walker_sees_what_the_rules_need() -> None:
    """The real tree has the edges the rules are about (an empty walk would pass every rule)."""
    edges = read_edges(ROOT)
    pairs = {(e.src, e.dst) for e in edges}
    assert ("fastgw.config", "fastgw.policy.pii") in pairs
    assert ("fastgw.policy.chain", "fastgw.policy.audit") in pairs  # lazy, inside a method
    assert {layer_of(e.src) for e in edges} >= {"proto", "scan", "api", "providers", "policy", TOP}


def test_rules_report_every_violation_with_its_place(tmp_path: Path) -> None:
    pkg = tmp_path / "fastgw"
    for d in ("proto", "policy", "scan"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from fastgw.policy import rules\n")
    (pkg / "proto" / "wire.py").write_text("def f():\n    from fastgw.policy.rules import X\n")
    (pkg / "policy" / "rules.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import other\nif TYPE_CHECKING:\n    import fastgw.app\n"
        "from fastgw import config\n")
    (pkg / "policy" / "other.py").write_text("from fastgw.scan import x\n")
    (pkg / "scan" / "x.py").write_text("class A:\n    import fastgw.policy.other\n")
    edges = read_edges(tmp_path)
    assert layer_violations(edges) == [
        "fastgw/policy/rules.py:4: fastgw.policy.rules imports fastgw.app: fastgw.policy may import only "
        "api, policy, proto, scan, state",
        "fastgw/policy/rules.py:5: fastgw.policy.rules imports fastgw.config: fastgw.policy may import only "
        "api, policy, proto, scan, state",
        "fastgw/proto/wire.py:2: fastgw.proto.wire imports fastgw.policy.rules: fastgw.proto may import only proto",
        "fastgw/scan/x.py:2: fastgw.scan.x imports fastgw.policy.other: fastgw.scan may import only scan",
    ]
    # the lazy and TYPE_CHECKING imports make no cycle; the module-level and class-body ones do
    assert sorted(cycles(edges)) == [
        "fastgw.config -> fastgw.policy.rules -> fastgw.config",
        "fastgw.policy.other -> fastgw.scan.x -> fastgw.policy.other",
    ]
