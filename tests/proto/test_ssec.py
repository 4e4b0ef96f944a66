"""The SSE decoder's per-event work in C (fastgw/proto/_ssec.c) equals its Python forms (sse.py): `find_lflf` is
`bytes.find(b"\\n\\n", pos)`, `block_start` a fresh block's first line end and, for one `data: ` line, its text as
the decoder read it before (a slice decoded UTF-8 with errors replaced); the decoder uses them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import _ssec, sse
from fastgw.proto.sse import block_start_py, find_lflf_py

_bytes = st.lists(st.sampled_from([b"\n", b"\n\n", b"\r", b"x", b"data: {}", b"data: ", b"data:", b"data", b"\x00",
                                   b"\xff", b"\xe2\x82", b"\xac", "é😀".encode(), b"event: e", b": c"]),
                  max_size=20).map(b"".join)


def _block_start_by_hand(data: bytes, pos: int) -> tuple[str | None, int, bool]:
    """What the decoder's loop computed itself before block_start: a first LF, the byte after it, a 6-byte slice
    compared with `data: ` and the line's value decoded."""
    f = data.find(b"\n", pos)
    if f < 0 or f + 1 >= len(data):
        return None, -1, False
    one_line = data[f + 1:f + 2] == b"\n"
    text = data[pos + 6:f].decode("utf-8", "replace") if one_line and data[pos:pos + 6] == b"data: " else None
    return text, f, one_line


@settings(max_examples=500, deadline=None)
@given(_bytes, st.integers(0, 200))
def test_the_c_forms_are_the_python_forms(data: bytes, pos: int) -> None:
    assert _ssec.find_lflf(data, pos) == find_lflf_py(data, pos) == data.find(b"\n\n", pos)
    got = _ssec.block_start(data, pos)
    assert got == block_start_py(data, pos) == _block_start_by_hand(data, pos), (data, pos)
    assert type(got[2]) is bool


@pytest.mark.parametrize("data, pos, lflf", [
    (b"", 0, -1), (b"\n", 0, -1), (b"\n", 1, -1), (b"\n\n", 1, -1), (b"a\n\nb\n\n", 3, 4), (b"a\n\nb", 1, 1),
    (b"a\n\nb", 2, -1), (b"ab", 9, -1),
])
def test_find_lflf_by_example(data: bytes, pos: int, lflf: int) -> None:
    assert _ssec.find_lflf(data, pos) == lflf


@pytest.mark.parametrize("data, pos, expected", [
    (b"", 0, (None, -1, False)), (b"data: x\n", 0, (None, -1, False)),  # the byte after the LF not yet here
    (b"data: x\nid: 1\n\n", 0, (None, 7, False)), (b"data: x\n\n", 0, ("x", 7, True)),
    (b"data: \n\n", 0, ("", 6, True)), (b"data:x\n\n", 0, (None, 6, True)), (b"event: e\n\n", 0, (None, 8, True)),
    (b"\n\ndata: a\xff\xe2\x82\n\n", 2, ("a\ufffd\ufffd", 12, True)), (b"data: \xe2\x82\xac\n\n", 0, ("€", 9, True)),
    (b"xx", 9, (None, -1, False)),
])
def test_block_start_by_example(data: bytes, pos: int, expected: tuple) -> None:
    assert _ssec.block_start(data, pos) == expected == block_start_py(data, pos)


def test_wrong_calls() -> None:
    for f in (_ssec.block_start, _ssec.find_lflf, block_start_py, find_lflf_py):
        with pytest.raises(ValueError):
            f(b"a\n", -1)
    for c in (_ssec.block_start, _ssec.find_lflf):
        with pytest.raises(TypeError):
            c(bytearray(b"\n"), 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c(b"\n")  # type: ignore[call-arg]


def test_the_decoder_uses_them() -> None:
    assert (sse._block_start, sse._find_lflf) == (_ssec.block_start, _ssec.find_lflf)
