"""A fault-injecting OpenAI-compatible upstream for the soak test (`python -m bench.soak`).

It listens on two ports in one process: the *primary* port, where faults are injected, and the
*fallback* port, which always answers (a gateway's second target). POST /v1/chat/completions answers
by markers in the request (any message's content):

  content (honoured on both ports)
    (none)               a normal answer: `[served-by:ROLE] w0 w1 ... w23 ` in 24 content chunks
    [[content:slow]]     15 chunks, 0.15 s apart (a non-streamed answer waits the same 2.25 s)
    [[content:big]]      400 chunks of ~300 characters (~250 KB streamed: slow readers make the gateway pause)
    [[content:pii]]      the answer carries jane.doe@example.com, split across two chunks
    [[content:blocked]]  the answer carries the phrase "forbidden fruit" in its 10th chunk

  faults (primary port only; the fallback port ignores them)
    [[fault:http500]]      HTTP 500 with an error envelope (code injected_500)
    [[fault:http429]]      HTTP 429, Retry-After: 0, error envelope (code injected_429)
    [[fault:reset_head]]   TCP reset after reading the request, before any byte of the answer
    [[fault:stall_head]]   never answers (until the peer closes): the gateway's TTFT limit must fire
    [[fault:garbage_head]] answers bytes that are not HTTP, then closes
    [[fault:reset_mid]]    6 content events (or part of a non-streamed body), then a TCP reset
    [[fault:stall_mid]]    6 content events (or part of the body), then silence: the idle limit must fire
    [[fault:garbage_mid]]  6 content events, then a chunk-size line that is not hex
    [[fault:garbage_sse]]  6 content events, an SSE event whose data is not JSON, then the rest normally
                           (non-streamed: a 200 whose body is not JSON)

Every answer starts with `[served-by:primary]` or `[served-by:fallback]`, and with `[saw-email]` when the
request still carried an e-mail address (the gateway's input redaction should have removed it).
A streamed answer honours `stream_options.include_usage` (a `"choices":[]` usage chunk before [DONE]).

GET /readyz answers 200; GET /stats answers JSON counters: connections open now (per port, this one
excluded), requests in progress ("busy": a stall that the gateway never gave up on stays here), and
requests served by kind. Connections are keep-alive. Nothing is imported from fastgw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import struct
import time
from collections import Counter

__all__ = ["CONTENT_KINDS", "FAULTS", "HEAD_FAULTS", "MID_FAULTS", "expected_text", "main"]

FAULTS = ("http500", "http429", "reset_head", "stall_head", "garbage_head", "reset_mid", "stall_mid",
          "garbage_mid", "garbage_sse")
HEAD_FAULTS = ("http500", "http429", "reset_head", "stall_head", "garbage_head")
MID_FAULTS = ("reset_mid", "stall_mid", "garbage_mid", "garbage_sse")
CONTENT_KINDS = ("normal", "slow", "big", "pii", "blocked")

#: Content events sent before a mid-stream fault.
MID_FAULT_AFTER = 6
SLOW_DELAY = 0.15
PII_EMAIL = "jane.doe@example.com"
BLOCKED_TERM = "forbidden fruit"

_FAULT_RE = re.compile(r"\[\[fault:([a-z0-9_]+)\]\]")
_CONTENT_RE = re.compile(r"\[\[content:([a-z]+)\]\]")
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def content_chunks(kind: str) -> list[str]:
    """The content deltas of an answer of this kind (without the served-by prefix chunk)."""
    if kind == "slow":
        return [f"w{i} " for i in range(15)]
    if kind == "big":
        return [f"w{i}:" + "x" * 300 + " " for i in range(400)]
    words = [f"w{i} " for i in range(24)]
    if kind == "pii":
        words[8] = "write to jane.doe@"  # the address spans two events: the gateway must hold it back
        words[9] = "example.com today "
    elif kind == "blocked":
        words[10] = "the forbidden fruit "
    return words


def expected_text(kind: str, role: str, saw_email: bool = False) -> str:
    """The whole answer text for `kind` as served by `role` (before any gateway policy)."""
    return f"[served-by:{role}] " + ("[saw-email] " if saw_email else "") + "".join(content_chunks(kind))


class Stats:
    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self.busy: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        #: requests in progress by role:fault-or-content:stream|json
        self.busy_kinds: Counter[str] = Counter()

    def as_dict(self) -> dict:
        return {"open": dict(self.open), "busy": dict(self.busy), "busy_total": sum(self.busy.values()),
                "busy_kinds": {k: v for k, v in self.busy_kinds.items() if v},
                "open_total": sum(self.open.values()), "requests": dict(self.requests)}


STATS = Stats()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _envelope(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def _plain(status: str, body: bytes, ctype: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%sconnection: keep-alive\r\n\r\n%s"
            % (status.encode(), ctype, len(body), extra, body))


_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
             b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n")


class Answer:
    """The pieces of one answer: prefix chunk, content chunks, event encoder."""

    def __init__(self, model: str, role: str, kind: str, saw_email: bool) -> None:
        self.model = model
        self.id = "chatcmpl-soak%x" % (time.monotonic_ns() & 0xFFFFFFFF)
        self.created = int(time.time())
        prefix = f"[served-by:{role}] " + ("[saw-email] " if saw_email else "")
        self.chunks = [prefix] + content_chunks(kind)

    def event(self, delta: dict, finish: str | None = None) -> bytes:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def usage_event(self) -> bytes:
        n = len(self.chunks)
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}}
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def json_body(self) -> bytes:
        n = len(self.chunks)
        return json.dumps({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(self.chunks)},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}},
            separators=(",", ":")).encode()


def _texts(body: dict) -> str:
    out = []
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            c = m.get("content")
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):
                out += [p.get("text", "") for p in c if isinstance(p, dict)]
    return "\n".join(out)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


async def _wait_peer_close(reader: asyncio.StreamReader) -> None:
    """Stall: say nothing until the peer gives up (EOF or reset)."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str, body: dict) -> bool:
    """Answer one chat request; False when the connection must not be reused."""
    text = _texts(body)
    m = _FAULT_RE.search(text)
    fault = m.group(1) if m and role == "primary" else None
    m = _CONTENT_RE.search(text)
    kind = m.group(1) if m and m.group(1) in CONTENT_KINDS else "normal"
    stream = body.get("stream") is True
    so = body.get("stream_options")
    usage = stream and isinstance(so, dict) and so.get("include_usage") is True
    saw_email = bool(_EMAIL_RE.search(text))
    ans = Answer(str(body.get("model", "?")), role, kind, saw_email)
    what = f"{role}:{fault or kind}:{'stream' if stream else 'json'}"
    STATS.requests[what] += 1
    STATS.busy_kinds[what] += 1
    try:
        return await _respond(reader, writer, role, fault, kind, stream, usage, ans)
    finally:
        STATS.busy_kinds[what] -= 1


async def _respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str, fault: str | None,
                   kind: str, stream: bool, usage: bool, ans: Answer) -> bool:

    if fault == "http500":
        writer.write(_plain("500 Internal Server Error", _envelope("injected fault http500", "server_error",
                                                                   "injected_500")))
        await writer.drain()
        return True
    if fault == "http429":
        writer.write(_plain("429 Too Many Requests", _envelope("injected fault http429", "rate_limit_error",
                                                               "injected_429"), extra=b"retry-after: 0\r\n"))
        await writer.drain()
        return True
    if fault == "reset_head":
        _reset(writer)
        return False
    if fault == "stall_head":
        await _wait_peer_close(reader)
        return False
    if fault == "garbage_head":
        writer.write(b"\x16\x03\x01 this is not HTTP at all \xff\xfe\r\n\r\n")
        await writer.drain()
        writer.close()
        return False

    if not stream:
        data = ans.json_body()
        if kind == "slow":
            await asyncio.sleep(SLOW_DELAY * len(ans.chunks))
        if fault in ("reset_mid", "stall_mid"):
            writer.write(_plain("200 OK", data)[:-len(data) // 2])  # the head and half the body
            await writer.drain()
            if fault == "reset_mid":
                await asyncio.sleep(0.02)
                _reset(writer)
            else:
                await _wait_peer_close(reader)
            return False
        if fault == "garbage_mid":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                         + _chunk(data[:40]) + b"zz-not-hex\r\n" + data[40:])
            await writer.drain()
            writer.close()
            return False
        if fault == "garbage_sse":
            garbage = b"{not json at all"
            writer.write(_plain("200 OK", garbage))
            await writer.drain()
            return True
        writer.write(_plain("200 OK", data))
        await writer.drain()
        return True

    writer.write(_SSE_HEAD + _chunk(ans.event({"role": "assistant", "content": ""})))
    delay = SLOW_DELAY if kind == "slow" else 0.0
    pending: list[bytes] = []
    for i, c in enumerate(ans.chunks):
        if fault in MID_FAULTS and i == MID_FAULT_AFTER:
            writer.write(b"".join(pending))
            await writer.drain()
            await asyncio.sleep(0.05)  # let the events reach the client before the fault
            if fault == "reset_mid":
                _reset(writer)
                return False
            if fault == "stall_mid":
                await _wait_peer_close(reader)
                return False
            if fault == "garbage_mid":
                writer.write(b"zz-not-hex\r\n" + b"data: {}\n\n\r\n")
                await writer.drain()
                writer.close()
                return False
            pending = [_chunk(b"data: {not json at all\n\n")]  # garbage_sse, then go on normally
        pending.append(_chunk(ans.event({"content": c})))
        if delay or fault in MID_FAULTS or len(pending) >= 16:
            writer.write(b"".join(pending))
            pending = []
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)
            elif fault in MID_FAULTS and i < MID_FAULT_AFTER:
                await asyncio.sleep(0.01)
    pending.append(_chunk(ans.event({}, "stop")))
    if usage:
        pending.append(_chunk(ans.usage_event()))
    pending.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    writer.write(b"".join(pending))
    await writer.drain()
    return True


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    STATS.open[role] += 1
    counted = True
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            raw = await reader.readexactly(length) if length else b""
            if method == "GET" and path == "/stats":
                if counted:
                    STATS.open[role] -= 1  # the stats connection does not count itself
                    counted = False
                writer.write(_plain("200 OK", json.dumps(STATS.as_dict()).encode()))
                await writer.drain()
                continue
            if method == "GET" and path in ("/readyz", "/healthz"):
                writer.write(_plain("200 OK", b'{"status":"ready"}'))
                await writer.drain()
                continue
            if method != "POST" or not path.endswith("/chat/completions"):
                writer.write(_plain("404 Not Found", _envelope(f"no route {method} {path}", "invalid_request_error",
                                                               "unknown_url")))
                await writer.drain()
                continue
            try:
                body = json.loads(raw)
            except ValueError:
                writer.write(_plain("400 Bad Request", _envelope("bad json", "invalid_request_error", "bad_json")))
                await writer.drain()
                continue
            STATS.busy[role] += 1
            try:
                keep = await _answer(reader, writer, role, body if isinstance(body, dict) else {})
            finally:
                STATS.busy[role] -= 1
            if not keep:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError, ValueError):
        pass
    finally:
        if counted:
            STATS.open[role] -= 1
        if not writer.transport.is_closing():
            writer.close()


async def serve(port: int, fallback_port: int) -> None:
    servers = [
        await asyncio.start_server(lambda r, w: _handle(r, w, "primary"), "127.0.0.1", port, backlog=1024,
                                   limit=1 << 20),
        await asyncio.start_server(lambda r, w: _handle(r, w, "fallback"), "127.0.0.1", fallback_port,
                                   backlog=1024, limit=1 << 20),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"faulty upstream: primary :{port}, fallback :{fallback_port}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the primary port (faults injected)")
    p.add_argument("--fallback-port", type=int, required=True, help="the fallback port (never faulty)")
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.port, args.fallback_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
