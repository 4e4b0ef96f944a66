"""A closed-loop HTTP/1.1 keep-alive load generator for OpenAI-style chat completions.

Why not aiohttp/httpx: a Python load generator easily becomes the bottleneck and
then measures itself. This one is a raw `asyncio.Protocol` on uvloop with the
httptools response parser (the same C parser family the gateway uses), does no
JSON decoding, and spends per body chunk one `bytes.count` and a few attribute
writes. It can also be spread over several processes (`clients`).

Closed loop: each connection sends its next request as soon as the previous
response completes, so offered load adapts to the server and there is no
coordinated-omission question about a schedule; latency under load is the
latency of a server kept busy with exactly `connections` requests in flight.

What is measured, per request:
  * TTFB: from the `write()` of the request to the read that brought the body chunk
    holding the first `data:` of the SSE stream (non-streamed: the first body byte),
    stamped when the read arrives, before it is parsed: a server that sends the whole
    answer in one write is not charged for the client parsing and counting all of it;
  * completion time: from the write to the end of the response;
  * events: `data:` lines in the body (role chunk, content chunks, finish chunk and
    `data: [DONE]` for the mock);
  * errors: non-200 status, a stream without `data: [DONE]`, an empty
    non-streamed body, a connection lost mid-response, unparsable HTTP.

Two ways to bound a run (both share the same client code):
  * window: run from `start_at` on, record only requests that *complete* inside
    [window_start, window_end) (absolute `time.monotonic()` values, which are
    system-wide on Linux, so a parent can line them up with its CPU readings);
    after window_end no request is started and in-flight ones get `grace` seconds;
    those still open then are counted as `stalled`;
  * count: `warmup_requests` unrecorded requests then `requests` recorded ones
    (used for the sequential concurrency-1 latency pass), bounded by `timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import sys
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import httptools
import uvloop

__all__ = ["LoadSpec", "LoadRun", "build_request", "run_load", "summarize", "percentile", "parse_cpus"]

_now = time.monotonic


@dataclass
class LoadSpec:
    """Everything one load run needs; picklable so it can cross into client processes."""

    host: str
    port: int
    request: bytes
    #: "stream" counts SSE events and requires `data: [DONE]`; "nonstream" requires a non-empty body.
    mode: str = "stream"
    connections: int = 64
    clients: int = 1
    # window mode (absolute time.monotonic() values; 0 = not in window mode)
    start_at: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0
    grace: float = 5.0
    # count mode
    requests: int = 0
    warmup_requests: int = 0
    timeout: float = 60.0
    #: Keep each recorded request's absolute write and first-event times (`t0s`, `firsts`: count mode, one client).
    times: bool = False
    #: Seconds each connection waits between a response's end and its next request (0: back to back). With a gap
    #: a request never meets the server's work after the previous answer's last byte (logs, metrics, settlement).
    gap: float = 0.0
    #: CPUs the client processes are pinned to (None: no pinning).
    cpus: list[int] | None = None


def build_request(host: str, port: int, path: str, body: bytes, extra_headers: dict[str, str] | None = None) -> bytes:
    """The exact bytes sent for every request (built once: the loop only re-sends them)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             "Accept: text/event-stream, application/json", f"Content-Length: {len(body)}"]
    for k, v in (extra_headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chat_body(model: str, stream: bool, content: str = "hi") -> bytes:
    import json
    return json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]},
                      separators=(",", ":")).encode()


def parse_cpus(text: str | None) -> list[int] | None:
    """'0', '0,2', '1-3' -> list of CPU numbers; None/'' -> None (no pinning)."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


# ------------------------------------------------------------------------------------------
# one client process
# ------------------------------------------------------------------------------------------

class _Run:
    """State shared by all connections of one client process (single-threaded: no locks)."""

    def __init__(self, spec: LoadSpec, connections: int, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.connections = connections
        self.request = spec.request
        self.stream = spec.mode == "stream"
        self.window = spec.window_end > 0
        self.ttfb = array("d")
        self.total = array("d")
        self.t0s = array("d")
        self.firsts = array("d")
        self.ok = 0
        self.events = 0
        self.ev_min = 1 << 62
        self.ev_max = 0
        self.body_bytes = 0
        self.errors: Counter[str] = Counter()
        self.errors_outside = 0
        self.issued = 0
        self.conns: set[_Conn] = set()
        self.done = loop.create_future()
        self.cpu_window: list[float] = []

    def may_send(self) -> bool:
        if self.window:
            return _now() < self.spec.window_end
        return self.issued < self.spec.warmup_requests + self.spec.requests

    def counts(self, idx: int, t_end: float) -> bool:
        if self.window:
            return self.spec.window_start <= t_end < self.spec.window_end
        return idx >= self.spec.warmup_requests

    def fail(self, kind: str, idx: int) -> None:
        if self.counts(idx, _now()):
            self.errors[kind] += 1
        else:
            self.errors_outside += 1

    def check_done(self) -> None:
        if not self.done.done() and not self.may_send() and not any(c.busy for c in self.conns):
            self.done.set_result(None)

    async def connect(self) -> None:
        """Open one connection, retrying (with a short pause, so a dead server cannot make us spin)."""
        while self.may_send():
            try:
                await self.loop.create_connection(lambda: _Conn(self), self.spec.host, self.spec.port)
                return
            except OSError:
                self.fail("connect", self.issued)
                await asyncio.sleep(0.05)
        self.check_done()


class _Conn(asyncio.Protocol):
    """One keep-alive connection running requests back to back."""

    __slots__ = ("run", "tr", "parser", "busy", "idx", "t0", "t_first", "t_read", "status", "events", "tail",
                 "last", "nbody")

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.tr: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # uvloop already sets it; explicit so small requests are never Nagle-delayed.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.run.conns.add(self)
        self._next()

    def _next(self) -> None:
        run = self.run
        if not run.may_send():
            self.busy = False
            run.check_done()
            return
        self.idx = run.issued
        run.issued += 1
        self.status = 0
        self.events = 0
        self.nbody = 0
        self.t_first = 0.0
        self.tail = b""
        self.last = b""
        self.busy = True
        self.t0 = _now()
        self.tr.write(run.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.t_read = _now()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.busy:
                self.busy = False
                self.run.fail("http_parse", self.idx)
            self.tr.close()  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.t_first == 0.0 and not self.run.stream:
            self.t_first = self.t_read
        self.nbody += len(body)
        if self.run.stream:
            # Count `data:` without joining the body; only the 4+4 bytes around a chunk
            # boundary are joined, for a `data:` split across two chunks.
            n = body.count(b"data:")
            if self.tail:
                n += (self.tail + body[:4]).count(b"data:")
            if n:
                if self.t_first == 0.0:
                    self.t_first = self.t_read
                self.events += n
            self.tail = body[-4:]
            self.last = body[-16:] if len(body) >= 16 else (self.last + body)[-16:]

    def on_message_complete(self) -> None:
        t = _now()
        run = self.run
        self.busy = False
        err = None
        if self.status != 200:
            err = f"status_{self.status}"
        elif run.stream and b"data: [DONE]" not in self.last:
            err = "no_done"
        elif not run.stream and self.nbody == 0:
            err = "empty_body"
        if err:
            run.fail(err, self.idx)
        elif run.counts(self.idx, t):
            run.ok += 1
            run.ttfb.append(self.t_first - self.t0)
            run.total.append(t - self.t0)
            if run.spec.times:
                run.t0s.append(self.t0)
                run.firsts.append(self.t_first)
            run.events += self.events
            run.body_bytes += self.nbody
            if self.events < run.ev_min:
                run.ev_min = self.events
            if self.events > run.ev_max:
                run.ev_max = self.events
        if not self.parser.should_keep_alive():
            self.tr.close()  # type: ignore[union-attr]  # connection_lost reconnects
            return
        if run.spec.gap > 0 and run.may_send():
            run.loop.call_later(run.spec.gap, self._next)
            return
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        run.conns.discard(self)
        if self.busy:
            self.busy = False
            run.fail("conn_lost", self.idx)
        if run.may_send() and not run.done.done():
            run.loop.create_task(run.connect())
        else:
            run.check_done()


async def _drive(spec: LoadSpec, connections: int) -> dict:
    loop = asyncio.get_running_loop()
    run = _Run(spec, connections, loop)
    if spec.start_at:
        await asyncio.sleep(max(0.0, spec.start_at - _now()))
    if run.window:
        # CPU of this process over the window: tells whether the load generator itself saturated.
        loop.call_at(spec.window_start, lambda: run.cpu_window.append(time.process_time()))
        loop.call_at(spec.window_end, lambda: run.cpu_window.append(time.process_time()))
        deadline = spec.window_end + spec.grace
    else:
        deadline = _now() + spec.timeout
    for _ in range(connections):
        loop.create_task(run.connect())
    try:
        await asyncio.wait_for(asyncio.shield(run.done), max(0.0, deadline - _now()))
    except asyncio.TimeoutError:
        pass
    stalled = sum(1 for c in run.conns if c.busy)
    for c in list(run.conns):
        c.tr.abort()  # type: ignore[union-attr]
    await asyncio.sleep(0)
    if not run.window and run.ok + sum(run.errors.values()) < spec.requests:
        run.errors["timeout"] += spec.requests - run.ok - sum(run.errors.values())
    cpu = run.cpu_window[1] - run.cpu_window[0] if len(run.cpu_window) == 2 else None
    return {
        "ok": run.ok, "errors": dict(run.errors), "errors_outside_window": run.errors_outside,
        "stalled": stalled, "events": run.events, "body_bytes": run.body_bytes,
        "ev_min": run.ev_min if run.ok else 0, "ev_max": run.ev_max,
        "ttfb": run.ttfb.tobytes(), "total": run.total.tobytes(), "cpu_s": cpu,
        "t0s": run.t0s.tobytes(), "firsts": run.firsts.tobytes(),
    }


def _client_main(spec: LoadSpec, connections: int, pipe) -> None:  # type: ignore[no-untyped-def]
    try:
        if spec.cpus:
            os.sched_setaffinity(0, spec.cpus)
        result = uvloop.run(_drive(spec, connections))
    except KeyboardInterrupt:
        return
    except BaseException as e:  # the parent must learn why a client died, not just that it did
        result = {"fatal": f"{type(e).__name__}: {e}"}
    pipe.send(result)
    pipe.close()


class LoadRun:
    """Client processes started for one spec; `collect()` waits for and merges their results.

    Split from starting so that the caller can read /proc at the window edges while
    the clients run, without a thread. Connections are split as evenly as possible;
    fork is used because the caller holds no threads or loops and children start in
    milliseconds, which matters when `start_at` is only a fraction of a second away.
    """

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        ctx = mp.get_context("fork")
        clients = max(1, min(spec.clients, spec.connections))
        per = [spec.connections // clients + (1 if i < spec.connections % clients else 0) for i in range(clients)]
        self.procs: list = []
        try:
            for n in per:
                rx, tx = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_client_main, args=(spec, n, tx), daemon=True)
                p.start()
                tx.close()
                self.procs.append((p, rx))
        except BaseException:
            self.close()
            raise

    def collect(self) -> dict:
        spec = self.spec
        try:
            limit = (spec.window_end + spec.grace - _now() if spec.window_end else spec.timeout) + 15.0
            results = []
            for p, rx in self.procs:
                if rx.poll(max(1.0, limit)):
                    results.append(rx.recv())
                else:
                    results.append({"fatal": "client process sent no result in time"})
                p.join(5)
        finally:
            self.close()
        return _merge(results)

    def close(self) -> None:
        for p, _ in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2)


def run_load(spec: LoadSpec) -> dict:
    """Run `spec` over `spec.clients` processes and return the merged raw results."""
    return LoadRun(spec).collect()


def _merge(results: list[dict]) -> dict:
    out: dict = {"ok": 0, "errors": Counter(), "errors_outside_window": 0, "stalled": 0, "events": 0,
                 "body_bytes": 0, "ev_min": None, "ev_max": 0, "ttfb": array("d"), "total": array("d"),
                 "t0s": array("d"), "firsts": array("d"), "client_cpu_s": [], "fatal": []}
    for r in results:
        if "fatal" in r:
            out["fatal"].append(r["fatal"])
            continue
        for k in ("ok", "errors_outside_window", "stalled", "events", "body_bytes"):
            out[k] += r[k]
        out["errors"].update(r["errors"])
        if r["ok"]:
            out["ev_min"] = r["ev_min"] if out["ev_min"] is None else min(out["ev_min"], r["ev_min"])
            out["ev_max"] = max(out["ev_max"], r["ev_max"])
        out["ttfb"].frombytes(r["ttfb"])
        out["total"].frombytes(r["total"])
        out["t0s"].frombytes(r["t0s"])
        out["firsts"].frombytes(r["firsts"])
        out["client_cpu_s"].append(r["cpu_s"])
    out["errors"] = dict(out["errors"])
    return out


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------

def percentile(sorted_values, q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    n = len(sorted_values)
    if not n:
        return None
    k = max(0, min(n - 1, int(-(-q * n // 100)) - 1))
    return sorted_values[k]


@dataclass
class Summary:
    """The numbers of one load run (times in milliseconds)."""

    requests: int
    errors: dict[str, int]
    stalled: int
    seconds: float
    rps: float
    events_per_s: float
    events_min: int | None
    events_max: int
    ttfb_ms: dict[str, float | None] = field(default_factory=dict)
    total_ms: dict[str, float | None] = field(default_factory=dict)
    client_cpu_util: list[float | None] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


_QS = (50, 90, 99, 99.9)


def summarize(raw: dict, seconds: float) -> Summary:
    """Reduce merged raw results to rates and percentiles. `seconds`: the measured span."""
    ttfb = sorted(raw["ttfb"])
    total = sorted(raw["total"])

    def pct(vals: list[float]) -> dict[str, float | None]:
        d = {f"p{q:g}": (None if (v := percentile(vals, q)) is None else v * 1000) for q in _QS}
        d["mean"] = sum(vals) * 1000 / len(vals) if vals else None
        d["max"] = vals[-1] * 1000 if vals else None
        return d

    return Summary(
        requests=raw["ok"], errors=raw["errors"], stalled=raw["stalled"], seconds=seconds,
        rps=raw["ok"] / seconds if seconds > 0 else 0.0,
        events_per_s=raw["events"] / seconds if seconds > 0 else 0.0,
        events_min=raw["ev_min"], events_max=raw["ev_max"],
        ttfb_ms=pct(ttfb), total_ms=pct(total),
        client_cpu_util=[None if c is None or seconds <= 0 else c / seconds for c in raw["client_cpu_s"]],
        fatal=raw["fatal"],
    )


# ------------------------------------------------------------------------------------------
# standalone use
# ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Closed-loop HTTP/1.1 load on an OpenAI-compatible /v1/chat/completions endpoint "
                    "(uvloop + asyncio.Protocol + httptools). For the full gateway benchmark use "
                    "`python -m bench.stream`.")
    p.add_argument("--url", default="http://127.0.0.1:8080/v1/chat/completions",
                   help="http:// URL of the endpoint (default: %(default)s)")
    p.add_argument("--model", default="bench-model", help="model name in the request (default: %(default)s)")
    p.add_argument("--mode", choices=["stream", "nonstream"], default="stream")
    p.add_argument("--connections", "-c", type=int, default=64, help="connections in flight (default: %(default)s)")
    p.add_argument("--clients", "-p", type=int, default=1, help="load generator processes (default: %(default)s)")
    p.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default: %(default)s)")
    p.add_argument("--client-cpus", help="pin load generator processes to these CPUs, e.g. 1 or 0-3")
    p.add_argument("--header", "-H", action="append", default=[], metavar="NAME: VALUE", help="extra request header")
    args = p.parse_args(argv)

    u = urlsplit(args.url)
    if u.scheme != "http" or not u.hostname:
        p.error("--url must be http://host:port/path")
    host, port = u.hostname, u.port or 80
    headers = dict(h.split(":", 1) for h in args.header)
    req = build_request(host, port, u.path or "/", chat_body(args.model, args.mode == "stream"),
                        {k.strip(): v.strip() for k, v in headers.items()})
    t0 = _now() + 0.2
    spec = LoadSpec(host=host, port=port, request=req, mode=args.mode, connections=args.connections,
                    clients=args.clients, start_at=t0, window_start=t0 + args.warmup,
                    window_end=t0 + args.warmup + args.duration, cpus=parse_cpus(args.client_cpus))
    s = summarize(run_load(spec), args.duration)
    t, c = s.ttfb_ms, s.total_ms

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"
    print(f"{s.requests} ok in {s.seconds:.1f} s: {s.rps:.0f} req/s, {s.events_per_s:.0f} events/s "
          f"(events/request {s.events_min}..{s.events_max})")
    print(f"TTFB ms   p50 {f(t['p50'])}  p90 {f(t['p90'])}  p99 {f(t['p99'])}  max {f(t['max'])}")
    print(f"total ms  p50 {f(c['p50'])}  p90 {f(c['p90'])}  p99 {f(c['p99'])}  max {f(c['max'])}")
    print(f"errors {s.errors or 0}  stalled {s.stalled}  client CPU "
          + ", ".join("-" if x is None else f"{x:.0%}" for x in s.client_cpu_util))
    for msg in s.fatal:
        print(f"client died: {msg}", file=sys.stderr)
    return 1 if s.fatal or s.errors or s.stalled else 0


if __name__ == "__main__":
    raise SystemExit(main())
