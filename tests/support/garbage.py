"""Cyclic garbage of fastgw's own objects, for the tests that hold a finished stream to reference counting: the
whole process's garbage also holds what other tests on the same pytest-xdist worker left (event loops, their
handles), which no change of ours makes or cures."""

from __future__ import annotations

import gc


def fastgw_garbage() -> list[str]:
    """Collect, and name the collected objects whose type is fastgw's (the caller has disabled the collector
    around what it measures)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                       if type(o).__module__.startswith("fastgw")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
