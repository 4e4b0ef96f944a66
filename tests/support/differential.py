"""Hostile inputs for the compiled parsers and scanner, one output line per case, so that two runs can be compared
line by line: the compiled modules (the package as installed) and the pure-Python sources (a copy of the package
without its .so files first on PYTHONPATH). See tests/test_compiled_differential.py.

    python -m tests.support.differential SEED CASES [KIND,...]     # KIND: sse, h1, scan, stream, texts (default all)

Every case is generated from SEED alone (random.Random), so both runs see the same bytes and the same splits.
A line is `KIND INDEX | output | output ...`: what each feed returned (events, requests, spans, the scanner's safe
offset) or the exception it raised (type and message), and the state left behind — everything a caller reads.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

import orjson

from fastgw.policy import textscan
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.stream import StreamBlocked, open_stream
from fastgw.proto import h1, sse
from fastgw.scan import fold
from fastgw.scan.database import ScanDB
from fastgw.scan.patterns import BUILTIN
from fastgw.scan.scanner import StreamScanner, find_spans
from tests.support.sse_streams import PII, pii_policy

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


# ---- the output stream policy ---------------------------------------------------------------------------------------

#: Values a field may take where a well-formed stream has a string or an index: wrong types, unhashable ones.
_ODD = (None, 0, 1, -1, 2.5, True, "", "0", [], [1], {}, {"a": 1}, "x" * 3)


def _piece(rng: random.Random) -> object:
    return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 4))) if rng.random() < 0.85 else rng.choice(_ODD)


def _chat_event(rng: random.Random) -> object:
    if rng.random() < 0.05:
        return rng.choice(("[DONE]", "42", "[1]", '"s"', "{", "not json"))
    idx = rng.choice((0, 0, 0, 1, 2)) if rng.random() < 0.95 else rng.choice(_ODD)
    delta: dict = {}
    r = rng.random()
    if r < 0.5:
        delta["content"] = _piece(rng)
    elif r < 0.7:
        fn = {"arguments": _piece(rng)}
        if rng.random() < 0.3:
            fn["name"] = _piece(rng)
        tc = {"index": rng.choice((0, 1, 2)) if rng.random() < 0.9 else rng.choice(_ODD), "function": fn}
        if rng.random() < 0.2:
            tc["extra"] = _piece(rng)
        delta["tool_calls"] = [tc] if rng.random() < 0.95 else rng.choice(_ODD)
    elif r < 0.8:
        delta[rng.choice(("reasoning_content", "refusal", "reasoning", "audio"))] = _piece(rng)
    elif r < 0.85:
        delta["function_call"] = {"arguments": _piece(rng), "name": _piece(rng)}
    choice: dict = {"index": idx, "delta": delta if rng.random() < 0.95 else rng.choice(_ODD)}
    if rng.random() < 0.15:
        choice["logprobs"] = {"content": [{"token": _piece(rng), "logprob": -0.1, "bytes": [1],
                                           "top_logprobs": []}]} if rng.random() < 0.8 else rng.choice(_ODD)
    if rng.random() < 0.1:
        choice["finish_reason"] = rng.choice(("stop", "tool_calls", None, 3))
    obj: dict = {"id": "c", "object": "chat.completion.chunk", "choices": [choice] if rng.random() < 0.95
                 else rng.choice(_ODD)}
    if rng.random() < 0.05:
        obj["usage"] = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    return obj


def _responses_event(rng: random.Random) -> object:
    iid = rng.choice(("msg_1", "msg_2", "fc_1")) if rng.random() < 0.9 else rng.choice(_ODD)
    r = rng.random()
    if r < 0.45:
        kind = rng.choice(("response.output_text.delta", "response.function_call_arguments.delta",
                           "response.reasoning_summary_text.delta", "response.refusal.delta"))
        return {"type": kind, "item_id": iid, "content_index": rng.choice((0, 1)), "delta": _piece(rng),
                "sequence_number": rng.randint(0, 9)}
    if r < 0.65:
        kind = rng.choice(("response.output_text.done", "response.function_call_arguments.done"))
        return {"type": kind, "item_id": iid, "content_index": 0, "text": _piece(rng), "arguments": _piece(rng)}
    if r < 0.85:
        item = {"id": iid, "type": rng.choice(("message", "function_call", "reasoning")),
                "content": [{"type": "output_text", "text": _piece(rng), "annotations": []}], "arguments": _piece(rng)}
        return {"type": rng.choice(("response.output_item.added", "response.output_item.done")), "item": item}
    if r < 0.9:
        return {"type": "response.completed", "response": {"output": [{"id": iid, "type": "message", "content": [
            {"type": "output_text", "text": _piece(rng)}]}], "output_text": _piece(rng)}}
    return rng.choice(({"type": rng.choice(_ODD)}, {"no": "type"}, "text", [1]))


def _messages_event(rng: random.Random) -> object:
    idx = rng.choice((0, 1)) if rng.random() < 0.9 else rng.choice(_ODD)
    r = rng.random()
    if r < 0.5:
        delta = ({"type": "text_delta", "text": _piece(rng)} if rng.random() < 0.6
                 else {"type": "input_json_delta", "partial_json": _piece(rng)})
        return {"type": "content_block_delta", "index": idx, "delta": delta}
    if r < 0.7:
        block = rng.choice(({"type": "text", "text": _piece(rng)}, {"type": "tool_use", "id": "t", "name": "f",
                                                                     "input": {"q": _piece(rng)}},
                            {"type": "web_search_tool_result", "content": [{"title": _piece(rng), "url": "u"}]}))
        return {"type": "content_block_start", "index": idx, "content_block": block}
    if r < 0.9:
        return {"type": "content_block_stop", "index": idx}
    return rng.choice(({"type": "message_stop"}, {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
                       {"type": rng.choice(_ODD)}, "x"))


_DIALECTS = {"chat": ("chat/completions", _chat_event), "responses": ("responses", _responses_event),
             "messages": ("messages", _messages_event)}


def _sse(obj: object, dialect: str) -> bytes:
    data = obj.encode() if isinstance(obj, str) else orjson.dumps(obj)
    kind = obj.get("type") if isinstance(obj, dict) else None
    head = b"event: %s\n" % kind.encode() if dialect != "chat" and isinstance(kind, str) else b""
    return head + b"data: " + data + b"\n\n"


def stream_cases(rng: random.Random, n: int) -> Iterator[Case]:
    """Streams of each dialect, from well-formed to hostile (wrong types, unhashable indices, events that are no
    objects), pushed as SSE events or as structured chunks through the pii-detector stream policy (redact or
    block), released at random points: what each push and release gave, and the texts and decisions at the end."""
    for k in range(n):
        dialect = rng.choice(tuple(_DIALECTS))
        endpoint, make = _DIALECTS[dialect]
        action = rng.choice(("redact", "redact", "block"))
        objs = [make(rng) for _ in range(rng.randint(0, 12))]
        structured = rng.random() < 0.3
        ctx = RequestContext("r", "POST", "/v1/" + endpoint, [])
        ctx.endpoint = endpoint
        out: list[str] = []
        sp = open_stream([pii_policy(action)], Findings([]), ctx, dialect=dialect)
        try:
            if structured:
                for o in objs:
                    sp.push_chunk(o)
                    if rng.random() < 0.5:
                        out.append(repr(sp.release()))
                sp.push_done()
            else:
                for ev in sse.SSEDecoder().feed(b"".join(_sse(o, dialect) for o in objs)):
                    sp.push(ev)
                    if rng.random() < 0.5:
                        out.append(repr(sp.release()))
            out.append(repr(sp.finish()))
        except StreamBlocked as e:
            out.append(f"BLOCKED {e.prefix!r} {e.error.code}")
        except Exception as e:  # noqa: BLE001
            out.append(_exc(e))
        finally:
            sp.close()
        out.append(repr((sorted(ctx.texts.items()), [(d.policy, d.phase, d.outcome) for d in ctx.decisions])))
        yield f"stream {k}", out


# ---- whole texts: a request, a non-streamed answer -------------------------------------------------------------------

def _value(rng: random.Random, depth: int = 0) -> object:
    """A JSON value a client or an upstream might send where text is expected, texts mostly."""
    r = rng.random()
    if r < 0.6 or depth > 2:
        return _piece(rng)
    if r < 0.8:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ("content", "text", "type", "id", "data", "arguments", "input", "metadata", "name", "role", "x")
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _answer(rng: random.Random) -> dict:
    """A non-streamed chat, Responses or Messages answer, from well-formed to odd."""
    r = rng.random()
    if r < 0.5:
        msg: dict = {"role": "assistant", "content": _piece(rng)}
        if rng.random() < 0.3:
            msg["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": _piece(rng)}}]
        ch: dict = {"index": rng.choice((0, 1, _ODD[0])), "message": msg if rng.random() < 0.9 else _value(rng),
                    "finish_reason": "stop"}
        if rng.random() < 0.3:
            ch["logprobs"] = {"content": [{"token": _piece(rng), "logprob": -0.1, "bytes": [1], "top_logprobs": [
                {"token": _piece(rng), "logprob": -1.0, "bytes": [2]}]} for _ in range(rng.randint(0, 4))]}
        return {"id": "c", "object": "chat.completion", "choices": [ch] if rng.random() < 0.95 else _value(rng)}
    if r < 0.8:
        part: dict = {"type": "output_text", "text": _piece(rng), "annotations": []}
        if rng.random() < 0.3:
            part["logprobs"] = [{"token": _piece(rng), "logprob": -0.1} for _ in range(rng.randint(0, 4))]
        return {"object": "response", "output": [{"id": "m", "type": "message", "content": [part]},
                                                 {"type": "function_call", "arguments": _piece(rng)}],
                "output_text": _piece(rng)}
    return {"type": "message", "content": [{"type": "text", "text": _piece(rng)},
                                           {"type": "tool_use", "id": "t", "name": "f", "input": _value(rng)}]}


def text_cases(rng: random.Random, n: int) -> Iterator[Case]:
    """Requests (any JSON in a message list, metadata, tools) and non-streamed answers through the whole-text path
    (`fastgw.policy.textscan`), one or two pii-detector policies (redact, block): the prefilter's verdict, whether
    the policies changed the body, the body after, the decisions, or the refusal."""
    prefilters: dict[tuple[str, ...], textscan.Prefilter] = {}
    for k in range(n):
        where = rng.choice(("input", "output"))
        actions = tuple(rng.choice(("redact", "redact", "block")) for _ in range(rng.choice((1, 1, 2))))
        policies = [pii_policy(a) for a in actions]
        if actions not in prefilters:
            prefilters[actions] = textscan.Prefilter(policies)
            prefilters[actions].allocate_scratch()
        if where == "input":
            body: dict = {"model": "m", "messages": [{"role": "user", "content": _value(rng)}
                                                     for _ in range(rng.randint(0, 3))]}
            if rng.random() < 0.3:
                body["metadata"] = _value(rng)
            slots = list(textscan.request_slots(body))
        else:
            body = _answer(rng)
            slots = list(textscan.response_slots(body))
        ctx = RequestContext("r", "POST", "/v1/chat/completions", [])
        out: list[str] = []
        try:
            out.append(repr(prefilters[actions].clean(slots)))
            out.append(repr(textscan.process_slots(policies, iter(slots), where, Findings([]), ctx)))
        except Exception as e:  # noqa: BLE001 - a refusal (PolicyViolation) is an outcome
            out.append(_exc(e))
        out.append(orjson.dumps(body).decode())
        out.append(repr([(d.policy, d.phase, d.outcome, sorted(d.detail.items())) for d in ctx.decisions]))
        yield f"texts {k}", out


KINDS = {"sse": sse_cases, "h1": h1_cases, "scan": scan_cases, "stream": stream_cases, "texts": text_cases}


def main(argv: list[str]) -> int:
    seed, n = int(argv[0]), int(argv[1])
    kinds = argv[2].split(",") if len(argv) > 2 else list(KINDS)
    for kind in kinds:
        for name, out in KINDS[kind](random.Random(f"{seed}:{kind}"), n):
            print(name, "|", " | ".join(out).encode("unicode_escape").decode("ascii"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
