"""Loaded by bench/pycalls.sh through PYTHONPATH (no fastgw import: it only watches): in each forked process
(a gateway worker), a profile hook that counts Python-level calls while switched on. Compiled (mypyc) functions
never reach a profile hook, so every call counted is an interpreted frame (or a C function called from one).
The first `SIGRTMIN+3` zeroes the counts and starts counting, the second stops and writes them, most first, to
$PYCALLS_OUT as `calls<TAB>file:line<TAB>function` (a generated `<string>` function names its class too)."""

from __future__ import annotations

import collections
import os
import signal
import sys
from types import FrameType
from typing import Any


def _install() -> None:
    counts: collections.Counter[tuple[str, int, str]] = collections.Counter()
    on = [False]

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if not on[0]:
            return
        if event == "call":
            code = frame.f_code
            name = code.co_name
            if code.co_filename.startswith("<"):  # a namedtuple's or dataclass's generated method: whose?
                owner = frame.f_locals.get("self", frame.f_locals.get("_cls"))
                name += f" [{owner.__name__ if isinstance(owner, type) else type(owner).__name__}]"
            counts["/".join(code.co_filename.rsplit("/", 2)[-2:]), code.co_firstlineno, name] += 1
        elif event == "c_call":
            counts["C", 0, getattr(arg, "__qualname__", str(arg))] += 1

    def flip(signum: int, frame: FrameType | None) -> None:
        if not on[0]:
            counts.clear()
            on[0] = True
            return
        on[0] = False
        with open(os.environ["PYCALLS_OUT"], "w") as f:
            for (where, line, name), n in counts.most_common():
                f.write(f"{n}\t{where}:{line}\t{name}\n")

    signal.signal(signal.SIGRTMIN + 3, flip)
    sys.setprofile(hook)


if os.environ.get("PYCALLS_OUT"):
    os.register_at_fork(after_in_child=_install)
