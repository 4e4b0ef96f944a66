"""The `state:` section of the config: where shared counters live (issue 16's names).

A msgspec Struct like every config section (`fastgw.config` composes it); `problems()` says what the types
cannot. This is the state layer's only import beyond the stdlib and the Redis parser: the backends take
plain values (`fastgw.state.open_backend` reads them from here).
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

import msgspec

from fastgw.state.resp import parse_url

__all__ = ["State", "problems", "DEFAULT_URL", "DEFAULT_TIMEOUT", "DEFAULT_PATH"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: Seconds per Redis call: a loopback or same-zone Redis answers in well under a millisecond, so 50 ms only
#: fires when it is stalled or gone, and a refused request then costs the client no more than that.
DEFAULT_TIMEOUT = 0.05
#: Where `local` keeps its table (state.tbl): a directory the service may write (systemd StateDirectory).
DEFAULT_PATH = "/var/lib/fastgw/state"


class State(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False, kw_only=True):
    #: local: one machine, shared by all its workers, no server; redis: every instance using the same Redis.
    backend: Literal["local", "redis"] = "local"
    #: redis only: redis://[[user]:password@]host[:port][/db], rediss:// (TLS), unix:///path[?db=N].
    url: str = DEFAULT_URL
    #: Key prefix, so that several gateways (or environments) can share one Redis without sharing limits.
    prefix: str = "fastgw"
    #: Seconds one state operation may take (connecting included); past it the operation fails (on_failure).
    timeout: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_TIMEOUT
    #: closed: 503 quota_unavailable while the state is unreachable; open: admit, counting per worker meanwhile.
    on_failure: Literal["closed", "open"] = "closed"
    #: local only: the directory of the table file that keeps budgets and buckets across restarts.
    path: str = DEFAULT_PATH


def problems(settings: State) -> list[tuple[str, str]]:
    """(key path relative to `state`, what is wrong) for what the types cannot say."""
    errs: list[tuple[str, str]] = []
    if settings.backend == "redis":
        try:
            parse_url(settings.url)
        except ValueError as e:
            errs.append(("url", str(e)))
    if not settings.prefix or any(c in settings.prefix for c in ":*?[]\\ \t\r\n"):
        errs.append(("prefix", f"expected a non-empty name without ':', glob characters or spaces, got "
                               f"{settings.prefix!r}"))
    if settings.timeout > 5:
        errs.append(("timeout", f"{settings.timeout} s would hold every request that long while the state is "
                                "down; expected at most 5"))
    if settings.backend == "local":
        if not settings.path:
            errs.append(("path", "expected a directory"))
        elif os.path.exists(settings.path) and not os.path.isdir(settings.path):
            errs.append(("path", f"{settings.path} exists and is not a directory"))
    return errs
