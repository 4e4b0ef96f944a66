"""Request-body framing guard: enforce the chunk-size-line and trailer limits that httptools does not.

llhttp (under httptools) bounds neither chunk extensions nor trailers and has no callback for
extensions, so a client could stream an endless extension or trailer section into a connection
(Node's CVE-2024-22019). The server feeds every request byte to httptools first, then to this
sans-IO guard. The guard follows message boundaries across the connection (pipelining included)
using the framing httptools announced in on_headers_complete (`push_framing`), and looks only at
what the limits need: one `find` per request head, arithmetic skips over bodies and chunk data,
and a short scan of each chunk-size line and trailer section. It trusts httptools for everything
else: llhttp has already rejected whatever it saw as malformed before the guard sees the bytes.

When llhttp refuses a request head that the server can still answer better than with a plain 400
(an unknown method: 501; a Transfer-Encoding list with empty elements or trailing whitespace: parsed
again once normalised), `failed_head` finds that head's bytes: the guard keeps the start of a head
that spans reads (`_prefix`, at most one head, so bounded by the header limit) for exactly this.
"""

from __future__ import annotations

import re
from typing import Final

from fastgw.proto import limits
from fastgw.proto.errors import LimitError, ProtocolError

__all__ = ["FramingGuard"]

_HEAD: Final = 0  # in (or before) a request head, looking for CRLFCRLF
_BODY_LENGTH: Final = 1  # skipping a Content-Length body
_CHUNK_LINE: Final = 2  # reading a chunk-size line (size and extensions) up to its LF
_CHUNK_DATA: Final = 3  # skipping chunk data and the CRLF after it
_TRAILERS: Final = 4  # after the last chunk: trailer fields up to an empty line
_STATE_NAMES: Final = ("HEAD", "BODY_LENGTH", "CHUNK_LINE", "CHUNK_DATA", "TRAILERS")

_CRLFCRLF: Final = b"\r\n\r\n"
# llhttp skips empty lines before a request line (RFC 9112 §2.2), so the guard must too.
_NOT_EOL: Final = re.compile(rb"[^\r\n]")
# chunk-size = 1*HEXDIG (RFC 9112 §7.1), then BWS and ";" extensions.
_HEXDIGITS: Final = b"0123456789abcdefABCDEF"


class FramingGuard:
    """Follows one connection's request byte stream; `feed` raises when a framing limit is broken."""

    __slots__ = (
        "_max_line",
        "_max_trailers",
        "_state",
        "_framing",
        "_remaining",
        "_carry",
        "_begun",
        "_line",
        "_count",
        "_head_len",
        "_prefix",
    )

    def __init__(
        self, max_chunk_line: int = limits.MAX_CHUNK_LINE, max_trailer_bytes: int = limits.MAX_HEADER_BYTES
    ) -> None:
        self._max_line = max_chunk_line
        self._max_trailers = max_trailer_bytes
        self._state = _HEAD
        #: (chunked, content_length) of each message whose head httptools has parsed and we have not reached.
        # A list, not a deque (a 624-byte block on every open connection): it holds the heads of one parse slice.
        self._framing: list[tuple[bool, int | None]] = []
        #: Bytes left to skip in BODY_LENGTH / CHUNK_DATA.
        self._remaining = 0
        #: Last <= 3 bytes before this read while looking for CRLFCRLF, so one split across reads is found.
        self._carry = b""
        #: HEAD: a byte other than CR/LF of the request line has been seen.
        self._begun = False
        #: Part of a chunk-size line split across reads (bounded by max_chunk_line + 1).
        self._line = bytearray()
        #: TRAILERS: bytes of the trailer section so far.
        self._count = 0
        #: HEAD: bytes of the current, still unfinished request head.
        self._head_len = 0
        #: HEAD: the bytes of that unfinished head received in earlier reads (only for `failed_head`).
        self._prefix = bytearray()

    @property
    def state(self) -> str:
        """Current state name: HEAD, BODY_LENGTH, CHUNK_LINE, CHUNK_DATA or TRAILERS."""
        return _STATE_NAMES[self._state]

    @property
    def idle(self) -> bool:
        """Between messages: no byte of a next request head (other than empty lines) seen yet."""
        return self._state == _HEAD and not self._begun

    @property
    def head_bytes(self) -> int:
        """Bytes of a request head received so far without its end: the exact measure for a header-size limit."""
        return self._head_len

    def request_line(self) -> bytes | None:
        """The unfinished request head's first line, without its LF, once that LF was received; else None."""
        nl = self._prefix.find(b"\n") if self._begun else -1
        return None if nl < 0 else bytes(self._prefix[:nl])

    @property
    def unreached(self) -> int:
        """Messages announced by push_framing whose head end the guard has not reached yet."""
        return len(self._framing)

    def push_framing(self, chunked: bool, content_length: int | None) -> None:
        """Announce the body framing of the next message (call from httptools' on_headers_complete)."""
        self._framing.append((chunked, content_length))

    def feed(self, data: bytes) -> None:
        """Follow the next bytes of the connection (after httptools has accepted them)."""
        pos = 0
        n = len(data)
        while pos < n:
            pos = self._step(data, pos, n)

    def _step(self, data: bytes, pos: int, n: int) -> int:
        """Follow data[pos:n] through the current state; the position after it."""
        state = self._state
        if state == _BODY_LENGTH or state == _CHUNK_DATA:
            r = self._remaining
            if r > n - pos:
                self._remaining = r - (n - pos)
                return n
            self._remaining = 0
            self._state = _CHUNK_LINE if state == _CHUNK_DATA else _HEAD
            return pos + r
        if state == _HEAD:
            return self._head(data, pos, n)
        if state == _CHUNK_LINE:
            return self._chunk_line(data, pos, n)
        return self._trailers(data, pos, n)

    def failed_head(self, data: bytes, announced: bool) -> bytes | None:
        """httptools refused `data` inside a request head: return that head's bytes received so far.

        The refused head is the first one whose framing was not announced: every message before it in
        `data` was accepted whole (its head announced), and is followed here as `feed` does, limits
        included (a ProtocolError for an earlier message may escape). `announced`: httptools ran
        on_headers_complete for the refused head before refusing it, so its framing, the last one
        pushed, is dropped first. The guard is left just before the refused head, so feeding the same
        bytes again from its start (after the server parsed them anew) follows them as usual. None when
        no head is found (the refusal was not in a head).
        """
        if announced and self._framing:
            self._framing.pop()
        pos = 0
        n = len(data)
        while True:
            state = self._state
            if state == _HEAD and not self._framing:
                if self._begun:
                    head = bytes(self._prefix) + data[pos:]
                else:
                    m = _NOT_EOL.search(data, pos)
                    if m is None:
                        return None
                    head = data[m.start():]
                self._begun = False
                self._head_len = 0
                self._carry = b""
                self._prefix = bytearray()
                return head
            if pos >= n:
                return None
            pos = self._step(data, pos, n)

    def _find_end(self, data: bytes, pos: int, n: int) -> int:
        """Index just past the first CRLFCRLF of carry + data[pos:], or -1 (the carry is then updated)."""
        carry = self._carry
        if carry:
            # Only the junction needs the carry: a 6-byte concatenation, never a copy of data.
            j = (carry + data[pos : pos + 3]).find(_CRLFCRLF)
            if j >= 0:
                self._carry = b""
                return pos + j + 4 - len(carry)
        i = data.find(_CRLFCRLF, pos)
        if i >= 0:
            self._carry = b""
            return i + 4
        self._carry = data[n - 3 :] if n - pos >= 3 else (carry + data[pos:])[-3:]
        return -1

    def _head(self, data: bytes, pos: int, n: int) -> int:
        if not self._begun:
            c = data[pos]
            if c == 13 or c == 10:
                m = _NOT_EOL.search(data, pos)
                if m is None:
                    return n
                pos = m.start()
            self._begun = True
        end = self._find_end(data, pos, n)
        if end < 0:
            self._head_len += n - pos
            self._prefix += memoryview(data)[pos:]
            return n
        self._begun = False
        self._head_len = 0
        if self._prefix:
            self._prefix = bytearray()
        if not self._framing:
            raise ProtocolError("request head ended with no framing from the HTTP parser (guard out of step)")
        chunked, length = self._framing.pop(0)
        if chunked:
            self._state = _CHUNK_LINE
        elif length:
            self._state = _BODY_LENGTH
            self._remaining = length
        return end

    def _chunk_line(self, data: bytes, pos: int, n: int) -> int:
        limit = self._max_line
        line = self._line
        i = data.find(b"\n", pos)
        # Measured before any copy, so an endless extension costs no memory: +1 leaves room for the CR.
        if len(line) + ((n if i < 0 else i) - pos) > limit + 1:
            raise self._line_error()
        if i < 0:
            line += memoryview(data)[pos:]
            return n
        if line:
            line += memoryview(data)[pos:i]
            if line[-1:] == b"\r":
                del line[-1:]
            text = bytes(line)
            line.clear()
        else:
            text = data[pos : i - 1 if i > pos and data[i - 1] == 13 else i]  # without the CR
        if len(text) > limit:
            raise self._line_error()
        # The size is what precedes any extension (";") and BWS; everything after it is only counted.
        semi = text.find(b";")
        token = text if semi < 0 else text[:semi]
        if token and (token[-1] == 32 or token[-1] == 9):
            token = token.rstrip(b" \t")
        # translate-delete leaves b"" only for pure hex digits: int(x, 16) alone would take "0x5", "+5", "5_0", " 5".
        if not token or token.translate(None, _HEXDIGITS):
            raise ProtocolError(f"invalid chunk size line {text[:32]!r}")
        size = int(token, 16)
        i += 1
        if size:
            self._state = _CHUNK_DATA
            self._remaining = size + 2  # the data, then its CRLF (llhttp checked it is one)
            return i
        if data[i : i + 2] == b"\r\n":
            # No trailers, the usual end: straight back to the next head.
            self._state = _HEAD
            return i + 2
        self._state = _TRAILERS
        self._count = 0
        # The last-chunk line's CRLF starts the search, so an empty trailer section ends at the next CRLF.
        self._carry = b"\r\n"
        return i

    def _line_error(self) -> ProtocolError:
        self._line = bytearray()
        return ProtocolError(f"chunk size line exceeds {self._max_line} bytes (chunk extensions too long)")

    def _trailers(self, data: bytes, pos: int, n: int) -> int:
        end = self._find_end(data, pos, n)
        count = self._count + ((n if end < 0 else end) - pos)
        if count > self._max_trailers:
            raise LimitError(f"request trailers exceed {self._max_trailers} bytes", status=431)
        if end < 0:
            self._count = count
            return n
        self._count = 0
        self._state = _HEAD
        return end
