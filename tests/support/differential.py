"""Hostile inputs for the compiled parsers and scanner, one output line per case, so that two runs can be compared
line by line: the compiled modules (the package as installed) and the pure-Python sources (a copy of the package
without its .so files first on PYTHONPATH). See tests/test_compiled_differential.py.

    python -m tests.support.differential SEED CASES [KIND,...]     # KIND: sse, h1, scan (default all)

Every case is generated from SEED alone (random.Random), so both runs see the same bytes and the same splits.
A line is `KIND INDEX | output | output ...`: what each feed returned (events, requests, spans, the scanner's safe
offset) or the exception it raised (type and message), and the state left behind — everything a caller reads.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

from fastgw.proto import h1, sse
from fastgw.scan import fold
from fastgw.scan.database import ScanDB
from fastgw.scan.patterns import BUILTIN
from fastgw.scan.scanner import StreamScanner, find_spans
from tests.support.sse_streams import PII

Case = tuple[str, list[str]]


def _exc(e: BaseException) -> str:
    return f"EXC {type(e).__name__}: {getattr(e, 'message', None) or e}"


def _splits(rng: random.Random, data: bytes) -> list[bytes]:
    """`data` cut where a socket might cut it: mostly tiny pieces, sometimes a large one."""
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 1, 2, 3, 5, 8, 13, 64, 1000))
        out.append(data[i:i + n])
        i += n
    return out


# ---- SSE: decoder and splitter --------------------------------------------------------------------------------------

_SSE = (b"data:", b"data: ", b"event: x", b"id: 7", b"retry: 10", b":c", b"\n", b"\n", b"\r", b"\r\n", b"\n\n",
        b"\xef\xbb\xbf", b'{"a":1}', b"\xe2\x80\xa8", b"\x00", b"data", b" ", b"\xff", b"x" * 70, b"[DONE]")


def sse_cases(rng: random.Random, n: int) -> Iterator[Case]:
    for k in range(n):
        data = b"".join(rng.choice(_SSE) for _ in range(rng.randint(0, 40)))
        parts = _splits(rng, data) if rng.random() < 0.8 else [data]
        limit = rng.choice((64, 200, 1 << 20))
        out: list[str] = []
        dec, spl = sse.SSEDecoder(limit), sse.SSESplitter(limit)
        for p in parts:
            try:
                out.append(repr([(e.event, e.data, e.id, e.retry, e.raw) for e in dec.feed(p)]))
            except Exception as e:  # noqa: BLE001 - the exception is the output compared
                out.append(_exc(e))
                break
        out.append(f"decoder pending {dec.pending} partial {dec.has_partial}")
        for p in parts:
            try:
                out.append(repr(spl.feed(p)))
            except Exception as e:  # noqa: BLE001
                out.append(_exc(e))
                break
        out.append(f"splitter pending {spl.pending} partial {spl.has_partial}")
        yield f"sse {k}", out


# ---- HTTP/1.1 requests ----------------------------------------------------------------------------------------------

_REQUESTS = (
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"GET /a?b=c HTTP/1.0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET http://h/p?q HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET https://h HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
)
_MUTATIONS = (b"\r", b"\n", b"\x00", b":", b" ", b"\t", b"\xff", b"0", b"-1", b"chunked", b"Content-Length: ",
              b"\r\n\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: b\r\n", b"a" * 300)


def _request_bytes(rng: random.Random) -> bytes:
    b = bytearray(b"".join(rng.choice(_REQUESTS) for _ in range(rng.randint(1, 3))))
    for _ in range(rng.choice((0, 0, 1, 2, 4))):  # a third of the cases stay well-formed
        i = rng.randrange(len(b) + 1)
        op = rng.random()
        if op < 0.4:
            b[i:i] = rng.choice(_MUTATIONS)
        elif op < 0.7 and i < len(b):
            del b[i:i + rng.randint(1, 4)]
        elif i < len(b):
            b[i] = rng.randrange(256)
    return bytes(b)


def _event(ev: h1.Request | h1.HttpError) -> str:
    if isinstance(ev, h1.Request):
        refusal = ev.refusal
        return repr((ev.method, ev.target, ev.path, ev.query, ev.headers, ev.body, ev.version, ev.keep_alive, ev.seq,
                     None if refusal is None else (refusal.status, str(refusal))))
    return repr(("error", type(ev).__name__, ev.status, str(ev), ev.close))


def h1_cases(rng: random.Random, n: int) -> Iterator[Case]:
    for k in range(n):
        data = _request_bytes(rng)
        parts = _splits(rng, data) if rng.random() < 0.7 else [data]
        reader = h1.RequestReader(max_header_bytes=rng.choice((256, 8192)), max_body_bytes=rng.choice((4, 1 << 20)))
        out: list[str] = []
        for p in parts:
            try:
                reader.feed(p)
            except Exception as e:  # noqa: BLE001
                out.append(_exc(e))
                break
            out.append(f"{reader.state.name} continue {reader.continue_due} body {reader.body_received}")
            while reader.events:
                out.append(_event(reader.events.pop(0)))
        yield f"h1 {k}", out


# ---- the scanner and the fold ---------------------------------------------------------------------------------------

_TEXT = (*PII, "DE89 3704 0044 0532 0130 00", "sk-" + "a" * 40, "\n| --- |", "| a | b |\n", "ｊｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
         "j\u200bo\u200be@ex.com", "\\u0040", " ", "\n", "x", "é", "1234", "\"", "\\\"", "+1 (415) 555-0100", "０１２３",
         "𝟎𝟏𝟐", "\u00ad", "ß", "\r\n", "GB82 WEST 1234 5698 7654 32",
         # markdown tables: a header line decides what a number in its column is (`Pattern.table_context`)
         "| Phone | Name |", "| Bestellnummer |", "| Order |", "\n|---|---|\n", "\r\n| --- |\r\n", "| 030 1234567 |",
         "| +49 30 1234567 |", "| 4155550100 |", "\n\n", "|")


def scan_cases(rng: random.Random, n: int) -> Iterator[Case]:
    db = ScanDB(list(BUILTIN))
    db.allocate_scratch()
    for k in range(n):
        text = "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 25))).encode()
        js = rng.random() < 0.3
        out: list[str] = []
        try:
            out.append(repr([(s.entity, s.start, s.end) for s in find_spans(db, text, json=js)]))
        except Exception as e:  # noqa: BLE001
            out.append(_exc(e))
        sc = StreamScanner(db)
        try:
            for p in _splits(rng, text):
                sc.feed(p)
                safe, spans = sc.settle(final=False)
                out.append(repr((safe, [(s.entity, s.start, s.end, s.cont) for s in spans])))
            safe, spans = sc.settle(final=True)
            out.append(repr((safe, [(s.entity, s.start, s.end, s.cont) for s in spans])))
        except Exception as e:  # noqa: BLE001
            out.append(_exc(e))
        finally:
            sc.close()
        try:
            out.append(repr(fold.fold_text(text.decode(), json=js)))
            out.append(repr(fold.fold_bytes(text, json=js)))
        except Exception as e:  # noqa: BLE001
            out.append(_exc(e))
        yield f"scan {k}", out


KINDS = {"sse": sse_cases, "h1": h1_cases, "scan": scan_cases}


def main(argv: list[str]) -> int:
    seed, n = int(argv[0]), int(argv[1])
    kinds = argv[2].split(",") if len(argv) > 2 else list(KINDS)
    for kind in kinds:
        for name, out in KINDS[kind](random.Random(f"{seed}:{kind}"), n):
            print(name, "|", " | ".join(out).encode("unicode_escape").decode("ascii"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
