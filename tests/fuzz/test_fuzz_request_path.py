"""Fuzz the request path: bytes in, responses out, through HttpServerProtocol in process (no sockets).

Arbitrary bytes and mutated pipelines of valid requests are fed in random splits to one connection
with a trivial application. Whatever the bytes:

- no exception escapes the protocol (nor a task it started);
- everything written parses with h11 as a sequence of valid HTTP/1.1 responses, one per request the
  application answered, plus at most one error response, with statuses in the expected set;
- after an error response (a framing error) the connection is closed and nothing after it is processed;
- the application is called at most as many times as h11 parses complete requests from the same bytes,
  and each request it gets has the method, headers and body h11 reads for that request (a disagreement
  on where a body ends is a request-smuggling bug).

h11 is the independent reference, with three deliberate differences accounted for in `h11_requests`
(where h11 is stricter than RFC 9112 asks): blank lines before a request line are skipped (§2.2), empty
list elements in Transfer-Encoding are ignored (RFC 9110 §5.6.1), and persistence follows §9.3 (HTTP/1.0
with keep-alive stays open), not h11's own policy.
"""

from __future__ import annotations

import asyncio
import re

import h11
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from fastgw.proto.h1 import H2_GOAWAY
from fastgw.proto.server import Request, Responder, ServerLimits
from tests.fuzz.fuzzing import fuzz, mutated, serve, split_at, splits

LIM = ServerLimits(header_timeout=60.0, keepalive_timeout=60.0, max_header_bytes=2048, max_headers=16,
                   max_body_bytes=2048, send_timeout=60.0, body_timeout=60.0)
#: Statuses this application and the protocol can answer with (no timer fires within a test).
STATUSES = {200, 405, 400, 413, 414, 417, 431, 501, 505}
ERRORS = STATUSES - {200, 405}

_loop = uvloop.new_event_loop()


class App:
    """Echoes the body; paths under /s stream it (chunked, or close-delimited for HTTP/1.0)."""

    def __init__(self) -> None:
        self.calls: list[Request] = []

    async def __call__(self, req: Request, resp: Responder) -> None:
        self.calls.append(req)
        if req.method == "CONNECT":
            resp.send(405, [], b"")
        elif req.path.startswith("/s"):
            resp.start_stream(200, [(b"content-type", b"application/octet-stream")])
            for part in (b"<", b"", req.body):
                resp.write(part)
                await asyncio.sleep(0)
            resp.end(b">")
        else:
            resp.send(200, [(b"content-type", b"application/octet-stream")], req.body)


# --- the reference: h11, one request at a time ----------------------------------------------------------------

_TE_LINE = re.compile(rb"(?im)^(transfer-encoding:)([^\r\n]*)$")
_FIRST_LINE = re.compile(rb"^[^\r\n]*")


def _lenient_head(head: bytes) -> bytes:
    """What RFC 9112 lets a server accept that h11 refuses, rewritten the way h11 takes it: extra spaces
    between the parts of the request line (§3: MAY parse on whitespace boundaries) and empty Transfer-Encoding list
    elements or OWS around them (RFC 9110 §5.6.1)."""
    def fix(m: re.Match) -> bytes:
        elems = [e.strip(b" \t") for e in m.group(2).split(b",")]
        return m.group(1) + b" " + b", ".join(e for e in elems if e)
    head = _FIRST_LINE.sub(lambda m: re.sub(rb" +", b" ", m.group(0)), head, count=1)
    return _TE_LINE.sub(fix, head)


def _persistent(version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    tokens = {t.strip().lower() for n, v in headers if n.lower() == b"connection" for t in v.split(b",")}
    if version == b"1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


def _one(data: bytes) -> tuple[tuple | None, bytes]:
    """Parse one request from data with h11: ((method, headers, body, version), rest) or (None, b"")."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    req = None
    body = []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA or ev is h11.PAUSED:
            return None, b""
        if isinstance(ev, h11.Request):
            req = ev
        elif isinstance(ev, h11.Data):
            body.append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            assert req is not None
            headers = [(bytes(n), bytes(v)) for n, v in req.headers.raw_items()]
            return ((bytes(req.method), headers, b"".join(body), bytes(req.http_version), bytes(req.target)),
                    conn.trailing_data[0])


def h11_requests(stream: bytes) -> list[tuple]:
    """The complete requests h11 reads from a connection's bytes, up to the first one it refuses."""
    out = []
    rest = stream
    while True:
        rest = rest.lstrip(b"\r\n")
        if not rest:
            return out
        try:
            req, rest = _one(rest)
        except h11.RemoteProtocolError:
            end = rest.find(b"\r\n\r\n")
            if end < 0:
                return out
            try:
                req, rest = _one(_lenient_head(rest[:end + 4]) + rest[end + 4:])
            except h11.RemoteProtocolError:
                return out
        if req is None:
            return out
        out.append(req)
        method, headers, _, version, _ = req
        upgrade = method == b"CONNECT" or any(n.lower() == b"upgrade" for n, _ in headers)
        if not _persistent(version, headers) or upgrade:
            return out


# --- the check ---------------------------------------------------------------------------------------------------


def responses(output: bytes, methods: list[str], closed: bool) -> list[tuple[int, dict, bytes]]:
    """Parse what the server wrote as the responses to `methods`, in order, with h11."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    conn.receive_data(output)
    if closed:
        conn.receive_data(b"")
    out = []
    for m in methods:
        if not conn.trailing_data[0]:
            break  # every byte written is parsed
        conn.send(h11.Request(method=m, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, []
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA and status == 0:
                # Only "100 Continue" for a request whose body never came: no final response is due.
                return out
            assert ev is not h11.NEED_DATA, f"incomplete response to {m}: {output[-200:]!r}"
            if isinstance(ev, h11.InformationalResponse):
                assert ev.status_code == 100
            elif isinstance(ev, h11.Response):
                status, headers = ev.status_code, {bytes(n): bytes(v) for n, v in ev.headers.raw_items()}
            elif isinstance(ev, h11.Data):
                body.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {ev!r}")
        out.append((status, headers, b"".join(body)))
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    return out


def check(stream: bytes, pieces: list[bytes]) -> tuple[App, list[tuple[int, dict, bytes]]]:
    app = App()
    t, proto, errors = serve(_loop, pieces, app, LIM)
    assert not errors, errors
    assert t.late_writes == 0
    calls = app.calls
    # Every response parses, in order: one per application call, then at most one error response.
    methods = [c.method for c in calls]
    got = responses(t.output, methods + ["GET"], t.closed)
    assert len(got) in (len(calls), len(calls) + 1), (len(got), len(calls), t.output)
    for status, headers, _ in got:
        assert status in STATUSES, status
    for (status, headers, body), req in zip(got, calls):
        assert status in (200, 405)
        if req.method not in ("HEAD", "CONNECT"):
            assert body == (b"<" + req.body + b">" if req.path.startswith("/s") else req.body)
        if req.version == "1.0":
            # RFC 9112 §6.1: no chunked framing to an HTTP/1.0 client.
            assert b"transfer-encoding" not in headers
    if len(got) > len(calls):
        status, headers, _ = got[-1]
        assert status in ERRORS
        assert headers.get(b"connection") == b"close"
        assert t.closed and not proto._queue and proto._current is None
    # No more requests than h11 reads, and the same ones.
    ref = h11_requests(stream)
    assert len(calls) <= len(ref), (len(calls), len(ref))
    for req, (method, headers, body, version, _) in zip(calls, ref):
        assert req.method.encode() == method
        assert req.body == body, (req.body, body)
        # (h11 lower-cases the Transfer-Encoding value; names are case-insensitive)
        ours = [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in req.headers]
        assert ours == [(n.lower(), v) for n, v in headers], (req.headers, headers)
    return app, got


# --- inputs ------------------------------------------------------------------------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_", min_size=1, max_size=10).map(str.encode)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=16).map(lambda s: s.strip().encode())


@st.composite
def request(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    method = draw(st.sampled_from([b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]))
    path = draw(st.sampled_from([b"/", b"/echo", b"/s", b"/s/x?q=1", b"http://h.example/s", b"/a%20b", b"*"]))
    headers = [] if version == b"1.0" and draw(st.booleans()) else [b"Host: " + draw(st.sampled_from([b"x", b"h:80"]))]
    for _ in range(draw(st.integers(0, 3))):
        headers.append(b"X-" + draw(_token) + b": " + draw(_value))
    if draw(st.integers(0, 4)) == 0:
        headers.append(draw(st.sampled_from([b"Connection: close", b"Connection: keep-alive",
                                             b"Connection: keep-alive, x"])))
    framing = draw(st.sampled_from(["none", "cl", "cl", "chunked", "chunked"] if version == b"1.1" else ["none", "cl"]))
    body = b""
    if framing == "cl":
        data = draw(st.binary(max_size=40))
        headers.append(b"Content-Length: " + draw(st.sampled_from([b"", b"0", b"00"])) + str(len(data)).encode())
        body = data
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: " + draw(st.sampled_from([b"chunked", b"Chunked", b" chunked"])))
        for chunk in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4)):
            size = b"%x" % len(chunk)
            size = draw(st.sampled_from([size, size.upper(), b"0" + size]))
            ext = draw(st.sampled_from([b"", b"", b";a=b", b';x="q"', b" ;y"]))
            body += size + ext + b"\r\n" + chunk + b"\r\n"
        body += b"0\r\n"
        for _ in range(draw(st.integers(0, 2))):
            body += b"X-T" + draw(_token) + b": " + draw(_value) + b"\r\n"
        body += b"\r\n"
    if framing != "none" and version == b"1.1" and draw(st.integers(0, 5)) == 0:
        headers.append(b"Expect: 100-continue")
    order = draw(st.permutations(headers))
    return method + b" " + path + b" HTTP/" + version + b"\r\n" + b"".join(h + b"\r\n" for h in order) + b"\r\n" + body


pipelines = st.lists(st.tuples(st.sampled_from([b"", b"", b"", b"\r\n"]), request()), min_size=1, max_size=4).map(
    lambda rs: b"".join(a + b for a, b in rs))


@fuzz(500)
@given(st.data())
def test_mutated_pipelines_any_split(data):
    stream = data.draw(mutated(pipelines), "stream")
    check(stream, data.draw(splits(stream), "pieces"))


@fuzz(120)
@given(st.data())
def test_valid_pipelines_any_split(data):
    stream = data.draw(pipelines, "stream")
    app, _ = check(stream, data.draw(splits(stream), "pieces"))
    # Nothing refused: every request up to the first that ends the connection is answered (a streamed
    # answer to HTTP/1.0 is close-delimited, so it ends the connection too).
    want = 0
    for method, _, _, version, target in h11_requests(stream):
        want += 1
        if version == b"1.0" and method != b"HEAD" and re.match(rb"(http://[^/]*)?/s", target):
            break
    assert len(app.calls) == want


@fuzz(300)
@given(st.data())
def test_arbitrary_bytes_any_split(data):
    stream = data.draw(st.one_of(st.binary(max_size=200),
                                 st.binary(max_size=60).map(lambda b: b"GET / HTTP/1.1\r\nHost: x\r\n" + b)), "stream")
    check(stream, data.draw(splits(stream), "pieces"))


# --- heads llhttp refuses and the server answers or parses anew: every split -----------------------------------

_POST = b"POST /echo HTTP/1.1\r\nHost: x\r\n"
_NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("stream, statuses, bodies", [
    (_POST + b"Transfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + _NEXT, [200, 200], [b"abc", b""]),
    (_POST + b"Transfer-Encoding: chunked, \r\nX: y\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + _NEXT, [200, 200], [b"abc", b""]),
    (_POST + b"Content-Length: 2\r\n\r\nhi" + _POST + b"Transfer-Encoding: chunked,\r\n\r\n1\r\nz\r\n0\r\n\r\n" + _NEXT,
     [200, 200, 200], [b"hi", b"z", b""]),
    (_POST + b"Transfer-Encoding: chunked, \r\nContent-Length: 3\r\n\r\nabc" + _NEXT, [400], []),
    (_POST + b"Transfer-Encoding: chunked, \r\n\r\nzz\r\n" + _NEXT, [400], []),
    (b"FOO /echo HTTP/1.1\r\nHost: x\r\n\r\n" + _NEXT, [501], []),
    (_NEXT + b"PROPFX /echo HTTP/1.1\r\nHost: x\r\n\r\n" + _NEXT, [200, 501], [b""]),
    (b"G\x01T /echo HTTP/1.1\r\n\r\n", [400], []),
    (b"GET /echo HTTP/1.2\r\nHost: x\r\n\r\n" + _NEXT, [200, 200], [b"", b""]),
    (b"GET /echo HTTP/3.0\r\nHost: x\r\n\r\n" + _NEXT, [505], []),
])
def test_refused_heads_every_split(stream, statuses, bodies):
    for p in range(len(stream) + 1):
        for pieces in (split_at(stream, [p]), split_at(stream, [p, p + 1, p + 7])):
            app = App()
            t, _, errors = serve(_loop, pieces, app, LIM)
            assert not errors
            got = responses(t.output, [c.method for c in app.calls] + ["GET"], t.closed)
            assert [s for s, _, _ in got] == statuses, (p, pieces)
            assert [c.body for c in app.calls] == bodies
            if statuses[-1] >= 400:
                assert t.closed


def test_h2_preface_gets_goaway_under_every_split():
    # RFC 9113 §3.4 prior knowledge on an HTTP/1.1 port: an HTTP/2 SETTINGS + GOAWAY(HTTP_1_1_REQUIRED) that h2
    # clients can read, then close; never an HTTP/1.1 status line they cannot.
    stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for p in range(len(stream) + 1):
        app = App()
        t, _, errors = serve(_loop, split_at(stream, [p]), app, LIM)
        assert not errors and not app.calls
        assert t.output == H2_GOAWAY and t.closed, p


def test_http10_stream_is_close_delimited():
    app = App()
    t, _, _ = serve(_loop, [b"POST /s HTTP/1.0\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi"], app, LIM)
    head, _, body = t.output.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    assert body == b"<hi>" and t.closed
