"""Chunked framing, checked by an independent HTTP/1.1 parser (h11), whole and byte by byte."""

from __future__ import annotations

import h11
from hypothesis import given
from hypothesis import strategies as st

from fastgw.proto.chunked import LAST_CHUNK, frame_chunk, size_line, write_chunk

HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def h11_body(wire: bytes, pieces: list[bytes] | None = None) -> tuple[bytes, bool]:
    """Body h11 reads from a chunked response, and whether it saw EndOfMessage."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "example")]))
    conn.send(h11.EndOfMessage())
    body = []
    ended = False
    for piece in pieces if pieces is not None else [wire]:
        conn.receive_data(piece)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                break
            if isinstance(ev, h11.Data):
                body.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                ended = True
                break
            else:
                assert isinstance(ev, h11.Response) and ev.status_code == 200
        if ended:
            break
    return b"".join(body), ended


def written(payloads: list[bytes]) -> bytes:
    out: list[bytes] = []
    for p in payloads:
        write_chunk(out.extend, p)
    return b"".join(out)


payloads = st.lists(st.one_of(st.just(b""), st.binary(max_size=40), st.binary(min_size=200, max_size=600)), max_size=12)


@given(payloads)
def test_write_chunk_parsed_by_h11(ps):
    wire = HEAD + written(ps) + LAST_CHUNK
    assert h11_body(wire) == (b"".join(ps), True)
    assert h11_body(wire, [wire[i : i + 1] for i in range(len(wire))]) == (b"".join(ps), True)


@given(payloads)
def test_frame_chunk_parsed_by_h11(ps):
    body = b"".join(frame_chunk(p) for p in ps)
    assert body == written(ps)
    wire = HEAD + body + LAST_CHUNK
    assert h11_body(wire) == (b"".join(ps), True)


def test_empty_payload_writes_nothing():
    calls: list[bytes] = []
    write_chunk(calls.extend, b"")
    assert calls == []
    assert frame_chunk(b"") == b""
    # an empty chunk must not end the body early
    wire = HEAD + frame_chunk(b"a") + frame_chunk(b"") + frame_chunk(b"b") + LAST_CHUNK
    assert h11_body(wire) == (b"ab", True)


def test_write_chunk_does_not_copy_payload():
    calls: list[tuple] = []
    data = b"x" * 1000
    write_chunk(calls.append, data)
    assert len(calls) == 1  # one writelines call: one writev on the socket
    assert calls[0][1] is data
    assert calls[0] == (b"3e8\r\n", data, b"\r\n")


def test_exact_framing():
    assert frame_chunk(b"hello") == b"5\r\nhello\r\n"
    assert frame_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert h11_body(HEAD + LAST_CHUNK) == (b"", True)


def test_size_line_is_the_size_in_hex_whether_kept_or_made() -> None:
    for n in [*range(0, 5000), 0xFFFF, 1 << 20, (1 << 40) + 7]:
        assert size_line(n) == b"%x\r\n" % n, n
    assert size_line(300) is size_line(300)  # made once, then kept
