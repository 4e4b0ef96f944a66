"""The access log: one line per response, JSON by default, on stdout (the journal under systemd) or in a file with
size-based retention, through the dedicated `fastgw.access` logger.

API
---
::

    configure(level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> None
        # level: a logging level name, or "off"; fmt: "json" | "text"; stream: default sys.stdout.
        # Call once at start (master, before fork); log_request configures the defaults on first use.
    use_file(path: str, max_bytes: int, backups: int) -> None
        # a worker at start: lines go to `path`, rotated by size (see "Files" below)
    set_redactor(redact: Callable[[str], str] | None, known: Iterable[str] = ()) -> None
        # a worker at start: what model names and paths pass through before they are written
    log_request(ctx: RequestContext, route: str, nbytes: int | None = None, forwarded: str | None = None) -> None
        # once per response (nbytes: resp.bytes_sent; forwarded: the X-Forwarded-For chain of a trusted proxy)

Line (JSON, one object, no spaces, `\\n`-terminated)::

    {"ts": "2025-01-31T12:00:00.123Z", "request_id", "principal", "client", "method", "route", "model",
     "target", "stream", "status", "ttft_ms", "duration_ms", "bytes",
     "tokens": {"prompt", "completion", "estimated"[, "partial"]} | null,
     "policy": {"<policy>": "<most severe outcome>"}, "retries", "error"
     [, "route_len", "model_len", "forwarded", "forwarded_len"]}

`principal` is the key's *name* from the rbac config, never the key; the route loses its query string; no
header, prompt or answer text is ever read, so none can be written. `client` is the peer's address, or, when
the peer is one of `server.trusted_proxies`, the rightmost address of its X-Forwarded-For that is not a
trusted proxy (`forwarded` then holds the chain as received).

**What a client can put in a line is bounded.** Every client-supplied string (route, model, client,
forwarded, request id) is cut to `limits.MAX_LOGGED_STRING` bytes, ending in "…", and its original length in
bytes is noted beside it (`route_len`, `model_len`, `forwarded_len`) when it was cut: a hostile request
costs at most a few KiB of log. Route and model then pass PII redaction (the chain's `pii-detector` when it
has one, plus a built-in pass for API keys — `sk-…`, `fgw-…` and kin — long tokens and e-mail addresses)
unless they are names the config itself defines. Control characters cannot forge a line: JSON escapes them,
and the line escapes the separators JSON leaves raw (DEL, U+0085, U+2028, U+2029); the `text` format
writes any value that is not plain printable ASCII as a JSON string (ASCII-escaped).

Files
-----
With `server.access_log.path` set, every worker opens the same file with O_APPEND: each write(2) holds whole lines,
which the kernel appends whole, so lines of several workers never interleave. Rotation is done by whichever worker
first sees the file reach `max_bytes` (fstat after its write), under an flock(2) on the file's directory: it renames
`path.N-1` → `path.N` … `path` → `path.1` (the oldest beyond `backups` is dropped; `backups: 0` only truncates by
starting a new file) and opens a new `path`. A worker that holds the renamed file notices on its next write (its
file is past `max_bytes` and no longer has `path`'s inode) and reopens `path` under the same lock, so a rotation
happens once however many workers race to it, and a file exceeds `max_bytes` by at most one write (a batch:
ACCESS_LOG_BATCH_LINES lines) per worker. One shared file rather than one per worker keeps the names the config
documents and one place to read; the master takes no part.

Batches
-------
A line is formatted at its response's end and waits in the worker, as bytes, until ACCESS_LOG_FLUSH_DELAY (10 ms)
after the first line of its batch, or until 128 lines wait; then the batch goes out whole in one write(2) to a
regular file or a character device, where the kernel appends each write whole, and in writes of whole lines of at
most ACCESS_LOG_BATCH_BYTES (PIPE_BUF: atomic on a pipe the workers share) to a pipe, a socket or anything else. A
busy worker finishes about one request per loop iteration, so the write per iteration this replaced was a syscall
per request. A worker that stops (SIGTERM, reload, a boot error) writes its waiting lines before it exits; a hard
crash (SIGKILL, the master killing a hung worker, a segfault) loses the lines of its last 10 ms at most.

Cost
----
A request whose route and model the config defines, with plain ASCII strings (every successful one), gets its JSON
line from C (`fastgw._accessline`, built by `make` beside the compiled modules; why, in its head comment): one call
with the request's values, which reads the clocks itself, no Python object made but the line. Its line is the
general path's, character for character (tests/test_accesslog_fast.py holds the two equal over a hostile corpus).
Other requests (unknown routes, models the config does not define, long or non-ASCII client strings, the text
format, a forwarded chain) take `_record` + `_json`, which caps, redacts and escapes; so does every line when the C
module is not built (a checkout without `make`). With only our handler attached no `LogRecord` is built (see
`log_request`). One fstat per write to a file.

Compiled with mypyc (the Makefile's COMPILED: every request runs `log_request`).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import io
import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

from fastgw import metrics
from fastgw.api.limits import ACCESS_LOG_BATCH_BYTES, ACCESS_LOG_BATCH_LINES, ACCESS_LOG_FLUSH_DELAY
from fastgw.proto.limits import MAX_LOGGED_STRING

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call

if TYPE_CHECKING:
    from fastgw.policy.base import RequestContext

__all__ = ["configure", "use_file", "set_redactor", "log_request", "access_record", "cap", "redact", "LOGGER_NAME"]

LOGGER_NAME: Final = "fastgw.access"
_log: Final = logging.getLogger(LOGGER_NAME)
_INFO: Final = logging.INFO
# The limits as compiled constants (an imported name is a module dictionary lookup at each use).
_FLUSH_DELAY: Final = ACCESS_LOG_FLUSH_DELAY
_BATCH_LINES: Final = ACCESS_LOG_BATCH_LINES
#: logging's memo of `_log.isEnabledFor` by level, which logging clears in place on every level change and
#: `logging.disable` (tests/test_accesslog_fast.py holds it): read here, a request spares an interpreted call.
#: Where it is missing the memo stays empty and every request asks `isEnabledFor`.
_enabled: Final[dict[int, bool]] = getattr(_log, "_cache", {})
_diag = logging.getLogger("fastgw.accesslog")  # problems of the access log itself (stderr)
_OFF = logging.CRITICAL + 10

#: When one policy decided several times (input and output), the line shows its most severe outcome.
_SEVERITY = {"allow": 1, "observe": 2, "redact": 3, "error": 4, "deny": 5, "block": 6}


class _State:
    """What every line reads, as a native object's fields: a module global that is reassigned is a dictionary lookup
    at each read from compiled code (~130 instructions), a field is a load."""

    def __init__(self) -> None:
        self.fmt = "json"
        self.level = "info"
        #: The handler `configure` attached (None before the first call).
        self.handler: logging.Handler | None = None
        #: The timer that writes `_pending` (None while nothing waits).
        self.timer: asyncio.TimerHandle | None = None
        #: The known names a JSON string holds as they are (no character escaped), each with its JSON form: what the
        #: C line copies (one lookup, where a set test and a check of each character were two steps).
        self.known_json: dict[str, bytes] = {}


_st: Final = _State()


class _AsIs(logging.Formatter):
    """The message is the finished line: no prefix, no %-formatting."""

    def format(self, record: logging.LogRecord) -> str:
        return record.msg


def configure(level: str = "info", fmt: str = "json", stream: IO[str] | RotatingFile | None = None) -> None:
    """Send access lines to `stream` (default stdout) in `fmt`, at `level` ("off" disables them)."""
    if fmt not in ("json", "text"):
        raise ValueError(f"access log format must be 'json' or 'text', not {fmt!r}")
    lvl = _OFF if level.lower() in ("off", "none", "disabled") else logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"unknown access log level {level!r}")
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)  # flushes after every line
    handler.setFormatter(_AsIs())
    prev = _st.handler
    if prev is not None:
        flush()  # lines waiting go where they were meant to
        prev.flush()
        _log.removeHandler(prev)  # not closed: the stream is not ours
        old = getattr(prev, "stream", None)
        if isinstance(old, RotatingFile) and old is not stream:
            old.close()
    _log.addHandler(handler)
    _log.setLevel(lvl)
    _log.propagate = False  # the root logger's format (stderr, prefixed) is for diagnostics, not this
    _st.handler, _st.fmt, _st.level = handler, fmt, level


def use_file(path: str, max_bytes: int, backups: int) -> None:
    """Write access lines to `path` (format and level unchanged), rotated at `max_bytes` keeping `backups` files."""
    configure(_st.level, _st.fmt, RotatingFile(path, max_bytes, backups))


# ---- the file --------------------------------------------------------------------------------------------------

class RotatingFile:
    """An O_APPEND file shared by the workers, rotated by size (see "Files" in the module docstring). Text in,
    one write(2) per `write`."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._dir = os.path.dirname(self.path)
        self._fd = -1
        self._ino = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._ino = os.fstat(fd).st_ino

    def write(self, text: str) -> int:
        self.write_bytes(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def write_bytes(self, data: bytes) -> None:
        """`data` appended in one write(2) (more only if the kernel takes part of it), then rotated if due."""
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if os.fstat(self._fd).st_size >= self.max_bytes:
            self._rotate()

    def flush(self) -> None:
        pass  # every write is a write(2)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _rotate(self) -> None:
        dfd = os.open(self._dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is None or st.st_ino != self._ino:
                self._open()  # another worker rotated (or the file was removed): follow the name
                return
            if st.st_size < self.max_bytes:
                return
            if self.backups > 0:
                for i in range(self.backups - 1, 0, -1):
                    src = f"{self.path}.{i}"
                    if os.path.exists(src):
                        os.replace(src, f"{self.path}.{i + 1}")
                os.replace(self.path, self.path + ".1")
            else:
                os.unlink(self.path)
            self._open()
        finally:
            os.close(dfd)  # releases the lock


# ---- client strings: capped, redacted, escaped -----------------------------------------------------------------

# Built-in redaction, whatever the chain: API keys by their usual prefixes, long opaque tokens, e-mail addresses.
_SECRETS = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:sk|pk|rk|fgw|sess|key|api|token|secret|ghp|gho|ghs|github_pat|xox[abprs]|akia|aiza|"
    r"bearer)[-_A-Za-z0-9]{8,}"
    r"|[A-Za-z0-9_\-]{40,}"
    r"|[^\s@/\"<>]+@[^\s@/\"<>]+\.[A-Za-z]{2,}")
_REDACTED: Final = "[REDACTED]"
# Characters a JSON encoder leaves raw that line-splitting readers (Python's splitlines, some viewers) break on.
_JSON_RAW_BREAKS = re.compile("[\x7f\x85\u2028\u2029]")
# What the text format writes as is; anything else is JSON-quoted (no space, quote, backslash or control).
_PLAIN = re.compile(r"[!#-\[\]-~]+")

_redactor: Callable[[str], str] | None = None
_known: frozenset[str] = frozenset()
#: A JSON string's characters that need no escape (printable ASCII but quote and backslash).
_JSON_PLAIN = re.compile(r'[ !#-\[\]-~]*').fullmatch
#: Redactions of client strings seen lately (bounded; a hostile client varying them only fills it).
_cache: dict[str, str] = {}
_CACHE_MAX: Final = 1024


def set_redactor(redact: Callable[[str], str] | None, known: Iterable[str] = ()) -> None:
    """Route and model go through `redact` (e.g. the pii-detector's scanner) before they are written, except
    the `known` names the config defines (its models, aliases and routes)."""
    global _redactor, _known
    flush()  # lines waiting are written as the configuration they were logged under said
    _redactor = redact
    _known = frozenset(known)
    _st.known_json = {name: orjson.dumps(name) for name in _known if _JSON_PLAIN(name)}
    _cache.clear()


def cap(value: str, limit: int = MAX_LOGGED_STRING) -> tuple[str, int | None]:
    """`value` cut to `limit` UTF-8 bytes (ending in "…"), and its original length in bytes when it was cut."""
    if len(value) <= limit // 4:  # short enough whatever its characters (UTF-8: 4 bytes at most)
        return value, None
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return value, None
    return raw[:limit - 3].decode("utf-8", "ignore") + "…", len(raw)


def redact(value: str) -> str:
    """A client string as it may be logged: known names as they are, others through the redactor and the
    built-in secret patterns."""
    if value in _known:
        return value
    done = _cache.get(value)
    if done is not None:
        return done
    out = value
    if _redactor is not None:
        try:
            out = _redactor(out)
        except Exception:  # noqa: BLE001 - a log line must never cost the request; nothing raw is written
            out = _REDACTED
    out = _SECRETS.sub(_REDACTED, out)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[value] = out
    return out


#: Characters past the cut still redacted over: a value that starts before the cut is seen whole and redacted,
#: never half kept (redaction patterns are at most this wide).
_REDACT_MARGIN: Final = 256


def _client_string(rec: dict, key: str, value: str, scrub: bool) -> None:
    """rec[key]: `value` redacted (`scrub`) and cut to MAX_LOGGED_STRING bytes; rec[key + "_len"]: its original
    length in bytes when it was longer. Redaction runs before the cut, over a margin past it, so a value that
    starts before the cut is seen whole; never over more, so a 15 MB model name costs a few hundred characters."""
    size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    head = value if size <= MAX_LOGGED_STRING else value[:MAX_LOGGED_STRING + _REDACT_MARGIN]
    if scrub:
        head = redact(head)
    rec[key] = cap(head)[0]
    if size > MAX_LOGGED_STRING:
        rec[key + "_len"] = size


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


def _outcomes(decisions: list) -> tuple[dict[str, str], int]:
    """Each policy's most severe outcome, and the retries (the routing decisions)."""
    policy: dict[str, str] = {}
    retries = 0
    for d in decisions:
        name = d.policy
        if name == "routing":
            retries += 1
            continue
        prev = policy.get(name)
        if prev is None or _SEVERITY.get(d.outcome, 0) > _SEVERITY.get(prev, 0):
            policy[name] = d.outcome
    return policy, retries


def access_record(ctx: RequestContext, route: str, nbytes: int | None = None, now: float | None = None,
                  wall: float | None = None, forwarded: str | None = None) -> dict:
    """The fields of one access line (see the module docstring). `now` (monotonic) and `wall` (epoch) are
    for tests."""
    return _record(_values(ctx, route, nbytes, forwarded, now, wall))


#: What a line of the general path needs of its request (`_values`).
_Values = tuple


def _values(ctx: RequestContext, route: str, nbytes: int | None, forwarded: str | None, now: float | None = None,
            wall: float | None = None) -> _Values:
    """The line's values of `ctx`: principal, client, method, route, model, target, stream, request id, status,
    first byte, start, end, wall clock, bytes, usage, policy outcomes (None: no decision), retries, error,
    forwarded."""
    usage = ctx.usage
    decisions = ctx.decisions
    policy, retries = _outcomes(decisions) if decisions else (None, 0)
    return (ctx.principal, ctx.client, ctx.method, route, ctx.model, ctx.target, ctx.stream, ctx.request_id,
            ctx.status, ctx.first_byte, ctx.started, _monotonic() if now is None else now,
            time.time() if wall is None else wall, nbytes, usage, policy, retries, ctx.error, forwarded)


def _record(v: _Values) -> dict:
    (principal, client, method, route, model, target, stream, rid, status, fb, started, end, wall, nbytes, usage,
     policy, retries, err, forwarded) = v
    if "?" in route:
        route = route.split("?", 1)[0]  # a query string may carry a key
    client = client or None
    rec = {
        "ts": _ts(wall),
        "request_id": rid,  # the app's, or a client's only when short and token-like
        "principal": principal,
        "client": client,
        "method": method,  # a token of at most 64 bytes (proto.h1)
        "route": route,
        "model": model,
        "target": target,
        "stream": stream,
        "status": status or 500,  # no status: an internal error, which the server answers with 500
        # int(µs) / 1000: milliseconds with 3 decimals, a few times cheaper than round(x, 3).
        "ttft_ms": None if fb is None else int((fb - started) * 1e6) / 1000,
        "duration_ms": int((end - started) * 1e6) / 1000,
        "bytes": nbytes,
        "tokens": _tokens(usage),
        "policy": policy or {},
        "retries": retries,
        "error": err,
    }
    # Client strings: the names the config defines pass as they are (the common case, one set lookup each).
    if route not in _known:
        _client_string(rec, "route", route, True)
    if model is not None and model not in _known:
        _client_string(rec, "model", model, True)
    if client is not None and len(client) > 45:  # longer than any IP address: from X-Forwarded-For
        _client_string(rec, "client", client, False)
    if len(rid) > 128:
        _client_string(rec, "request_id", rid, False)
    if forwarded is not None:
        _client_string(rec, "forwarded", forwarded, False)
    return rec


def _tv(v: object) -> str:
    """One value of a text line: as is when plain printable ASCII, else a JSON string with every non-ASCII
    character escaped (so no newline, quote or separator from a client reaches the line raw)."""
    if v is None or v == "":
        return "-"
    s = str(v)
    if _PLAIN.fullmatch(s):
        return s
    return json.dumps(s)  # ensure_ascii: every non-ASCII character as a \u escape


def _text(r: dict) -> str:
    tok = r["tokens"]
    tokens = "-" if tok is None else (f"{tok['prompt']}/{tok['completion']}"
                                      + ("~" if tok["estimated"] else "") + ("+partial" if tok.get("partial") else ""))
    pol = ",".join(f"{k}:{v}" for k, v in r["policy"].items()) or "-"
    extra = "".join(f" {k}={_tv(r[k])}" for k in ("route_len", "model_len", "client_len", "forwarded", "forwarded_len",
                                                  "request_id_len") if k in r)
    return (f"{r['ts']} {_tv(r['request_id'])} {_tv(r['principal'])} {_tv(r['method'])} {_tv(r['route'])} "
            f"{r['status']} model={_tv(r['model'])} target={_tv(r['target'])} "
            f"ttft_ms={r['ttft_ms']} duration_ms={r['duration_ms']} bytes={r['bytes']} tokens={tokens} policy={pol} "
            f"retries={r['retries']} error={_tv(r['error'])} client={_tv(r['client'])}{extra}")


def _json(r: object) -> str:
    line = orjson.dumps(r).decode()
    # DEL is ASCII: escaped whatever the rest holds.
    if not line.isascii() or "\x7f" in line:
        line = _JSON_RAW_BREAKS.sub(_escape_break, line)
    return line


def _escape_break(m: re.Match[str]) -> str:
    return "\\u%04x" % ord(m.group())


# ---- the JSON line of a common request, in C ----------------------------------------------------------------

def _load_c() -> Any:
    """The C line encoder (`fastgw._accessline`), or None where it is not built: the general path then writes every
    line."""
    try:
        from fastgw import _accessline
    except ImportError:
        return None
    return _accessline


_c: Final = _load_c()
#: Its one function, bound once (a call through the module would look the name up every time).
_c_encode: Final[Any] = None if _c is None else _c.line


def _encode(ctx: RequestContext, route: str, nbytes: int | None, forwarded: str | None, now: float | None = None,
            wall: float | None = None) -> bytes | None:
    """The access line of `ctx`, newline-terminated UTF-8: from C when it can, else by the general path; None when
    it cannot be formatted (counted and reported by `_lost`). `now` (monotonic), `wall` (epoch): for tests; None,
    the clocks now."""
    try:
        if _c_encode is not None and forwarded is None and _st.fmt == "json":
            line = _c_line(ctx, route, nbytes, now, wall)
            if line is not None:
                return line
        return _line(_values(ctx, route, nbytes, forwarded, now, wall)).encode("utf-8", "backslashreplace") + b"\n"
    except Exception as e:  # noqa: BLE001 - a line that cannot be formatted costs itself, never its request
        _lost(e, 1)
        return None


def _c_line(ctx: RequestContext, route: str, nbytes: int | None, now: float | None,
            wall: float | None) -> bytes | None:
    """The C encoder's line of `ctx` (None: the general path takes it); the C module must be built."""
    decisions = ctx.decisions
    policy: dict[str, str] | None = None
    retries = 0
    if decisions:  # (not a conditional tuple: compiled, its unpacking is a generic iteration)
        policy, retries = _outcomes(decisions)
    line: bytes | None = _c_encode(_st.known_json, ctx.principal, ctx.client, ctx.method, route, ctx.model, ctx.target,
                                ctx.stream, ctx.request_id, ctx.status, ctx.first_byte, ctx.started, now, wall,
                                nbytes, ctx.usage, policy, retries, ctx.error)
    return line


def _fast_line(ctx: RequestContext, route: str, nbytes: int | None, now: float, wall: float) -> str | None:
    """The C encoder's line of `ctx` without its newline (None: the general path takes it); for tests."""
    line = _c_line(ctx, route, nbytes, now, wall)
    return None if line is None else line[:-1].decode()


def _line(v: _Values) -> str:
    """The access line of `v` in the configured format, by the general path."""
    return _json(_record(v)) if _st.fmt == "json" else _text(_record(v))


#: Lines waiting for their batch, formatted (UTF-8, each newline-terminated).
_pending: Final[list[bytes]] = []
_write_errors = 0
_write_error_at = 0.0


def flush() -> None:
    """Write the access lines waiting for their batch (the timer's callback; also called at worker exit, when
    the batch is full, and before the stream changes)."""
    timer = _st.timer
    if timer is not None:
        timer.cancel()  # a no-op when the timer itself is calling
        _st.timer = None
    if not _pending:
        return
    if not _direct():  # handlers or filters attached while the batch waited: its lines go through logging
        lines = _pending[:]
        _pending.clear()
        for line in lines:
            _log.handle(logging.LogRecord(LOGGER_NAME, logging.INFO, "", 0, line[:-1].decode(), None, None))
        return
    data = _pending[0] if len(_pending) == 1 else b"".join(_pending)
    _pending.clear()
    stream = getattr(_st.handler, "stream", None)
    # Writes of whole lines of at most `most` bytes (see `_most`), as many lines as fit; a line longer than that alone.
    most = _sink_of(stream)[3]
    start, size = 0, len(data)
    while start < size:
        end = size
        if size - start > most:
            end = data.rfind(b"\n", start, start + most) + 1
            if end <= start:
                end = data.index(b"\n", start) + 1
        chunk = data[start:end] if start or end < size else data
        start = end
        try:
            _write(stream, chunk)
        except Exception as e:  # noqa: BLE001 - a full disk must not cost requests; it is reported, at most 1/s
            _lost(e, chunk.count(b"\n"))


#: What `_write` found its stream to be, kept until the stream changes: (stream, kind, binary layer, most bytes a
#: write may hold).
_sink: tuple[object, int, object, int] = (None, 0, None, ACCESS_LOG_BATCH_BYTES)
_TO_FILE: Final = 1  # our RotatingFile: bytes, one write(2)
_TO_BUFFER: Final = 2  # a text stream over a buffered binary one (stdout): bytes to the buffer, then flushed
_TO_RAW: Final = 3  # a text stream over a raw one (stdout under PYTHONUNBUFFERED=1, as the systemd unit runs it)
_TO_TEXT: Final = 4  # any other stream: text


def _sink_of(stream: object) -> tuple[object, int, object, int]:
    """`_sink` for `stream`, found again when the stream changed."""
    global _sink
    if _sink[0] is not stream:
        buffer = getattr(stream, "buffer", None)
        kind = _TO_FILE if isinstance(stream, RotatingFile) else _TO_BUFFER if isinstance(
            buffer, io.BufferedIOBase) else _TO_RAW if isinstance(buffer, io.RawIOBase) else _TO_TEXT
        _sink = (stream, kind, buffer, _most(stream))
    return _sink


def _most(stream: object) -> int:
    """The most bytes one write to `stream` may hold. Into a regular file (O_APPEND: the kernel appends each write(2)
    whole, whatever its size) or a character device (/dev/null, a terminal), a whole batch: one system call where
    PIPE_BUF-sized writes were a dozen a full batch. Into a pipe or a socket shared by the workers (stdout under a
    supervisor, the journal's socket under systemd), or where the descriptor cannot be known: ACCESS_LOG_BATCH_BYTES
    (PIPE_BUF, what a pipe writes atomically)."""
    try:
        mode = os.fstat(stream.fileno()).st_mode  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no descriptor (a StringIO, a logging stream of the user's): the safe size
        return ACCESS_LOG_BATCH_BYTES
    return sys.maxsize if stat.S_ISREG(mode) or stat.S_ISCHR(mode) else ACCESS_LOG_BATCH_BYTES


def _write(stream: object, data: bytes) -> None:
    """`data` (whole UTF-8 lines) to `stream` in one write: as bytes to our file or to a text stream's binary layer
    (stdout), after the text written to it before, as text to any other stream."""
    _, kind, buffer, _ = _sink_of(stream)
    if kind == _TO_FILE:
        stream.write_bytes(data)  # type: ignore[attr-defined]
        return
    if kind == _TO_TEXT:
        stream.write(data.decode("utf-8"))  # type: ignore[attr-defined]
        stream.flush()  # type: ignore[attr-defined]
        return
    stream.flush()  # type: ignore[attr-defined]  # text written through logging before goes first
    if kind == _TO_BUFFER:
        buffer.write(data)  # type: ignore[attr-defined]
        buffer.flush()  # type: ignore[attr-defined]
        return
    view = memoryview(data)
    while view:
        n = buffer.write(view)  # type: ignore[attr-defined]  # a raw write may take part of it
        if n is None:  # a non-blocking stream that cannot take it now: the rest is lost, and counted
            raise BlockingIOError(errno.EAGAIN, "access log stream would block")
        view = view[n:]


def _lost(e: Exception, lines: int) -> None:
    """Count `lines` lost to `e` (a failed write, or a line that could not be formatted); report it at most 1/s."""
    global _write_errors, _write_error_at
    _write_errors += lines
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    metrics.log_write_error("access", "disk_full" if full else "other")
    now = _monotonic()
    if now - _write_error_at >= 1.0:
        _write_error_at = now
        _diag.error("access log write failed (%s): %d line(s) lost so far", e, _write_errors)


def _direct() -> bool:
    """Whether only our handler, without filters, takes the lines: then they are written as StreamHandler.emit would,
    without a LogRecord each (pid, thread and process names, time: several µs per request)."""
    h = _st.handler
    handlers = _log.handlers
    return len(handlers) == 1 and handlers[0] is h and not _log.filters and h is not None and not h.filters


def log_request(ctx: RequestContext, route: str, nbytes: int | None = None, forwarded: str | None = None) -> None:
    """Write the access line of a response (call once per response, from the request's `finally`)."""
    st = _st
    if st.handler is None:
        configure()
    on = _enabled.get(_INFO)
    if on is None:
        on = _log.isEnabledFor(_INFO)
    if not on or _log.disabled:  # (`disabled`, set by logging.config, is not in the memo)
        return
    # The handlers are looked at once a batch, by its first line (and again by `flush`, which sends the batch
    # through logging if they changed while it waited).
    timer = st.timer
    if timer is None and not _direct():
        # Through logging (other handlers or filters attached, or a write error to report). Logger.info() would
        # also walk the stack for the caller's file and line (findCaller) that this line never shows.
        msg = _line(_values(ctx, route, nbytes, forwarded))
        _log.handle(logging.LogRecord(LOGGER_NAME, logging.INFO, "", 0, msg, None, None))
        return
    line = _encode(ctx, route, nbytes, forwarded)
    if line is None:
        return
    _pending.append(line)
    if timer is None:
        try:
            # One write(2) per ACCESS_LOG_FLUSH_DELAY for the lines finished in it (or a full batch), not one per
            # request: a busy worker finishes about one request per loop iteration.
            st.timer = asyncio.get_running_loop().call_later(_FLUSH_DELAY, flush)
        except RuntimeError:  # no loop (tests, CLI): write it now
            flush()
    elif len(_pending) >= _BATCH_LINES:
        flush()
