"""wrk driver for `python -m bench run`: closed-loop POST load with a Lua body script.

wrk (C, epoll) costs far less CPU per request than any Python client, so it is the load generator
for throughput and CPU per request. It sees only whole responses: its latency is the completion
time of a request (for a stream: until `data: [DONE]`), never the time to first event — that is
measured with bench.loadgen at concurrency 1.

The Lua script sets method, body and headers, and its `done()` hook prints one line
`WRKJSON {...}` with exact counts (requests, errors by kind) and latency percentiles in µs; the
human-readable `--latency` output is parsed too, as a cross-check and fallback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["WrkResult", "lua_script", "parse_output", "start", "finish", "run", "available"]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def available() -> str | None:
    """Path of the wrk binary, or None."""
    return shutil.which("wrk") or (os.access("/usr/bin/wrk", os.X_OK) and "/usr/bin/wrk") or None


def lua_script(body: bytes, headers: dict[str, str]) -> str:
    """A wrk script that POSTs `body` with `headers` and reports exact numbers as JSON in done()."""
    text = body.decode()
    eq = "=" * 4
    assert f"]{eq}]" not in text
    lines = ['wrk.method = "POST"', f"wrk.body = [{eq}[{text}]{eq}]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    lines.append("""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d,"mean":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
""")
    return "\n".join(lines)


@dataclass
class WrkResult:
    """One wrk run. Latencies in ms; `seconds` is wrk's own measured duration."""

    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: Requests/sec as printed by wrk (cross-check of requests / seconds).
    rps_printed: float | None = None
    output: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("output")
        return d


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_output(text: str) -> WrkResult:
    """Parse wrk's stdout (with --latency and the script's WRKJSON line)."""
    r = WrkResult(output=text)
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        r.rps_printed = float(m.group(1))
    # --latency distribution: "     50%    1.23ms"
    for q, v, u in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        r.latency_ms[f"p{float(q):g}"] = _ms(v, u)
    if m := re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M):
        r.requests, r.seconds = int(m.group(1)), _ms(m.group(2), m.group(3)) / 1000
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        r.errors = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups()) if int(v)}
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        r.errors["status"] = int(m.group(1))
    if m := re.search(r"^WRKJSON (\{.*\})$", text, re.M):
        # Exact figures from done() replace the rounded ones of the text output.
        j = json.loads(m.group(1))
        r.requests, r.seconds = j["requests"], j["duration_us"] / 1e6
        r.errors = {k: v for k, v in j["errors"].items() if v}
        r.latency_ms = {k: v / 1000 for k, v in j["latency_us"].items()}
    r.rps = r.requests / r.seconds if r.seconds > 0 else 0.0
    return r


def start(url: str, script: Path, seconds: float, connections: int, threads: int = 1,
          cpus: list[int] | None = None, timeout_s: float = 10.0) -> subprocess.Popen:
    """Start wrk (closed loop, `connections` in flight) in its own session; finish() collects it."""
    binary = available()
    if not binary:
        raise RuntimeError("wrk not found (apt-get install wrk), or use --load-tool loadgen")
    cmd = [binary, "-t", str(max(1, min(threads, connections))), "-c", str(connections),
           "-d", f"{max(1, round(seconds))}s", "--timeout", f"{timeout_s:g}s", "--latency", "-s", str(script), url]
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True, preexec_fn=pre)


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> WrkResult:
    """Wait for wrk and parse its output; kill it if it overruns or the caller is interrupted."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {out[-500:]}")
    r = parse_output(out)
    if r.requests == 0 and not r.errors:
        r.errors["no_output"] = 1
    return r


def run(url: str, script: Path, seconds: float, connections: int, **kw) -> WrkResult:
    """start() + finish()."""
    t = time.monotonic()
    return finish(start(url, script, seconds, connections, **kw), timeout=seconds + 30 + (time.monotonic() - t))
