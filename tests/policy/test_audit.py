"""The audit log: record contents, the hash chain and its verifier, restarts, rotation and retention,
durability across SIGKILL/SIGTERM (real processes), and a writer that never blocks the event loop."""

from __future__ import annotations

import asyncio
import calendar
import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.config import AuditLogger
from fastgw.policy import audit as audit_mod
from fastgw.policy.audit import (ZERO_HASH, AuditError, AuditLog, _record_hash, audit_dir, main_verify,
                                 record_from_context, verify)
from fastgw.policy.base import RequestContext

HELPER = Path(__file__).resolve().parents[1] / "support" / "audit_writer.py"
SECRET_KEY = "sk-live-TOPSECRET0123456789"
EMAIL = "jane.doe@example.com"


def redact(text: str) -> str:
    return text.replace(EMAIL, "[EMAIL]")


def make_ctx(i: int = 0) -> RequestContext:
    ctx = RequestContext(f"req-{i}", "POST", f"/v1/chat/completions?api_key={SECRET_KEY}",
                         [(b"authorization", f"Bearer {SECRET_KEY}".encode()), (b"x-custom", b"HEADERVALUE")],
                         client="10.1.2.3:4567")
    ctx.endpoint = "chat/completions"
    ctx.body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"PROMPTTEXT mail {EMAIL}"}]}
    ctx.model = "gpt-4o"
    ctx.principal = "team-a"
    ctx.roles = ("user",)
    ctx.target = "openai"
    ctx.stream = True
    ctx.status = 200
    ctx.usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    ctx.texts = {0: f"write to {EMAIL}", 1: "second choice"}
    ctx.finish = {0: "stop", 1: "length"}
    ctx.first_byte = ctx.started + 0.012
    ctx.decide("rbac", "input", "allow", key="team-a")
    ctx.decide("pii-detector", "output", "redact", entities={"EMAIL"}, count=1, note=f"saw {EMAIL}")
    return ctx


def cfg(tmp_path: Path, **kw: object) -> AuditLogger:
    kw.setdefault("fsync", "never")
    return AuditLogger(path=str(tmp_path), **kw)  # type: ignore[arg-type]


def run(coro):  # type: ignore[no-untyped-def]
    return uvloop.run(coro)


async def write_n(log: AuditLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await log.write({"request_id": f"r{i}", "status": 200, "n": i})


def files(d: Path) -> list[Path]:
    return sorted(d.glob("audit-*.jsonl"))


def lines(p: Path) -> list[dict]:
    return [orjson.loads(x) for x in p.read_bytes().splitlines()]


def utc(y: int, m: int, d: int, hh: int = 12, mm: int = 0, ss: float = 0.0) -> float:
    return calendar.timegm((y, m, d, hh, mm, 0, 0, 0, 0)) + ss


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def check(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    return main_verify(str(path), out), out.getvalue()


# ---- the record ----------------------------------------------------------------------------------------

def test_record_fields_and_redaction() -> None:
    rec = record_from_context(make_ctx(), redact, now=utc(2024, 5, 1, 10, 20, 30.4567))
    assert rec["ts"] == "2024-05-01T10:20:30.456Z"
    assert rec["path"] == "/v1/chat/completions"
    assert {k: rec[k] for k in ("request_id", "principal", "client", "method", "model", "target", "stream",
                                "status", "error")} == {
        "request_id": "req-0", "principal": "team-a", "client": "10.1.2.3:4567", "method": "POST",
        "model": "gpt-4o", "target": "openai", "stream": True, "status": 200, "error": None}
    assert rec["response"] == {"0": "write to [EMAIL]", "1": "second choice"}
    assert rec["finish"] == {"0": "stop", "1": "length"}
    assert rec["usage"]["total_tokens"] == 19
    assert rec["timing"]["ttfb_ms"] == pytest.approx(12.0, abs=0.01)
    assert rec["timing"]["total_ms"] >= 0
    assert rec["decisions"] == [
        {"policy": "rbac", "phase": "input", "outcome": "allow", "detail": {"key": "team-a"}},
        {"policy": "pii-detector", "phase": "output", "outcome": "redact",
         "detail": {"entities": ["EMAIL"], "count": 1, "note": "saw [EMAIL]"}}]
    orjson.dumps(rec)  # JSON-safe (the set became a list)


def test_file_holds_records_without_secrets(tmp_path: Path) -> None:
    log = AuditLog(cfg(tmp_path), worker_id=3)
    log.start()
    run(log.write(record_from_context(make_ctx(), redact)))
    assert log.close()
    [f] = files(tmp_path)
    assert f.name.endswith("-w3.jsonl")
    raw = f.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    for leak in (SECRET_KEY, "Bearer", "authorization", "HEADERVALUE", "PROMPTTEXT", EMAIL):
        assert leak.encode() not in raw
    [rec] = lines(f)
    assert rec["seq"] == 1 and rec["prev"] == ZERO_HASH and rec["hash"] == _record_hash(rec)
    assert rec["worker"] == 3
    assert list(rec) == sorted(rec)
    assert rec["response"]["0"] == "write to [EMAIL]"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_directory_mode_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "a" / "b"
    log = AuditLog(AuditLogger(path=str(d), fsync="never"), 1)
    log.start()
    log.close()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/fastgw:/other")
    assert audit_dir(AuditLogger()) == "/var/lib/fastgw"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert audit_dir(AuditLogger()) == "audit"


def test_lifecycle_errors(tmp_path: Path) -> None:
    log = AuditLog(cfg(tmp_path), 1)
    with pytest.raises(AuditError, match="not started"):
        run(log.write({}))
    log.start()
    with pytest.raises(AuditError, match="already started"):
        log.start()
    other = AuditLog(cfg(tmp_path), 1)  # same worker id, same day: the file is locked
    with pytest.raises(AuditError, match="held by another process"):
        other.start()
    assert log.close() and log.close()
    with pytest.raises(AuditError, match="closed"):
        run(log.write({}))


def test_not_immutable_has_no_chain(tmp_path: Path) -> None:
    log = AuditLog(cfg(tmp_path, immutable=False), 1)
    log.start()
    run(write_n(log, 2))
    log.close()
    assert [set(r) for r in lines(files(tmp_path)[0])] == [{"request_id", "status", "n", "worker"}] * 2


# ---- the chain and its verifier ---------------------------------------------------------------------------

@pytest.fixture
def chained(tmp_path: Path) -> Path:
    log = AuditLog(cfg(tmp_path), 1)
    log.start()
    run(write_n(log, 5))
    log.close()
    [f] = files(tmp_path)
    return f


def test_chain_verifies(chained: Path) -> None:
    recs = lines(chained)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert [r["prev"] for r in recs] == [ZERO_HASH] + [r["hash"] for r in recs[:-1]]
    assert verify(str(chained)) == [] and verify(str(chained.parent)) == []
    rc, out = check(chained.parent)
    assert rc == 0
    assert f"5 record(s), last hash {recs[-1]['hash']}" in out and "1 file(s), 5 record(s): OK" in out


def _rewrite(path: Path, raw_lines: list[bytes]) -> None:
    path.write_bytes(b"".join(x + b"\n" for x in raw_lines))


def test_edited_field_is_reported(chained: Path) -> None:
    raw = chained.read_bytes().splitlines()
    raw[2] = raw[2].replace(b'"status":200', b'"status":201')
    _rewrite(chained, raw)
    problems = verify(str(chained))
    assert problems == [f"{chained}:3: hash mismatch: record edited"]
    assert check(chained)[0] == 1


def test_edited_record_with_recomputed_hash_breaks_the_next_link(chained: Path) -> None:
    raw = chained.read_bytes().splitlines()
    rec = orjson.loads(raw[2])
    rec["status"] = 500
    rec["hash"] = _record_hash(rec)
    raw[2] = orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)
    _rewrite(chained, raw)
    [p] = verify(str(chained.parent))
    assert p.startswith(f"{chained}:4: prev does not match")


def test_removed_middle_line_is_reported(chained: Path) -> None:
    raw = chained.read_bytes().splitlines()
    del raw[2]
    _rewrite(chained, raw)
    [p] = verify(str(chained))
    assert p.startswith(f"{chained}:3: prev does not match the hash of the record before (line 2)")
    assert "seq 4, expected 3" in p
    assert check(chained)[0] == 1


def test_removed_first_line_is_reported(chained: Path) -> None:
    raw = chained.read_bytes().splitlines()
    _rewrite(chained, raw[1:])
    [p] = verify(str(chained))
    assert p.startswith(f"{chained}:1: prev does not match the hash of the record before (the start of the file)")


def test_swapped_lines_are_reported(chained: Path) -> None:
    raw = chained.read_bytes().splitlines()
    raw[1], raw[2] = raw[2], raw[1]
    _rewrite(chained, raw)
    problems = verify(str(chained))
    assert [p.split(": ")[0] for p in problems] == [f"{chained}:2", f"{chained}:3", f"{chained}:4"]
    assert check(chained)[0] == 1


def test_garbage_line_is_reported(chained: Path) -> None:
    raw = chained.read_bytes().splitlines()
    raw[2] = b"not json"
    _rewrite(chained, raw)
    problems = verify(str(chained))
    assert f"{chained}:3: not a JSON object" in problems
    assert any(p.startswith(f"{chained}:4: prev does not match") for p in problems)


def test_file_renamed_to_another_worker_is_reported(chained: Path) -> None:
    moved = chained.with_name(chained.name.replace("-w1.", "-w2."))
    chained.rename(moved)
    problems = verify(str(moved.parent))
    assert len(problems) == 5 and problems[0] == f"{moved}:1: worker 1 in a file of worker 2"


def test_verify_missing_and_empty(tmp_path: Path) -> None:
    assert verify(str(tmp_path / "nope")) == [f"{tmp_path / 'nope'}: no such file or directory"]
    assert verify(str(tmp_path)) == [f"{tmp_path}: no audit-*.jsonl files"]
    assert check(tmp_path)[0] == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_hash_survives_the_round_trip(record: dict) -> None:
    """verify re-serialises what it parsed: that must give the bytes the writer hashed, for any JSON."""
    record = dict(record, seq=1, prev=ZERO_HASH)
    record.pop("hash", None)
    digest = _record_hash(record)
    line = orjson.dumps(dict(record, hash=digest), option=orjson.OPT_SORT_KEYS)
    assert _record_hash(orjson.loads(line)) == digest


# ---- restarts, torn lines, write errors --------------------------------------------------------------------

def test_restart_continues_the_chain(tmp_path: Path) -> None:
    for start in (0, 3):
        log = AuditLog(cfg(tmp_path), 7)
        log.start()
        run(write_n(log, 3, start))
        log.close()
    [f] = files(tmp_path)
    assert [r["seq"] for r in lines(f)] == [1, 2, 3, 4, 5, 6]
    assert [r["n"] for r in lines(f)] == list(range(6))
    assert verify(str(f)) == []


def test_torn_tail_then_restart(tmp_path: Path) -> None:
    log = AuditLog(cfg(tmp_path), 1)
    log.start()
    run(write_n(log, 3))
    log.close()
    [f] = files(tmp_path)
    with open(f, "ab") as fh:
        fh.write(b'{"n":99,"prev":"00')  # a crash in the middle of a write
    problems = verify(str(f))
    assert problems == [f"{f}:4: torn last line (a write cut short by a crash; the writer has not resumed)"]
    log = AuditLog(cfg(tmp_path), 1)
    log.start()
    run(write_n(log, 2, 3))
    log.close()
    assert verify(str(f)) == []
    raw = f.read_bytes().splitlines()
    assert raw[3] == b'{"n":99,"prev":"00'
    recs = [orjson.loads(x) for x in raw[:3] + raw[4:]]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    rc, out = check(f)
    assert rc == 0 and "torn fragment(s) from a crash skipped at line 4" in out


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AuditLog, "_os_write", lambda self, fd, data: os.write(fd, data[:7]))
    log = AuditLog(cfg(tmp_path), 1)
    log.start()
    run(write_n(log, 4))
    log.close()
    [f] = files(tmp_path)
    assert len(lines(f)) == 4 and verify(str(f)) == []


def test_write_error_reaches_the_caller_and_the_chain_survives(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = AuditLog._os_write

    def disk_full_mid_line(self: AuditLog, fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(self, fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    log = AuditLog(cfg(tmp_path), 1)
    log.start()

    async def scenario() -> None:
        await write_n(log, 2)
        monkeypatch.setattr(AuditLog, "_os_write", disk_full_mid_line)
        with pytest.raises(OSError) as e:
            await log.write({"n": 2})
        assert e.value.errno == errno.ENOSPC
        monkeypatch.setattr(AuditLog, "_os_write", real)
        await write_n(log, 2, 3)

    run(scenario())
    log.close()
    [f] = files(tmp_path)
    assert verify(str(f)) == []
    raw = f.read_bytes().splitlines()
    assert len(raw) == 6 and len(raw[2]) == 10  # the fragment alone on its line
    recs = [orjson.loads(x) for x in raw[:2] + raw[3:]]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    # the outage is in the trail: the first record written once the disk took writes again
    assert recs[2]["event"] == "audit_unavailable" and recs[2]["reason"] == "ENOSPC"


def test_unserialisable_record_fails_alone(tmp_path: Path) -> None:
    log = AuditLog(cfg(tmp_path), 1)
    log.start()

    async def scenario() -> None:
        with pytest.raises(TypeError):
            await log.write({"bad": object()})
        await write_n(log, 1)

    run(scenario())
    log.close()
    [f] = files(tmp_path)
    assert [r["seq"] for r in lines(f)] == [1] and verify(str(f)) == []


# ---- several workers, many tasks ---------------------------------------------------------------------------

def test_workers_write_separate_files_of_whole_lines(tmp_path: Path) -> None:
    logs = [AuditLog(cfg(tmp_path), 1), AuditLog(cfg(tmp_path), 2)]
    for log in logs:
        log.start()

    async def one(i: int) -> None:
        await logs[i % 2].write({"request_id": f"r{i}", "response": {"0": "y" * (i * 37 % 5000)}})

    async def scenario() -> None:
        await asyncio.gather(*(one(i) for i in range(600)))

    run(scenario())
    for log in logs:
        log.close()
    f1, f2 = files(tmp_path)
    assert f1.name.endswith("-w1.jsonl") and f2.name.endswith("-w2.jsonl")
    for f, parity in ((f1, 0), (f2, 1)):
        recs = lines(f)  # every line parses: no interleaving
        assert len(recs) == 300
        assert sorted(int(r["request_id"][1:]) for r in recs) == list(range(parity, 600, 2))
    assert verify(str(tmp_path)) == []


# ---- rotation and retention --------------------------------------------------------------------------------

def test_retention_at_start_and_rotation_at_midnight(tmp_path: Path) -> None:
    for name in ("audit-2024-03-01-w1.jsonl", "audit-2024-03-07-w2.jsonl", "audit-2024-03-08-w1.jsonl",
                 "audit-2024-03-09-w3.jsonl", "audit-2024-01-01-w1.jsonl.bak", "notes.txt"):
        (tmp_path / name).write_text("")
    clock = Clock(utc(2024, 3, 10, 23, 59, 59.5))
    log = AuditLog(cfg(tmp_path, retention_days=2), 1, now=clock)
    log.start()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit-2024-01-01-w1.jsonl.bak", "audit-2024-03-08-w1.jsonl", "audit-2024-03-09-w3.jsonl",
                     "audit-2024-03-10-w1.jsonl", "notes.txt"]

    async def scenario() -> None:
        await write_n(log, 2)
        clock.t = utc(2024, 3, 11, 0, 0, 0.25)
        await write_n(log, 3, 2)

    run(scenario())
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit-2024-01-01-w1.jsonl.bak", "audit-2024-03-09-w3.jsonl", "audit-2024-03-10-w1.jsonl",
                     "audit-2024-03-11-w1.jsonl", "notes.txt"]
    old, new = tmp_path / "audit-2024-03-10-w1.jsonl", tmp_path / "audit-2024-03-11-w1.jsonl"
    assert [r["n"] for r in lines(old)] == [0, 1]
    assert [(r["seq"], r["n"]) for r in lines(new)] == [(1, 2), (2, 3), (3, 4)]
    assert lines(new)[0]["prev"] == ZERO_HASH
    assert verify(str(old)) == [] and verify(str(new)) == []


# ---- fsync modes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_fsync_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    events: list[str] = []
    real_fsync = os.fsync
    real_write = AuditLog._os_write

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def write(self: AuditLog, fd: int, data: memoryview) -> int:
        events.append("write")
        return real_write(self, fd, data)

    monkeypatch.setattr(audit_mod.os, "fsync", fsync)
    monkeypatch.setattr(AuditLog, "_os_write", write)
    log = AuditLog(cfg(tmp_path, fsync=mode, fsync_interval=0.1), 1)
    log.start()
    events.clear()  # the directory fsync of a new file

    async def scenario() -> None:
        await log.write({"n": 1})
        events.append("ack")
        await asyncio.sleep(0.25)

    run(scenario())
    if mode == "always":
        assert events == ["write", "fsync", "ack"]
    elif mode == "interval":  # once: by the idle timer (or in the batch when the interval had already passed)
        assert events.count("fsync") == 1 and events.index("write") < events.index("fsync")
    else:
        assert events == ["write", "ack"]
    log.close()
    assert events.count("fsync") == (0 if mode == "never" else 1)


# ---- the event loop never waits for the disk -----------------------------------------------------------------

def test_write_does_not_block_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = AuditLog._os_write

    def stalled(self: AuditLog, fd: int, data: memoryview) -> int:
        time.sleep(0.3)
        return real(self, fd, data)

    monkeypatch.setattr(AuditLog, "_os_write", stalled)
    log = AuditLog(cfg(tmp_path), 1)
    log.start()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        fired: list[float] = []
        task = asyncio.ensure_future(log.write({"n": 1}))
        loop.call_later(0.01, lambda: fired.append(loop.time() - t0))
        await asyncio.sleep(0.1)
        assert fired and fired[0] < 0.05
        assert not task.done()
        await task
        assert loop.time() - t0 >= 0.29

    run(scenario())
    log.close()


# ---- durability with real processes -------------------------------------------------------------------------

def _spawn(d: Path, fsync: str, tasks: int, total: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HELPER), str(d), fsync, str(tasks), str(total)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
    return proc


def _file_ns(d: Path) -> tuple[Path, set[int]]:
    [f] = files(d)
    ns = set()
    for raw in f.read_bytes().splitlines():
        try:
            ns.add(orjson.loads(raw)["n"])
        except orjson.JSONDecodeError:  # a torn fragment
            pass
    return f, ns


def test_acknowledged_records_survive_sigkill(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "never", 8, 1_000_000)
    assert proc.stdout is not None
    acked: set[int] = set()
    for line in proc.stdout:
        acked.add(int(line.split()[1]))
        if len(acked) >= 2000:
            break
    proc.kill()
    rest, _ = proc.communicate(timeout=10)
    for line in rest.splitlines():  # acks printed before the kill, still in the pipe
        parts = line.split()
        if len(parts) == 2 and parts[0] == "ack" and parts[1].isdigit():
            acked.add(int(parts[1]))
    assert proc.returncode == -signal.SIGKILL
    f, ns = _file_ns(tmp_path)
    assert acked <= ns
    assert len(ns) < 1_000_000  # it was killed mid-way
    problems = verify(str(f))
    assert problems == [] or (len(problems) == 1 and "torn last line" in problems[0])


def test_sigterm_close_keeps_every_queued_record(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "interval", 32, 1_000_000)
    assert proc.stdout is not None
    acks = 0
    for _ in proc.stdout:
        acks += 1
        if acks >= 1000:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=15)
    closed = [x for x in rest.splitlines() if x.startswith("closed ")]
    assert closed, err
    enqueued_json, ok = closed[0][len("closed "):].rsplit(" ", 1)
    assert ok == "True"
    enqueued = set(json.loads(enqueued_json))
    f, ns = _file_ns(tmp_path)
    assert enqueued and enqueued == ns
    assert verify(str(f)) == []
