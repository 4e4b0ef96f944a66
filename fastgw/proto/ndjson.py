"""Newline-delimited JSON framing: cut a byte stream into complete lines, sans-IO (Ollama's streamed answers).

`NDJSONDecoder.feed(bytes) -> [line]` returns every line the bytes complete, in order, without
parsing the JSON (the caller does, once per line). Lines end with LF; a CR before it (CRLF) is
dropped; blank lines (only spaces, tabs, CRs) are skipped, as NDJSON readers do. A lone CR is
not a line end (ndjson-spec: "each line ends with \\n, \\r\\n accepted").

The line-length bound holds whatever the read sizes: a line is refused with `ProtocolError`
(502: the upstream broke the stream) as soon as its bytes, CR included, exceed `max_line_bytes`,
whether it is still held or arrived whole in one read, so the same input fails the same way for
any split and memory held stays bounded.
"""

from __future__ import annotations

from fastgw.proto import limits
from fastgw.proto.errors import ProtocolError

__all__ = ["NDJSONDecoder"]


def _too_big(limit: int) -> ProtocolError:
    return ProtocolError(
        f"upstream NDJSON line exceeds max_line_bytes ({limit} bytes)",
        status=502,
        code="bad_gateway",
    )


class NDJSONDecoder:
    """Incremental line splitter: `feed(bytes) -> [bytes]`, each a complete non-blank line without its line end."""

    __slots__ = ("_max", "_buf", "_closed", "_partial")

    def __init__(self, max_line_bytes: int = limits.MAX_NDJSON_LINE_BYTES) -> None:
        self._max = max_line_bytes
        #: Bytes of the incomplete last line.
        self._buf = bytearray()
        self._closed = False
        self._partial = False

    @property
    def pending(self) -> int:
        """Bytes held for the incomplete line."""
        return len(self._buf)

    @property
    def has_partial(self) -> bool:
        """True when held bytes hold part of a non-blank line: the stream would end truncated."""
        if self._closed:
            return self._partial
        return bool(self._buf) and not self._buf.isspace()

    def close(self) -> None:
        """End of stream: an unterminated last line is discarded; `has_partial` still tells whether there was one."""
        if not self._closed:
            self._partial = self.has_partial
            self._closed = True
            self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes of the stream; return every line they complete, in order."""
        if self._closed:
            raise ValueError("NDJSONDecoder.feed() after close()")
        held = self._buf
        limit = self._max
        if 10 not in data:  # memchr: no line ends here, the usual case for a read cut inside a line
            held += data
            if len(held) > limit:
                self._fail()
            return []
        # One split (C speed) for the whole read; only the first piece needs the held bytes in front.
        parts = data.split(b"\n")
        if held:
            parts[0] = bytes(held) + parts[0]
        tail = parts.pop()
        out: list[bytes] = []
        for line in parts:
            if len(line) > limit:
                self._fail()
            if line[-1:] == b"\r":
                line = line[:-1]
            if line and not line.isspace():
                out.append(line)
        if len(tail) > limit:
            self._fail()
        self._buf = bytearray(tail)
        return out

    def _fail(self) -> None:
        self._buf = bytearray()
        raise _too_big(self._max)
