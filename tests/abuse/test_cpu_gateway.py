"""Pathological text cannot stall a worker for everyone (issue 15, item 1): one worker with pii-detector,
safety-filter and prompt-injection; the slowest inputs `python -m bench.scan_worst` found, 2-4 MB each, sent
concurrently while a well-behaved client streams an answer and /healthz is polled.

Bounds asserted: /healthz of the (only) worker answers within 100 ms throughout (the issue: 30 s); the
well-behaved stream completes with [DONE] (the issue: cut mid-event); each hostile request completes (200) or is
refused with 413 `request_too_expensive` (the per-request CPU budget, 2 s by default); the worker is never
killed or replaced (its pid is unchanged; the issue: both workers aborted by the master). Measured on the
2-core box: /healthz at most ~30 ms, the three requests 200, 200 and 413 (the 2 MB of IP addresses needs ~3.5 s
of policy CPU), ~6 s in all.
"""

from __future__ import annotations

import threading
import time

import orjson
import pytest

from tests.abuse import _cpusupport as C

#: The attack: the slowest families of the hunt, as MB-sized prompts (text, size in bytes).
HOSTILE = [
    ("1 2 3 4 5 6 7 8 9, ", 4 << 20),   # phone-shaped garbage: libphonenumber's budget, then fail-closed spans
    ("a:", 3 << 20),                    # the input: an IPv6-shaped run reporting at every offset
    ("1.1.1.1 ", 2 << 20),              # a real value every 8 bytes: one redaction each
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tests.conftest import GatewayFactory

    factory = GatewayFactory(tmp_path_factory.mktemp("cpu-abuse"))
    try:
        yield factory.start(C.config(), workers=1)
    finally:
        factory.close()


def test_pathological_text_does_not_stall_the_worker(gw, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pids = C.worker_pids(gw)
    assert len(pids) == 1
    assert C.healthz_ms(gw) < 1000  # warm
    requests = [C.chat_request((unit * (size // len(unit) + 1))[:size]) for unit, size in HOSTILE]
    results: list[tuple[int, dict[str, str], bytes] | BaseException] = [None] * len(requests)  # type: ignore[list-item]

    def attack(i: int) -> None:
        try:
            results[i] = C.post(gw, requests[i], timeout=60)
        except BaseException as e:  # noqa: BLE001 - reported by the assertions below
            results[i] = e

    stream = C.Stream(gw)
    threads = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(len(requests))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    poller = C.HealthzPoller(gw, str(tmp_path))
    while any(t.is_alive() for t in threads) and time.monotonic() - t0 < 60:
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=5)
    polls = poller.finish()
    streamed = stream.finish()

    assert len(polls) >= 10, "the attack ended before /healthz could be watched"
    # Within 100 ms, every poll but one: a 2-core CI box also runs another test worker, and the OS may deschedule
    # the poller itself once; that one may not exceed 250 ms (a loop held by a scan would show in many polls).
    worst = sorted(polls)
    assert worst[-2] < 100 and worst[-1] < 250, f"/healthz slow during the attack (worst polls: {worst[-5:]} ms)"
    assert C.Stream.complete(streamed), streamed[-300:]
    for (unit, size), r in zip(HOSTILE, results):
        assert not isinstance(r, BaseException), f"{unit!r}: {r!r}"
        status, _, body = r
        if status != 200:
            err = orjson.loads(body)["error"]
            assert (status, err["code"], err["type"]) == (413, "request_too_expensive", "invalid_request_error"), \
                (unit, status, body[:300])
    assert C.worker_pids(gw) == pids, "the worker was killed and replaced"
    assert gw.proc.poll() is None
    assert C.healthz_ms(gw) < 100
