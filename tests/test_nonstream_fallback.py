"""A non-streamed upstream answer whose body fails part-way (connection reset, broken chunked framing): nothing
has reached the client yet, so it is retryable like any failure before the first byte. With a fallback target
the client gets the fallback's 200 answer; without one, a 502 with the OpenAI error envelope."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest

from tests.conftest import GatewayFactory

# The head promises 1000 bytes; 10 arrive, then the connection is reset.
RESET_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
              b'{"id":"chat')
# A chunked body whose second chunk-size line is not hex.
BAD_CHUNK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
             b'a\r\n{"id":"cha\r\nzz\r\nxyz\r\n')


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        f = sock.makefile("rb")
        try:
            length = 0
            line = f.readline()
            if not line:
                return
            while True:
                h = f.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            f.read(length)
            self.server.requests += 1  # type: ignore[attr-defined]
            mode = self.server.mode  # type: ignore[attr-defined]
            sock.sendall(RESET_HEAD if mode == "reset" else BAD_CHUNK)
            if mode == "reset":
                # Let the gateway take the head first (it is then reading the body), then reset the connection.
                time.sleep(0.2)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            else:
                # The gateway closes the connection on the framing error: wait for that.
                sock.settimeout(10)
                while sock.recv(4096):
                    pass
        except OSError:
            pass
        finally:
            f.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class BrokenUpstream:
    """A loopback upstream whose answers fail mid-body: `mode` "reset" or "badchunk"."""

    def __init__(self, mode: str) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.mode = mode  # type: ignore[attr-defined]
        self.server.requests = 0  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> int:
        return self.server.requests  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def broken():
    ups = {m: BrokenUpstream(m) for m in ("reset", "badchunk")}
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def gw(broken, upstream, tmp_path_factory):
    targets = [{"id": "backup", "provider": "openai", "model": "gpt-test", "base_url": upstream.url}]
    routing = []
    for mode, up in broken.items():
        targets.append({"id": f"broken-{mode}", "provider": "openai", "model": f"broken-{mode}", "base_url": up.url,
                        "circuit_breaker": {"failures": 1000, "cooldown": 1}})
        routing.append({"model": f"with-fallback-{mode}", "targets": [f"broken-{mode}", "backup"],
                        "retry": {"attempts": 1}})
        routing.append({"model": f"alone-{mode}", "targets": [f"broken-{mode}"],
                        "retry": {"attempts": 2, "backoff": 0.05}})
    cfg = {"pack": {"name": "t"}, "providers": {"targets": targets}, "routing": routing}
    factory = GatewayFactory(tmp_path_factory.mktemp("nonstream-fallback"))
    yield factory.start(cfg, workers=1)
    factory.close()


def _post(gw, model: str) -> tuple[int, dict]:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]})
    req = urllib.request.Request(gw.url + "/chat/completions", data=body, method="POST",
                                 headers={"content-type": "application/json", "authorization": "Bearer x"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


@pytest.mark.parametrize("mode", ["reset", "badchunk"])
def test_body_failing_midway_falls_back_to_the_next_target(gw, broken, mode):
    before = broken[mode].requests
    status, body = _post(gw, f"with-fallback-{mode}")
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith("Echo: hello")
    assert broken[mode].requests - before == 1  # the broken target was asked (once), then the fallback


@pytest.mark.parametrize("mode", ["reset", "badchunk"])
def test_body_failing_midway_without_fallback_is_a_502_envelope(gw, broken, mode):
    before = broken[mode].requests
    status, body = _post(gw, f"alone-{mode}")
    assert status == 502, body
    err = body["error"]
    assert set(err) >= {"message", "type", "code", "param"}
    assert err["type"] == "upstream_error"
    assert err["code"] == ("upstream_disconnected" if mode == "reset" else "upstream_protocol_error")
    assert broken[mode].requests - before == 2  # retried per the route's retry policy: the failure is retryable
