"""The SSE decoder's per-event work in C (fastgw/proto/_ssec.c) equals its Python forms (sse.py): `find_lflf` is
`bytes.find(b"\\n\\n", pos)`, `blocks` a run of common blocks (one `data: ` line each) as the decoder's loop read
them one by one before (a first line end, the byte after it, `data: ` compared and the value decoded UTF-8 with
errors replaced); the decoder uses them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import _ssec, sse
from fastgw.proto.sse import blocks_py, find_lflf_py

_bytes = st.lists(st.sampled_from([b"\n", b"\n\n", b"\r", b"x", b"data: {}", b"data: ", b"data:", b"data", b"\x00",
                                   b"\xff", b"\xe2\x82", b"\xac", "é😀".encode(), b"event: e", b": c"]),
                  max_size=20).map(b"".join)


def _block_start_by_hand(data: bytes, pos: int) -> tuple[str | None, int, bool]:
    """What the decoder's loop computed itself for a fresh block: a first LF, the byte after it, a 6-byte slice
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


@pytest.mark.parametrize("data, pos, lflf", [
    (b"", 0, -1), (b"\n", 0, -1), (b"\n", 1, -1), (b"\n\n", 1, -1), (b"a\n\nb\n\n", 3, 4), (b"a\n\nb", 1, 1),
    (b"a\n\nb", 2, -1), (b"ab", 9, -1),
])
def test_find_lflf_by_example(data: bytes, pos: int, lflf: int) -> None:
    assert _ssec.find_lflf(data, pos) == lflf


def test_wrong_calls() -> None:
    for f in (_ssec.find_lflf, find_lflf_py):
        with pytest.raises(ValueError):
            f(b"a\n", -1)
    with pytest.raises(TypeError):
        _ssec.find_lflf(bytearray(b"\n"), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _ssec.find_lflf(b"\n")  # type: ignore[call-arg]


def _blocks_by_block_start(data: bytes, pos: int, raw_start: int) -> tuple[int, list, list]:
    """`blocks` as the decoder's loop computed it before: blank lines skipped, then block after block by hand."""
    texts, raws = [], []
    while True:
        p = pos
        while p < len(data) and data[p] == 10:
            p += 1
        text, lf, one_line = _block_start_by_hand(data, p)
        if text is None:
            return pos, texts, raws
        texts.append(text)
        raws.append(data[raw_start:lf + 2])
        raw_start = pos = lf + 2


def _blocks_both(data: bytes, pos: int, raw_start: int) -> tuple[int, list, list]:
    """Both forms' answers, held equal, as (the end of the last block, texts, raws)."""
    got = []
    for f in (_ssec.blocks, blocks_py):
        out = f(data, pos, raw_start)
        if isinstance(out, str):  # one block, which ends data
            texts, raws = [out], [data[raw_start:]]
        else:
            assert out is None or (out and len(out) % 2 == 0)  # None, never an empty list
            texts, raws = (out[0::2], out[1::2]) if out else ([], [])
            assert all(type(t) is str for t in texts) and all(type(r) is bytes for r in raws)
            # A block that is all of data is data itself, not a copy; one that ends data alone comes as a str.
            assert not (len(raws) == 1 and raw_start + len(raws[0]) == len(data))
            if len(raws) > 1 and raws[-1] == data:
                assert raws[-1] is data
        end = raw_start + sum(len(r) for r in raws) if raws else pos  # the raws are contiguous from raw_start
        got.append((end, texts, raws))
    assert got[0] == got[1], (data, pos, raw_start)
    return got[0]


_stream = st.lists(st.sampled_from([b"data: {}\n\n", b"data: \n\n", b"\n", b"data: a\xff\n\n",
                                    "data: é😀\n\n".encode(),
                                    b"data: x\nid: 1\n\n", b"event: e\n\n", b"data:x\n\n", b": c\n\n", b"data: tail",
                                    b"data: y\n", b"x", b"\r"]), max_size=12).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_stream, _bytes), st.data())
def test_blocks_is_the_loop_block_after_block(data: bytes, draw: st.DataObject) -> None:
    raw_start = draw.draw(st.integers(0, len(data)))
    pos = draw.draw(st.integers(raw_start, len(data)))
    assert _blocks_both(data, pos, raw_start) == _blocks_by_block_start(data, pos, raw_start)


@pytest.mark.parametrize("data, pos, raw_start, expected", [
    (b"", 0, 0, (0, [], [])),
    (b"data: a\n\n", 0, 0, (9, ["a"], [b"data: a\n\n"])),
    (b"data: a\n\n\n", 0, 0, (9, ["a"], [b"data: a\n\n"])),
    (b"\n\ndata: a\n\ndata: b\n\n", 0, 0, (20, ["a", "b"], [b"\n\ndata: a\n\n", b"data: b\n\n"])),
    # a BOM (or blank lines) before pos belongs to the first raw
    (b"\xef\xbb\xbfdata: a\n\n", 3, 0, (12, ["a"], [b"\xef\xbb\xbfdata: a\n\n"])),
    (b"xxdata: a\n\ndata: b\n\n", 2, 1, (20, ["a", "b"], [b"xdata: a\n\n", b"data: b\n\n"])),
    # stops at a block of two lines, at another field and at an incomplete block
    (b"data: a\n\ndata: b\nid: 1\n\n", 0, 0, (9, ["a"], [b"data: a\n\n"])),
    (b"data: a\n\nevent: e\n\n", 0, 0, (9, ["a"], [b"data: a\n\n"])),
    (b"data: a\n\ndata: b\n", 0, 0, (9, ["a"], [b"data: a\n\n"])),
    (b"event: e\n\ndata: a\n\n", 0, 0, (0, [], [])),
    (b"data: \xe2\x82\xac\xff\n\n", 0, 0, (12, ["€\ufffd"], [b"data: \xe2\x82\xac\xff\n\n"])),
    (b"\n\ndata: a\xff\xe2\x82\n\n", 2, 2, (14, ["a\ufffd\ufffd"], [b"data: a\xff\xe2\x82\n\n"])),
    (b"data: \n\n", 0, 0, (8, [""], [b"data: \n\n"])),
    # not common blocks: `data:` without its space, another field, a line whose next byte has not come
    (b"data:x\n\n", 0, 0, (0, [], [])), (b"data: x\nid: 1\n\n", 0, 0, (0, [], [])), (b"data: x\n", 0, 0, (0, [], [])),
])
def test_blocks_by_example(data: bytes, pos: int, raw_start: int, expected: tuple) -> None:
    assert _blocks_both(data, pos, raw_start) == expected


def test_blocks_wrong_calls() -> None:
    for f in (_ssec.blocks, blocks_py):
        for pos, raw_start in ((1, 2), (0, -1), (5, 0)):
            with pytest.raises(ValueError):
                f(b"ab", pos, raw_start)
    with pytest.raises(TypeError):
        _ssec.blocks(bytearray(b"\n"), 0, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _ssec.blocks(b"\n", 0, 0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _ssec.blocks(b"\n", 0)  # type: ignore[call-arg]


def test_the_decoder_uses_them() -> None:
    assert (sse._find_lflf, sse._blocks) == (_ssec.find_lflf, _ssec.blocks)
