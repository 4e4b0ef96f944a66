"""200 slow clients against a fast upstream: the gateway pauses the upstream instead of buffering, so its memory
stays bounded by the write watermark per stream, however long the answers are."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import orjson

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 200 + b'"},"finish_reason":null}]}\n\n'


class FastUpstream:
    """Streams a long answer as fast as the socket takes it; records bytes accepted per connection."""

    def __init__(self, events_per_stream: int) -> None:
        self.events = events_per_stream
        self.sent: list[int] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                idx = len(self.sent)
                self.sent.append(0)
            threading.Thread(target=self._serve, args=(conn, idx), daemon=True).start()

    def _serve(self, conn: socket.socket, idx: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (len(EVENT) * 10, EVENT * 10)
        try:
            for _ in range(self.events // 10):
                conn.sendall(chunk)
                self.sent[idx] += len(chunk)
        except OSError:
            pass
        conn.close()

    def stop(self) -> None:
        self.sock.close()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _start(gateway_factory, up: FastUpstream):
    gw = gateway_factory.start({"pack": {"name": "t"}, "providers": {"targets": [
        {"id": "u", "provider": "openai", "model": "m", "base_url": f"http://127.0.0.1:{up.port}/v1"}]}}, workers=1)
    worker = int(subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True).stdout.split()[0])
    return gw, worker


def _open_slow_clients(gw, n: int) -> list[socket.socket]:
    body = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    clients = []
    for _ in range(n):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        c.connect((gw.host, gw.port))
        c.sendall(req)
        c.setblocking(False)
        clients.append(c)
    return clients


def _read_slowly(clients: list[socket.socket], seconds: int) -> None:
    """About one event a second per client."""
    for _ in range(seconds):
        for c in clients:
            try:
                c.recv(len(EVENT))
            except BlockingIOError:
                pass
        time.sleep(1.0)


def test_200_slow_clients_keep_gateway_memory_bounded(gateway_factory):
    """Bound stated: 200 open streams within 60 MB of the idle worker (~300 KB each: the 64 KiB write
    watermark, one socket read, per-stream state and allocator slack), however long the answers."""
    up = FastUpstream(events_per_stream=4_000)  # ~1 MB per answer: 200 MB if the gateway buffered them
    try:
        gw, worker = _start(gateway_factory, up)
        base_rss = _rss_kb(worker)
        clients = _open_slow_clients(gw, 200)
        deadline = time.monotonic() + 10
        while len(up.sent) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(up.sent) == 200
        _read_slowly(clients, 3)
        rss = _rss_kb(worker)
        assert rss - base_rss < 60 * 1024, (base_rss, rss)
        for c in clients:
            c.close()
    finally:
        up.stop()


def test_slow_client_pauses_the_upstream(gateway_factory):
    """An answer far larger than every socket buffer on the way: the upstream is stopped, not drained."""
    up = FastUpstream(events_per_stream=800_000)  # ~200 MB per answer
    try:
        gw, worker = _start(gateway_factory, up)
        base_rss = _rss_kb(worker)
        clients = _open_slow_clients(gw, 4)
        _read_slowly(clients, 3)
        with up.lock:
            sent = list(up.sent)
        total = len(EVENT) * 800_000
        assert len(sent) == 4 and max(sent) < total // 4, sent  # kernel buffers only, then paused
        assert _rss_kb(worker) - base_rss < 30 * 1024
        for c in clients:
            c.close()
    finally:
        up.stop()
