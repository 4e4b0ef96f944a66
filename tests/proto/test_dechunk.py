"""The chunk decoder in C (fastgw/proto/_dechunkc.c) is the Python form (fastgw/proto/dechunk.py) call for call:
the same body, offset, code and state over hostile bytes from every state and start; and what the codes mean, by
example.
(Both forms against llhttp, inside a connection: tests/proto/test_client_chunks.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import _dechunkc
from fastgw.proto.dechunk import DONE, LLHTTP, MORE, NO_CR, NO_LF, dechunk, head_cut

_bytes = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"0", b"1", b"9", b"a", b"F", b"g", b";", b" ", b"\x00",
                                   b"\xff", b"10\r\n", b"3\r\nabc\r\n", b"0\r\n\r\n", b"ffffffff\r\n",
                                   b"123456789\r\n"]) | st.binary(max_size=12), max_size=12).map(b"".join)
#: A state: a chunk's data due (left << 2), its CR LF due (2 or 1), or a boundary (0).
_state = st.integers(1, 40).map(lambda left: left << 2) | st.integers(0, 2)


def _py(data: bytes, start: int, state: int) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    return out, dechunk(data, start, state, out)


def _c(data: bytes, start: int, state: int) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    return out, _dechunkc.dechunk(data, start, state, out)


def _read(got: tuple[list[bytes], int]) -> tuple[bytes, int, int, int]:
    """(body, code, offset or -1, state or -1) of a call's outcome."""
    out, r = got
    assert len(out) <= 1 and out != [b""]
    code = r & 7
    return b"".join(out), code, -1 if code == DONE else r >> 3, r >> 3 if code == DONE else -1


@settings(max_examples=800)
@given(_bytes, st.integers(0, 200), _state)
def test_the_c_form_is_the_python_form(data: bytes, start: int, state: int) -> None:
    start %= len(data) + 1
    got = _py(data, start, state)
    assert _c(data, start, state) == got
    # From `start` as from a copy of what follows it, the offset aside.
    body, code, at, after = _read(_py(data[start:], 0, state))
    assert _read(got) == (body, code, at + start if at >= 0 else at, after)


@pytest.mark.parametrize("data, state, expected", [
    (b"3\r\nabc\r\n4\r\nwxyz\r\n", 0, (b"abcwxyz", DONE, -1, 0)),
    (b"3\r\nabc\r\n4\r\nwx", 0, (b"abcwx", DONE, -1, 2 << 2)),  # two bytes of the chunk still due
    (b"yz\r", 2 << 2, (b"yz", DONE, -1, 1)),  # its LF still due
    (b"\n", 1, (b"", DONE, -1, 0)),
    (b"3\r\nabc\r\n1", 0, (b"abc", MORE, 8, -1)),  # a size line cut after a digit
    (b"3\r\nabc\r\n1f\r", 0, (b"abc", MORE, 8, -1)),  # ... after its CR
    (b"3\r\nabc\r\n0\r\n\r\n", 0, (b"abc", LLHTTP, 8, -1)),  # the last chunk is llhttp's
    (b"3;x=1\r\nabc\r\n", 0, (b"", LLHTTP, 0, -1)),  # as is an extension
    (b"000000001\r\na\r\n", 0, (b"", LLHTTP, 0, -1)),  # and a ninth digit
    (b"00000001\r\na\r\n", 0, (b"a", DONE, -1, 0)),
    (b"3 \r\nabc\r\n", 0, (b"", LLHTTP, 0, -1)),
    (b"3\rXabc\r\n", 0, (b"", LLHTTP, 0, -1)),
    (b"3\r\nabc\nX", 0, (b"abc", NO_CR, 6, -1)),
    (b"3\r\nabcX", 0, (b"abc", NO_LF, 6, -1)),
    (b"3\r\nabc\rX", 0, (b"abc", NO_LF, 7, -1)),
    (b"", 5 << 2, (b"", DONE, -1, 5 << 2)),
])
def test_codes(data: bytes, state: int, expected: tuple[bytes, int, int, int]) -> None:
    assert _read(_py(data, 0, state)) == expected == _read(_c(data, 0, state))
    body, code, at, after = expected
    assert _read(_c(b"skip" + data, 4, state)) == (body, code, at + 4 if at >= 0 else at, after)


def test_wrong_calls() -> None:
    for args in ((b"", 0, 0), ("3\r\n", 0, 0, []), (bytearray(b""), 0, 0, []), (b"", 0, 0.0, []), (b"", 0, 0, ()),
                 (b"", 0, 0, [], 0)):
        with pytest.raises(TypeError):
            _dechunkc.dechunk(*args)  # type: ignore[arg-type]
    for start, state in ((0, -1), (0, 3), (0, 1 << 2 | 2), (-1, 0), (4, 0), (0, 1 << 40)):
        with pytest.raises(ValueError):
            _dechunkc.dechunk(b"abc", start, state, [])


_head = st.lists(st.sampled_from([b"HTTP/1.1 200 OK", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"chunked", b"Chunked",
                                  b"hunk", b"ed", b"transfer-encoding: ", b"x"]), max_size=10).map(b"".join)


@settings(max_examples=600)
@given(_head, st.integers(0, 100))
def test_head_cut_in_c_is_the_python_form(data: bytes, start: int) -> None:
    start %= len(data) + 1
    assert _dechunkc.head_cut(data, start) == head_cut(data, start)


@pytest.mark.parametrize("data, start, expected", [
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc", 0, 47),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, 47),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nchunked", 0, -1),  # "chunked" in the body is not the head's
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n", 0, -1),  # no end yet
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nte: chunked\r\n\r\n", 0, -1),  # the interim head names none
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nte: chunked\r\n\r\n", 25, 57),
])
def test_head_cut(data: bytes, start: int, expected: int) -> None:
    assert head_cut(data, start) == expected == _dechunkc.head_cut(data, start)
    with pytest.raises(ValueError):
        _dechunkc.head_cut(data, len(data) + 1)
