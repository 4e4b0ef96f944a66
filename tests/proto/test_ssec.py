"""The SSE decoder's line-end searches in C (fastgw/proto/_ssec.c) equal their Python forms (sse.py), which are
`bytes.find` from a start; the decoder uses them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import _ssec, sse
from fastgw.proto.sse import find_lf_py, find_lflf_py

_bytes = st.lists(st.sampled_from([b"\n", b"\n\n", b"\r", b"x", b"data: {}", b"\x00", b"\xff"]),
                  max_size=20).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(_bytes, st.integers(0, 200))
def test_the_c_searches_are_bytes_find(data: bytes, pos: int) -> None:
    assert _ssec.find_lf(data, pos) == find_lf_py(data, pos) == data.find(b"\n", pos)
    assert _ssec.find_lflf(data, pos) == find_lflf_py(data, pos) == data.find(b"\n\n", pos)


@pytest.mark.parametrize("data, pos, lf, lflf", [
    (b"", 0, -1, -1), (b"\n", 0, 0, -1), (b"\n", 1, -1, -1), (b"\n\n", 1, 1, -1), (b"a\n\nb\n\n", 3, 4, 4),
    (b"a\n\nb", 1, 1, 1), (b"a\n\nb", 2, 2, -1), (b"ab", 9, -1, -1),
])
def test_by_example(data: bytes, pos: int, lf: int, lflf: int) -> None:
    assert (_ssec.find_lf(data, pos), _ssec.find_lflf(data, pos)) == (lf, lflf)


def test_wrong_calls() -> None:
    for f in (_ssec.find_lf, _ssec.find_lflf, find_lf_py, find_lflf_py):
        with pytest.raises(ValueError):
            f(b"a\n", -1)
    for c in (_ssec.find_lf, _ssec.find_lflf):
        with pytest.raises(TypeError):
            c(bytearray(b"\n"), 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c(b"\n")  # type: ignore[call-arg]


def test_the_decoder_uses_them() -> None:
    assert (sse._find_lf, sse._find_lflf) == (_ssec.find_lf, _ssec.find_lflf)
