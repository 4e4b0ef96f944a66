"""The stream scanner's lifetime rules: the match handler outlives garbage collection, streams are always closed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.garbage import fastgw_garbage
from tests.support.procs import REPO_ROOT


def test_match_handler_survives_gc_in_long_lived_streams():
    """hyperscan 0.9.1 keeps no reference to a stream's handler; ours must, or this segfaults the process."""
    code = textwrap.dedent("""
        import gc
        from fastgw.scan.database import ScanDB
        from fastgw.scan.patterns import BUILTIN
        from fastgw.scan.scanner import StreamScanner
        db = ScanDB(list(BUILTIN)); db.allocate_scratch()
        scanners = [StreamScanner(db) for _ in range(200)]
        gc.collect()
        junk = [bytearray(64) for _ in range(100000)]  # reuse freed memory, as a busy worker would
        found = 0
        for i, sc in enumerate(scanners):
            sc.feed(b"mail joe")
            gc.collect()
            sc.feed(b"@example.com and 123-45-6789 then ")
            found += len(sc.settle(final=True)[1])
        del scanners
        gc.collect()
        # scanners dropped without close() are closed by __del__ (hs streams are malloc'd)
        for _ in range(2000):
            StreamScanner(db).feed(b"x 4111 1111 1111 1111 y")
        print(found)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"scanner process died ({r.returncode}): {r.stderr[-2000:]}"
    assert r.stdout.strip() == "400"


def test_a_closed_scanner_is_freed_by_reference_counting() -> None:
    """Its match handler (a bound method: the scanner, the handler, the scanner) is dropped once the stream is
    closed, by `settle(final=True)` or `close()`: a finished scanner and its lists were otherwise cyclic garbage
    that only the collector freed (a loaded worker's gen-0 pass every ~160 redacted streams)."""
    import gc

    from fastgw.scan.database import ScanDB
    from fastgw.scan.patterns import BUILTIN
    from fastgw.scan.scanner import StreamScanner

    db = ScanDB(list(BUILTIN))
    db.allocate_scratch()
    gc.collect()
    gc.disable()
    try:
        for finish in ("settle", "close"):
            sc = StreamScanner(db)
            sc.feed(b"mail joe@example.com or call 415-555-0100 ")
            if finish == "settle":
                assert sc.settle(final=True)[1], "the spans were found"
            else:
                sc.close()
            del sc
            assert fastgw_garbage() == [], f"a scanner finished by {finish} was left to the cyclic collector"
        sc = StreamScanner(db)
        sc.feed(b"joe@exa")
        assert fastgw_garbage() == []  # open, it keeps its handler (the test above: it must)
        assert sc.settle(final=True)[1] == []
        del sc
        assert fastgw_garbage() == []
    finally:
        gc.enable()
