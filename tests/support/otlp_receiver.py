"""A real OTLP/HTTP receiver for tests: POST /v1/traces and /v1/metrics, protobuf bodies (gzip or not).

Bodies are decoded with the `opentelemetry-proto` messages the exporter itself encodes with
(ExportTraceServiceRequest, ExportMetricsServiceRequest); every request is kept with its
headers. Runs in a thread of the test process, on 127.0.0.1, until `stop()`.
"""
from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (ExportMetricsServiceRequest,
                                                                          ExportMetricsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

_MESSAGES = {"/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
             "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse)}


def attrs(kvs: Any) -> dict[str, Any]:
    """An OTLP attribute list as a dict of plain values."""
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


class OtlpReceiver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: (path, headers as a lower-cased dict, decoded message)
        self.received: list[tuple[str, dict[str, str], Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                kinds = _MESSAGES.get(self.path)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if kinds is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                encoding = (self.headers.get("content-encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                msg = kinds[0]()
                msg.ParseFromString(body)
                with receiver.lock:
                    receiver.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, msg))
                out = kinds[1]().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def requests(self, path: str) -> list[tuple[dict[str, str], Any]]:
        with self.lock:
            return [(h, m) for p, h, m in self.received if p == path]

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        out = []
        for _, msg in self.requests("/v1/traces"):
            for rs in msg.resource_spans:
                res = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out += [(res, s) for s in ss.spans]
        return out

    def metrics(self) -> list[tuple[dict[str, Any], Any]]:
        """Every metric received (each export's cumulative state), with its resource's attributes."""
        out = []
        for _, msg in self.requests("/v1/metrics"):
            for rm in msg.resource_metrics:
                res = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    out += [(res, m) for m in sm.metrics]
        return out

    def wait(self, ready: Callable[[], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return True
            time.sleep(0.05)
        return ready()
