"""`python -m bench.ttft_split`: where the time to first event goes at concurrency 1, system by system.

`bench run` gives one figure, the added time to first event (TTFT) of sequential streamed requests on one
keep-alive connection. This splits it, per request, at the mock upstream (`bench.upstream --times`), using
`time.monotonic()`, which is the same clock in every process of the box:

  request leg   the client's write of the request → the upstream's read of it (through the system);
  upstream      that read → the upstream's write of the whole answer (when it began);
  answer leg    that write → the client's read that brought the first event (through the system; it includes
                the upstream's write itself, which wakes the system).

The legs of one request add up to its TTFT; the table gives each leg's median over the recorded requests, and
the median of the rounds. `direct` (the client on the upstream) shows what the legs cost without a system.
Every round starts each system anew (its own upstream), the systems in the order given, on the CPUs `bench run`
uses (system under test on the first CPU, upstream and client on the others).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

from bench.loadgen import LoadSpec, build_request, chat_body, run_load
from bench.run import _cpus
from bench.stream import BENCH_KEY, MODEL, REPO, Server, free_port
from bench.systems import SYSTEMS, start_system

LEGS = ("ttft", "request", "upstream", "answer")


def split(t0s: array, firsts: array, upstream: list[float]) -> dict[str, float]:
    """Each leg's median (µs) over the requests: `t0s`/`firsts` the client's write and first-event times of the
    recorded requests, `upstream` the upstream's (read, write) pairs, flat, of every answer it wrote at once
    (warm-up requests first: the recorded requests are its last ones)."""
    n = len(t0s)
    if n == 0 or len(upstream) < 2 * n:
        raise ValueError(f"{n} requests recorded, {len(upstream) // 2} answers noted by the upstream")
    ups = upstream[len(upstream) - 2 * n:]
    legs: dict[str, list[float]] = {k: [] for k in LEGS}
    for i in range(n):
        t0, first, read, wrote = t0s[i], firsts[i], ups[2 * i], ups[2 * i + 1]
        if not t0 <= read <= wrote <= first:
            raise ValueError(f"request {i}: times out of order (client write {t0}, upstream read {read}, "
                             f"upstream write {wrote}, first event {first}): the requests do not line up")
        legs["ttft"].append(first - t0)
        legs["request"].append(read - t0)
        legs["upstream"].append(wrote - read)
        legs["answer"].append(first - wrote)
    return {k: statistics.median(v) * 1e6 for k, v in legs.items()}


def one(name: str, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """One system, once: its own upstream, `args.requests` recorded requests at c=1 after `args.warmup`."""
    up_port, port = free_port(), free_port()
    times = tmp / f"{name}-upstream-times"
    up = Server("upstream", [sys.executable, "-m", "bench.upstream", "--port", str(up_port), "--events",
                             str(args.events), "--times", str(times)], up_port, tmp / "upstream.log",
                args.load_cpus, REPO)
    system = None
    try:
        up.wait_ready(30)
        system = start_system(name, tmp, port, up_port, args.gateway_cpus, source=args.source,
                              load_cpus=args.load_cpus)
        if system.server is not None:
            system.server.wait_ready(60)
        req = build_request("127.0.0.1", system.port, "/v1/chat/completions", chat_body(MODEL, True),
                            {"Authorization": f"Bearer {BENCH_KEY}"})
        raw = run_load(LoadSpec(host="127.0.0.1", port=system.port, request=req, mode="stream", connections=1,
                                requests=args.requests, warmup_requests=args.warmup, timeout=120.0,
                                cpus=args.load_cpus, times=True))
        if raw["errors"] or raw["fatal"] or raw["ok"] != args.requests:
            raise RuntimeError(f"{name}: {raw['ok']} of {args.requests} requests answered; errors {raw['errors']}"
                               f" {raw['fatal']}")
    finally:
        if system is not None:
            system.stop()
        up.stop()  # writes the times at exit
    return split(raw["t0s"], raw["firsts"], [float(x) for x in times.read_text().split()])


def table(results: dict[str, list[dict[str, float]]]) -> list[str]:
    """Markdown: per system, each leg's median over the rounds (µs), and the rounds' TTFTs."""
    lines = ["| system | TTFT p50 (µs) | request leg | upstream | answer leg | TTFT per round |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in LEGS}
        per_round = " / ".join("%.1f" % r["ttft"] for r in rounds)
        lines.append(f"| {name} | {med['ttft']:.1f} | {med['request']:.1f} | {med['upstream']:.1f} | "
                     f"{med['answer']:.1f} | {per_round} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ttft_split", description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default="nginx,fastgw,direct", help=f"comma-separated, from {', '.join(SYSTEMS)}")
    p.add_argument("--requests", type=int, default=3000, help="recorded requests per system and round [3000]")
    p.add_argument("--warmup", type=int, default=300, help="unrecorded requests before them [300]")
    p.add_argument("--rounds", type=int, default=3, help="rounds of all systems [3]")
    p.add_argument("--events", type=int, default=50, help="content chunks per streamed answer [50]")
    p.add_argument("--source", type=Path, default=REPO, help="directory whose fastgw package is started")
    p.add_argument("--cpus-gateway", help="CPUs of the system under test [the first usable one, as bench run]")
    p.add_argument("--cpus-load", help="CPUs of the upstream and the client [the others]")
    p.add_argument("--write", action="store_true", help="append a section to bench/RESULTS.md")
    args = p.parse_args(argv)
    args.gateway_cpus, args.load_cpus, pinning = _cpus(args)
    names = [n for n in args.systems.split(",") if n]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}")
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="ttft-split-") as d:
        for r in range(args.rounds):
            for name in names:
                print(f"[{r + 1}/{args.rounds}] {name} ...", file=sys.stderr, flush=True)
                results[name].append(one(name, Path(d), args))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.source, capture_output=True,
                            text=True).stdout.strip()
    command = "python -m bench.ttft_split " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC — `bench.ttft_split`: the time to first event "
             "at c=1, split", "", f"- command: `{command}`; fastgw commit {commit}; {args.requests} recorded "
             f"requests per system and round after {args.warmup}, {args.rounds} round(s); CPU pinning: "
             f"{pinning.replace('load generator', 'client')}", ""] + table(results) + [""]
    print("\n".join(lines))
    if args.write:
        with open(REPO / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
