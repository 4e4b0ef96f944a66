"""A zero-delay, very cheap OpenAI-compatible mock upstream for `python -m bench run`.

Why not fastgw's own mock provider: it builds every answer per request (~1.2 ms of CPU per streamed
request), which on a 2-core box competes with the system under test. This one is a raw
`asyncio.Protocol` on uvloop with the httptools request parser, and every answer is rendered once at
start-up: a streamed answer costs one `transport.write` of pre-built bytes.

POST /v1/chat/completions answers, by the request body:
  * `"stream": true` — `text/event-stream`, chunked: a role chunk, `--events` content chunks of
    `--chunk-size` characters, a finish chunk and `data: [DONE]`; each SSE event is its own HTTP chunk;
  * otherwise — one `chat.completion` JSON object with Content-Length;
  * `"stream_options": {"include_usage": true}` (streamed) — as OpenAI answers it: every chunk carries
    `"usage": null` and a last chunk before `[DONE]` has `"choices": []` and the usage (fastgw asks for it on
    every stream, so its streams carry what a real provider's would; a client that did not ask gets neither);
  * model `--paced-model` (streamed): the same events, one every `--delay` seconds on an absolute
    schedule (event i at t_request + i × delay, so the pacing does not drift) — the baseline for
    inter-event gaps;
  * model `--probe-model`: the answer text is `--probe-text` (one email address), to check that a
    redacting system under test really redacts;
  * model `bench-peer` (PEER_MODEL): the same answers as `bench-model`, written in smaller pieces, like
    the peer harness's upstream (the "peer" upstream profile of `bench run`): a streamed answer in
    writes of about `--peer-write` bytes of whole events, each in its own loop iteration (one TCP
    segment each, and for a fast proxy one read each), a non-streamed answer's head and body in two
    writes. The default answers are one write each, so a proxy reads a whole 53-event stream in one
    or two reads: nginx costs ~0.021 ms of CPU per streamed request behind them against 0.030 ms
    behind the peer harness, which moves every ratio to nginx; the peer profile reproduces that.
GET /readyz answers 200 (readiness for the harness, also through a proxy). Keep-alive throughout.

`--times FILE`: the upstream notes, for every answer written at once (not paced, not peer), when the read that
completed its request arrived and when the answer's write began (`time.monotonic()`, system-wide; not when it
returned: the write wakes the reader, which may run first), and writes them to FILE when it stops:
`bench.ttft_split` lines them up with the client's own times.

Run `python -m bench.upstream --port 9000` (`--processes N`: N serving processes on SO_REUSEPORT sockets). Nothing is imported from fastgw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

import httptools
import uvloop

from bench.stream import MODEL, PROBE_MODEL, PROBE_TEXT
from bench.text import make_text

__all__ = ["PACED_MODEL", "PEER_MODEL", "PEER_WRITE", "Answers", "render", "serve", "main"]

PACED_MODEL = "bench-paced"
#: The model whose answers come as the peer harness wrote them (see the module docstring).
PEER_MODEL = "bench-peer"
#: Bytes per write of a PEER_MODEL stream: ~11 events of the default answer, 5 writes per stream. Chosen by
#: measurement (bench/RESULTS.md, issue 18): nginx then costs ~1.4× its CPU per streamed request behind the one-write
#: answers, as behind the peer harness (0.030 vs 0.021 ms); one event per write cost it 4.7×.
PEER_WRITE = 2048
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
#: (read arrived, write began) per answer written at once, while `--times` is on (None: off, one check a read).
_TIMES: list[float] | None = None


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_events(model: str, text: str, chunk_size: int, events: int | None = None, usage: bool = False) -> list[bytes]:
    """The SSE events of a streamed chat answer: role, content chunks, finish, [DONE]; with `usage`, as for
    `include_usage`: `"usage": null` on each chunk and the usage chunk before [DONE]."""
    n = events if events is not None else -(-len(text) // chunk_size)
    if events is not None and n * chunk_size > len(text):  # repeat to fill the requested chunk count
        text = text * (n * chunk_size // max(len(text), 1) + 1)
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_bench"}

    def ev(delta: dict, finish: str | None = None) -> bytes:
        obj = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage:
            obj["usage"] = None
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    out = [ev({"role": "assistant", "content": ""})]
    out += [ev({"content": text[i * chunk_size:(i + 1) * chunk_size]}) for i in range(n)]
    out.append(ev({}, "stop"))
    if usage:
        counts = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        out.append(b"data: " + json.dumps({**base, "choices": [], "usage": counts}, separators=(",", ":")).encode()
                   + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def completion_json(model: str, content: str, completion_tokens: int) -> bytes:
    """A non-streamed chat.completion body."""
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens,
                  "total_tokens": 5 + completion_tokens}}, separators=(",", ":")).encode()


_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")


def _json_response(body: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body))


@dataclass
class Answers:
    """Every response the upstream can give, as bytes ready to write."""

    stream: bytes            # whole streamed response (head + every chunk + terminator)
    nonstream: bytes
    probe_stream: bytes
    probe_nonstream: bytes
    paced_parts: list[bytes]  # head + first event chunk, then one chunk per event, the last with the terminator
    peer_parts: list[bytes]   # the same for PEER_MODEL, written back to back, one per loop iteration
    peer_nonstream: list[bytes]  # head, body
    #: The same answers for a request with `include_usage` (streams with the usage chunk); None on that set.
    with_usage: Answers | None = None
    ready: bytes = _json_response(b'{"status":"ready"}')
    not_found: bytes = _json_response(b'{"error":{"message":"not found"}}', b"404 Not Found")


def _streams(text: str, chunk_size: int, events: int, peer_write: int, usage: bool) -> dict[str, Any]:
    """The streamed answers of `Answers` (with `usage`: for `include_usage`)."""
    evs = sse_events(MODEL, text, chunk_size, events, usage)
    pevs = sse_events(PROBE_MODEL, PROBE_TEXT, chunk_size, usage=usage)
    paced = [_chunk(e) for e in sse_events(PACED_MODEL, text, chunk_size, events, usage)]
    paced[0] = _SSE_HEAD + paced[0]
    paced[-1] += b"0\r\n\r\n"
    peer: list[bytes] = [_SSE_HEAD]
    for e in sse_events(PEER_MODEL, text, chunk_size, events, usage):  # whole events, about peer_write bytes a write
        if len(peer[-1]) >= peer_write:
            peer.append(b"")
        peer[-1] += _chunk(e)
    peer[-1] += b"0\r\n\r\n"
    return {"stream": _SSE_HEAD + b"".join(_chunk(e) for e in evs) + b"0\r\n\r\n",
            "probe_stream": _SSE_HEAD + b"".join(_chunk(e) for e in pevs) + b"0\r\n\r\n",
            "paced_parts": paced, "peer_parts": peer}


def render(events: int = 50, chunk_size: int = 4, text: str | None = None, peer_write: int = PEER_WRITE) -> Answers:
    """Pre-render all answers. `text`: the content (default: generated prose, no PII, seed 1); `peer_write`: the
    bytes of a PEER_MODEL stream per write (whole events, so each write is at least this much). The streams asked
    for `include_usage` are `with_usage` (the same answers otherwise)."""
    if text is None:
        text, _ = make_text("prose", events * chunk_size)
    evs = sse_events(MODEL, text, chunk_size, events)
    content = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in evs[:-1])
    probe_chunks = len(sse_events(PROBE_MODEL, PROBE_TEXT, chunk_size)) - 3  # less role, finish and [DONE]
    whole = _json_response(completion_json(PEER_MODEL, content, events))
    split = whole.index(b"\r\n\r\n") + 4
    answers = Answers(
        nonstream=_json_response(completion_json(MODEL, content, events)),
        probe_nonstream=_json_response(completion_json(PROBE_MODEL, PROBE_TEXT, probe_chunks)),
        peer_nonstream=[whole[:split], whole[split:]], **_streams(text, chunk_size, events, peer_write, False))
    answers.with_usage = replace(answers, **_streams(text, chunk_size, events, peer_write, True))
    return answers


class _Conn(asyncio.Protocol):
    """One keep-alive connection. Requests are answered in order; a paced answer holds the next ones."""

    __slots__ = ("a", "delay", "loop", "tr", "parser", "body", "url", "busy", "queue", "closing", "t_read")

    def __init__(self, answers: Answers, delay: float, loop: asyncio.AbstractEventLoop) -> None:
        self.a, self.delay, self.loop = answers, delay, loop
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.busy = False        # a paced answer is being written
        self.queue: list[tuple[bytes, bytes, bool]] = []
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if _TIMES is not None:
            self.t_read = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.tr.write(_json_response(b'{"error":{"message":"bad request"}}', b"400 Bad Request"))
            self.tr.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        item = (self.parser.get_method(), b"".join(self.body), self.parser.should_keep_alive())
        if self.busy:
            self.queue.append(item)  # pipelined behind a paced answer (closed-loop clients never do this)
        else:
            self._answer(*item)

    def _answer(self, method: bytes, body: bytes, keep_alive: bool) -> None:
        a, url = self.a, self.url
        if method == b"POST" and url.startswith(b"/v1/chat/completions"):
            stream = _STREAM_TRUE.search(body) is not None
            if stream and a.with_usage is not None and _INCLUDE_USAGE.search(body) is not None:
                a = a.with_usage
            if stream and self.delay > 0 and PACED_MODEL.encode() in body:
                self.busy = True
                t0 = self.loop.time()
                self.tr.write(a.paced_parts[0])
                # One timer per stream at a time (the next is set when one fires), still on the absolute
                # schedule: thousands of open streams do not fill the loop's timer heap with every event upfront.
                self.loop.call_at(t0 + self.delay, self._paced, 1, keep_alive, t0, a.paced_parts)
                return
            if PEER_MODEL.encode() in body:
                if stream:
                    self.busy = True
                    self._peer(0, keep_alive, a.peer_parts)
                    return
                for part in a.peer_nonstream:
                    self.tr.write(part)
                if not keep_alive:
                    self.tr.close()
                return
            probe = PROBE_MODEL.encode() in body
            out = (a.probe_stream if probe else a.stream) if stream else (a.probe_nonstream if probe else a.nonstream)
        elif method == b"GET" and url.startswith(b"/readyz"):
            out = a.ready
        else:
            out = a.not_found
        if _TIMES is not None and method == b"POST":
            _TIMES.extend((self.t_read, time.monotonic()))
        self.tr.write(out)
        if not keep_alive:
            self.tr.close()

    def _paced(self, i: int, keep_alive: bool, t0: float, parts: list[bytes]) -> None:
        if self.tr.is_closing():
            return
        self.tr.write(parts[i])
        if i < len(parts) - 1:
            self.loop.call_at(t0 + (i + 1) * self.delay, self._paced, i + 1, keep_alive, t0, parts)
        else:
            self.busy = False
            if not keep_alive:
                self.tr.close()
            elif self.queue:
                self._answer(*self.queue.pop(0))

    def _peer(self, i: int, keep_alive: bool, parts: list[bytes]) -> None:
        """Event i of a PEER_MODEL stream now, the next one in the next loop iteration."""
        if self.tr.is_closing():
            return
        self.tr.write(parts[i])
        if i + 1 < len(parts):
            self.loop.call_soon(self._peer, i + 1, keep_alive, parts)
            return
        self.busy = False
        if not keep_alive:
            self.tr.close()
        elif self.queue:
            self._answer(*self.queue.pop(0))

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.clear()


async def serve(host: str, port: int, answers: Answers, delay: float, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(answers, delay, loop), host, port, backlog=4096,
                                      reuse_address=True, reuse_port=reuse_port or None)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--events", type=int, default=50, help="content chunks per streamed answer (default 50)")
    p.add_argument("--chunk-size", type=int, default=4, help="characters per content chunk (default 4)")
    p.add_argument("--delay", type=float, default=0.005,
                   help=f"seconds between events of a streamed answer to model {PACED_MODEL} (default 0.005; "
                        "every other answer is written at once)")
    p.add_argument("--processes", type=int, default=1,
                   help="serving processes, each with its own SO_REUSEPORT socket on the port (default 1): one "
                        "process is the bottleneck in front of many gateway workers")
    p.add_argument("--times", help="note each immediate answer's read and write times, written to this file at exit")
    p.add_argument("--peer-write", type=int, default=PEER_WRITE,
                   help=f"bytes per write of a streamed answer to model {PEER_MODEL} (default {PEER_WRITE})")
    args = p.parse_args(argv)
    answers = render(args.events, args.chunk_size, peer_write=args.peer_write)
    if args.processes <= 1:
        global _TIMES
        if args.times:
            _TIMES = []
        uvloop.run(serve(args.host, args.port, answers, args.delay))
        if _TIMES is not None:
            with open(args.times, "w") as f:
                f.write(" ".join(repr(t) for t in _TIMES))
        return 0
    if args.times:
        p.error("--times needs one serving process")
    kids = []
    for _ in range(args.processes):  # forked after rendering: the answers are built once
        pid = os.fork()
        if pid == 0:
            try:
                uvloop.run(serve(args.host, args.port, answers, args.delay, reuse_port=True))
            finally:
                os._exit(0)
        kids.append(pid)

    def _stop(signum: int, frame: object) -> None:
        for k in kids:
            try:
                os.kill(k, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for k in kids:
        try:
            os.waitpid(k, 0)  # PEP 475: retried after the signal handler ran
        except ChildProcessError:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
