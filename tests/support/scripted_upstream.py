"""A loopback upstream that answers each chat request with a scripted SSE body, cut into chunked-encoding pieces
exactly where the test says (each piece reaches the gateway as its own body callback, down to one byte).

The script is chosen by the last user message's content, so many concurrent tests can share one server.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import uuid

# Hex digits as letters: a key made only of letters and a hyphen, which no pii detector matches (a uuid's hex can
# start with ten digits, a phone number to the detector, and the gateway redacts it before the upstream sees it).
_DIGITS_AS_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def script_key() -> str:
    """A fresh script key that every pii detector leaves as it is (the request reaches the upstream unchanged)."""
    return "script-" + uuid.uuid4().hex.translate(_DIGITS_AS_LETTERS)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        try:
            self._handle()
        except OSError:
            pass  # the gateway closed the connection (a test's client left, or a policy blocked): expected

    def _handle(self) -> None:
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            line = self.rfile.readline()
            if not line:
                return
            length = 0
            while True:
                h = self.rfile.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = json.loads(self.rfile.read(length) or b"{}")
            key = body.get("messages", [{}])[-1].get("content", "")
            pieces = self.server.scripts.get(key)  # type: ignore[attr-defined]
            if pieces is None:
                msg = b'{"error": {"message": "no script", "type": "invalid_request_error"}}'
                self.wfile.write(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(msg), msg))
                continue
            self.server.requests.append(body)  # type: ignore[attr-defined]
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
            for p in pieces:
                if p:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class ScriptedUpstream:
    """Start with `ScriptedUpstream()`; `.url` is the /v1 base; `.scripts[key] = [bytes, ...]`; `.stop()`."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.scripts = {}  # type: ignore[attr-defined]
        self.server.requests = []  # type: ignore[attr-defined]
        self.scripts: dict[str, list[bytes]] = self.server.scripts  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
