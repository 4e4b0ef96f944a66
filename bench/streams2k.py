"""Many concurrent long-lived paced streams through one gateway worker: pacing, stalls, memory per stream.

Run `python -m bench.streams2k --help`. The question (issue "streams that survive the real world"):
2,000 concurrent long-lived streams at a paced 20 ms per event through one worker, with no stall
(every inter-event gap at the client within 20 ms + 5 ms at p99) and an RSS-per-stream figure.

    stream clients ──► gateway (fastgw serve, 1 worker, provider openai) ──► upstream (fastgw serve, provider mock)
    stream clients ────────────────────────────────────────────────────────► upstream            (direct pass)

The upstream is fastgw's mock provider paced with `delay` seconds between chunks, each response long
enough to outlast the measured window. Every stream is one request on its own connection; the
`--streams` connections are opened at evenly spaced instants over `--ramp` seconds, spread over
`--clients` processes (uvloop, asyncio.Protocol, httptools, like bench.loadgen). Every body read is
stamped with time.monotonic() in data_received; each SSE event (a block ending in a blank line with a
`data:` field) gets the stamp of the read that completed it. Per stream, the gaps between consecutive
data events (after the first) are kept; those whose later event arrived inside the measured window
[ramp + settle, ramp + settle + duration) make the "window" distribution, when every stream is open
(the whole streams are reported too, ramp and end included). A gap > delay + tolerance is "late"; a gap
> --stall (200 ms) is a stall. TTFB is from the request's write() to the first data event.

The same client is run directly against the upstream (`--direct`, first): that is the upstream's own
pacing (the mock schedules each chunk `delay` after the previous tick, so its period overshoots), and
the client's own jitter on a busy box, which the gateway pass also contains. Each client process also
runs a 10 ms timer and records how late it fires (its loop lag): a late client stamps late.

Gateway memory: VmRSS of the gateway worker (from /proc) idle before the gateway pass (after a few
warm-up requests), sampled every 0.5 s inside the window (median = steady state), and after the streams
ended; RSS per open stream = (steady - idle) / streams open in the window. CPU: utime+stime over the
window of the gateway (master and worker), the upstream, the client processes, and the whole box from
/proc/stat.

RLIMIT_NOFILE: this process raises its soft limit to the hard limit before it starts anything, so the
servers and clients inherit it; the limit each process really runs with is read back from /proc.

Only `fastgw serve` is started (as a subprocess); nothing is imported from fastgw.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import resource
import shlex
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httptools
import uvloop

from bench.loadgen import build_request, chat_body, parse_cpus, percentile
from bench.stream import (BENCH_KEY, CLK_TCK, GATEWAY_YAML, MODEL, POLICY_YAML, PROBE_MODEL, PROBE_TEXT, RESULTS,
                          UPSTREAM_YAML, CpuProbe, Server, _rmtree, busy_cpu_seconds, cpu_seconds, free_port, machine,
                          rss_mb, server_cmd, tree)

_now = time.monotonic
_AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}
#: Period of the loop-lag probe timer in each client process.
LAG_PERIOD = 0.010


# ------------------------------------------------------------------------------------------
# client (one process)
# ------------------------------------------------------------------------------------------

@dataclass
class ClientSpec:
    """What one client process does; picklable (crosses into a forked process)."""

    host: str
    port: int
    request: bytes
    #: Global stream indices of this process (stream k opens at start_at + k * ramp / total).
    indices: list[int]
    total: int
    start_at: float
    ramp: float
    window_start: float
    window_end: float
    #: Absolute time after which streams still open are aborted and counted as unfinished.
    deadline: float
    stall: float = 0.2
    cpus: list[int] | None = None


class _Client:
    def __init__(self, spec: ClientSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.streams: list[_Stream] = []
        self.errors: Counter[str] = Counter()
        self.pending = len(spec.indices)
        self.all_done = loop.create_future()
        self.open_at: dict[str, int] = {}
        self.lag = array("d")
        self.cpu: list[float] = []

    def finished_one(self) -> None:
        self.pending -= 1
        if self.pending <= 0 and not self.all_done.done():
            self.all_done.set_result(None)

    def open_now(self) -> int:
        return sum(1 for s in self.streams if s.status and not s.complete and not s.failed)

    async def connect(self, k: int) -> None:
        try:
            await self.loop.create_connection(lambda: _Stream(self, k), self.spec.host, self.spec.port)
        except OSError as e:
            self.errors[f"connect: {type(e).__name__} errno {e.errno}"] += 1
            self.finished_one()


class _Stream(asyncio.Protocol):
    """One streamed request on its own connection; stamps the arrival of every data event."""

    __slots__ = ("c", "k", "tr", "parser", "status", "t0", "t_read", "rest", "times", "complete", "failed",
                 "saw_done")

    def __init__(self, client: _Client, k: int) -> None:
        self.c = client
        self.k = k
        self.tr: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.t0 = 0.0
        self.t_read = 0.0
        self.rest = b""
        self.times = array("d")
        self.complete = False
        self.failed = False
        self.saw_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.streams.append(self)
        self.t0 = _now()
        self.tr.write(self.c.spec.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.t_read = _now()  # one stamp per socket read, for every event it completes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("http_parse")
            self.tr.close()  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        buf = self.rest + body if self.rest else body
        if b"\n\n" not in buf:
            if b"\r\n\r\n" not in buf:
                self.rest = buf
                return
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        blocks = buf.split(b"\n\n")
        self.rest = blocks.pop()
        t = self.t_read
        for b in blocks:
            if b.startswith(b"data:") or b"\ndata:" in b:
                self.times.append(t)
                if b.endswith(b"[DONE]"):
                    self.saw_done = True

    def on_message_complete(self) -> None:
        if self.status != 200:
            self._fail(f"status_{self.status}")
        elif not self.saw_done:
            self._fail("no_done")
        else:
            self.complete = True
            self.c.finished_one()
        self.tr.close()  # type: ignore[union-attr]

    def _fail(self, kind: str) -> None:
        if not self.failed and not self.complete:
            self.failed = True
            self.c.errors[kind] += 1
            self.c.finished_one()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete:
            self._fail("conn_lost")


async def _lag_probe(c: _Client, until: float) -> None:
    """How late a LAG_PERIOD timer fires in this loop inside the window: the client's own scheduling delay."""
    loop = c.loop
    nxt = c.spec.window_start
    await asyncio.sleep(max(0.0, nxt - _now()))
    fut = None
    while True:
        nxt += LAG_PERIOD
        if nxt >= until:
            return
        fut = loop.create_future()
        loop.call_at(nxt, fut.set_result, None)
        await fut
        c.lag.append(_now() - nxt)


async def _drive(spec: ClientSpec) -> dict:
    loop = asyncio.get_running_loop()
    c = _Client(spec, loop)
    step = spec.ramp / spec.total
    for k in spec.indices:
        loop.call_at(spec.start_at + k * step, lambda k=k: loop.create_task(c.connect(k)))
    loop.call_at(spec.window_start, lambda: (c.cpu.append(time.process_time()),
                                             c.open_at.__setitem__("window_start", c.open_now())))
    loop.call_at(spec.window_end, lambda: (c.cpu.append(time.process_time()),
                                           c.open_at.__setitem__("window_end", c.open_now())))
    lag_task = loop.create_task(_lag_probe(c, spec.window_end))
    if not spec.indices:
        c.all_done.set_result(None)
    try:
        await asyncio.wait_for(asyncio.shield(c.all_done), max(0.0, spec.deadline - _now()))
    except asyncio.TimeoutError:
        pass
    lag_task.cancel()
    unfinished = 0
    for s in c.streams:
        if not s.complete and not s.failed:
            unfinished += 1
            s.failed = True  # counted as unfinished, not again as conn_lost
            s.tr.abort()  # type: ignore[union-attr]
    never_connected = c.pending - unfinished if c.pending > unfinished else 0
    await asyncio.sleep(0)

    ws, we = spec.window_start, spec.window_end
    gaps_w = array("d")  # gaps whose later event arrived inside the window
    gaps_all = array("d")
    gaps_done = array("d")
    ttfb = array("d")
    events_w = 0
    per_stream_max_w = array("d")
    periods = array("d")
    n_events = Counter()
    stall = spec.stall
    stall_at: Counter = Counter()
    stall_when: Counter = Counter()
    for s in c.streams:
        t = s.times
        if s.complete:
            n_events[len(t)] += 1
        if not t:
            continue
        ttfb.append(t[0] - s.t0)
        mx = 0.0
        # The gap that ends at `data: [DONE]` is kept apart: through the gateway it spans two upstream ticks, because
        # the gateway asks the upstream for stream_options.include_usage, the mock paces that usage chunk like any
        # other, and the gateway strips it for a client that did not ask (a real provider sends it with the finish).
        last = len(t) - 1 if s.saw_done else len(t)
        if s.saw_done and last >= 1:
            gaps_done.append(t[last] - t[last - 1])
        for i in range(1, last):
            g = t[i] - t[i - 1]
            gaps_all.append(g)
            if g > stall:
                # Where in the stream the stalls are (1 = role chunk -> first content chunk), and when.
                stall_at[i if i <= 3 else ">3"] += 1
                stall_when["ramp" if t[i] < ws else ("window" if t[i] < we else "after")] += 1
            if ws <= t[i] < we:
                gaps_w.append(g)
                events_w += 1
                if g > mx:
                    mx = g
        if ws <= t[0] < we:
            events_w += 1
        if s.saw_done and last >= 1 and ws <= t[last] < we:
            events_w += 1
        if mx:
            per_stream_max_w.append(mx)
        if last > 2:
            periods.append((t[last - 1] - t[0]) / (last - 1))  # without the gap to [DONE] (see above)
    cpu = c.cpu[1] - c.cpu[0] if len(c.cpu) == 2 else None
    return {"streams": len(spec.indices), "connected": len(c.streams), "complete": sum(s.complete for s in c.streams),
            "errors": dict(c.errors), "unfinished": unfinished, "never_connected": never_connected,
            "open_at": c.open_at, "events_in_window": events_w, "events_per_stream": dict(n_events),
            "gaps_w": gaps_w.tobytes(), "gaps_all": gaps_all.tobytes(), "gaps_done": gaps_done.tobytes(), "ttfb": ttfb.tobytes(),
            "stream_max_w": per_stream_max_w.tobytes(), "periods": periods.tobytes(), "lag": c.lag.tobytes(),
            "stall_at": dict(stall_at), "stall_when": dict(stall_when), "cpu_s": cpu, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}


def _client_main(spec: ClientSpec, pipe) -> None:  # type: ignore[no-untyped-def]
    try:
        if spec.cpus:
            os.sched_setaffinity(0, spec.cpus)
        result = uvloop.run(_drive(spec))
    except KeyboardInterrupt:
        return
    except BaseException as e:  # the parent must learn why a client died
        result = {"fatal": f"{type(e).__name__}: {e}"}
    pipe.send(result)
    pipe.close()


# ------------------------------------------------------------------------------------------
# one pass (gateway or direct)
# ------------------------------------------------------------------------------------------

def _softirq_seconds() -> float:
    """All CPUs' softirq time from /proc/stat: loopback TCP is processed there, often charged to no process."""
    v = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(v[7]) / CLK_TCK


def _all_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every process on the box, with a short name (to say who else was busy)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = Path(f"/proc/{d}/stat").read_text()
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            f = raw[raw.rindex(")") + 2:].split()
            out[int(d)] = (cmd[:60] or raw[raw.index("(") + 1:raw.rindex(")")], (int(f[11]) + int(f[12])) / CLK_TCK)
    return out


def _others(before: dict, after: dict, ours: set[int], wall: float) -> list[tuple[str, float]]:
    """Processes not ours that used >= 0.05 cores over the window, busiest first."""
    use = []
    for pid, (name, c1) in after.items():
        if pid in ours:
            continue
        c0 = before.get(pid, (name, 0.0))[1]  # a process born in the window counts from 0
        if (c1 - c0) / wall >= 0.05:
            use.append((name, (c1 - c0) / wall))
    return sorted(use, key=lambda x: -x[1])


def _arr(b: bytes) -> array:
    a = array("d")
    a.frombytes(b)
    return a


def _dist_ms(vals: list[float]) -> dict:
    s = sorted(vals)
    if not s:
        return {"n": 0}
    return {"n": len(s), "p50": percentile(s, 50) * 1000, "p90": percentile(s, 90) * 1000,
            "p99": percentile(s, 99) * 1000, "p99.9": percentile(s, 99.9) * 1000, "max": s[-1] * 1000,
            "mean": sum(s) / len(s) * 1000}


def _nofile(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except OSError:
        pass
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _workers(master: int) -> list[int]:
    return [p for p in tree(master) if p != master]


def run_pass(args, target: str, port: int, gateway: Server | None, upstream: Server, model: str = MODEL,
             precise_cpu: bool = False) -> dict:
    """Open args.streams streams over the ramp, measure the window, wait for the streams to end. `model`: the one
    the streams ask for (bench.upstream paces only its paced model; fastgw's mock paces every answer);
    `precise_cpu`: server CPU from schedstat (ns) rather than clock ticks (see CpuProbe)."""
    req = build_request("127.0.0.1", port, "/v1/chat/completions", chat_body(model, True), _AUTH)
    t0 = _now() + 0.5  # time for the client processes to fork and start their loops
    ws = t0 + args.ramp + args.settle
    we = ws + args.duration
    stream_s = (args.chunks + 3) * args.delay
    deadline = t0 + args.ramp + stream_s * 1.5 + args.grace
    nclients = max(1, min(args.clients, args.streams))
    cpus = parse_cpus(args.client_cpus)
    ctx = mp.get_context("fork")
    procs = []
    out: dict = {"target": target, "streams": args.streams}
    try:
        for i in range(nclients):
            spec = ClientSpec(host="127.0.0.1", port=port, request=req, indices=list(range(i, args.streams, nclients)),
                              total=args.streams, start_at=t0, ramp=args.ramp, window_start=ws, window_end=we,
                              deadline=deadline, stall=args.stall, cpus=cpus)
            rx, tx = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_client_main, args=(spec, tx), daemon=True)
            p.start()
            tx.close()
            procs.append((p, rx))
        probes = {"upstream": CpuProbe(upstream.pid, precise=precise_cpu), "clients": None}
        if gateway:
            probes["gateway"] = CpuProbe(gateway.pid, precise=precise_cpu)
        # CPU over the ramp and settle time: connection set-up (accept, request, upstream connect, head) plus the
        # events of the streams already open.
        ramp_probes = {k: CpuProbe(pr.root, precise=precise_cpu) for k, pr in probes.items() if pr}
        time.sleep(max(0.0, t0 - _now()))
        for pr in ramp_probes.values():
            pr.start()
        time.sleep(max(0.0, ws - _now()))
        out["ramp_cpu_cores"] = {k: c / w for k, (c, w) in ((k, pr.stop()) for k, pr in ramp_probes.items())}
        for k, pr in probes.items():
            if pr:
                pr.start()
        cl0 = {p.pid: cpu_seconds(p.pid) for p, _ in procs}
        all0 = _all_cpu()
        busy0, sirq0, tb0 = busy_cpu_seconds(), _softirq_seconds(), _now()
        rss_samples: list[float] = []
        fd_samples: list[int] = []
        up_rss: list[float] = []
        while (left := we - _now()) > 0:
            time.sleep(min(0.5, left))
            if _now() >= we:
                break
            if gateway:
                for w in _workers(gateway.pid):
                    r = rss_mb(w)
                    if r is not None:
                        rss_samples.append(r)
                    n = _fds(w)
                    if n is not None:
                        fd_samples.append(n)
            for w in _workers(upstream.pid):
                r = rss_mb(w)
                if r is not None:
                    up_rss.append(r)
        cpu = {k: pr.stop() for k, pr in probes.items() if pr}
        cl1 = {p.pid: cpu_seconds(p.pid) for p, _ in procs}
        busy1, sirq1, tb1 = busy_cpu_seconds(), _softirq_seconds(), _now()
        ours = {os.getpid(), *tree(upstream.pid), *(p.pid for p, _ in procs), *(tree(gateway.pid) if gateway else [])}
        out["other_processes"] = _others(all0, _all_cpu(), ours, tb1 - tb0)
        wall = tb1 - tb0
        out["cpu_cores"] = {k: c / w for k, (c, w) in cpu.items()}
        out["cpu_cores"]["clients"] = sum(cl1[p] - cl0.get(p, 0.0) for p in cl1) / wall
        out["box_busy_cores"] = (busy1 - busy0) / wall
        # Busy CPU not accounted to our processes: other tenants of the box, softirq, this harness.
        out["other_cores"] = out["box_busy_cores"] - sum(out["cpu_cores"].values())
        out["softirq_cores"] = (sirq1 - sirq0) / wall
        out["pids_changed"] = {k: pr.pids_changed for k, pr in probes.items() if pr}
        if gateway:
            out["gw_rss_samples_mb"] = rss_samples
            out["gw_fds_max"] = max(fd_samples) if fd_samples else None
        out["up_rss_max_mb"] = max(up_rss) if up_rss else None
        results = []
        for p, rx in procs:
            if rx.poll(max(1.0, deadline - _now() + 15.0)):
                results.append(rx.recv())
            else:
                results.append({"fatal": "client process sent no result in time"})
            p.join(5)
    finally:
        for p, _ in procs:
            if p.is_alive():
                p.terminate()
                p.join(2)
    if gateway:
        time.sleep(1.0)  # let closed connections be reaped
        ws_ = _workers(gateway.pid)
        out["gw_rss_after_mb"] = rss_mb(ws_[0]) if ws_ else None
        out["gw_fds_after"] = _fds(ws_[0]) if ws_ else None
    return _merge(out, results, args)


def _merge(out: dict, results: list[dict], args) -> dict:
    gaps_w, gaps_all, gaps_done, ttfb, smax, periods, lag = (array("d") for _ in range(7))
    errors: Counter[str] = Counter()
    ev: Counter[int] = Counter()
    out["fatal"] = [r["fatal"] for r in results if "fatal" in r]
    ok = [r for r in results if "fatal" not in r]
    for k in ("connected", "complete", "unfinished", "never_connected", "events_in_window"):
        out[k] = sum(r[k] for r in ok)
    out["open_window_start"] = sum(r["open_at"].get("window_start", 0) for r in ok)
    out["open_window_end"] = sum(r["open_at"].get("window_end", 0) for r in ok)
    out["client_nofile"] = sorted({tuple(r["nofile"]) for r in ok})
    out["client_cpu_util"] = [None if r["cpu_s"] is None else r["cpu_s"] / args.duration for r in ok]
    stall_at: Counter = Counter()
    stall_when: Counter = Counter()
    for r in ok:
        stall_at.update(r["stall_at"])
        stall_when.update(r["stall_when"])
        errors.update(r["errors"])
        ev.update({int(k): v for k, v in r["events_per_stream"].items()})
        gaps_w.extend(_arr(r["gaps_w"]))
        gaps_all.extend(_arr(r["gaps_all"]))
        gaps_done.extend(_arr(r["gaps_done"]))
        ttfb.extend(_arr(r["ttfb"]))
        smax.extend(_arr(r["stream_max_w"]))
        periods.extend(_arr(r["periods"]))
        lag.extend(_arr(r["lag"]))
    late = args.delay + args.tolerance
    out["errors"] = dict(errors)
    out["stalls_by_event_index"] = {str(k): v for k, v in stall_at.items()}
    out["stalls_by_phase"] = dict(stall_when)
    out["events_per_stream"] = dict(sorted(ev.items()))
    out["gaps_window_ms"] = _dist_ms(gaps_w)
    out["gaps_all_ms"] = _dist_ms(gaps_all)
    out["gap_to_done_ms"] = _dist_ms(gaps_done)
    out["late_window"] = sum(1 for g in gaps_w if g > late)
    out["stalls_window"] = sum(1 for g in gaps_w if g > args.stall)
    out["late_all"] = sum(1 for g in gaps_all if g > late)
    out["stalls_all"] = sum(1 for g in gaps_all if g > args.stall)
    out["streams_with_stall_window"] = sum(1 for g in smax if g > args.stall)
    out["streams_with_late_window"] = sum(1 for g in smax if g > late)
    out["stream_max_gap_ms"] = _dist_ms(smax)
    out["ttfb_ms"] = _dist_ms(ttfb)
    out["period_ms"] = _dist_ms(periods)
    out["client_lag_ms"] = _dist_ms(lag)
    out["events_per_s_window"] = out["events_in_window"] / args.duration
    # CPU per delivered event, and what the nominal rate (every stream at the nominal pace) would need.
    ev = out["events_in_window"]
    out["us_per_event"] = {k: (v * args.duration * 1e6 / ev if ev else None) for k, v in out["cpu_cores"].items()}
    nominal = args.streams / args.delay
    out["cores_needed_at_nominal"] = {k: (v * nominal / 1e6 if v is not None else None)
                                      for k, v in out["us_per_event"].items()}
    return out


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------

def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by everything started afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fd_needs(args) -> dict:
    """File descriptors each process needs at peak (sockets plus a margin for the runtime's own)."""
    n = args.streams
    per_client = -(-n // max(1, args.clients))
    per_up_worker = -(-n // max(1, args.upstream_workers))  # the kernel spreads accepts over the workers
    return {"client process": per_client + 64, "gateway worker": 2 * n + 128, "upstream worker": per_up_worker + 128}


def warm_up(port: int, n: int) -> int:
    """A few short streamed requests (probe model, unpaced) so the idle RSS is taken after first use."""
    ok = 0
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                     data=chat_body(PROBE_MODEL, True),
                                     headers={"Content-Type": "application/json", **_AUTH}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                ok += r.status == 200 and b"[DONE]" in r.read()
        except (urllib.error.URLError, OSError):
            pass
    return ok


def wait_quiet(args) -> float:
    """Busy cores of the box over 1 s with our servers idle; with --quiet-wait, retried until below
    --quiet-below or the wait is over (a shared box: other tenants' test runs come and go)."""
    deadline = _now() + args.quiet_wait
    while True:
        b0, t = busy_cpu_seconds(), _now()
        time.sleep(1.0)
        busy = (busy_cpu_seconds() - b0) / (_now() - t)
        if busy <= args.quiet_below or _now() >= deadline:
            print(f"background before the pass: {busy:.2f} busy cores", flush=True)
            return busy
        time.sleep(2.0)


def _f(v, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _d(d: dict, k: str, nd: int = 1) -> str:
    return _f(d.get(k), nd)


# ------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------

def verdict(args, p: dict) -> list[str]:
    late = (args.delay + args.tolerance) * 1000
    g = p["gaps_window_ms"]
    out = []
    if g.get("n"):
        out.append(f"p99 gap {g['p99']:.1f} ms vs {late:g} ms: {'met' if g['p99'] <= late else 'NOT met'}")
        out.append(f"stalls (gap > {args.stall * 1000:g} ms) in the window: {p['stalls_window']}, over whole streams: "
                   f"{p['stalls_all']} → {'no stall' if p['stalls_all'] == 0 else 'STALLS'}")
    return out


def pass_lines(args, p: dict) -> list[str]:
    g, ga, t = p["gaps_window_ms"], p["gaps_all_ms"], p["ttfb_ms"]
    n = max(1, g.get("n", 0))
    return [
        f"[{p['target']}] streams {p['streams']}: connected {p['connected']}, complete {p['complete']}, "
        f"errors {p['errors'] or 0}, still streaming at the deadline (cut) {p['unfinished']}, never connected "
        f"{p['never_connected']}; "
        f"open at window start/end {p['open_window_start']}/{p['open_window_end']}; events per stream "
        f"{p['events_per_stream']}",
        f"  window gaps (ms, {g.get('n', 0)} gaps, {p['events_per_s_window']:.0f} events/s): p50 {_d(g, 'p50', 2)} "
        f"p90 {_d(g, 'p90', 2)} p99 {_d(g, 'p99', 2)} p99.9 {_d(g, 'p99.9', 2)} max {_d(g, 'max', 2)} mean "
        f"{_d(g, 'mean', 2)}; > {(args.delay + args.tolerance) * 1000:g} ms: {p['late_window']} "
        f"({p['late_window'] / n:.3%}); > 200 ms: {p['stalls_window']}",
        f"  whole-stream gaps: p99 {_d(ga, 'p99', 2)} p99.9 {_d(ga, 'p99.9', 2)} max {_d(ga, 'max', 2)}; late "
        f"{p['late_all']}, stalls {p['stalls_all']}"
        + (f" (by event index {p['stalls_by_event_index']}, by phase {p['stalls_by_phase']})" if p["stalls_all"] else "")
        + f"; gap before [DONE] (kept apart) p50 {_d(p['gap_to_done_ms'], 'p50', 1)} max {_d(p['gap_to_done_ms'], 'max', 1)}",
        f"  TTFB ms p50 {_d(t, 'p50', 2)} p99 {_d(t, 'p99', 2)} max {_d(t, 'max', 2)}; per-stream mean period ms p50 "
        f"{_d(p['period_ms'], 'p50', 2)} max {_d(p['period_ms'], 'max', 2)}; client loop lag ms p99 "
        f"{_d(p['client_lag_ms'], 'p99', 2)} max {_d(p['client_lag_ms'], 'max', 2)}",
        "  CPU cores over the window: " + ", ".join(f"{k} {v:.2f}" for k, v in p["cpu_cores"].items())
        + " (over the ramp and settle: " + ", ".join(f"{k} {v:.2f}" for k, v in p["ramp_cpu_cores"].items()) + ")"
        + f", other {p['other_cores']:.2f} (softirq {p['softirq_cores']:.2f}), whole box {p['box_busy_cores']:.2f}; µs/event "
        + ", ".join(f"{k} {_f(v)}" for k, v in p["us_per_event"].items())
        + ("; other processes: " + ", ".join(f"{n} {c:.2f}" for n, c in p["other_processes"][:4])
           if p.get("other_processes") else "")
        + f"; cores needed at the nominal {args.streams / args.delay:.0f} events/s: "
        + ", ".join(f"{k} {_f(v, 2)}" for k, v in p["cores_needed_at_nominal"].items()),
    ]


def _median(v: list[float]) -> float | None:
    s = sorted(v)
    return s[len(s) // 2] if s else None


def memory(args, meta: dict, p: dict | None) -> dict:
    if not p or "gw_rss_samples_mb" not in p:
        return {}
    idle = meta.get("gw_rss_idle_mb")
    steady = _median(p["gw_rss_samples_mb"])
    n_open = min(p["open_window_start"], p["open_window_end"])
    per = (steady - idle) * 1024 / n_open if steady is not None and idle is not None and n_open else None
    fds, fds0 = p.get("gw_fds_max"), meta.get("gw_fds_idle")
    # Each stream holds two sockets in the gateway worker (client side and upstream side).
    held = (fds - fds0) / 2 if fds is not None and fds0 is not None else None
    return {"idle_mb": idle, "steady_mb": steady, "steady_max_mb": max(p["gw_rss_samples_mb"], default=None),
            "after_mb": p.get("gw_rss_after_mb"), "open": n_open, "all_open": n_open == args.streams,
            "kb_per_stream": per, "held_by_fds": held,
            "kb_per_held_stream": (steady - idle) * 1024 / held if steady and idle and held else None,
            "fds_steady": fds, "fds_idle": fds0, "fds_after": p.get("gw_fds_after")}


def markdown(args, meta: dict, passes: dict, mem: dict, notes: list[str]) -> list[str]:
    m = meta["machine"]
    late = (args.delay + args.tolerance) * 1000
    L = ["", f"## {meta['date']} — {args.streams} concurrent streams paced {args.delay * 1000:g} ms per event, "
         f"{args.workers} gateway worker" + ("s" if args.workers != 1 else "")
         + (f", {args.upstream_workers} upstream workers" if args.upstream_workers != 1 else "")
         + (f" ({args.note})" if args.note else ""), "",
         f"- machine: {m['nproc']} CPUs usable ({m['cpu_count']} online), {m['cpu_model']}, Linux {m['kernel']}, "
         f"Python {m['python']}; load average before: {' '.join(m['loadavg_before'])}; busy cores with the servers "
         f"idle, before the passes: {_f(meta.get('background_busy_cores'), 2)}"
         + "".join(f", before the {k} pass: {v:.2f}" for k, v in meta.get("background_before_pass", {}).items()),
         f"- fastgw commit {m['commit']} (working tree may have had uncommitted changes)",
         f"- command: `{meta['command']}`",
         f"- upstream: fastgw mock, {args.upstream_workers} worker(s), {args.chunks} content chunks (+ role, finish, "
         f"[DONE] = {args.chunks + 3} data events) paced {args.delay * 1000:g} ms apart ({(args.chunks + 3) * args.delay:.1f} s "
         f"per stream); gateway: {args.workers} worker, openai target → upstream, policy {args.policy}; clients: "
         f"{args.clients} uvloop process(es), one connection per stream, {args.streams} streams opened evenly over "
         f"{args.ramp:g} s; measured window: {args.settle:g} s after the ramp, {args.duration:g} s long",
         f"- RLIMIT_NOFILE (soft/hard): harness {meta['nofile'][0]}/{meta['nofile'][1]}; gateway worker "
         f"{meta.get('gw_nofile')}, upstream worker {meta.get('up_nofile')}, clients "
         f"{', '.join(f'{a}/{b}' for a, b in next(iter(passes.values()))['client_nofile']) if passes else '-'}; "
         f"needed at peak: " + ", ".join(f"{k} ~{v}" for k, v in meta["fd_needs"].items())
         + f"; ephemeral ports {meta.get('port_range')}",
         "",
         f"Inter-event gaps at the client (ms; gaps whose later event arrived in the window, when all streams are "
         f"open; late = gap > {late:g} ms, stall = gap > {args.stall * 1000:g} ms; \"whole\" = every gap of every "
         f"stream, ramp and end included, except the gap that ends at `data: [DONE]`, shown apart: through the gateway "
         f"it spans two upstream ticks because the gateway asks the upstream for include_usage, the mock paces that "
         f"usage chunk like a content chunk, and the gateway strips it for this client):", "",
         "| pass | streams ok / errors / cut | open in window | events/s | gap p50 | p99 | p99.9 | max | late (share) "
         "| stalls window / whole | whole p99 / max | gap before [DONE] p50 / max | TTFB p50 / p99 / max "
         "| client loop lag p99 / max |",
         "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in passes.values():
        g, ga, t, lg = p["gaps_window_ms"], p["gaps_all_ms"], p["ttfb_ms"], p["client_lag_ms"]
        err = sum(p["errors"].values()) + p["never_connected"] + len(p["fatal"])
        L.append(f"| {p['target']} | {p['complete']} / {err} / {p['unfinished']} | {p['open_window_start']}–{p['open_window_end']} | "
                 f"{p['events_per_s_window']:.0f} | {_d(g, 'p50', 2)} | {_d(g, 'p99', 2)} | {_d(g, 'p99.9', 2)} | "
                 f"{_d(g, 'max', 1)} | {p['late_window']} ({p['late_window'] / max(1, g.get('n', 0)):.2%}) | "
                 f"{p['stalls_window']} / {p['stalls_all']} | {_d(ga, 'p99', 2)} / {_d(ga, 'max', 1)} | "
                 f"{_d(p['gap_to_done_ms'], 'p50', 1)} / {_d(p['gap_to_done_ms'], 'max', 1)} | "
                 f"{_d(t, 'p50', 1)} / {_d(t, 'p99', 1)} / {_d(t, 'max', 1)} | {_d(lg, 'p99', 1)} / {_d(lg, 'max', 1)} |")
    L += ["", "CPU over the window (cores; 1.00 = one core busy the whole window; other = whole box minus the three; "
          "softirq = the box's softirq time, where loopback TCP is processed: part of other or of the processes' own, "
          "depending on the kernel's accounting) and gateway worker memory:", "",
          "| pass | gateway | upstream | clients | other; softirq | whole box | µs/event gw / up / clients "
          "| gw worker RSS idle / steady / after (MB) | RSS per open stream (KB) | gw worker fds idle / steady / after |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in passes.values():
        c, u = p["cpu_cores"], p["us_per_event"]
        mm = mem if p["target"] == "gateway" else {}
        if mm:
            per = (f"{_f(mm.get('kb_per_stream'))}" if mm.get("all_open") else
                   f"{_f(mm.get('kb_per_stream'))} (only {mm['open']} open at the client; "
                   f"{_f(mm.get('kb_per_held_stream'))} per stream held by the worker, ~{_f(mm.get('held_by_fds'), 0)} by its fds)")
        L.append(f"| {p['target']} | {_f(c.get('gateway'), 2)} | {_f(c.get('upstream'), 2)} | "
                 f"{_f(c.get('clients'), 2)} | {p['other_cores']:.2f}; {p['softirq_cores']:.2f} | {p['box_busy_cores']:.2f} of {m['nproc']} | "
                 f"{_f(u.get('gateway'))} / {_f(u.get('upstream'))} / {_f(u.get('clients'))} | "
                 + (f"{_f(mm.get('idle_mb'))} / {_f(mm.get('steady_mb'))} / {_f(mm.get('after_mb'))} | "
                    f"{per} | {mm.get('fds_idle')} / {mm.get('fds_steady')} / "
                    f"{mm.get('fds_after')} |" if mm else "- | - | - |"))
    L.append("")
    gw = passes.get("gateway")
    if gw:
        L += ["- verdict (gateway pass): " + "; ".join(verdict(args, gw))]
    d = passes.get("direct")
    if gw and d and gw["gaps_window_ms"].get("n") and d["gaps_window_ms"].get("n"):
        a, b = gw["gaps_window_ms"], d["gaps_window_ms"]
        L.append(f"- gateway minus direct, window gaps: p50 {a['p50'] - b['p50']:+.2f} ms, p99 {a['p99'] - b['p99']:+.2f} "
                 f"ms, p99.9 {a['p99.9'] - b['p99.9']:+.2f} ms; per-stream mean period p50 {_d(gw['period_ms'], 'p50', 2)} "
                 f"vs {_d(d['period_ms'], 'p50', 2)} ms direct (nominal {args.delay * 1000:g})")
    for p in passes.values():
        L.append(f"- {p['target']}: CPU cores over the ramp and settle ({args.ramp:g} + {args.settle:g} s, streams "
                 f"being opened): " + ", ".join(f"{k} {v:.2f}" for k, v in p["ramp_cpu_cores"].items()))
    if gw:
        need = gw["cores_needed_at_nominal"]
        L.append(f"- CPU at the nominal rate ({args.streams} streams / {args.delay * 1000:g} ms = "
                 f"{args.streams / args.delay:.0f} events/s), from the µs/event measured here: gateway "
                 f"{_f(need.get('gateway'), 2)} cores (it has 1 worker = at most 1 core), upstream "
                 f"{_f(need.get('upstream'), 2)}, clients {_f(need.get('clients'), 2)}; delivered in the window: "
                 f"{gw['events_per_s_window']:.0f} events/s")
    for p in passes.values():
        L.append(f"- {p['target']}: box busy {p['box_busy_cores']:.2f} of {m['nproc']} cores during the window "
                 f"(client, gateway and upstream share them)"
                 + ("; other processes busy in it: " + ", ".join(f"`{n}` {c:.2f}" for n, c in p["other_processes"][:4])
                    if p.get("other_processes") else "; no other process above 0.05 cores")
                 + f"; events per completed stream {p['events_per_stream']}"
                 + (f"; stalls by event index (1 = role → first content chunk) {p['stalls_by_event_index']}, by "
                    f"phase {p['stalls_by_phase']}" if p["stalls_all"] else "")
                 + (f"; errors {p['errors']}" if p["errors"] else "")
                 + (f"; {p['unfinished']} streams were still streaming at the client's deadline (start + ramp + 1.5 × the "
                    f"nominal stream length + grace) and were cut: slower than paced, not failed" if p["unfinished"] else ""))
    L += [f"- {n}" for n in notes]
    L.append("")
    return L


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.streams2k",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="N concurrent long-lived streams, paced by the mock upstream, through one gateway worker: "
                    "inter-event gaps at the client (p50/p99/p99.9/max, late, stalls), TTFB, gateway worker RSS per "
                    "open stream and CPU, with the same load run directly against the upstream as the baseline. "
                    "See the module docstring for the method.",
        epilog="Examples: python -m bench.streams2k --streams 200   |   python -m bench.streams2k --write")
    g = p.add_argument_group("load")
    g.add_argument("--streams", "-n", type=int, default=2000, help="concurrent streams")
    g.add_argument("--delay", type=float, default=0.02, help="seconds between the upstream's chunks")
    g.add_argument("--duration", "-d", type=float, default=10.0, help="measured window (s), all streams open")
    g.add_argument("--ramp", type=float, default=2.0, help="seconds over which the streams are opened")
    g.add_argument("--settle", type=float, default=2.0, help="seconds between the end of the ramp and the window")
    g.add_argument("--chunks", type=int, default=0,
                   help="content chunks per stream (0: enough to outlast the window by 0.5 s, at the nominal pace)")
    g.add_argument("--tolerance", type=float, default=0.005, help="a gap > delay + tolerance is late")
    g.add_argument("--stall", type=float, default=0.2,
                   help="a gap > this many seconds is a stall (must exceed delay + tolerance)")
    g.add_argument("--clients", "-p", type=int, default=2, help="client processes sharing the streams")
    g.add_argument("--client-cpus", help="pin the client processes (e.g. 1 or 0-1)")
    g.add_argument("--grace", type=float, default=5.0, help="extra seconds for the streams to end")
    g.add_argument("--direct", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the same clients directly against the upstream (first): its own pacing")
    g.add_argument("--gateway-pass", action=argparse.BooleanOptionalAction, default=True,
                   help="run the pass through the gateway")
    g.add_argument("--quiet-wait", type=float, default=0.0,
                   help="before each pass, wait up to this many seconds for the box's background load to fall "
                        "to --quiet-below busy cores (0: measure it once and go on)")
    g.add_argument("--quiet-below", type=float, default=0.2, help="see --quiet-wait")
    g = p.add_argument_group("servers")
    g.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    g.add_argument("--upstream-workers", type=int, default=1, help="mock upstream worker processes")
    g.add_argument("--policy", choices=sorted(POLICY_YAML), default="none", help="gateway output policy (bench.stream)")
    g.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    g.add_argument("--startup-timeout", type=float, default=30.0)
    g.add_argument("--gateway-cpus", help="pin the gateway")
    g.add_argument("--upstream-cpus", help="pin the upstream")
    g = p.add_argument_group("output")
    g.add_argument("--write", action="store_true", help="append a markdown section to --results")
    g.add_argument("--results", type=Path, default=RESULTS)
    g.add_argument("--note", default="", help="text added to the section heading")
    g.add_argument("--json", type=Path, metavar="PATH", help="write the numbers as JSON")
    g.add_argument("--keep-logs", action="store_true")
    return p


def _on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.streams < 1 or args.delay <= 0 or args.duration <= 0:
        parser.error("--streams, --delay and --duration must be positive")
    if args.stall <= args.delay + args.tolerance:
        parser.error("--stall must exceed --delay + --tolerance (e.g. --stall 0.4 with --delay 0.2)")
    if args.chunks <= 0:
        args.chunks = math.ceil((args.ramp + args.settle + args.duration + 0.5) / args.delay)
    signal.signal(signal.SIGTERM, _on_sigterm)
    nofile = raise_nofile()
    meta: dict = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                  "command": "python -m bench.streams2k " + shlex.join(sys.argv[1:] if argv is None else argv),
                  "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "nofile": list(nofile), "fd_needs": fd_needs(args)}
    try:
        meta["port_range"] = "-".join(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except OSError:
        meta["port_range"] = "?"
    notes: list[str] = []
    need = max(meta["fd_needs"].values())
    if nofile[0] != resource.RLIM_INFINITY and nofile[0] < need:
        notes.append(f"FD LIMIT: RLIMIT_NOFILE {nofile[0]} is below the ~{need} one process needs: expect EMFILE")
        print(f"bench: WARNING: {notes[-1]}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="fastgw-streams2k-"))
    up_port, gw_port = free_port(), free_port()
    (tmp / "upstream.yaml").write_text(UPSTREAM_YAML.format(
        port=up_port, workers=args.upstream_workers, model=MODEL, events=args.chunks, chunk_size=4,
        delay=args.delay, text="", probe=PROBE_MODEL, probe_text=PROBE_TEXT))
    (tmp / "gateway.yaml").write_text(GATEWAY_YAML.format(port=gw_port, workers=args.workers, model=MODEL,
                                                          upstream=up_port, policy=POLICY_YAML[args.policy],
                                                          probe=PROBE_MODEL))
    servers: list[Server] = []
    passes: dict[str, dict] = {}
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
        gw_workers, up_workers = _workers(gateway.pid), _workers(upstream.pid)
        meta["gw_nofile"] = _nofile(gw_workers[0]) if gw_workers else None
        meta["up_nofile"] = _nofile(up_workers[0]) if up_workers else None
        print(f"upstream pid {upstream.pid} :{up_port} (workers {up_workers}), gateway pid {gateway.pid} :{gw_port} "
              f"(workers {gw_workers}); {args.chunks} chunks x {args.delay * 1000:g} ms; RLIMIT_NOFILE harness "
              f"{nofile[0]}/{nofile[1]}, gateway worker {meta['gw_nofile']}, upstream worker {meta['up_nofile']}; "
              f"logs in {tmp}", flush=True)
        meta["warmup_ok"] = warm_up(gw_port, 20)
        if meta["warmup_ok"] != 20:
            notes.append(f"only {meta['warmup_ok']} of 20 warm-up requests through the gateway succeeded")
        b0, t = busy_cpu_seconds(), _now()
        time.sleep(1.0)
        meta["background_busy_cores"] = (busy_cpu_seconds() - b0) / (_now() - t)
        print(f"background: {meta['background_busy_cores']:.2f} busy cores", flush=True)
        plan = ([("direct", up_port, None)] if args.direct else []) + (
            [("gateway", gw_port, gateway)] if args.gateway_pass else [])
        for target, port, gw in plan:
            for srv in servers:
                if srv.proc.poll() is not None:
                    raise RuntimeError(f"{srv.name} exited with {srv.proc.returncode}\n{srv.log_tail()}")
            meta.setdefault("background_before_pass", {})[target] = wait_quiet(args)
            if gw:
                ws_ = _workers(gateway.pid)
                meta["gw_rss_idle_mb"] = rss_mb(ws_[0]) if ws_ else None
                meta["gw_fds_idle"] = _fds(ws_[0]) if ws_ else None
            print(f"{target} pass: {args.streams} streams ...", flush=True)
            passes[target] = p = run_pass(args, target, port, gw, upstream)
            for line in pass_lines(args, p):
                print(line, flush=True)
            time.sleep(1.0)
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
        for srv in reversed(servers):
            srv.stop()
    for srv in servers:
        text = srv.log_path.read_text(errors="replace") if srv.log_path.exists() else ""
        n_tb = text.count("Traceback")
        n_err = sum(1 for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line)
        if n_tb or n_err:
            notes.append(f"{srv.name} log: {n_err} ERROR lines, {n_tb} tracebacks (see {srv.log_path})")
            args.keep_logs = True
    mem = memory(args, meta, passes.get("gateway"))
    for p in passes.values():
        if p["fatal"]:
            notes.append(f"{p['target']}: client process failed: {p['fatal']}")
        if p["errors"] or p["unfinished"] or p["never_connected"]:
            notes.append(f"{p['target']}: errors {p['errors']}, cut at the deadline {p['unfinished']}, never "
                         f"connected {p['never_connected']}")
        if any(p.get("pids_changed", {}).values()):
            notes.append(f"{p['target']}: a server's process set changed during the window (worker died?)")
        if p["open_window_start"] < args.streams or p["open_window_end"] < args.streams:
            notes.append(f"{p['target']}: not every stream was open over the whole window "
                         f"({p['open_window_start']} at its start, {p['open_window_end']} at its end)")
        hot = [u for u in p["client_cpu_util"] if u is not None and u > 0.9]
        if hot:
            notes.append(f"{p['target']}: a client process was at {max(hot):.0%} CPU: it may stamp late")
    if mem:
        print(f"gateway worker RSS: idle {_f(mem['idle_mb'])} MB, steady {_f(mem['steady_mb'])} MB (max "
              f"{_f(mem['steady_max_mb'])}), after {_f(mem['after_mb'])} MB → {_f(mem['kb_per_stream'])} KB per open "
              f"stream ({mem['open']} open at the client; {_f(mem['kb_per_held_stream'])} KB per stream held by the worker, "
              f"~{_f(mem['held_by_fds'], 0)} by its fds); fds idle/steady/after {mem['fds_idle']}/{mem['fds_steady']}/"
              f"{mem['fds_after']}")
    if "gateway" in passes:
        print("verdict: " + "; ".join(verdict(args, passes["gateway"])))
    for n in notes:
        print(f"NOTE: {n}")
    if args.json:
        args.json.write_text(json.dumps({**meta, "passes": passes, "memory": mem, "notes": notes}, indent=2,
                                        default=str))
    if args.write and rc == 0 and passes:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n".join(markdown(args, meta, passes, mem, notes)) + "\n")
        print(f"appended to {args.results}")
    if args.keep_logs:
        print(f"server logs kept in {tmp}")
    else:
        _rmtree(tmp)
    if rc == 0 and any(p["errors"] or p["unfinished"] or p["fatal"] or p["stalls_all"] for p in passes.values()):
        rc = 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
