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
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.ports import free_port
from bench.loadgen import (LoadRun, LoadSpec, Summary, build_request, chat_body, parse_cpus, percentile, run_load,
                           summarize)
from bench.text import PII_VALUES, expected_redaction, make_text
from bench.trace import TraceSpec, run_trace

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


def task_cpu_seconds(pid: int) -> float:
    """CPU time of one live process to the nanosecond: the sum of its threads' run time from
    /proc/<pid>/task/*/schedstat (utime+stime counts whole clock ticks, 10 ms, too coarse for a few
    hundred events). Falls back to cpu_seconds() where schedstat is missing; 0 if the process is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    ns = 0
    for tid in tids:
        try:
            ns += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # a thread that just ended
        except (OSError, ValueError, IndexError):
            return cpu_seconds(pid)
    return ns / 1e9


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
    #: Read task_cpu_seconds (ns resolution) rather than utime+stime (clock ticks).
    precise: bool = False

    def _read(self, pid: int) -> float:
        return task_cpu_seconds(pid) if self.precise else cpu_seconds(pid)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {p: self._read(p) for p in tree(self.root)}

    def stop(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since start(). A process that appeared counts from 0;
        one that vanished loses its last interval, which is flagged in pids_changed."""
        t1 = time.monotonic()
        cpu1 = {p: self._read(p) for p in tree(self.root)}
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
    - {{id: mock, provider: mock, model: {model}, mock: {{chunks: {events}, chunk_size: {chunk_size}, delay: {delay}{text}}}}}
    - {{id: probe, provider: mock, model: {probe}, mock: {{text: "{probe_text}"}}}}
"""

GATEWAY_YAML = """\
pack: {{name: bench-gateway, version: 1.0.0, enabled: true}}
server: {{bind: ["127.0.0.1:{port}"], workers: {workers}}}
providers:
  targets:
    - {{id: up, provider: openai, model: {model}, base_url: "http://127.0.0.1:{upstream}/v1"}}
    - {{id: probe, provider: openai, model: {probe}, base_url: "http://127.0.0.1:{upstream}/v1"}}
{policy}"""

#: A second model on both servers, never used by the load: its answer carries one email, so one request to it
#: shows whether the gateway's policy is really active (clean prose looks the same with and without it).
PROBE_MODEL = "bench-probe"
PROBE_TEXT = "Policy probe: write to jane.doe@example.com today."

#: Every request carries this gateway key: rbac (in the `chain` policy) checks it; without rbac it is ignored.
BENCH_KEY = "fgw-bench-key"
_AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}

#: Gateway config lines per --policy (none: no chain at all, the pass-through path; chain: every realtime
#: policy, i.e. all but the buffered quality-scorer).
POLICY_YAML = {
    "none": "",
    **{a: f"policies: {{chain: [pii-detector]}}\npolicy:\n  pii-detector: {{action: {a}}}\n"
       for a in ("redact", "observe", "block")},
    "chain": (
        "policies: {chain: [rbac, prompt-injection, pii-detector, safety-filter, audit-logger]}\n"
        "policy:\n"
        "  rbac:\n"
        f"    keys: [{{name: bench, sha256: 'b4942575301507793ec980b9cbedc6599bb566a22ebfbfe71c60c11c05a504f1', roles: [all]}}]\n"
        "    roles: {all: {models: ['*'], endpoints: ['*'], stream: true}}\n"
        "  pii-detector: {action: redact}\n"
        "  safety-filter: {action: redact, terms: [forbidden fruit, secret sauce, widget x]}\n"
        "  audit-logger: {path: /tmp/fastgw-bench-audit, fsync: interval, retention_days: 1}\n"
    ),
}


def server_cmd(config: Path, port: int, workers: int, log_level: str) -> list[str]:
    return [sys.executable, "-m", "fastgw", "serve", "--config", str(config), "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--log-level", log_level]


class Server:
    """One `fastgw serve` master (and, through it, its workers) in its own session.

    Started with `cwd` = the source directory, so `python -m fastgw` imports the `fastgw` package found
    there first (ahead of the editable install's finder): `--source` can point at a frozen export of a
    commit while the checkout is being edited.
    """

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, cpus: list[int] | None,
                 cwd: Path = REPO) -> None:
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log
        self._log = open(log, "wb")
        # Own session: Ctrl-C on the terminal reaches only the harness, which then stops the
        # servers in order; and the whole group can be killed if the master misbehaves.
        # Affinity is set before exec so that the workers the master forks inherit it.
        pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log,
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
    return build_request("127.0.0.1", port, "/v1/chat/completions", chat_body(MODEL, mode == "stream"), _AUTH)


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
# what the gateway writes: one request, read whole (pii-detector check)
# ------------------------------------------------------------------------------------------

def sse_content(body: bytes) -> tuple[str, int, list[str]]:
    """(concatenated choice-0 text of a streamed chat answer, data events, error messages in it)."""
    parts, errors, n = [], [], 0
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:"))
        if not block.strip() or not any(line.startswith(b"data:") for line in block.split(b"\n")):
            continue
        n += 1
        if data == b"[DONE]":
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            errors.append(f"unparsable event {data[:80]!r}")
            continue
        if "error" in obj:
            errors.append(str(obj["error"].get("message", obj["error"]))[:120])
        for ch in obj.get("choices") or []:
            if ch.get("index", 0) == 0:
                parts.append((ch.get("delta") or {}).get("content") or ch.get("text") or "")
    return "".join(parts), n, errors


def _values_in(values: list[tuple[int, str, str]]) -> dict[str, str]:
    return {v: e for _, e, v in values}


def content_check(content: str, upstream_text: str, values: list[tuple[int, str, str]], policy: str) -> dict:
    """Compare what a client got with what it should get: the redacted upstream text (redact), the text as is."""
    kinds = _values_in(values)
    expected = expected_redaction(upstream_text, values) if policy in ("redact", "chain") else upstream_text
    redacted: dict[str, int] = {}
    i = 0
    while (i := content.find("[REDACTED:", i)) >= 0:
        j = content.find("]", i)
        ent = content[i + 10:j] if j > 0 else "?"
        redacted[ent] = redacted.get(ent, 0) + 1
        i += 10
    # Leaks: every inserted value, and every value the bench knows (so a value mangled into the prose is seen too).
    leaked = {v: content.count(v) for v in {**kinds, **{v: e for e, v in PII_VALUES}} if v in content}
    return {"values_in_text": len(values), "redacted": sum(redacted.values()), "redacted_by_entity": redacted,
            "leaked": leaked, "as_expected": content == expected, "chars": len(content)}


def output_check(args, port: int, stream: bool, upstream_text: str | None,
                 values: list[tuple[int, str, str]], policy: str) -> dict:
    """One request read whole through urllib (a client like curl), checked against the upstream text."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=chat_body(MODEL, stream),
                                 headers={"Content-Type": "application/json", **_AUTH}, method="POST")
    out: dict = {"stream": stream}
    try:
        with urllib.request.urlopen(req, timeout=30 + args.delay * (args.events + 3) * 2) as r:
            out["status"], body = r.status, r.read()
    except urllib.error.HTTPError as e:
        out["status"], body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    if stream:
        content, out["events"], out["errors"] = sse_content(body)
    else:
        try:
            content = json.loads(body)["choices"][0]["message"]["content"] or ""
            out["errors"] = []
        except (ValueError, KeyError, IndexError, TypeError):
            content, out["errors"] = "", [f"unparsable body {body[:120]!r}"]
    out["content"] = content
    if upstream_text is not None:
        out.update(content_check(content, upstream_text, values, policy))
        out["policy"] = policy
    return out


def policy_probe(port: int) -> str:
    """What the gateway does to an answer with one email: "redacted", "passed through", or what went wrong."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=chat_body(PROBE_MODEL, True), headers={"Content-Type": "application/json", **_AUTH},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            content, _, errors = sse_content(r.read())
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    if errors:
        return f"error event ({errors[0]})"
    if "[REDACTED:EMAIL]" in content and "jane.doe@example.com" not in content:
        return "redacted"
    if content == PROBE_TEXT:
        return "passed through"
    return f"unexpected answer {content[:80]!r}"


def _check_line(where: str, c: dict) -> str:
    if "error" in c:
        return f"{where}: request failed: {c['error']}"
    s = f"{where}: HTTP {c['status']}"
    if c["stream"]:
        s += f", {c['events']} data events"
    if "redacted" in c:
        ents = ", ".join(f"{k} {v}" for k, v in sorted(c["redacted_by_entity"].items()))
        # Through a redacting gateway a value in the answer is a leak; otherwise it is simply passed through.
        found = "leaked values" if c.get("policy") == "redact" else "PII values in the answer"
        s += (f", {c['values_in_text']} PII values in the upstream text, `[REDACTED:` × {c['redacted']}"
              + (f" ({ents})" if ents else "") + f", {found}: {sum(c['leaked'].values()) or 'none'}"
              + (f" {c['leaked']}" if c["leaked"] else "")
              + f", text {'as expected' if c['as_expected'] else 'NOT as expected'}")
    if c.get("errors"):
        s += f", errors in the answer: {c['errors']}"
    return s


# ------------------------------------------------------------------------------------------
# per-event arrival trace (holdback)
# ------------------------------------------------------------------------------------------

def trace_pass(args, port: int, upstream_text: str | None, values: list[tuple[int, str, str]],
               policy: str) -> dict:
    """`--trace` sequential streamed requests; per response the offsets t_i - t_0 of its data events."""
    spec = TraceSpec(host="127.0.0.1", port=port, request=_request(port, "stream"), requests=args.trace,
                     warmup=args.trace_warmup,
                     timeout=args.latency_timeout + args.trace * (args.delay * (args.events + 3) + 0.05) * 2)
    res = run_trace(spec)
    offsets = [[t - resp.times[0] for t in resp.times] for resp in res.responses if resp.times]
    first = [resp.times[0] for resp in res.responses]
    out: dict = {"requests": len(res.responses), "errors": res.errors, "offsets": offsets,
                 "first_event_ms_p50": (percentile(sorted(first), 50) or 0.0) * 1000 if first else None,
                 "reads_per_response": (sum(r.reads for r in res.responses) / len(res.responses)
                                        if res.responses else None)}
    if upstream_text is not None and res.responses:
        # Every traced response is checked, not only the single --check request.
        bad = leaks = 0
        for resp in res.responses:
            c = content_check(sse_content(resp.body)[0], upstream_text, values, policy)
            bad += not c["as_expected"]
            leaks += sum(c["leaked"].values()) if policy in ("redact", "chain") else 0
        out["not_as_expected"] = bad
        out["leaked_values"] = leaks
    return out


def baseline_offsets(offsets: list[list[float]]) -> list[float]:
    """Median arrival offset per event index over the responses of a run (the pass-through schedule)."""
    n = min((len(o) for o in offsets), default=0)
    return [percentile(sorted(o[i] for o in offsets), 50) for i in range(n)]


def holdback_stats(offsets: list[list[float]], delay: float, baseline: list[float] | None = None) -> dict:
    """Holdback of each data event after the first, in events and in ms, on three bases.

    vs ideal: h_i = (t_i - t_0)/delay - i, the upstream's nominal schedule. It includes the mock's own timer
    overshoot, which makes its period 3-6% longer than `delay` (how much varies from one upstream process
    to the next), i.e. 1.5-3 events by event 50 even through a pass-through gateway.
    vs paced: h_i = (t_i - t_0)/d_r - i with d_r = (t_last - t_0)/(n - 1), the response's own mean event
    period. The last data event ([DONE], written with the finish chunk's settling) is never held by an
    output policy, so d_r is the upstream's real pace for that very response; the last event is the
    calibration point and is left out of these figures. This is the basis that isolates holdback.
    vs baseline: h_i = (t_i - t_0 - b_i)/delay with b_i the median offset of event i in another run
    (pass-through); it cancels only the drift the two runs share.
    """
    def dist(hs: list[float], ms: list[float]) -> dict:
        if not hs:
            return {}
        r = [int(h + 0.5) if h >= 0 else -int(-h + 0.5) for h in hs]  # round half away from zero
        n = len(r)
        ms_s = sorted(ms)
        return {"events": n,
                "share": {"0": sum(1 for x in r if x <= 0) / n, "1": sum(1 for x in r if x == 1) / n,
                          "2": sum(1 for x in r if x == 2) / n, ">=3": sum(1 for x in r if x >= 3) / n},
                "negative": sum(1 for x in r if x < 0) / n,
                "h_mean": sum(hs) / n, "h_p50": percentile(sorted(hs), 50), "h_p99": percentile(sorted(hs), 99),
                "h_max": max(hs),
                "added_ms_p50": percentile(ms_s, 50) * 1000, "added_ms_p99": percentile(ms_s, 99) * 1000,
                "added_ms_max": ms_s[-1] * 1000}

    out: dict = {}
    if delay > 0:
        hs, ms = [], []
        for o in offsets:
            for i in range(1, len(o)):
                hs.append(o[i] / delay - i)
                ms.append(o[i] - i * delay)
        out["vs_ideal"] = dist(hs, ms)
        hs, ms = [], []
        for o in offsets:
            n = len(o)
            if n < 3 or o[-1] <= 0:
                continue
            d_r = o[-1] / (n - 1)
            for i in range(1, n - 1):
                hs.append(o[i] / d_r - i)
                ms.append(o[i] - i * d_r)
        out["vs_paced"] = dist(hs, ms)
        periods = sorted(o[-1] / (len(o) - 1) for o in offsets if len(o) >= 3)
        out["period_ms"] = {"p50": percentile(periods, 50) * 1000, "min": periods[0] * 1000,
                            "max": periods[-1] * 1000} if periods else None
    if baseline:
        hs, ms = [], []
        for o in offsets:
            for i in range(1, min(len(o), len(baseline))):
                d = o[i] - baseline[i]
                ms.append(d)
                hs.append(d / delay if delay > 0 else 0.0)
        out["vs_baseline"] = dist(hs, ms)
    return out


def _hb_cells(d: dict) -> str:
    if not d:
        return "- | - | - | - | - | - | -"
    sh = d["share"]
    return (f"{sh['0']:.1%} | {sh['1']:.1%} | {sh['2']:.1%} | {sh['>=3']:.1%} | {d['h_mean']:.2f} | "
            f"{d['added_ms_p50']:.2f} | {d['added_ms_p99']:.2f}")


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
            # Per SSE event delivered to the client (role, content, finish chunks and [DONE]).
            "events_per_response": (gl.summary.events_per_s / gl.summary.rps
                                    if gl and mode == "stream" and gl.summary.rps else None),
            "gateway_cpu_us_per_event": (gl.gateway_cpu_s * 1e6 / (gl.summary.events_per_s * args.duration)
                                         if gl and mode == "stream" and gl.gateway_cpu_s is not None
                                         and gl.summary.events_per_s else None),
            "gateway_cpu_cores": gl.gateway_cpu_cores if gl else None,
            "added_ttfb_load_p50": _added(gl, dl, "p50"), "added_ttfb_load_p99": _added(gl, dl, "p99"),
            "added_ttfb_c1_p50": _added(gc, dc, "p50"), "added_ttfb_c1_p99": _added(gc, dc, "p99"),
            "gateway_rss_worker_max_mb": (gl.gateway_rss_mb or {}).get("worker_max") if gl else None,
            "errors": sum(sum(r.summary.errors.values()) + r.summary.stalled
                          for r in results if r.mode == mode and r.target == "gateway"),
        })
    return out


def finish_run(args, lines: list[str], rc: int, problems: list[str], tmp: Path, write: bool = True) -> int:
    """The end every harness run shares: its markdown appended to `args.results` with `--write` (only a run that
    completed, and had something to write), its logs kept with `--keep-logs` or removed, and its exit code (2
    when it completed with problems)."""
    if args.write and rc == 0 and write:  # an interrupted or failed run is not a result worth keeping
        new = not args.results.exists()
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write(("# fastgw benchmark results\n\n" if new else "\n") + "\n".join(lines) + "\n")
        print(f"appended to {args.results}")
    if args.keep_logs:
        print(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if rc == 0 and problems:
        rc = 2
    return rc


def machine(source: Path = REPO) -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True,
                                text=True, timeout=5).stdout.strip() or "?"
        if not (source / ".git").exists() and source != REPO:
            # An export made by `python -m bench.pii --rev` names its commit in this file.
            mark = source / ".bench-commit"
            commit = mark.read_text().strip() if mark.exists() else "? (not a git checkout)"
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
              f"ms/request, {_f(row['gateway_cpu_us_per_event'], 1)} µs/event "
              f"({_f(row['gateway_cpu_cores'])} cores); added TTFB p50/p99: under load "
              f"{_f(row['added_ttfb_load_p50'])}/{_f(row['added_ttfb_load_p99'])} ms, at concurrency 1 "
              f"{_f(row['added_ttfb_c1_p50'], 3)}/{_f(row['added_ttfb_c1_p99'], 3)} ms; worker RSS "
              f"{_f(row['gateway_rss_worker_max_mb'], 1)} MB")
    for r in results:
        for w in r.warnings:
            print(f"WARNING: {w}")


def _policy_words(args) -> str:
    if args.policy == "chain":
        return "the full realtime chain: rbac, prompt-injection, pii-detector (redact), safety-filter (redact), audit-logger"
    return "none (pass-through)" if args.policy == "none" else f"pii-detector, action {args.policy}"


def _text_words(args) -> str:
    if args.text == "default":
        return "the mock's built-in paragraph (repeated)"
    n = args.events * args.chunk_size
    if args.text == "prose":
        return f"generated prose, {n} characters, seed {args.text_seed}"
    return f"generated prose with 1 PII value per {args.pii_every} characters, {n} characters, seed {args.text_seed}"


def _trace_table(args, traces: dict) -> list[str]:
    lines = [f"Per-event holdback at concurrency 1, upstream paced at {args.delay * 1000:g} ms per event "
             f"({args.trace} sequential requests after {args.trace_warmup} warm-up; h_i = (t_i - t_0)/delay - i "
             f"for each data event after the first, rounded to whole events; basis \"ideal\": the nominal "
             f"schedule i × delay (includes the mock's timer overshoot); \"paced\": delay replaced by the "
             f"response's own mean event period (t_last - t_0)/(n - 1), last event left out; \"direct\": the "
             f"median arrival of the same event index straight from the upstream):", "",
             "| run | basis | responses | h=0 | h=1 | h=2 | h≥3 | mean h | added ms p50 | added ms p99 | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for target, t in traces.items():
        for basis, key in (("ideal", "vs_ideal"), ("paced", "vs_paced"), ("direct", "vs_baseline")):
            if key in t.get("stats", {}):
                lines.append(f"| {target} | {basis} | {t['requests']} | {_hb_cells(t['stats'][key])} | "
                             f"{t['errors'] or ''} |")
    return lines


def write_markdown(args, meta: dict, results: list[Result], summary_rows: list[dict], notes: list[str],
                   checks: dict | None = None, traces: dict | None = None) -> None:
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
              (f"- fastgw commit {m['commit']} (working tree may have had uncommitted changes)"
               if args.source == REPO else f"- fastgw from {args.source} (commit: {m['commit']})"),
              f"- command: `{meta['command']}`",
              f"- upstream: fastgw mock, {args.upstream_workers} worker(s), {args.events} content chunks × "
              f"{args.chunk_size} chars, delay {args.delay:g} s; load: closed loop, {args.connections} connections "
              f"over {args.clients} process(es), {args.warmup:g} s warm-up + {args.duration:g} s measured; "
              f"concurrency-1 pass: {args.latency_requests} sequential requests"
              + (f" after {args.latency_warmup} warm-up" if args.latency_warmup else "")
              + f"; CPU pinning: gateway {args.gateway_cpus or 'none'}, upstream {args.upstream_cpus or 'none'}, "
                f"load generator {args.client_cpus or 'none'}",
              f"- gateway output policy: {_policy_words(args)}; upstream text: {_text_words(args)}"]
    if meta.get("policy_probe"):
        lines.append(f"- policy probe (model {PROBE_MODEL}, an answer with one email, through the gateway): "
                     f"{meta['policy_probe']}")
    for where, c in (checks or {}).items():
        lines.append(f"- output check, {_check_line(where, c)}")
    lines.append("")
    if results:
        lines += _run_tables(summary_rows, results)
    if traces:
        lines += _trace_table(args, traces) + [""]
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    with open(args.results, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _run_tables(summary_rows: list[dict], results: list[Result]) -> list[str]:
    lines = ["| mode | workers | conns | req/s | SSE events/s | gw CPU ms/req | gw CPU µs/event "
              "| added TTFB p50 / p99 loaded (ms) | added TTFB p50 / p99 c=1 (ms) | gw worker RSS MB | gw errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary_rows:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['connections']} | {_f(r['rps'], 0)} | "
                     f"{_f(r['events_per_s'], 0)} | {_f(r['gateway_cpu_ms_per_req'], 3)} | "
                     f"{_f(r['gateway_cpu_us_per_event'], 1)} | "
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
    return lines


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

class _Fmt(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; descriptions and epilog kept as written (they are wrapped by `_w`)."""


def _w(text: str) -> str:
    return textwrap.fill(text, width=min(100, shutil.get_terminal_size().columns - 2))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.stream",
        formatter_class=_Fmt,
        description=_w("Benchmark fastgw on the streaming path: start a mock upstream (fastgw's built-in mock "
                    "provider) and the gateway in front of it, drive both with a closed-loop uvloop load "
                    "generator, and report requests/s, SSE events/s, gateway CPU ms per request, added "
                    "time-to-first-event (gateway minus direct, under load and at concurrency 1) and worker "
                    "RSS. Everything listens on 127.0.0.1 and is stopped at the end."),
        epilog="Examples:\n"
               "  python -m bench.stream --duration 5 --mode both --write\n"
               "  python -m bench.stream --duration 5 --policy redact --text pii --pii-every 200\n"
               "  python -m bench.stream --no-load --no-concurrency1 --delay 0.005 --trace 100 --policy redact "
               "--text prose\n"
               + _w("On a shared 2-core box all three processes compete for CPU: compare CPU per request or per event "
               "rather than requests/s. `python -m bench.pii` runs the pii-detector comparison (off / redact on "
               "prose / redact on PII text, plus the holdback trace) and reports the differences."))
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
                   help="also run the same load (and --trace) directly against the upstream (needed for added "
                        "TTFB)")
    g.add_argument("--load", action=argparse.BooleanOptionalAction, default=True,
                   help="run the closed-loop loaded pass (--no-load: only --check, concurrency-1 and --trace)")
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
    g.add_argument("--source", type=Path, default=REPO,
                   help="directory whose fastgw package is started (cwd of `python -m fastgw serve`), e.g. a "
                        "`git archive` export of one commit while the checkout is being edited")
    g = p.add_argument_group(
        "output policy and reply text",
        _w("The gateway can run the pii-detector output policy (config: policies: {chain: [pii-detector]}, "
        "policy: {pii-detector: {action: ...}}), and the mock upstream can answer with generated text "
        "(targets[].mock.text) of exactly --events x --chunk-size characters: English-like prose from a fixed "
        "word list (seeded), or the same prose with one PII value per --pii-every characters, cycling through "
        "an email, a US SSN, a Luhn-valid card, an E.164 phone, an IPv4 address, an IBAN and an AWS key id "
        "(bench/text.py). Before the runs, one request is read whole through the gateway and directly (like "
        "curl) and its text compared with what the policy should make of the upstream text: count of "
        "`[REDACTED:`, PII values left in the answer, exact match."))
    g.add_argument("--policy", choices=["none", "redact", "observe", "block", "chain"], default="none",
                   help="gateway output policy: none = no policy chain (pass-through); otherwise pii-detector "
                        "with this action (block on PII text ends the streams early, which counts as errors)")
    g.add_argument("--text", choices=["default", "prose", "pii"], default="default",
                   help="mock reply text: default = the mock's built-in paragraph, prose = generated clean "
                        "prose, pii = prose with PII values")
    g.add_argument("--pii-every", type=int, default=200, metavar="N",
                   help="with --text pii: one PII value per N characters of text (placed near the middle of "
                        "each N-character block, so 50 x 4 characters and N=200 carry one value)")
    g.add_argument("--text-seed", type=int, default=1, help="seed of the generated text")
    g.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="read one answer whole through the gateway and directly, and check it (see above)")
    g = p.add_argument_group(
        "holdback trace",
        _w("--trace N sends N sequential streamed requests on one connection (after --trace-warmup) and stamps "
        "the arrival of every data event. With a paced upstream (--delay > 0), per data event i after the "
        "first: h_i = (t_i - t_0)/delay - i, t_0 = arrival of the first data event, rounded to whole events "
        "(share of events held 0, 1, 2, >=3 events) and the added latency in ms, against the nominal schedule "
        "(which includes the mock's own timer drift, ~5% at 5 ms) and, with --direct, against the median "
        "arrival of the same event index straight from the upstream. Every traced answer is also checked for "
        "leaked PII values and exact text."))
    g.add_argument("--trace", type=int, default=0, metavar="N", help="traced requests (0: no trace pass)")
    g.add_argument("--trace-warmup", type=int, default=10, help="unrecorded requests before them")
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


def _check_notes(args, checks: dict, traces: dict) -> list[str]:
    """Failed output checks and trace errors, as notes starting with CHECK (they make the exit status 2)."""
    out = []
    for where, c in checks.items():
        if "error" in c or c.get("status") != 200:
            out.append(f"CHECK {where}: request failed ({c.get('error') or c.get('status')})")
        elif "as_expected" in c and not c["as_expected"] and not (args.policy == "block" and args.text == "pii"):
            out.append(f"CHECK {where}: the answer is not the expected text ({_check_line(where, c)})")
        if where.endswith("/gateway") and args.policy in ("redact", "chain") and c.get("leaked"):
            out.append(f"CHECK {where}: PII leaked through the redacting gateway: {c['leaked']}")
    for target, t in traces.items():
        if t["errors"]:
            out.append(f"CHECK trace {target}: errors {t['errors']}")
        if t.get("not_as_expected"):
            out.append(f"CHECK trace {target}: {t['not_as_expected']} of {t['requests']} answers not the expected "
                       f"text")
        if t.get("leaked_values"):
            out.append(f"CHECK trace {target}: {t['leaked_values']} PII values leaked")
    return out


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
    args.source = args.source.resolve()
    if not (args.source / "fastgw" / "__main__.py").exists():
        _parser().error(f"--source {args.source}: no fastgw package there")
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(args.source),
            "command": "python -m bench.stream " + shlex.join(sys.argv[1:] if argv is None else argv),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.text == "pii" and args.pii_every <= 0:
        _parser().error("--pii-every must be positive")
    if args.trace and args.delay <= 0:
        print("bench: --trace without --delay: holdback in events needs a paced upstream; only the "
              "per-index comparison with the direct run is reported", file=sys.stderr)
    upstream_text: str | None = None
    values: list[tuple[int, str, str]] = []
    text_yaml = ""
    if args.text != "default":
        upstream_text, values = make_text(args.text, args.events * args.chunk_size, args.pii_every, args.text_seed)
        # A JSON string is a valid YAML double-quoted scalar.
        text_yaml = ", text: " + json.dumps(upstream_text)
        meta["text"] = {"kind": args.text, "chars": len(upstream_text), "values": values}
    tmp = Path(tempfile.mkdtemp(prefix="fastgw-bench-"))
    up_port = args.upstream_port or free_port()
    gw_port = args.gateway_port or free_port()
    (tmp / "upstream.yaml").write_text(UPSTREAM_YAML.format(
        port=up_port, workers=args.upstream_workers, model=MODEL, events=args.events, chunk_size=args.chunk_size,
        delay=args.delay, text=text_yaml, probe=PROBE_MODEL, probe_text=PROBE_TEXT))
    (tmp / "gateway.yaml").write_text(GATEWAY_YAML.format(port=gw_port, workers=args.workers, model=MODEL,
                                                          upstream=up_port, policy=POLICY_YAML[args.policy],
                                                          probe=PROBE_MODEL))
    servers: list[Server] = []
    results: list[Result] = []
    notes: list[str] = []
    checks: dict[str, dict] = {}
    traces: dict[str, dict] = {}
    rc = 0
    try:
        upstream = Server("upstream", server_cmd(tmp / "upstream.yaml", up_port, args.upstream_workers,
                                                 args.log_level), up_port, tmp / "upstream.log",
                          parse_cpus(args.upstream_cpus), args.source)
        servers.append(upstream)
        gateway = Server("gateway", server_cmd(tmp / "gateway.yaml", gw_port, args.workers, args.log_level),
                         gw_port, tmp / "gateway.log", parse_cpus(args.gateway_cpus), args.source)
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
        if args.check:
            meta["policy_probe"] = policy_probe(gw_port)
            want = {"none": "passed through", "observe": "passed through", "redact": "redacted",
                    "chain": "redacted"}.get(args.policy)
            print(f"policy probe (answer with one email through the gateway): {meta['policy_probe']}", flush=True)
            if want and meta["policy_probe"] != want:
                notes.append(f"CHECK policy probe: the gateway's answer was {meta['policy_probe']!r}, expected "
                             f"{want!r} for --policy {args.policy}")
            for mode in modes:
                for target, port, pol in (("gateway", gw_port, args.policy), ("direct", up_port, "none")):
                    c = output_check(args, port, mode == "stream", upstream_text, values, pol)
                    checks[f"{mode}/{target}"] = c
                    print(f"output check, {_check_line(f'{mode}/{target}', c)}", flush=True)
            if upstream_text is not None and checks.get(f"{modes[0]}/direct", {}).get("content") != upstream_text:
                notes.append("the upstream did not answer with the configured text: the output check is void")
        if args.trace:
            for target, port, pol in (("gateway", gw_port, args.policy),) + (
                    (("direct", up_port, "none"),) if args.direct else ()):
                print(f"stream/{target}/trace ({args.trace} requests) ...", flush=True)
                traces[target] = trace_pass(args, port, upstream_text, values, pol)
            base = baseline_offsets(traces["direct"]["offsets"]) if "direct" in traces else None
            for t in traces.values():
                t["stats"] = holdback_stats(t["offsets"], args.delay, base)
        for mode in modes if args.load or args.concurrency1 else []:
            plan = ([("gateway", "load", gw_port)] + ([("direct", "load", up_port)] if args.direct else [])
                    if args.load else [])
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
    notes += _check_notes(args, checks, traces)
    if not results and not traces and not checks:
        if not args.keep_logs:
            _rmtree(tmp)
        return rc or 1
    summary_rows = rows(args, results)
    print_summary(args, results, summary_rows)  # prints the runs' own warnings
    if traces:
        print()
        for line in _trace_table(args, traces):
            print(line)
    for n in notes:
        print(f"NOTE: {n}")
    notes = [w for r in results for w in r.warnings] + notes
    if args.json:
        args.json.write_text(json.dumps({**meta, "rows": summary_rows, "runs": [r.as_dict() for r in results],
                                         "checks": {k: {x: y for x, y in c.items() if x != "content"}
                                                    for k, c in checks.items()},
                                         "traces": traces, "notes": notes}, indent=2))
    if args.write and rc == 0:  # an interrupted or failed run is not a result worth keeping
        write_markdown(args, meta, results, summary_rows, notes, checks, traces)
        print(f"appended to {args.results}")
    if args.keep_logs:
        print(f"server logs kept in {tmp}")
    else:
        _rmtree(tmp)
    if rc == 0 and (any(r.warnings for r in results) or any(n.startswith("CHECK") for n in notes)):
        rc = 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
