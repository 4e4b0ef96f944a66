"""prometheus_client's metrics, values and multiprocess collector, without the package's HTTP side.

Any import of prometheus_client, even of one of its submodules, first runs the package's `__init__`. That file
imports `exposition`, which imports an HTTP server, a WSGI server and urllib's HTTP client (http.server, wsgiref,
urllib.request, email, gzip). Every worker holds those modules in its RSS but never uses them: /metrics goes
through the gateway's own server. Measured at +2.0 MB of a 31 MB idle worker (bench/RESULTS.md, 2026-12-07 15:00).

So this module registers the package without running its `__init__` (the documented `module_from_spec` recipe)
and imports only the submodules the gateway uses. A later import that asks the package for a name it lacks (a
test, another library) runs the real `__init__` in place first (a PEP 562 `__getattr__`), so it sees the whole
package. The text writer, `generate_latest`, lives in `exposition` too, so it is written again below as the library
writes it. tests/test_metrics.py holds its output byte for byte to the library's.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
__all__ = ["CONTENT_TYPE_LATEST", "Collector", "CollectorRegistry", "Counter", "Gauge", "Histogram", "Metric",
           "MultiProcessCollector", "generate_latest", "mark_process_dead", "values"]

_PACKAGE = "prometheus_client"


def _register_package() -> None:
    """Put prometheus_client in sys.modules without running its `__init__`, unless it is there already."""
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{_PACKAGE} is not installed as a package")
    pkg = importlib.util.module_from_spec(spec)
    loader, path, ran = spec.loader, list(spec.submodule_search_locations), [False]

    def complete(name: str) -> object:
        # A submodule name is the import system's to load (`from . import values` asks for the attribute first).
        if ran[0] or importlib.machinery.PathFinder.find_spec(f"{_PACKAGE}.{name}", path) is not None:
            raise AttributeError(f"module {_PACKAGE!r} has no attribute {name!r}")
        ran[0] = True
        loader.exec_module(pkg)  # the package's own __init__, in this module: the whole library from now on
        return getattr(pkg, name)

    pkg.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[_PACKAGE] = pkg


_register_package()

# (`import a.b as c`, not `from a import b`: the latter asks the package for the attribute before importing it.)
import prometheus_client.values as values  # noqa: E402
from prometheus_client.metrics import Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402
from prometheus_client.metrics_core import Metric  # noqa: E402
from prometheus_client.registry import Collector, CollectorRegistry  # noqa: E402
from prometheus_client.samples import Sample  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

#: What `generate_latest` writes: the classic text format (names escaped to the legacy character set). The
#: library's own HTTP handler labels this body 0.0.4 for a scraper that does not ask for another version.
CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"

_LEGACY_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_NOT_METRIC_RUNE = re.compile(r"[^a-zA-Z0-9_:]")
_NOT_LABEL_RUNE = re.compile(r"[^a-zA-Z0-9_]")
#: Samples the OpenMetrics model has and the text format does not: each goes into a gauge family of its own.
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
#: OpenMetrics types the text format lacks, and what the library writes for them.
_TEXT_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def _escape_name(s: str, legacy: re.Pattern[str], not_rune: re.Pattern[str]) -> str:
    """A metric or label name in the legacy character set: every other character, and a leading digit, as `_`."""
    if not s or legacy.match(s):
        return s
    s = not_rune.sub("_", s)
    return "_" + s[1:] if s[0].isdigit() else s


def _sample_line(s: Sample) -> str:
    labels = s.labels
    if labels:
        inner = ",".join(
            '{}="{}"'.format(_escape_name(k, _LEGACY_LABEL, _NOT_LABEL_RUNE),
                             v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\""))
            for k, v in sorted(labels.items()))
        labelstr = "{" + inner + "}"
    else:
        labelstr = ""
    ts = "" if s.timestamp is None else f" {int(float(s.timestamp) * 1000):d}"
    return f"{_escape_name(s.name, _LEGACY_METRIC, _NOT_METRIC_RUNE)}{labelstr} {floatToGoString(s.value)}{ts}\n"


def _help(name: str, documentation: str) -> str:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {_escape_name(name, _LEGACY_METRIC, _NOT_METRIC_RUNE)} {doc}\n"


def generate_latest(registry: Collector) -> bytes:
    """The text exposition of every metric `registry` collects, as prometheus_client's `generate_latest` writes
    it with its default escaping (underscores)."""
    out: list[str] = []
    for metric in registry.collect():
        mname, mtype, doc = metric.name, metric.type, metric.documentation
        if mtype == "counter":
            mname += "_total"
        elif mtype == "info":
            mname += "_info"
        mtype = _TEXT_TYPE.get(mtype, mtype)
        out.append(_help(mname, doc))
        out.append(f"# TYPE {_escape_name(mname, _LEGACY_METRIC, _NOT_METRIC_RUNE)} {mtype}\n")
        om: dict[str, list[str]] = {}
        for s in metric.samples:
            line = _sample_line(s)
            for suffix in _OM_SUFFIXES:
                if s.name == metric.name + suffix:
                    om.setdefault(suffix, []).append(line)
                    break
            else:
                out.append(line)
        for suffix, lines in sorted(om.items()):
            name = metric.name + suffix
            out.append(_help(name, doc))
            out.append(f"# TYPE {_escape_name(name, _LEGACY_METRIC, _NOT_METRIC_RUNE)} gauge\n")
            out.extend(lines)
    return "".join(out).encode("utf-8")
