"""A hostile upstream: a raw TCP server that answers each request with bytes written exactly as a test scripts
them, framing errors, lies, pauses, 1-byte segments, resets and silence included.

One server serves every scenario: the script is picked by the last user message's content (like
`tests/support/scripted_upstream.py`). Each accepted connection gets an id; the server logs which connection
every request arrived on and which connections the gateway closed, so a test can prove that a connection
that carried a hostile answer was discarded (never carries another request, the gateway closed it) and that
the next request opened a new one.

A script is a list of steps:

- ``Send(data)``: write the bytes as they are (one `sendall`).
- ``Pause(seconds)``: sleep (the gateway sees the bytes before it as their own read).
- ``Bytewise(data, delay)``: write one byte per TCP segment (TCP_NODELAY, a sleep between sends).
- ``Flood(data, total)``: write `data` over and over, as fast as the gateway reads, until `total` bytes
  were written or the gateway closed the connection.
- ``Drip(data, every)``: write `data` every `every` seconds until the gateway closes the connection.
- ``Reset()``: SO_LINGER 0 then close: the gateway gets a TCP RST.
- ``Close()``: close normally (FIN).
- ``Hang()``: write nothing more; wait until the gateway closes the connection.

A script that ends without closing leaves the connection open and waits for the next request on it: if the
gateway wrongly pooled a connection after a broken answer, the next request shows up on it (and the log says so).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Bytewise:
    data: bytes
    delay: float = 0.0005


@dataclass(frozen=True)
class Flood:
    data: bytes
    total: int


@dataclass(frozen=True)
class Drip:
    data: bytes
    every: float


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Hang:
    pass


class _Closed(Exception):
    """The gateway closed (or reset) the connection."""


class HostileUpstream:
    """Start with `HostileUpstream()`; `.url` is the /v1 base; `.scripts[key] = [step, ...]`; `.stop()`."""

    def __init__(self) -> None:
        self.scripts: dict[str, list] = {}
        self._lock = threading.Lock()
        self._accepted = 0
        #: (connection id, scenario key) for every request, in arrival order.
        self.requests: list[tuple[int, str]] = []
        #: Connection ids the gateway closed (EOF or reset seen by this server), with the time it did.
        self.peer_closed: dict[int, float] = {}
        #: Bytes each `Flood` step managed to write, per connection id.
        self.flooded: dict[int, int] = {}
        self._stopping = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # ---- observations ---------------------------------------------------------------------------------------
    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def connections_for(self, key: str) -> list[int]:
        """Connection ids that carried a request for `key`."""
        with self._lock:
            return [c for c, k in self.requests if k == key]

    def requests_on(self, conn_id: int) -> list[str]:
        """Scenario keys of the requests that arrived on connection `conn_id`, in order."""
        with self._lock:
            return [k for c, k in self.requests if c == conn_id]

    def wait_peer_closed(self, conn_id: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if conn_id in self.peer_closed:
                    return True
            time.sleep(0.01)
        return False

    # ---- server ----------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._accepted += 1
                cid = self._accepted
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, cid), daemon=True).start()

    def _serve(self, conn: socket.socket, cid: int) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        try:
            while True:
                key = self._read_request(conn, buf)
                with self._lock:
                    self.requests.append((cid, key))
                script = self.scripts.get(key)
                if script is None:
                    msg = b'{"error": {"message": "no script", "type": "invalid_request_error"}}'
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(msg), msg))
                    continue
                if not self._play(conn, cid, script):
                    return  # the script closed the connection itself
        except _Closed:
            with self._lock:
                self.peer_closed[cid] = time.monotonic()
        except OSError:
            with self._lock:
                self.peer_closed[cid] = time.monotonic()
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _recv(conn: socket.socket, buf: bytearray) -> None:
        data = conn.recv(65536)
        if not data:
            raise _Closed
        buf += data

    def _read_request(self, conn: socket.socket, buf: bytearray) -> str:
        while b"\r\n\r\n" not in buf:
            self._recv(conn, buf)
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end])
        del buf[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(buf) < length:
            self._recv(conn, buf)
        body = json.loads(bytes(buf[:length]) or b"{}")
        del buf[:length]
        messages = body.get("messages") or [{}]
        user = [m for m in messages if m.get("role") == "user"] or messages
        content = user[-1].get("content", "")
        return content if isinstance(content, str) else json.dumps(content)

    def _play(self, conn: socket.socket, cid: int, script: list) -> bool:
        """Run the steps; False when a step closed the connection."""
        for step in script:
            if isinstance(step, Send):
                conn.sendall(step.data)
            elif isinstance(step, Pause):
                time.sleep(step.seconds)
            elif isinstance(step, Bytewise):
                for i in range(len(step.data)):
                    conn.sendall(step.data[i:i + 1])
                    if step.delay:
                        time.sleep(step.delay)
            elif isinstance(step, Flood):
                sent = 0
                try:
                    while sent < step.total:
                        sent += conn.send(step.data)
                finally:
                    with self._lock:
                        self.flooded[cid] = sent
            elif isinstance(step, Drip):
                while not self._stopping.is_set():
                    conn.sendall(step.data)
                    if self._wait_peer(conn, step.every):
                        return True  # a new request on this connection: serve it (the log shows the reuse)
            elif isinstance(step, Reset):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return False
            elif isinstance(step, Close):
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                return False
            elif isinstance(step, Hang):
                while not self._stopping.is_set():
                    if self._wait_peer(conn, 0.05):
                        return True
                return False
            else:  # pragma: no cover - a typo in a script
                raise TypeError(f"unknown step {step!r}")
        return True

    @staticmethod
    def _wait_peer(conn: socket.socket, wait: float) -> bool:
        """Wait up to `wait` seconds for the gateway: raise `_Closed` when it closed its side (EOF or reset),
        True when it sent bytes (a request it should not send on this connection), False when it was quiet."""
        conn.settimeout(wait)
        try:
            data = conn.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return False
        except OSError:
            raise _Closed from None
        finally:
            conn.settimeout(None)
        if not data:
            raise _Closed
        return True

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
