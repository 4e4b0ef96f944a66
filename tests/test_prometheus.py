"""fastgw.prometheus: the metrics library without its HTTP side, and the stand-ins for three standard modules the
workers no longer load (issue 18, idle worker RSS): each held to what it replaces."""

from __future__ import annotations

import calendar
import email.utils
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import exposition
from prometheus_client.core import (CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric,
                                    UnknownMetricFamily)
from prometheus_client.metrics import Counter, Enum, Gauge, Histogram, Info, Summary
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import CollectorRegistry

from fastgw import metrics, metrics_multiprocess, prometheus
from fastgw.policy import ratelimit
from fastgw.proto.writer import http_date

ROOT = Path(__file__).resolve().parent.parent

#: Label values a client could put into a model name: the escapes the text format has, and some it has not.
HOSTILE = ['plain', 'quo"te', 'back\\slash', 'new\nline', 'tab\there', 'ünï—cødé 模型', '', '\\n literal',
           '}{,="', 'end\\']


# ---- the text writer ---------------------------------------------------------------------------------------

def _filled_registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    c = Counter("req", "Requests.\nTwo lines, a back\\slash.", ("model", "status"), registry=reg)
    g = Gauge("inflight", "In flight.", registry=reg)
    h = Histogram("ttft_seconds", "TTFT.", ("model",), buckets=(0.001, 0.5, 1.0, 1e9), registry=reg)
    s = Summary("size_bytes", "Sizes.", registry=reg)
    Info("build", "Build info.", registry=reg).info({"version": "1.2.3", "odd": 'a"b'})
    Enum("state", "State.", states=["up", "down"], registry=reg).state("down")
    for i, v in enumerate(HOSTILE):
        c.labels(v, str(200 + i)).inc(i + 0.5)
        h.labels(v).observe(i * 0.3)
    g.set(-3.25)
    s.observe(1e21)

    class Custom:
        def collect(self) -> list[Metric]:
            u = UnknownMetricFamily("weird", "Unknown.", labels=["k"])
            u.add_metric(["v"], 1.0, timestamp=1_700_000_000.123)
            gh = GaugeHistogramMetricFamily("queue", "Queue.", buckets=[("1.0", 2.0), ("+Inf", 3.0)], gsum_value=4.5)
            gg = GaugeMetricFamily("specials", "Specials.", labels=["k"])
            for k, v in (("inf", float("inf")), ("ninf", float("-inf")), ("nan", float("nan")), ("big", 1.5e12),
                         ("small", 1e-9), ("int", 7.0)):
                gg.add_metric([k], v)
            cc = CounterMetricFamily("ticks", "Ticks.", value=3.0, created=1_700_000_000.5)
            return [u, gh, gg, cc]

    reg.register(Custom())  # type: ignore[arg-type]
    return reg


def test_the_writer_writes_what_the_library_writes() -> None:
    reg = _filled_registry()
    ours = prometheus.generate_latest(reg)
    assert ours == exposition.generate_latest(reg)
    # It has the cases it is meant to have, so the comparison above compares them.
    for part in (b'model="quo\\"te"', b'model="new\\nline"', b'model="back\\\\slash"', b"# TYPE req_created gauge",
                 b"# TYPE build_info gauge", b"# TYPE weird untyped", b"# TYPE queue histogram",
                 b"queue_gsum 4.5", b"weird{k=\"v\"} 1.0 1700000000123", b"+Inf", b"-Inf", b"NaN",
                 b"size_bytes_sum 1e+21",
                 "模型".encode()):
        assert part in ours, part


def test_a_name_outside_the_legacy_set_is_escaped_as_the_library_escapes_it() -> None:
    class Names:
        def collect(self) -> list[Metric]:
            out = []
            for name in ("dotted.name", "1digit", "dash-ed", "ok_name:colon", "ünï"):
                m = GaugeMetricFamily(name, "Odd name.", labels=["label.with-dots", "9lead"])
                m.add_metric(["a", "b"], 1.0)
                out.append(m)
            return out

    reg = CollectorRegistry()
    reg.register(Names())  # type: ignore[arg-type]
    ours = prometheus.generate_latest(reg)
    assert ours == exposition.generate_latest(reg)
    assert b"dotted_name{_lead=\"b\",label_with_dots=\"a\"} 1.0" in ours


def test_the_gateways_own_metrics_render_as_the_library_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(metrics, "_known_models", None)
    path = metrics.setup_master(str(tmp_path))
    try:
        metrics.request_started()
        metrics.ttft("m", "t1", 0.2)
        metrics.upstream_attempt("t1", "ok")
        for v in HOSTILE:
            metrics.policy_decision("pii", "redact", v)
        metrics.budget_spend("b", "team", 1.25)
        body, ctype = metrics.render()
        reg = CollectorRegistry()
        MultiProcessCollector(reg, path=path)
        assert body == exposition.generate_latest(reg)
        assert b'entity="quo\\"te"' in body and b"fastgw_inflight_requests 1.0" in body
        assert ctype == exposition.CONTENT_TYPE_PLAIN_0_0_4  # what the library's own handler labels this body
    finally:
        metrics.cleanup_master()


# ---- the package without its __init__ ----------------------------------------------------------------------

_HEAVY = ("http.server", "urllib.request", "wsgiref", "email", "http.client", "gzip", "tempfile", "shutil",
          "calendar", "prometheus_client.exposition")

_PROBE = """
import sys
import fastgw.cli, fastgw.master
print(",".join(m for m in %r if m in sys.modules))
import prometheus_client
hollow = "REGISTRY" not in vars(prometheus_client)
from prometheus_client import REGISTRY, generate_latest, Counter
from fastgw import prometheus
print(hollow, Counter is prometheus.Counter, type(REGISTRY).__name__, callable(generate_latest))
"""


def test_the_gateway_loads_no_http_server_client_or_temp_files_and_the_library_is_whole_when_asked() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE % (_HEAVY,)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert out[0] == "", f"the master (and so every worker) loads {out[0]}"
    # Asked for a name the gateway did not load, the package ran its own __init__: the same classes, all names.
    assert out[1] == "True True CollectorRegistry True"


# ---- the standard modules' stand-ins -----------------------------------------------------------------------

def test_the_date_header_is_email_utils_formatdate() -> None:
    rnd = random.Random(18)
    stamps = [0, 951_782_400, 4_102_444_799, 1_700_000_000, int(time.time())]
    stamps += [rnd.randrange(0, 4_102_444_800) for _ in range(2000)]
    for t in stamps:
        assert http_date(t) == email.utils.formatdate(t, usegmt=True), t


def test_a_budget_period_ends_where_calendar_timegm_says() -> None:
    rnd = random.Random(7)
    stamps = [0.0, 951_782_399.5, 951_782_400.0, 1_704_067_199.9, 1_704_067_200.0, time.time()]
    stamps += [rnd.uniform(0, 4_102_444_800) for _ in range(2000)]
    for t in stamps:
        g = time.gmtime(t)
        name, expires = ratelimit._period("day", t)
        assert (name, expires) == (f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}",
                                   calendar.timegm((g.tm_year, g.tm_mon, g.tm_mday, 0, 0, 0)) + 86400
                                   + ratelimit.RETENTION), t
        y, m = (g.tm_year + 1, 1) if g.tm_mon == 12 else (g.tm_year, g.tm_mon + 1)
        assert ratelimit._period("month", t) == (f"{g.tm_year:04d}-{g.tm_mon:02d}",
                                                 calendar.timegm((y, m, 1, 0, 0, 0)) + ratelimit.RETENTION), t


def test_the_metrics_directory_is_private_fresh_and_under_tmpdir(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    made = {metrics_multiprocess._private_dir(str(tmp_path)) for _ in range(50)}
    assert len(made) == 50
    for p in made:
        assert os.path.dirname(p) == str(tmp_path) and os.path.basename(p).startswith("fastgw-metrics-")
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    path = metrics_multiprocess.setup()
    try:
        assert os.path.dirname(path) == str(tmp_path / "t")
    finally:
        assert metrics_multiprocess.cleanup()
    assert not os.path.exists(path)
