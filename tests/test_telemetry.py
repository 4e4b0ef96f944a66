"""OpenTelemetry, end to end: a real gateway process exports over OTLP/HTTP to a real receiver started here.

The receiver (tests/support/otlp_receiver.py) decodes the exporter's own protobuf messages. Checked: the span
tree (a client's traceparent continued, the server span parent of one client span per upstream attempt, the
upstream handed a traceparent of the same trace), the GenAI attributes and their values, the GenAI metrics
(names, units, attributes, bucket boundaries, token counts), sampling, the environment variables, the flush at
a worker's graceful exit, and that without a `telemetry:` section nothing is exported and the SDK is never
loaded.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.otlp_receiver import OtlpReceiver, attrs
from tests.support.procs import REPO_ROOT, Gateway, free_port, gateway_config, start_gateway

#: Export quickly: the SDK reads these itself (milliseconds).
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "200"}
#: Never export on a timer during a test: only the worker's exit can deliver anything.
SLOW_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "600000", "OTEL_METRIC_EXPORT_INTERVAL": "600000"}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind

SEMCONV_BUCKETS = {
    "gen_ai.client.operation.duration": [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                                         40.96, 81.92],
    "gen_ai.server.request.duration": [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                                       40.96, 81.92],
    "gen_ai.client.token.usage": [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
                                  67108864],
    "gen_ai.server.time_to_first_token": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                                          5.0, 7.5, 10.0],
    "gen_ai.server.time_per_output_token": [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
}
UNITS = {"gen_ai.client.operation.duration": "s", "gen_ai.server.request.duration": "s",
         "gen_ai.client.token.usage": "{token}", "gen_ai.server.time_to_first_token": "s",
         "gen_ai.server.time_per_output_token": "s"}


def _config(upstream_url: str, telemetry: dict | None) -> dict:
    cfg = gateway_config(upstream_url)
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: a connect error
    cfg["providers"]["targets"].append({"id": "dead", "provider": "openai", "model": "gpt-dead", "base_url": dead})
    cfg["routing"] = [{"model": "fallback-model", "targets": ["dead", "up"], "retry": {"attempts": 1}}]
    if telemetry is not None:
        cfg["telemetry"] = telemetry
    return cfg


def _post(gw: Gateway, body: dict, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(gw.url + "/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _chat(model: str, **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


def _traceparent(span: str = CLIENT_SPAN, flags: str = "01") -> str:
    return f"00-{CLIENT_TRACE}-{span}-{flags}"


def _trace_spans(rx: OtlpReceiver, trace_hex: str) -> list:
    return [s for _, s in rx.spans() if s.trace_id.hex() == trace_hex]


def _latest_points(rx: OtlpReceiver, name: str) -> list:
    """The data points of `name` in the latest export that has it (cumulative: the latest holds everything)."""
    found: list = []
    for _, m in rx.metrics():
        if m.name == name:
            found = list(m.histogram.data_points)
    return found


def _metric(rx: OtlpReceiver, name: str):
    last = None
    for _, m in rx.metrics():
        if m.name == name:
            last = m
    return last


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver()
    try:
        yield rx
    finally:
        rx.stop()


@pytest.fixture(scope="module")
def traced(upstream, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with telemetry on, to the receiver, exporting gzip with a header and a service name."""
    cfg = _config(upstream.url, {"otlp_endpoint": receiver.url, "traces": True, "metrics": True,
                                 "sample_ratio": 1.0})
    env = {**FAST_EXPORT, "OTEL_SERVICE_NAME": "gw-under-test", "OTEL_RESOURCE_ATTRIBUTES": "deployment.env=test",
           "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=s3cret", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
    gw = start_gateway(cfg, tmp_path_factory.mktemp("otel"), env=env)
    try:
        yield gw
    finally:
        gw.stop()


def test_a_client_traceparent_is_continued_and_handed_to_the_upstream(traced, upstream, receiver):
    status, raw = _post(traced, _chat("gpt-test"), {"traceparent": _traceparent(), "tracestate": "vendor=abc"})
    assert status == 200, raw
    answer = json.loads(raw)
    assert receiver.wait(lambda: len(_trace_spans(receiver, CLIENT_TRACE)) >= 2)
    spans = _trace_spans(receiver, CLIENT_TRACE)
    server = [s for s in spans if s.kind == SERVER]
    client = [s for s in spans if s.kind == CLIENT]
    assert len(server) == 1 and len(client) == 1, spans
    server, client = server[0], client[0]
    assert server.parent_span_id.hex() == CLIENT_SPAN  # the client's span is the server span's parent
    assert client.parent_span_id == server.span_id
    assert server.name == "chat gpt-test" and client.name == "chat gpt-test"
    assert server.start_time_unix_nano <= client.start_time_unix_nano <= client.end_time_unix_nano \
        <= server.end_time_unix_nano
    assert server.trace_state == "vendor=abc"
    # The upstream got the trace: same trace id, the client span's id as its parent, sampled; and the tracestate.
    seen = upstream.last("/v1/chat/completions")["headers"]
    assert seen["traceparent"] == f"00-{CLIENT_TRACE}-{client.span_id.hex()}-01"
    assert seen["tracestate"] == "vendor=abc"
    sa, ca = attrs(server.attributes), attrs(client.attributes)
    usage = answer["usage"]
    assert sa["gen_ai.operation.name"] == "chat" and sa["gen_ai.provider.name"] == "openai"
    assert sa["gen_ai.request.model"] == "gpt-test" and sa["gen_ai.response.model"] == answer["model"]
    assert sa["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert sa["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert sa["http.response.status_code"] == 200 and "error.type" not in sa
    assert ca["server.address"] == "127.0.0.1" and ca["server.port"] == upstream.port
    assert ca["gen_ai.request.model"] == "gpt-test" and ca["gen_ai.response.model"] == answer["model"]
    assert ca["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert ca["http.response.status_code"] == 200 and ca["fastgw.target"] == "up"
    resource = next(res for res, s in receiver.spans() if s.trace_id.hex() == CLIENT_TRACE)
    assert resource["service.name"] == "gw-under-test" and resource["deployment.env"] == "test"
    assert resource["service.instance.id"]
    # The exporter sent what the environment asked: the header, gzip bodies (decoded by the receiver).
    headers = [h for h, _ in receiver.requests("/v1/traces")]
    assert all(h.get("x-collector-token") == "s3cret" and h.get("content-encoding") == "gzip" for h in headers)


def test_a_fallback_makes_two_client_spans_under_one_server_span(traced, upstream, receiver):
    status, raw = _post(traced, _chat("fallback-model"))
    assert status == 200, raw
    seen = upstream.last("/v1/chat/completions")["headers"]["traceparent"]
    trace = seen.split("-")[1]
    assert receiver.wait(lambda: len(_trace_spans(receiver, trace)) >= 3)
    spans = _trace_spans(receiver, trace)
    (server,) = [s for s in spans if s.kind == SERVER]
    clients = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(clients) == 2 and all(c.parent_span_id == server.span_id for c in clients)
    assert server.parent_span_id == b""  # no client traceparent: the server span is the root
    dead, up = (attrs(c.attributes) for c in clients)
    assert dead["fastgw.target"] == "dead" and dead["error.type"] == "connect_error"
    assert dead["gen_ai.request.model"] == "gpt-dead" and clients[0].status.code == 2  # STATUS_CODE_ERROR
    assert up["fastgw.target"] == "up" and "error.type" not in up and up["http.response.status_code"] == 200
    assert seen == f"00-{trace}-{clients[1].span_id.hex()}-01"
    sa = attrs(server.attributes)
    assert server.name == "chat fallback-model" and sa["gen_ai.request.model"] == "fallback-model"
    assert sa["fastgw.target"] == "up" and "error.type" not in sa


def test_failures_carry_error_type(traced, receiver):
    status, _ = _post(traced, _chat("no-such-model"), {"traceparent": _traceparent("00000000000000aa")})
    assert status == 404
    status, _ = _post(traced, _chat("fault-500"), {"traceparent": _traceparent("00000000000000bb")})
    assert status == 500

    def by_parent(parent: str) -> list:
        return [s for s in _trace_spans(receiver, CLIENT_TRACE) if s.parent_span_id.hex() == parent]

    assert receiver.wait(lambda: by_parent("00000000000000aa") and by_parent("00000000000000bb"))
    (missing,) = by_parent("00000000000000aa")
    a = attrs(missing.attributes)
    assert a["error.type"] == "model_not_found" and a["http.response.status_code"] == 404
    assert not [s for s in _trace_spans(receiver, CLIENT_TRACE) if s.parent_span_id == missing.span_id]
    (failed,) = by_parent("00000000000000bb")
    assert failed.status.code == 2 and attrs(failed.attributes)["http.response.status_code"] == 500
    attempts = [s for s in _trace_spans(receiver, CLIENT_TRACE) if s.parent_span_id == failed.span_id]
    assert attempts and all(attrs(s.attributes)["error.type"] == "500" for s in attempts)


def test_the_in_process_mock_has_a_client_span_without_an_address(traced, receiver):
    status, _ = _post(traced, _chat("mock-1"), {"traceparent": _traceparent("00000000000000cc")})
    assert status == 200
    assert receiver.wait(lambda: any(s.kind == CLIENT and attrs(s.attributes).get("fastgw.target") == "mock"
                                     for s in _trace_spans(receiver, CLIENT_TRACE)))
    (span,) = [s for s in _trace_spans(receiver, CLIENT_TRACE)
               if s.kind == CLIENT and attrs(s.attributes).get("fastgw.target") == "mock"]
    a = attrs(span.attributes)
    assert a["gen_ai.provider.name"] == "fastgw.mock" and "server.address" not in a


def test_genai_metrics_with_semconv_names_units_buckets_and_token_counts(traced, upstream, receiver):
    body = _chat("gpt-test", stream=True, stream_options={"include_usage": True})
    # Self-contained (this module's other tests may run on another xdist worker): a model the config does not
    # serve, a target that refuses connections, and three answers of its own.
    assert _post(traced, _chat("no-such-model"))[0] == 404
    assert _post(traced, _chat("gpt-dead"))[0] >= 500
    for _ in range(3):
        status, raw = _post(traced, body)
        assert status == 200
    events = [json.loads(line[6:]) for line in raw.decode().splitlines()
              if line.startswith("data: {")]
    usage = next(e["usage"] for e in events if e.get("usage"))
    assert receiver.wait(lambda: all(_metric(receiver, n) is not None for n in UNITS))
    for name, unit in UNITS.items():
        m = _metric(receiver, name)
        assert m.unit == unit, name
        for p in m.histogram.data_points:
            assert list(p.explicit_bounds) == SEMCONV_BUCKETS[name], name
    # Tokens as the provider counted them, by type; attributes of the target the gateway called.
    tokens = {}
    for p in _latest_points(receiver, "gen_ai.client.token.usage"):
        a = attrs(p.attributes)
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] in ("openai", "fastgw.mock")
        if a["gen_ai.request.model"] == "gpt-test":
            assert a["server.address"] == "127.0.0.1" and a["server.port"] == upstream.port
            tokens.setdefault(a["gen_ai.token.type"], []).append(p)
    assert set(tokens) == {"input", "output"}
    # Every gpt-test answer of this module asked the same question and got the same answer, streamed or not
    # (which differ in gen_ai.response.model: only whole answers are read for it): the same counts each time.
    n_in, n_out = (sum(p.count for p in tokens[t]) for t in ("input", "output"))
    assert n_in == n_out >= 3
    assert sum(p.sum for p in tokens["input"]) == n_in * usage["prompt_tokens"]
    assert sum(p.sum for p in tokens["output"]) == n_out * usage["completion_tokens"]
    # The server-side timings: time to first token and per output token for the streamed answer only.
    ttft = [attrs(p.attributes) for p in _latest_points(receiver, "gen_ai.server.time_to_first_token")]
    assert {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-test",
            "gen_ai.provider.name": "openai"}.items() <= ttft[0].items()
    assert sum(p.count for p in _latest_points(receiver, "gen_ai.server.time_per_output_token")) >= 1
    # Failed requests and attempts carry error.type; a model the config does not serve counts as "other".
    server = [attrs(p.attributes) for p in _latest_points(receiver, "gen_ai.server.request.duration")]
    assert {"gen_ai.request.model": "other", "error.type": "model_not_found"}.items() <= next(
        a for a in server if a.get("error.type") == "model_not_found").items()
    client = [attrs(p.attributes) for p in _latest_points(receiver, "gen_ai.client.operation.duration")]
    assert any(a.get("error.type") == "connect_error" and a["gen_ai.request.model"] == "gpt-dead" for a in client)


def test_sample_ratio_zero_and_the_flush_at_exit(upstream, tmp_path):
    """sample_ratio 0 records no new trace, but a client's sampled trace is continued (parent-based); the
    per-signal environment variables win over `otlp_endpoint`; a worker's graceful exit exports what it held."""
    rx = OtlpReceiver()
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        cfg = _config(upstream.url, {"otlp_endpoint": dead, "sample_ratio": 0.0})
        env = {**SLOW_EXPORT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.url + "/v1/traces",
               "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": rx.url + "/v1/metrics"}
        gw = start_gateway(cfg, tmp_path, env=env)
        try:
            assert _post(gw, _chat("gpt-test"))[0] == 200
            unsampled = upstream.last("/v1/chat/completions")["headers"]["traceparent"]
            assert unsampled.endswith("-00")  # passed on as not sampled
            assert _post(gw, _chat("gpt-test"), {"traceparent": _traceparent("00000000000000dd")})[0] == 200
            assert upstream.last("/v1/chat/completions")["headers"]["traceparent"].endswith("-01")
            assert not rx.received  # nothing is exported on a timer yet
        finally:
            assert gw.stop() == 0
        assert rx.requests("/v1/metrics"), "the worker's exit flushed the metrics"
        trace_ids = {s.trace_id.hex() for _, s in rx.spans()}
        assert trace_ids == {CLIENT_TRACE}, "only the client's sampled trace has spans"
        assert len(rx.spans()) == 2
        points = _latest_points(rx, "gen_ai.server.request.duration")
        assert sum(p.count for p in points) == 2
    finally:
        rx.stop()


def test_a_collector_that_hangs_does_not_hold_a_worker_s_exit(upstream, tmp_path):
    """The exit's export is bounded: a collector that accepts and never answers would hold the SDK's flush for
    its exporter's timeout and retries (past the stop's SIGKILL), the worker still exits 0."""
    with socket.socket() as hang:
        hang.bind(("127.0.0.1", 0))
        hang.listen(16)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}"
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_TIMEOUT": "30000"}
        gw = start_gateway(_config(upstream.url, {"otlp_endpoint": url}), tmp_path, env=env)
        assert _post(gw, _chat("gpt-test"))[0] == 200
        assert gw.stop() == 0, gw.stderr_text()
        assert "the last export did not finish" in gw.stderr_text()


def test_off_by_default_exports_nothing_and_never_loads_the_sdk(upstream, tmp_path):
    rx = OtlpReceiver()
    try:
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url}
        gw = start_gateway(_config(upstream.url, None), tmp_path, env=env)
        try:
            assert _post(gw, _chat("gpt-test"), {"traceparent": _traceparent()})[0] == 200
            assert "traceparent" not in upstream.last("/v1/chat/completions")["headers"]
            assert not _worker_maps_mention(gw, "opentelemetry", "_upb")
        finally:
            assert gw.stop() == 0
        assert rx.received == []
    finally:
        rx.stop()


def test_the_worker_loads_the_sdk_when_on(traced):
    """The counterpart of the check above: the maps of a traced worker show the exporter's protobuf module."""
    assert _worker_maps_mention(traced, "opentelemetry", "_upb")


def test_importing_the_gateway_imports_no_opentelemetry():
    code = ("import sys, fastgw.app, fastgw.cli, fastgw.master, fastgw.worker, fastgw.telemetry; "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True)
    assert out.stdout.strip() == "[]"


def _worker_maps_mention(gw: Gateway, *needles: str) -> bool:
    """Whether a worker of `gw` has a shared object whose path holds one of `needles` mapped (Linux)."""
    workers = [int(p) for p in Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()]
    assert workers
    maps = Path(f"/proc/{workers[0]}/maps").read_text()
    return any(n in maps for n in needles)


# ---- the config section, the environment (in process) ------------------------------------------------------

BASE = "pack: {name: t}\nproviders:\n  targets:\n    - {id: m, provider: mock, model: m}\n"


def _load(tmp_path: Path, extra: str):
    from fastgw.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text(BASE + extra)
    return load_config(p)[0]


def test_the_section_is_off_when_absent_and_takes_the_issue_s_form(tmp_path):
    assert _load(tmp_path, "").telemetry is None
    t = _load(tmp_path, "telemetry: {otlp_endpoint: http://127.0.0.1:4318, traces: true, metrics: true, "
                        "sample_ratio: 1.0}\n").telemetry
    assert (t.otlp_endpoint, t.traces, t.metrics, t.sample_ratio) == ("http://127.0.0.1:4318", True, True, 1.0)
    t = _load(tmp_path, "telemetry: {}\n").telemetry
    assert (t.otlp_endpoint, t.traces, t.metrics, t.sample_ratio) == (None, True, True, 1.0)


@pytest.mark.parametrize("extra, where, words", [
    ("telemetry:\n  otlp_endpoint: 127.0.0.1:4318\n", "c.yaml:6:18: $.telemetry.otlp_endpoint", "http://"),
    ("telemetry:\n  sample_ratio: 1.5\n", "c.yaml:6:17: $.telemetry.sample_ratio", "<= 1"),
    ("telemetry:\n  sample_ratio: -0.1\n", "c.yaml:6:17: $.telemetry.sample_ratio", ">= 0"),
    ("telemetry:\n  traces: false\n  metrics: false\n", "c.yaml:6:3: $.telemetry", "remove the section"),
    ("telemetry:\n  endpoint: http://x\n", "c.yaml:6:3: $.telemetry.endpoint", "unknown key"),
])
def test_section_errors_name_file_line_column_and_key(tmp_path, extra, where, words):
    from fastgw.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, extra)
    assert where in str(exc.value) and words in str(exc.value), str(exc.value)


def test_endpoint_precedence(monkeypatch):
    from fastgw.telemetry_sdk import _endpoint

    env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318")
    # The config's base URL wins over the generic variable...
    assert _endpoint("http://cfg:4318/", env, "traces") == "http://cfg:4318/v1/traces"
    # ...without one the exporter reads the environment itself (the generic variable, else localhost)...
    assert _endpoint(None, env, "traces") is None
    # ...and the per-signal variable wins over both (the exporter reads it).
    monkeypatch.setenv(env, "http://signal:4318/v1/traces")
    assert _endpoint("http://cfg:4318", env, "traces") is None


def test_resource_names_fastgw_unless_the_environment_does(monkeypatch):
    from fastgw.telemetry_sdk import _resource

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    a = _resource(3).attributes
    assert a["service.name"] == "fastgw" and a["fastgw.worker"] == 3 and a["process.pid"] == os.getpid()
    assert a["service.instance.id"]  # the SDK's, one per process (so per worker: made after fork)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,service.instance.id=i-1")
    a = _resource(0).attributes
    assert a["service.name"] == "from-attrs" and a["service.instance.id"] == "i-1"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-name")
    assert _resource(0).attributes["service.name"] == "from-name"


def test_every_provider_and_endpoint_has_a_semconv_name():
    from fastgw.providers.base import Endpoint
    from fastgw.providers.registry import PROVIDERS
    from fastgw.telemetry_sdk import OPERATIONS, PROVIDER_NAMES

    assert set(PROVIDER_NAMES) == set(PROVIDERS)
    assert set(OPERATIONS) == set(Endpoint.ALL)
    assert PROVIDER_NAMES["gemini"] == "gcp.gemini" and PROVIDER_NAMES["bedrock"] == "aws.bedrock"
