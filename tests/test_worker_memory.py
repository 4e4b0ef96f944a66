"""An idle worker's memory (issue 18: idle worker RSS ≤ 30 MB): a policy chain's compile-time garbage stays in the
master, and what a worker inherits stays shared.

Compiling the pii-detector's and safety-filter's Hyperscan databases frees tens of MB that glibc's allocator keeps;
the master gives them back (`malloc_trim`) before it forks, or every worker would carry them in its RSS (measured
45.8 MB against 33.1 MB with the trim). The master collects and freezes its objects before fork, so a worker's
collections never copy the pages it inherited (private memory measured 4.7 MB, 15.9 MB without), and imports the
worker's modules itself; libphonenumber loads only for a PHONE pattern; and no module the gateway never calls is
imported before the fork (prometheus_client's HTTP side, email, tempfile: tests/test_prometheus.py). Idle worker RSS
measured 28.5 MB without a chain (32.5 MB before the trim and the freeze, 30.2 before the imports went)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.procs import start_gateway


def _worker_memory_kb(master_pid: int) -> tuple[int, int]:
    """(RSS, private) of the master's first worker, in KB, once settled after its boot."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        if children:
            time.sleep(1.0)  # settled after its boot
            # (The worker is not dumpable: its smaps_rollup is readable by root only, as this suite runs.)
            kb = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in
                  Path(f"/proc/{children[0]}/smaps_rollup").read_text().splitlines()[1:])}
            return kb["Rss"], kb["Private_Clean"] + kb["Private_Dirty"]
        time.sleep(0.05)
    raise AssertionError("no worker")


def test_a_policy_chain_adds_little_to_an_idle_workers_memory(tmp_path: Path) -> None:
    base = {"pack": {"name": "rss"}, "providers": {"targets": [{"id": "mock", "provider": "mock", "model": "mock-1"}]}}
    chain = {**base, "policies": {"chain": ["pii-detector", "safety-filter"]},
             "policy": {"pii-detector": {"action": "redact"},
                        "safety-filter": {"action": "redact", "terms": [f"forbidden term {i}" for i in range(200)]}}}
    sizes, private = {}, {}
    for name, cfg in (("plain", base), ("chain", chain)):
        gw = start_gateway(cfg, tmp_path / name, workers=1)
        try:
            sizes[name], private[name] = _worker_memory_kb(gw.proc.pid)
        finally:
            gw.stop()
    # The databases themselves are a few MB (with the output policies' joint stream database, ~6.8 MB over the plain
    # worker here; 8.5 MB on the CI box while its serialized copy was still kept); without the trim the chain's worker was ~14 MB larger.
    assert sizes["chain"] - sizes["plain"] < 10 * 1024, sizes
    assert sizes["plain"] < 30 * 1024, sizes  # the target, 30 MB; measured 28.5 MB
    assert max(private.values()) < 9 * 1024, private  # measured 4.7 / 5.1 MB; ~16 MB without the freeze
