"""fastgw.metrics (multiprocess aggregation, EventClock, label bounds) and fastgw.accesslog (the JSON line)."""

from __future__ import annotations

import asyncio
import io
import math
import multiprocessing
import os
import random
from typing import Iterator

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastgw import accesslog, metrics
from fastgw.policy.base import RequestContext

_FORK = multiprocessing.get_context("fork")
SECRET_KEY = "sk-live-SECRETKEY123"
PROMPT = "my card is 4111 1111 1111 1111, tell nobody"
ANSWER = "here is the confidential answer"


# ---- helpers ------------------------------------------------------------------------------------------------

def _ctx(model: str = "gpt-x", target: str | None = "t1", status: int = 200, usage: dict | None = None,
         path: str = "/v1/chat/completions") -> RequestContext:
    ctx = RequestContext("req_abc", "POST", path, [(b"authorization", f"Bearer {SECRET_KEY}".encode())],
                         client="10.0.0.7")
    ctx.body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    ctx.model, ctx.target, ctx.status, ctx.stream = model, target, status, True
    ctx.principal = "team-a"
    ctx.usage = usage if usage is not None else {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    ctx.texts = {0: ANSWER}
    ctx.decide("rbac", "input", "allow", principal="team-a")
    ctx.decide("pii", "input", "redact", findings=1)
    ctx.decide("pii", "output", "block", entity="credit_card")
    ctx.decide("routing", "upstream", "retry", target="t0", kind="5xx", attempt=1)
    return ctx


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(body: bytes, name: str, **labels: str) -> float | None:
    return _samples(body).get((name, tuple(sorted(labels.items()))))


def _render_elsewhere() -> bytes:
    """render() in a forked process (as a scrape landing on another worker would)."""
    r, w = _FORK.Pipe(duplex=False)

    def scrape() -> None:
        w.send_bytes(metrics.render()[0])

    p = _FORK.Process(target=scrape)
    p.start()
    body = r.recv_bytes()
    p.join(10)
    assert p.exitcode == 0
    return body


def _without_created(body: bytes) -> bytes:
    return b"\n".join(line for line in body.split(b"\n") if b"_created" not in line)


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process metrics, from a fresh start."""
    metrics.cleanup_master()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(metrics, "_m", None)
    monkeypatch.setattr(metrics, "_known_models", None)
    yield
    metrics._m = None


@pytest.fixture
def mp(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[str]:  # noqa: ANN001
    """Multiprocess metrics, as the master sets them up before forking workers."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(metrics, "_known_models", None)
    path = metrics.setup_master(str(tmp_path))
    try:
        yield path
    finally:
        metrics.cleanup_master()
    assert not os.path.exists(path)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


# ---- multiprocess aggregation -----------------------------------------------------------------------------

def _worker_body(n: int) -> None:
    """What one worker does: n finished requests, one still in flight, one open stream."""
    for _ in range(n):
        metrics.request_started()
        metrics.request_finished(_ctx(), "/v1/chat/completions")
    metrics.request_started()
    metrics.stream_opened()
    metrics.upstream_attempt("t1", "ok")
    metrics.upstream_attempt("t1", "429")
    metrics.fallback("gpt-x", "5xx")
    metrics.ttft("gpt-x", "t1", 0.3)
    clock = metrics.EventClock()
    for t in (10.0, 10.002, 10.004, 10.5):
        clock.tick(t)
    clock.flush()
    metrics.holdback(300)
    metrics.flush()  # as a worker does at exit


def test_two_workers_sum_and_a_dead_worker_keeps_counters_not_gauges(mp: str) -> None:
    workers = [_FORK.Process(target=_worker_body, args=(n,)) for n in (3, 5)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(10)
        assert p.exitcode == 0
    metrics.worker_restarted()  # the master's own counters
    metrics.config_reload("ok")

    body = _render_elsewhere()
    req = dict(route="/v1/chat/completions", model="gpt-x", target="t1", status="200")
    assert _value(body, "fastgw_requests_total", **req) == 8
    assert _value(body, "fastgw_inflight_requests") == 2
    assert _value(body, "fastgw_active_streams") == 2
    assert _value(body, "fastgw_tokens_total", model="gpt-x", direction="prompt", kind="exact") == 88
    assert _value(body, "fastgw_tokens_total", model="gpt-x", direction="completion", kind="exact") == 56
    assert _value(body, "fastgw_policy_decisions_total", policy="pii", action="block", entity="credit_card") == 8
    assert _value(body, "fastgw_policy_decisions_total", policy="rbac", action="allow", entity="") == 8
    assert not any(k[0] == "fastgw_policy_decisions_total" and ("policy", "routing") in k[1]
                   for k in _samples(body))
    assert _value(body, "fastgw_upstream_attempts_total", target="t1", outcome="http_429") == 2
    assert _value(body, "fastgw_fallbacks_total", model="gpt-x", reason="http_5xx") == 2
    assert _value(body, "fastgw_ttft_seconds_count", model="gpt-x", target="t1") == 2
    assert _value(body, "fastgw_ttft_seconds_bucket", model="gpt-x", target="t1", le="0.25") == 0
    assert _value(body, "fastgw_ttft_seconds_bucket", model="gpt-x", target="t1", le="0.5") == 2
    assert _value(body, "fastgw_inter_event_seconds_count") == 6
    assert _value(body, "fastgw_inter_event_seconds_bucket", le="0.0025") == 4
    assert _value(body, "fastgw_inter_event_seconds_sum") == pytest.approx(2 * 0.5)
    assert _value(body, "fastgw_request_duration_seconds_count", route="/v1/chat/completions") == 8
    assert _value(body, "fastgw_holdback_bytes_count") == 2
    assert _value(body, "fastgw_worker_restarts_total") == 1
    assert _value(body, "fastgw_config_reloads_total", result="ok") == 1

    # The master reaps the first worker: its requests still count, its in-flight request and stream do not.
    metrics.worker_dead(workers[0].pid)
    body = _render_elsewhere()
    assert _value(body, "fastgw_requests_total", **req) == 8
    assert _value(body, "fastgw_tokens_total", model="gpt-x", direction="prompt", kind="exact") == 88
    assert _value(body, "fastgw_inter_event_seconds_count") == 6
    assert _value(body, "fastgw_inflight_requests") == 1
    assert _value(body, "fastgw_active_streams") == 1
    # A replacement worker continues the totals.
    p = _FORK.Process(target=_worker_body, args=(2,))
    p.start()
    p.join(10)
    body = metrics.render()[0]  # any process renders the same sums
    assert _value(body, "fastgw_requests_total", **req) == 10
    assert _value(body, "fastgw_inflight_requests") == 2


def test_render_in_a_worker_counts_itself_and_the_others(mp: str) -> None:
    first = _FORK.Process(target=_worker_body, args=(4,))
    first.start()
    first.join(10)
    r, w = _FORK.Pipe(duplex=False)

    def worker_that_scrapes() -> None:
        metrics.request_started()
        metrics.request_finished(_ctx(), "/v1/chat/completions")
        w.send_bytes(metrics.render()[0])

    p = _FORK.Process(target=worker_that_scrapes)
    p.start()
    body = r.recv_bytes()
    p.join(10)
    assert _value(body, "fastgw_requests_total", route="/v1/chat/completions", model="gpt-x", target="t1",
                  status="200") == 5
    assert metrics.render()[1].startswith("text/plain")


# ---- EventClock ---------------------------------------------------------------------------------------------

def _times() -> list[float]:
    rng = random.Random(7)
    gaps = [0.0, 0.0005, 0.001, 0.0009999, 0.5, 10.0, 10.5, 100.0]  # zero, exact bounds, +Inf
    gaps += [rng.expovariate(1 / 0.03) for _ in range(500)]
    t = [1000.0]
    for g in gaps:
        t.append(t[-1] + g)
    return t


def _observe_each(times: list[float]) -> None:
    h = (metrics._m or metrics._build()).inter_event
    for a, b in zip(times, times[1:]):
        h.observe(b - a)


def _clock(times: list[float]) -> None:
    clock = metrics.EventClock()
    for t in times:
        clock.tick(t)
    metrics.stream_opened()
    metrics.stream_closed(3.0, clock)
    metrics.stream_opened()
    metrics.stream_closed(3.0, clock)  # a second flush adds nothing
    metrics.flush()  # as a worker does at exit


def _reference(times: list[float]) -> None:
    _observe_each(times)
    metrics.stream_opened()
    metrics.stream_closed(3.0)
    metrics.stream_opened()
    metrics.stream_closed(3.0)
    metrics.flush()


def test_event_clock_flush_equals_observing_each_value_in_process(local: None) -> None:
    times = _times()
    _clock(times)
    flushed = metrics.render()[0]
    metrics._m = None
    _reference(times)
    observed = metrics.render()[0]
    assert b"fastgw_inter_event_seconds_bucket" in flushed
    assert _without_created(flushed) == _without_created(observed)


def test_event_clock_flush_equals_observing_each_value_multiprocess(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    times = _times()
    bodies = []
    for run in (_clock, _reference):
        (tmp_path / run.__name__).mkdir()
        metrics.setup_master(str(tmp_path / run.__name__))
        try:
            p = _FORK.Process(target=run, args=(times,))
            p.start()
            p.join(10)
            assert p.exitcode == 0
            bodies.append(metrics.render()[0])
        finally:
            metrics.cleanup_master()
    assert _value(bodies[0], "fastgw_inter_event_seconds_count") == len(times) - 1
    # The collector's family order follows the directory listing (arbitrary): compare the lines as a set.
    assert sorted(bodies[0].split(b"\n")) == sorted(bodies[1].split(b"\n"))


def test_event_clock_ticks_batches_and_start(local: None) -> None:
    clock = metrics.EventClock(start=5.0)
    clock.ticks(5.2, 3)  # three events in one read: gaps 0.2, 0, 0
    clock.ticks(5.3, 0)  # nothing
    clock.tick(5.3)
    clock.flush()
    body = metrics.render()[0]
    assert _value(body, "fastgw_inter_event_seconds_count") == 4
    assert _value(body, "fastgw_inter_event_seconds_bucket", le="0.0005") == 2
    assert _value(body, "fastgw_inter_event_seconds_sum") == pytest.approx(0.3)
    assert _value(body, "fastgw_inter_event_seconds_bucket", le="+Inf") == 4


def test_event_clock_holds_no_buckets_until_a_gap(local: None) -> None:
    """Issue 18: an open stream that has had one event holds no bucket list (~0.2 KB); a first read with several
    events, or a second event, counts as before."""
    clock = metrics.EventClock()
    clock.tick(1.0)
    assert clock.counts is None
    clock.flush()  # nothing counted: nothing to add
    assert _value(metrics.render()[0], "fastgw_inter_event_seconds_count") in (None, 0)
    batch = metrics.EventClock()
    batch.ticks(2.0, 3)  # the first read, three events: two gaps of 0
    assert batch.counts is not None and sum(batch.counts) == 2
    batch.flush()
    assert batch.counts is None
    batch.tick(2.5)
    batch.flush()
    body = metrics.render()[0]
    assert _value(body, "fastgw_inter_event_seconds_count") == 3
    assert _value(body, "fastgw_inter_event_seconds_sum") == pytest.approx(0.5)


# ---- labels, single process ---------------------------------------------------------------------------------

def test_without_a_multiprocess_dir_everything_works_in_process(local: None) -> None:
    assert metrics.multiprocess_dir() is None
    metrics.worker_dead(12345)  # nothing to do, no error
    metrics.request_started()
    metrics.request_finished(_ctx(status=0, usage={"input_tokens": 5, "output_tokens": 2, "estimated": True}),
                             "/v1/messages")
    body, ctype = metrics.render()
    assert ctype.startswith("text/plain")
    assert _value(body, "fastgw_requests_total", route="/v1/messages", model="gpt-x", target="t1",
                  status="500") == 1
    assert _value(body, "fastgw_tokens_total", model="gpt-x", direction="prompt", kind="estimated") == 5
    assert _value(body, "fastgw_tokens_total", model="gpt-x", direction="completion", kind="estimated") == 2
    assert _value(body, "fastgw_inflight_requests") == 0


def test_a_multiprocess_variable_without_a_directory_does_not_crash(local: None, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    metrics.request_started()
    metrics.request_finished(_ctx(), "/v1/chat/completions")
    assert _value(metrics.render()[0], "fastgw_requests_total", route="/v1/chat/completions", model="gpt-x",
                  target="t1", status="200") == 1


def test_label_values_stay_bounded(local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics.request_started()
    metrics.request_finished(_ctx(path="/v1/models/some-model", target=None), "/v1/models/some-model?x=1")
    metrics.known_models(["gpt-x", "alias-x"])
    metrics.request_started()
    metrics.request_finished(_ctx(model="made-up-by-client", target=None, status=404), "/v1/chat/completions")
    monkeypatch.setattr(metrics, "MAX_SERIES_PER_METRIC", 3)
    for i in range(5):
        metrics.upstream_attempt(f"t{i}", "timeout")
    body = metrics.render()[0]
    assert _value(body, "fastgw_requests_total", route="/v1/models/{model}", model="gpt-x", target="",
                  status="200") == 1
    assert _value(body, "fastgw_requests_total", route="/v1/chat/completions", model="other", target="",
                  status="404") == 1
    attempts = {k: v for k, v in _samples(body).items() if k[0] == "fastgw_upstream_attempts_total"}
    assert len(attempts) == 4  # three series, then "other"
    assert attempts[("fastgw_upstream_attempts_total", (("outcome", "other"), ("target", "other")))] == 2


def test_unvetted_models_are_capped(local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_UNVETTED_MODELS", 2)
    for name in ("a", "b", "c", "d", "a"):
        metrics.ttft(name, "t1", 0.1)
    body = metrics.render()[0]
    counts = {dict(k[1])["model"]: v for k, v in _samples(body).items() if k[0] == "fastgw_ttft_seconds_count"}
    assert counts == {"a": 2, "b": 1, "other": 2}


# ---- access log ---------------------------------------------------------------------------------------------

@pytest.fixture
def access() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    accesslog.configure("info", "json", stream=buf)
    yield buf
    accesslog.configure("info", "json", stream=io.StringIO())


def test_access_line_is_json_with_the_fields_and_no_secrets(access: io.StringIO) -> None:
    ctx = _ctx(usage={"prompt_tokens": 11, "completion_tokens": 7, "estimated": True, "partial": True})
    ctx.first_byte = ctx.started + 0.25
    ctx.error = "output_blocked"
    accesslog.log_request(ctx, f"/v1/chat/completions?api_key={SECRET_KEY}", nbytes=1234)
    out = access.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1
    rec = orjson.loads(out)
    assert set(rec) == {"ts", "request_id", "principal", "client", "method", "route", "model", "target", "stream",
                        "status", "ttft_ms", "duration_ms", "bytes", "tokens", "policy", "retries", "error"}
    assert rec["ts"].endswith("Z") and len(rec["ts"]) == len("2025-01-31T12:00:00.123Z")
    assert rec["request_id"] == "req_abc" and rec["principal"] == "team-a" and rec["method"] == "POST"
    assert rec["route"] == "/v1/chat/completions"
    assert (rec["model"], rec["target"], rec["status"], rec["bytes"]) == ("gpt-x", "t1", 200, 1234)
    assert rec["ttft_ms"] == pytest.approx(250.0)
    assert rec["duration_ms"] >= 0
    assert rec["tokens"] == {"prompt": 11, "completion": 7, "estimated": True, "partial": True}
    assert rec["policy"] == {"rbac": "allow", "pii": "block"}  # the most severe outcome per policy
    assert rec["retries"] == 1
    assert rec["error"] == "output_blocked"
    for secret in (SECRET_KEY, "SECRETKEY", PROMPT, "4111", ANSWER, "authorization", "Bearer"):
        assert secret not in out


def test_access_text_format_and_off(access: io.StringIO) -> None:
    accesslog.configure("info", "text", stream=access)
    accesslog.log_request(_ctx(usage={}), "/v1/chat/completions")
    line = access.getvalue()
    assert "req_abc team-a POST /v1/chat/completions 200 model=gpt-x target=t1" in line
    assert "policy=rbac:allow,pii:block" in line
    assert SECRET_KEY not in line and PROMPT not in line and ANSWER not in line
    accesslog.configure("off", "json", stream=access)
    accesslog.log_request(_ctx(), "/v1/chat/completions")
    assert access.getvalue() == line
    with pytest.raises(ValueError):
        accesslog.configure("info", "xml")


def test_access_line_reaches_other_handlers_too(access: io.StringIO) -> None:
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    extra = Keep()
    logging.getLogger(accesslog.LOGGER_NAME).addHandler(extra)
    try:
        accesslog.log_request(_ctx(), "/v1/chat/completions", nbytes=5)
    finally:
        logging.getLogger(accesslog.LOGGER_NAME).removeHandler(extra)
    assert len(seen) == 1 and orjson.loads(seen[0])["bytes"] == 5
    assert access.getvalue() == seen[0] + "\n"


def test_access_timestamp_is_utc_with_milliseconds() -> None:
    rec = accesslog.access_record(_ctx(), "/v1/chat/completions", wall=1738324800.5)
    assert rec["ts"] == "2025-01-31T12:00:00.500Z"
    rec = accesslog.access_record(_ctx(), "/v1/chat/completions", wall=1738324801.0429)
    assert rec["ts"] == "2025-01-31T12:00:01.042Z"
    assert not math.isnan(rec["duration_ms"])


def test_per_request_updates_are_added_up_and_written_once_per_flush(local: None, monkeypatch) -> None:  # noqa: ANN001
    m = metrics._m or metrics._build()
    writes: list[float] = []
    child = m.requests.labels("/v1/chat/completions", "gpt-x", "t1", "200")
    monkeypatch.setattr(child, "inc", lambda amount=1.0: writes.append(amount))
    m.c_requests[("/v1/chat/completions", "gpt-x", "t1", "200")] = metrics._Pending(child)
    metrics.flush()  # the next deadline is a full interval away
    for _ in range(100):
        metrics.request_started()
        metrics.request_finished(_ctx(), "/v1/chat/completions")
    assert writes == []  # nothing written per request
    metrics.flush()
    assert writes == [100.0]  # one write for the whole interval
    metrics._flush_at[0] = 0.0  # the interval is over: the next request finishing writes
    metrics.request_started()
    metrics.request_finished(_ctx(), "/v1/chat/completions")
    assert writes == [100.0, 1.0]


def test_access_lines_go_out_in_one_write_per_flush_delay(monkeypatch) -> None:  # noqa: ANN001
    from fastgw.api.limits import ACCESS_LOG_FLUSH_DELAY

    class Counting(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            Counting.writes += 1
            return super().write(s)

    buf = Counting()
    accesslog.configure("info", "json", stream=buf)
    # Only our handler (pytest's log capture may have attached its own, which takes the logging path).
    import logging
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(10):  # ten requests finishing in several loop iterations
            accesslog.log_request(_ctx(), "/v1/chat/completions", i)
            await asyncio.sleep(0)
        assert buf.getvalue() == ""  # not yet: they wait for the batch's timer
        while not buf.getvalue() and loop.time() - t0 < 5:
            await asyncio.sleep(0.001)
        waited = loop.time() - t0
        assert Counting.writes == 1 and len(buf.getvalue().splitlines()) == 10
        assert ACCESS_LOG_FLUSH_DELAY * 0.5 <= waited < ACCESS_LOG_FLUSH_DELAY + 1.0  # one timer, not per line

    try:
        asyncio.run(main())
        accesslog.log_request(_ctx(), "/v1/chat/completions", 0)  # no loop: written at once
        assert Counting.writes == 2 and len(buf.getvalue().splitlines()) == 11
    finally:
        accesslog.configure("info", "json", stream=io.StringIO())


def test_a_full_batch_of_access_lines_is_written_at_once_in_pipe_buf_writes(monkeypatch) -> None:  # noqa: ANN001
    from fastgw.api.limits import ACCESS_LOG_BATCH_BYTES, ACCESS_LOG_BATCH_LINES

    class Writes(io.StringIO):
        sizes: list[int] = []

        def write(self, s: str) -> int:
            Writes.sizes.append(len(s.encode()))
            return super().write(s)

    buf = Writes()
    accesslog.configure("info", "json", stream=buf)
    import logging
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])

    async def main() -> None:
        for i in range(ACCESS_LOG_BATCH_LINES - 1):
            accesslog.log_request(_ctx("modèle-é"), "/v1/chat/completions", i)  # UTF-8: bytes, not characters
        assert Writes.sizes == []  # waiting for the timer
        accesslog.log_request(_ctx("modèle-é"), "/v1/chat/completions", 0)  # the batch is full: written now
        lines = buf.getvalue().splitlines(keepends=True)
        assert len(lines) == ACCESS_LOG_BATCH_LINES and sum(Writes.sizes) == len(buf.getvalue().encode())
        one = len(lines[0].encode())
        # Writes of whole lines, as many as PIPE_BUF holds: each write atomic on a pipe shared by the workers.
        assert len(Writes.sizes) > 1 and all(one <= n <= ACCESS_LOG_BATCH_BYTES for n in Writes.sizes)
        assert all(n + one > ACCESS_LOG_BATCH_BYTES for n in Writes.sizes[:-1])
        assert accesslog._st.timer is None and not accesslog._pending
        accesslog.log_request(_ctx("modèle-é"), "/v1/chat/completions", 0)
        accesslog.configure("info", "json", stream=io.StringIO())  # a new stream: waiting lines go to the old one
        assert len(buf.getvalue().splitlines()) == ACCESS_LOG_BATCH_LINES + 1

    try:
        asyncio.run(main())
    finally:
        accesslog.configure("info", "json", stream=io.StringIO())


def test_an_observation_lands_in_the_bucket_bisect_gives(local: None) -> None:
    """`_observe`'s walk of the bounds is bisect_left's answer: the first bound >= the value (le), at every edge."""
    import bisect
    o = metrics._Obs((metrics._m or metrics._build()).request_duration)
    rng = random.Random(3)
    bounds = o.bounds
    values = [0.0, -1.0, math.inf, math.nan, *bounds[:-1], *(b * (1 + 1e-12) for b in bounds[:-1]),
              *(b * (1 - 1e-12) for b in bounds[:-1]), *(rng.expovariate(1.0) for _ in range(200))]
    for v in values:
        before = list(o.counts)
        metrics._observe(o, v)
        want = bisect.bisect_left(bounds, v)
        assert [a - b for a, b in zip(o.counts, before)] == [int(k == want) for k in range(len(before))], v
    metrics._queued_obs.clear()
