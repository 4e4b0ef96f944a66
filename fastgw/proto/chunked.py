"""HTTP/1.1 chunked transfer-coding writer (RFC 9112 §7.1): frame body bytes without copying them.

Each chunk is `<size in hex>CRLF<data>CRLF`; the body ends with `LAST_CHUNK` (a zero-size chunk and
the empty trailer section). An empty chunk is never written: it would read as the last chunk and
end the body early (h11's ChunkedWriter skips them for the same reason).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LAST_CHUNK", "frame_chunk", "write_chunk"]

#: Zero-size chunk and no trailers: ends a chunked body.
LAST_CHUNK = b"0\r\n\r\n"


def write_chunk(writelines: Callable[[tuple[bytes, bytes, bytes]], object], data: bytes) -> None:
    """Frame one chunk through one `writelines` call; `data` itself is passed on, never copied.

    uvloop sends each write()/writelines() at once when its buffer is empty (no coalescing across
    calls), so the size line, payload and CRLF go in one writelines: one writev, one TCP segment.
    """
    if data:
        writelines((b"%x\r\n" % len(data), data, b"\r\n"))


def frame_chunk(data: bytes) -> bytes:
    """The same framing as one bytes object (one copy of data), for a caller that must prepend a response head."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
