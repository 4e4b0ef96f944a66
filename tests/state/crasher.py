"""A worker that dies by SIGKILL at one step of an update of the local state table (the crash tests).

    python -m tests.state.crasher DIR STEP [KEYS] [py]

Makes one admission of `ask()` (two buckets, a concurrency slot and a budget: several records in one update)
on the table in DIR, and SIGKILLs itself when the table reports STEP (logged, marked, applying, applied,
replacing). With KEYS, first admits that many distinct one-bucket keys (to make the table replace itself). With
`py`, the table's Python record operations run even where their C form is built (tests run both).
"""

from __future__ import annotations

import os
import signal
import sys

import uvloop

from fastgw.state import Ask, LocalBackend, Rate, Slot, Spend, table

PREFIX = "crash"


def ask(holder: str = "h1") -> Ask:
    rates = (Rate(f"{PREFIX}:rq:l:x", 60e6 / 100, 100, 1), Rate(f"{PREFIX}:tk:l:x", 60e6 / 10**6, 10**6, 500))
    return Ask(holder, rates, (Slot(f"{PREFIX}:cc:l:x", 10),), (Spend(f"{PREFIX}:bg:b:x:total", 10**9, 7_000, 0),),
               60.0)


async def main(where: str, step: str, keys: int) -> None:
    b = LocalBackend(where, PREFIX, 2.0)
    for i in range(keys):
        assert (await b.admit(Ask(f"k{i}", (Rate(f"{PREFIX}:rq:many:{i}", 60e6, 10, 1),), (), (), 60.0))).ok

    def die(at: str) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    table.crash_hook = die
    await b.admit(ask())
    print("survived", flush=True)


if __name__ == "__main__":
    if sys.argv[4:5] == ["py"]:
        table._c = None
    print("path", "c" if table._c is not None else "py", flush=True)
    uvloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
