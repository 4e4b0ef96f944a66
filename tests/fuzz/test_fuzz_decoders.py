"""Fuzz the streaming decoders (SSE, NDJSON, AWS event stream) with arbitrary and mutated bytes in arbitrary splits.

For each decoder: only its documented exception (ProtocolError) escapes, whatever the bytes; the result is
the same for any split of the input where the decoder promises it; and the bytes it holds never exceed its
configured maximum. tests/proto has the property tests on well-formed streams; here the inputs are
hostile.
"""

from __future__ import annotations

import struct
from zlib import crc32

from hypothesis import given
from hypothesis import strategies as st

from fastgw.proto import eventstream
from fastgw.proto.errors import ProtocolError
from fastgw.proto.eventstream import EventStreamDecoder, HeaderType, Typed, encode_message
from fastgw.proto.ndjson import NDJSONDecoder
from fastgw.proto.sse import SSEDecoder, SSEEvent, SSESplitter
from tests.fuzz.fuzzing import fuzz, mutated, split_at, splits


def fields(e: SSEEvent) -> tuple:
    return (e.data, e.event, e.id, e.retry, e.comments)


def run_sse(pieces: list[bytes], limit: int) -> tuple[list[SSEEvent], ProtocolError | None, SSEDecoder]:
    dec = SSEDecoder(max_event_bytes=limit)
    out: list[SSEEvent] = []
    for p in pieces:
        try:
            out += dec.feed(p)
        except ProtocolError as e:
            assert e.status == 502
            return out, e, dec
        assert dec.pending <= limit
    return out, None, dec


# --- SSE -----------------------------------------------------------------------------------------------------

_sse_line = st.one_of(
    st.sampled_from([b"data: x", b"data:", b"data", b"event: e", b"id: 1", b"id: a\x00b", b"retry: 10", b"retry: x",
                     b": c", b":", b"", b"\xef\xbb\xbfdata: y", b"data:  sp", b'data: {"choices":[]}',
                     b"data: [DONE]"]),
    st.binary(max_size=12),
)
_sse_valid = st.builds(
    lambda bom, lines: bom + b"".join(l + e for l, e in lines),
    st.sampled_from([b"", b"\xef\xbb\xbf"]),
    st.lists(st.tuples(_sse_line, st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r\r"])),
             max_size=16),
)
sse_inputs = st.one_of(st.binary(max_size=300), mutated(_sse_valid))


@fuzz(400)
@given(st.data())
def test_sse_decoder_any_bytes_any_split(data):
    stream = data.draw(sse_inputs, "stream")
    pieces = data.draw(splits(stream), "pieces")
    # Unbounded: never raises, and gives the same fields (and the same consumed bytes) for any split.
    whole, err, wdec = run_sse([stream], 1 << 30)
    assert err is None
    split, err, sdec = run_sse(pieces, 1 << 30)
    assert err is None
    assert [fields(e) for e in split] == [fields(e) for e in whole]
    assert b"".join(e.raw for e in split) == stream[:len(stream) - sdec.pending]
    assert sdec.has_partial == wdec.has_partial
    sdec.close()
    assert sdec.pending == 0


@fuzz(300)
@given(st.data())
def test_sse_decoder_bound_any_split(data):
    stream = data.draw(sse_inputs, "stream")
    pieces = data.draw(splits(stream), "pieces")
    limit = data.draw(st.integers(1, 96), "limit")
    ref = [fields(e) for e in run_sse([stream], 1 << 30)[0]]
    whole, werr, _ = run_sse([stream], limit)
    split, serr, _ = run_sse(pieces, limit)
    # Held bytes stay within the limit (asserted in run_sse); what came out before a refusal is the start
    # of the unbounded result.
    assert [fields(e) for e in split] == ref[:len(split)]
    assert [fields(e) for e in whole] == ref[:len(whole)]
    # The limit refuses the same streams for any split, up to the one LF a split inside a block-ending
    # CRLF moves from one block's bytes to the next (see the sse module docstring).
    if werr is None:
        assert run_sse(pieces, limit + 1)[1] is None
    if serr is None:
        assert run_sse([stream], limit + 1)[1] is None


@fuzz(300)
@given(st.data())
def test_sse_splitter_any_bytes_any_split(data):
    stream = data.draw(sse_inputs, "stream")
    pieces = data.draw(splits(stream), "pieces")
    limit = data.draw(st.sampled_from([1 << 30, 16, 64]), "limit")
    sp = SSESplitter(max_event_bytes=limit)
    outs = []
    for p in pieces:
        try:
            outs.append(sp.feed(p))
        except ProtocolError as e:
            assert e.status == 502 and sp.pending == 0
            return
        assert sp.pending <= limit
    forwarded = b"".join(outs)
    # A prefix of the input, ending on a block boundary: decoding it (in the splitter's pieces or whole)
    # completes every block and gives the events the decoder gives for the input.
    assert forwarded == stream[:len(forwarded)] and len(forwarded) + sp.pending == len(stream)
    want = [fields(e) for e in run_sse([stream], 1 << 30)[0]]
    for again in (outs, [forwarded]):
        got, err, dec = run_sse(again, 1 << 30)
        assert err is None and not dec.has_partial
        assert [fields(e) for e in got] == want


# --- NDJSON ----------------------------------------------------------------------------------------------------

_nd_valid = st.lists(
    st.tuples(st.one_of(st.sampled_from([b'{"a":1}', b"", b"  ", b"\t", b'{"message":{"content":"x"},"done":false}']),
                        st.binary(max_size=20).map(lambda b: b.replace(b"\n", b""))),
              st.sampled_from([b"\n", b"\r\n", b"\r", b""])),
    max_size=12,
).map(lambda ls: b"".join(a + b for a, b in ls))
nd_inputs = st.one_of(st.binary(max_size=300), mutated(_nd_valid))


def run_nd(pieces: list[bytes], limit: int) -> tuple[list[bytes], bool, NDJSONDecoder]:
    dec = NDJSONDecoder(max_line_bytes=limit)
    out: list[bytes] = []
    for p in pieces:
        try:
            out += dec.feed(p)
        except ProtocolError as e:
            assert e.status == 502 and dec.pending == 0
            return out, True, dec
        assert dec.pending <= limit
    return out, False, dec


@fuzz(400)
@given(st.data())
def test_ndjson_any_bytes_any_split(data):
    stream = data.draw(nd_inputs, "stream")
    pieces = data.draw(splits(stream), "pieces")
    limit = data.draw(st.sampled_from([1 << 30, 1, 8, 32]), "limit")
    whole, werr, wdec = run_nd([stream], limit)
    split, serr, sdec = run_nd(pieces, limit)
    # Documented: the same input fails the same way for any split, and gives the same lines.
    assert werr == serr
    if werr:
        assert split == whole[:len(split)] or whole == split[:len(whole)]
        unbounded = run_nd([stream], 1 << 30)[0]
        assert split == unbounded[:len(split)]
    else:
        assert split == whole
        assert sdec.has_partial == wdec.has_partial
        for line in split:
            assert line and not line.isspace() and b"\n" not in line


# --- AWS event stream -------------------------------------------------------------------------------------------


def _frame(headers: dict, payload: bytes) -> bytes:
    return encode_message(headers, payload)


_header_values = st.one_of(
    st.booleans(), st.integers(-2**31, 2**31 - 1), st.binary(max_size=8), st.text(max_size=8),
    st.builds(Typed, st.just(HeaderType.BYTE), st.integers(-128, 127)),
    st.builds(Typed, st.just(HeaderType.SHORT), st.integers(-2**15, 2**15 - 1)),
    st.builds(Typed, st.just(HeaderType.LONG), st.integers(-2**63, 2**63 - 1)),
    # (datetime's range: a timestamp outside years 1..9999 is refused with ProtocolError, by design)
    st.builds(Typed, st.just(HeaderType.TIMESTAMP), st.integers(-62135596800000, 253402300799999)),
    st.builds(Typed, st.just(HeaderType.UUID), st.binary(min_size=16, max_size=16)),
)
_es_frame = st.builds(_frame, st.dictionaries(st.text(min_size=1, max_size=6), _header_values, max_size=4),
                      st.binary(max_size=40))
_es_valid = st.lists(_es_frame, max_size=4).map(b"".join)


def _reframe(body: bytes) -> bytes:
    """A frame whose prelude and message CRCs are right around arbitrary header/payload bytes (reaches the
    header parser with garbage, which random bytes almost never do)."""
    hlen = len(body)
    total = 16 + hlen
    head = struct.pack(">II", total, hlen)
    prelude = head + struct.pack(">I", crc32(head))
    msg = prelude + body
    return msg + struct.pack(">I", crc32(msg))


es_inputs = st.one_of(st.binary(max_size=200), mutated(_es_valid), st.lists(st.binary(max_size=40).map(_reframe),
                                                                            min_size=1, max_size=3).map(b"".join))


def run_es(pieces: list[bytes], limit: int) -> tuple[list[eventstream.Message], bool, EventStreamDecoder]:
    dec = EventStreamDecoder(max_frame_bytes=limit)
    out: list[eventstream.Message] = []
    for p in pieces:
        try:
            out += dec.feed(p)
        except ProtocolError as e:
            assert e.status == 502
            return out, True, dec
        # At most one incomplete frame is held, and never one the prelude said is too big.
        assert dec.pending <= max(limit, 11)
    return out, False, dec


@fuzz(400)
@given(st.data())
def test_eventstream_any_bytes_any_split(data):
    stream = data.draw(es_inputs, "stream")
    pieces = data.draw(splits(stream), "pieces")
    limit = data.draw(st.sampled_from([eventstream.limits.MAX_EVENTSTREAM_FRAME_BYTES, 16, 40, 100]), "limit")
    whole, werr, wdec = run_es([stream], limit)
    split, serr, sdec = run_es(pieces, limit)
    # Frames are checked whole (CRCs, then headers), so the outcome does not depend on the split; the
    # messages a read completed before a refusal in that same read are not returned.
    assert serr == werr
    ref = run_es([stream[i:i + 1] for i in range(len(stream))], limit)[0]
    assert split == ref[:len(split)] and whole == ref[:len(whole)]
    if not werr:
        assert split == whole
        assert sdec.pending == wdec.pending
        try:
            sdec.close()
        except ProtocolError:
            assert wdec.pending
        else:
            assert not wdec.pending


@fuzz(100)
@given(st.lists(_es_frame, min_size=1, max_size=4), st.data())
def test_eventstream_valid_frames_any_split(frames, data):
    stream = b"".join(frames)
    pieces = data.draw(splits(stream))
    got, err, dec = run_es(pieces, 1 << 24)
    assert not err and dec.pending == 0 and len(got) == len(frames)
    # Each frame decodes alone (cut in half) to the message it gave inside the stream.
    for frame, msg in zip(frames, got):
        assert run_es(split_at(frame, [len(frame) // 2]), 1 << 24)[0] == [msg]
