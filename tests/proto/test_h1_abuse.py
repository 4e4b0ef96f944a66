"""The request reader's answers to abusive or odd inputs (issue 15): heads judged before their bodies, Upgrade
requests with a body, HTTP/0.9 request lines, the HTTP/2 preface. Every input whole, byte by byte and split."""

from __future__ import annotations

import pytest

from fastgw.proto.errors import HttpError
from fastgw.proto.h1 import FAILED, H2_GOAWAY, IDLE, MUST_CLOSE, Request, RequestReader

_H = b"Host: x\r\n"
GET = b"GET /next HTTP/1.1\r\n" + _H + b"\r\n"
UPGRADE = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


def ways(data: bytes) -> list[list[bytes]]:
    mid = len(data) // 2
    return [[data], [data[i:i + 1] for i in range(len(data))], [data[:mid], data[mid:]]]


def feed(pieces: list[bytes], on_head=None) -> RequestReader:  # noqa: ANN001
    r = RequestReader(max_header_bytes=4096, max_headers=20, max_body_bytes=1000)
    r.on_head = on_head
    for p in pieces:
        r.feed(p)
    return r


def requests(r: RequestReader) -> list[tuple[str, bytes, bool]]:
    return [(e.path, e.body, e.keep_alive) for e in r.events if isinstance(e, Request)]


# ---- Upgrade: h2c with a body (what `curl --http2` sends) -------------------------------------------------

@pytest.mark.parametrize("framing, body", [
    (b"Content-Length: 5\r\n\r\n", b"hello"),
    (b"Transfer-Encoding: chunked\r\n\r\n", b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"),
])
def test_an_upgrade_request_with_a_body_is_served_as_http11_with_its_body(framing, body):
    data = b"POST /p HTTP/1.1\r\n" + _H + UPGRADE + framing + body + GET
    for pieces in ways(data):
        r = feed(pieces)
        assert requests(r) == [("/p", b"hello", True), ("/next", b"", True)], pieces
        assert r.state is IDLE
        assert [e.seq for e in r.events if isinstance(e, Request)] == [0, 1]


def test_a_bodyless_upgrade_is_answered_then_the_connection_closes():
    data = b"GET /u HTTP/1.1\r\n" + _H + UPGRADE + b"\r\n" + GET
    for pieces in ways(data):
        r = feed(pieces)
        assert requests(r) == [("/u", b"", False)]  # its answer says close
        assert r.state is MUST_CLOSE


# ---- HTTP/0.9 and HTTP/2 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [b"GET /healthz\n", b"GET /healthz\r\n", b"GET /\n"])
def test_an_http09_request_line_is_refused_at_once(line):
    for pieces in ways(line):
        r = feed(pieces)
        assert r.state is FAILED, pieces  # no wait for header lines that never come
        (err,) = r.events
        assert isinstance(err, HttpError) and err.status == 400 and err.code == "unsupported_http_version"


@pytest.mark.parametrize("fast", [True, False])
def test_an_http09_request_line_after_a_request_is_refused_at_once_too(fast: bool) -> None:
    """Judged from the head's bytes: llhttp's version is the last message's until this one's is parsed."""
    for first in (GET, b"GET /old HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        r = RequestReader(max_header_bytes=4096, max_headers=20, max_body_bytes=1000)
        if not fast:
            r.read_head = None  # the first request read by llhttp too
        r.feed(first + b"GET /healthz")
        r.feed(b"\r\n")
        assert r.state is FAILED
        req, err = r.events
        assert isinstance(req, Request) and isinstance(err, HttpError) and err.code == "unsupported_http_version"


def test_a_head_still_arriving_is_not_mistaken_for_http09():
    for part in (b"GET /healthz", b"GET /healthz HTTP/1.", b"GET /healthz HTTP/1.1\r\n", b"GET /x HTTP/1.1\r\nHo"):
        assert not feed([part]).events
    r = feed([GET + b"GET /a"])  # a complete request then the start of the next: the LF is the first one's
    assert requests(r) == [("/next", b"", True)] and not r.stopped


def test_the_http2_preface_is_answered_in_http2():
    for pieces in ways(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        (err,) = feed(pieces).events
        assert isinstance(err, HttpError) and err.raw == H2_GOAWAY
    # An empty SETTINGS frame, then GOAWAY (type 7) on stream 0: last stream 0, error HTTP_1_1_REQUIRED (0xd).
    assert H2_GOAWAY[:9] == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    goaway = H2_GOAWAY[9:]
    length = int.from_bytes(goaway[:3], "big")
    assert goaway[3] == 7 and goaway[4] == 0 and goaway[5:9] == b"\x00" * 4 and len(goaway) == 9 + length
    assert goaway[9:13] == b"\x00" * 4 and int.from_bytes(goaway[13:17], "big") == 0xD


# ---- heads judged before their bodies -------------------------------------------------------------------

def _refuse_without_key(req: Request) -> HttpError | None:
    if req.method == "POST" and req.header(b"authorization") is None:
        return HttpError("no key", status=401, code="invalid_api_key")
    return None


def test_a_refused_head_is_queued_and_its_body_never_read():
    seen: list[bytes] = []
    body = b"x" * 900

    def judge(req: Request) -> HttpError | None:
        seen.append(req.target)
        return _refuse_without_key(req)

    data = GET + b"POST /up HTTP/1.1\r\n" + _H + b"Content-Length: 900\r\n\r\n" + body + GET
    for pieces in ways(data):
        seen.clear()
        r = feed(pieces, judge)
        assert seen == [b"/next", b"/up"]  # judged on the head; nothing after it is parsed
        first, refused = r.events
        assert isinstance(refused, Request) and refused.path == "/up" and refused.body == b""
        assert refused.refusal is not None and refused.refusal.status == 401 and refused.refusal.close
        assert refused.refusal.request is refused and not refused.keep_alive and refused.seq == 1
        assert r.state is MUST_CLOSE and r.stopped and r.body_received == 0
        r.feed(GET)
        assert len(r.events) == 2


def test_an_accepted_head_reads_its_body_and_knows_its_size():
    sizes: list[int] = []
    r = RequestReader()

    def judge(req: Request) -> None:
        sizes.append(r.body_expected)

    r.on_head = judge
    r.feed(b"POST /a HTTP/1.1\r\n" + _H + b"Authorization: k\r\nContent-Length: 3\r\n\r\nabc"
           + b"POST /b HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n" + GET)
    assert sizes == [3, -1, 0] and requests(r) == [("/a", b"abc", True), ("/b", b"de", True), ("/next", b"", True)]
    assert r.counted_total == 2  # chunked bytes, counted as they come (a Content-Length is known up front)


def test_errors_carry_the_request_they_struck():
    r = feed([b"POST /big HTTP/1.1\r\n" + _H + b"Content-Length: 5000\r\n\r\n"])
    (err,) = r.events
    assert isinstance(err, HttpError) and err.status == 413
    assert err.request is not None and err.request.path == "/big" and err.request.method == "POST"
    r = feed([b"POST /c HTTP/1.1\r\n" + _H + b"Content-Length: 9\r\n\r\nabc"])
    r.fail(HttpError("slow", status=408))
    assert r.events[-1].request.path == "/c"  # type: ignore[union-attr]
    r = feed([b"\x01garbage\r\n\r\n"])
    assert r.events[-1].request is None  # type: ignore[union-attr]
