"""Protocol odds and ends (issue 15, item 8): `Upgrade: h2c` on a POST (what `curl --http2` sends) is served as
HTTP/1.1 with its body; an HTTP/0.9 request line gets 400 at once instead of a header-timeout wait; an HTTP/2
prior-knowledge preface gets SETTINGS + GOAWAY(HTTP_1_1_REQUIRED), which h2 clients can read and report."""

from __future__ import annotations

import shutil
import subprocess
import time

import orjson
import pytest

from tests.abuse import gateway as G

HTTP_1_1_REQUIRED = 0xD


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from tests.conftest import GatewayFactory

    factory = GatewayFactory(tmp_path_factory.mktemp("conn-protocol"))
    try:
        yield G.start(factory, G.config(rbac=False, header_timeout=10))
    finally:
        factory.close()


def test_a_post_asking_for_h2c_is_served_as_http11_with_its_body(gw):
    body = G.chat_body("mock-1", stream=False)
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    with G.connect(gw) as s:
        s.sendall(G.chat_request(body, key=None, extra=upgrade) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, payload = G.read_response(s)
        assert status == 200 and orjson.loads(payload)["object"] == "chat.completion"
        status, _, payload = G.read_response(s)  # and the connection goes on in HTTP/1.1
        assert status == 200 and payload == b'{"status":"ok"}'


def test_curl_http2_post_gets_its_answer(gw):
    r = subprocess.run(["curl", "-sS", "--http2", "-H", "content-type: application/json", "-d",
                        G.chat_body("mock-1", stream=False).decode(), gw.url + "/chat/completions"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["object"] == "chat.completion"


@pytest.mark.parametrize("line", [b"GET /healthz\n", b"GET /healthz\r\n"])
def test_an_http09_request_line_gets_400_at_once(gw, line):
    with G.connect(gw) as s:
        t0 = time.monotonic()
        s.sendall(line)
        status, headers, body = G.read_response(s, timeout=5)
        elapsed = time.monotonic() - t0
    assert status == 400 and orjson.loads(body)["error"]["code"] == "unsupported_http_version"
    assert elapsed < 2.0, f"answered after {elapsed:.1f} s: the header timeout (10 s), not the request line"


def test_the_http2_preface_gets_settings_and_goaway_http_1_1_required(gw):
    with G.connect(gw) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    frames = []
    while data:
        length = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[9:9 + length]))
        data = data[9 + length:]
    assert [f[0] for f in frames] == [0x4, 0x7]  # SETTINGS, GOAWAY
    goaway = frames[1][1]
    assert int.from_bytes(goaway[:4], "big") == 0 and int.from_bytes(goaway[4:8], "big") == HTTP_1_1_REQUIRED


def test_curl_with_http2_prior_knowledge_reports_http11_required(gw):
    r = subprocess.run(["curl", "-sS", "-v", "--http2-prior-knowledge", gw.base + "/healthz"], capture_output=True,
                       text=True, timeout=10)
    if "HTTP2" in r.stderr and "not supported" in r.stderr.lower():
        pytest.fail("this curl has no HTTP/2: the test needs Debian's curl (HTTP/2 built in)")
    assert r.returncode != 0
    assert "GOAWAY" in r.stderr and "error=13" in r.stderr, r.stderr[-500:]
