"""The response writer without sockets: head with the first chunk in one writev, the end in one writev,
chunked / Content-Length / close-delimited framing parsed back by h11, header injection refused."""

from __future__ import annotations

import asyncio
import random

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgw.proto.errors import HttpError, ProtocolError
from fastgw.proto.flow import FlowControl
from fastgw.proto.writer import Responder, build_head, plain_error


class Rec:
    """A transport that records each write call as one entry (a writev is one tuple)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, ...]] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.calls.append((data,))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.calls.append(tuple(parts))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = self.closing = True

    @property
    def wire(self) -> bytes:
        return b"".join(b"".join(c) for c in self.calls)


def responder(t: Rec, *, keep_alive: bool = True, head_only: bool = False, chunked: bool = True) -> Responder:
    loop = asyncio.new_event_loop()
    return Responder(t, FlowControl(loop), keep_alive, head_only, chunked)  # type: ignore[arg-type]


def h11_read(wire: bytes, method: str = "GET") -> tuple[h11.Response, bytes, bool]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    conn.receive_data(b"")  # then EOF: ends a close-delimited body
    resp, body, ended = None, b"", False
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Response):
            resp = ev
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            ended = True
            break
        else:
            break
    assert resp is not None
    return resp, body, ended


def test_head_goes_out_with_the_first_chunk_in_one_writev():
    t = Rec()
    r = responder(t)
    r.start_stream(200, [(b"content-type", b"text/event-stream")])
    assert t.calls == [] and r.head_pending
    r.write(b"data: 1\n\n")
    assert len(t.calls) == 1 and t.calls[0][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert t.calls[0][1:] == (b"9\r\n", b"data: 1\n\n", b"\r\n")
    assert not r.head_pending and r.first_write is not None


def test_payload_is_passed_on_not_copied():
    t = Rec()
    r = responder(t)
    r.start_stream(200, [])
    data = b"x" * 1000
    r.write(data)
    r.write(data)
    assert t.calls[0][2] is data and t.calls[1][1] is data


def test_empty_chunks_are_skipped_and_the_end_is_one_writev():
    t = Rec()
    r = responder(t)
    r.start_stream(200, [])
    r.write(b"a")
    r.write(b"")
    r.end(b"last")
    assert t.calls[1:] == [(b"4\r\n", b"last", b"\r\n", b"0\r\n\r\n")]
    resp, body, ended = h11_read(t.wire)
    assert body == b"alast" and ended and r.finished and r.bytes_sent == 5


def test_end_with_the_head_still_pending_is_one_writev():
    t = Rec()
    r = responder(t)
    r.start_stream(200, [])
    r.end()
    assert len(t.calls) == 1 and t.calls[0][-1] == b"0\r\n\r\n"
    assert h11_read(t.wire)[1:] == (b"", True)


@given(st.lists(st.binary(max_size=30), max_size=6), st.binary(max_size=10), st.booleans())
def test_any_stream_parses_with_h11(writes, last, chunked):
    t = Rec()
    r = responder(t, chunked=chunked)
    r.start_stream(200, [(b"x-a", b"1")])
    for w in writes:
        r.write(w)
    r.end(last)
    resp, body, ended = h11_read(t.wire)
    assert body == b"".join(writes) + last and ended
    headers = dict(resp.headers)
    assert (headers.get(b"transfer-encoding") == b"chunked") is chunked
    assert headers[b"connection"] == (b"keep-alive" if chunked else b"close")
    assert r.keep_alive is chunked  # a close-delimited body ends the connection


def test_send_is_head_and_body_in_one_writev_with_content_length():
    t = Rec()
    r = responder(t)
    r.extra_headers.append((b"x-request-id", b"r1"))
    r.send(201, [(b"content-type", b"application/json")], b"{}")
    assert len(t.calls) == 1 and t.calls[0][1] == b"{}"
    resp, body, _ = h11_read(t.wire)
    assert resp.status_code == 201 and body == b"{}" and dict(resp.headers)[b"x-request-id"] == b"r1"
    assert dict(resp.headers)[b"content-length"] == b"2" and r.status == 201
    with pytest.raises(RuntimeError):
        r.send(200, [], b"")


def test_head_request_gets_the_head_only():
    t = Rec()
    r = responder(t, head_only=True)
    r.send(200, [], b"body")
    assert t.calls == [(t.calls[0][0],)] and b"content-length: 4" in t.calls[0][0]
    t = Rec()
    r = responder(t, head_only=True)
    r.start_stream(200, [])
    r.write(b"x")
    r.end(b"y")
    assert len(t.calls) == 1 and t.calls[0][0].endswith(b"\r\n\r\n")


def test_send_error_renders_and_closes_on_framing_errors():
    t = Rec()
    r = responder(t)
    r.send_error(ProtocolError("bad framing"))
    assert not r.keep_alive
    resp, body, _ = h11_read(t.wire)
    assert resp.status_code == 400 and body == b"bad framing\n"
    assert dict(resp.headers)[b"connection"] == b"close"
    assert plain_error(HttpError("x"))[1] == b"x\n"


@pytest.mark.parametrize("name, value", [(b"x", b"a\r\nb"), (b"x", b"a\nb"), (b"x", b"a\x00"), (b"x\r\ny", b"v"),
                                         (b"x", b"a\rb"), (b"x", b"\n"), (b"x\ny", b"v"), (b"x\x00", b"v")])
def test_header_injection_is_refused(name, value):
    with pytest.raises(ValueError, match="invalid header"):
        build_head(200, [(name, value)], [], b"", True)
    with pytest.raises(ValueError, match="invalid header"):  # in the writer's own extra headers too
        build_head(200, [(b"content-type", b"text/plain")], [(name, value)], b"content-length: 1\r\n", False)


def test_header_checks_refuse_exactly_the_injected_heads():
    """The head refuses exactly the heads with a CR, LF or NUL in a name or a value, whatever mix of them the
    headers carry and wherever they sit, and every head it builds has one CRLF per line."""
    rng = random.Random(18)
    alphabet = [b"a", b"b", b"-", b" ", b"\r", b"\n", b"\x00", b"\r\n", b":"]
    for _ in range(3000):
        def field() -> bytes:
            return b"".join(rng.choice(alphabet) if rng.random() < 0.08 else b"v" for _ in range(rng.randint(0, 6)))
        headers = [(field() or b"n", field()) for _ in range(rng.randint(0, 4))]
        extra = [(field() or b"n", field()) for _ in range(rng.randint(0, 2))]
        framing = rng.choice([b"", b"content-length: 3\r\n", b"transfer-encoding: chunked\r\n"])
        bad = any(c in f for n, v in headers + extra for f in (n, v) for c in (b"\r", b"\n", b"\x00"))
        try:
            head = build_head(200, headers, extra, framing, rng.random() < 0.5)
        except ValueError:
            assert bad, (headers, extra)
        else:
            assert not bad, (headers, extra)
            assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n") == 5 + len(headers) + len(extra) + (
                1 if framing else 0)


def test_a_started_response_cannot_become_another():
    """A stream is started only with its first byte (the relay holds the head until then), so there is no
    undoing a start: a second response on the same responder is a programming error."""
    t = Rec()
    r = responder(t)
    r.start_stream(200, [])
    with pytest.raises(RuntimeError):
        r.send(502, [], b"no")
    r.write(b"data: x\n\n")
    r.end()
    assert h11_read(t.wire)[0].status_code == 200


def test_nothing_is_written_to_a_closing_transport_and_abort_cuts():
    t = Rec()
    r = responder(t)
    r.start_stream(200, [])
    t.closing = True
    r.write(b"x")
    r.end(b"y")
    assert t.calls == [] and r.finished
    t2 = Rec()
    r2 = responder(t2)
    r2.abort()
    assert t2.aborted and not r2.keep_alive
