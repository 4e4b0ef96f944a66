"""OpenTelemetry traces and GenAI metrics, off by default: the hooks the request path calls.

On when the config has a `telemetry:` section (and OTEL_SDK_DISABLED is not true). Then each worker, after
fork, builds its exporters (`fastgw.telemetry_sdk`: the official SDK's BatchSpanProcessor and
PeriodicExportingMetricReader over OTLP/HTTP, whose threads do the exporting); the master never does (those
threads would not survive the fork). Off, the SDK is never imported and each hook's call site costs one
module-global read (`if telemetry.ON:`).

Per request the hooks only take notes (`Trace` on `ctx.trace`: ids, each attempt's start and end); the spans
and the metric points are made once, at the end, from what the request context already holds:

    attempt_started(ctx, target, request) -> request   # an upstream attempt begins: traceparent added
    attempt_ended(ctx, outcome)                         # it ended (any Outcome; None: cancelled or crashed)
    request_finished(ctx, route)                        # the /v1 request is over: spans and metrics recorded
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.policy.base import RequestContext
    from fastgw.providers.base import TargetRuntime
    from fastgw.telemetry_sdk import Recorder

__all__ = ["ON", "setup", "shutdown", "attempt_started", "attempt_ended", "request_finished"]

log = logging.getLogger("fastgw.telemetry")

#: True in a worker whose config turned telemetry on (set by `setup`); every call site checks it first.
ON = False
_rec: Recorder | None = None


def setup(cfg: Config, targets: list[TargetRuntime], worker_id: int) -> None:
    """Start this worker's exporters when the config asks for telemetry: in the worker, after fork."""
    global ON, _rec
    settings = cfg.telemetry
    if settings is None or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    from fastgw.telemetry_sdk import Recorder  # the SDK is imported here only: off, it costs nothing

    _rec = Recorder(settings, cfg, targets, worker_id)
    ON = True
    log.debug("worker %d: telemetry on (%s)", worker_id, _rec.describe())


def shutdown() -> None:
    """Export what is queued and stop the exporters (a worker's graceful exit; bounded in time)."""
    global ON, _rec
    rec, _rec, ON = _rec, None, False
    if rec is not None:
        rec.shutdown()


def attempt_started(ctx: RequestContext, target: TargetRuntime, request: object) -> object:
    """An upstream attempt is about to be sent: noted, and `request` returned with `traceparent` (and the
    client's `tracestate`) when traces are on and it is an HTTP request."""
    rec = _rec
    if rec is None:
        return request
    try:
        return rec.attempt_started(ctx, target, request)
    except Exception:  # noqa: BLE001 - telemetry never fails a request
        _failed("attempt_started")
        return request


def attempt_ended(ctx: RequestContext, outcome: object) -> None:
    """The attempt `attempt_started` noted has ended with `outcome` (None: cancelled or crashed)."""
    if _rec is not None:
        try:
            _rec.attempt_ended(ctx, outcome)
        except Exception:  # noqa: BLE001 - telemetry never fails a request
            _failed("attempt_ended")


def request_finished(ctx: RequestContext, route: str) -> None:
    """A /v1 request is over: its server span, its attempts' client spans, and the GenAI metrics."""
    if _rec is not None:
        try:
            _rec.request_finished(ctx, route)
        except Exception:  # noqa: BLE001 - telemetry never fails a request
            _failed("request_finished")


_logged: set[str] = set()


def _failed(hook: str) -> None:
    """A bug in recording: logged with its traceback once per hook and worker, never raised to the request."""
    if hook not in _logged:
        _logged.add(hook)
        log.exception("telemetry %s failed (logged once per worker; the request goes on)", hook)
