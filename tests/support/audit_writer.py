"""A worker stand-in for the audit durability tests: a uvloop loop writing audit records until it is killed.

Usage: python audit_writer.py DIR FSYNC TASKS TOTAL
Prints `ack N` (flushed) once record N's write() returned; with SIGTERM it calls
`AuditLog.close()` and prints `closed <JSON list of every N handed to write()>`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvloop  # noqa: E402

from fastgw.config import AuditLogger  # noqa: E402
from fastgw.policy.audit import AuditLog  # noqa: E402


async def main(directory: str, fsync: str, tasks: int, total: int) -> None:
    loop = asyncio.get_running_loop()
    log = AuditLog(AuditLogger(path=directory, fsync=fsync, fsync_interval=0.05), worker_id=1)
    log.start()
    enqueued: list[int] = []
    counter = iter(range(1, total + 1))
    out = sys.stdout

    def on_term() -> None:
        ok = log.close(10.0)
        out.write(f"closed {json.dumps(enqueued)} {ok}\n")
        out.flush()
        os._exit(0)

    loop.add_signal_handler(signal.SIGTERM, on_term)

    async def writer() -> None:
        for n in counter:
            enqueued.append(n)  # write() queues the record before its first suspension
            await log.write({"n": n, "pad": "x" * (n % 200)})
            out.write(f"ack {n}\n")
            out.flush()

    out.write("ready\n")
    out.flush()
    await asyncio.gather(*(writer() for _ in range(tasks)))
    out.write("done\n")
    out.flush()
    await asyncio.sleep(60)  # wait to be signalled


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
