"""A chunked response body's plain chunks, decoded in one call per read; llhttp reads everything else.

Why (issue 18): a provider frames each SSE event as its own chunk, and a fast upstream sends dozens in one read.
Through httptools, every chunk costs llhttp's callbacks into Cython (chunk header, body, chunk complete), a bytes
object and a list append, and the read's pieces are joined again afterwards: ~45,000 instructions of a 53-event
streamed answer's ~270,000. Here a read's chunks come out as one bytes object.

Only the plain form is read here: a size line of 1 to 8 hex digits ended by CR LF, a nonzero size, the data,
CR LF. At a chunk boundary where anything else begins (the last chunk `0`, an extension, a space, a longer size,
any stray byte) the rest of the body goes to llhttp, which then sits exactly where the body would have put it
(between chunks) and reads on with its own rules, trailers, errors and end of message. So a body is either
decoded here to the byte llhttp would have decoded, or left to llhttp; the two agree on every input
(tests/proto/test_client_chunks.py holds them equal over a hostile corpus cut anywhere). The one error found
here, chunk data not followed by CR LF, carries llhttp's own message for it.

`dechunk(data, start, state, out)` reads `data[start:]` (no copy made of a read's tail after its head) from
`state`, appends the plain chunks' data to `out` as one bytes object (nothing when there is none) and returns one
int: `code | state << 3` when all was read (code DONE), else `code | offset << 3`, the offset in `data` where reading
stopped (MORE ... NO_LF: the state is then a chunk boundary, 0). A state is `left << 2 | crlf`: the current chunk's
data still due, and the bytes of the CR LF after it still due (2, 1, 0). One int rather than a tuple: a paced
stream reads one event per read, and a tuple of five cost it more than llhttp's own callbacks did.
`head_cut(data, start)` says where the response head that begins at `start` ends, when it names a chunked body: the
connection cuts a read there, so that llhttp reads the head and a body in chunks can be read here from its start.

`fastgw/proto/_dechunkc.c` is these functions in C, byte for byte; this form runs where that one is not built.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DONE", "MORE", "LLHTTP", "NO_CR", "NO_LF", "MESSAGES", "dechunk", "head_cut"]

DONE: Final = 0  # all of `data` read
MORE: Final = 1  # a size line begins at `offset` and is not complete: call again with it before the next bytes
LLHTTP: Final = 2  # a chunk boundary at `offset`: what follows is llhttp's to read
NO_CR: Final = 3  # chunk data followed by LF without CR, at `offset`
NO_LF: Final = 4  # chunk data followed by neither CR LF nor LF, at `offset`

#: llhttp's messages for the two errors found here (the same input fed to llhttp raises them).
MESSAGES: Final = {NO_CR: "Missing expected CR after chunk data", NO_LF: "Expected LF after chunk data"}

#: The most hex digits of a size read here (a larger chunk goes to llhttp, which checks its overflow).
MAX_DIGITS: Final = 8

_HEX: Final = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}


def dechunk(data: bytes, start: int, state: int, out: list[bytes]) -> int:
    """The data of the plain chunks of `data[start:]` from `state`, appended to `out`; see the module's docstring."""
    parts: list[bytes] = []
    left = state >> 2
    crlf = state & 3
    i = start
    n = len(data)
    code = DONE
    while i < n:
        if left:
            take = min(left, n - i)
            parts.append(data[i:i + take])
            i += take
            left -= take
            if not left:
                crlf = 2
            continue
        if crlf:
            c = data[i]
            if crlf == 2 and c == 13:
                crlf = 1
                i += 1
                continue
            if crlf == 1 and c == 10:
                crlf = 0
                i += 1
                continue
            code = NO_CR if crlf == 2 and c == 10 else NO_LF
            break
        j = i
        size = 0
        while j < n and j - i < MAX_DIGITS:
            d = _HEX.get(data[j])
            if d is None:
                break
            size = size * 16 + d
            j += 1
        if j == n or j + 1 == n and data[j] == 13 and size:
            code = MORE  # digits only so far, or digits and CR
            break
        if j == i or data[j] != 13 or size == 0 or data[j + 1] != 10:
            code = LLHTTP
            break
        left = size
        i = j + 2
    if parts:
        out.append(parts[0] if len(parts) == 1 else b"".join(parts))
    if code == DONE:
        return DONE | (left << 2 | crlf) << 3
    return code | i << 3


def head_cut(data: bytes, start: int) -> int:
    """Where the head that begins at `data[start]` ends (after its CR LF CR LF: llhttp requires CR LF line ends, so
    a head ends at its first empty line), if the head names a chunked body ("chunked", "Chunked"; another spelling
    is llhttp's to read, as any other body is); else -1."""
    at = data.find(b"\r\n\r\n", start)
    if at < 0 or data.find(b"hunked", start, at) < 0:
        return -1
    return at + 4
