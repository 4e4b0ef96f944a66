"""`python -m bench scale`: the costs that should stay flat as the work grows (issue 18), one table each.

    load generator ──► fastgw serve (provider openai) ──► mock upstream (bench/upstream.py)

  length    gateway CPU per event vs stream length (`--lengths`, default 50, 500, 5,000 content chunks per
            streamed answer), pass-through and with the pii-detector (redact) + safety-filter chain. Zero-delay
            upstream; per cell a count-mode closed-loop run of bench.loadgen (`--connections`) with about
            `--length-events` events in all, so every cell delivers the same number of events; CPU = utime+stime
            of the gateway master + worker (/proc, schedstat: ns) over the whole run ÷ events delivered (role, content, finish
            and [DONE] chunks). Cells interleaved, `--repeats` rounds, medians.
  streams   per-event CPU and RSS per stream vs concurrent paced streams (`--streams`, default 10, 100, 1,000,
            5,000) held open on ONE gateway worker (a fresh gateway per size): the upstream paces one event every
            `--delay` s (model bench-paced) and every stream outlasts the measured window; bench.streams2k's
            clients open the streams over a ramp (one connection each, `--clients` processes) and stamp every
            event. Reported: events/s delivered, gateway CPU µs per event and cores (full = ≥ 0.9 of its one
            core), worker RSS idle → steady (median of samples in the window) and the growth per open stream,
            inter-event gap percentiles and stalls (a gap > `--stall` s, far above the pacing). With `--chain`,
            each size also through a gateway with the pii-detector (redact) + safety-filter chain. With `--nginx`,
            each size also through nginx (bench run's streaming proxy, one worker, pinned like the gateway) in
            front of a fresh paced upstream: the same events' cost in a C proxy on the same box, since most of
            a paced event's CPU is the kernel's (a wake-up, a read and a write per event) whoever proxies it.
  idle      worker RSS per open idle stream (`--idle-streams`, default 1,000, 2,000 on ONE worker, a fresh gateway
            per size): every stream got its head and first event, and the upstream (model bench-paced, one event
            an hour) sends nothing more; RSS after all are open, minus the worker's RSS before, ÷ streams. The
            state a stream holds while it waits (kernel socket buffers are not RSS).
  patterns  redaction CPU per event vs pattern count: pass-through (reference), the built-ins (pii-detector
            redact + safety-filter with 2 terms), and `--terms` more generated safety-filter terms (default
            +100, +1,000; distinct two-word phrases, from a file), 50-event streamed answers, measured like
            `length`. Flat means one Hyperscan database whatever the count.
  workers   requests/s vs gateway workers (`--workers`, default 1,2), streamed (50 events) and non-streamed,
            closed loop (wrk when installed, else bench.loadgen) with `--connections-per-worker` × workers
            connections; with `--gateway-cpus` the gateway of N workers is pinned to the first N of them,
            without it nothing is pinned (the load generator and upstream share the gateway's cores). Accept
            balance: the established client connections each worker holds (its socket fds matched against
            /proc/net/tcp) and each worker's share of the gateway CPU. fastgw has one listening socket per
            bind address, shared by every worker (no SO_REUSEPORT option): only that mode is measured.

The box's load average and busy cores (servers idle) are recorded before each table: on a shared machine read
ratios, not absolutes. `--quick` is a tiny smoke run (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import os
import random
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench import wrk
from bench.loadgen import LoadSpec, build_request, chat_body, parse_cpus, run_load
from bench.stream import (BENCH_KEY, MODEL, RESULTS, CpuProbe, Server, busy_cpu_seconds, finish_run, free_port,
                          machine, policy_probe, rss_mb, server_cmd, task_cpu_seconds, tree)
from bench.streams2k import raise_nofile, run_pass, warm_up
from bench.soak import tcp_sockets
from bench.systems import ensure_nginx, fastgw_yaml, nginx_conf, start_upstream
from bench.upstream import PACED_MODEL

__all__ = ["add_arguments", "main", "safety_terms", "TABLES"]

TABLES = ("length", "streams", "idle", "patterns", "workers")
OUT_DIR = Path(__file__).resolve().parent / "results"
_AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}

#: name: (default, value with --quick)
_SCALED = {"lengths": ("50,500,5000", "20,200"), "length_events": (300_000, 6_000), "repeats": (3, 1),
           "streams": ("10,100,1000,5000", "5,40"), "delay": (0.2, 0.05), "duration": (5.0, 1.0),
           "settle": (1.0, 0.5), "terms": ("100,1000", "100"), "pattern_events": (150_000, 3_000),
           "workers": ("1,2", "1,2"), "seconds": (3, 1), "warmup": (1, 0), "idle_streams": ("1000,2000", "50,200")}

#: The chain of `length` and `patterns` (as bench.systems' fastgw-redact), with room for a file of extra terms.
_CHAIN = ("policies: {{chain: [pii-detector, safety-filter]}}\n"
          "policy:\n"
          "  pii-detector: {{action: redact}}\n"
          "  safety-filter: {{action: redact, terms: [forbidden fruit, secret sauce]{files}}}\n")

# Two-word phrases of the kind a safety filter lists; 32 × 32 = 1,024 distinct terms.
_MODIFIERS = ("counterfeit", "stolen", "forged", "illegal", "untraceable", "smuggled", "pirated", "unlicensed",
              "black-market", "homemade", "weaponized", "hacked", "leaked", "cloned", "bootleg", "contraband",
              "fake", "fraudulent", "unregistered", "laundered", "synthetic", "concealed", "modified", "restricted",
              "banned", "bulk", "anonymous", "phishing", "ransomware", "spoofed", "tampered", "skimmed")
_NOUNS = ("passport", "credit card", "driver license", "firearm", "ammunition", "explosive", "prescription",
          "opioid", "bank account", "identity", "social security number", "password list", "malware kit", "botnet",
          "exploit", "crypto wallet", "gift card", "invoice", "currency", "ballot", "medical record", "tax return",
          "login credentials", "serial number", "vehicle title", "diploma", "visa", "payment token", "sim card",
          "database dump", "access badge", "certificate")


def safety_terms(n: int, seed: int = 18) -> list[str]:
    """`n` distinct safety-filter phrases ("stolen passport", "cloned sim card", …), the same for a given seed."""
    every = [f"{m} {x}" for m in _MODIFIERS for x in _NOUNS]
    if n > len(every):
        raise ValueError(f"at most {len(every)} generated terms")
    random.Random(seed).shuffle(every)
    return every[:n]


# ------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m bench scale`."""
    d = {k: v[0] for k, v in _SCALED.items()}
    p.add_argument("--tables", default=",".join(TABLES), help=f"which tables, from {','.join(TABLES)}")
    g = p.add_argument_group("length (CPU per event vs stream length)")
    g.add_argument("--lengths", help=f"content chunks per streamed answer [{d['lengths']}]")
    g.add_argument("--length-events", type=int, help=f"events delivered per cell and repeat [{d['length_events']}]")
    g.add_argument("--connections", "-c", type=int, default=16, help="closed-loop connections (length, patterns)")
    g.add_argument("--repeats", type=int, help=f"rounds of the length and patterns cells, medians shown [{d['repeats']}]")
    g = p.add_argument_group("streams (concurrent paced streams on one worker)")
    g.add_argument("--streams", help=f"concurrent streams per pass [{d['streams']}]")
    g.add_argument("--delay", type=float, help=f"seconds between the upstream's events [{d['delay']}]")
    g.add_argument("--duration", type=float, help=f"measured window, every stream open (s) [{d['duration']}]")
    g.add_argument("--settle", type=float, help=f"seconds between the end of the ramp and the window [{d['settle']}]")
    g.add_argument("--open-rate", type=float, default=500.0,
                   help="streams opened per second over the ramp (ramp = streams / rate, at least 0.5 s)")
    g.add_argument("--stall", type=float, default=1.0, help="an inter-event gap above this many seconds is a stall")
    g.add_argument("--clients", type=int, default=2, help="stream client processes")
    g.add_argument("--idle-seconds", type=float, default=2.0, help="idle gateway CPU measured before each pass (s)")
    g.add_argument("--chain", dest="streams_chain", action="store_true",
                   help="each size with the pii-detector (redact) + safety-filter chain too")
    g.add_argument("--nginx", dest="streams_nginx", action="store_true",
                   help="each size through nginx too (the reference: a C proxy's CPU per paced event on the same box)")
    g = p.add_argument_group("idle (worker RSS per open idle stream)")
    g.add_argument("--idle-streams", help=f"open idle streams per row [{d['idle_streams']}]")
    g = p.add_argument_group("patterns (redaction CPU per event vs safety-filter terms)")
    g.add_argument("--terms", help=f"extra generated safety-filter terms per row, besides the built-ins [{d['terms']}]")
    g.add_argument("--pattern-events", type=int, help=f"events delivered per cell and repeat [{d['pattern_events']}]")
    g = p.add_argument_group("workers (requests/s vs workers, accept balance)")
    g.add_argument("--workers", help=f"gateway worker counts [{d['workers']}]")
    g.add_argument("--seconds", type=int, help=f"measured seconds per run (whole seconds) [{d['seconds']}]")
    g.add_argument("--warmup", type=int, help=f"unmeasured seconds of the same load before it [{d['warmup']}]")
    g.add_argument("--connections-per-worker", type=int, default=64, help="closed-loop connections per worker")
    g.add_argument("--load-tool", choices=["auto", "wrk", "loadgen"], default="auto",
                   help="load generator of the workers table (auto: wrk if installed)")
    g.add_argument("--wrk-threads", type=int, help="wrk threads (default: the number of load CPUs, at least 1)")
    g.add_argument("--upstream-processes", type=int,
                   help="mock upstream processes in the workers table (default: half the load CPUs, at least 1)")
    g = p.add_argument_group("machine")
    g.add_argument("--gateway-cpus", help="gateway CPUs: tables length/streams/patterns use the first one, workers "
                                          "the first N for N workers (default: the first usable CPU, and no "
                                          "pinning in the workers table)")
    g.add_argument("--load-cpus", help="CPUs of the upstream, load generator and harness (default: the others; "
                                       "none in the workers table unless given)")
    g = p.add_argument_group("output")
    g.add_argument("--quick", action="store_true", help="tiny smoke run: " + ", ".join(
        f"{k.replace('_', '-')} {v[1]}" for k, v in _SCALED.items()))
    g.add_argument("--write", action="store_true", help="append the tables to --results")
    g.add_argument("--results", type=Path, default=RESULTS, help="markdown file for --write")
    g.add_argument("--note", default="", help="text added to the --write section heading")
    g.add_argument("--json", type=Path, help="JSON output (default with --write: bench/results/scale-<UTC>.json)")
    g.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    g.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and configs")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _resolve(args: argparse.Namespace) -> None:
    for k, (normal, quick) in _SCALED.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if args.quick else normal)
    args.table_list = [t.strip() for t in args.tables.split(",") if t.strip()]
    bad = [t for t in args.table_list if t not in TABLES]
    if bad or not args.table_list:
        raise SystemExit(f"bench scale: unknown --tables {bad or args.tables!r} (known: {', '.join(TABLES)})")
    args.length_list, args.stream_list = _ints(args.lengths), _ints(args.streams)
    args.idle_list = _ints(args.idle_streams)
    args.term_list, args.worker_list = [0] + [n for n in _ints(args.terms) if n], _ints(args.workers)
    if min(args.length_list + args.stream_list + args.worker_list + args.idle_list, default=0) < 1 or args.delay <= 0:
        raise SystemExit("bench scale: --lengths, --streams, --idle-streams, --workers and --delay must be positive")
    if args.stall <= args.delay:
        raise SystemExit("bench scale: --stall must exceed --delay")
    avail = sorted(os.sched_getaffinity(0))
    gw, load = parse_cpus(args.gateway_cpus), parse_cpus(args.load_cpus)
    args.scale_gw_cpus = gw                        # the workers table: as given, or no pinning
    args.scale_load_cpus = load
    if gw is None and len(avail) >= 2:
        gw = [c for c in avail if c not in (load or [])][:1] or avail[:1]
    if load is None and gw is not None:
        load = [c for c in avail if c not in gw] or None
    args.one_gw_cpus = gw[:1] if gw else None      # tables with one worker
    args.one_load_cpus = load
    if args.load_tool == "auto":
        args.load_tool = "wrk" if wrk.available() else "loadgen"
    if args.load_tool == "wrk" and not wrk.available():
        raise SystemExit("bench scale: wrk not found (apt-get install wrk) — or --load-tool loadgen")


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------

def _load_state() -> dict:
    """Load average and busy cores over 1 s, read before a table (the servers idle)."""
    la = Path("/proc/loadavg").read_text().split()[:3]
    b0, t = busy_cpu_seconds(), time.monotonic()
    time.sleep(1.0)
    return {"loadavg": la, "busy_cores": (busy_cpu_seconds() - b0) / (time.monotonic() - t)}


def _workers(master: int) -> list[int]:
    return [p for p in tree(master) if p != master]


def _worker_rss(master: int) -> float | None:
    ws = _workers(master)
    return rss_mb(ws[0]) if ws else None


def _start_gateway(name: str, tmp: Path, upstream_port: int, policy: str, workers: int, cpus: list[int] | None,
                   log_level: str, max_connections: int | None = None) -> Server:
    """fastgw serve in front of the mock upstream, with `policy` (config lines) appended; call wait_ready()."""
    port = free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(fastgw_yaml(port, upstream_port, max_connections=max_connections) + policy)
    return Server(name, server_cmd(cfg, port, workers, log_level), port, tmp / f"{name}.log", cpus)


def _chain(terms_file: Path | None = None) -> str:
    return _CHAIN.format(files=f", files: ['{terms_file}']" if terms_file else "")


def _ready(servers: list[Server], timeout: float = 120.0) -> None:
    for s in servers:
        s.wait_ready(timeout)


def _count_cell(port: int, events: int, total_events: int, connections: int, load_cpus: list[int] | None,
                gateway: Server, warm: bool) -> dict:
    """One closed-loop count-mode run of streamed requests (`events` content chunks each) delivering about
    `total_events` events; gateway CPU over the whole run ÷ events delivered."""
    req = build_request("127.0.0.1", port, "/v1/chat/completions", chat_body(MODEL, True), _AUTH)
    per = events + 3
    n = max(connections * 2, math.ceil(total_events / per))
    if warm:  # first use of each code path, connections to the upstream pooled
        run_load(LoadSpec(host="127.0.0.1", port=port, request=req, mode="stream", connections=connections,
                          clients=1, requests=connections * 2, timeout=300.0, cpus=load_cpus))
    probe = CpuProbe(gateway.pid, precise=True)
    probe.start()
    raw = run_load(LoadSpec(host="127.0.0.1", port=port, request=req, mode="stream", connections=connections,
                            clients=1, requests=n, timeout=600.0, cpus=load_cpus))
    cpu, wall = probe.stop()
    ev = raw["events"]
    return {"requests": raw["ok"], "events": ev, "cpu_s": cpu, "wall_s": wall,
            "us_per_event": cpu * 1e6 / ev if ev else None, "ms_per_request": cpu * 1e3 / raw["ok"] if raw["ok"] else None,
            "gateway_cores": cpu / wall if wall else None,
            "events_per_answer_ok": raw["ok"] == 0 or (raw["ev_min"] == per and raw["ev_max"] == per),
            "errors": sum(raw["errors"].values()) + raw["stalled"] + len(raw["fatal"]),
            "fatal": raw["fatal"], "error_kinds": raw["errors"]}


def _median(vals: list) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def _f(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _x(v: float | None, base: float | None) -> str:
    return "-" if v is None or not base else f"{v / base:.2f}×"


def _check_probe(port: int, want: str, name: str, problems: list[str]) -> None:
    got = policy_probe(port)
    if got != want:
        problems.append(f"policy probe {name}: {got!r}, expected {want!r}")


# ------------------------------------------------------------------------------------------
# table 1: CPU per event vs stream length
# ------------------------------------------------------------------------------------------

def table_length(args, tmp: Path, problems: list[str]) -> dict:
    servers: list[Server] = []
    cells: dict[tuple[int, str], list[dict]] = {}
    gws: dict[tuple[int, str], Server] = {}
    try:
        ups = {}
        for n in args.length_list:
            ups[n] = start_upstream(tmp, free_port(), n, 0.005, args.one_load_cpus, name=f"upstream-{n}")
            servers.append(ups[n])
        _ready(list(ups.values()))
        for n in args.length_list:
            for pol in ("none", "chain"):
                gws[(n, pol)] = _start_gateway(f"len{n}-{pol}", tmp, ups[n].port, _chain() if pol == "chain" else "",
                                               1, args.one_gw_cpus, args.log_level)
                servers.append(gws[(n, pol)])
        _ready(list(gws.values()))
        for (n, pol), g in gws.items():
            _check_probe(g.port, "redacted" if pol == "chain" else "passed through", g.name, problems)
        order = list(gws)
        for r in range(args.repeats):
            k = r % len(order)
            for key in order[k:] + order[:k]:
                g = gws[key]
                print(f"[length {r + 1}/{args.repeats}] {key[0]} events, {key[1]} ...", flush=True)
                c = _count_cell(g.port, key[0], args.length_events, args.connections, args.one_load_cpus, g,
                                warm=r == 0)
                cells.setdefault(key, []).append(c)
                if c["errors"] or not c["events_per_answer_ok"]:
                    problems.append(f"length {key}: errors {c['error_kinds']} {c['fatal']}, events per answer "
                                    f"{'ok' if c['events_per_answer_ok'] else 'NOT ' + str(key[0] + 3)}")
    finally:
        for s in reversed(servers):
            s.stop()
    rows = []
    for n in args.length_list:
        row: dict = {"events": n}
        for pol in ("none", "chain"):
            cs = cells.get((n, pol), [])
            row[pol] = {"us_per_event": _median([c["us_per_event"] for c in cs]),
                        "ms_per_request": _median([c["ms_per_request"] for c in cs]),
                        "gateway_cores": _median([c["gateway_cores"] for c in cs]),
                        "requests": sum(c["requests"] for c in cs), "runs": cs}
        rows.append(row)
    return {"rows": rows}


def md_length(args, t: dict) -> list[str]:
    rows = t["rows"]
    b = {p: rows[0][p]["us_per_event"] for p in ("none", "chain")} if rows else {}
    L = [f"Gateway CPU per event vs stream length (1 worker; zero-delay upstream, closed loop with {args.connections} "
         f"connections, about {args.length_events:,} events per cell, median of {args.repeats}):", "",
         "| content chunks per answer | pass-through µs/event | vs shortest | chain µs/event | vs shortest "
         "| pass-through ms/request | chain ms/request | gateway cores (pass-through / chain) |",
         "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        a, c = r["none"], r["chain"]
        L.append(f"| {r['events']:,} | {_f(a['us_per_event'], 2)} | {_x(a['us_per_event'], b.get('none'))} | "
                 f"{_f(c['us_per_event'], 2)} | {_x(c['us_per_event'], b.get('chain'))} | {_f(a['ms_per_request'], 3)} | "
                 f"{_f(c['ms_per_request'], 3)} | {_f(a['gateway_cores'], 2)} / {_f(c['gateway_cores'], 2)} |")
    return L


# ------------------------------------------------------------------------------------------
# table 2: concurrent paced streams on one worker
# ------------------------------------------------------------------------------------------

def _one_worker_pair(args: argparse.Namespace, tmp: Path, servers: list[Server], problems: list[str], tag: str,
                     chunks: int, delay: float, streams: int, policy: str = "",
                     nginx: bool = False) -> tuple[Server, Server]:
    """A paced upstream and a one-worker gateway (with `policy`, config lines; or nginx, bench run's streaming proxy
    config) in front of it for `streams` open streams, both ready and warmed up (a failed warm-up is added to
    `problems`); each is appended to `servers` as soon as it runs. Returns (upstream, gateway)."""
    up = start_upstream(tmp, free_port(), chunks, delay, args.one_load_cpus, name=f"upstream-{tag}")
    servers.append(up)
    up.wait_ready(30)
    if nginx:
        port = free_port()
        prefix = tmp / tag
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(port, up.port, prefix, connections=max(8192, 2 * streams + 256)))
        gw = Server(tag, [ensure_nginx(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], port,
                    tmp / f"{tag}.log", args.one_gw_cpus)
    else:
        gw = _start_gateway(tag, tmp, up.port, policy, 1, args.one_gw_cpus, args.log_level,
                            max_connections=max(4096, streams + 256))
    servers.append(gw)
    gw.wait_ready(60)
    if warm_up(gw.port, 20) != 20:
        problems.append(f"{tag}: warm-up requests through the {'nginx' if nginx else 'gateway'} failed")
    return up, gw


#: The streams table's passes: the gateway, and the extra ones each size may get (`--chain`, `--nginx`).
_STREAM_KINDS = {"gateway": "", "chain": " with pii-detector redact + safety-filter", "nginx": " through nginx"}


def _streams_pass(args: argparse.Namespace, tmp: Path, problems: list[str], n: int, kind: str) -> tuple[dict, dict]:
    """One pass of `n` paced streams through a fresh one-worker gateway, pass-through or with the chain, or
    nginx (`kind`, a key of _STREAM_KINDS): (run_pass's figures, the proxy's idle RSS and cores)."""
    ramp = max(0.5, n / args.open_rate)
    chunks = math.ceil((ramp + args.settle + args.duration + 0.5) / args.delay)
    ns = SimpleNamespace(streams=n, chunks=chunks, delay=args.delay, ramp=ramp, settle=args.settle,
                         duration=args.duration, grace=5.0, clients=args.clients,
                         client_cpus=",".join(map(str, args.one_load_cpus)) if args.one_load_cpus else None,
                         stall=args.stall, tolerance=args.delay * 0.5)
    servers: list[Server] = []
    try:
        tag = f"{'streams' if kind == 'gateway' else kind}{n}"
        up, gw = _one_worker_pair(args, tmp, servers, problems, tag, chunks, args.delay, n,
                                  _chain() if kind == "chain" else "", nginx=kind == "nginx")
        time.sleep(0.5)
        idle = _worker_rss(gw.pid)
        # The idle worker's own CPU (timers, metric flushes): a floor under the per-event figure at low rates.
        probe = CpuProbe(gw.pid, precise=True)
        probe.start()
        time.sleep(args.idle_seconds)
        c, w = probe.stop()
        print(f"[streams] {n} streams paced {args.delay * 1000:g} ms, {chunks} events each{_STREAM_KINDS[kind]} ...",
              flush=True)
        p = run_pass(ns, "gateway", gw.port, gw, up, model=PACED_MODEL, precise_cpu=True)
    finally:
        for s in reversed(servers):
            s.stop()
    return p, {"rss_idle_mb": idle, "idle_cores": c / w, "chunks": chunks, "ramp": ramp}


def _net_us(p: dict, idle_cores: float) -> float | None:
    """Gateway CPU µs per event over the window, net of the idle process's own."""
    return ((p["cpu_cores"]["gateway"] - idle_cores) * 1e6 / p["events_per_s_window"]
            if p["events_per_s_window"] and "gateway" in p["cpu_cores"] else None)


def table_streams(args, tmp: Path, problems: list[str]) -> dict:
    rows = []
    for n in args.stream_list:
        p, info = _streams_pass(args, tmp, problems, n, "gateway")
        idle, idle_cores, chunks, ramp = info["rss_idle_mb"], info["idle_cores"], info["chunks"], info["ramp"]
        samples = p.get("gw_rss_samples_mb") or []
        steady = _median(samples)
        n_open = min(p["open_window_start"], p["open_window_end"])
        per_kb = (steady - idle) * 1024 / n_open if steady is not None and idle is not None and n_open else None
        g = p["gaps_window_ms"]
        row = {"streams": n, "chunks": chunks, "ramp_s": ramp, "open": n_open,
               "events_per_s": p["events_per_s_window"], "nominal_events_per_s": n / args.delay,
               "us_per_event": p["us_per_event"].get("gateway"), "gateway_cores": p["cpu_cores"].get("gateway"),
               "idle_cores": idle_cores,
               "us_per_event_net": _net_us(p, idle_cores),
               "clients_cores": p["cpu_cores"].get("clients"), "upstream_cores": p["cpu_cores"].get("upstream"),
               "box_busy_cores": p["box_busy_cores"], "rss_idle_mb": idle, "rss_steady_mb": steady,
               "kb_per_stream": per_kb, "gap_ms": g, "gaps_all_ms": p["gaps_all_ms"],
               "stalls": p["stalls_all"], "stalls_window": p["stalls_window"], "ttfb_ms": p["ttfb_ms"],
               "client_lag_ms": p["client_lag_ms"], "errors": p["errors"], "unfinished": p["unfinished"],
               "never_connected": p["never_connected"], "fatal": p["fatal"], "fds_max": p.get("gw_fds_max")}
        row["cpu_full"] = row["gateway_cores"] is not None and row["gateway_cores"] >= 0.9
        rows.append(row)
        if p["errors"] or p["unfinished"] or p["never_connected"] or p["fatal"]:
            problems.append(f"streams {n}: errors {p['errors']}, cut {p['unfinished']}, never connected "
                            f"{p['never_connected']}, client failures {p['fatal']}")
        if n_open < n:
            problems.append(f"streams {n}: only {n_open} open over the whole window")
        time.sleep(1.0)
        for kind in [k for k in ("chain", "nginx") if getattr(args, f"streams_{k}")]:
            q, qi = _streams_pass(args, tmp, problems, n, kind)
            row[kind] = {"us_per_event": q["us_per_event"].get("gateway"), "us_per_event_net": _net_us(q, qi["idle_cores"]),
                         "cores": q["cpu_cores"].get("gateway"), "events_per_s": q["events_per_s_window"],
                         "open": min(q["open_window_start"], q["open_window_end"]), "gap_ms": q["gaps_window_ms"],
                         "stalls": q["stalls_all"]}
            if q["errors"] or q["unfinished"] or q["never_connected"] or q["fatal"]:
                problems.append(f"{kind} streams {n}: errors {q['errors']}, cut {q['unfinished']}, never connected "
                                f"{q['never_connected']}, client failures {q['fatal']}")
            time.sleep(1.0)
    return {"rows": rows}


def md_streams(args, t: dict) -> list[str]:
    rows = t["rows"]
    b = rows[0]["us_per_event_net"] if rows else None
    L = [f"Concurrent paced streams held open on one gateway worker (pass-through; one event every "
         f"{args.delay * 1000:g} ms per stream, each stream outlasting the {args.duration:g} s window in which every "
         f"stream is open; a fresh gateway per row, streams opened at {args.open_rate:g}/s; µs/event over the window, "
         f"and net of the idle worker's own CPU measured over {args.idle_seconds:g} s before the pass; gaps at the "
         f"client: in the window, and the largest over whole streams, ramp included; stall = a gap > "
         f"{args.stall * 1000:g} ms):", "",
         "| streams | open in window | events/s (nominal) | gateway µs/event (net of idle) | net vs fewest "
         "| gateway cores (full?) | worker RSS idle → steady MB | RSS per open stream KB | window gap p50 / p99 / max "
         "ms | whole-stream max gap ms | stalls | TTFB p50 / p99 ms | client loop lag max ms |",
         "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        g = r["gap_ms"]
        L.append(f"| {r['streams']:,} | {r['open']:,} | {_f(r['events_per_s'], 0)} ({_f(r['nominal_events_per_s'], 0)}) "
                 f"| {_f(r['us_per_event'])} ({_f(r['us_per_event_net'])}) | {_x(r['us_per_event_net'], b)} | "
                 f"{_f(r['gateway_cores'], 2)} ({'full' if r['cpu_full'] else 'no'}) | {_f(r['rss_idle_mb'])} → "
                 f"{_f(r['rss_steady_mb'])} | {_f(r['kb_per_stream'])} | {_f(g.get('p50'))} / {_f(g.get('p99'))} / "
                 f"{_f(g.get('max'))} | {_f(r['gaps_all_ms'].get('max'))} | {r['stalls']} | "
                 f"{_f(r['ttfb_ms'].get('p50'))} / {_f(r['ttfb_ms'].get('p99'))} | {_f(r['client_lag_ms'].get('max'))} |")
    titles = {"chain": "The same streams through a gateway with the pii-detector (redact) + safety-filter chain "
                       "(`--chain`; a fresh gateway and paced upstream per size):",
              "nginx": "The same streams through nginx (`--nginx`: bench run's streaming proxy, one worker, pinned "
                       "like the gateway, a fresh paced upstream per size), the reference for the per-event figure:"}
    for kind, title in titles.items():
        ref = [r for r in rows if kind in r]
        if not ref:
            continue
        L += ["", title, "",
              f"| streams | {kind}: open in window | events/s | µs/event (net of idle) | cores | window gap p99 ms "
              "| stalls | pass-through fastgw ÷ this (net) |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in ref:
            x = r[kind]
            L.append(f"| {r['streams']:,} | {x['open']:,} | {_f(x['events_per_s'], 0)} | {_f(x['us_per_event'])} "
                     f"({_f(x['us_per_event_net'])}) | {_f(x['cores'], 2)} | {_f(x['gap_ms'].get('p99'))} | "
                     f"{x['stalls']} | {_x(r['us_per_event_net'], x['us_per_event_net'])} |")
    return L


# ------------------------------------------------------------------------------------------
# table 2b: worker RSS per open idle stream
# ------------------------------------------------------------------------------------------

#: The idle table's upstream paces its events an hour apart: after the head and the first event, nothing comes.
_IDLE_DELAY = 3600.0
#: Streams the idle table's harness opens at once (each waits for its first event before the next opens).
_IDLE_OPENING = 100


async def _open_idle(port: int, n: int, held: list) -> None:
    """Open `n` streams to model bench-paced, each kept once its first event arrived."""
    req = build_request("127.0.0.1", port, "/v1/chat/completions", chat_body(PACED_MODEL, True), _AUTH)
    gate = asyncio.Semaphore(_IDLE_OPENING)

    async def one() -> None:
        async with gate:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(req)
            got = b""
            while b"data:" not in got:
                chunk = await r.read(65536)
                if not chunk:
                    raise RuntimeError(f"idle stream closed before its first event: {got[:200]!r}")
                got += chunk
            held.append(w)

    await asyncio.gather(*(one() for _ in range(n)))


def _smaps_kb(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in KB (Rss, Pss, Private_Dirty, ...); {} when unreadable."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            k, _, v = line.partition(":")
            out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def table_idle(args, tmp: Path, problems: list[str]) -> dict:
    rows = []
    for n in args.idle_list:
        servers: list[Server] = []
        held: list = []
        try:
            up, gw = _one_worker_pair(args, tmp, servers, problems, f"idle{n}", 2, _IDLE_DELAY, n)
            worker = _workers(gw.pid)[0]
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(_open_idle(gw.port, 20, held))  # first use of the streamed path
                for w in held:
                    w.close()
                held.clear()
                loop.run_until_complete(asyncio.sleep(1.0))
                before = _smaps_kb(worker)
                print(f"[idle] opening {n:,} idle streams ...", flush=True)
                loop.run_until_complete(_open_idle(gw.port, n, held))
                loop.run_until_complete(asyncio.sleep(1.5))
                after = _smaps_kb(worker)
                for w in held:
                    w.close()
            finally:
                loop.close()
        finally:
            for s in reversed(servers):
                s.stop()
        grown = {k: (after.get(k, 0) - before.get(k, 0)) / n for k in ("Rss", "Pss", "Anonymous")}
        rows.append({"streams": n, "rss_idle_mb": before.get("Rss", 0) / 1024, "rss_open_mb": after.get("Rss", 0) / 1024,
                     "kb_per_stream": grown["Rss"], "anon_kb_per_stream": grown["Anonymous"],
                     "pss_kb_per_stream": grown["Pss"]})
        time.sleep(0.5)
    return {"rows": rows}


def md_idle(args, t: dict) -> list[str]:
    L = [f"Open idle streams on one gateway worker (pass-through; each stream has its head and first event, then the "
         f"upstream sends nothing for {_IDLE_DELAY:g} s; a fresh gateway per row; RSS from /proc/<worker>/smaps_rollup "
         f"1.5 s after the last stream opened, minus the RSS before; kernel socket buffers are not in it):", "",
         "| open idle streams | worker RSS before → open MB | RSS per stream KB | anonymous per stream KB "
         "| PSS per stream KB |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in t["rows"]:
        L.append(f"| {r['streams']:,} | {_f(r['rss_idle_mb'])} → {_f(r['rss_open_mb'])} | {_f(r['kb_per_stream'])} | "
                 f"{_f(r['anon_kb_per_stream'])} | {_f(r['pss_kb_per_stream'])} |")
    return L


# ------------------------------------------------------------------------------------------
# table 3: redaction cost vs pattern count
# ------------------------------------------------------------------------------------------

PATTERN_EVENTS = 50


def table_patterns(args, tmp: Path, problems: list[str]) -> dict:
    servers: list[Server] = []
    cells: dict[str, list[dict]] = {}
    gws: dict[str, Server] = {}
    try:
        up = start_upstream(tmp, free_port(), PATTERN_EVENTS, 0.005, args.one_load_cpus, name="upstream-patterns")
        servers.append(up)
        up.wait_ready(30)
        configs = {"pass-through": ""}
        for n in args.term_list:
            f = None
            if n:
                f = tmp / f"terms-{n}.txt"
                f.write_text("\n".join(safety_terms(n)) + "\n")
            configs["built-ins" if n == 0 else f"+{n:,}"] = _chain(f)
        startup = {}
        for name, pol in configs.items():
            # Started one after the other: each start-up time (config load, Hyperscan compile, fork) is its own.
            t0 = time.monotonic()
            gws[name] = g = _start_gateway("terms-" + name.replace("+", "").replace(",", ""), tmp, up.port, pol, 1,
                                           args.one_gw_cpus, args.log_level)
            servers.append(g)
            g.wait_ready(120)
            startup[name] = time.monotonic() - t0
        for name, g in gws.items():
            _check_probe(g.port, "passed through" if name == "pass-through" else "redacted", name, problems)
        idle = {name: _worker_rss(g.pid) for name, g in gws.items()}
        order = list(gws)
        for r in range(args.repeats):
            k = r % len(order)
            for name in order[k:] + order[:k]:
                print(f"[patterns {r + 1}/{args.repeats}] {name} ...", flush=True)
                c = _count_cell(gws[name].port, PATTERN_EVENTS, args.pattern_events, args.connections,
                                args.one_load_cpus, gws[name], warm=r == 0)
                cells.setdefault(name, []).append(c)
                if c["errors"] or not c["events_per_answer_ok"]:
                    problems.append(f"patterns {name}: errors {c['error_kinds']} {c['fatal']}")
    finally:
        for s in reversed(servers):
            s.stop()
    rows = []
    for name in gws:
        cs = cells.get(name, [])
        rows.append({"config": name, "us_per_event": _median([c["us_per_event"] for c in cs]),
                     "ms_per_request": _median([c["ms_per_request"] for c in cs]), "rss_idle_mb": idle.get(name),
                     "startup_s": startup.get(name), "runs": cs})
    return {"rows": rows}


def md_patterns(args, t: dict) -> list[str]:
    rows = t["rows"]
    by = {r["config"]: r for r in rows}
    base, ref = (by.get("built-ins") or {}).get("us_per_event"), (by.get("pass-through") or {}).get("us_per_event")
    L = [f"Redaction CPU per event vs safety-filter pattern count (1 worker; pii-detector redact + safety-filter "
         f"redact; {PATTERN_EVENTS}-chunk streamed answers of prose, zero-delay upstream, {args.connections} "
         f"connections, about {args.pattern_events:,} events per cell, median of {args.repeats}; extra terms are "
         f"generated two-word phrases such as \"{safety_terms(2)[0]}\", from a `files:` list):", "",
         "| config | gateway µs/event | vs built-ins | redaction µs/event (minus pass-through) | ms/request "
         "| worker RSS idle MB | start-up s |",
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        added = None if r["us_per_event"] is None or ref is None or r["config"] == "pass-through" else \
            r["us_per_event"] - ref
        L.append(f"| {r['config']} | {_f(r['us_per_event'], 2)} | "
                 f"{'-' if r['config'] == 'pass-through' else _x(r['us_per_event'], base)} | {_f(added, 2)} | "
                 f"{_f(r['ms_per_request'], 3)} | {_f(r['rss_idle_mb'])} | {_f(r['startup_s'], 1)} |")
    return L


# ------------------------------------------------------------------------------------------
# table 4: requests/s vs workers, accept balance
# ------------------------------------------------------------------------------------------

def _listen_conn_inodes(port: int) -> set[int]:
    """Socket inodes of the established TCP connections whose local port is `port` (the server side)."""
    return {ino for ino, (local, _remote, state, _tx, _rx) in tcp_sockets().items()
            if state == "ESTABLISHED" and local == port}


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    d = f"/proc/{pid}/fd"
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink(f"{d}/{n}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def conns_per_worker(workers: list[int], port: int) -> list[int]:
    """Established client connections each worker holds (its fds matched against /proc/net/tcp)."""
    conns = _listen_conn_inodes(port)
    return [len(_socket_inodes(w) & conns) for w in workers]


def _workers_run(args, gw: Server, mode: str, conns: int, script: Path, load_cpus: list[int] | None) -> dict:
    ws = _workers(gw.pid)
    url = f"http://127.0.0.1:{gw.port}/v1/chat/completions"
    threads = args.wrk_threads or max(1, len(load_cpus or []))
    req = build_request("127.0.0.1", gw.port, "/v1/chat/completions", chat_body(MODEL, mode == "stream"), _AUTH)

    def loadgen_spec(seconds: float) -> LoadSpec:
        t0 = time.monotonic() + 0.3
        return LoadSpec(host="127.0.0.1", port=gw.port, request=req, mode=mode, connections=conns,
                        clients=threads, start_at=t0, window_start=t0, window_end=t0 + seconds, grace=5.0,
                        cpus=load_cpus)

    if args.warmup:
        if args.load_tool == "wrk":
            wrk.run(url, script, args.warmup, conns, threads=threads, cpus=load_cpus)
        else:
            run_load(loadgen_spec(args.warmup))
    probe = CpuProbe(gw.pid, precise=True)
    w0 = {w: task_cpu_seconds(w) for w in ws}
    probe.start()
    balance: list[int] = []
    if args.load_tool == "wrk":
        proc = wrk.start(url, script, args.seconds, conns, threads=threads, cpus=load_cpus)
        time.sleep(min(0.5 * args.seconds, 1.0))
        balance = conns_per_worker(ws, gw.port)
        res = wrk.finish(proc, timeout=args.seconds + 30)
        requests, rps, errors = res.requests, res.rps, sum(res.errors.values())
    else:
        from bench.loadgen import LoadRun, summarize
        spec = loadgen_spec(args.seconds)
        lr = LoadRun(spec)
        time.sleep(max(0.0, spec.start_at - time.monotonic()) + min(0.5 * args.seconds, 1.0))
        balance = conns_per_worker(ws, gw.port)
        s = summarize(lr.collect(), args.seconds)
        requests, rps, errors = s.requests, s.rps, sum(s.errors.values()) + s.stalled + len(s.fatal)
    cpu, wall = probe.stop()
    shares = [task_cpu_seconds(w) - w0[w] for w in ws]
    tot = sum(shares)
    return {"rps": rps, "requests": requests, "errors": errors, "cpu_ms_per_req": cpu * 1e3 / requests if requests else None,
            "gateway_cores": cpu / wall if wall else None, "conns_per_worker": balance,
            "cpu_share_per_worker": [s / tot for s in shares] if tot else []}


def table_workers(args, tmp: Path, problems: list[str]) -> dict:
    scripts = {}
    for mode in ("stream", "nonstream"):
        scripts[mode] = tmp / f"{mode}.lua"
        scripts[mode].write_text(wrk.lua_script(chat_body(MODEL, mode == "stream"),
                                                    {"Content-Type": "application/json", **_AUTH}))
    load = args.scale_load_cpus
    procs = args.upstream_processes or max(1, len(load or []) // 2)
    rows = []
    up = start_upstream(tmp, free_port(), 50, 0.005, load, processes=procs, name="upstream-workers")
    try:
        up.wait_ready(30)
        for n in args.worker_list:
            cpus = args.scale_gw_cpus[:n] if args.scale_gw_cpus else None
            conns = args.connections_per_worker * n
            gw = _start_gateway(f"workers{n}", tmp, up.port, "", n, cpus, args.log_level)
            try:
                gw.wait_ready(60)
                deadline = time.monotonic() + 10
                while len(_workers(gw.pid)) < n and time.monotonic() < deadline:
                    time.sleep(0.1)
                row: dict = {"workers": n, "cpus": cpus, "connections": conns}
                for mode in ("stream", "nonstream"):
                    print(f"[workers] {n} worker(s), {mode}, {conns} connections ...", flush=True)
                    row[mode] = r = _workers_run(args, gw, mode, conns, scripts[mode], load)
                    if r["errors"]:
                        problems.append(f"workers {n} {mode}: {r['errors']} errors")
                rows.append(row)
            finally:
                gw.stop()
    finally:
        up.stop()
    return {"rows": rows, "upstream_processes": procs, "load_cpus": load}


def _spread(v: list, pct: bool = False) -> str:
    if not v:
        return "-"
    if pct:
        return " / ".join(f"{x:.0%}" for x in v)
    return " / ".join(str(x) for x in v)


def md_workers(args, t: dict) -> list[str]:
    rows = t["rows"]
    b = {m: rows[0][m]["rps"] for m in ("stream", "nonstream")} if rows else {}
    pin = (f"gateway pinned to the first N of CPUs {args.gateway_cpus}" if args.scale_gw_cpus else
           "nothing pinned: the gateway, the load generator and the upstream share every core")
    L = [f"Requests/s vs gateway workers ({args.load_tool}, {args.connections_per_worker} connections per worker, "
         f"{args.warmup} s warm-up + {args.seconds} s measured; streamed answers of 50 chunks; {pin}; load CPUs "
         f"{','.join(map(str, t['load_cpus'])) if t['load_cpus'] else 'any'}; mock upstream with "
         f"{t['upstream_processes']} process(es)). Accept balance with the one listening socket all workers share "
         f"(fastgw has no SO_REUSEPORT mode): client connections each worker held, sampled in the run, and each "
         f"worker's share of the gateway CPU:", "",
         "| workers | stream req/s | vs 1st row | nonstream req/s | vs 1st row | gateway cores (stream / nonstream) "
         "| CPU ms/req (stream / nonstream) | connections per worker (stream) | CPU share per worker (stream) "
         "| connections per worker (nonstream) | CPU share per worker (nonstream) |",
         "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for r in rows:
        s, n = r["stream"], r["nonstream"]
        L.append(f"| {r['workers']} | {_f(s['rps'], 0)} | {_x(s['rps'], b.get('stream'))} | {_f(n['rps'], 0)} | "
                 f"{_x(n['rps'], b.get('nonstream'))} | {_f(s['gateway_cores'], 2)} / {_f(n['gateway_cores'], 2)} | "
                 f"{_f(s['cpu_ms_per_req'], 3)} / {_f(n['cpu_ms_per_req'], 3)} | {_spread(s['conns_per_worker'])} | "
                 f"{_spread(s['cpu_share_per_worker'], True)} | {_spread(n['conns_per_worker'])} | "
                 f"{_spread(n['cpu_share_per_worker'], True)} |")
    return L


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

_RUN = {"length": (table_length, md_length, "CPU per event vs stream length"),
        "streams": (table_streams, md_streams, "CPU per event and RSS per stream vs concurrent streams"),
        "idle": (table_idle, md_idle, "Worker RSS per open idle stream"),
        "patterns": (table_patterns, md_patterns, "Redaction cost per event vs pattern count"),
        "workers": (table_workers, md_workers, "Requests/s vs workers")}


def markdown(args, meta: dict, tables: dict, notes: list[str]) -> list[str]:
    """The section printed, and appended to --results by --write."""
    m = meta["machine"]
    L = [f"## {meta['date']} — `bench scale`: {', '.join(tables)}" + (f" — {args.note}" if args.note else ""), "",
         f"- machine: {m['nproc']} CPUs usable ({m['cpu_count']} online), {m['cpu_model']}, Linux {m['kernel']}, "
         f"Python {m['python']}; RLIMIT_NOFILE {meta['nofile'][0]}/{meta['nofile'][1]}",
         f"- fastgw commit {m['commit']} (working tree may have had uncommitted changes)",
         f"- command: `{meta['command']}`",
         f"- CPU pinning (tables with one worker): gateway on CPU "
         f"{','.join(map(str, args.one_gw_cpus)) if args.one_gw_cpus else 'any'}, upstream + load generator + "
         f"harness on {','.join(map(str, args.one_load_cpus)) if args.one_load_cpus else 'any'}; gateway CPU = "
         f"run time of master + workers from /proc/<pid>/task/*/schedstat (ns; utime+stime counts 10 ms ticks)", ""]
    for name, t in tables.items():
        st = t["load_before"]
        L += [f"### {_RUN[name][2]}", "",
              f"Load average before: {' '.join(st['loadavg'])}; busy cores over 1 s before (servers idle): "
              f"{st['busy_cores']:.2f} of {m['nproc']}.", ""]
        L += _RUN[name][1](args, t) + [""]
    L += [f"- {n}" for n in notes] + ([""] if notes else [])
    return L


def _on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the tables `args` names (see add_arguments); `argv` is recorded as the command."""
    _resolve(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    nofile = raise_nofile()  # before anything is started: servers and clients inherit it
    now = _dt.datetime.now(_dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "nofile": list(nofile),
            "command": "python -m bench " + shlex.join(argv)}
    tmp = Path(tempfile.mkdtemp(prefix="fastgw-bench-scale-"))
    old_affinity = os.sched_getaffinity(0)
    tables: dict[str, dict] = {}
    problems: list[str] = []
    rc = 0
    try:
        for name in args.table_list:
            # The harness (and the clients it forks) stay off the gateway's CPU; the workers table pins its own.
            os.sched_setaffinity(0, (args.scale_load_cpus if name == "workers" else args.one_load_cpus)
                                 or old_affinity)
            st = _load_state()
            print(f"== {name}: load average {' '.join(st['loadavg'])}, busy cores {st['busy_cores']:.2f}", flush=True)
            t0 = time.monotonic()
            tables[name] = _RUN[name][0](args, tmp, problems)
            tables[name]["load_before"] = st
            tables[name]["seconds"] = time.monotonic() - t0
            print("\n".join(_RUN[name][1](args, tables[name])), flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    except RuntimeError as e:
        print(f"bench scale: {e}", file=sys.stderr)
        rc = 1
    finally:
        os.sched_setaffinity(0, old_affinity)
    lines = markdown(args, meta, tables, [f"CHECK {p}" for p in problems])
    print("\n" + "\n".join(lines))
    if args.write and not args.json:
        args.json = OUT_DIR / f"scale-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "tables": tables, "problems": problems}, indent=2, default=str))
        print(f"JSON: {args.json}")
    return finish_run(args, lines, rc, problems, tmp, write=bool(tables))
