"""A full disk is an alarm that fails closed (issue 15, item 4), and audit files have a size-based retention
(`max_bytes`) beside the age-based one.

In process: ENOSPC/EDQUOT simulated at the writer's one `os.write`. Through a gateway: its audit directory on a
256 KiB tmpfs that the test fills (root only; skipped where mounting is not allowed)."""

from __future__ import annotations

import asyncio
import calendar
import errno
import logging
import os
import time
from pathlib import Path

import orjson
import pytest
import uvloop

from fastgw.config import AuditLogger
from fastgw.policy import audit as audit_mod
from fastgw.policy.audit import AuditLog, AuditUnavailable, problems, verify
from fastgw.policy.base import RequestContext
from tests.abuse._h3support import audit_records, chat, fill, request, small_tmpfs
from tests.conftest import GatewayFactory


def cfg(tmp_path: Path, **kw: object) -> AuditLogger:
    kw.setdefault("fsync", "never")
    return AuditLogger(path=str(tmp_path), **kw)  # type: ignore[arg-type]


def records(d: Path) -> list[dict]:
    return [orjson.loads(x) for f in sorted(d.glob("audit-*.jsonl")) for x in f.read_bytes().splitlines()]


def wait_for(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "ENOSPC"), (errno.EDQUOT, "EDQUOT")])
def test_a_full_disk_refuses_audited_requests_then_recovers_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture, code: int,
                                                                      reason: str) -> None:
    real = AuditLog._os_write
    full = {"on": False}

    def write(self: AuditLog, fd: int, data: memoryview) -> int:
        if full["on"]:
            raise OSError(code, os.strerror(code))
        return real(self, fd, data)

    monkeypatch.setattr(AuditLog, "_os_write", write)
    log = AuditLog(cfg(tmp_path), worker_id=1)
    log.start()
    refused: list[RequestContext] = []

    async def scenario() -> None:
        await log.write({"request_id": "before", "status": 200})
        full["on"] = True
        with pytest.raises(OSError) as e:  # the request being recorded fails closed (the pipeline refuses it)
            await log.write({"request_id": "lost", "status": 200})
        assert e.value.errno == code
        assert log.unavailable == reason
        for i in range(20):  # every later audited request is refused before any upstream is called
            ctx = RequestContext(f"refused-{i}", "POST", "/v1/chat/completions", [])
            with pytest.raises(AuditUnavailable) as r:
                log.check(ctx)
            assert (r.value.status, r.value.code) == (503, "audit_unavailable")
            assert (b"retry-after", b"5") in r.value.headers
            assert ctx.decisions[-1].outcome == "unavailable" and ctx.decisions[-1].detail == {"entity": reason}
            # its own refusal record is not attempted (it would fail): the outage record counts it
            await log.write({"request_id": ctx.request_id, "status": 503, "error": "audit_unavailable"})
            refused.append(ctx)
        full["on"] = False
        # No request gets through to try while down: the writer tries again by itself, about once a second.
        for _ in range(300):
            if log.unavailable is None:
                break
            await asyncio.sleep(0.01)
        assert log.unavailable is None
        log.check(RequestContext("after", "POST", "/v1/chat/completions", []))  # served again
        await log.write({"request_id": "after", "status": 200})

    with caplog.at_level(logging.ERROR, "fastgw.audit"):
        uvloop.run(scenario())
    assert log.close()
    alarms = [r for r in caplog.records if r.levelno == logging.ERROR and "audit log unavailable" in r.getMessage()]
    assert len(alarms) == 1 and reason in alarms[0].getMessage()  # an alarm, not one line per refused request
    recs = records(tmp_path)
    assert [r.get("request_id", r.get("event")) for r in recs] == ["before", "audit_unavailable", "after"]
    outage = recs[1]
    assert outage["reason"] == reason and outage["refused"] == len(refused) and outage["from"] <= outage["ts"]
    assert verify(str(tmp_path)) == []  # the outage record is chained like any other


def test_max_bytes_deletes_past_days_oldest_first_and_never_today(tmp_path: Path) -> None:
    day = 86400
    now = calendar.timegm((2026, 3, 10, 12, 0, 0, 0, 0, 0))
    for back, worker in [(3, 1), (3, 2), (2, 1), (1, 1)]:  # 4 past files of 10 KB each, 2 other workers included
        name = time.strftime(f"audit-%Y-%m-%d-w{worker}.jsonl", time.gmtime(now - back * day))
        (tmp_path / name).write_bytes(b"x" * 10_000 + b"\n")
    (tmp_path / "not-an-audit-file.txt").write_bytes(b"y" * 50_000)  # never counted nor touched
    log = AuditLog(cfg(tmp_path, max_bytes=25_000, retention_days=0), worker_id=1, now=lambda: now)
    log.start()  # at start: 40 KB of past files -> the two oldest (day -3) go
    names = sorted(p.name for p in tmp_path.glob("audit-*.jsonl"))
    assert names == ["audit-2026-03-08-w1.jsonl", "audit-2026-03-09-w1.jsonl", "audit-2026-03-10-w1.jsonl"]

    async def scenario() -> None:
        big = "z" * 1_000
        for i in range(12):  # ~12 KB today: room is made by deleting past days, oldest first
            await log.write({"request_id": f"r{i}", "pad": big})
        assert log.unavailable is None
        with pytest.raises(OSError):  # today's file alone reaches the cap: full, not erasing today's trail
            for i in range(40):
                await log.write({"request_id": f"s{i}", "pad": big})
        assert log.unavailable == "max_bytes"

    uvloop.run(scenario())
    log.close()
    assert sorted(p.name for p in tmp_path.glob("audit-*.jsonl")) == ["audit-2026-03-10-w1.jsonl"]
    assert sum(p.stat().st_size for p in tmp_path.glob("audit-*.jsonl")) <= 25_000
    assert (tmp_path / "not-an-audit-file.txt").exists()
    assert verify(str(tmp_path)) == []


def test_max_bytes_setting() -> None:
    assert AuditLogger().max_bytes == 16 * 1024 ** 3
    assert problems(AuditLogger(max_bytes=-1)) == [("max_bytes", "expected an integer >= 0 (0: no size limit)")]
    assert problems(AuditLogger(max_bytes=0)) == []


def test_no_cap_never_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scans = []
    monkeypatch.setattr(AuditLog, "_purge_size", lambda self, n: scans.append(n) or 0)
    log = AuditLog(cfg(tmp_path, max_bytes=0), worker_id=1)
    log.start()
    uvloop.run(log.write({"request_id": "r"}))
    log.close()
    assert scans == []
    assert audit_mod.MIN_SCAN_BYTES <= AuditLog(cfg(tmp_path), 2)._scan_every


# ---- through a gateway on a small tmpfs -----------------------------------------------------------------------

def test_gateway_fails_closed_on_a_full_disk_and_recovers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        if fs is None:
            pytest.fail("mounting a tmpfs needs root (make test runs as root on CI)")
        audit_dir = fs / "audit"
        cfg = {"pack": {"name": "t"},
               "providers": {"targets": [{"id": "mock", "provider": "mock", "model": "mock-1"}]},
               "policies": {"chain": ["audit-logger"]},
               "policy": {"audit-logger": {"path": str(audit_dir), "fsync": "never"}}}
        f = GatewayFactory(tmp_path / "gw")
        try:
            gw = f.start(cfg)
            post = {"content-type": "application/json"}
            status, _, body = request(gw.base, "POST", "/v1/chat/completions", chat("mock-1"), post)
            assert status == 200
            filler = fill(fs)
            # Records still fit in the file's last page; the request whose record hits the full disk is refused
            # (its answer is withheld) ...
            for _ in range(50):
                status, _, body = request(gw.base, "POST", "/v1/chat/completions", chat("mock-1"), post)
                if status != 200:
                    break
            assert status >= 500 and b"choices" not in body
            seen = len(gw.stderr_text())
            # ... and every later one is refused before any upstream is called: 503 in the OpenAI envelope.
            for _ in range(5):
                status, headers, body = request(gw.base, "POST", "/v1/chat/completions", chat("mock-1"), post)
                err = orjson.loads(body)["error"]
                assert status == 503 and err["code"] == "audit_unavailable" and err["type"] == "server_error"
                assert headers.get("retry-after") == "5"
            stderr = gw.stderr_text()
            assert stderr.count("audit log unavailable (ENOSPC") == 1  # one alarm, not one per request
            assert "Traceback" not in stderr[seen:]  # the refusals are an alarm state, not errors
            _, _, metrics = request(gw.base, "GET", "/metrics")
            assert b'fastgw_policy_decisions_total{action="unavailable",entity="ENOSPC",policy="audit-logger"}' \
                in metrics
            filler.unlink()
            assert wait_for(lambda: request(gw.base, "POST", "/v1/chat/completions", chat("mock-1"),
                                            post)[0] == 200, 5.0)
        finally:
            f.close()
        recs = audit_records(audit_dir)
        (outage,) = [r for r in recs if r.get("event") == "audit_unavailable"]
        assert outage["reason"] == "ENOSPC" and outage["refused"] >= 5
        assert verify(str(audit_dir)) == []
