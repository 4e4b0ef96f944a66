"""The plain request heads read in C (fastgw/proto/_plainheadc.c): what `request` takes and leaves to llhttp, and a
reader using it equal to one giving every head to llhttp, over a hostile corpus, pipelined and split anywhere."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import h1
from fastgw.proto._plainheadc import request as read_head
from fastgw.proto._plainheadc import response as read_response
from fastgw.proto.errors import HttpError, LimitError
from fastgw.proto.h1 import FAILED, IDLE, Request, RequestReader
from tests.proto.test_client_chunks import _Record, opened

PLAIN = (b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw:8080\r\nContent-Type: application/json\r\n"
         b"Authorization:Bearer sk-1 \t\r\nConnection: Keep-Alive\r\nX-Empty:\r\nContent-Length: 5\r\n\r\nhello")


def test_a_plain_head_is_read_with_its_fields_lower_cased_and_trimmed() -> None:
    got = read_head(PLAIN, 0, 8192, 100)
    assert got is not None
    method, target, headers, end = got
    assert (method, target, end) == ("POST", b"/v1/chat/completions?x=1", len(PLAIN) - 5)
    assert headers == [(b"host", b"gw:8080"), (b"content-type", b"application/json"),
                       (b"authorization", b"Bearer sk-1"), (b"connection", b"Keep-Alive"), (b"x-empty", b""),
                       (b"content-length", b"5")]
    assert read_head(b"xx" + PLAIN, 2, 8192, 100) == got[:3] + (end + 2,)
    assert read_head(b"GET / HTTP/1.1\r\n\r\n", 0, 100, 0) == ("GET", b"/", [], 18)


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # not whole
    b"GET / HTTP/1.1\r\nHost: x\r\n\r",
    b"\r\nGET / HTTP/1.1\r\n\r\n",  # an empty line first
    b"get / HTTP/1.1\r\n\r\n", b"CONNECT / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n", b"GET * HTTP/1.1\r\n\r\n", b"GET http://h/ HTTP/1.1\r\n\r\n",
    b"GET /a#f HTTP/1.1\r\n\r\n", b"GET /\x7f HTTP/1.1\r\n\r\n", b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.2\r\n\r\n", b"GET / HTTP/1.1 \r\n\r\n", b"GET /\r\n\r\n",
    b"GET / HTTP/1.1\n\r\n", b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", b"GET / HTTP/1.1\r\n: x\r\n\r\n", b"GET / HTTP/1.1\r\nA\x00: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: x\r\n continued\r\n\r\n", b"GET / HTTP/1.1\r\nA: \xff\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: x\x00y\r\n\r\n", b"GET / HTTP/1.1\r\nA: x\ry\r\n\r\n", b"GET / HTTP/1.1\r\nA: x\x7f\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: 1\r\n"
    b"Content-Length: 1\r\n\r\nx", b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\nx", b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1234567890123456\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive, te\r\n\r\n", b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
    b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
])
def test_what_is_not_plain_is_left_to_llhttp(head: bytes) -> None:
    assert read_head(head, 0, 8192, 100) is None


def test_the_limits_leave_a_head_to_llhttp() -> None:
    head = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n"
    assert read_head(head, 0, len(head), 2) is not None
    assert read_head(head, 0, len(head) - 1, 2) is None  # longer than max_bytes
    assert read_head(head, 0, len(head), 1) is None  # more fields than max_headers


def test_a_plain_response_head_is_read_with_its_values_as_llhttp_gives_them() -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A:  b \t\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: Chunked\r\n\r\n")
    assert read_response(head + b"5\r\n", 0, 8192, 100) == (
        200, [(b"content-type", b"text/event-stream"), (b"x-a", b"b \t"), (b"connection", b"keep-alive"),
              (b"transfer-encoding", b"Chunked")], -1, len(head))
    cl = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 12\r\n\r\n"
    assert read_response(b"x" + cl, 1, 8192, 100) == (429, [(b"content-length", b"12")], 12, len(cl) + 1)
    assert read_response(b"HTTP/1.1 200 \r\ncontent-length: 0\r\n\r\n", 0, 100, 1) == (
        200, [(b"content-length", b"0")], 0, 36)


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n",  # not whole
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 600 X\r\ncontent-length: 0\r\n\r\n", b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n", b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",  # no framing: the body runs to the close
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\t\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked \r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 1 \r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nUpgrade: h2c\r\n\r\n", b"HTTP/1.1 200 OK\ncontent-length: 1\n\n",
    b"HTTP/1.1 200 \xc3\xa9\r\ncontent-length: 1\r\n\r\n", b"HTTP/1.1 200 OK\r\nx: \x80\r\ncontent-length: 1\r\n\r\n",
])
def test_what_is_not_a_plain_response_is_left_to_llhttp(head: bytes) -> None:
    assert read_response(head, 0, 8192, 100) is None


def test_wrong_calls() -> None:
    with pytest.raises(TypeError):
        read_response(PLAIN, 0, 1)
    with pytest.raises(TypeError):
        read_head(bytearray(PLAIN), 0, 1, 1)
    with pytest.raises(TypeError):
        read_head(PLAIN, 0, 1)
    with pytest.raises(ValueError):
        read_head(PLAIN, len(PLAIN) + 1, 1, 1)
    with pytest.raises(ValueError):
        read_head(PLAIN, -1, 1, 1)


def test_the_reader_uses_it_and_the_python_form_is_llhttp() -> None:
    assert RequestReader().read_head is read_head is h1.read_request
    r = RequestReader()
    r.read_head = None
    r.feed(PLAIN)
    assert [type(e) for e in r.events] == [Request]


# ---- the reader with and without it ---------------------------------------------------------------------

def _refuse(req: Request) -> HttpError | None:
    # on_head refuses some heads, so the refusal path is compared too.
    return LimitError("refused", status=503, code="busy") if req.path == "/refuse" else None


def _reader(fast: bool) -> RequestReader:
    r = RequestReader(max_header_bytes=300, max_headers=6, max_body_bytes=64)
    r.on_head = _refuse
    r.peer = "p"
    if not fast:
        r.read_head = None
    return r


def _summary(r: RequestReader) -> tuple:
    evs: list[tuple] = []
    for e in r.events:
        if isinstance(e, Request):
            evs.append(("req", e.method, e.target, e.path, e.query, e.headers, e.body, e.version, e.keep_alive, e.seq,
                        None if e.refusal is None else (e.refusal.status, str(e.refusal)), e.peer))
        else:
            evs.append(("err", type(e).__name__, e.status, e.code, str(e), e.close,
                        None if e.request is None else (e.request.method, e.request.target, e.request.headers)))
    return (evs, r.state, r.heads, r.continue_due, r.body_received, r.body_remaining, r.in_head, r.in_message)


def _run(data: bytes, cuts: list[int], fast: bool) -> tuple:
    r = _reader(fast)
    last = 0
    for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        if c > last:
            r.feed(data[last:c])
            last = c
    return _summary(r)


def _same(data: bytes, cuts: list[int]) -> None:
    assert _run(data, cuts, True) == _run(data, cuts, False), (data, cuts)


_METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"PATCH", b"DELETE", b"OPTIONS", b"CONNECT", b"get", b"FOO", b"PRI"]
_TARGETS = [b"/", b"/v1/chat/completions", b"/a?b=c&d", b"/refuse", b"/a#f", b"*", b"http://h/x", b"/a b", b"/\x7f",
            b"/\xc3\xa9", b"/%00", b"/a?b?c", b"/" + b"x" * 200, b"", b"/\"<>\\^`{|}"]
_VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1", b"HTTP/11", b""]
_NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
          b"Upgrade", b"Expect", b"Proxy-Connection", b"X-A", b"Authorization", b"A B", b"", b"X\x00", b"X:Y",
          b"\xc3\xa9", b"Keep-Alive", b"TE", b"Trailer"]
_VALUES = [b"x", b"gw:80", b"bad host", b"", b" ", b"0", b"5", b"05", b" 5 ", b"+5", b"5 5", b"99999", b"-1",
           b"chunked", b"chunked, ", b"gzip, chunked", b"close", b"keep-alive", b"Keep-Alive", b"upgrade",
           b"keep-alive, upgrade", b"h2c", b"100-continue", b"\tv\t", b"a\x00b", b"\xff", b"a\x7fb", b"a\rb",
           b"v" * 120]
_EOLS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "]

_field = st.tuples(st.sampled_from(_NAMES), st.sampled_from([b":", b": ", b":\t", b" :", b""]),
                   st.sampled_from(_VALUES), st.sampled_from(_EOLS))


@st.composite
def _message(draw: st.DrawFn) -> bytes:
    """One request, mostly plain (a Host and a right Content-Length), with hostile variations drawn in."""
    plain = draw(st.booleans())
    method = b"POST" if plain else draw(st.sampled_from(_METHODS))
    target = b"/v1/x" if plain else draw(st.sampled_from(_TARGETS))
    version = b"HTTP/1.1" if plain else draw(st.sampled_from(_VERSIONS))
    body = draw(st.binary(max_size=80))
    fields = [(b"Host", b": ", b"gw", b"\r\n")] if draw(st.booleans()) else []
    fields += draw(st.lists(_field, max_size=3 if plain else 7))
    if draw(st.booleans()):
        fields.append((b"Content-Length", b": ", b"%d" % len(body), b"\r\n"))
    fields = draw(st.permutations(fields))
    head = b"".join([method, b" ", target, b" ", version, b"\r\n"] + [n + s + v + e for n, s, v, e in fields])
    lead = draw(st.sampled_from([b"", b"", b"", b"\r\n", b"\n"]))
    return lead + head + b"\r\n" + body[:draw(st.integers(0, len(body)))] if not plain else head + b"\r\n" + body


@settings(max_examples=400, deadline=None)
@given(st.lists(_message(), min_size=1, max_size=4), st.lists(st.integers(0, 600), max_size=4))
def test_a_reader_with_it_gives_what_llhttp_alone_gives(messages: list[bytes], cuts: list[int]) -> None:
    _same(b"".join(messages), cuts)


_PLAIN_GET = b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n"
_CORPUS = [
    PLAIN, PLAIN + _PLAIN_GET + PLAIN, _PLAIN_GET * 3,
    PLAIN + b"GET / HTTP/1.0\r\n\r\n" + PLAIN,  # a head llhttp reads between plain ones
    PLAIN + b"POST /c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + PLAIN,
    PLAIN + b"POST /n HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, \r\n\r\n1\r\nx\r\n0\r\n\r\n" + _PLAIN_GET,
    PLAIN + b"\r\n" + _PLAIN_GET,  # an empty line between messages
    _PLAIN_GET + b"GET /refuse HTTP/1.1\r\nHost: gw\r\n\r\n" + _PLAIN_GET,  # on_head refuses the second
    _PLAIN_GET + b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" + _PLAIN_GET,  # an invalid Host
    _PLAIN_GET + b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    _PLAIN_GET + b"GET / HTTP/1.1\r\n\r\n",  # no Host
    _PLAIN_GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65\r\n\r\n" + b"x" * 65,  # over max_body_bytes
    _PLAIN_GET + b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 300 + b"\r\n\r\n",  # over max_header_bytes
    _PLAIN_GET + b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 6 + b"\r\n",  # over max_headers
    _PLAIN_GET + b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n",  # 501
    _PLAIN_GET + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    _PLAIN_GET + b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nhi"
    + _PLAIN_GET,
    _PLAIN_GET + b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi" + _PLAIN_GET,
    _PLAIN_GET + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + _PLAIN_GET,
    _PLAIN_GET + b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    PLAIN + b"GET /x HTTP/1.1\r\nHost: gw\r\n",  # the last head unfinished
]


@pytest.mark.parametrize("data", _CORPUS)
def test_the_corpus_split_anywhere(data: bytes) -> None:
    _same(data, [])
    for i in range(1, len(data)):
        _same(data, [i])


_EDIT_BYTES = b"\r\n \t:\x00\x7f\x80\xff#?/aAzZ09-_,;\"\\"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_CORPUS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2),
                                                     st.sampled_from(_EDIT_BYTES)), min_size=1, max_size=3),
       st.lists(st.integers(0, 600), max_size=3))
def test_the_corpus_mutated(data: bytes, edits: list[tuple[int, int, int]], cuts: list[int]) -> None:
    """Bytes of the corpus replaced, inserted or deleted: the edge of the plain subset, byte by byte."""
    buf = bytearray(data)
    for at, op, c in edits:
        k = at % len(buf)
        if op == 0:
            buf[k] = c
        elif op == 1:
            buf.insert(k, c)
        elif len(buf) > 1:
            del buf[k]
    _same(bytes(buf), cuts)


@pytest.mark.parametrize("fast", [True, False])
def test_a_fault_of_on_head_is_a_400_with_or_without_it(fast: bool) -> None:
    def broken(req: Request) -> HttpError | None:
        raise RuntimeError("a bug")

    r = _reader(fast)
    r.on_head = broken
    r.feed(_PLAIN_GET)
    (err,) = r.events
    assert isinstance(err, HttpError) and err.status == 400 and str(err) == "malformed request: User callback error"
    assert r.state is FAILED


def test_a_body_read_after_its_head_in_c() -> None:
    r = _reader(True)
    head, body = PLAIN[:-5], PLAIN[-5:]
    r.feed(head + body[:2])
    assert r.state is h1.BODY and r.body_received == 2 and r.body_remaining == 3 and not r.events
    r.feed(body[2:4])
    assert r.body_received == 4 and r.body_remaining == 1
    r.feed(body[4:] + _PLAIN_GET)
    assert [(e.method, e.body) for e in r.events if isinstance(e, Request)] == [("POST", b"hello"), ("GET", b"")]
    assert r.state is IDLE and r.heads == 2
    r.fail(LimitError("late", status=408, code="timeout"))
    assert r.state is FAILED


def test_a_head_read_in_c_then_its_body_in_pieces() -> None:
    """A chunked body's end goes to llhttp behind the stand-in head, which changes nothing the exchange read; a
    Content-Length body is taken by count."""
    loop = asyncio.new_event_loop()
    try:
        conn, task = opened(loop)
        assert conn.read_head is read_response
        conn.data_received(b"HTTP/1.1 201 Created\r\nx-a:  b \r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        assert conn._unseen and conn._fast and conn.status == 201
        assert conn.headers == [(b"x-a", b"b "), (b"transfer-encoding", b"chunked")]  # llhttp's values: OWS kept
        rec = _Record()
        loop.run_until_complete(task)
        conn.set_sink(rec)
        conn.data_received(b"0\r\nx-t: 1\r\n\r\n")
        assert not conn._unseen and rec.ended and conn.reusable and conn.status == 201
        # (The relay took the body, so the head's fields were dropped: only the trailer came after, as through llhttp
        # alone; the synthetic head's field is not there.)
        assert conn.headers == [(b"x-t", b"1")]
        task = loop.create_task(conn.request(b"GET / HTTP/1.1\r\n\r\n", 60))
        loop.run_until_complete(asyncio.sleep(0))
        conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe")
        assert conn._body_left == 3 and conn._held == [b"he"] and not conn._complete
        conn.data_received(b"llo")
        assert conn._body_left == 0 and conn._complete
        loop.run_until_complete(task)
        assert loop.run_until_complete(conn.read_body()) == b"hello" and conn.reusable
    finally:
        loop.close()


# ---- the heads real SDKs send ---------------------------------------------------------------------------

def _recorded(send: Callable[[str], object], answer: bytes) -> list[bytes]:
    """The raw requests `send(base_url)` makes to a loopback server that answers each with `answer`."""
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                buf = b""
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:end])
                    size = end + 4 + (int(m[1]) if m else 0)
                    if len(buf) >= size:
                        got.append(buf[:size])
                        buf = buf[size:]
                        conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        send("http://127.0.0.1:%d" % srv.getsockname()[1])
    finally:
        t.join(10)
    return got


def _answer(body: bytes, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (ctype, len(body), body)


_CHAT = (b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":'
         b'{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,'
         b'"completion_tokens":1,"total_tokens":2}}')
_STREAM = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[]}\n\ndata: [DONE]\n\n'
_MESSAGE = (b'{"id":"m","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hi"}],'
            b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}')


def _openai(base: str, stream: bool) -> None:
    import openai
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    with client:
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=stream)
        if stream:
            list(out)  # type: ignore[arg-type]


def _anthropic(base: str) -> None:
    import anthropic
    client = anthropic.Anthropic(base_url=base, api_key="sk-test", max_retries=0, timeout=10)
    with client:
        client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("send, answer", [
    (lambda base: _openai(base, False), _answer(_CHAT)),
    (lambda base: _openai(base, True), _answer(_STREAM, b"text/event-stream")),
    (_anthropic, _answer(_MESSAGE)),
], ids=["openai", "openai-stream", "anthropic"])
def test_the_python_sdks_heads_are_read_in_c(send: Callable[[str], object], answer: bytes) -> None:
    """The subset is what clients send: each SDK's request head is read whole by the C reader."""
    (raw,) = _recorded(send, answer)
    got = read_head(raw, 0, 64 * 1024, 100)
    assert got is not None, raw[:raw.find(b"\r\n\r\n")]
    method, target, headers, end = got
    assert method == "POST" and target.startswith(b"/v1/") and raw[end:]
    assert [n for n, _ in headers].count(b"host") == 1 and len(headers) >= 5  # (the SDKs send a dozen)
