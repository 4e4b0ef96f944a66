"""Send the malformed/hostile request corpus (corpus.py) raw over TCP and check each reaction.

For every case: the status of the first final response, whether the server closes the connection after it,
for accepted requests the body the handler parsed, for "not processed" cases that the handler never saw the
follow-up request, and afterwards that the server still answers a normal request on a new connection.
"""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from fastgw.proto.server import ServerLimits
from tests.conformance.corpus import CASES, Case
from tests.proto.test_server import _Server

_CLOSE_WAIT = 0.4  # how long an answered connection is watched for the server's FIN


@pytest.fixture(scope="module")
def server():
    # keepalive_timeout is well above _CLOSE_WAIT so that "closed" means closed because of the request.
    srv = _Server(ServerLimits(header_timeout=0.5, keepalive_timeout=10.0, max_header_bytes=4096, max_headers=20,
                               max_body_bytes=1000, send_timeout=2.0))
    yield srv
    srv.stop()


def _parse_head(buf: bytes) -> tuple[int, int, int] | None:
    """(status, head_end, content_length) of the first response in buf, or None if the head is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, end + 4, length


def _send_case(server: _Server, case: Case) -> tuple[int, bytes, bool]:
    """Send one case; return (status of the first final response, its body, server closed after it)."""
    s = server.connect()
    parts = case.raw if isinstance(case.raw, tuple) else (case.raw,)
    try:
        for i, part in enumerate(parts):
            if i and case.gap:
                time.sleep(case.gap)
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server already answered and closed; read what it sent
        s.settimeout(5)
        buf = b""
        eof = False
        status, body = 0, b""
        while True:
            parsed = _parse_head(buf)
            if parsed is not None:
                st, head_end, length = parsed
                if 100 <= st < 200:  # interim response (100 Continue): skip it
                    buf = buf[head_end:]
                    continue
                if len(buf) >= head_end + length:
                    status, body = st, buf[head_end:head_end + length]
                    break
            if eof:
                break
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                eof = True
            buf += chunk
        if not eof:
            s.settimeout(_CLOSE_WAIT)
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        eof = True
                        break
            except ConnectionResetError:
                eof = True
            except socket.timeout:
                pass
        return status, body, eof
    finally:
        s.close()


def _alive(server: _Server) -> None:
    s = server.connect()
    try:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.settimeout(5)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]


def test_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(server, case: Case):
    server.handler.seen.clear()
    status, body, closed = _send_case(server, case)
    assert (status, closed) == (case.status, case.closed), f"{case.name}: got {status} closed={closed}, body={body!r}"
    if status >= 400:
        err = orjson.loads(body)["error"]
        assert err["message"] and err["type"]
    if case.body is not None:
        assert orjson.loads(body)["body"] == case.body
    if case.not_seen is not None:
        # No wait needed: every such case ends with the server closing (checked above). A request dispatched
        # before its close was seen by the handler before the close; after close nothing is dispatched.
        assert case.closed
        assert case.not_seen not in server.handler.seen, server.handler.seen
    _alive(server)
