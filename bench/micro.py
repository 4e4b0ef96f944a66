"""Micro-benchmarks of the streaming hot paths, in-process, so a regression shows up where it happens.

    python -m bench.micro                 # every case, ~0.2 s x 5 repeats each (best repeat reported)
    python -m bench.micro --quick         # a few iterations each: a smoke run (what the tests do)
    python -m bench.micro --filter relay  # only cases whose name contains "relay"
    python -m bench.micro --json out.json # also write the results as JSON

Per case it prints ns/op, ops/s and, for cases whose op handles a whole stream (or a list of events),
µs per event. Every input is a realistic OpenAI chat stream of 53 events (role chunk, 50 content chunks
of ~4 characters, finish chunk, `data: [DONE]`) unless the case says otherwise:

- `sse.decode.*` / `sse.split.*`: `SSEDecoder` / `SSESplitter` over that body read whole, one event per
  read, and in 64-byte pieces (new decoder per op).
- `chunked.*`: `write_chunk` of each event into a `writelines` that records, and `frame_chunk`.
- `json.*`: content extraction from each event's data: the typed msgspec decoder the output policy uses
  (`fastgw.policy.stream`) against `orjson.loads` of the whole chunk.
- `scan.*`: a `StreamScanner` on the pii-detector database (built like the policy builds it) fed 50
  events of ~20 characters, `settle()` after each, as `StreamPolicy` does: clean prose, and an email in
  every event.
- `relay.*`: a whole request through `SSERelay` / `PolicyRelay` with a fake client transport and the
  upstream delivering one event per read (`on_data` + `flush`, then `on_end`), as `App._relay` builds
  them: no policy, pii-detector redact, and pii-detector + safety-filter redact on clean prose and on
  prose with PII values; `relay.read.*`: the whole answer in one read (a fast upstream, as in `bench run`).
- `whole.*`: the whole-text path of a non-streamed request through pii-detector + safety-filter redact:
  `whole.input.*`, `Chain.check_input` on a chat request (the bench's "hi", the PII text, or for `long` 4,000
  characters of clean prose); `whole.output.*`, `Chain.check_output_body` on a chat.completion answer of the
  200-character text (clean prose, or with PII).
- `prefilter.*`: the chain's output prefilter (`Prefilter.clean_prose`, one block scan of pii-detector +
  safety-filter's patterns) on 200 or 4,000 bytes of clean prose (per event: per KB).
- `accesslog.line`: the access log's line of a finished non-streamed request, in full batches written to /dev/null
  (per event: per line), the figure to set against a request's CPU for the log's share (issue 18: ≤ 3 %).
- `texts.*`: the output stream policy (pii-detector redact), one event pushed and released at a time, on answers
  of many texts: `texts.responses.N`, a Responses answer of N message items (4 events each: added, delta, text
  done, item done); `texts.tools.N`, a chat answer of N tool calls (a name and arguments each: 2N texts). The
  per-event figure should not grow with N (issue 18: costs that stay flat as the work grows).

Each case checks its output once before timing (event count, framed bytes parsing back, redacted text as
expected), so a broken case fails loudly instead of timing nothing. Unlike the rest of `bench`, this
module imports fastgw: it measures its functions, not a running gateway. No wall-clock thresholds: read
the numbers against a previous run on the same machine.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
import orjson

from bench.text import expected_redaction, make_text
from fastgw.proto.chunked import frame_chunk, write_chunk
from fastgw.api.sse import DONE
from fastgw.proto.sse import SSEDecoder, SSESplitter, encode_data

__all__ = ["CASES", "Bench", "Case", "Result", "chat_stream", "run", "run_case", "main"]

#: Events of the standard stream: role chunk, 50 content chunks, finish chunk, [DONE].
N_EVENTS = 53


@dataclass(frozen=True)
class Bench:
    """A prepared case: `op()` does one unit of work; `check(op())` raises when its result is wrong."""

    op: Callable[[], Any]
    check: Callable[[Any], None]
    #: Events one op handles (per-event µs = ns/op / events / 1000); 0 when "event" does not apply.
    events: int = 0


@dataclass(frozen=True)
class Case:
    """A named benchmark; `setup()` builds its inputs (outside the timing)."""

    name: str
    setup: Callable[[], Bench]


@dataclass
class Result:
    """One case's figures (best of the repeats)."""

    name: str
    ns_per_op: float
    ops_per_s: float
    us_per_event: float | None
    events: int
    loops: int
    repeats: int
    checked: bool


# ---------------------------------------------------------------------------------------------- inputs

_BASE = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk", "created": 1741569952,
         "model": "gpt-4o-2024-08-06", "service_tier": "default", "system_fingerprint": "fp_f9f4fb6dbf"}


def chat_stream(pieces: list[str]) -> list[bytes]:
    """The SSE events of an OpenAI chat stream whose content deltas are `pieces`, as OpenAI serializes them."""

    def ev(choice: dict) -> bytes:
        return encode_data(orjson.dumps({**_BASE, "choices": [choice]}))

    out = [ev({"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None,
               "finish_reason": None})]
    out += [ev({"index": 0, "delta": {"content": p}, "logprobs": None, "finish_reason": None}) for p in pieces]
    out.append(ev({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}))
    out.append(DONE)
    return out


def _cut(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


@functools.cache
def _prose() -> tuple[str, list[bytes]]:
    """(text, events): 200 characters of clean prose as 50 deltas of 4 characters (~1 token each)."""
    text, _ = make_text("prose", 200, seed=7)
    return text, chat_stream(_cut(text, 4))


@functools.cache
def _with_pii() -> tuple[str, list[tuple[int, str, str]], list[bytes]]:
    """(text, PII values in it, events): the same shape with one PII value per 100 characters."""
    text, values = make_text("pii", 200, every=100, seed=7)
    assert values, "bench.text put no PII value in the text"
    return text, values, chat_stream(_cut(text, 4))


def _pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def _content(events_data: list[str]) -> str:
    out = []
    for d in events_data:
        if d != "[DONE]":
            for ch in orjson.loads(d)["choices"]:
                out.append(ch["delta"].get("content") or "")
    return "".join(out)


def dechunk(data: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked transfer coding, which must be complete (last chunk included)."""
    out, pos = [], 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol], 16)
        if size == 0:
            assert data[eol:eol + 4] == b"\r\n\r\n", "bad last chunk"
            return b"".join(out)
        start = eol + 2
        out.append(data[start:start + size])
        assert data[start + size:start + size + 2] == b"\r\n", "chunk data not followed by CRLF"
        pos = start + size + 2


# ---------------------------------------------------------------------------------------------- SSE

_READS = {"whole": None, "event": 0, "64B": 64}


def _reads(events: list[bytes], how: str) -> list[bytes]:
    body = b"".join(events)
    size = _READS[how]
    return [body] if size is None else list(events) if size == 0 else _pieces(body, size)


def _sse_decode(how: str) -> Bench:
    _, events = _prose()
    reads = _reads(events, how)
    body = b"".join(events)

    def op() -> list:
        d = SSEDecoder()
        out: list = []
        for r in reads:
            out += d.feed(r)
        return out

    def check(out: list) -> None:
        assert len(out) == N_EVENTS, f"{len(out)} events decoded, expected {N_EVENTS}"
        assert out[-1].data == "[DONE]" and b"".join(e.raw for e in out) == body
        assert _content([e.data for e in out]) == _prose()[0]

    return Bench(op, check, N_EVENTS)


def _sse_split(how: str) -> Bench:
    _, events = _prose()
    reads = _reads(events, how)
    body = b"".join(events)

    def op() -> list[bytes]:
        s = SSESplitter()
        return [s.feed(r) for r in reads]

    def check(out: list[bytes]) -> None:
        assert b"".join(out) == body, "split output differs from the input"
        assert all(o.endswith(b"\n\n") for o in out if o), "a piece does not end on an event boundary"

    return Bench(op, check, N_EVENTS)


# ---------------------------------------------------------------------------------------------- chunked

def _write_chunk() -> Bench:
    _, events = _prose()

    def op() -> list[bytes]:
        parts: list[bytes] = []
        w = parts.extend  # a transport's writelines, recording: write_chunk passes one tuple per call
        for ev in events:
            write_chunk(w, ev)
        return parts

    def check(parts: list[bytes]) -> None:
        assert len(parts) == 3 * N_EVENTS
        assert dechunk(b"".join(parts) + b"0\r\n\r\n") == b"".join(events)

    return Bench(op, check, N_EVENTS)


def _frame_chunk() -> Bench:
    _, events = _prose()

    def op() -> list[bytes]:
        return [frame_chunk(ev) for ev in events]

    def check(out: list[bytes]) -> None:
        assert dechunk(b"".join(out) + b"0\r\n\r\n") == b"".join(events)

    return Bench(op, check, N_EVENTS)


# ---------------------------------------------------------------------------------------------- JSON

def _chunk_decoder() -> Callable[[str], Any]:
    """The typed decoder the output policy reads chunks with (private to fastgw.policy.stream)."""
    from fastgw.policy.stream import chat_view

    return chat_view.decode_chunk


def _json_datas() -> list[str]:
    _, events = _prose()
    return [e.data for e in SSEDecoder().feed(b"".join(events)) if e.data != "[DONE]"]


def _json_msgspec() -> Bench:
    datas = _json_datas()
    dec = _chunk_decoder()

    def op() -> list[str | None]:
        out = []
        for d in datas:
            for ch in dec(d).choices or ():
                out.append(ch.delta.content if ch.delta is not None else None)
        return out

    def check(out: list) -> None:
        assert "".join(c or "" for c in out) == _prose()[0]

    return Bench(op, check, len(datas))


def _json_orjson() -> Bench:
    datas = _json_datas()
    loads = orjson.loads

    def op() -> list[str | None]:
        out = []
        for d in datas:
            for ch in loads(d)["choices"]:
                out.append(ch["delta"].get("content"))
        return out

    def check(out: list) -> None:
        assert "".join(c or "" for c in out) == _prose()[0]

    return Bench(op, check, len(datas))


# ---------------------------------------------------------------------------------------------- scanning

@functools.cache
def _pii_policy(action: str = "redact") -> Any:
    from fastgw.config import PiiDetector
    from fastgw.policy.pii import PiiPolicy

    p = PiiPolicy(PiiDetector(action=action))
    p.allocate_scratch()  # what each worker does after fork
    return p


def _scan(kind: str) -> Bench:
    from fastgw.scan.scanner import StreamScanner

    db = _pii_policy().db
    if kind == "prose":
        pieces = [p.encode() for p in _cut(make_text("prose", 1000, seed=3)[0], 20)]
        expected = 0
    else:
        pieces = [f"mail a{i % 10}@example.com ".encode() for i in range(50)]
        expected = 50

    def op() -> list:
        sc = StreamScanner(db)
        spans = []
        for p in pieces:
            sc.feed(p)
            spans += sc.settle()[1]
        spans += sc.settle(final=True)[1]
        return spans

    def check(spans: list) -> None:
        assert len(spans) == expected, f"{len(spans)} spans, expected {expected}"
        assert all(s.entity == "EMAIL" for s in spans)

    return Bench(op, check, len(pieces))


# ---------------------------------------------------------------------------------------------- relay

class _Transport:
    """The client socket: records what the Responder writes."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def writelines(self, parts: Any) -> None:
        self.parts.extend(parts)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


class _Source:
    """The upstream: the benchmark drives the relay's sink methods itself."""

    __slots__ = ()

    def set_sink(self, sink: Any) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def detach(self) -> None:
        pass


@functools.cache
def _loop() -> Any:
    """The relay needs a loop for its `done` future only (no timer is armed); never run."""
    try:
        import uvloop

        return uvloop.new_event_loop()  # what the workers run
    except ImportError:  # pragma: no cover
        import asyncio

        return asyncio.new_event_loop()


@functools.cache
def _chain(policies: tuple[str, ...]) -> Any:
    from fastgw.config import SafetyFilter
    from fastgw.policy.chain import Chain
    from fastgw.policy.safety import SafetyPolicy

    built: dict[str, Any] = {}
    for name in policies:
        if name == "pii-detector":
            from fastgw.config import PiiDetector
            from fastgw.policy.pii import PiiPolicy

            built[name] = PiiPolicy(PiiDetector(action="redact"))
        else:
            terms = ["build a bomb", "make a weapon", "kill yourself", "credit card dump", "stolen passwords",
                     "how to hack", "buy drugs", "self harm", "hate speech", "untraceable gun"]
            built[name] = SafetyPolicy(SafetyFilter(action="redact", terms=terms))
    chain = Chain(list(policies), built)
    chain.allocate_scratch()
    return chain


def _relay(policies: tuple[str, ...], text_kind: str, feed: str = "sse") -> Bench:
    """feed: "sse", the upstream's SSE bytes (pass-through providers), one event per read; "read", the same
    bytes in one read; "chunks", the chunk objects a
    translated provider hands over (encoded once, at release); "encoded", those objects encoded to SSE
    by the translator and decoded again by the relay (how translated streams went before d4d3a76)."""
    import orjson

    from fastgw.policy.base import RequestContext
    from fastgw.proto.flow import FlowControl
    from fastgw.proto.writer import Responder
    from fastgw.policy_relay import PolicyRelay
    from fastgw.stream import SSERelay

    if text_kind == "prose":
        text, events = _prose()
        expected = text
    else:
        text, values, events = _with_pii()
        expected = expected_redaction(text, values)
    loop = _loop()
    chain = _chain(policies) if policies else None
    headers = [(b"content-type", b"text/event-stream")]
    # The chunks as JSON: each op builds its objects afresh (what a translator does, in both feeds alike).
    raw_objs = [ev[6:] for ev in events if not ev.startswith(b"data: [DONE]")]

    def op() -> bytes:
        t = _Transport()
        resp = Responder(t, FlowControl(loop), True, False)  # type: ignore[arg-type]
        ctx = RequestContext("req_bench", "POST", "/v1/chat/completions", [])
        ctx.endpoint = "chat/completions"
        # As fastgw.attempt builds it: the head goes out with the first event.
        if chain is None:
            relay = SSERelay(resp, _Source(), loop, (200, headers))
            relay.usage_sink = ctx
        else:
            relay = PolicyRelay(resp, _Source(), loop, (200, headers), chain.stream_policy(ctx))
        relay.start()
        if feed == "sse":
            for ev in events:  # one upstream read per event: the common case for a live model
                relay.on_data(ev)
                relay.flush()
        elif feed == "chunks":
            for raw in raw_objs:
                relay.on_chunks([orjson.loads(raw)])
                relay.flush()
        elif feed == "read":
            relay.on_data(b"".join(events))  # the whole answer in one read (a fast upstream)
            relay.flush()
        else:
            for raw in raw_objs:
                relay.on_data(b"data: " + orjson.dumps(orjson.loads(raw)) + b"\n\n")
                relay.flush()
        relay.on_end()
        end = relay.done.result()
        assert end.complete and end.tail is None
        return b"".join(t.parts)

    def check(out: bytes) -> None:
        head, _, chunked = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        body = dechunk(chunked)
        got = SSEDecoder().feed(body)
        assert len(got) == N_EVENTS, f"{len(got)} events relayed, expected {N_EVENTS}"
        assert _content([e.data for e in got]) == expected
        if text_kind == "prose":
            assert body == b"".join(events), "untouched events must leave byte-identical"
        else:
            assert all(v.encode() not in body for _, _, v in values), "a PII value reached the client"

    return Bench(op, check, N_EVENTS)


def _many_texts(kind: str, n: int) -> Bench:
    from fastgw.policy.base import RequestContext
    from fastgw.policy.findings import Findings
    from fastgw.policy.stream import open_stream
    from fastgw.proto.sse import encode_event

    if kind == "responses":
        objs: list[dict] = []
        for i in range(n):
            iid, seq = f"msg_{i}", 4 * i
            item = {"id": iid, "type": "message", "role": "assistant", "content": []}
            done = {**item, "content": [{"type": "output_text", "text": "hello ", "annotations": []}]}
            objs += [{"type": "response.output_item.added", "output_index": i, "item": item, "sequence_number": seq},
                     {"type": "response.output_text.delta", "item_id": iid, "output_index": i, "content_index": 0,
                      "delta": "hello ", "sequence_number": seq + 1},
                     {"type": "response.output_text.done", "item_id": iid, "output_index": i, "content_index": 0,
                      "text": "hello ", "sequence_number": seq + 2},
                     {"type": "response.output_item.done", "output_index": i, "item": done,
                      "sequence_number": seq + 3}]
        wire = b"".join(encode_event(orjson.dumps(o), event=o["type"]) for o in objs)
        endpoint = "responses"
    else:
        objs = [{**_BASE, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": "lookup",
                                                                               "arguments": '{"q": 1}'}}]}}]}
            for i in range(n)]
        objs.append({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        wire = b"".join(encode_data(orjson.dumps(o)) for o in objs) + DONE
        endpoint = "chat/completions"
    events = SSEDecoder().feed(wire)
    policies = [_pii_policy("redact")]

    def op() -> int:
        ctx = RequestContext("req_bench", "POST", "/v1/" + endpoint, [])
        ctx.endpoint = endpoint
        sp = open_stream(policies, Findings([]), ctx, dialect="responses" if kind == "responses" else "chat")
        out = 0
        for ev in events:
            sp.push(ev)
            out += len(sp.release())
        out += len(sp.finish())
        sp.close()
        return out

    def check(out: int) -> None:
        assert out == len(events), f"{out} events released of {len(events)}"

    return Bench(op, check, len(events))


def _prefilter(size: int) -> Bench:
    """The chain's output prefilter (pii-detector + safety-filter: `Prefilter.clean_prose`, one block scan) on
    `size` bytes of clean prose. One op: one scan (per event: per KB)."""
    chain = _chain(("pii-detector", "safety-filter"))
    data = make_text("prose", size, seed=7)[0].encode()[:size]
    flt = chain._output_filter

    def op() -> bool:
        return flt.clean_prose(data)

    def check(out: bool) -> None:
        assert out is True and len(data) == size, "clean prose must be vouched for"

    return Bench(op, check, max(1, size // 1000))


def _whole(policies: tuple[str, ...], where: str, text_kind: str) -> Bench:
    """The whole-text path of a non-streamed request: `Chain.check_input` on a chat request (the bench's
    one-message request for "prose", the PII text as its message for "pii"), or `Chain.check_output_body` on a
    chat.completion answer whose content is the 200-character text. One op: a fresh request context and body."""
    import orjson

    from fastgw.policy.base import RequestContext

    chain = _chain(policies)
    values: list[tuple[int, str, str]] = []
    if text_kind in ("prose", "long"):
        text, _ = _prose()
    else:
        text, values, _ = _with_pii()
    ask = {"prose": "hi", "long": make_text("prose", 4000, seed=7)[0]}.get(text_kind, text)
    request = orjson.dumps({"model": "bench-model", "stream": False, "messages": [{"role": "user", "content": ask}]})
    answer = orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1741569952,
                           "model": "bench-model", "system_fingerprint": "fp_bench",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                                        "logprobs": None, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 50, "total_tokens": 55}})

    def ctx() -> RequestContext:
        c = RequestContext("bench", "POST", "/v1/chat/completions", [])
        c.endpoint, c.model = "chat/completions", "bench-model"
        return c

    if where == "input":
        def op() -> Any:
            body = orjson.loads(request)
            chain.check_input(ctx(), body)
            return body
    else:
        def op() -> Any:
            return orjson.loads(chain.check_output_body(ctx(), answer))

    def check(out: Any) -> None:
        got = out["messages"][0]["content"] if where == "input" else out["choices"][0]["message"]["content"]
        want = (ask if where == "input" else text) if not values else expected_redaction(ask if where == "input"
                                                                                          else text, values)
        assert got == want, f"{got!r} != {want!r}"

    return Bench(op, check)


def _access_line() -> Bench:
    """`accesslog.log_request` of a finished non-streamed chat request, a full batch of lines (ACCESS_LOG_BATCH_LINES,
    as a busy worker fills it), the batch written to /dev/null through a text stream's binary buffer (stdout's way).
    One op: the batch's timer set (as its first line sets it), its lines, their write. Per event: per line."""
    import asyncio
    import os

    from fastgw import accesslog
    from fastgw.api.limits import ACCESS_LOG_BATCH_LINES
    from fastgw.policy.base import RequestContext

    route = "/v1/chat/completions"
    accesslog.configure("info", "json", open(os.devnull, "w"))  # noqa: SIM115 - the log's stream for the run
    accesslog.set_redactor(None, [route, "bench-model"])
    loop = asyncio.new_event_loop()
    ctxs = []
    for i in range(ACCESS_LOG_BATCH_LINES):
        c = RequestContext(f"req_{i:024x}", "POST", route, [], "127.0.0.1")
        c.model, c.target, c.status, c.stream = "bench-model", "mock", 200, False
        c.usage = {"prompt_tokens": 5, "completion_tokens": 50, "total_tokens": 55}
        c.first_byte = c.started + 0.0004
        ctxs.append(c)

    def op() -> int:
        accesslog._st.timer = loop.call_later(3600, accesslog.flush)
        for c in ctxs:
            accesslog.log_request(c, route, 812)
        return len(accesslog._pending)

    def check(waiting: int) -> None:
        assert waiting == 0 and accesslog._st.timer is None, "the full batch was not written"
        line = accesslog._c_line(ctxs[0], route, 812, None, None) if accesslog._c is not None else None
        assert line is not None or accesslog._c is None, "the C line refused the common request"

    return Bench(op, check, ACCESS_LOG_BATCH_LINES)


# ---------------------------------------------------------------------------------------------- registry

CASES: list[Case] = [
    *[Case(f"sse.decode.{how}", functools.partial(_sse_decode, how)) for how in _READS],
    *[Case(f"sse.split.{how}", functools.partial(_sse_split, how)) for how in _READS],
    Case("chunked.write_chunk", _write_chunk),
    Case("chunked.frame_chunk", _frame_chunk),
    Case("json.msgspec_typed", _json_msgspec),
    Case("json.orjson_full", _json_orjson),
    Case("scan.pii.prose20", functools.partial(_scan, "prose")),
    Case("scan.pii.email20", functools.partial(_scan, "email")),
    Case("relay.none", functools.partial(_relay, (), "prose")),
    Case("relay.pii.prose", functools.partial(_relay, ("pii-detector",), "prose")),
    Case("relay.pii+safety.prose", functools.partial(_relay, ("pii-detector", "safety-filter"), "prose")),
    Case("relay.pii+safety.pii", functools.partial(_relay, ("pii-detector", "safety-filter"), "pii")),
    *[Case(f"relay.{feed}.{name}", functools.partial(_relay, pols, kind, feed))
      for feed in ("encoded", "chunks", "read")
      for name, pols, kind in (("none", (), "prose"), ("pii+safety.pii", ("pii-detector", "safety-filter"), "pii"))],
    *[Case(f"texts.{kind}.{n}", functools.partial(_many_texts, kind, n))
      for kind in ("responses", "tools") for n in (100, 2000)],
    *[Case(f"prefilter.pii+safety.prose{n}", functools.partial(_prefilter, n)) for n in (200, 4000)],
    *[Case(f"whole.{where}.pii+safety.{kind}",
           functools.partial(_whole, ("pii-detector", "safety-filter"), where, kind))
      for where in ("input", "output") for kind in ("prose", "pii", "long") if (where, kind) != ("output", "long")],
    Case("accesslog.line", _access_line),
]


def run_case(case: Case, quick: bool = False, min_time: float = 0.2, repeats: int = 5) -> Result:
    """Set up, check once, then time `case`: loops calibrated to `min_time` s per repeat, best repeat kept.

    quick: 3 loops, 1 repeat (a smoke run; the numbers are noise).
    """
    b = case.setup()
    b.check(b.op())  # raises: a broken case must not be timed
    timer = timeit.Timer(b.op)  # timeit switches the garbage collector off while timing, as usual
    if quick:
        loops, repeats = 3, 1
    else:
        loops, _ = timer.autorange()
        loops = max(1, int(loops * min_time / 0.2))  # autorange aims at >= 0.2 s
    best = min(timer.repeat(repeat=repeats, number=loops)) / loops
    ns = best * 1e9
    return Result(case.name, ns, 1e9 / ns if ns > 0 else float("inf"),
                  ns / b.events / 1000 if b.events else None, b.events, loops, repeats, True)


def run(filter: str | None = None, quick: bool = False, out: Callable[[str], None] | None = print) -> list[Result]:
    """Run the cases whose name contains `filter` (all when None), printing a row per case to `out`."""
    results = []
    if out:
        out(f"{'case':<24} {'ns/op':>12} {'ops/s':>12} {'us/event':>9} {'events':>6} {'loops':>7}")
    for case in CASES:
        if filter and filter not in case.name:
            continue
        r = run_case(case, quick=quick)
        gc.collect()  # the next case starts without this one's garbage
        results.append(r)
        if out:
            per = f"{r.us_per_event:9.3f}" if r.us_per_event is not None else f"{'-':>9}"
            out(f"{r.name:<24} {r.ns_per_op:12,.0f} {r.ops_per_s:12,.0f} {per} {r.events:6d} {r.loops:7d}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="a few iterations per case (smoke run)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--filter", metavar="NAME", help="only cases whose name contains NAME")
    args = ap.parse_args(argv)
    print(f"# python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}{' (quick: numbers are noise)' if args.quick else ''}")
    results = run(args.filter, args.quick)
    if not results:
        print(f"no case matches {args.filter!r}; cases: {', '.join(c.name for c in CASES)}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "machine": platform.machine(), "quick": args.quick,
                       "results": [asdict(r) for r in results]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
