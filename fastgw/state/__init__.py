"""Shared counters behind one small interface (`Backend`): GCRA buckets, concurrency sets with leases, spend
ledgers and circuit breakers, each operation atomic and bounded by a timeout. Knows nothing of HTTP.

- `local` (`LocalBackend`): a file-backed shared table (`table`), shared by the workers of one machine, no server.
- `redis` (`RedisBackend`): one Lua script per operation, shared by every instance using the same Redis.
- `memory` (`MemoryBackend`): one process's dicts: what `on_failure: open` counts in, and tests.

Backends open their connection lazily, in the process that first uses them (a worker, after the fork).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastgw.state.local import LocalBackend
from fastgw.state.memory import MemoryBackend
from fastgw.state.model import (Admission, Ask, Backend, BreakerState, Rate, RateState, Settle, Slot, SlotState,
                                Spend, SpendState, StateUnavailable, Usage, key, new_holder, unescape)
from fastgw.state.redis_backend import RedisBackend
from fastgw.state.settings import State, problems

__all__ = ["Backend", "open_backend", "LocalBackend", "MemoryBackend", "RedisBackend", "State", "problems",
           "StateUnavailable", "Ask", "Rate", "Slot", "Spend", "Admission", "RateState", "SlotState", "SpendState",
           "Settle", "BreakerState", "Usage", "key", "unescape", "new_holder"]


def open_backend(settings: State, clock: Callable[[], float] = time.time) -> Backend:
    """The backend the settings name; nothing is opened until its first operation."""
    if settings.backend == "redis":
        return RedisBackend(settings.url, settings.prefix, settings.timeout)
    return LocalBackend(settings.path, settings.prefix, settings.timeout, clock)
