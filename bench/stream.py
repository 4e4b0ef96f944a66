"""Streaming benchmark of the fastgw gateway: what it costs and what it adds on the hot path.

Run `python -m bench.stream --help`. Everything runs on 127.0.0.1 in separate processes:

    load generator ──► gateway (fastgw serve, provider openai) ──► upstream (fastgw serve, provider mock)
    load generator ─────────────────────────────────────────────► upstream          (direct baseline)

The upstream is fastgw's own built-in mock provider, a complete OpenAI-compatible
server: a role chunk, `--events` content chunks, a finish chunk and `data: [DONE]`.
The same load is run through the gateway and directly against the upstream, so
"added TTFB" (gateway TTFB minus direct TTFB, per percentile) isolates what the
gateway adds. Under load that difference also contains the gateway's competition
for CPU with everything else on the box; the concurrency-1 pass (one connection,
sequential requests) is the cleaner figure for latency and is run as well.

Throughput on a small machine is bounded by whichever of the three processes
saturates first, so the robust cost figure is the gateway's CPU per request: the
utime+stime of the gateway master and all its children over exactly the measured
window, divided by the requests completed in it.

Only `fastgw serve` is started (as a subprocess); nothing is imported from fastgw.
Every process started here is stopped on exit, Ctrl-C, SIGTERM or error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import LoadRun, LoadSpec, Summary, build_request, chat_body, parse_cpus, run_load, summarize

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MODEL = "bench-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------
# /proc accounting
# ------------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime+stime of one live process, in seconds (0 if it is gone)."""
    f = _stat_fields(pid)
    # After the name, fields start at state (3rd overall): utime is the 14th overall, stime the 15th.
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else 0.0


def children(pid: int) -> list[int]:
    """Direct children of `pid`, by scanning /proc (…/task/*/children needs CONFIG_PROC_CHILDREN)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f and int(f[1]) == pid:
                out.append(int(d))
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    return seen


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def busy_cpu_seconds() -> float:
    """All CPUs' non-idle time from /proc/stat: shows whether the whole box was saturated."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


@dataclass
class CpuProbe:
    """CPU of a process tree between two readings; the tree is re-listed at each reading."""

    root: int
    t0: float = 0.0
    cpu0: dict[int, float] = field(default_factory=dict)
    pids_changed: bool = False

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {p: cpu_seconds(p) for p in tree(self.root)}

    def stop(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since start(). A process that appeared counts from 0;
        one that vanished loses its last interval, which is flagged in pids_changed."""
        t1 = time.monotonic()
        cpu1 = {p: cpu_seconds(p) for p in tree(self.root)}
        self.pids_changed = set(cpu1) != set(self.cpu0)
        used = sum(c - self.cpu0.get(p, 0.0) for p, c in cpu1.items())
        return used, t1 - self.t0


# ------------------------------------------------------------------------------------------
# servers
# ------------------------------------------------------------------------------------------

UPSTREAM_YAML = """\
pack: {{name: bench-upstream, version: 1.0.0, enabled: true}}
server: {{bind: ["127.0.0.1:{port}"], workers: {workers}}}
providers:
  targets:
    - {{id: mock, provider: mock, model: {model}, mock: {{chunks: {events}, chunk_size: {chunk_size}, delay: {delay}}}}}
"""

GATEWAY_YAML = """\
pack: {{name: bench-gateway, version: 1.0.0, enabled: true}}
server: {{bind: ["127.0.0.1:{port}"], workers: {workers}}}
providers:
  targets:
    - {{id: up, provider: openai, model: {model}, base_url: "http://127.0.0.1:{upstream}/v1"}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cmd(config: Path, port: int, workers: int, log_level: str) -> list[str]:
    return [sys.executable, "-m", "fastgw", "serve", "--config", str(config), "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--log-level", log_level]


class Server:
    """One `fastgw serve` master (and, through it, its workers) in its own session."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, cpus: list[int] | None) -> None:
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log
        self._log = open(log, "wb")
        # Own session: Ctrl-C on the terminal reaches only the harness, which then stops the
        # servers in order; and the whole group can be killed if the master misbehaves.
        # Affinity is set before exec so that the workers the master forks inherit it.
        pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pre)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: GET /readyz not 200 after {timeout:g} s\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {x}" for x in lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group we created
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._log.close()


# ------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------

@dataclass
class Result:
    mode: str
    target: str  # "gateway" | "direct"
    kind: str  # "load" | "c1"
    connections: int
    summary: Summary
    gateway_cpu_s: float | None = None
    gateway_cpu_ms_per_req: float | None = None
    gateway_cpu_cores: float | None = None
    upstream_cpu_ms_per_req: float | None = None
    upstream_cpu_cores: float | None = None
    box_busy_cores: float | None = None
    #: Busy CPU not accounted to gateway, upstream or load generator: other tenants, loopback softirq, harness.
    other_cores: float | None = None
    gateway_rss_mb: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["summary"] = self.summary.as_dict()
        return d


def _request(port: int, mode: str) -> bytes:
    return build_request("127.0.0.1", port, "/v1/chat/completions", chat_body(MODEL, mode == "stream"))


def load_run(args, mode: str, target: str, port: int, gateway: Server | None, upstream: Server) -> Result:
    """A closed-loop run over a shared absolute window, with CPU and RSS read at its edges."""
    t0 = time.monotonic() + 0.3  # time for the client processes to fork and set up their loops
    ws = t0 + args.warmup
    we = ws + args.duration
    spec = LoadSpec(host="127.0.0.1", port=port, request=_request(port, mode), mode=mode,
                    connections=args.connections, clients=args.clients, start_at=t0, window_start=ws,
                    window_end=we, grace=args.grace, cpus=parse_cpus(args.client_cpus))
    probes = {"up": CpuProbe(upstream.pid)}
    if gateway:
        probes["gw"] = CpuProbe(gateway.pid)
    rss: dict[int, float] = {}
    master_rss = None

    # The clients run in their own processes; this process only sleeps, reads /proc at the
    # edges of the window and RSS now and then inside it, so it barely competes for CPU.
    lr = LoadRun(spec)
    try:
        time.sleep(max(0.0, ws - time.monotonic()))
        for p in probes.values():
            p.start()
        busy0 = busy_cpu_seconds()
        while (left := we - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            if gateway and time.monotonic() < we:
                for pid in tree(gateway.pid):
                    r = rss_mb(pid)
                    if r is None:
                        continue
                    if pid == gateway.pid:
                        master_rss = max(master_rss or 0.0, r)
                    else:
                        rss[pid] = max(rss.get(pid, 0.0), r)
        cpu = {k: p.stop() for k, p in probes.items()}
        busy1 = busy_cpu_seconds()
    except BaseException:
        lr.close()  # interrupted: do not wait for the window to run out
        raise
    raw = lr.collect()
    s = summarize(raw, args.duration)
    res = Result(mode=mode, target=target, kind="load", connections=args.connections, summary=s)
    up_cpu, up_wall = cpu["up"]
    if s.requests:
        # Normalise the reading span to the window so a late wake-up of this process does not bias it.
        res.upstream_cpu_ms_per_req = up_cpu / up_wall * args.duration * 1000 / s.requests
    res.upstream_cpu_cores = up_cpu / up_wall
    res.box_busy_cores = (busy1 - busy0) / up_wall
    lg = [u for u in s.client_cpu_util if u is not None]
    if gateway:
        gw_cpu, gw_wall = cpu["gw"]
        res.gateway_cpu_s = gw_cpu / gw_wall * args.duration
        res.gateway_cpu_cores = gw_cpu / gw_wall
        if s.requests:
            res.gateway_cpu_ms_per_req = res.gateway_cpu_s * 1000 / s.requests
        res.gateway_rss_mb = {"master": master_rss, "workers": sorted(rss.values()),
                              "worker_max": max(rss.values()) if rss else None,
                              "workers_total": sum(rss.values()) if rss else None}
        if probes["gw"].pids_changed:
            res.warnings.append("gateway process set changed during the window (a worker died or restarted?)")
    res.other_cores = res.box_busy_cores - res.upstream_cpu_cores - (res.gateway_cpu_cores or 0.0) - sum(lg)
    _common_warnings(args, res)
    return res


def c1_run(args, mode: str, target: str, port: int) -> Result:
    """One connection, sequential requests: latency with nothing else in flight."""
    spec = LoadSpec(host="127.0.0.1", port=port, request=_request(port, mode), mode=mode, connections=1,
                    clients=1, requests=args.latency_requests, warmup_requests=args.latency_warmup,
                    timeout=args.latency_timeout, cpus=parse_cpus(args.client_cpus))
    t = time.monotonic()
    raw = run_load(spec)
    s = summarize(raw, time.monotonic() - t)
    res = Result(mode=mode, target=target, kind="c1", connections=1, summary=s)
    _common_warnings(args, res)
    return res


def _common_warnings(args, res: Result) -> None:
    s = res.summary
    where = f"{res.mode}/{res.target}/{res.kind}"
    if s.fatal:
        res.warnings.append(f"{where}: load generator process failed: {s.fatal}")
    if s.errors:
        res.warnings.append(f"{where}: errors {s.errors}")
    if s.stalled:
        res.warnings.append(f"{where}: {s.stalled} requests still open {args.grace:g} s after the window (stall)")
    if res.mode == "stream" and s.requests and (s.events_min != args.events + 3 or s.events_max != args.events + 3):
        res.warnings.append(f"{where}: events per response {s.events_min}..{s.events_max}, expected {args.events + 3}")
    if s.requests == 0:
        res.warnings.append(f"{where}: no request completed")
    hot = [u for u in s.client_cpu_util if u is not None and u > 0.9]
    if hot:
        res.warnings.append(f"{where}: load generator at {max(hot):.0%} CPU: it may be the bottleneck "
                            f"(try --clients 2)")


# ------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------

def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _lg(s: Summary) -> str:
    """Load generator CPU use over the window, per client process."""
    return ",".join(f"{u:.0%}" for u in s.client_cpu_util if u is not None) or "-"


def _added(gw: Result | None, direct: Result | None, q: str) -> float | None:
    if not gw or not direct:
        return None
    a, b = gw.summary.ttfb_ms.get(q), direct.summary.ttfb_ms.get(q)
    return None if a is None or b is None else a - b


def rows(args, results: list[Result]) -> list[dict]:
    """One summary row per mode, pairing gateway and direct runs."""
    out = []
    for mode in dict.fromkeys(r.mode for r in results):
        pick = {(r.target, r.kind): r for r in results if r.mode == mode}
        gl, dl = pick.get(("gateway", "load")), pick.get(("direct", "load"))
        gc, dc = pick.get(("gateway", "c1")), pick.get(("direct", "c1"))
        out.append({
            "mode": mode, "workers": args.workers, "connections": args.connections,
            "rps": gl.summary.rps if gl else None,
            "events_per_s": gl.summary.events_per_s if gl and mode == "stream" else None,
            "direct_rps": dl.summary.rps if dl else None,
            "gateway_cpu_ms_per_req": gl.gateway_cpu_ms_per_req if gl else None,
            "gateway_cpu_cores": gl.gateway_cpu_cores if gl else None,
            "added_ttfb_load_p50": _added(gl, dl, "p50"), "added_ttfb_load_p99": _added(gl, dl, "p99"),
            "added_ttfb_c1_p50": _added(gc, dc, "p50"), "added_ttfb_c1_p99": _added(gc, dc, "p99"),
            "gateway_rss_worker_max_mb": (gl.gateway_rss_mb or {}).get("worker_max") if gl else None,
            "errors": sum(sum(r.summary.errors.values()) + r.summary.stalled
                          for r in results if r.mode == mode and r.target == "gateway"),
        })
    return out


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=5).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        commit = "?"
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3], "commit": commit}


def print_summary(args, results: list[Result], summary_rows: list[dict]) -> None:
    print()
    print(f"{'run':<26}{'req':>8}{'req/s':>9}{'ev/s':>10}{'TTFB p50':>10}{'p99':>8}{'total p50':>11}{'p99':>8}"
          f"{'gw ms/req':>11}{'up ms/req':>11}{'box busy':>10}{'other':>7}{'lg CPU':>9}  errors")
    for r in results:
        s = r.summary
        print(f"{r.mode + '/' + r.target + '/' + r.kind:<26}{s.requests:>8}{s.rps:>9.0f}{s.events_per_s:>10.0f}"
              f"{_f(s.ttfb_ms['p50']):>10}{_f(s.ttfb_ms['p99']):>8}{_f(s.total_ms['p50']):>11}"
              f"{_f(s.total_ms['p99']):>8}{_f(r.gateway_cpu_ms_per_req, 3):>11}"
              f"{_f(r.upstream_cpu_ms_per_req, 3):>11}{_f(r.box_busy_cores):>10}{_f(r.other_cores):>7}{_lg(s):>9}  "
              f"{(s.errors or '') and s.errors}{' stalled=%d' % s.stalled if s.stalled else ''}")
    print()
    for row in summary_rows:
        print(f"[{row['mode']}] via gateway: {_f(row['rps'], 0)} req/s, {_f(row['events_per_s'], 0)} events/s "
              f"(direct: {_f(row['direct_rps'], 0)} req/s); gateway CPU {_f(row['gateway_cpu_ms_per_req'], 3)} "
              f"ms/request ({_f(row['gateway_cpu_cores'])} cores); added TTFB p50/p99: under load "
              f"{_f(row['added_ttfb_load_p50'])}/{_f(row['added_ttfb_load_p99'])} ms, at concurrency 1 "
              f"{_f(row['added_ttfb_c1_p50'], 3)}/{_f(row['added_ttfb_c1_p99'], 3)} ms; worker RSS "
              f"{_f(row['gateway_rss_worker_max_mb'], 1)} MB")
    for r in results:
        for w in r.warnings:
            print(f"WARNING: {w}")


def write_markdown(args, meta: dict, results: list[Result], summary_rows: list[dict], notes: list[str]) -> None:
    m = meta["machine"]
    lines = []
    if not args.results.exists():
        lines += ["# fastgw benchmark results", "",
                  "Appended by `python -m bench.stream --write`; see `python -m bench.stream --help` and the",
                  "docstring of `bench/stream.py` for the method. Added TTFB = TTFB through the gateway minus",
                  "TTFB directly against the same upstream, per percentile; CPU ms/request = utime+stime of the",
                  "gateway master and workers over the measured window / requests completed in it. \"Unattributed",
                  "busy cores\" = busy CPU of the whole box minus gateway, upstream and load generator: other tenants",
                  "of a shared machine, loopback softirq time and the harness itself.", ""]
    lines += [f"## {meta['date']}" + (f" — {args.note}" if args.note else ""), "",
              f"- machine: {m['nproc']} CPUs usable ({m['cpu_count']} online), {m['cpu_model']}, "
              f"Linux {m['kernel']}, Python {m['python']}; load average before the run: "
              f"{' '.join(m['loadavg_before'])}; busy cores with servers idle, before the runs: "
              f"{_f(meta.get('background_busy_cores'))}",
              f"- fastgw commit {m['commit']} (working tree may have had uncommitted changes)",
              f"- command: `{meta['command']}`",
              f"- upstream: fastgw mock, {args.upstream_workers} worker(s), {args.events} content chunks × "
              f"{args.chunk_size} chars, delay {args.delay:g} s; load: closed loop, {args.connections} connections "
              f"over {args.clients} process(es), {args.warmup:g} s warm-up + {args.duration:g} s measured; "
              f"concurrency-1 pass: {args.latency_requests} sequential requests"
              + (f" after {args.latency_warmup} warm-up" if args.latency_warmup else "")
              + f"; CPU pinning: gateway {args.gateway_cpus or 'none'}, upstream {args.upstream_cpus or 'none'}, "
                f"load generator {args.client_cpus or 'none'}",
              "",
              "| mode | workers | conns | req/s | SSE events/s | gw CPU ms/req | added TTFB p50 / p99 loaded (ms) "
              "| added TTFB p50 / p99 c=1 (ms) | gw worker RSS MB | gw errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary_rows:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['connections']} | {_f(r['rps'], 0)} | "
                     f"{_f(r['events_per_s'], 0)} | {_f(r['gateway_cpu_ms_per_req'], 3)} | "
                     f"{_f(r['added_ttfb_load_p50'])} / {_f(r['added_ttfb_load_p99'])} | "
                     f"{_f(r['added_ttfb_c1_p50'], 3)} / {_f(r['added_ttfb_c1_p99'], 3)} | "
                     f"{_f(r['gateway_rss_worker_max_mb'], 1)} | {r['errors']} |")
    lines += ["", "<details><summary>all runs</summary>", "",
              "| run | conns | requests | req/s | TTFB p50 / p99 (ms) | total p50 / p99 (ms) | gw CPU ms/req "
              "| upstream CPU ms/req | box busy cores | unattributed busy cores | load gen CPU | errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for x in results:
        s = x.summary
        lines.append(f"| {x.mode}/{x.target}/{x.kind} | {x.connections} | {s.requests} | {s.rps:.0f} | "
                     f"{_f(s.ttfb_ms['p50'], 3)} / {_f(s.ttfb_ms['p99'], 3)} | "
                     f"{_f(s.total_ms['p50'], 3)} / {_f(s.total_ms['p99'], 3)} | "
                     f"{_f(x.gateway_cpu_ms_per_req, 3)} | {_f(x.upstream_cpu_ms_per_req, 3)} | "
                     f"{_f(x.box_busy_cores)} | {_f(x.other_cores)} | {_lg(s)} | {s.errors or ''}{' stalled %d' % s.stalled if s.stalled else ''} |")
    lines += ["", "</details>", ""]
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    with open(args.results, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.stream",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Benchmark fastgw on the streaming path: start a mock upstream (fastgw's built-in mock "
                    "provider) and the gateway in front of it, drive both with a closed-loop uvloop load "
                    "generator, and report requests/s, SSE events/s, gateway CPU ms per request, added "
                    "time-to-first-event (gateway minus direct, under load and at concurrency 1) and worker "
                    "RSS. Everything listens on 127.0.0.1 and is stopped at the end.",
        epilog="Example: python -m bench.stream --duration 5 --mode both --write "
               "(on a shared 2-core box, expect all three processes to compete for CPU: compare CPU ms/request "
               "rather than requests/s).")
    g = p.add_argument_group("load")
    g.add_argument("--mode", choices=["stream", "nonstream", "both"], default="stream",
                   help="request stream:true, stream:false, or run both")
    g.add_argument("--connections", "-c", type=int, default=64, help="connections kept in flight (closed loop)")
    g.add_argument("--clients", "-p", type=int, default=1, help="load generator processes sharing the connections")
    g.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds per loaded run")
    g.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each loaded run")
    g.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight requests get after the window before counting as stalled")
    g.add_argument("--concurrency1", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the unloaded latency pass: 1 connection, sequential requests")
    g.add_argument("--latency-requests", type=int, default=2000, help="recorded requests of the concurrency-1 pass")
    g.add_argument("--latency-warmup", type=int, default=100, help="unrecorded requests before them")
    g.add_argument("--latency-timeout", type=float, default=60.0, help="upper bound on one concurrency-1 pass (s)")
    g.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the same load directly against the upstream (needed for added TTFB)")
    g = p.add_argument_group("servers")
    g.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    g.add_argument("--upstream-workers", type=int, default=1, help="mock upstream worker processes")
    g.add_argument("--events", type=int, default=50, help="content chunks per mock response")
    g.add_argument("--chunk-size", type=int, default=4, help="characters per content chunk")
    g.add_argument("--delay", type=float, default=0.0, help="seconds between mock chunks")
    g.add_argument("--gateway-port", type=int, default=0, help="0: pick a free port")
    g.add_argument("--upstream-port", type=int, default=0, help="0: pick a free port")
    g.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="log level of both servers (their logs go to files; info logs may cost CPU)")
    g.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to wait for GET /readyz == 200")
    g = p.add_argument_group("CPU pinning (lists like 0 or 0,1 or 0-3)")
    g.add_argument("--gateway-cpus", help="pin the gateway master and workers")
    g.add_argument("--upstream-cpus", help="pin the mock upstream")
    g.add_argument("--client-cpus", help="pin the load generator processes")
    g = p.add_argument_group("output")
    g.add_argument("--write", action="store_true", help="append a markdown section to --results")
    g.add_argument("--results", type=Path, default=RESULTS, help="markdown file for --write")
    g.add_argument("--note", default="", help="text added to the --write section heading")
    g.add_argument("--json", type=Path, metavar="PATH", help="write the raw numbers as JSON")
    g.add_argument("--keep-logs", action="store_true", help="keep the servers' log directory and print its path")
    return p


def _rmtree(d: Path) -> None:
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def _on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt  # unwinds through the `finally` that stops the servers


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    modes = ["stream", "nonstream"] if args.mode == "both" else [args.mode]
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "command": "python -m bench.stream " + shlex.join(sys.argv[1:] if argv is None else argv),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    tmp = Path(tempfile.mkdtemp(prefix="fastgw-bench-"))
    up_port = args.upstream_port or free_port()
    gw_port = args.gateway_port or free_port()
    (tmp / "upstream.yaml").write_text(UPSTREAM_YAML.format(
        port=up_port, workers=args.upstream_workers, model=MODEL, events=args.events, chunk_size=args.chunk_size,
        delay=args.delay))
    (tmp / "gateway.yaml").write_text(GATEWAY_YAML.format(port=gw_port, workers=args.workers, model=MODEL,
                                                          upstream=up_port))
    servers: list[Server] = []
    results: list[Result] = []
    notes: list[str] = []
    rc = 0
    try:
        upstream = Server("upstream", server_cmd(tmp / "upstream.yaml", up_port, args.upstream_workers,
                                                 args.log_level), up_port, tmp / "upstream.log",
                          parse_cpus(args.upstream_cpus))
        servers.append(upstream)
        gateway = Server("gateway", server_cmd(tmp / "gateway.yaml", gw_port, args.workers, args.log_level),
                         gw_port, tmp / "gateway.log", parse_cpus(args.gateway_cpus))
        servers.append(gateway)
        upstream.wait_ready(args.startup_timeout)
        gateway.wait_ready(args.startup_timeout)
        print(f"upstream pid {upstream.pid} on :{up_port}, gateway pid {gateway.pid} on :{gw_port} "
              f"(workers {tree(gateway.pid)[1:]}); logs in {tmp}", flush=True)
        # What the box does without our load (other tenants of a shared machine), for the record.
        b0, t = busy_cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        meta["background_busy_cores"] = (busy_cpu_seconds() - b0) / (time.monotonic() - t)
        print(f"background load before the runs: {meta['background_busy_cores']:.2f} busy cores", flush=True)
        for mode in modes:
            plan = [("gateway", "load", gw_port)] + ([("direct", "load", up_port)] if args.direct else [])
            if args.concurrency1:
                plan += [("gateway", "c1", gw_port)] + ([("direct", "c1", up_port)] if args.direct else [])
            for target, kind, port in plan:
                print(f"{mode}/{target}/{kind} ...", flush=True)
                for srv in servers:
                    if srv.proc.poll() is not None:
                        raise RuntimeError(f"{srv.name} exited with {srv.proc.returncode}\n{srv.log_tail()}")
                if kind == "load":
                    r = load_run(args, mode, target, port, gateway if target == "gateway" else None, upstream)
                else:
                    r = c1_run(args, mode, target, port)
                results.append(r)
        for srv in servers:
            if srv.proc.poll() is not None:
                notes.append(f"{srv.name} exited during the run with {srv.proc.returncode}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        rc = 1
    finally:
        for srv in reversed(servers):  # gateway first, so it does not see its upstream vanish mid-request
            srv.stop()
    for srv in servers:
        text = srv.log_path.read_text(errors="replace") if srv.log_path.exists() else ""
        n_tb = text.count("Traceback")
        n_err = sum(1 for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line)
        if n_tb or n_err:
            notes.append(f"{srv.name} log: {n_err} ERROR lines, {n_tb} tracebacks (see {srv.log_path})")
            args.keep_logs = True
    if not results:
        if not args.keep_logs:
            _rmtree(tmp)
        return rc or 1
    summary_rows = rows(args, results)
    print_summary(args, results, summary_rows)  # prints the runs' own warnings
    for n in notes:
        print(f"NOTE: {n}")
    notes = [w for r in results for w in r.warnings] + notes
    if args.json:
        args.json.write_text(json.dumps({**meta, "rows": summary_rows, "runs": [r.as_dict() for r in results],
                                         "notes": notes}, indent=2))
    if args.write and rc == 0:  # an interrupted or failed run is not a result worth keeping
        write_markdown(args, meta, results, summary_rows, notes)
        print(f"appended to {args.results}")
    if args.keep_logs:
        print(f"server logs kept in {tmp}")
    else:
        _rmtree(tmp)
    if rc == 0 and any(r.warnings for r in results):
        rc = 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
