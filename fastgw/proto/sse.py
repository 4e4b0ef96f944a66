"""Server-Sent Events codec: cut, decode and encode `text/event-stream` bytes by the WHATWG parsing rules.

Three tools for three jobs on the streaming path:

- `SSESplitter` cuts a byte stream at block boundaries without parsing it: the pass-through fast
  path, so an event no policy touches leaves byte-identical (DESIGN invariant 5).
- `SSEDecoder` turns bytes into `SSEEvent`s; each keeps its exact `raw` bytes, so a caller can
  forward an event it did not change without re-encoding it.
- `encode_event` / `encode_data` / `encode_comment` build what the gateway writes itself.

A block is a run of lines ended by a blank line; a line ends with CRLF, LF or a lone CR
(HTML §9.2.5). The one ambiguous case is a CR at the end of a read, whose LF may be in the next
one. The rule here: **a CR ends its line as soon as it is seen**, so a block whose blank line ends
in CR is complete at once and no event waits for the next read (invariant 2). A LF that follows
in the same buffer is part of that line end and of that block's `raw`; a LF that only arrives at
the start of the next read is the second half of that CRLF: it dispatches nothing, and its byte
is carried at the start of the next block's `raw` (as extra blank lines are). Hence the fields of
every event are the same for any split of the stream, `b"".join(e.raw for e in events)` is always
exactly the bytes consumed, and a `raw` boundary moves by that single LF only when a read boundary
falls inside a block-ending CRLF.

Both the decoder and the splitter search whole buffers with `bytes.find`/`rfind` (memchr speed; the
decoder's per-event searches through `_ssec.c` where it is built, a call that costs less than the method's);
no Python code runs per byte, and Python code runs per line only for multi-line blocks' fields.
"""

from __future__ import annotations

import re
from typing import Callable, Final, cast

from fastgw.proto import limits
from fastgw.proto.errors import ProtocolError

__all__ = [
    "SSEDecoder",
    "SSEEvent",
    "SSESplitter",
    "encode_comment",
    "encode_data",
    "encode_event",
]

_BOM: Final = b"\xef\xbb\xbf"
_CR: Final = 13
_LF: Final = 10
_D: Final = 100  # b"d"
# Where a blank line starts: two line ends in a row. CRLF is one line end, so the byte pairs that hold
# the end of one line and the start of the next line end are exactly LF LF, LF CR and CR CR; searching
# for those three finds block ends in any mix of CR, LF and CRLF (see SSEDecoder._run_cr, _last_boundary).
# Three bytes.find calls beat one regex `\n[\n\r]|\r\r` by ~10x: re tries every position in Python's
# matcher, find uses memchr-based search.

# First byte that is not a line end: skips the blank lines that may precede a block.
_CONTENT: Final = re.compile(rb"[^\r\n]")
_NO_COMMENTS: Final[tuple[str, ...]] = ()


class SSEEvent:
    """One block of an event stream: its fields, and its exact bytes as received.

    A native class, compiled with this module: one is built per streamed event, and the compiled stream policy
    reads its fields directly (a msgspec Struct's were generic attribute lookups from compiled code, ~160
    instructions each, and its construction filled defaults in). Never changed once built: `replace` makes the
    changed copy.
    """

    __slots__ = ("data", "event", "id", "retry", "raw", "comments")

    def __init__(self, data: str | None, event: str | None, id: str | None, retry: int | None, raw: bytes,
                 comments: tuple[str, ...] = _NO_COMMENTS) -> None:
        #: Data lines joined with "\n"; None when the block had no data field.
        self.data = data
        #: Value of the last `event` field, or None.
        self.event = event
        #: Value of the last `id` field that holds no NUL, or None (the spec's per-block id, not the sticky
        #: last-event-id).
        self.id = id
        #: Value of the last all-ASCII-digit `retry` field, or None.
        self.retry = retry
        #: Bytes of this block from the byte after the previous block up to and including its terminating blank
        #: line.
        self.raw = raw
        #: Comment lines, text after ':' with one leading space removed (heartbeats, provider notes).
        self.comments = comments

    def replace(self, data: str | None, raw: bytes) -> SSEEvent:
        """The same event with other data and bytes."""
        return SSEEvent(data, self.event, self.id, self.retry, raw, self.comments)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSEEvent):
            return NotImplemented
        return (self.data == other.data and self.event == other.event and self.id == other.id
                and self.retry == other.retry and self.raw == other.raw and self.comments == other.comments)

    def __repr__(self) -> str:
        return (f"SSEEvent(data={self.data!r}, event={self.event!r}, id={self.id!r}, retry={self.retry!r}, "
                f"raw={self.raw!r}, comments={self.comments!r})")


def _too_big(limit: int) -> ProtocolError:
    # The upstream, not our client, broke the stream: the client gets 502 (or an in-stream error event).
    return ProtocolError(
        f"upstream SSE event exceeds max_event_bytes ({limit} bytes)",
        status=502,
        code="bad_gateway",
    )


def _parse(raw: bytes, lines: bytes, cr: bool) -> SSEEvent:
    """Build the event of one complete block; `lines` is its field lines, without blank lines or the terminator."""
    # `13 in b` (memchr) rather than `b"\r" in b`: the bytes-needle form is ~8x slower for short buffers.
    if cr and 13 in lines:
        lines = lines.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if lines[:6] == b"data: " and 10 not in lines:
        return SSEEvent(lines[6:].decode("utf-8", "replace"), None, None, None, raw)
    data: list[bytes] | None = None
    event = id_ = None
    retry = None
    comments: list[str] | None = None
    for line in lines.split(b"\n"):
        colon = line.find(b":")
        if colon == 0:
            text = line[2:] if line[1:2] == b" " else line[1:]
            if comments is None:
                comments = []
            comments.append(text.decode("utf-8", "replace"))
            continue
        if colon < 0:
            name = line
            value = b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            if data is None:
                data = [value]
            else:
                data.append(value)
        elif name == b"event":
            event = value
        elif name == b"id":
            if 0 not in value:
                id_ = value
        elif name == b"retry":
            # bytes.isdigit is ASCII-only, as the spec wants; int() may still refuse thousands of digits.
            if value.isdigit():
                try:
                    retry = int(value)
                except ValueError:
                    pass
    return SSEEvent(
        None if data is None else b"\n".join(data).decode("utf-8", "replace"),
        None if event is None else event.decode("utf-8", "replace"),
        None if id_ is None else id_.decode("utf-8", "replace"),
        retry,
        raw,
        _NO_COMMENTS if comments is None else tuple(comments),
    )


def blocks_py(buf: bytes, pos: int, raw_start: int) -> str | list[str | bytes] | None:
    """`_ssec.blocks`' Python form: the run of common blocks (one `data: ` line) from pos: None where the block at
    pos is not one, its text where one block ends buf (its raw: buf[raw_start:]), else [text, raw, ...]."""
    if raw_start < 0 or pos < raw_start or pos > len(buf):
        raise ValueError("blocks: 0 <= raw_start <= pos <= len(data) is not so")
    n = len(buf)
    out: list[str | bytes] | None = None
    while True:
        p = pos
        while p < n and buf[p] == _LF:
            p += 1
        lf = buf.find(b"\n", p)
        if lf < 0 or lf + 2 > n or buf[lf + 1] != _LF or lf - p < 6 or not buf.startswith(b"data: ", p):
            return out
        text = buf[p + 6:lf].decode("utf-8", "replace")
        if out is None and lf + 2 == n:
            return text
        if out is None:
            out = []
        out.append(text)
        out.append(buf if lf + 2 == n and raw_start == 0 else buf[raw_start:lf + 2])
        raw_start = pos = lf + 2


def find_lflf_py(buf: bytes, pos: int) -> int:
    """`buf.find(b"\\n\\n", pos)` for pos >= 0: `_ssec.find_lflf`'s Python form."""
    if pos < 0:
        raise ValueError("a negative start")
    return buf.find(b"\n\n", pos)


def _load_c() -> tuple[Callable[[bytes, int], int], Callable[[bytes, int, int], str | list[str | bytes] | None]]:
    """The decoder's per-event work in C (fastgw/proto/_ssec.c: why, in its head comment), or its Python forms
    where it is not built."""
    try:
        from fastgw.proto import _ssec
    except ImportError:
        return find_lflf_py, blocks_py
    return _ssec.find_lflf, _ssec.blocks


_C: Final = _load_c()
#: A blank line's LF LF at or after a position of a bytes, and a run of common blocks decoded in one call (see
#: _load_c).
_find_lflf: Final = _C[0]
_blocks: Final = _C[1]


def _skip_blank(buf: bytes | bytearray, pos: int) -> int:
    """First byte at or after pos that is no line end, or len(buf): the blank lines before a block."""
    m = _CONTENT.search(buf, pos)
    return len(buf) if m is None else m.start()


class SSEDecoder:
    """Incremental event-stream parser: `feed(bytes) -> [SSEEvent]`, sans-IO.

    Text is decoded (UTF-8, errors="replace") only once a block is complete, so a character split
    across reads is never mangled. A block that would grow past `max_event_bytes` raises
    `ProtocolError` (status 502) whatever the read sizes, so memory held stays bounded.
    """

    __slots__ = ("_max", "_buf", "_pos", "_content", "_cr", "_start", "_closed", "_partial")

    def __init__(self, max_event_bytes: int = limits.MAX_SSE_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        #: Bytes of the incomplete block, from its first raw byte.
        self._buf = bytearray()
        #: Where the search resumes in _buf: a block end cannot lie in what was already searched.
        self._pos = 0
        #: Offset in _buf of the block's first field byte; -1 while only blank lines (or a BOM) are held.
        self._content = -1
        #: _buf holds a CR, so line ends need the general search.
        self._cr = False
        #: Nothing decided yet about a leading BOM.
        self._start = True
        self._closed = False
        self._partial = False

    @property
    def pending(self) -> int:
        """Bytes held for the incomplete block."""
        return len(self._buf)

    @property
    def has_partial(self) -> bool:
        """True when held bytes hold part of a block (not only blank lines): the stream would end truncated."""
        if self._closed:
            return self._partial
        if self._start:
            return bool(self._buf)
        return self._content >= 0

    def close(self) -> None:
        """End of stream: an incomplete final block is discarded (HTML §9.2.6); `has_partial` still tells."""
        if not self._closed:
            self._partial = self.has_partial
            self._closed = True
            self._buf = bytearray()

    def feed(self, data: bytes, start: int = 0) -> list[SSEEvent]:
        """Take the next bytes of the stream, `data[start:]`; return every block they complete, in order. (`start`:
        a caller that fed the read's first part on its own gives the rest without copying it.)"""
        if self._closed:
            raise ValueError("SSEDecoder.feed() after close()")
        if start < 0 or start > len(data):
            raise ValueError("SSEDecoder.feed(): start outside the data")
        held = self._buf
        if self._start and not held and len(data) - start >= 3 and not data.startswith(_BOM, start):
            # A first read that tells at once there is no BOM is read as any other: a whole answer in one read is
            # not copied twice into and out of the held buffer.
            self._start = False
        if held or self._start:
            held += memoryview(data)[start:] if start else data
            if self._start:
                return self._begin(held)
            if self._cr or 13 in data:
                return self._run_cr(held, self._pos, self._content, True)
            if self._content >= 0 and held.find(b"\n\n", self._pos) < 0:
                # The held block goes on: nothing completes, so no copy of what is held (a block dripped in
                # small reads would be copied whole per read), only where the next search resumes moves.
                if len(held) > self._max:
                    self._fail()
                self._pos = len(held) - 1
                return []
            # One copy per read that may complete something: the loop then works on bytes, whose finds and
            # indexing are native calls when compiled (on `bytes | bytearray` each is a generic method call).
            return self._run(bytes(held), self._pos, self._content, True)
        if start == len(data):
            return []
        # Common case: nothing held, so work on the read itself; an event that is the whole read is
        # returned with raw = data (a full slice of bytes is the same object, no copy).
        if 13 in data:
            return self._run_cr(data, start, -1, False)
        return self._run(data, start, -1, False)

    def _begin(self, held: bytearray) -> list[SSEEvent]:
        """First bytes of the stream: the BOM is only skipped here, so wait until 3 bytes tell."""
        if len(held) < 3 and _BOM.startswith(held):
            if len(held) > self._max:  # (only a limit under 3 bytes gets here)
                self._fail()
            return []
        self._start = False
        pos = 3 if held.startswith(_BOM) else 0
        if 13 in held:
            return self._run_cr(held, pos, -1, True)
        return self._run(bytes(held), pos, -1, True)

    def _run(self, buf: bytes, pos: int, content: int, in_held: bool) -> list[SSEEvent]:
        """Decode the blocks that end in buf (no CR in it: `_run_cr` takes those), resuming at pos in the block
        that starts at content (-1: none). With `in_held`, buf is a copy of `_buf`, which keeps what is left; without
        it, buf is a read whose bytes before pos were taken already."""
        # This LF-only loop runs for every read and keeps its ending inline (one more call costs ~5% on 64-byte reads).
        events: list[SSEEvent] = []
        limit = self._max
        n = len(buf)
        raw_start = 0 if in_held else pos  # (held: the block's bytes from the buffer's start, a BOM included)
        while True:
            if content < 0:
                # Common blocks, one `data: ` line each, in one call: their texts and raws (the rest below). A block
                # that starts otherwise (`event:` first, as the typed APIs' do) is not one: no call for it.
                got = _blocks(buf, pos, raw_start) if pos < n and (buf[pos] == _D or buf[pos] == _LF) else None
                if isinstance(got, str):  # one, to the end of buf (a paced stream's read)
                    raw = buf if not raw_start else buf[raw_start:]
                    if len(raw) > limit:
                        self._fail()
                    events.append(SSEEvent(got, None, None, None, raw))
                    raw_start = pos = n
                elif got is not None:
                    for i in range(0, len(got), 2):
                        raw = cast(bytes, got[i + 1])
                        if len(raw) > limit:
                            self._fail()
                        events.append(SSEEvent(cast(str, got[i]), None, None, None, raw))
                        raw_start += len(raw)  # the raws are contiguous from raw_start
                    pos = raw_start
                # Blank lines before a block are empty blocks: not returned, their bytes go in the next raw.
                if pos < n and buf[pos] == _LF:
                    pos = _skip_blank(buf, pos)
                if pos >= n:
                    break
                content = pos
            # Any other block (more lines, other fields) or an incomplete one: its end, then its fields.
            f = _find_lflf(buf, pos)
            if f < 0:
                break
            end = f + 2
            if end - raw_start > limit:
                self._fail()
            # The whole read is one event: its raw is the read itself (CPython's full slice is the same object;
            # compiled, a slice always copies).
            raw = buf if end == n and not raw_start else buf[raw_start:end]
            events.append(_parse(raw, buf[content:f], False))
            raw_start = pos = end
            content = -1
        held = self._buf
        if in_held:
            if raw_start:
                del held[:raw_start]
        elif raw_start < n:
            held += memoryview(buf)[raw_start:]
        if len(held) > limit:
            self._fail()
        # An incomplete block's search resumes at its last byte: a pair that ends it may start there.
        self._pos = (n - 1 if content >= 0 else n) - raw_start
        self._content = content - raw_start if content >= 0 else -1
        self._cr = False
        return events

    def _run_cr(self, buf: bytes | bytearray, pos: int, content: int, in_held: bool) -> list[SSEEvent]:
        """_run for a buffer that holds a CR, so line ends may be CR, LF or CRLF."""
        events: list[SSEEvent] = []
        n = len(buf)
        raw_start = 0 if in_held else pos  # (held: the block's bytes from the buffer's start, a BOM included)
        # Next "\n\n", "\r\r", "\n\r" at or after pos (n: none), each found again only once passed, so a
        # read holding many events is scanned once per pattern, not once per event.
        lflf = crcr = lfcr = -1
        while True:
            if content < 0:
                if pos < n and (buf[pos] == _LF or buf[pos] == _CR):
                    pos = _skip_blank(buf, pos)
                if pos >= n:
                    break
                content = pos
            if lflf < pos:
                lflf = buf.find(b"\n\n", pos)
                if lflf < 0:
                    lflf = n
            if crcr < pos:
                crcr = buf.find(b"\r\r", pos)
                if crcr < 0:
                    crcr = n
            if lfcr < pos:
                lfcr = buf.find(b"\n\r", pos)
                if lfcr < 0:
                    lfcr = n
            f = min(lflf, crcr, lfcr)
            if f >= n:
                break
            # f > content (the content byte is no line end), so buf[f - 1] exists and belongs to the block.
            lines_end = f - 1 if buf[f - 1] == _CR else f
            end = f + 2
            if buf[f + 1] == _CR and end < n and buf[end] == _LF:
                end += 1
            if end - raw_start > self._max:
                self._fail()
            if type(buf) is not bytes:
                buf = bytes(buf)
            raw = buf if end == n and not raw_start else buf[raw_start:end]
            events.append(_parse(raw, buf[content:lines_end], True))
            raw_start = pos = end
            content = -1
        held = self._buf
        if in_held:
            if raw_start:
                del held[:raw_start]
        elif raw_start < n:
            held += memoryview(buf)[raw_start:]
        if len(held) > self._max:
            self._fail()
        self._pos = (n - 1 if content >= 0 else n) - raw_start
        self._content = content - raw_start if content >= 0 else -1
        self._cr = 13 in held
        return events

    def _fail(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._content = -1
        raise _too_big(self._max)


def _last_boundary(buf: bytes | bytearray, lo: int, cr: bool) -> int:
    """End of the last blank line in buf that starts at or after lo, or 0 when there is none."""
    if not cr:
        f = buf.rfind(b"\n\n", lo)
        return f + 2 if f >= 0 else 0
    f = max(buf.rfind(b"\n\n", lo), buf.rfind(b"\r\r", lo), buf.rfind(b"\n\r", lo))
    if f < 0:
        return 0
    end = f + 2
    # A CR that ends the blank line takes its LF when present (CRLF); f is the last pair, so no more follows.
    if buf[f + 1] == _CR and end < len(buf) and buf[end] == _LF:
        end += 1
    return end


class SSESplitter:
    """Pass-through cutter: `feed(bytes) -> bytes` returns what can be forwarded now, ending on a block boundary.

    Every complete block is returned by the feed that completes it (a trailing CR counts, see the
    module docstring); only the incomplete last block is held, plus at most the blank lines that follow
    a block when no later block has ended yet. The BOM is not special here: it only delays a
    leading blank line, never moves a boundary. Held bytes beyond `max_event_bytes` raise
    `ProtocolError` (502); a larger block that arrives within one read passes, memory being bounded by
    the read size then.
    """

    __slots__ = ("_max", "_buf")

    def __init__(self, max_event_bytes: int = limits.MAX_SSE_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held for the incomplete block."""
        return len(self._buf)

    @property
    def has_partial(self) -> bool:
        """True when held bytes hold part of a block (not only blank lines): the stream would end truncated."""
        return _CONTENT.search(self._buf) is not None

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes; return the longest prefix of held + data that ends on a block boundary (maybe b"")."""
        held = self._buf
        if not held:
            # Nothing held: no concatenation; a read that ends on a boundary (the usual case) goes out as is.
            end = _last_boundary(data, 0, 13 in data)
            n = len(data)
            if end == n:
                return data
            if n - end > self._max:
                raise _too_big(self._max)
            held += memoryview(data)[end:]
            return data[:end]
        # A pair that ends a blank line cannot lie wholly in what was held (that was searched already), so
        # the search starts at the last held byte. A pair with a CR there needs a CR in data too (LF CR,
        # CR CR), so only data decides which search runs.
        lo = len(held) - 1
        held += data
        end = _last_boundary(held, lo, 13 in data)
        if not end:
            if len(held) > self._max:
                self._buf = bytearray()
                raise _too_big(self._max)
            return b""
        out = bytes(held[:end])
        del held[:end]
        if len(held) > self._max:
            self._buf = bytearray()
            raise _too_big(self._max)
        return out


def _lines(data: bytes) -> list[bytes]:
    if 13 in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.split(b"\n")


def _field(name: str, value: str | None) -> bytes:
    if value is None:
        return b""
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {name} must not contain CR or LF: {value!r}")
    if name == "id" and "\0" in value:
        raise ValueError(f"SSE id must not contain NUL: {value!r}")  # a reader would ignore the field
    return b"%s: %s\n" % (name.encode(), value.encode())


def encode_event(data: str | bytes, event: str | None = None, id: str | None = None) -> bytes:
    """One complete event block; each line of data (CRLF, LF or CR separated) becomes its own `data:` line."""
    if isinstance(data, str):
        data = data.encode()
    body = b"".join([b"data: " + line + b"\n" for line in _lines(data)])
    return _field("event", event) + _field("id", id) + body + b"\n"


def encode_data(payload: bytes) -> bytes:
    """`data: <payload>` block, the fast path for one-line payloads (serialized JSON chunks)."""
    if 10 in payload or 13 in payload:
        # A line end would split the payload into a field of its own: frame it properly instead.
        return encode_event(payload)
    return b"data: " + payload + b"\n\n"


def encode_comment(text: str) -> bytes:
    """A comment-only block (`: text`), e.g. a heartbeat; SSEDecoder returns it with data None."""
    return b"".join([b": " + line + b"\n" for line in _lines(text.encode())]) + b"\n"
