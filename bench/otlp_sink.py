"""An OTLP/HTTP sink for `bench run`'s fastgw-otel system: accepts POST /v1/traces and /v1/metrics, counts.

Runs as a thread of the harness (on the load generator's CPUs, outside the system under test's process tree,
whose CPU is what is measured). Trace bodies are decoded to count spans, so a run can tell whether the
gateway's span queue dropped any (the SDK drops spans rather than wait when its queue is full).
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OtlpSink"]


class OtlpSink:
    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.lock = threading.Lock()
        self.posts = {"/v1/traces": 0, "/v1/metrics": 0}
        self.bytes = 0
        self.spans = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                spans = 0
                if self.path == "/v1/traces":
                    if (self.headers.get("content-encoding") or "").lower() == "gzip":
                        body = gzip.decompress(body)
                    msg = ExportTraceServiceRequest()
                    msg.ParseFromString(body)
                    spans = sum(len(ss.spans) for rs in msg.resource_spans for ss in rs.scope_spans)
                with sink.lock:
                    sink.posts[self.path] = sink.posts.get(self.path, 0) + 1
                    sink.bytes += len(body)
                    sink.spans += spans
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def summary(self) -> str:
        with self.lock:
            return (f"{self.spans} spans in {self.posts['/v1/traces']} trace exports, {self.posts['/v1/metrics']} "
                    f"metric exports, {self.bytes / 1e6:.1f} MB")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
