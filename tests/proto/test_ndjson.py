"""NDJSON decoder: the same lines for any split of the input (against a whole-stream reference), bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.proto.errors import ProtocolError
from fastgw.proto.ndjson import NDJSONDecoder


def reference(stream: bytes) -> list[bytes]:
    """Complete non-blank lines of the whole stream: split on LF, one CR before it dropped, the tail discarded."""
    lines = stream.split(b"\n")[:-1]
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip(b" \t\r\n\x0b\x0c"):
            out.append(line)
    return out


def feed_all(dec: NDJSONDecoder, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for p in pieces:
        out += dec.feed(p)
    return out


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


OLLAMA = (b'{"model":"llama3.2","message":{"role":"assistant","content":"The"},"done":false}\n'
          b'{"model":"llama3.2","message":{"role":"assistant","content":" sky"},"done":false}\n'
          b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n')


def test_whole_byte_by_byte_and_with_trailing_bytes():
    expected = reference(OLLAMA)
    assert len(expected) == 3 and expected[0].startswith(b'{"model"') and expected[2].endswith(b'"stop"}')
    assert NDJSONDecoder().feed(OLLAMA) == expected
    dec = NDJSONDecoder()
    assert feed_all(dec, [OLLAMA[i:i + 1] for i in range(len(OLLAMA))]) == expected
    assert not dec.has_partial and dec.pending == 0
    dec = NDJSONDecoder()
    assert dec.feed(OLLAMA + b'{"partial') == expected
    assert dec.has_partial and dec.pending == len(b'{"partial')
    dec.close()
    assert dec.has_partial and dec.pending == 0


def test_crlf_blank_lines_and_lone_cr():
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a":1}\r\n\r\n  \t\n{"b":"x\ry"}\n\n') == [b'{"a":1}', b'{"b":"x\ry"}']
    # A CRLF cut between its two bytes is still one line end.
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a":1}\r') == []
    assert dec.feed(b'\n{"b":2}\r') == [b'{"a":1}']
    assert dec.feed(b"\n") == [b'{"b":2}']
    # Whitespace only is not a partial line: the stream ended cleanly.
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a":1}\n  \r') == [b'{"a":1}']
    assert not dec.has_partial
    dec.close()
    assert not dec.has_partial


def test_feed_after_close_is_an_error():
    dec = NDJSONDecoder()
    dec.close()
    with pytest.raises(ValueError):
        dec.feed(b"{}\n")


def test_line_limit_whole_and_held():
    dec = NDJSONDecoder(max_line_bytes=8)
    assert dec.feed(b"12345678\n") == [b"12345678"]
    with pytest.raises(ProtocolError) as e:
        NDJSONDecoder(max_line_bytes=8).feed(b"123456789\n")
    assert e.value.status == 502 and e.value.code == "bad_gateway"
    dec = NDJSONDecoder(max_line_bytes=8)
    dec.feed(b"1234")
    with pytest.raises(ProtocolError):
        dec.feed(b"56789")  # held bytes past the limit: refused before the line ends
    assert dec.pending == 0
    # The CR of a CRLF counts while held, so the limit bites the same way for any split.
    with pytest.raises(ProtocolError):
        NDJSONDecoder(max_line_bytes=8).feed(b"12345678\r\n")


LINE = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b" ", b"\t\r", b'{"x":"\\n"}', b'{"message":{"content":"\xc3\xa9"}}']),
)


@st.composite
def streams(draw) -> bytes:
    lines = draw(st.lists(LINE, max_size=12))
    ends = draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines), max_size=len(lines)))
    tail = draw(st.one_of(st.just(b""), LINE))
    return b"".join(a + b for a, b in zip(lines, ends)) + tail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 400), max_size=20))
def test_any_split_gives_the_same_lines(stream, cuts):
    expected = reference(stream)
    assert NDJSONDecoder().feed(stream) == expected
    dec = NDJSONDecoder()
    assert feed_all(dec, splits(stream, cuts)) == expected
    tail = stream.rsplit(b"\n", 1)[-1] if b"\n" in stream else stream
    assert dec.has_partial == bool(tail.strip(b" \t\r\n\x0b\x0c"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 400), max_size=20), st.integers(1, 24))
def test_bounded_memory_and_same_failure_for_any_split(stream, cuts, limit):
    """Held bytes never exceed the limit, and a stream with a too-long line fails whatever the split."""
    too_long = any(len(line) > limit for line in stream.split(b"\n"))
    dec = NDJSONDecoder(max_line_bytes=limit)
    failed = False
    got: list[bytes] = []
    try:
        for p in splits(stream, cuts):
            got += dec.feed(p)
            assert dec.pending <= limit
    except ProtocolError:
        failed = True
    assert failed == too_long
    if not failed:
        assert got == reference(stream)
