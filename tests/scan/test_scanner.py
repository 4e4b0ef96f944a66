"""The stream scanner's lifetime rules: the match handler outlives garbage collection, streams are always closed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
