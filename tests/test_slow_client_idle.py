"""A client that stops reading pauses the upstream (back-pressure): that pause is the gateway's doing, not upstream
silence, so the target's idle timeout must not fire for it. The idle timeout still fires when the upstream really
goes silent while the client reads normally."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time

import orjson
import pytest

from fastgw.proto.sse import SSEDecoder
from tests.conftest import GatewayFactory

IDLE = 1.0  # the target's idle timeout (s)
PAUSE = 3.0  # how long the slow client stops reading (s): well over IDLE
BIG_EVENTS = 20_000  # ~8 MB of SSE: far more than the socket buffers between upstream and client hold
WORD = "x" * 300
SILENT_EVENTS = 3


def _chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict = {"role": "assistant", "content": ""} if role else ({} if content is None else {"content": content})
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "big-model",
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Handler(socketserver.BaseRequestHandler):
    """`big`: a large streamed answer, written as fast as the gateway takes it. `silent`: a few events, then
    nothing (until the gateway closes the connection)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                length = 0
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = json.loads(f.read(length) or b"{}")
                kind = body["messages"][-1]["content"]
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n" + _chunked(_chunk(role=True)))
                if kind == "big":
                    batch: list[bytes] = []
                    for i in range(BIG_EVENTS):
                        batch.append(_chunk(f"w{i}:{WORD} "))
                        if len(batch) == 100:
                            sock.sendall(_chunked(b"".join(batch)))
                            batch = []
                    batch += [_chunk(finish="stop"), b"data: [DONE]\n\n"]
                    sock.sendall(_chunked(b"".join(batch)) + b"0\r\n\r\n")
                else:
                    for i in range(SILENT_EVENTS):
                        sock.sendall(_chunked(_chunk(f"s{i} ")))
                        time.sleep(0.05)
                    sock.settimeout(20)
                    while sock.recv(4096):  # silent until the gateway gives up and closes
                        pass
                    return
        except OSError:
            pass  # the gateway closed the connection
        finally:
            f.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def fast_upstream():
    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _config(url: str, pii: bool) -> dict:
    cfg: dict = {"pack": {"name": "t"},
                 "providers": {"targets": [{"id": "big", "provider": "openai", "model": "big-model", "base_url": url,
                                            "timeouts": {"ttft": 5, "idle": IDLE, "max_duration": 60}}]}}
    if pii:
        cfg["policies"] = {"chain": ["pii-detector"]}
        cfg["policy"] = {"pii-detector": {"action": "redact"}}
    return cfg


@pytest.fixture(scope="module")
def gateways(fast_upstream, tmp_path_factory):
    factory = GatewayFactory(tmp_path_factory.mktemp("slow-client"))
    yield {"none": factory.start(_config(fast_upstream, pii=False), workers=1),
           "pii-redact": factory.start(_config(fast_upstream, pii=True), workers=1)}
    factory.close()


def _request(gw, content: str, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((gw.host, gw.port))
    body = json.dumps({"model": "big-model", "stream": True,
                       "messages": [{"role": "user", "content": content}]}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def _read_to_end(s: socket.socket, data: bytearray) -> bytes:
    s.settimeout(20)
    while not data.endswith(b"\r\n0\r\n\r\n"):
        c = s.recv(1 << 16)
        if not c:
            break
        data += c
    s.close()
    return bytes(data)


def _dechunk(resp: bytes) -> tuple[bytes, bytes, bool]:
    """(head, body, whether the chunked body ended with its terminator)."""
    head, _, rest = resp.partition(b"\r\n\r\n")
    body = bytearray()
    pos = 0
    while True:
        eol = rest.find(b"\r\n", pos)
        if eol < 0:
            return head, bytes(body), False
        size = int(rest[pos:eol].split(b";")[0], 16)
        if size == 0:
            return head, bytes(body), rest[eol:eol + 4] == b"\r\n\r\n"
        body += rest[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


def _events(body: bytes) -> list[str]:
    return [e.data for e in SSEDecoder().feed(body) if e.data is not None]


@pytest.mark.parametrize("policy", ["none", "pii-redact"])
def test_client_pausing_longer_than_idle_timeout_gets_the_whole_stream(gateways, policy):
    gw = gateways[policy]
    s = _request(gw, "big", rcvbuf=4096)
    s.settimeout(10)
    data = bytearray(s.recv(4096))
    assert data.startswith(b"HTTP/1.1 200")
    time.sleep(PAUSE)  # stop reading: the gateway pauses the upstream meanwhile
    head, body, terminated = _dechunk(_read_to_end(s, data))
    assert terminated, "the chunked body did not end with its terminator"
    events = _events(body)
    errors = [e for e in events if '"error"' in e]
    assert not errors, f"in-stream error while the client was slow: {errors[0][:300]}"
    assert events[-1] == "[DONE]"
    content = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    words = [c for c in content if c and c.startswith("w")]
    assert len(words) == BIG_EVENTS  # every event, in order
    assert words[0].startswith("w0:") and words[-1].startswith(f"w{BIG_EVENTS - 1}:")


@pytest.mark.parametrize("policy", ["none", "pii-redact"])
def test_idle_timeout_still_fires_when_the_upstream_goes_silent(gateways, policy):
    gw = gateways[policy]
    t0 = time.monotonic()
    s = _request(gw, "silent")
    head, body, terminated = _dechunk(_read_to_end(s, bytearray()))
    elapsed = time.monotonic() - t0
    assert head.startswith(b"HTTP/1.1 200")
    assert terminated
    events = _events(body)
    assert events[-1] == "[DONE]"
    err = orjson.loads(events[-2])["error"]
    assert err["code"] == "upstream_timeout" and err["type"] == "upstream_error"
    assert "idle" in err["message"]
    content = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert content == "".join(f"s{i} " for i in range(SILENT_EVENTS))  # what came before the silence
    assert elapsed < 10  # fired about IDLE after the last event, not at the upstream's leisure
