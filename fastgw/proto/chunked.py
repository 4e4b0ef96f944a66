"""HTTP/1.1 chunked transfer-coding writer (RFC 9112 §7.1): frame body bytes without copying them.

Each chunk is `<size in hex>CRLF<data>CRLF`; the body ends with `LAST_CHUNK` (a zero-size chunk and
the empty trailer section). An empty chunk is never written: it would read as the last chunk and
end the body early (h11's ChunkedWriter skips them for the same reason). `CHUNKED` is the framer the
server's response writer (`writer.Responder`) uses; `write_chunk` is its per-chunk method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["LAST_CHUNK", "CHUNKED", "ChunkedWriter", "Writelines", "frame_chunk", "size_line", "write_chunk"]

#: Zero-size chunk and no trailers: ends a chunked body.
LAST_CHUNK: Final = b"0\r\n\r\n"

#: A transport's `writelines`: every framing call hands it one tuple, so one call is one writev.
Writelines = Callable[[tuple[bytes, ...]], object]

#: Chunk sizes whose size line is kept once made: a streamed event is a few hundred bytes, and `%x` formatting
#: cost ~650 instructions an event (callgrind) where the kept line costs a list read. At most 4,096 lines (~40 B
#: each, made only for the sizes a worker writes).
_KEPT_SIZES: Final = 4096
_size_lines: Final[list[bytes | None]] = [None] * _KEPT_SIZES


def size_line(n: int) -> bytes:
    """A chunk's size line: `n` in hex and CRLF."""
    if n < _KEPT_SIZES:
        line = _size_lines[n]
        if line is None:
            line = _size_lines[n] = b"%x\r\n" % n
        return line
    return b"%x\r\n" % n


class ChunkedWriter:
    """Chunked framing through a `writelines`; payload bytes are passed on, never copied.

    uvloop sends each write()/writelines() at once when its buffer is empty (no coalescing across
    calls), so everything that belongs to one moment (head, size line, payload, CRLF, terminator)
    goes in one writelines: one writev, one TCP segment.
    """

    __slots__ = ()

    #: The head line that announces this framing.
    header = b"transfer-encoding: chunked\r\n"

    def data(self, writelines: Writelines, data: bytes) -> None:
        """Frame one chunk (empty data writes nothing)."""
        if data:
            writelines((size_line(len(data)), data, b"\r\n"))

    def first(self, writelines: Writelines, head: bytes, data: bytes) -> None:
        """The response head and the first (non-empty) chunk: no extra round trip for the client."""
        writelines((head, size_line(len(data)), data, b"\r\n"))

    def last(self, writelines: Writelines, data: bytes, head: bytes | None) -> None:
        """`data` as a last chunk (if any) and the terminator, after the head if it is still pending."""
        parts: tuple[bytes, ...] = (LAST_CHUNK,)
        if data:
            parts = (size_line(len(data)), data, b"\r\n", LAST_CHUNK)
        writelines(parts if head is None else (head, *parts))


#: The one chunked framer (stateless, shared by every response).
CHUNKED: Final = ChunkedWriter()

#: Frame one chunk through one `writelines` call: `write_chunk(writelines, data)`.
write_chunk: Final = CHUNKED.data


def frame_chunk(data: bytes) -> bytes:
    """The same framing as one bytes object (one copy of data), for a caller that must prepend a response head."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
