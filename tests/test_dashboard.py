"""The Grafana dashboard in examples/ (issue 17) queries only metrics the gateway exports, and covers what an
operator opens it for."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from fastgw import metrics
from tests.support.procs import REPO_ROOT

DASHBOARD = REPO_ROOT / "examples" / "grafana" / "fastgw-dashboard.json"


def _exported() -> set[str]:
    """Every sample name the gateway's metrics can produce (counters' _total, histograms' _bucket/_sum/_count)."""
    reg = CollectorRegistry()
    metrics._Metrics(reg, None)
    names: set[str] = set()
    for fam in reg.collect():
        if fam.type == "counter":
            names |= {fam.name + "_total"}
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(fam.name)
    return names


def test_every_query_names_an_exported_metric() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs
    exported = _exported()
    used = {name for e in exprs for name in re.findall(r"\bfastgw_[a-z_]+", e)}
    assert used and used <= exported, used - exported


def test_the_dashboard_covers_what_operators_look_for() -> None:
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    for metric in ("fastgw_requests_total", "fastgw_ttft_seconds_bucket", "fastgw_inter_event_seconds_bucket",
                   "fastgw_tokens_total", "fastgw_budget_spend_usd", "fastgw_policy_decisions_total",
                   "fastgw_circuit_open", "fastgw_worker_restarts_total"):
        assert metric in exprs, metric
