"""AWS event-stream codec: frames agree with botocore's parser both ways, every header type, any split, every
corruption refused with ProtocolError (and nothing else, whatever the bytes)."""

from __future__ import annotations

import binascii
import datetime
import struct
import uuid

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.proto import limits
from fastgw.proto.errors import ProtocolError
from fastgw.proto.eventstream import (
    EventStreamDecoder,
    HeaderType,
    Message,
    Typed,
    encode_message,
    event,
    exception,
)

UTC = datetime.timezone.utc


# ---- an independent encoder, for tests only: struct + binascii.crc32, checked against botocore -----------


def ref_header(name: str, type_: int, value: bytes) -> bytes:
    n = name.encode()
    return bytes([len(n)]) + n + bytes([type_]) + value


def ref_frame(headers: bytes, payload: bytes) -> bytes:
    """A frame built by hand from the spec: prelude, prelude CRC, headers, payload, message CRC."""
    total = 16 + len(headers) + len(payload)
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    msg = prelude + headers + payload
    return msg + struct.pack(">I", binascii.crc32(msg) & 0xFFFFFFFF)


def ref_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


ALL_TYPES_HEADERS = b"".join([
    ref_header("t", 0, b""),
    ref_header("f", 1, b""),
    ref_header("byte", 2, struct.pack(">b", -7)),
    ref_header("short", 3, struct.pack(">h", -1234)),
    ref_header("int", 4, struct.pack(">i", 123456789)),
    ref_header("long", 5, struct.pack(">q", -(2**40))),
    ref_header("bytes", 6, struct.pack(">H", 3) + b"\x00\xff\x10"),
    ref_header("str", 7, ref_string("héllo wörld")),
    ref_header("ts", 8, struct.pack(">q", 1_700_000_000_123)),
    ref_header("id", 9, uuid.UUID("12345678-1234-5678-1234-567812345678").bytes),
])
ALL_TYPES_FRAME = ref_frame(ALL_TYPES_HEADERS, b'{"hello":"world"}')
ALL_TYPES_DECODED = {
    "t": True, "f": False, "byte": -7, "short": -1234, "int": 123456789, "long": -(2**40),
    "bytes": b"\x00\xff\x10", "str": "héllo wörld",
    "ts": datetime.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


def botocore_decode(data: bytes) -> list:
    buf = EventStreamBuffer()
    buf.add_data(data)
    return list(buf)


def decode_all(data: bytes, step: int | None = None) -> list[Message]:
    d = EventStreamDecoder()
    if step is None:
        out = d.feed(data)
    else:
        out = []
        for i in range(0, len(data), step):
            out += d.feed(data[i:i + step])
    assert d.pending == 0
    return out


def test_reference_encoder_agrees_with_botocore() -> None:
    (msg,) = botocore_decode(ALL_TYPES_FRAME)
    assert msg.payload == b'{"hello":"world"}'
    assert msg.headers["str"] == "héllo wörld"
    assert msg.headers["ts"] == 1_700_000_000_123
    assert msg.headers["id"] == uuid.UUID("12345678-1234-5678-1234-567812345678").bytes
    assert msg.headers["byte"] == -7 and msg.headers["long"] == -(2**40) and msg.headers["t"] is True


def test_decodes_independently_built_frame_every_header_type() -> None:
    (m,) = decode_all(ALL_TYPES_FRAME)
    assert m.headers == ALL_TYPES_DECODED
    assert m.payload == b'{"hello":"world"}'
    assert [type(v) for v in m.headers.values()][:2] == [bool, bool]


def test_empty_frame() -> None:
    frame = ref_frame(b"", b"")
    assert len(frame) == 16
    (m,) = decode_all(frame)
    assert m.headers == {} and m.payload == b""
    assert botocore_decode(encode_message({}, b""))[0].payload == b""
    assert encode_message({}, b"") == frame


def test_encoder_matches_reference_and_botocore() -> None:
    headers = {
        "t": True, "f": False, "byte": Typed(HeaderType.BYTE, -7), "short": Typed(HeaderType.SHORT, -1234),
        "int": 123456789, "long": -(2**40), "bytes": b"\x00\xff\x10", "str": "héllo wörld",
        "ts": ALL_TYPES_DECODED["ts"], "id": ALL_TYPES_DECODED["id"],
    }
    frame = encode_message(headers, b'{"hello":"world"}')
    assert frame == ALL_TYPES_FRAME
    (b,) = botocore_decode(frame)
    assert b.headers["short"] == -1234 and b.headers["bytes"] == b"\x00\xff\x10"
    assert decode_all(frame)[0].headers == ALL_TYPES_DECODED


def test_event_and_exception_helpers_as_aws_sends_them() -> None:
    frames = (event("contentBlockDelta", b'{"delta":{"text":"Hi"}}')
              + exception("throttlingException", b'{"message":"x"}'))
    a, b = botocore_decode(frames)
    assert a.headers == {":event-type": "contentBlockDelta", ":content-type": "application/json",
                         ":message-type": "event"}
    assert b.headers[":message-type"] == "exception" and b.headers[":exception-type"] == "throttlingException"
    ours = decode_all(frames)
    assert [m.headers for m in ours] == [a.headers, b.headers]
    assert [m.payload for m in ours] == [a.payload, b.payload]


def test_mock_fixtures_decode_with_botocore_and_ours() -> None:
    from tests.support.mock_bedrock import FIXTURES
    for path in sorted(FIXTURES.glob("*.eventstream")):
        data = path.read_bytes()
        theirs = botocore_decode(data)
        ours = decode_all(data, step=1)
        assert theirs and [(m.headers, m.payload) for m in ours] == [(dict(m.headers), m.payload) for m in theirs]


STREAM = b"".join([
    ALL_TYPES_FRAME,
    event("messageStart", b'{"role":"assistant"}'),
    ref_frame(b"", b""),
    event("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"' + "é".encode() * 40 + b'"}}'),
    exception("validationException", b'{"message":"bad"}'),
])


def test_whole_bytewise_and_trailing_partial() -> None:
    whole = decode_all(STREAM)
    assert len(whole) == 5
    assert decode_all(STREAM, step=1) == whole
    d = EventStreamDecoder()
    assert d.feed(STREAM + STREAM[:20]) == whole
    assert d.pending == 20
    assert d.feed(STREAM[20:]) == whole
    assert d.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_decodes_the_same(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    d = EventStreamDecoder()
    out: list[Message] = []
    prev = 0
    for p in [*points, len(STREAM)]:
        out += d.feed(STREAM[prev:p])
        prev = p
    assert out == decode_all(STREAM)
    assert d.pending == 0


# ---- corruption ---------------------------------------------------------------------------------------------


def expect_protocol_error(data: bytes, step: int | None = None, match: str = "") -> ProtocolError:
    d = EventStreamDecoder()
    with pytest.raises(ProtocolError, match=match) as ei:
        if step is None:
            d.feed(data)
        else:
            for i in range(0, len(data), step):
                d.feed(data[i:i + step])
    assert ei.value.status == 502
    return ei.value


@pytest.mark.parametrize("step", [None, 1, 5])
def test_corrupt_prelude_crc(step: int | None) -> None:
    bad = bytearray(ALL_TYPES_FRAME)
    bad[8] ^= 0x01
    expect_protocol_error(bytes(bad), step, "prelude CRC")
    bad = bytearray(ALL_TYPES_FRAME)
    bad[3] ^= 0x01  # the length itself: the prelude CRC catches it
    expect_protocol_error(bytes(bad), step, "prelude CRC")


@pytest.mark.parametrize("step", [None, 1, 7])
def test_corrupt_message_crc(step: int | None) -> None:
    for pos in (len(ALL_TYPES_FRAME) - 1, 20, len(ALL_TYPES_FRAME) - 6):  # the CRC, a header, the payload
        bad = bytearray(ALL_TYPES_FRAME)
        bad[pos] ^= 0x40
        expect_protocol_error(bytes(bad), step, "message CRC")


@pytest.mark.parametrize("keep", [1, 5, 12, 40, len(ALL_TYPES_FRAME) - 1])
def test_truncated_frame_is_held_then_rejected_at_close(keep: int) -> None:
    d = EventStreamDecoder()
    assert d.feed(ALL_TYPES_FRAME + ALL_TYPES_FRAME[:keep]) == decode_all(ALL_TYPES_FRAME)
    assert d.pending == keep  # never returned half-decoded
    with pytest.raises(ProtocolError, match="ended inside a frame") as e:
        d.close()
    assert e.value.status == 502
    d = EventStreamDecoder()
    d.feed(ALL_TYPES_FRAME)
    d.close()  # a clean end


def test_oversized_frame_refused_from_its_prelude() -> None:
    big = encode_message({":event-type": "x"}, b"a" * (limits.MAX_EVENTSTREAM_FRAME_BYTES + 1))
    d = EventStreamDecoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        d.feed(big[:12])  # refused before the body is buffered
    d = EventStreamDecoder(max_frame_bytes=100)
    assert d.feed(encode_message({}, b"a" * 84)) != []
    with pytest.raises(ProtocolError, match="exceeds"):
        d.feed(encode_message({}, b"a" * 85))


def _with_headers(headers: bytes) -> bytes:
    return ref_frame(headers, b"{}")


@pytest.mark.parametrize("headers, match", [
    (ref_header("x", 10, b""), "unknown value type"),
    (ref_header("x", 7, struct.pack(">H", 50) + b"abc"), "runs past"),
    (ref_header("x", 4, b"\x00\x01"), "runs past"),
    (b"\x05ab", "runs past"),
    (ref_header("x", 7, ref_string("a")) + ref_header("x", 0, b""), "duplicate"),
    (ref_header("x", 7, struct.pack(">H", 2) + b"\xff\xfe"), "not UTF-8"),
    (b"\x02\xff\xfe\x00", "not UTF-8"),
    (ref_header("ts", 8, struct.pack(">q", 2**62)), "out of range"),
])
def test_bad_headers(headers: bytes, match: str) -> None:
    expect_protocol_error(_with_headers(headers), match=match)


def test_bad_lengths() -> None:
    def frame_with(total: int, hlen: int) -> bytes:
        p = struct.pack(">II", total, hlen)
        return p + struct.pack(">I", binascii.crc32(p)) + b"\x00" * 64
    expect_protocol_error(frame_with(15, 0), match="minimum")
    expect_protocol_error(frame_with(20, 5), match="does not fit")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_random_bytes_only_protocol_error(data: bytes, step: int) -> None:
    d = EventStreamDecoder(max_frame_bytes=4096)
    try:
        for i in range(0, len(data), step):
            d.feed(data[i:i + step])
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(STREAM) - 1), st.integers(min_value=1, max_value=255),
       st.integers(min_value=1, max_value=32))
def test_flipped_byte_in_valid_stream_only_protocol_error(pos: int, flip: int, step: int) -> None:
    bad = bytearray(STREAM)
    bad[pos] ^= flip
    d = EventStreamDecoder()
    try:
        for i in range(0, len(bad), step):
            d.feed(bytes(bad[i:i + step]))
    except ProtocolError:
        return
    raise AssertionError("a flipped byte went unnoticed")  # CRC32 catches every single-byte error


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256),
    st.one_of(st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=40),
              st.text(max_size=40), st.uuids()),
    max_size=6), st.binary(max_size=200))
def test_roundtrip_and_botocore_agree(headers: dict, payload: bytes) -> None:
    frame = encode_message(headers, payload)
    (ours,) = decode_all(frame)
    assert ours.headers == headers and ours.payload == payload
    (theirs,) = botocore_decode(frame)
    assert theirs.payload == payload
    assert {k: (v.bytes if isinstance(v, uuid.UUID) else v) for k, v in headers.items()} == dict(theirs.headers)
