"""The OpenTelemetry SDK side of `fastgw.telemetry`: one worker's exporters, spans and GenAI metrics.

Imported only by `fastgw.telemetry.setup`, in a worker after fork, when the config turns telemetry on. The
SDK's BatchSpanProcessor and PeriodicExportingMetricReader export over OTLP/HTTP from their own threads; the
request path only queues a finished span or adds a point to a histogram.

Spans are made whole at the end of a request, as `ReadableSpan`s handed to the BatchSpanProcessor (the type
its `on_end` takes): by then every start, end and attribute is known, from the request context and the notes
the hooks took. Measured here: 5.5 µs for a server and a client span made that way, 35 µs through
`Tracer.start_span`/`end` (a lock per span and per attribute set, limits, context objects), which is for code
that does not know the end yet. Ids come from the SDK's RandomIdGenerator, sampling from its
ParentBased(TraceIdRatioBased) sampler, and a client's traceparent is read by its W3C propagator.

Names follow the GenAI semantic conventions: span "{gen_ai.operation.name} {gen_ai.request.model}", the
histograms `gen_ai.client.operation.duration` and `gen_ai.client.token.usage` (the gateway as a client of
its upstreams: per attempt, with the target's model and address) and `gen_ai.server.request.duration`,
`gen_ai.server.time_to_first_token`, `gen_ai.server.time_per_output_token` (the gateway as the server its
clients call: per request, with the client's model), with the bucket boundaries the conventions recommend.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import msgspec
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
                                                     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from fastgw import __version__
from fastgw.attempt import Final, Retry, Streamed
from fastgw.config import Config, Telemetry
from fastgw.policy.base import RequestContext
from fastgw.proto.limits import MAX_LOGGED_STRING
from fastgw.providers.base import TargetRuntime, UpstreamRequest

__all__ = ["Recorder", "Trace", "OPERATIONS", "PROVIDER_NAMES", "DURATION_BUCKETS", "TOKEN_BUCKETS",
           "TTFT_BUCKETS", "TPOT_BUCKETS"]

log = logging.getLogger("fastgw.telemetry")

#: Seconds a worker's graceful exit waits for its last spans and metric points to be exported (a collector
#: that is down must not hold the exit for the exporter's 10 s timeout times its retries).
SHUTDOWN_TIMEOUT = 5.0

#: `gen_ai.operation.name` by endpoint (the Responses and Messages APIs are chats).
OPERATIONS = {"chat/completions": "chat", "completions": "text_completion", "embeddings": "embeddings",
              "responses": "chat", "messages": "chat"}
#: `gen_ai.provider.name` by target provider: the conventions' well-known values where there is one.
PROVIDER_NAMES = {"openai": "openai", "azure": "azure.ai.openai", "groq": "groq", "mistral": "mistral_ai",
                  "together": "together_ai", "vllm": "vllm", "anthropic": "anthropic", "gemini": "gcp.gemini",
                  "ollama": "ollama", "cohere": "cohere", "bedrock": "aws.bedrock", "mock": "fastgw.mock"}

# The bucket boundaries the GenAI semantic conventions recommend for each histogram.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

#: Model names in metric attributes that the config does not serve count under this one (a client's string
#: must not make a new series per typo); spans keep the client's string, capped.
OTHER_MODEL = "other"

_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class _Model(msgspec.Struct):
    model: str | None = None


# Only `model` is decoded from a whole answer (msgspec skips the rest without building it).
_MODEL = msgspec.json.Decoder(_Model)


class _Attempt:
    """What one upstream attempt leaves for its client span and its duration point."""

    __slots__ = ("target", "span_id", "started", "ended", "address", "port", "status", "error", "response_model")

    def __init__(self, target: TargetRuntime, started: float) -> None:
        self.target = target
        self.span_id = 0
        self.started = started
        self.ended: float | None = None
        self.address: str | None = None
        self.port = 0
        self.status: int | None = None
        self.error: str | None = None
        self.response_model: str | None = None


class Trace:
    """One request's trace (on `ctx.trace`): its ids, whether it is sampled, and its attempts."""

    __slots__ = ("trace_id", "span_id", "parent", "sampled", "state", "attempts", "pending")

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0
        #: The client's span (from its traceparent), parent of the server span.
        self.parent: SpanContext | None = None
        self.sampled = False
        self.state: TraceState | None = None
        self.attempts: list[_Attempt] = []
        #: The attempt started and not yet ended.
        self.pending: _Attempt | None = None


def _endpoint(base: str | None, signal_env: str, signal: str) -> str | None:
    """The URL to pass the exporter for one signal; None lets it read the environment itself.

    Precedence: OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT, then `otlp_endpoint` (+ /v1/<signal>), then
    OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/<signal>), then http://localhost:4318/v1/<signal>."""
    if os.environ.get(signal_env) or not base:
        return None
    return base.rstrip("/") + "/v1/" + signal


def _resource(worker_id: int) -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, a `service.instance.id` per process: each
    worker exports its own cumulative series, which a backend must not add up as one), with service.name
    "fastgw" unless the environment names one, and the worker's number and pid."""
    base = Resource.create({})
    extra: dict[str, str | int] = {"service.version": __version__, "process.pid": os.getpid(),
                                   "fastgw.worker": worker_id}
    name = base.attributes.get("service.name")
    if not isinstance(name, str) or name.startswith("unknown_service"):
        extra["service.name"] = "fastgw"
    return base.merge(Resource(extra))


def _cap(s: str) -> str:
    return s if len(s) <= MAX_LOGGED_STRING else s[:MAX_LOGGED_STRING] + "…"


def _route_name(route: str) -> str:
    return "/v1/models/{model}" if route.startswith("/v1/models/") else _cap(route)


class Recorder:
    """One worker's exporters, and the spans and metric points of its requests."""

    def __init__(self, settings: Telemetry, cfg: Config, targets: list[TargetRuntime], worker_id: int) -> None:
        self._resource = _resource(worker_id)
        self._scope = InstrumentationScope("fastgw", __version__)
        self._ids = RandomIdGenerator()
        self._propagator = TraceContextTextMapPropagator()
        self._sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
        self._models = frozenset({n for t in targets for n in (t.model, *t.aliases)} | {r.model for r in cfg.routing})
        self._spans: BatchSpanProcessor | None = None
        self._meters: MeterProvider | None = None
        if settings.traces:
            self._spans = BatchSpanProcessor(OTLPSpanExporter(
                endpoint=_endpoint(settings.otlp_endpoint, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "traces")))
        if settings.metrics:
            reader = PeriodicExportingMetricReader(OTLPMetricExporter(
                endpoint=_endpoint(settings.otlp_endpoint, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "metrics")))
            self._meters = MeterProvider(resource=self._resource, metric_readers=[reader])
            meter = self._meters.get_meter("fastgw", __version__)
            self._op_duration = meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
            self._tokens = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
            self._request_duration = meter.create_histogram(
                "gen_ai.server.request.duration", unit="s", description="Generative AI server request duration "
                "such as time-to-last byte or last output token", explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
            self._ttft = meter.create_histogram(
                "gen_ai.server.time_to_first_token", unit="s", description="Time to generate first token for "
                "successful responses", explicit_bucket_boundaries_advisory=TTFT_BUCKETS)
            self._tpot = meter.create_histogram(
                "gen_ai.server.time_per_output_token", unit="s", description="Time per output token generated "
                "after the first token for successful responses", explicit_bucket_boundaries_advisory=TPOT_BUCKETS)

    def describe(self) -> str:
        return f"traces {'on' if self._spans else 'off'}, metrics {'on' if self._meters else 'off'}"

    def shutdown(self) -> None:
        """Export what is held and stop, for at most SHUTDOWN_TIMEOUT: the SDK's own flush waits as long as its
        exporter does (which retries until its timeout), so it runs in a thread that the exit does not wait for."""
        done = threading.Thread(target=self._shutdown, name="fastgw-telemetry-shutdown", daemon=True)
        done.start()
        done.join(SHUTDOWN_TIMEOUT)
        if done.is_alive():
            log.warning("telemetry: the last export did not finish within %gs; what it held is dropped",
                        SHUTDOWN_TIMEOUT)

    def _shutdown(self) -> None:
        if self._spans is not None:
            self._spans.shutdown()  # exports everything queued, then stops its thread
        if self._meters is not None:
            self._meters.shutdown(timeout_millis=SHUTDOWN_TIMEOUT * 1000)  # one last collection and export

    # ---- the request path -----------------------------------------------------------------------------------
    def _begin(self, ctx: RequestContext) -> Trace:
        """The request's trace: the client's (its traceparent continued) or a new one, sampled or not."""
        tr = Trace()
        ctx.trace = tr
        if self._spans is None:
            return tr
        parent_ctx = None
        given = ctx.header(b"traceparent")
        if given is not None:
            carrier = {"traceparent": given.decode("latin-1")}
            state = ctx.header(b"tracestate")
            if state is not None:
                carrier["tracestate"] = state.decode("latin-1")
            parent_ctx = self._propagator.extract(carrier)
            parent = get_current_span(parent_ctx).get_span_context()
            if parent.is_valid:
                tr.parent = parent
                tr.trace_id = parent.trace_id
            else:
                parent_ctx = None  # malformed: a new trace, as the W3C spec asks
        if tr.parent is None:
            tr.trace_id = self._ids.generate_trace_id()
        tr.span_id = self._ids.generate_span_id()
        result = self._sampler.should_sample(parent_ctx, tr.trace_id, "")
        tr.sampled = result.decision.is_sampled()
        tr.state = result.trace_state
        return tr

    def attempt_started(self, ctx: RequestContext, target: TargetRuntime, request: object) -> object:
        tr = ctx.trace
        if not isinstance(tr, Trace):
            tr = self._begin(ctx)
        a = _Attempt(target, time.monotonic())
        tr.attempts.append(a)
        tr.pending = a
        if isinstance(request, UpstreamRequest):
            a.address, a.port = request.host, request.port
            if self._spans is not None:
                a.span_id = self._ids.generate_span_id()
                headers = [h for h in request.headers if h[0] != b"traceparent" and h[0] != b"tracestate"]
                headers.append((b"traceparent", b"00-%032x-%016x-%s" % (tr.trace_id, a.span_id,
                                                                         b"01" if tr.sampled else b"00")))
                if tr.state:
                    headers.append((b"tracestate", tr.state.to_header().encode("latin-1")))
                # A new request: the adapter's header list may be shared (a target's fixed headers). Built field by
                # field: dataclasses.replace introspects the fields on every call (3x the cost).
                r = request
                request = UpstreamRequest(r.scheme, r.host, r.port, r.method, r.path, headers, r.body)
        elif self._spans is not None:
            a.span_id = self._ids.generate_span_id()  # the in-process mock: a span, no header to carry
        return request

    def attempt_ended(self, ctx: RequestContext, outcome: object) -> None:
        tr = ctx.trace
        a = tr.pending if isinstance(tr, Trace) else None
        if a is None:
            return  # the attempt failed before anything was sent (a request the target cannot take)
        assert isinstance(tr, Trace)
        tr.pending = None
        a.ended = time.monotonic()
        if outcome is None:
            a.error = "cancelled"
        elif isinstance(outcome, Streamed):
            a.status = 200
            err = outcome.end.error
            if err is not None:
                a.error = err.code or err.type
        elif isinstance(outcome, Retry):
            answer = outcome.answer
            a.status = answer.status if answer is not None else None
            a.error = str(answer.status) if answer is not None else outcome.kind
        elif isinstance(outcome, Final):
            answer = outcome.answer
            if answer is not None:
                a.status = answer.status
                if answer.status >= 400:
                    a.error = str(answer.status)
                else:
                    try:
                        a.response_model = _MODEL.decode(answer.body).model
                    except msgspec.DecodeError:
                        pass
            elif outcome.error is not None:
                a.error = outcome.error.code or outcome.error.type

    def request_finished(self, ctx: RequestContext, route: str) -> None:
        tr = ctx.trace
        if not isinstance(tr, Trace):
            tr = self._begin(ctx)
        now = time.monotonic()
        op = OPERATIONS.get(ctx.endpoint or route[4:])
        status = ctx.status or 500
        error = ctx.error or (str(status) if status >= 400 else None)
        last = tr.attempts[-1] if tr.attempts else None
        if last is not None and last.ended is None:
            last.ended = now
        answered = last if last is not None and last.error is None and error is None else None
        usage = ctx.usage
        tokens_in = tokens_out = None
        if usage:
            p = usage.get("prompt_tokens", usage.get("input_tokens"))
            c = usage.get("completion_tokens", usage.get("output_tokens"))
            tokens_in = p if type(p) is int else None
            tokens_out = c if type(c) is int else None
        if self._spans is not None and tr.sampled:
            self._spans_of(ctx, tr, route, op, status, error, answered, tokens_in, tokens_out, now)
        if self._meters is not None and op is not None:
            self._points(ctx, tr, op, error, answered, tokens_in, tokens_out, usage, now)

    def _spans_of(self, ctx: RequestContext, tr: Trace, route: str, op: str | None, status: int,
                  error: str | None, answered: _Attempt | None, tokens_in: int | None, tokens_out: int | None,
                  now: float) -> None:
        """The server span and one client span per attempt, with the times of the monotonic clock moved to the
        wall clock's epoch (one offset for the request)."""
        spans = self._spans
        assert spans is not None
        base = time.time_ns() - int(now * 1e9)
        ctx_span = SpanContext(tr.trace_id, tr.span_id, False, _SAMPLED, tr.state)
        for a in tr.attempts:
            t = a.target
            attrs: dict[str, str | int | bool] = {
                "gen_ai.operation.name": op or "chat", "gen_ai.provider.name": PROVIDER_NAMES.get(t.provider, t.provider),
                "gen_ai.request.model": t.model, "fastgw.target": t.id}
            if a.address is not None:
                attrs["server.address"] = a.address
                attrs["server.port"] = a.port
            if a.status is not None:
                attrs["http.response.status_code"] = a.status
            if a.error is not None:
                attrs["error.type"] = a.error
            if a is answered:
                if a.response_model:
                    attrs["gen_ai.response.model"] = a.response_model
                _usage_attrs(attrs, tokens_in, tokens_out, ctx.usage)
            end = a.ended if a.ended is not None else now
            spans.on_end(ReadableSpan(
                f"{attrs['gen_ai.operation.name']} {t.model}", SpanContext(tr.trace_id, a.span_id, False, _SAMPLED,
                                                                           tr.state),
                ctx_span, self._resource, attrs, kind=SpanKind.CLIENT, status=_ERROR if a.error else _UNSET,
                start_time=base + int(a.started * 1e9), end_time=base + int(end * 1e9),
                instrumentation_scope=self._scope))
        shown = _route_name(route)
        attrs = {"http.request.method": ctx.method, "http.route": shown, "http.response.status_code": status,
                 "fastgw.request_id": ctx.request_id}
        if op is not None:
            attrs["gen_ai.operation.name"] = op
        model = _cap(ctx.model) if ctx.model else None
        if model is not None:
            attrs["gen_ai.request.model"] = model
        if ctx.target is not None and tr.attempts:
            t = tr.attempts[-1].target
            attrs["gen_ai.provider.name"] = PROVIDER_NAMES.get(t.provider, t.provider)
            attrs["fastgw.target"] = t.id
        if answered is not None and answered.response_model:
            attrs["gen_ai.response.model"] = answered.response_model
        _usage_attrs(attrs, tokens_in, tokens_out, ctx.usage)
        if error is not None:
            attrs["error.type"] = error
        name = f"{op} {model}" if op is not None and model is not None else (op or f"{ctx.method} {shown}")
        spans.on_end(ReadableSpan(
            name, ctx_span, tr.parent, self._resource, attrs, kind=SpanKind.SERVER,
            status=_ERROR if status >= 500 else _UNSET, start_time=base + int(ctx.started * 1e9),
            end_time=base + int(now * 1e9), instrumentation_scope=self._scope))

    def _points(self, ctx: RequestContext, tr: Trace, op: str, error: str | None, answered: _Attempt | None,
                tokens_in: int | None, tokens_out: int | None, usage: dict | None, now: float) -> None:
        """The GenAI metric points of a request: its attempts' durations, its tokens, its own timings."""
        for a in tr.attempts:
            self._op_duration.record((a.ended if a.ended is not None else now) - a.started, _client_attrs(op, a))
        model = ctx.model if ctx.model in self._models else OTHER_MODEL
        server: dict[str, str | int] = {"gen_ai.operation.name": op, "gen_ai.request.model": model}
        if tr.attempts:
            t = tr.attempts[-1].target
            server["gen_ai.provider.name"] = PROVIDER_NAMES.get(t.provider, t.provider)
        if answered is not None and answered.response_model:
            server["gen_ai.response.model"] = answered.response_model
        if error is not None:
            server["error.type"] = error
        self._request_duration.record(now - ctx.started, server)
        if answered is None:
            return
        # Tokens as the provider counted them (the gateway's estimates are not the provider's usage).
        if usage and not usage.get("estimated"):
            client = _client_attrs(op, answered)
            if tokens_in is not None:
                self._tokens.record(tokens_in, {**client, "gen_ai.token.type": "input"})
            if tokens_out is not None:
                self._tokens.record(tokens_out, {**client, "gen_ai.token.type": "output"})
        first = ctx.first_byte
        if ctx.stream and first is not None:
            self._ttft.record(first - ctx.started, server)
            if tokens_out is not None and tokens_out > 1:
                self._tpot.record((now - first) / (tokens_out - 1), server)


def _client_attrs(op: str, a: _Attempt) -> dict[str, str | int]:
    """The attributes of an attempt's metric points (the gateway as a client of the target)."""
    t = a.target
    attrs: dict[str, str | int] = {"gen_ai.operation.name": op,
                                   "gen_ai.provider.name": PROVIDER_NAMES.get(t.provider, t.provider),
                                   "gen_ai.request.model": t.model}
    if a.address is not None:
        attrs["server.address"] = a.address
        attrs["server.port"] = a.port
    if a.response_model:
        attrs["gen_ai.response.model"] = a.response_model
    if a.error is not None:
        attrs["error.type"] = a.error
    return attrs


def _usage_attrs(attrs: dict, tokens_in: int | None, tokens_out: int | None, usage: dict | None) -> None:
    if tokens_in is not None:
        attrs["gen_ai.usage.input_tokens"] = tokens_in
    if tokens_out is not None:
        attrs["gen_ai.usage.output_tokens"] = tokens_out
    if usage and usage.get("estimated"):
        attrs["fastgw.usage.estimated"] = True  # the gateway's estimate: the provider reported none
