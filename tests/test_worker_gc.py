"""The worker's collector settings after boot (`fastgw.worker.tune_gc`)."""

from __future__ import annotations

import gc

from fastgw.api.limits import GC_YOUNG_THRESHOLD
from fastgw.worker import tune_gc


def test_boot_objects_frozen_and_young_threshold_raised() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        booted = type("Booted", (), {})()  # a tracked object alive at boot
        assert gc.is_tracked(booted) and any(o is booted for o in gc.get_objects())
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert not any(o is booted for o in gc.get_objects())  # frozen: out of the collector's sight
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
