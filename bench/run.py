"""`python -m bench run`: run several systems side by side under the same load and compare them.

    load generator ──► system under test (fastgw | fastgw-redact | fastgw-otel | nginx) ──► mock upstream (bench/upstream.py)
    load generator ─────────────────────────────────────────────────────────► mock upstream   ("direct")

Method (per repeat, systems interleaved, their order rotated from one repeat to the next):
  1. load, per upstream profile (`--upstream-profiles`) and mode (stream / nonstream): closed-loop wrk
     (or bench.loadgen) with `--connections` in flight, a `--warmup` run then a `--seconds` measured run;
     requests/s, events/s (requests/s × SSE events per stream), latency percentiles, CPU ms per request =
     utime+stime of the system's process tree (master + workers) over the run / requests completed, peak
     RSS of that tree (with wrk the CPU reading spans wrk's whole life, so the ≤ `--connections` requests
     it abandons in flight at the end cost CPU without being counted: well under 1% of a 5 s run).
     Upstream profiles: `fast`, every answer in one write (a proxy reads a whole stream in one or two
     reads); `peer`, the answer written as the peer-gateway harness's upstream wrote it, one event per
     write and loop iteration (model bench-peer of bench/upstream.py; metrics prefixed `peer_`). The same
     system costs more CPU per request behind `peer` (nginx ~1.4×: one read and one write per event)
     and its ratio to nginx changes with it, so both are reported;
  2. TTFT at concurrency 1: bench.loadgen in count mode, sequential streamed requests on one
     connection; added TTFT = the system's percentile minus direct's in the same repeat;
  3. inter-event timing: the upstream paced at `--gap-delay` per event (model bench-paced),
     sequential streams traced per event (bench.trace); added event delay = (t_i − t_0) minus
     direct's median for the same event index (bench.stream.holdback_stats), added gap = an
     inter-event gap percentile minus direct's.
The system under test is pinned to `--cpus-gateway`, the upstream, load generator and this
harness to `--cpus-load`. Reported: the median over repeats of every metric and its ratio to nginx.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench import plots, wrk
from bench.loadgen import LoadSpec, build_request, chat_body, percentile, run_load, summarize
from bench.stream import (BENCH_KEY, MODEL, REPO, RESULTS, CpuProbe, Server, _f, baseline_offsets, busy_cpu_seconds,
                          finish_run, free_port, holdback_stats, load_run, machine, policy_probe, rss_mb, tree)
from bench.systems import DEFAULT_SYSTEMS, SYSTEMS, System, redis_round_trips, start_system, start_upstream
from bench.trace import TraceSpec, run_trace
from bench.upstream import PACED_MODEL, PEER_MODEL

__all__ = ["add_arguments", "main", "METRICS"]

OUT_DIR = Path(__file__).resolve().parent / "results"
#: Upstream profiles of the load passes: the model each is asked for (bench/upstream.py writes them differently).
PROFILES = {"fast": MODEL, "peer": PEER_MODEL}
_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}

#: The reported metrics (medians over repeats in the JSON and the table). "added" = minus direct, same repeat.
METRICS = ["stream_rps", "stream_events_per_s", "stream_cpu_ms_per_req", "nonstream_rps", "nonstream_cpu_ms_per_req",
           "peer_stream_rps", "peer_stream_cpu_ms_per_req", "peer_nonstream_rps", "peer_nonstream_cpu_ms_per_req",
           "added_ttft_p50_ms", "added_ttft_p99_ms", "added_event_delay_p50_ms", "added_event_delay_p99_ms",
           "added_gap_p50_ms", "added_gap_p99_ms", "rss_mb"]
#: Also kept per run and as medians in the JSON (absolute values behind the "added" ones, cross-checks).
EXTRA = ["stream_latency_p50_ms", "stream_latency_p99_ms", "nonstream_latency_p50_ms", "nonstream_latency_p99_ms",
         "stream_upstream_cpu_ms_per_req", "nonstream_upstream_cpu_ms_per_req", "stream_requests",
         "nonstream_requests", "stream_rss_mb", "nonstream_rss_mb", "peer_stream_latency_p50_ms",
         "peer_stream_latency_p99_ms", "peer_nonstream_latency_p50_ms", "peer_nonstream_latency_p99_ms",
         "peer_stream_upstream_cpu_ms_per_req", "peer_nonstream_upstream_cpu_ms_per_req", "peer_stream_requests",
         "peer_nonstream_requests", "pss_mb", "events_per_stream", "ttft_p50_ms",
         "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms", "errors", "stream_redis_calls_per_req",
         "nonstream_redis_calls_per_req"]
#: Metrics whose ratio to nginx is reported (absolute TTFT/gap too: "added" over a ~0 nginx value is noise).
RATIOS = ["stream_rps", "stream_events_per_s", "stream_cpu_ms_per_req", "nonstream_rps", "nonstream_cpu_ms_per_req",
          "peer_stream_rps", "peer_stream_cpu_ms_per_req", "peer_nonstream_rps", "peer_nonstream_cpu_ms_per_req",
          "ttft_p50_ms", "ttft_p99_ms", "added_ttft_p50_ms", "added_ttft_p99_ms", "gap_p99_ms",
          "added_event_delay_p99_ms", "rss_mb"]


# ------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------

#: name: (default, value with --quick)
_SCALED = {"seconds": (5, 1), "warmup": (1, 0), "repeats": (3, 1), "c1_requests": (500, 40), "c1_warmup": (50, 5),
           "gap_requests": (20, 3), "gap_warmup": (3, 1), "gap_delay": (0.005, 0.002)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m bench run`."""
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated, from {', '.join(SYSTEMS)} [{','.join(DEFAULT_SYSTEMS)}]")
    p.add_argument("--seconds", type=int, help="measured seconds per load run (whole seconds: wrk's unit) [5]")
    p.add_argument("--warmup", type=int, help="unmeasured seconds of the same load before each run [1]")
    p.add_argument("--connections", "-c", type=int, default=64, help="connections in flight (closed loop)")
    p.add_argument("--events", type=int, default=50, help="content chunks per streamed answer")
    p.add_argument("--modes", default="stream,nonstream", help="load modes: stream,nonstream")
    p.add_argument("--upstream-profiles", default=None,
                   help=f"how the mock upstream writes answers for the load passes: {','.join(PROFILES)} "
                        "(fast: one write per answer; peer: one write per event, as the peer harness's "
                        "upstream) [fast,peer with wrk; fast with loadgen]")
    p.add_argument("--repeats", type=int, help="rounds of all systems (order rotated per round) [3]")
    p.add_argument("--c1-requests", type=int, help="sequential streamed requests for TTFT at concurrency 1 [500]")
    p.add_argument("--c1-warmup", type=int, help="unrecorded requests before them [50]")
    p.add_argument("--c1-gap", type=float, default=0.0,
                   help="idle seconds between the c=1 requests (0: back to back; with a gap every request finds the "
                        "system idle, its work after the previous answer done) [0]")
    p.add_argument("--gap-requests", type=int, help="paced streams traced per system and repeat [20]")
    p.add_argument("--gap-warmup", type=int, help="untraced paced streams before them [3]")
    p.add_argument("--gap-delay", type=float, help="upstream pacing for the gap pass, seconds per event [0.005]")
    p.add_argument("--load-tool", choices=["auto", "wrk", "loadgen"], default="auto",
                   help="throughput load generator: wrk, bench.loadgen, or wrk if installed")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    p.add_argument("--cpus-gateway", help="CPUs of the system under test (e.g. 0); default: the first usable CPU "
                                          "when there are 2 or more, else no pinning")
    p.add_argument("--cpus-load", help="CPUs of upstream, load generator and harness; default: the other CPUs")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: " + ", ".join(f"{k.replace('_', '-')} {v[1]}" for k, v in _SCALED.items()))
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="directory of the PNG plots (and default JSON)")
    p.add_argument("--json", type=Path, help="JSON output (default: <out-dir>/run-<UTC timestamp>.json)")
    p.add_argument("--write", action="store_true", help="append a markdown section to --results")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file for --write")
    p.add_argument("--note", default="", help="text added to the --write section heading")
    p.add_argument("--source", type=Path, default=REPO,
                   help="directory whose fastgw package is started, e.g. `git worktree add /tmp/old <commit>` "
                        "for a before/after comparison (its commit is named in the results)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and configs")


def _resolve(args: argparse.Namespace) -> None:
    for k, (normal, quick) in _SCALED.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if args.quick else normal)
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [s for s in args.system_list if s not in SYSTEMS] + [m for m in args.mode_list
                                                                if m not in ("stream", "nonstream")]
    if bad or not args.system_list or len(set(args.system_list)) != len(args.system_list):
        raise SystemExit(f"bench run: bad --systems/--modes {bad or args.systems!r}")
    if args.seconds < 1 or args.repeats < 1 or args.connections < 1:
        raise SystemExit("bench run: --seconds, --repeats and --connections must be at least 1")
    if args.load_tool == "auto":
        args.load_tool = "wrk" if wrk.available() else "loadgen"
    if args.load_tool == "wrk" and not wrk.available():
        raise SystemExit("bench run: wrk not found (apt-get install wrk) — or --load-tool loadgen")
    if args.upstream_profiles is None:
        args.upstream_profiles = ",".join(PROFILES) if args.load_tool == "wrk" else "fast"
    args.profile_list = [x.strip() for x in args.upstream_profiles.split(",") if x.strip()]
    if not args.profile_list or any(x not in PROFILES for x in args.profile_list):
        raise SystemExit(f"bench run: bad --upstream-profiles {args.upstream_profiles!r} (from {','.join(PROFILES)})")
    if args.load_tool == "loadgen" and args.profile_list != ["fast"]:
        raise SystemExit("bench run: --upstream-profiles peer needs --load-tool wrk")


def _cpus(args: argparse.Namespace) -> tuple[list[int] | None, list[int] | None, str]:
    """(system CPUs, load CPUs, description); no pinning on a single CPU."""
    from bench.loadgen import parse_cpus
    avail = sorted(os.sched_getaffinity(0))
    gw, load = parse_cpus(args.cpus_gateway), parse_cpus(args.cpus_load)
    if gw is None and load is None and len(avail) >= 2:
        gw, load = avail[:1], avail[1:]
    elif gw is not None and load is None:
        load = [c for c in avail if c not in gw] or None
    elif load is not None and gw is None:
        gw = [c for c in avail if c not in load] or None
    if gw is None and load is None:
        return None, None, f"none ({len(avail)} usable CPU: everything shares it)"
    return gw, load, f"system under test on CPU {_cpu_text(gw)}, upstream + load generator on CPU {_cpu_text(load)}"


def _cpu_text(cpus: list[int] | None) -> str:
    return "any" if not cpus else ",".join(map(str, cpus))


# ------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------

def _pss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _tree_mem(pid: int) -> tuple[float, float]:
    """(sum of VmRSS, sum of PSS) over the process tree, MB. RSS counts pages a forked worker still shares
    with its master twice; PSS splits them, so its sum is what the tree really holds."""
    pids = tree(pid)
    return (sum(r for p in pids if (r := rss_mb(p)) is not None),
            sum(r for p in pids if (r := _pss_mb(p)) is not None))


def load_pass(args, system: System, upstream: Server, mode: str, scripts: dict[str, Path],
              profile: str = "fast") -> dict:
    """One closed-loop run (after its warm-up) against `system` behind the upstream `profile`: throughput, CPU per
    request, RSS (keys prefixed `peer_` for the peer profile)."""
    pfx = ("" if profile == "fast" else profile + "_") + mode + "_"
    script = scripts[pfx + "lua"]
    if args.load_tool == "loadgen":
        # bench.stream.load_run: shared absolute window, /proc read at its edges, RSS sampled inside it.
        ns = SimpleNamespace(warmup=args.warmup, duration=args.seconds, connections=args.connections, clients=1,
                             grace=5.0, client_cpus=_cpu_text(args.load_cpus) if args.load_cpus else None,
                             events=args.events)
        r = load_run(ns, mode, system.name, system.port, system.server, upstream)
        s, rss = r.summary, r.gateway_rss_mb or {}
        return {pfx + "rps": s.rps, pfx + "requests": s.requests, pfx + "cpu_ms_per_req": r.gateway_cpu_ms_per_req,
                pfx + "upstream_cpu_ms_per_req": r.upstream_cpu_ms_per_req,
                pfx + "latency_p50_ms": s.total_ms["p50"], pfx + "latency_p99_ms": s.total_ms["p99"],
                pfx + "rss_mb": ((rss.get("master") or 0) + (rss.get("workers_total") or 0)) if system.pid else None,
                pfx + "errors": sum(s.errors.values()) + s.stalled, "_warnings": r.warnings}
    url = f"http://127.0.0.1:{system.port}/v1/chat/completions"
    kw = dict(threads=args.wrk_threads, cpus=args.load_cpus)
    if args.warmup:
        wrk.run(url, script, args.warmup, args.connections, **kw)
    probes = [CpuProbe(p) for p in (system.pid, upstream.pid) if p]
    for p in probes:
        p.start()
    calls0 = redis_round_trips(system.redis_port) if system.redis_port else 0
    proc = wrk.start(url, script, args.seconds, args.connections, **kw)
    peak, peak_pss = 0.0, 0.0
    try:
        while proc.poll() is None:  # memory of the system's tree, sampled while the load runs
            time.sleep(0.2)
            if system.pid and proc.poll() is None:
                rss, pss = _tree_mem(system.pid)
                peak, peak_pss = max(peak, rss), max(peak_pss, pss)
    except BaseException:  # interrupted: stop wrk now rather than wait for its run to end
        proc.kill()
        proc.wait()
        raise
    res = wrk.finish(proc, timeout=args.seconds + 30)
    cpu = [p.stop()[0] for p in probes]
    sys_cpu, up_cpu = (cpu[0], cpu[1]) if system.pid else (None, cpu[0])
    n = res.requests
    # wrk abandons up to --connections requests in flight at its end: they were admitted but are not counted.
    calls = (redis_round_trips(system.redis_port) - calls0) / n if system.redis_port and n else None
    return {pfx + "rps": res.rps, pfx + "requests": n, pfx + "redis_calls_per_req": calls,
            pfx + "cpu_ms_per_req": sys_cpu * 1000 / n if sys_cpu is not None and n else None,
            pfx + "upstream_cpu_ms_per_req": up_cpu * 1000 / n if n else None,
            pfx + "latency_p50_ms": res.latency_ms.get("p50"), pfx + "latency_p99_ms": res.latency_ms.get("p99"),
            pfx + "rss_mb": peak or None, pfx + "pss_mb": peak_pss or None, pfx + "errors": sum(res.errors.values()),
            "_warnings": [f"{mode}: wrk errors {res.errors}"] if res.errors else []}


def c1_pass(args, system: System) -> tuple[dict, list[float]]:
    """Sequential streamed requests on one connection: TTFT percentiles (ms), events per stream, raw TTFTs."""
    req = build_request("127.0.0.1", system.port, "/v1/chat/completions", chat_body(MODEL, True),
                        {"Authorization": _HEADERS["Authorization"]})
    spec = LoadSpec(host="127.0.0.1", port=system.port, request=req, mode="stream", connections=1, clients=1,
                    requests=args.c1_requests, warmup_requests=args.c1_warmup, cpus=args.load_cpus, gap=args.c1_gap,
                    timeout=60.0 + (args.c1_requests + args.c1_warmup) * args.c1_gap)
    t = time.monotonic()
    raw = run_load(spec)
    s = summarize(raw, time.monotonic() - t)
    w = [f"c=1: events per stream {s.events_min}..{s.events_max}"] if s.events_min != s.events_max else []
    w += [f"c=1: errors {s.errors}"] if s.errors or s.fatal else []
    return ({"ttft_p50_ms": s.ttfb_ms["p50"], "ttft_p99_ms": s.ttfb_ms["p99"], "events_per_stream": s.events_min,
             "c1_errors": sum(s.errors.values()) + len(s.fatal), "_warnings": w},
            [x * 1000 for x in raw["ttfb"]])


def gap_pass(args, system: System) -> tuple[dict, list[list[float]]]:
    """Paced streams traced per event: inter-event gap percentiles (ms) and the offsets t_i - t_0 (s)."""
    req = build_request("127.0.0.1", system.port, "/v1/chat/completions", chat_body(PACED_MODEL, True),
                        {"Authorization": _HEADERS["Authorization"]})
    per = args.gap_delay * (args.events + 3)
    res = run_trace(TraceSpec(host="127.0.0.1", port=system.port, request=req, requests=args.gap_requests,
                              warmup=args.gap_warmup, timeout=30 + (args.gap_requests + args.gap_warmup) * per * 3))
    offsets = [[t - r.times[0] for t in r.times] for r in res.responses if r.times]
    gaps = sorted(b - a for r in res.responses for a, b in zip(r.times, r.times[1:]))
    return ({"gap_p50_ms": _ms(percentile(gaps, 50)), "gap_p99_ms": _ms(percentile(gaps, 99)),
             "gap_errors": sum(res.errors.values()),
             "_warnings": [f"gap pass: errors {res.errors}"] if res.errors else []}, offsets)


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def add_relative(runs: dict[str, dict], offsets: dict[str, list[list[float]]], delay: float) -> None:
    """Fill the "added" metrics of one repeat's runs from the direct run of the same repeat."""
    d = runs.get("direct")
    base = baseline_offsets(offsets["direct"]) if d and offsets.get("direct") else None
    for name, m in runs.items():
        if not d or name == "direct":
            continue
        m["added_ttft_p50_ms"] = _sub(m.get("ttft_p50_ms"), d.get("ttft_p50_ms"))
        m["added_ttft_p99_ms"] = _sub(m.get("ttft_p99_ms"), d.get("ttft_p99_ms"))
        m["added_gap_p50_ms"] = _sub(m.get("gap_p50_ms"), d.get("gap_p50_ms"))
        m["added_gap_p99_ms"] = _sub(m.get("gap_p99_ms"), d.get("gap_p99_ms"))
        hb = holdback_stats(offsets.get(name) or [], delay, base).get("vs_baseline") if base else None
        m["added_event_delay_p50_ms"] = hb.get("added_ms_p50") if hb else None
        m["added_event_delay_p99_ms"] = hb.get("added_ms_p99") if hb else None


def summarize_runs(system_list: list[str], runs: list[dict[str, dict]]) -> dict:
    """Per system: the runs, the median of each metric over repeats, and the ratios of medians to nginx."""
    out: dict = {}
    for name in system_list:
        rs = [r[name] for r in runs if name in r]
        med = {}
        for key in METRICS + EXTRA:
            vals = [r[key] for r in rs if r.get(key) is not None]
            med[key] = statistics.median(vals) if vals else None
        out[name] = {"median": med, "runs": rs}
    ref = out.get("nginx", {}).get("median")
    for name, o in out.items():
        o["ratio_to_nginx"] = {k: (o["median"][k] / ref[k] if ref and o["median"].get(k) is not None
                                   and ref.get(k) not in (None, 0) and o["median"][k] > 0 and ref[k] > 0 else None)
                               for k in RATIOS} if ref else {}
    return out


# ------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------

def _pair(m: dict, a: str, b: str, nd: int) -> str:
    return f"{_f(m.get(a), nd)} / {_f(m.get(b), nd)}"


def table(results: dict) -> list[str]:
    """Markdown table: systems × medians, then the ratios to nginx."""
    cols = [("stream req/s", "stream_rps", None, 0), ("events/s", "stream_events_per_s", None, 0),
            ("CPU ms/req stream", "stream_cpu_ms_per_req", None, 3),
            ("non-stream req/s", "nonstream_rps", None, 0),
            ("CPU ms/req non-stream", "nonstream_cpu_ms_per_req", None, 3),
            ("added TTFT p50 / p99 c=1 (ms)", "added_ttft_p50_ms", "added_ttft_p99_ms", 3),
            ("added event delay p50 / p99 (ms)", "added_event_delay_p50_ms", "added_event_delay_p99_ms", 3),
            ("added gap p50 / p99 (ms)", "added_gap_p50_ms", "added_gap_p99_ms", 3),
            ("RSS / PSS MB", "rss_mb", "pss_mb", 1), ("errors", "errors", None, 0)]
    lines = ["| system | " + " | ".join(c[0] for c in cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for name, o in results.items():
        m = o["median"]
        lines.append(f"| {name} | " + " | ".join(_pair(m, a, b, nd) if b else _f(m.get(a), nd)
                                                for _, a, b, nd in cols) + " |")
    if any(o["ratio_to_nginx"] for o in results.values()):
        rc = [("stream req/s", "stream_rps"), ("events/s", "stream_events_per_s"),
              ("CPU/req stream", "stream_cpu_ms_per_req"), ("non-stream req/s", "nonstream_rps"),
              ("CPU/req non-stream", "nonstream_cpu_ms_per_req"), ("TTFT p50 c=1", "ttft_p50_ms"),
              ("TTFT p99 c=1", "ttft_p99_ms"), ("added TTFT p50", "added_ttft_p50_ms"),
              ("gap p99", "gap_p99_ms"), ("RSS", "rss_mb")]
        lines += ["", "Ratio to nginx (medians; system / nginx — above 1 is better for req/s and events/s, "
                      "below 1 for the rest):", "",
                  "| system | " + " | ".join(c[0] for c in rc) + " |", "| --- |" + " ---: |" * len(rc)]
        for name, o in results.items():
            r = o["ratio_to_nginx"]
            lines.append(f"| {name} | " + " | ".join("-" if r.get(k) is None else f"{r[k]:.2f}×" for _, k in rc)
                         + " |")
    if any(o["median"].get("peer_stream_cpu_ms_per_req") or o["median"].get("peer_nonstream_cpu_ms_per_req")
           for o in results.values()):
        lines += ["", "Both upstream profiles (CPU ms per request, and its ratio to nginx's in the same profile): "
                      "fast = every answer in one upstream write, peer = one write per event, as the peer "
                      "harness's upstream:", "",
                  "| system | stream fast | stream peer | non-stream fast | non-stream peer | "
                  "× nginx stream fast / peer | × nginx non-stream fast / peer |",
                  "| --- |" + " ---: |" * 6]
        for name, o in results.items():
            m, r = o["median"], o["ratio_to_nginx"]

            def x(k: str) -> str:
                return "-" if r.get(k) is None else f"{r[k]:.2f}×"
            lines.append(f"| {name} | {_f(m.get('stream_cpu_ms_per_req'), 3)} | "
                         f"{_f(m.get('peer_stream_cpu_ms_per_req'), 3)} | {_f(m.get('nonstream_cpu_ms_per_req'), 3)} "
                         f"| {_f(m.get('peer_nonstream_cpu_ms_per_req'), 3)} | {x('stream_cpu_ms_per_req')} / "
                         f"{x('peer_stream_cpu_ms_per_req')} | {x('nonstream_cpu_ms_per_req')} / "
                         f"{x('peer_nonstream_cpu_ms_per_req')} |")
    return lines


def markdown(args, meta: dict, results: dict, pngs: dict[str, Path], notes: list[str]) -> list[str]:
    """The section appended to --results by --write."""
    m = meta["machine"]
    base = args.results.resolve().parent
    head = f"## {meta['date']} — `bench run`: {', '.join(args.system_list)}" + (f" — {args.note}" if args.note else "")
    lines = [head,
             "",
             f"- machine: {m['nproc']} CPUs usable ({m['cpu_count']} online), {m['cpu_model']}, Linux {m['kernel']}, "
             f"Python {m['python']}; load average before: {' '.join(m['loadavg_before'])}; busy cores before the "
             f"runs (servers idle): {_f(meta.get('background_busy_cores'))}",
             f"- fastgw commit {m['commit']} (working tree may have had uncommitted changes); nginx: "
             f"{meta.get('nginx') or 'not run'}",
             f"- command: `{meta['command']}`",
             f"- method: closed-loop {args.load_tool} load, {args.connections} connections, {args.warmup} s warm-up + "
             f"{args.seconds} s measured per run, modes {', '.join(args.mode_list)}; streamed answers of "
             f"{args.events} content chunks + role, finish and [DONE] ({args.events + 3} events) from a zero-delay "
             f"mock upstream (bench/upstream.py), upstream profiles {', '.join(args.profile_list)} (fast: one write "
             f"per answer; peer: one write per event and loop iteration); CPU pinning: {meta['pinning']}; {args.repeats} repeat(s), systems "
             f"interleaved with the order rotated per repeat, medians shown. CPU ms/req = utime+stime of the "
             f"system's processes (master + worker) over the run / requests completed; RSS / PSS = peak sum over "
             f"them under load (RSS counts pages shared by master and worker twice, PSS splits them). TTFT: "
             f"bench.loadgen, {args.c1_requests} sequential streamed requests (concurrency 1"
             f"{f', {args.c1_gap * 1000:g} ms idle between them' if args.c1_gap else ', back to back'}); added = the system's "
             f"percentile minus direct's. Event delay and gaps: upstream paced at {args.gap_delay * 1000:g} ms per "
             f"event, {args.gap_requests} streams traced per system (bench.trace); added event delay = (t_i − t_0) "
             f"minus direct's median for the same event index; added gap = inter-event gap percentile minus "
             f"direct's.",
             "- policy probe (an answer with one email): "
             + "; ".join(f"{k}: {v}" for k, v in meta.get("policy_probe", {}).items()), ""]
    lines += table(results) + [""]
    if pngs:
        lines.append(" ".join(f"![{k}]({os.path.relpath(p.resolve(), base)})" for k, p in pngs.items()))
        lines.append("")
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    return lines


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def _on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt  # unwinds through the `finally` that stops every process


def _alive(servers: list[Server]) -> None:
    for s in servers:
        if s.proc.poll() is not None:
            raise RuntimeError(f"{s.name} exited with {s.proc.returncode}\n{s.log_tail()}")


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the comparison described by `args` (see add_arguments); `argv` is recorded as the command."""
    _resolve(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    args.gw_cpus, args.load_cpus, pinning = _cpus(args)
    now = _dt.datetime.now(_dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(args.source), "pinning": pinning,
            "command": "python -m bench " + shlex.join(argv), "load_tool": args.load_tool,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    args.json = args.json or args.out_dir / f"run-{stamp}.json"
    tmp = Path(tempfile.mkdtemp(prefix="fastgw-bench-run-"))
    scripts = {}
    for profile, model in PROFILES.items():
        for mode in ("stream", "nonstream"):
            key = ("" if profile == "fast" else profile + "_") + mode + "_lua"
            scripts[key] = tmp / f"{profile}-{mode}.lua"
            scripts[key].write_text(wrk.lua_script(chat_body(model, mode == "stream"), _HEADERS))
    servers: list[Server] = []
    systems: dict[str, System] = {}
    runs: list[dict[str, dict]] = []
    ttfts: dict[str, list[float]] = {s: [] for s in args.system_list}
    notes: list[str] = []     # context for the reader
    problems: list[str] = []  # failed checks, errors: they make the exit status 2
    old_affinity = os.sched_getaffinity(0)
    rc = 0
    try:
        up_port = free_port()
        upstream = start_upstream(tmp, up_port, args.events, args.gap_delay, args.load_cpus)
        servers.append(upstream)
        upstream.wait_ready(30)
        for name in args.system_list:
            s = start_system(name, tmp, free_port(), up_port, args.gw_cpus, args.log_level, args.source,
                             args.load_cpus)
            systems[name] = s
            if s.server:
                servers.append(s.server)
        for s in systems.values():
            if s.server:
                s.server.wait_ready(60)
        if "nginx" in systems:
            meta["nginx"] = subprocess.run([systems["nginx"].server.cmd[0], "-v"], capture_output=True,
                                           text=True).stderr.strip()
        if args.load_cpus:
            os.sched_setaffinity(0, args.load_cpus)  # the harness (and the clients it forks) stay off the SUT's CPU
        b0, t0 = busy_cpu_seconds(), time.monotonic()
        time.sleep(0.5)
        meta["background_busy_cores"] = (busy_cpu_seconds() - b0) / (time.monotonic() - t0)
        meta["policy_probe"] = {n: policy_probe(s.port) for n, s in systems.items()}
        for n, got in meta["policy_probe"].items():
            want = "redacted" if n == "fastgw-redact" else "passed through"
            if got != want:
                problems.append(f"policy probe {n}: {got!r}, expected {want!r}")
        print(f"systems: {', '.join(f'{n} :{s.port} pid {s.pid}' for n, s in systems.items())}; upstream :{up_port}; "
              f"pinning: {pinning}; load: {args.load_tool}; logs in {tmp}", flush=True)
        for r in range(args.repeats):
            k = r % len(args.system_list)
            order = args.system_list[k:] + args.system_list[:k]
            cur: dict[str, dict] = {n: {} for n in order}
            offsets: dict[str, list[list[float]]] = {}
            for profile in args.profile_list:
                for mode in args.mode_list:
                    for n in order:
                        _alive(servers)
                        print(f"[{r + 1}/{args.repeats}] {mode} load, {profile} upstream: {n} ...", flush=True)
                        m = load_pass(args, systems[n], upstream, mode, scripts, profile)
                        for x in m.pop("_warnings"):  # a saturated Python client is context, not a failure
                            (notes if "load generator at" in x else problems).append(f"{n} (repeat {r + 1}): {x}")
                        cur[n].update(m)
            for n in order:
                _alive(servers)
                print(f"[{r + 1}/{args.repeats}] TTFT c=1 and paced gaps: {n} ...", flush=True)
                c1, samples = c1_pass(args, systems[n])
                ttfts[n] += samples
                g, offsets[n] = gap_pass(args, systems[n])
                problems += [f"{n} (repeat {r + 1}): {x}" for x in c1.pop("_warnings") + g.pop("_warnings")]
                cur[n].update(c1)
                cur[n].update(g)
            for n, m in cur.items():
                m["errors"] = sum(v or 0 for k, v in m.items() if k.endswith("errors") and k != "errors")
                if m.get("stream_rps") is not None and m.get("events_per_stream"):
                    m["stream_events_per_s"] = m["stream_rps"] * m["events_per_stream"]
                for k in ("rss_mb", "pss_mb"):
                    keys = [f"{pf}{md}_{k}" for pf in ("", "peer_") for md in ("stream", "nonstream")]
                    m[k] = max((m[x] for x in keys if m.get(x)), default=None)
                m["repeat"], m["position"] = r + 1, order.index(n) + 1
            add_relative(cur, offsets, args.gap_delay)
            for m in cur.values():  # every metric in every run: None where it does not apply (direct's CPU)
                for k in METRICS + EXTRA:
                    m.setdefault(k, None)
            runs.append(cur)
            for n, m in cur.items():
                if m.get("events_per_stream") not in (None, args.events + 3):
                    problems.append(f"{n}: {m['events_per_stream']} events per stream, expected {args.events + 3}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    except RuntimeError as e:
        print(f"bench run: {e}", file=sys.stderr)
        rc = 1
    finally:
        for s in systems.values():  # systems first, so they do not see their upstream vanish mid-request
            s.stop()
        if servers:
            servers[0].stop()
        os.sched_setaffinity(0, old_affinity)
    if "direct" not in args.system_list:
        notes.append("direct was not run: no \"added\" TTFT, event delay or gap figures")
    if not runs:
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        return rc or 1
    results = summarize_runs(args.system_list, runs)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plots.make_all(results, ttfts, args.out_dir, f"run-{stamp}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**meta, "systems": results, "notes": notes, "problems": problems,
                                     "plots": {k: str(p) for k, p in pngs.items()},
                                     "orders": [list(r) for r in runs]}, indent=2))
    lines = markdown(args, meta, results, pngs, notes + [f"CHECK {p}" for p in problems])
    print("\n" + "\n".join(lines))
    print(f"JSON: {args.json}; plots: {', '.join(str(p) for p in pngs.values())}")
    return finish_run(args, lines, rc, problems, tmp)
