"""Which Redis client the `redis` state backend should use, measured on uvloop: redis-py, coredis, or a raw one.

    python -m bench.state_bench                    # both clients (+ the raw floor), c=1 and c=64, 20000 calls each
    python -m bench.state_bench --calls 5000 --json out.json
    python -m bench.state_bench --redis-server /usr/bin/redis-server

It starts its own `redis-server` (loopback port, no persistence, temp dir), loads one Lua script of the
shape the admission script has (three keys: two GCRA buckets and a budget hash, Redis `TIME`, all-or-nothing
writes) and calls it with EVALSHA, each client in a fresh process under uvloop:

- c=1: one call after another; c=64: 64 tasks calling at once (what one busy worker does).
- per call: wall latency p50/p99 as the caller sees it, and the client process's CPU (user+sys) divided by
  the calls; the server's CPU per call too (from /proc), which is the same work whichever client sends it.
- `raw` is a floor, not a candidate: an asyncio.Protocol writing RESP by hand and parsing with hiredis,
  one connection, replies matched in order. It shows what any client spends above the socket work.

Nothing is imported from fastgw. No thresholds: read the figures side by side on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from typing import Any

from bench.stream import free_port

__all__ = ["LUA", "main"]

#: The shape of the admission script: read two GCRA buckets and a budget, decide, write all or nothing.
LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local ok = 1
local tats = {}
for i = 1, 2 do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local interval = tonumber(ARGV[i * 2 - 1])
  local new = tat + interval * tonumber(ARGV[i * 2])
  if new - interval * 1e9 > now then ok = 0 end
  tats[i] = new
end
local used = tonumber(redis.call('HGET', KEYS[3], 'used') or '0')
if used + tonumber(ARGV[5]) > 1e15 then ok = 0 end
if ok == 1 then
  for i = 1, 2 do
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', 60000)
  end
  redis.call('HINCRBY', KEYS[3], 'used', ARGV[5])
end
return {ok, 5, 7}
"""
KEYS = ["bench:r:k", "bench:t:k", "bench:b:k"]
ARGS = ["100", "1", "0.3", "1500", "12345"]
CLIENTS = ("redis-py", "coredis", "raw")


# ---- the clients, each in its own process -------------------------------------------------------------------

async def _redispy(port: int) -> tuple[Any, Any, Any]:
    import redis.asyncio as redis

    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, max_connections=256)
    sha = await r.script_load(LUA)

    async def call() -> Any:
        return await r.evalsha(sha, len(KEYS), *KEYS, *ARGS)

    return call, r.aclose, None


async def _coredis(port: int) -> tuple[Any, Any, Any]:
    import coredis

    r = coredis.Redis(host="127.0.0.1", port=port, stream_timeout=1.0)
    ctx = r.__aenter__()  # coredis runs its connections in a task group entered with `async with`
    await ctx
    sha = await r.script_load(LUA)

    async def call() -> Any:
        return await r.evalsha(sha, keys=KEYS, args=ARGS)

    async def close() -> None:
        await r.__aexit__(None, None, None)

    return call, close, None


class _RawProtocol(asyncio.Protocol):
    """RESP over one connection: requests written in order, replies handed back in order (hiredis parses)."""

    def __init__(self) -> None:
        import hiredis

        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            self.waiters.popleft().set_result(reply)


def _resp(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def _raw(port: int) -> tuple[Any, Any, Any]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_RawProtocol, "127.0.0.1", port)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send(*parts: str | bytes) -> Any:
        fut = loop.create_future()
        proto.waiters.append(fut)
        transport.write(_resp(*parts))
        return await fut

    sha = (await send("SCRIPT", "LOAD", LUA)).decode()
    head = ["EVALSHA", sha, str(len(KEYS)), *KEYS]

    async def call() -> Any:
        return await send(*head, *ARGS)

    async def close() -> None:
        transport.close()

    return call, close, None


async def _measure(client: str, port: int, concurrency: int, calls: int) -> dict[str, Any]:
    make = {"redis-py": _redispy, "coredis": _coredis, "raw": _raw}[client]
    call, close, _ = await make(port)
    for _ in range(500):  # warm: connections open, code paths hot
        await call()
    lat: list[float] = []
    per_task = calls // concurrency

    async def task() -> None:
        for _ in range(per_task):
            t0 = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(task() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await close()
    lat.sort()
    n = len(lat)
    return {"client": client, "c": concurrency, "calls": n, "p50_us": lat[n // 2] * 1e6,
            "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6, "cpu_us_per_call": cpu / n * 1e6,
            "calls_per_s": n / wall}


def _child(client: str, port: int, concurrency: int, calls: int) -> None:
    import uvloop

    print(json.dumps(uvloop.run(_measure(client, port, concurrency, calls))))


# ---- the parent: a redis-server, one process per measurement ------------------------------------------------


def _server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=4, metavar=("CLIENT", "PORT", "C", "CALLS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(a.child[0], int(a.child[1]), int(a.child[2]), int(a.child[3]))
        return 0
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="state-bench-")
    server = subprocess.Popen([a.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        results = []
        print(f"{'client':10} {'c':>3} {'p50 µs':>8} {'p99 µs':>8} {'client CPU µs/call':>19} "
              f"{'server CPU µs/call':>19} {'calls/s':>9}")
        for c in (1, 64):
            for client in a.clients.split(","):
                s0 = _server_cpu(server.pid)
                out = subprocess.run([sys.executable, "-m", "bench.state_bench", "--child", client, str(port),
                                      str(c), str(a.calls)], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["server_cpu_us_per_call"] = (_server_cpu(server.pid) - s0) / (r["calls"] + 501) * 1e6
                results.append(r)
                print(f"{client:10} {c:>3} {r['p50_us']:8.1f} {r['p99_us']:8.1f} {r['cpu_us_per_call']:19.1f} "
                      f"{r['server_cpu_us_per_call']:19.1f} {r['calls_per_s']:9.0f}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"calls": a.calls, "python": sys.version.split()[0], "results": results}, f, indent=2)
        return 0
    finally:
        server.terminate()
        server.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
