"""`python -m bench.telemetry_cost [--n 2000]`: what OpenTelemetry costs per request, split where it is paid.

Unlike the rest of `bench`, this module imports fastgw: it times `fastgw.telemetry_sdk.Recorder`'s hooks
in-process on one non-streamed chat request with one attempt (a server and a client span, four metric points),
and the SDK's own OTLP encoding of the spans they queue (what the BatchSpanProcessor's thread does before it
sends). Off, a call site is `if telemetry.ON:` (timed too). No exporter is reached: the endpoints point at a
closed port and the export intervals are long, so nothing is sent while it runs. Best of 5 repeats.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import timeit

os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "3600000")
os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", "100000000")
# A full batch would wake the export thread mid-measurement: batches as large as the queue.
os.environ.setdefault("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100000000")

import msgspec  # noqa: E402

from fastgw import telemetry  # noqa: E402
from fastgw.attempt import Answer, Final  # noqa: E402
from fastgw.config import Config, Telemetry  # noqa: E402
from fastgw.policy.base import RequestContext  # noqa: E402
from fastgw.providers.base import TargetRuntime, UpstreamRequest  # noqa: E402
from fastgw.routing import Verdict  # noqa: E402

N = 2000
_BODY = (b'{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
         b'"message":{"role":"assistant","content":"Hello! How can I help?"},"finish_reason":"stop"}],'
         b'"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}')


def _best(fn, n: int) -> float:
    """µs per call, best of 5 repeats."""
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def _recorder(sample_ratio: float, traces: bool = True, metrics: bool = True):
    from fastgw.telemetry_sdk import Recorder

    cfg = msgspec.convert({"pack": {"name": "b"}, "providers": {"targets": [
        {"id": "up", "provider": "openai", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1"}]}}, Config)
    target = TargetRuntime(id="up", provider="openai", model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    rec = Recorder(Telemetry(otlp_endpoint="http://127.0.0.1:9", traces=traces, metrics=metrics,
                             sample_ratio=sample_ratio), cfg, [target], 0)
    request = UpstreamRequest("https", "api.openai.com", 443, "POST", "/v1/chat/completions",
                              [(b"authorization", b"Bearer sk-x"), (b"content-type", b"application/json")], b"{}")
    final = Final(Verdict.SUCCESS, answer=Answer(200, [], _BODY))
    calls = [0]

    def one() -> None:
        calls[0] += 1
        ctx = RequestContext("req_1", "POST", "/v1/chat/completions", [])
        ctx.endpoint, ctx.model = "chat/completions", "gpt-4o-mini"
        rec.attempt_started(ctx, target, request)
        ctx.target = "up"
        rec.attempt_ended(ctx, final)
        ctx.status, ctx.usage = 200, {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
        rec.request_finished(ctx, "/v1/chat/completions")

    return rec, one, calls


def _off() -> float:
    on = telemetry.ON

    def three_sites() -> None:  # the three call sites of one request with one attempt
        if telemetry.ON:
            pass
        if telemetry.ON:
            pass
        if telemetry.ON:
            pass

    assert not on
    return _best(three_sites, 100 * N)


def _import_ms() -> float:
    code = ("import time, fastgw.app, fastgw.worker; t = time.perf_counter(); import fastgw.telemetry_sdk; "
            "print((time.perf_counter() - t) * 1000)")
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    return min(runs)


def main() -> None:
    global N
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=N, help="requests per repeat [2000]")
    N = p.parse_args().n
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    print(f"off: the three `if telemetry.ON:` checks of a request: {_off():.3f} µs")
    print(f"importing the SDK and exporters (once per worker, when on): {_import_ms():.0f} ms")
    for label, kw in (("on, traces 1.0 + metrics", dict(sample_ratio=1.0)),
                      ("on, traces 0.1 + metrics", dict(sample_ratio=0.1)),
                      ("on, metrics only", dict(sample_ratio=1.0, traces=False)),
                      ("on, traces 1.0 only", dict(sample_ratio=1.0, metrics=False))):
        rec, one, calls = _recorder(**kw)
        per_request = _best(one, N)
        line = f"{label}: request path {per_request:.1f} µs/request"
        spans = rec._spans
        if spans is not None:
            # The SDK's queue (private: read here only to time what its thread would encode).
            queued = list(spans._batch_processor._queue)[:1024]
            if queued:
                enc = min(timeit.repeat(lambda: encode_spans(queued).SerializePartialToString(), number=1,
                                        repeat=5)) / len(queued) * 1e6
                share = len(spans._batch_processor._queue) / calls[0]  # spans per request made
                line += (f"; export thread: {enc:.1f} µs/span to encode (OTLP protobuf), "
                         f"{enc * share:.1f} µs/request at {share:.2f} spans/request")
        print(line, flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # not the SDK's exit hooks: they would try to export to the closed port
