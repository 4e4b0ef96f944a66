"""The access log: one line per request, JSON by default, on stdout (the journal under systemd), through the
dedicated `fastgw.access` logger.

API
---
::

    configure(level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> None
        # level: a logging level name, or "off"; fmt: "json" | "text"; stream: default sys.stdout.
        # Call once at start (master, before fork); log_request configures the defaults on first use.
    log_request(ctx: RequestContext, route: str, nbytes: int | None = None) -> None
        # once per finished request, next to metrics.request_finished (nbytes: resp.bytes_sent)

Line (JSON, one object, no spaces, `\\n`-terminated)::

    {"ts": "2025-01-31T12:00:00.123Z", "request_id", "principal", "client", "method", "route", "model",
     "target", "stream", "status", "ttft_ms", "duration_ms", "bytes",
     "tokens": {"prompt", "completion", "estimated"[, "partial"]} | null,
     "policy": {"<policy>": "<most severe outcome>"}, "retries", "error"}

`principal` is the key's *name* from the rbac config, never the key; the route loses its query string; no
header, prompt or answer text is ever read, so none can be written. The `text` format carries the same
fields as ``key=value`` pairs for a terminal. Cost: one dict, one `orjson.dumps` and one `write` + `flush`
per request (with only our handler attached, no `LogRecord` is built; see `log_request`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import IO, TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from fastgw.policy.base import RequestContext

__all__ = ["configure", "log_request", "access_record", "LOGGER_NAME"]

LOGGER_NAME = "fastgw.access"
_log = logging.getLogger(LOGGER_NAME)
_OFF = logging.CRITICAL + 10

#: When one policy decided several times (input and output), the line shows its most severe outcome.
_SEVERITY = {"allow": 1, "observe": 2, "redact": 3, "error": 4, "deny": 5, "block": 6}

_fmt = "json"
_handler: logging.Handler | None = None


class _AsIs(logging.Formatter):
    """The message is the finished line: no prefix, no %-formatting."""

    def format(self, record: logging.LogRecord) -> str:
        return record.msg


def configure(level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> None:
    """Send access lines to `stream` (default stdout) in `fmt`, at `level` ("off" disables them)."""
    global _fmt, _handler
    if fmt not in ("json", "text"):
        raise ValueError(f"access log format must be 'json' or 'text', not {fmt!r}")
    lvl = _OFF if level.lower() in ("off", "none", "disabled") else logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"unknown access log level {level!r}")
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)  # flushes after every line
    handler.setFormatter(_AsIs())
    if _handler is not None:
        _handler.flush()
        _log.removeHandler(_handler)  # not closed: the stream is not ours
    _log.addHandler(handler)
    _log.setLevel(lvl)
    _log.propagate = False  # the root logger's format (stderr, prefixed) is for diagnostics, not this
    _handler, _fmt = handler, fmt


# ---- the record ---------------------------------------------------------------------------------------------

_ts_second = -1
_ts_prefix = ""


def _ts(now: float) -> str:
    """UTC ISO 8601 with milliseconds. The date/time part is formatted once per second (strftime costs ~1 µs,
    and a busy worker logs thousands of lines in the same second)."""
    global _ts_second, _ts_prefix
    sec = int(now)
    if sec != _ts_second:
        _ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_second = sec
    return f"{_ts_prefix}.{int((now - sec) * 1000):03d}Z"


def _tokens(usage: dict | None) -> dict | None:
    if not usage:
        return None
    p = usage.get("prompt_tokens", usage.get("input_tokens"))
    c = usage.get("completion_tokens", usage.get("output_tokens"))
    out = {"prompt": p if type(p) is int else None, "completion": c if type(c) is int else None,
           "estimated": bool(usage.get("estimated"))}
    if usage.get("partial"):
        out["partial"] = True
    return out


def access_record(ctx: RequestContext, route: str, nbytes: int | None = None, now: float | None = None,
                  wall: float | None = None) -> dict:
    """The fields of one access line (see the module docstring). `now` (monotonic) and `wall` (epoch) are
    for tests."""
    end = time.monotonic() if now is None else now
    policy: dict[str, str] = {}
    retries = 0
    for d in ctx.decisions:
        name = d.policy
        if name == "routing":
            retries += 1
            continue
        prev = policy.get(name)
        if prev is None or _SEVERITY.get(d.outcome, 0) > _SEVERITY.get(prev, 0):
            policy[name] = d.outcome
    if "?" in route:
        route = route.split("?", 1)[0]  # a query string may carry a key
    fb = ctx.first_byte
    return {
        "ts": _ts(time.time() if wall is None else wall),
        "request_id": ctx.request_id,
        "principal": ctx.principal,
        "client": ctx.client or None,
        "method": ctx.method,
        "route": route,
        "model": ctx.model,
        "target": ctx.target,
        "stream": ctx.stream,
        "status": ctx.status or 500,  # no status: an internal error, which the server answers with 500
        # int(µs) / 1000: milliseconds with 3 decimals, a few times cheaper than round(x, 3).
        "ttft_ms": None if fb is None else int((fb - ctx.started) * 1e6) / 1000,
        "duration_ms": int((end - ctx.started) * 1e6) / 1000,
        "bytes": nbytes,
        "tokens": _tokens(ctx.usage),
        "policy": policy,
        "retries": retries,
        "error": ctx.error,
    }


def _text(r: dict) -> str:
    tok = r["tokens"]
    tokens = "-" if tok is None else (f"{tok['prompt']}/{tok['completion']}"
                                      + ("~" if tok["estimated"] else "") + ("+partial" if tok.get("partial") else ""))
    pol = ",".join(f"{k}:{v}" for k, v in r["policy"].items()) or "-"
    return (f"{r['ts']} {r['request_id']} {r['principal'] or '-'} {r['method']} {r['route']} {r['status']} "
            f"model={r['model'] or '-'} target={r['target'] or '-'} ttft_ms={r['ttft_ms']} "
            f"duration_ms={r['duration_ms']} bytes={r['bytes']} tokens={tokens} policy={pol} "
            f"retries={r['retries']} error={r['error'] or '-'}")


_pending: list[str] = []


def flush() -> None:
    """Write the access lines waiting for the end of this loop iteration (also called at worker exit)."""
    if not _pending:
        return
    lines = "\n".join(_pending) + "\n"
    _pending.clear()
    h = _handler
    try:
        stream = h.stream  # type: ignore[union-attr]
        stream.write(lines)
        stream.flush()
    except Exception:  # noqa: BLE001 - report it the way logging does (handleError)
        _log.handle(logging.LogRecord(LOGGER_NAME, logging.ERROR, "", 0, "access log write failed", None,
                                      sys.exc_info()))


def log_request(ctx: RequestContext, route: str, nbytes: int | None = None) -> None:
    """Write the access line of a finished request (call once, from the request's `finally`)."""
    h = _handler
    if h is None:
        configure()
        h = _handler
    if not _log.isEnabledFor(logging.INFO):  # cached by logging: the disabled case costs one dict lookup
        return
    rec = access_record(ctx, route, nbytes)
    msg = orjson.dumps(rec).decode() if _fmt == "json" else _text(rec)
    handlers = _log.handlers
    if len(handlers) == 1 and handlers[0] is h and not _log.filters and not h.filters:
        # Only our handler, whose formatter prints the message as is: write what StreamHandler.emit would,
        # without building a LogRecord (pid, thread and process names, time: several µs per request).
        if not _pending:
            try:
                # One write per loop iteration for all the lines finished in it, not one syscall per request
                # (a busy worker finishes many requests per iteration); the line waits for no timer.
                asyncio.get_running_loop().call_soon(flush)
            except RuntimeError:  # no loop (tests, CLI): write it now
                _pending.append(msg)
                flush()
                return
        _pending.append(msg)
        return
    # Through logging (other handlers or filters attached, or a write error to report). Logger.info() would
    # also walk the stack for the caller's file and line (findCaller) that this line never shows.
    _log.handle(logging.LogRecord(LOGGER_NAME, logging.INFO, "", 0, msg, None, None))
