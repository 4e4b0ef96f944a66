"""One "worker" of the table's multi-process test: admissions and settlements at once with other processes, while
each also adds keys of its own (so that the file is replaced under everyone's feet).

    python -m tests.state.pairs DIR PREFIX N KEYS START_AT INDEX

N times: admit a slot in one shared set and a reservation against one shared ledger, then settle it (the slot
released, the reservation replaced by ACTUAL); in between, KEYS / N keys of its own. Prints {"admitted": n,
"errors": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop

from fastgw.state import Ask, LocalBackend, Rate, Settle, Slot, Spend, StateUnavailable

SET, LEDGER = "p:cc:l:shared", "p:bg:b:shared:total"
RESERVE, ACTUAL = 9_000, 4_000


async def main(where: str, prefix: str, n: int, keys: int, start_at: float, index: int) -> None:
    b = LocalBackend(where, prefix, 5.0)
    counts = {"admitted": 0, "errors": 0}
    await asyncio.sleep(max(0.0, start_at - time.time()))
    per = keys // n
    own = 0
    for i in range(n):
        holder = f"{index}.{i}"
        try:
            adm = await b.admit(Ask(holder, (), (Slot(SET, 10**6),), (Spend(LEDGER, 10**15, RESERVE, 0),), 60.0))
            if adm.ok:
                counts["admitted"] += 1
                for _ in range(per):
                    await b.admit(Ask("o", (Rate(f"{prefix}:rq:own:{index}:{own}", 60e6, 10, 1),), (), (), 60.0))
                    own += 1
                await b.reconcile(Settle(holder, (), (SET,), ((LEDGER, RESERVE, ACTUAL),)))
        except StateUnavailable:
            counts["errors"] += 1
    await b.close()
    print(json.dumps(counts))


if __name__ == "__main__":
    a = sys.argv[1:]
    uvloop.run(main(a[0], a[1], int(a[2]), int(a[3]), float(a[4]), int(a[5])))
