"""The `audit-logger` policy: an append-only JSON Lines trail of every request, one file per worker and UTC day,
optionally hash-chained (`immutable`), written by one thread per worker so that the event loop never blocks on disk.

One module on purpose, though over 500 lines: the settings, the record, the writer and `verify` share one file
format byte for byte, and keeping them together is what keeps the writer and the checker from drifting apart.

File format
-----------
`<dir>/audit-YYYY-MM-DD-w<worker_id>.jsonl`, one JSON object per line, keys sorted (orjson
`OPT_SORT_KEYS`), UTF-8, each line ended by `\\n`. A record (see `record_from_context`) holds
what was decided about a request, never its headers, keys or prompt; response texts are
redacted before they get here. With `immutable: true` each record also carries

- `seq`: 1, 2, 3, ... within the file;
- `prev`: the previous record's `hash` (64 zeros on the file's first record);
- `hash`: sha256 hex of the canonical JSON (orjson, sorted keys) of the record without `hash`.

The writer also adds `worker` (the worker id, as in the file name) to every record.

`verify` recomputes all three. Editing a record breaks its `hash`; removing, inserting or
reordering records breaks `prev`/`seq` of the record that follows. Removing the *last*
records of a file, or a whole file, cannot be seen from the files alone: anchor the last
hash of each file elsewhere (`fastgw audit verify` prints them) and compare.

Acknowledgement and durability
------------------------------
`await AuditLog.write(record)` returns once the writer thread's `os.write` of the complete
line has returned: the record is in the kernel's page cache, so it survives the worker
crashing or being killed (SIGKILL included), but not the machine losing power. The app awaits
it before sending the response's last byte. `fsync` adds disk durability on top:
`always` fsyncs before acknowledging (one fsync per batch of queued records: group commit),
`interval` at most every `fsync_interval` seconds while something was written since the last
one (so a power loss loses at most that much), `never` leaves write-back to the OS.
`close()` (SIGTERM drain) writes everything still queued and fsyncs unless `never`.

Crash recovery
--------------
A record is written with one `os.write` (looping only on a short write), so a torn line
needs a crash or an I/O error in the middle of a write. When a file is reopened (worker
restart, same id and day) the chain continues from its last complete record; when the file
does not end with `\\n`, a `\\n` is written before the next record, so the torn fragment
stays alone on its line. `verify` accepts such a fragment in the middle of a file when the
next record chains to the record before it (it was never acknowledged: nothing was lost),
and reports a torn *last* line, which means the writer has not come back since.

What clients can and cannot do to it
------------------------------------
Every client-supplied string of a record (model, path, request id, client address, decision details, finish
reasons, usage fields) goes through `loggable`: PII-redacted (model and path too), control characters escaped,
cut to `MAX_LOGGED_STRING` bytes with its original length noted, so a hostile request costs a few hundred bytes
(a `GET /v1/models/<65,000 x A>` wrote 65 KB before). Response texts are the record's purpose: redacted, not cut.

Size and a full disk
--------------------
Beside `retention_days`, `max_bytes` bounds the bytes of audit files in the directory (all workers): past days'
files are deleted oldest first beyond it. When a record cannot be written — the disk or quota is full (ENOSPC,
EDQUOT), an I/O error, or today's files alone reach `max_bytes` — the log is *unavailable*: an ERROR line at most
once a second, and every audited request is refused with 503 `audit_unavailable` before any upstream is called
(`AuditLog.check`, counted as the audit-logger's `unavailable` decision in `fastgw_policy_decisions_total`).
The writer retries once a second; the first record it gets out is an `{"event": "audit_unavailable"}` record
(reason, from, how many requests were refused), so the outage is in the trail itself.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import fcntl
import hashlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import msgspec
import orjson

from fastgw.api.errors import GatewayError, Origin
from fastgw.policy.base import RequestContext
from fastgw.policy.settings import OnError, Problems, Settings
from fastgw.proto.limits import MAX_LOGGED_STRING

__all__ = ["AuditLog", "AuditLogger", "AuditError", "AuditUnavailable", "record_from_context", "loggable",
           "audit_dir", "file_name", "verify", "main_verify", "problems", "ZERO_HASH"]

log = logging.getLogger("fastgw.audit")

NAME = "audit-logger"
#: `prev` of a file's first record.
ZERO_HASH = "0" * 64
#: Records the writer takes off the queue for one fsync/acknowledgement round (group commit, as a database's
#: WAL writer does); bounds how long the first record of a batch waits for its acknowledgement.
MAX_BATCH = 256
#: First block read backwards when looking for the last record of a reopened file; doubles per read so that
#: one long line (a big response) is read in O(length), not O(length^2).
TAIL_BLOCK = 64 * 1024
SECONDS_PER_DAY = 86400
#: Characters past MAX_LOGGED_STRING that a string about to be cut is still redacted over: a value that starts
#: before the cut is seen whole (PII patterns are at most 256 bytes wide) and redacted, never half kept.
REDACT_MARGIN = 256
#: While the log is unavailable, how often the writer tries again (and how often the alarm is logged), seconds.
RETRY_INTERVAL = 1.0
#: Bytes this worker writes between two scans of the directory's size (`max_bytes`), as a fraction of the cap,
#: with a floor: other workers' growth is seen within `workers x max_bytes / SCAN_FRACTION`.
SCAN_FRACTION = 1024
MIN_SCAN_BYTES = 64 * 1024

_FILE_RE = re.compile(r"^audit-(\d{4})-(\d{2})-(\d{2})-w(\d+)\.jsonl$")
_SORTED = orjson.OPT_SORT_KEYS
_STOP = object()


class AuditLogger(Settings):
    #: Directory for the audit files (one per worker and day); default: $STATE_DIRECTORY or ./audit.
    path: str | None = None
    #: Chain each record to the previous one with SHA-256 (`fastgw audit verify`).
    immutable: bool = True
    #: Files older than this are deleted at start and at each daily rotation (0 keeps all).
    retention_days: int = 365
    #: Bytes of audit files kept in the directory, every worker's: past days' files are deleted oldest first
    #: beyond it; when today's alone reach it the log is full (503, as for a full disk) rather than erasing today's
    #: trail. 16 GiB: weeks of typical traffic on a small VM's disk. 0: no size limit.
    max_bytes: int = 16 * 1024 ** 3
    #: Also record requests refused by an earlier policy (401, 403, 409).
    log_all_access: bool = True
    #: Disk durability on top of "handed to the OS": fsync every record, every `fsync_interval`, or never.
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    on_error: OnError = "block"


def problems(settings: AuditLogger) -> Problems:
    """Negative retention or size limits (the messages say what 0 means, which a type constraint could not)."""
    errs: Problems = []
    if settings.retention_days < 0:
        errs.append(("retention_days", "expected an integer >= 0 (0 keeps every file)"))
    if settings.max_bytes < 0:
        errs.append(("max_bytes", "expected an integer >= 0 (0: no size limit)"))
    return errs


class AuditError(Exception):
    """The audit log cannot take records (not started, closed, or its file is held by another process)."""


class AuditUnavailable(GatewayError):
    """The audit log cannot write (disk or quota full, I/O error, `max_bytes` reached): an audited request is
    refused rather than served without its record. Says nothing of why: that is the operator's (ERROR log)."""

    status = 503
    type = "server_error"
    code = "audit_unavailable"
    origin = Origin.GATEWAY

    def __init__(self) -> None:
        super().__init__("The gateway cannot record this request in its audit log right now, so it does not serve "
                         "it; retry later.", headers=[(b"retry-after", b"5")])


class _CapReached(OSError):
    """Today's audit files alone fill `max_bytes` (raised by the writer like a full disk)."""


# ---- the record -------------------------------------------------------------------------------------------

def _iso_ms(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: What `loggable` escapes: C0/C1 controls and DEL (a newline forges a line in any text view of a record), line and
#: paragraph separators, bidi overrides and marks (text that displays other than it reads), lone surrogates (not
#: encodable), and the backslash itself, so an escape in the output always means an escaped character.
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def loggable(value: str, redact: Callable[[str], str] | None = None, limit: int = MAX_LOGGED_STRING) -> str:
    """A client-supplied string as a record may hold it: PII-redacted by `redact`, control characters escaped,
    and cut to `limit` UTF-8 bytes, its original length noted (`AAAA…[65000 bytes]`). Linear in `limit`, not
    in the string: a 15 MB model name is redacted and escaped over its first few hundred characters only."""
    size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    head = value if size <= limit else value[:limit + REDACT_MARGIN]
    if redact is not None:
        head = redact(head)
    if _UNSAFE.search(head) is not None:
        head = _UNSAFE.sub(_escape, head)
    if size <= limit and len(head) <= limit and head.isascii():
        return head
    data = head.encode()
    if size <= limit and len(data) <= limit:
        return head
    return data[:limit].decode("utf-8", "ignore") + f"…[{size} bytes]"


def _opt(value: str | None, redact: Callable[[str], str] | None = None) -> str | None:
    return None if value is None else loggable(value, redact)


def _clean(v: Any, redact: Callable[[str], str] | None) -> Any:
    """A JSON-safe copy of a decision detail: strings redacted and bounded (`loggable`), containers copied,
    anything else as text."""
    if isinstance(v, str):
        return loggable(v, redact)
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, dict):
        return {loggable(str(k), redact): _clean(x, redact) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x, redact) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((_clean(x, redact) for x in v), key=str)
    return _clean(str(v), redact)


def record_from_context(ctx: RequestContext, redact: Callable[[str], str] | None,
                        now: float | None = None) -> dict:
    """The audit record of a finished (or refused) request.

    Only what was decided and answered: never headers, keys or the prompt. Response texts,
    model, path and string decision details go through `redact` (a PII redactor: even in
    observe mode no raw PII reaches the file). `path` loses its query string (it may carry a
    key). Every client-supplied string is bounded and escaped (`loggable`).
    """
    ended = time.monotonic()
    ttfb = None if ctx.first_byte is None else round((ctx.first_byte - ctx.started) * 1000.0, 3)
    texts = ctx.texts
    return {
        "ts": _iso_ms(time.time() if now is None else now),
        "request_id": loggable(ctx.request_id),
        "principal": _opt(ctx.principal),
        "client": loggable(ctx.client),
        "method": loggable(ctx.method),
        "path": loggable(ctx.path.split("?", 1)[0], redact),
        "model": _opt(ctx.model, redact),
        "target": _opt(ctx.target),
        "stream": ctx.stream,
        "status": ctx.status,
        "decisions": [{"policy": d.policy, "phase": d.phase, "outcome": d.outcome,
                       "detail": _clean(d.detail, redact)} for d in ctx.decisions],
        "usage": _clean(ctx.usage, None) if ctx.usage is not None else None,
        "timing": {"total_ms": round((ended - ctx.started) * 1000.0, 3), "ttfb_ms": ttfb},
        "response": {str(i): (redact(t) if redact is not None else t) for i, t in sorted(texts.items())},
        "finish": {str(i): loggable(f) for i, f in sorted(ctx.finish.items())},
        "error": _opt(ctx.error),
    }


# ---- files ------------------------------------------------------------------------------------------------

def audit_dir(settings: AuditLogger) -> str:
    """The directory: `path`, else systemd's $STATE_DIRECTORY (its first entry), else ./audit."""
    if settings.path:
        return settings.path
    state = os.environ.get("STATE_DIRECTORY", "")
    if state:
        return state.split(":", 1)[0]
    return "audit"


def file_name(day: str, worker_id: int) -> str:
    return f"audit-{day}-w{worker_id}.jsonl"


def _record_hash(record: dict) -> str:
    """sha256 hex of the canonical JSON of `record` without its `hash` field."""
    if "hash" in record:
        record = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(record, option=_SORTED)).hexdigest()


def _lines_backwards(f: IO[bytes], end: int) -> Iterator[bytes]:
    """The lines of f[0:end] (split on `\\n`), last first."""
    pos, block, buf = end, TAIL_BLOCK, b""
    while pos > 0:
        n = min(block, pos)
        pos -= n
        block *= 2
        f.seek(pos)
        buf = f.read(n) + buf
        parts = buf.split(b"\n")
        buf = parts[0]
        yield from reversed(parts[1:])
    yield buf


def _chained(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("seq"), int) and not isinstance(obj.get("seq"), bool)
            and isinstance(obj.get("hash"), str))


def _tail_state(path: str, chained: bool) -> tuple[int, str, bool]:
    """(seq, hash) of the last chained record of an existing file, and whether its last line is torn."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0, ZERO_HASH, False
        f.seek(end - 1)
        torn = f.read(1) != b"\n"
        if not chained:
            return 0, ZERO_HASH, torn
        # A torn fragment is skipped like any line that is not a record; one that parses (everything but
        # its newline was written) is a complete record and the chain goes on from it.
        for line in _lines_backwards(f, end if torn else end - 1):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if _chained(obj):
                return obj["seq"], obj["hash"], torn
    return 0, ZERO_HASH, torn


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _day_of(t: float) -> tuple[float, str]:
    """(start of the UTC day holding t, its YYYY-MM-DD); POSIX time has no leap seconds."""
    start = t - t % SECONDS_PER_DAY
    return start, time.strftime("%Y-%m-%d", time.gmtime(start))


# ---- the writer --------------------------------------------------------------------------------------------

def _settle(done: list[tuple[asyncio.Future, BaseException | None]]) -> None:
    """On the loop: resolve the futures of one written batch (a caller cancelled meanwhile is skipped)."""
    for fut, exc in done:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


class AuditLog:
    """One worker's audit file and its writer thread; create it after fork, `start()` it, `close()` it on drain."""

    __slots__ = ("settings", "worker_id", "directory", "path", "_now", "_q", "_thread", "_closed", "_fd", "_seq",
                 "_prev", "_torn", "_dirty", "_last_sync", "_day_end", "_day", "_down", "_down_since", "_refused",
                 "_refused_base", "_alarm_at", "_used", "_since_scan", "_full_at", "_scan_every")

    def __init__(self, settings: AuditLogger, worker_id: int, now: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.directory = audit_dir(settings)
        #: The file being written (None before start).
        self.path: str | None = None
        self._now = now
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Writer state: owned by start() until the thread runs, then by the thread alone.
        self._fd = -1
        self._seq = 0
        self._prev = ZERO_HASH
        self._torn = False
        self._dirty = False
        self._last_sync = 0.0
        self._day_end = 0.0
        self._day = ""
        #: Why the log cannot write ("ENOSPC", "EDQUOT", "EIO", "max_bytes"), None while it can. Set and cleared by
        #: the writer thread, read by the loop (`check`).
        self._down: str | None = None
        self._down_since = 0.0
        #: Requests refused while down: incremented by the loop only, read by the writer (for the outage record).
        self._refused = 0
        self._refused_base = 0
        self._alarm_at = -RETRY_INTERVAL
        # Size accounting for max_bytes (writer): the directory's audit bytes at the last scan plus ours since.
        self._used = 0
        self._since_scan = 0
        self._full_at = -RETRY_INTERVAL  # when a scan last found no room (past days' files all gone)
        self._scan_every = max(MIN_SCAN_BYTES, settings.max_bytes // SCAN_FRACTION)

    # ---- loop side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open today's file (continuing its chain), apply retention, start the writer thread."""
        if self._thread is not None:
            raise AuditError("audit log already started")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._open_day(self._now())
        self._thread = threading.Thread(target=self._run, name=f"fastgw-audit-w{self.worker_id}", daemon=True)
        self._thread.start()

    @property
    def unavailable(self) -> str | None:
        """Why the log cannot take records now (e.g. "ENOSPC", "max_bytes"), or None."""
        return self._down

    def check(self, ctx: RequestContext | None = None) -> None:
        """Refuse a request that could not be audited: `AuditUnavailable` (503) while the log cannot write,
        recorded on `ctx` as the audit-logger's `unavailable` decision (the metric of the alarm)."""
        reason = self._down
        if reason is None:
            return
        self._refused += 1
        if ctx is not None:
            ctx.decide(NAME, "input", "unavailable", entity=reason)
        raise AuditUnavailable()

    async def write(self, record: dict) -> None:
        """Queue a record and wait until its line was handed to the OS (and fsynced with `fsync: always`).

        Never blocks the loop. Raises what the write raised (OSError: disk full, EIO...), so the
        caller can fail closed. A caller cancelled while waiting does not unqueue the record. The
        refusal of a request `check` refused is not written while the log is down: the outage record
        counts it.
        """
        if self._thread is None or self._closed:
            raise AuditError("audit log is closed" if self._closed else "audit log not started")
        if self._down is not None and record.get("error") == AuditUnavailable.code:
            return
        fut = asyncio.get_running_loop().create_future()
        self._q.put((dict(record), fut))  # a copy: the writer adds seq/prev/hash from its thread
        await fut

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is queued, fsync (unless `never`), close the file, join the thread.

        Blocks the calling thread up to `timeout`: call it once the connections are drained.
        False when the writer did not finish in time (records still queued may be lost).
        """
        if self._thread is None or self._closed:
            self._closed = True
            return self._thread is None or not self._thread.is_alive()
        self._closed = True
        self._q.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("audit writer for worker %d did not finish within %ss", self.worker_id, timeout)
            return False
        return True

    async def aclose(self, timeout: float | None = 10.0) -> bool:
        """`close()` without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.close, timeout)

    # ---- writer thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        q = self._q
        interval = self.settings.fsync == "interval"
        stopping = False
        while not stopping:
            timeout = None
            if interval and self._dirty:
                timeout = max(0.0, self._last_sync + self.settings.fsync_interval - time.monotonic())
            if self._down is not None:  # try again on our own: no request gets through to try while down
                timeout = RETRY_INTERVAL if timeout is None else min(timeout, RETRY_INTERVAL)
            try:
                item = q.get(timeout=timeout)
            except queue.Empty:
                self._sync_quietly()
                self._retry()
                continue
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            stopping = self._guarded(batch)
        # Drain: the stop marker was queued after every record the loop handed over; take any stragglers too.
        while True:
            try:
                batch = [q.get_nowait()]
            except queue.Empty:
                break
            self._guarded(batch)
        self._close_fd()

    def _guarded(self, batch: list) -> bool:
        """`_write_batch`, but a bug in it fails the batch's waiters instead of killing the thread (and them)."""
        try:
            return self._write_batch(batch)
        except Exception as e:  # noqa: BLE001
            log.exception("audit writer failed")
            for item in batch:
                if item is not _STOP:
                    fut = item[1]
                    try:
                        fut.get_loop().call_soon_threadsafe(_settle, [(fut, e)])
                    except RuntimeError:
                        pass
            return any(item is _STOP for item in batch)

    def _write_batch(self, batch: list) -> bool:
        """Write a batch, fsync if `always`, acknowledge per loop; True when it held the stop marker."""
        stop = False
        done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, BaseException | None]]] = {}
        wrote = []
        for item in batch:
            if item is _STOP:
                stop = True
                continue
            record, fut = item
            try:
                self._resume()
                self._append(record)
            except BaseException as e:  # noqa: BLE001 - the caller gets it and fails closed
                if isinstance(e, OSError):
                    self._went_down(e)
                done.setdefault(fut.get_loop(), []).append((fut, e))
            else:
                wrote.append(fut)
        if wrote and self.settings.fsync == "always":
            try:
                self._sync()
            except OSError as e:  # the promised durability did not happen: fail them all
                log.error("audit fsync failed: %s", e)
                for fut in wrote:
                    done.setdefault(fut.get_loop(), []).append((fut, e))
                wrote = []
        for fut in wrote:
            done.setdefault(fut.get_loop(), []).append((fut, None))
        if self._dirty and self.settings.fsync == "interval" \
                and time.monotonic() - self._last_sync >= self.settings.fsync_interval:
            self._sync_quietly()
        # One wake-up per loop and batch rather than one per record.
        for loop, settled in done.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
        return stop

    # ---- unavailable: alarm, refusals, retry ------------------------------------------------------------------
    def _went_down(self, e: OSError) -> None:
        """A record could not be written: the log is unavailable until one can (alarm at most once a second)."""
        reason = "max_bytes" if isinstance(e, _CapReached) else errno.errorcode.get(e.errno or 0, "EIO")
        if self._down is None:
            self._down_since = time.time()
            self._refused_base = self._refused
        self._down = reason
        now = time.monotonic()
        if now - self._alarm_at >= RETRY_INTERVAL:
            self._alarm_at = now
            log.error("audit log unavailable (%s: %s, writing %s): audited requests are refused with 503 "
                      "audit_unavailable until a record can be written", reason, e.strerror or e, self.path)

    def _resume(self) -> None:
        """While down: write the outage record first (raises OSError while the log still cannot write)."""
        if self._down is None:
            return
        since = self._down_since
        refused = self._refused - self._refused_base
        self._append({"ts": _iso_ms(self._now()), "event": "audit_unavailable", "reason": self._down,
                      "from": _iso_ms(since), "refused": refused})
        log.warning("audit log writable again after %.1fs unavailable (%s); %d request(s) were refused meanwhile",
                    time.time() - since, self._down, refused)
        self._down = None

    def _retry(self) -> None:
        try:
            self._resume()
        except OSError as e:
            self._went_down(e)
        except Exception:  # noqa: BLE001 - a bug here must not end the writer thread
            log.exception("audit writer failed")

    # ---- writing ------------------------------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        """Serialise, chain and write one record (writer thread)."""
        t = self._now()
        if self._fd < 0 or t >= self._day_end:
            self._open_day(t)
        record["worker"] = self.worker_id  # binds the record to its file: a file renamed to another worker's fails
        if self.settings.immutable:
            record.pop("hash", None)
            record["seq"] = self._seq + 1
            record["prev"] = self._prev
            digest = hashlib.sha256(orjson.dumps(record, option=_SORTED)).hexdigest()
            record["hash"] = digest
        line = orjson.dumps(record, option=_SORTED | orjson.OPT_APPEND_NEWLINE)
        if self._torn:  # end the torn fragment's line first, in the same write
            line = b"\n" + line
        self._room(len(line))
        self._write_line(line)
        if self.settings.immutable:
            self._seq += 1
            self._prev = digest
        self._dirty = True

    def _write_line(self, line: bytes) -> None:
        """One os.write for the whole line; loop only on a short write (O_APPEND: each part lands at the end)."""
        view = memoryview(line)
        off = 0
        try:
            while off < len(line):
                n = self._os_write(self._fd, view[off:])
                if n <= 0:
                    raise OSError(errno.EIO, "audit write returned 0")
                off += n
        except BaseException:
            if off:
                self._torn = True  # part of the line is in the file: the next record starts a new line
            raise
        self._torn = False

    def _os_write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def _open_day(self, t: float) -> None:
        """Close the current file and open the one for t's UTC day (continuing its chain if it exists)."""
        if self._fd >= 0:
            self._close_fd()
        day_start, day = _day_of(t)
        path = os.path.join(self.directory, file_name(day, self.worker_id))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, flags, 0o600)
            created = False
        try:
            # Two writers on one file would fork its chain (and it is one file per worker by design).
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditError(f"{path} is held by another process (two live workers with id {self.worker_id}?)") \
                from None
        try:
            if created:
                seq, prev, torn = 0, ZERO_HASH, False
                if self.settings.fsync != "never":
                    _fsync_dir(self.directory)  # the new name must survive a power loss too
            else:
                seq, prev, torn = _tail_state(path, self.settings.immutable)
                if torn:
                    log.warning("%s ends with a torn line (a crash mid-write); continuing on a new line", path)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._seq, self._prev, self._torn = fd, seq, prev, torn
        self.path, self._day, self._day_end = path, day, day_start + SECONDS_PER_DAY
        self._dirty = False
        self._last_sync = time.monotonic()
        self._purge(day_start)
        if self.settings.max_bytes > 0:
            self._used, self._since_scan = self._purge_size(0), 0

    def _room(self, n: int) -> None:
        """Account for n more bytes under max_bytes; `_CapReached` when they would not fit even after deleting
        past days' files. The directory is scanned every `_scan_every` bytes (other workers write there too) or
        when the cap is reached, and at most once a second while that scan finds no room."""
        cap = self.settings.max_bytes
        if cap <= 0:
            return
        if self._used + n <= cap and self._since_scan + n < self._scan_every:
            self._used += n
            self._since_scan += n
            return
        now = time.monotonic()
        if self._used + n > cap and now - self._full_at < RETRY_INTERVAL:
            raise _CapReached(errno.ENOSPC, f"today's audit files fill max_bytes ({cap})")
        self._used, self._since_scan = self._purge_size(n), 0
        if self._used + n > cap:
            self._full_at = now
            raise _CapReached(errno.ENOSPC, f"today's audit files fill max_bytes ({cap})")
        self._used += n
        self._since_scan += n

    def _purge_size(self, n: int) -> int:
        """Delete past days' audit files (any worker's), oldest first, until they and n more bytes fit in
        max_bytes; returns the bytes of audit files left. Today's files are never deleted: they are being written,
        and deleting them would erase today's trail."""
        cap = self.settings.max_bytes
        today = self._day
        found: list[tuple[str, str, int]] = []
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    m = _FILE_RE.match(entry.name)
                    if m is None:
                        continue
                    try:
                        found.append((f"{m[1]}-{m[2]}-{m[3]}", entry.name, entry.stat().st_size))
                    except FileNotFoundError:  # another worker deleted it meanwhile
                        continue
        except OSError as e:
            log.error("audit retention: cannot list %s: %s", self.directory, e)
            return 0
        total = sum(size for _, _, size in found)
        for day, name, size in sorted(found):
            if total + n <= cap or day >= today:
                break
            try:
                os.unlink(os.path.join(self.directory, name))
                log.info("audit retention: deleted %s (max_bytes %d)", name, cap)
            except FileNotFoundError:  # another worker was first
                pass
            except OSError as e:
                log.error("audit retention: cannot delete %s: %s", name, e)
                continue
            total -= size
        return total

    def _purge(self, today_start: float) -> None:
        """Delete audit files (any worker's) whose date is more than retention_days before today."""
        keep = self.settings.retention_days
        if keep <= 0:  # 0: keep forever
            return
        today = _dt.datetime.fromtimestamp(today_start, _dt.timezone.utc).date()
        try:
            names = os.listdir(self.directory)
        except OSError as e:
            log.error("audit retention: cannot list %s: %s", self.directory, e)
            return
        for name in names:
            m = _FILE_RE.match(name)
            if m is None:
                continue
            try:
                day = _dt.date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:
                continue
            if (today - day).days > keep:
                try:
                    os.unlink(os.path.join(self.directory, name))
                    log.info("audit retention: deleted %s", name)
                except FileNotFoundError:  # another worker was first
                    pass
                except OSError as e:
                    log.error("audit retention: cannot delete %s: %s", name, e)

    def _sync(self) -> None:
        if self._fd >= 0 and self._dirty:
            os.fsync(self._fd)
        self._dirty = False
        self._last_sync = time.monotonic()

    def _sync_quietly(self) -> None:
        try:
            self._sync()
        except OSError as e:
            log.error("audit fsync of %s failed: %s", self.path, e)

    def _close_fd(self) -> None:
        if self._fd < 0:
            return
        if self.settings.fsync != "never":
            self._sync_quietly()
        os.close(self._fd)  # also releases the flock
        self._fd = -1


# ---- verification ------------------------------------------------------------------------------------------

class _FileReport:
    __slots__ = ("path", "records", "last_hash", "bridged", "problems")

    def __init__(self, path: str) -> None:
        self.path = path
        self.records = 0
        self.last_hash = ZERO_HASH
        #: Torn fragments in the middle of the file that the chain steps over (crashes, nothing lost).
        self.bridged: list[int] = []
        self.problems: list[str] = []


def _verify_file(path: str) -> _FileReport:
    rep = _FileReport(path)
    m = _FILE_RE.match(os.path.basename(path))
    worker = int(m[4]) if m else None
    prev, seq = ZERO_HASH, 0
    prev_line = 0
    pending: list[int] = []  # lines that are not records, judged by the next record

    def problem(lineno: int, what: str) -> None:
        rep.problems.append(f"{path}:{lineno}: {what}")

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            complete = raw.endswith(b"\n")
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                if not complete:
                    problem(lineno, "torn last line (a write cut short by a crash; the writer has not resumed)")
                else:
                    pending.append(lineno)
                continue
            what = []
            h = obj.get("hash")
            s = obj.get("seq")
            if not isinstance(h, str) or not isinstance(s, int) or isinstance(s, bool) or "prev" not in obj:
                problem(lineno, "not a chained record (no hash/seq/prev)")
                for p in pending:
                    problem(p, "not a JSON object")
                pending = []
                continue
            if _record_hash(obj) != h:
                what.append("hash mismatch: record edited")
            linked = obj["prev"] == prev and s == seq + 1
            if obj["prev"] != prev:
                before = f"line {prev_line}" if prev_line else "the start of the file"
                what.append(f"prev does not match the hash of the record before ({before}): "
                            "record removed, inserted or reordered")
            if s != seq + 1:
                what.append(f"seq {s}, expected {seq + 1}")
            if worker is not None and obj.get("worker") != worker:
                what.append(f"worker {obj.get('worker')!r} in a file of worker {worker}")
            if pending:
                if linked:
                    rep.bridged.extend(pending)
                else:
                    for p in pending:
                        problem(p, "not a JSON object")
                pending = []
            if what:
                problem(lineno, "; ".join(what))
            rep.records += 1
            prev, seq, prev_line = h, s, lineno
            rep.last_hash = h
    for p in pending:  # garbage after the last record, with no record to vouch for it
        problem(p, "not a JSON object")
    return rep


def _audit_files(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return [str(x) for x in sorted(p.glob("audit-*.jsonl"))]
    return [str(p)]


def _verify_all(path: str) -> tuple[list[_FileReport], list[str]]:
    if not os.path.exists(path):
        return [], [f"{path}: no such file or directory"]
    files = _audit_files(path)
    if not files:
        return [], [f"{path}: no audit-*.jsonl files"]
    reports, problems = [], []
    for fp in files:
        try:
            rep = _verify_file(fp)
        except OSError as e:
            problems.append(f"{fp}:0: cannot read: {e}")
            continue
        reports.append(rep)
        problems.extend(rep.problems)
    return reports, problems


def verify(path: str) -> list[str]:
    """Check a file, or every audit-*.jsonl of a directory: `["<file>:<line>: <what>", ...]`, empty when intact.

    Cannot see records removed from the end of a file or whole files removed: compare the
    last hashes (`main_verify` prints them) with a copy kept elsewhere.
    """
    return _verify_all(path)[1]


def main_verify(argv_path: str, out: IO[str]) -> int:
    """`fastgw audit verify PATH`: print problems and a summary with each file's last hash; 0 if intact, else 1."""
    reports, problems = _verify_all(argv_path)
    for p in problems:
        print(p, file=out)
    records = 0
    for rep in reports:
        records += rep.records
        note = f" (torn fragment(s) from a crash skipped at line {', '.join(map(str, rep.bridged))})" \
            if rep.bridged else ""
        print(f"{rep.path}: {rep.records} record(s), last hash {rep.last_hash}{note}", file=out)
    verdict = "OK" if not problems else f"{len(problems)} problem(s)"
    print(f"{len(reports)} file(s), {records} record(s): {verdict}", file=out)
    print("note: records removed from the end of a file, or whole files, show only against the last hashes "
          "kept elsewhere", file=out)
    return 0 if not problems else 1
