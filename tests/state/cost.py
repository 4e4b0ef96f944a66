"""What one admitted request costs in each state backend: CPU per admit + reconcile, latency, under contention.

    python -m tests.state.cost                      # memory, local (shared table), redis; 1 process, then 4 at once
    python -m tests.state.cost --requests 20000 --processes 8
    python -m tests.state.cost --glue               # the gateway side too: fastgw.quota's admit + settle

The admission is the issue's default shape: one limit with a request bucket, a token bucket and a concurrency
slot, and one budget; the reconcile refunds tokens, moves spend and releases the slot. Each process runs its
loop sequentially (c=1) on uvloop with the production timeout (0.05 s) and reports CPU (user+sys) per
request, wall p50/p99 per admit+reconcile, and state errors. Redis is started here (loopback, no persistence).
It lives with the tests, not in `bench/`, because it imports fastgw's state package (bench/ must not).

`--glue` measures what `fastgw.quota.Quota` adds around the store (the request's prompt estimate, the plan, the
Ask, the x-ratelimit-* headers, the reservation, the settlement), one process, c=1, with the same limit and
budget as `bench run`'s fastgw-limit-* systems: on a store that answers at once without storing (`null`: the
glue alone), on `memory` and on `local`. Through a gateway the same work costs 2-3x more (a worker's caches hold
far more than this loop's), so read these as the split, and `bench run` for the figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from fastgw.state import (Admission, Ask, LocalBackend, MemoryBackend, Rate, RateState, RedisBackend, Settle, Slot,
                          SlotState, Spend, SpendState, StateUnavailable, new_holder)

ROOT = Path(__file__).resolve().parents[2]


def _pair(p: str) -> tuple[Ask, Settle]:
    h = new_holder()
    tk = f"{p}:tk:per-key:alice"
    bg = f"{p}:bg:monthly:alice:2026-05"
    ask = Ask(h, (Rate(f"{p}:rq:per-key:alice", 60e6 / 1e9, 10**9, 1), Rate(tk, 60e6 / 1e12, 10**12, 1500)),
              (Slot(f"{p}:cc:per-key:alice", 10**6),), (Spend(bg, 10**15, 1000, 0),), 60.0)
    return ask, Settle(h, ((tk, 60e6 / 1e12, -1000),), (f"{p}:cc:per-key:alice",), ((bg, 1000, 400),))


async def _loop(kind: str, where: str, n: int, start_at: float) -> dict[str, float]:
    b = (MemoryBackend("c") if kind == "memory" else LocalBackend(where, "c", 0.05) if kind == "local"
         else RedisBackend(where, "c", 0.05))
    for _ in range(200):
        a, s = _pair("c")
        await b.admit(a)
        await b.reconcile(s)
    import asyncio
    await asyncio.sleep(max(0.0, start_at - time.time()))
    items = [_pair("c") for _ in range(n)]
    lat: list[float] = []
    errors = 0
    c0, w0 = time.process_time(), time.perf_counter()
    for a, s in items:
        t0 = time.perf_counter()
        try:
            await b.admit(a)
            await b.reconcile(s)
        except StateUnavailable:
            errors += 1
        lat.append(time.perf_counter() - t0)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    lat.sort()
    await b.close()
    return {"cpu_us": cpu / n * 1e6, "p50_us": lat[n // 2] * 1e6, "p99_us": lat[int(n * 0.99)] * 1e6,
            "per_s": n / wall, "errors": errors}


class _Null:
    """A store that admits everything at once and keeps nothing: what is left is the glue around it."""

    kind = "null"
    remote = False
    prefix = "fastgw"

    async def admit(self, ask: Ask) -> Admission:
        return Admission(True, [RateState(True, 5, 0.1, 0.0) for _ in ask.rates],
                         [SlotState(True, 0, 0.0) for _ in ask.slots], [SpendState(True, 0) for _ in ask.spends])

    async def reconcile(self, settle: Settle) -> None:
        return None


async def _glue(kind: str, where: str, n: int) -> dict[str, float]:
    import asyncio
    import types

    import msgspec

    from fastgw.config import Retry
    from fastgw.policy.ratelimit import Pricing, RateLimiter, RateLimitPolicy
    from fastgw.proto.flow import FlowControl
    from fastgw.proto.writer import Responder
    from fastgw.providers.base import TargetRuntime
    from fastgw.quota import Quota
    from fastgw.routing import Plan

    settings = msgspec.convert({"limits": [{"name": "per-key", "per": "key", "requests_per_minute": 10**9,
                                            "tokens_per_minute": 10**12, "concurrent": 100000}],
                                "budgets": [{"name": "monthly", "per": "key", "usd": 10**9, "period": "month"}]},
                               RateLimiter)
    backend: Any = _Null() if kind == "null" else MemoryBackend() if kind == "memory" else LocalBackend(where)
    q = Quota(RateLimitPolicy(settings, backend), {"up": Pricing(0.15, 0.6)}, backend.kind)
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    plan = Plan([TargetRuntime(id="up", provider="openai", model="m")], Retry())

    async def one() -> None:
        ctx: Any = types.SimpleNamespace(principal=None, roles=(), model="m", target="up", body=body, texts=None,
                                         usage={"prompt_tokens": 1, "completion_tokens": 50}, request_id="r")
        # A response writer no byte is written to (the admission only adds its headers to it).
        resp = Responder(object(), FlowControl(asyncio.get_running_loop()), True, False)  # type: ignore[arg-type]
        res = await q.admit(ctx, body, plan, resp)
        await q.settle(ctx, res, q.renew_while_streaming(res))

    for _ in range(200):
        await one()
    c0 = time.process_time()
    for _ in range(n):
        await one()
    cpu = time.process_time() - c0
    if kind == "local":
        await backend.close()
    return {"cpu_us": cpu / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--glue", action="store_true", help="fastgw.quota's admit + settle around null, memory, local")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.glue:
        tmp = tempfile.mkdtemp(prefix="state-cost-")
        print(f"{'quota on':8} {'CPU µs/req':>10}")
        for kind in ("null", "memory", "local"):
            r = uvloop.run(_glue(kind, f"{tmp}/{kind}", a.requests))
            print(f"{kind:8} {r['cpu_us']:10.1f}")
        return 0
    if a.child:
        print(json.dumps(uvloop.run(_loop(a.child[0], a.child[1], int(a.child[2]), float(a.child[3])))))
        return 0
    from tests.state.redis_server import REDIS_SERVER, RedisServer
    tmp = Path(tempfile.mkdtemp(prefix="state-cost-"))
    server = RedisServer(tmp / "redis").start() if REDIS_SERVER else None
    print(f"{'backend':8} {'procs':>5} {'CPU µs/req':>10} {'p50 µs':>8} {'p99 µs':>8} {'req/s/proc':>10} "
          f"{'errors':>6}")
    try:
        for kind in ("memory", "local", "redis"):
            if kind == "redis" and server is None:
                continue
            where = server.url if kind == "redis" and server else str(tmp / f"local-{time.time_ns()}")
            for procs in (1, a.processes) if kind != "memory" else (1,):
                start_at = time.time() + 1.0
                ps = [subprocess.Popen([sys.executable, "-m", "tests.state.cost", "--child", kind, where,
                                        str(a.requests), str(start_at)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                      for _ in range(procs)]
                rs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in ps]
                avg = {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]}
                p99 = max(r["p99_us"] for r in rs)
                print(f"{kind:8} {procs:>5} {avg['cpu_us']:10.1f} {avg['p50_us']:8.1f} {p99:8.1f}"
                      f" {avg['per_s']:10.0f} {int(sum(r['errors'] for r in rs)):>6}")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
