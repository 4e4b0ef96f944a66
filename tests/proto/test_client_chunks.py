"""An upstream connection reads a chunked body's plain chunks itself (fastgw/proto/dechunk.py, or its C form), and a
plain head whole in a response's first read and a Content-Length body too (fastgw/proto/_plainheadc.c, where it is
built), and leaves the rest to llhttp: what it hands its sink — the body's bytes, its end, its error and the error's
message — is what llhttp alone reads from the same bytes, with and without the C heads, over a hostile corpus of
heads and bodies cut at any positions, and a connection reads the next response after one it decoded. Runs on the
pure-Python sources too (test_compiled)."""

from __future__ import annotations

import asyncio

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import client
from fastgw.proto.client import TransportError, UpstreamConnection

OK = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    close = abort

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Record:
    """A sink that keeps what it is handed."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended = False
        self.error: str | None = None

    def on_data(self, data: bytes) -> None:
        assert not self.ended and self.error is None
        self.data.append(data)

    def flush(self) -> None:
        pass

    def on_end(self) -> None:
        self.ended = True

    def on_error(self, exc: TransportError) -> None:
        self.error = str(exc)


def _through_connection(pieces: list[bytes], responses: int = 1,
                        c_heads: bool = True) -> list[tuple[bytes, bool, str | None]]:
    """Feed `pieces` to a connection carrying `responses` requests in turn; each response's (body, ended, error).
    `c_heads=False`: llhttp reads every head."""
    loop = asyncio.new_event_loop()
    try:
        conn = UpstreamConnection(("http", "upstream", 80), loop)
        if not c_heads:
            conn.read_head = None
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        out = []
        pieces = list(pieces)
        for _ in range(responses):
            task = loop.create_task(conn.request(b"GET / HTTP/1.1\r\n\r\n", 60))
            loop.run_until_complete(asyncio.sleep(0))
            rec = _Record()
            while pieces and not (rec.ended or rec.error is not None or conn.closed):
                conn.data_received(pieces.pop(0))
                loop.run_until_complete(asyncio.sleep(0))  # the exchange hears of its head
                if task.done() and conn._sink is None and task.exception() is None:
                    conn.set_sink(rec)
            if task.done() and task.exception() is not None:
                rec.error = str(task.exception())
            task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            out.append((b"".join(rec.data), rec.ended, rec.error))
            if not conn.reusable:
                break
        return out
    finally:
        loop.close()


def _through_llhttp(wire: bytes) -> tuple[bytes, bool, str | None]:
    """What llhttp alone reads from `wire` as one response (interim 1xx heads skipped), with the connection's own
    rule: bytes after the end leave the response standing."""
    body: list[bytes] = []
    state = {"head": False, "complete": False}

    class Callbacks:
        def on_message_begin(self) -> None:
            if state["complete"]:
                raise EOFError  # bytes after the end: the response stands

        def on_headers_complete(self) -> None:
            status = parser.get_status_code()
            state["head"] = not (100 <= status < 200 and status != 101)

        def on_body(self, data: bytes) -> None:
            body.append(data)

        def on_message_complete(self) -> None:
            state["complete"] = state["complete"] or state["head"]

    parser = httptools.HttpResponseParser(Callbacks())
    error = None
    try:
        parser.feed_data(wire)
    except httptools.HttpParserCallbackError:
        pass
    except httptools.HttpParserError as e:
        if not state["complete"]:
            error = f"bad upstream response: {e}"
    if not state["head"]:
        return b"", False, error  # no head: nothing was handed on
    return b"".join(body), state["complete"], error


def _cuts(wire: bytes, points: list[int]) -> list[bytes]:
    at = sorted({p % (len(wire) + 1) for p in points} | {0, len(wire)})
    return [wire[a:b] for a, b in zip(at, at[1:]) if b > a]


_data = st.binary(max_size=40) | st.sampled_from([b"data: {}\n\n", b"\r\n", b"\r\n\r\n", b"0\r\n\r\n", b"x" * 300])


@st.composite
def _chunk(draw: st.DrawFn) -> bytes:
    data = draw(_data)
    size = draw(st.sampled_from(["%x", "%X", "0%x", "000%x", "00000000%x", "%08x", "%x ", " %x", "%x;ext=1",
                                 "%x\t", "+%x", "%x%x", "-%x"]))
    try:
        line = (size % len(data)).encode()
    except TypeError:
        line = (size % (len(data), len(data))).encode()
    end = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"X", b"\rX", b"\r\r\n", b""]))
    head_end = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\rX"]))
    return line + head_end + data + end


_last = st.sampled_from([b"0\r\n\r\n"] * 4 + [b"000\r\n\r\n", b"0;x=y\r\n\r\n", b"0\r\nx-t: 1\r\n\r\n", b"0\r\n",
                                              b"", b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"0\r\n\r\nx", b"0\n\n"])
_head = st.sampled_from([OK, OK, OK, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nx-a: b\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\ntransfer-encoding:  chunked \r\n\r\n",
                         b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                         b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n",
                         b"HTTP/1.1 200 OK\ntransfer-encoding: chunked\n\n",
                         b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\t\r\n\r\n"])
_interim = st.lists(st.sampled_from([b"HTTP/1.1 100 Continue\r\n\r\n",
                                     b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n",
                                     b"\r\n", b"\r\n\r\n"]), max_size=2)  # (empty lines before a head)


@st.composite
def _wire(draw: st.DrawFn) -> bytes:
    wire = b"".join(draw(_interim)) + draw(_head) + b"".join(draw(st.lists(_chunk(), max_size=6))) + draw(_last)
    if wire and draw(st.integers(0, 4)) == 0:  # a stray byte anywhere
        at = draw(st.integers(0, len(wire) - 1))
        wire = wire[:at] + draw(st.sampled_from([b"\r", b"\n", b"0", b"f", b";", b" ", b"\x00"])) + wire[at + 1:]
    return wire


@settings(max_examples=300, deadline=None)
@given(_wire(), st.lists(st.integers(0, 10_000), max_size=8))
def test_a_chunked_body_reads_as_llhttp_reads_it_however_it_is_cut(wire: bytes, points: list[int]) -> None:
    _as_llhttp(wire, points)


def _as_llhttp(wire: bytes, points: list[int]) -> None:
    """A connection, with and without the C heads, reads the response as llhttp alone does."""
    want = [_through_llhttp(wire)]
    assert _through_connection(_cuts(wire, points)) == want
    assert _through_connection(_cuts(wire, points), c_heads=False) == want


_CL_HEAD = st.sampled_from([b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\nContent-Length:%d \r\n\r\n",
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                            b"content-length: %d\r\nconnection: keep-alive\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncontent-length: 3\r\n\r\n",
                            b"HTTP/1.1 200 \r\ncontent-length: %d\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n%d",
                            b"HTTP/1.1 204 No Content\r\ncontent-length: %d\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\nx-a: \x80\r\ncontent-length: %d\r\n\r\n",
                            b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n",
                            b"HTTP/1.1 200 OK\ncontent-length: %d\n\n",
                            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ntransfer-encoding: chunked\r\n\r\n"])


@st.composite
def _length_wire(draw: st.DrawFn) -> bytes:
    """A Content-Length response, the length right or not, and what may follow its end."""
    body = draw(st.binary(max_size=60))
    length = len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 5]))
    head = draw(_CL_HEAD) % max(length, 0)
    after = draw(st.sampled_from([b"", b"", b"\r\n", b"x", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]))
    return b"".join(draw(_interim)) + head + body + after


@settings(max_examples=200, deadline=None)
@given(_length_wire(), st.lists(st.integers(0, 10_000), max_size=5))
def test_a_length_body_reads_as_llhttp_reads_it_however_it_is_cut(wire: bytes, points: list[int]) -> None:
    _as_llhttp(wire, points)


@settings(max_examples=100, deadline=None)
@given(st.lists(_chunk(), max_size=6), st.integers(1, 9))
def test_byte_by_byte(chunks: list[bytes], step: int) -> None:
    wire = OK + b"".join(chunks) + b"0\r\n\r\n"
    assert _through_connection([wire[i:i + step] for i in range(0, len(wire), step)]) == [_through_llhttp(wire)]


def opened(loop: asyncio.AbstractEventLoop) -> tuple[UpstreamConnection, asyncio.Task[None]]:
    """A connection on a stub transport, its request sent and its head awaited."""
    conn = UpstreamConnection(("http", "upstream", 80), loop)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    task = loop.create_task(conn.request(b"GET / HTTP/1.1\r\n\r\n", 60))
    loop.run_until_complete(asyncio.sleep(0))
    return conn, task


def test_plain_chunks_are_handed_on_in_one_piece_per_read_and_the_end_is_llhttps() -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (b"data: 1\n\n", b"data: 22\n\n", b"data: 333\n\n"))
    loop = asyncio.new_event_loop()
    try:
        conn, task = opened(loop)
        conn.data_received(OK + body[:10])
        assert conn._fast and conn._held == [b"data: 1"]  # the head's read: the head read (in C or by llhttp), no more
        conn.data_received(body[10:])
        assert conn._held == [b"data: 1", b"\n\ndata: 22\n\ndata: 333\n\n"] and conn._fast
        rec = _Record()
        conn.set_sink(rec)
        conn.data_received(b"0\r\n\r\n")
        loop.run_until_complete(task)
        assert not conn._fast and rec.ended and conn.reusable
        assert b"".join(rec.data) == b"data: 1\n\ndata: 22\n\ndata: 333\n\n"
    finally:
        loop.close()


def test_a_cut_size_line_waits_for_the_rest() -> None:
    wire = OK + b"1a\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n"
    at = len(OK) + 1  # after "1"
    assert _through_connection([wire[:at], wire[at:at + 2], wire[at + 2:]]) == [(b"z" * 26, True, None)]


@pytest.mark.parametrize("c_heads", [True, False])
def test_a_coding_llhttp_does_not_read_as_chunked_is_not_decoded(c_heads: bool) -> None:
    """llhttp reads `chunked` then a tab as another coding (a body that runs to the close): so does the connection."""
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    got = _through_connection([wire], c_heads=c_heads)
    assert got == [(b"3\r\nabc\r\n0\r\n\r\n", False, None)] == [_through_llhttp(wire)]


def test_chunk_data_without_its_crlf_is_llhttps_error() -> None:
    for bad, message in ((b"\n", "Missing expected CR after chunk data"), (b"X", "Expected LF after chunk data"),
                         (b"\rX", "Expected LF after chunk data")):
        wire = OK + b"3\r\nabc" + bad + b"0\r\n\r\n"
        got = _through_connection([wire])
        assert got == [(b"abc", False, f"bad upstream response: {message}")] == [_through_llhttp(wire)]


@pytest.mark.parametrize("c_heads", [True, False])
def test_the_next_response_on_the_connection_after_a_decoded_one(c_heads: bool) -> None:
    first = OK + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    second = OK + b"4\r\nwxyz\r\n0\r\nx-trailer: 1\r\n\r\n"
    third = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    fourth = b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"1\r\nz\r\n0\r\n\r\n"
    wire = first + second + third
    for cut in range(0, len(wire), 3):
        got = _through_connection([first, second[:cut], second[cut:], third, third[:20], third[20:], fourth]
                                  if cut < len(second) else [first, second, third, third, fourth], responses=5,
                                  c_heads=c_heads)
        assert got == [(b"abcde", True, None), (b"wxyz", True, None), (b"ok", True, None), (b"ok", True, None),
                       (b"z", True, None)], cut


def test_the_decoder_in_use() -> None:
    """The C form where it is built (test_compiled holds that it is), else the Python form."""
    try:
        from fastgw.proto import _dechunkc
    except ImportError:
        assert client._dechunk is client.dechunk_py and client._head_cut is client.head_cut_py
    else:
        assert client._dechunk is _dechunkc.dechunk and client._head_cut is _dechunkc.head_cut
