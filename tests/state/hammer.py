"""One "worker" of the multi-process tests: many concurrent admissions against a shared store, counts printed.

    python -m tests.state.hammer KIND WHERE PREFIX ATTEMPTS CONCURRENCY START_AT

KIND is redis (WHERE: its URL) or local (WHERE: the state directory). Every process waits until START_AT
(Unix time) so that all of them run at once, then makes ATTEMPTS admissions of each of three kinds, never
reconciled: a budget (limit 1_000_000, cost 7_000: 142 fit), a request bucket (burst 50, one per minute after)
and a concurrency set (limit 5). Prints {"budget": n, "requests": n, "slots": n, "errors": n} as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop

from fastgw.state import Ask, LocalBackend, Rate, RedisBackend, Slot, Spend, StateUnavailable, new_holder

BUDGET, COST = 1_000_000, 7_000
BURST = 50
SLOTS = 5


async def main(kind: str, where: str, prefix: str, attempts: int, concurrency: int, start_at: float) -> None:
    b = RedisBackend(where, prefix, 2.0) if kind == "redis" else LocalBackend(where, prefix, 2.0)
    counts = {"budget": 0, "requests": 0, "slots": 0, "errors": 0}
    asks = [("budget", (), (), (Spend(f"{prefix}:bg:b:x:total", BUDGET, COST, 0),)),
            ("requests", (Rate(f"{prefix}:rq:l:x", 60e6, BURST, 1),), (), ()),
            ("slots", (), (Slot(f"{prefix}:cc:l:x", SLOTS),), ())]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    queue = [a for _ in range(attempts) for a in asks]

    async def worker() -> None:
        while queue:
            name, rates, slots, spends = queue.pop()
            try:
                if (await b.admit(Ask(new_holder(), rates, slots, spends, 60.0))).ok:
                    counts[name] += 1
            except StateUnavailable:
                counts["errors"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await b.close()
    print(json.dumps(counts))


if __name__ == "__main__":
    a = sys.argv[1:]
    uvloop.run(main(a[0], a[1], a[2], int(a[3]), int(a[4]), float(a[5])))
