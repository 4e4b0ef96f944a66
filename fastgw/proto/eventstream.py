"""AWS binary event stream (`application/vnd.amazon.eventstream`): an incremental, sans-IO decoder and an encoder.

The framing (used by Bedrock ConverseStream, Transcribe, S3 Select, ...): each message is

    total length u32 | headers length u32 | prelude CRC32 u32 | headers | payload | message CRC32 u32

all big-endian; the prelude CRC covers the first 8 bytes, the message CRC every byte before it. A header
is `name length u8 | name (UTF-8) | type u8 | value`, where the type is one of `HeaderType` and the value
is fixed-width for the numeric types, `u16 length | bytes` for bytes and strings, 16 bytes for a UUID and
an i64 of milliseconds since the epoch for a timestamp.

`EventStreamDecoder.feed(bytes) -> [Message]` takes bytes as they arrive, in any split: the prelude is
checked (CRC, lengths, size limit) as soon as its 12 bytes are in, so an oversized or corrupt frame is
refused before its body is buffered, and a frame is returned only once its message CRC checks. Every
defect is a `ProtocolError` (status 502: the upstream, not our client, broke the stream); nothing else
escapes, whatever the bytes. `encode_message` builds frames (for tests and mock upstreams).
"""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from zlib import crc32

import msgspec

from fastgw.proto import limits
from fastgw.proto.errors import ProtocolError

__all__ = [
    "CONTENT_TYPE",
    "EventStreamDecoder",
    "HeaderType",
    "HeaderValue",
    "Message",
    "Typed",
    "encode_message",
    "event",
    "exception",
]

#: The media type of an AWS event stream body.
CONTENT_TYPE = b"application/vnd.amazon.eventstream"

#: total length + headers length + prelude CRC.
_PRELUDE = 12
#: prelude + message CRC: the size of a frame with no headers and no payload.
_OVERHEAD = 16
_U32x3 = struct.Struct(">III")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
#: Distinct header sections remembered per decoder (Bedrock uses about eight: one per event type).
_HEADER_CACHE = 32


class HeaderType(IntEnum):
    """Header value types, as numbered on the wire."""

    TRUE = 0
    FALSE = 1
    BYTE = 2
    SHORT = 3
    INT = 4
    LONG = 5
    BYTES = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


#: What a decoded header value is: bool (true/false), int (byte/short/int/long), bytes, str,
#: datetime (timestamp, UTC, millisecond precision) or UUID.
HeaderValue = bool | int | bytes | str | datetime.datetime | uuid.UUID


@dataclass(frozen=True, slots=True)
class Typed:
    """A header value with its wire type spelled out, for the encoder (e.g. `Typed(HeaderType.SHORT, 7)`)."""

    type: HeaderType
    value: HeaderValue


class Message(msgspec.Struct, frozen=True, gc=False):
    """One decoded event-stream message.

    A frozen msgspec Struct (its module is interpreted; a Struct builds far cheaper than a dataclass): one is built
    per streamed event. gc=False: it holds a dict of scalars and bytes only, so it can never be part of a cycle.
    """

    headers: dict[str, HeaderValue]
    payload: bytes


def _bad(message: str) -> ProtocolError:
    # The upstream, not our client, broke the stream: the client gets 502 (or an in-stream error event).
    return ProtocolError(f"upstream event stream: {message}", status=502, code="bad_gateway")


def _fixed_value(
    buf: bytes | bytearray | memoryview, pos: int, end: int, name: str, t: int
) -> tuple[HeaderValue, int]:
    """The value of fixed size at buf[pos:end] of header `name` of type t (integer, timestamp, UUID), and its size."""
    fmt = _I8 if t == 2 else _I16 if t == 3 else _I32 if t == 4 else _I64 if t in (5, 8) else None
    size = 16 if t == 9 else fmt.size if fmt is not None else -1
    if size < 0:
        raise _bad(f"header {name!r} has unknown value type {t}")
    if pos + size > end:
        raise _bad(f"header {name!r} runs past the headers section")
    if fmt is None:
        return uuid.UUID(bytes=bytes(buf[pos:pos + 16])), size
    (num,) = fmt.unpack_from(buf, pos)
    if t != 8:
        return num, size
    try:
        return _EPOCH + datetime.timedelta(milliseconds=num), size
    except OverflowError:
        raise _bad(f"timestamp header {name!r} out of range") from None


def _parse_headers(buf: bytes | bytearray | memoryview, start: int, end: int) -> dict[str, HeaderValue]:
    """The headers held in buf[start:end] (already covered by a good message CRC)."""
    headers: dict[str, HeaderValue] = {}
    pos = start
    while pos < end:
        n = buf[pos]
        pos += 1
        if pos + n + 1 > end:
            raise _bad("header name runs past the headers section")
        try:
            name = bytes(buf[pos:pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("header name is not UTF-8") from None
        pos += n
        t = buf[pos]
        pos += 1
        value: HeaderValue
        if t == 7 or t == 6:  # string, bytes: the common case first
            if pos + 2 > end:
                raise _bad(f"header {name!r} runs past the headers section")
            (size,) = _U16.unpack_from(buf, pos)
            pos += 2
            if pos + size > end:
                raise _bad(f"header {name!r} runs past the headers section")
            raw = bytes(buf[pos:pos + size])
            pos += size
            if t == 7:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _bad(f"header {name!r} is not UTF-8") from None
            else:
                value = raw
        elif t == 0:
            value = True
        elif t == 1:
            value = False
        else:
            value, size = _fixed_value(buf, pos, end, name, t)
            pos += size
        if name in headers:
            raise _bad(f"duplicate header {name!r}")
        headers[name] = value
    return headers


class EventStreamDecoder:
    """Incremental event-stream parser: `feed(bytes) -> [Message]`, sans-IO.

    Memory held is at most one frame, bounded by `max_frame_bytes` (checked from the prelude, before the
    frame's body is buffered).
    """

    __slots__ = ("_max", "_buf", "_need", "_seen")

    def __init__(self, max_frame_bytes: int = limits.MAX_EVENTSTREAM_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        #: Bytes of the incomplete frame.
        self._buf = bytearray()
        #: Total length of the frame in _buf once its prelude checked; 0 before.
        self._need = 0
        #: Header sections already parsed -> their headers. A stream repeats a handful of them (one per event
        #: type), and parsing them is most of a frame's cost (measured: 13 us -> 4 us per frame); bounded.
        self._seen: dict[bytes, dict[str, HeaderValue]] = {}

    @property
    def pending(self) -> int:
        """Bytes held for the incomplete frame (non-zero at the end of a stream: it was cut mid-frame)."""
        return len(self._buf)

    def close(self) -> None:
        """End of stream: a frame still incomplete means the stream was cut inside it (ProtocolError)."""
        if self._buf:
            held = len(self._buf)
            self._buf = bytearray()
            self._need = 0
            raise _bad(f"stream ended inside a frame ({held} bytes of it received)")

    def _prelude(self, buf: bytes | bytearray, pos: int) -> int:
        """Check the prelude at buf[pos:pos+12]; return the frame's total length."""
        total, hlen, crc = _U32x3.unpack_from(buf, pos)
        if crc32(memoryview(buf)[pos:pos + 8]) != crc:
            raise _bad("prelude CRC mismatch")
        if total < _OVERHEAD:
            raise _bad(f"frame length {total} below the 16-byte minimum")
        if total > self._max:
            raise _bad(f"frame of {total} bytes exceeds max_frame_bytes ({self._max})")
        if hlen > total - _OVERHEAD:
            raise _bad(f"headers length {hlen} does not fit in a frame of {total} bytes")
        return total

    def _message(self, buf: bytes | bytearray, pos: int, total: int) -> Message:
        """The frame at buf[pos:pos+total], prelude already checked."""
        end = pos + total - 4
        view = memoryview(buf)
        try:
            if crc32(view[pos:end]) != _U32.unpack_from(buf, end)[0]:
                raise _bad("message CRC mismatch")
            (hlen,) = _U32.unpack_from(buf, pos + 4)
            hstart = pos + _PRELUDE
            hend = hstart + hlen
            raw = bytes(view[hstart:hend])
            headers = self._seen.get(raw)
            if headers is None:
                headers = _parse_headers(raw, 0, hlen)
                if len(self._seen) >= _HEADER_CACHE:
                    self._seen.clear()
                self._seen[raw] = headers
            return Message(dict(headers), bytes(view[hend:end]))  # a copy: a caller may change its own
        finally:
            view.release()  # a live export would forbid resizing the bytearray buffer

    def feed(self, data: bytes) -> list[Message]:
        """Take the next bytes of the stream; return every message they complete, in order."""
        out: list[Message] = []
        buf = self._buf
        if buf:
            buf += data
            if self._need == 0:
                if len(buf) < _PRELUDE:
                    return out
                self._need = self._prelude(buf, 0)
            if len(buf) < self._need:
                return out
            out.append(self._message(buf, 0, self._need))
            rest = bytes(buf[self._need:])
            buf.clear()
            self._need = 0
            data = rest
        # Frames whole in `data` are parsed in place: no copy into the buffer on the common path.
        pos = 0
        n = len(data)
        while n - pos >= _PRELUDE:
            total = self._prelude(data, pos)
            if n - pos < total:
                self._need = total
                break
            out.append(self._message(data, pos, total))
            pos += total
        if pos < n:
            buf += memoryview(data)[pos:]
        return out


# --- encoder ------------------------------------------------------------------------------------


def _encode_header(name: str, value: HeaderValue | Typed) -> bytes:
    raw_name = name.encode("utf-8")
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"header name must be 1 to 255 bytes: {name!r}")
    head = bytes((len(raw_name),)) + raw_name
    if isinstance(value, Typed):
        t, v = value.type, value.value
    elif isinstance(value, bool):
        t, v = (HeaderType.TRUE if value else HeaderType.FALSE), value
    elif isinstance(value, int):
        t, v = (HeaderType.INT if -2**31 <= value < 2**31 else HeaderType.LONG), value
    elif isinstance(value, str):
        t, v = HeaderType.STRING, value
    elif isinstance(value, (bytes, bytearray)):
        t, v = HeaderType.BYTES, value
    elif isinstance(value, datetime.datetime):
        t, v = HeaderType.TIMESTAMP, value
    elif isinstance(value, uuid.UUID):
        t, v = HeaderType.UUID, value
    else:
        raise TypeError(f"header {name!r}: cannot encode {type(value).__name__}")
    if t in (HeaderType.TRUE, HeaderType.FALSE):
        return head + bytes((t,))
    if t in (HeaderType.STRING, HeaderType.BYTES):
        raw = v.encode("utf-8") if isinstance(v, str) else bytes(v)  # type: ignore[arg-type]
        if len(raw) > 0xFFFF:
            raise ValueError(f"header {name!r}: value longer than 65535 bytes")
        return head + bytes((t,)) + _U16.pack(len(raw)) + raw
    if t == HeaderType.TIMESTAMP:
        if isinstance(v, datetime.datetime):
            v = (v - _EPOCH) // datetime.timedelta(milliseconds=1)
        return head + bytes((t,)) + _I64.pack(v)
    if t == HeaderType.UUID:
        return head + bytes((t,)) + (v.bytes if isinstance(v, uuid.UUID) else bytes(v))  # type: ignore[arg-type]
    fmt = {HeaderType.BYTE: _I8, HeaderType.SHORT: _I16, HeaderType.INT: _I32, HeaderType.LONG: _I64}[t]
    return head + bytes((t,)) + fmt.pack(v)


def encode_message(headers: Mapping[str, HeaderValue | Typed] | Iterable[tuple[str, HeaderValue | Typed]],
                   payload: bytes = b"") -> bytes:
    """One event-stream frame. Ints encode as INT (LONG when they need it) unless given as `Typed`."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    hbytes = b"".join(_encode_header(k, v) for k, v in items)
    total = _OVERHEAD + len(hbytes) + len(payload)
    head = _U32x3.pack(total, len(hbytes), 0)[:8]
    prelude = head + _U32.pack(crc32(head))
    body = prelude + hbytes + payload
    return body + _U32.pack(crc32(body))


def event(event_type: str, payload: bytes, content_type: str = "application/json") -> bytes:
    """An `event` message as AWS services send them (`:event-type`, `:content-type`, `:message-type`)."""
    return encode_message({":event-type": event_type, ":content-type": content_type, ":message-type": "event"},
                          payload)


def exception(exception_type: str, payload: bytes, content_type: str = "application/json") -> bytes:
    """An `exception` message (a modeled error inside the stream)."""
    return encode_message({":exception-type": exception_type, ":content-type": content_type,
                           ":message-type": "exception"}, payload)
