"""Hostile upstreams through the real gateway process: broken chunk framing, chunk sizes that lie, oversized SSE
lines and events, invalid UTF-8, JSON that is no chat chunk, 1-byte TCP segments, answers that never end, resets.

Each scenario is run through two gateways (one worker each), both on the same hostile upstream
(`hostile_upstream.py`):

- `plain`: no policy, the pass-through relay (bytes forwarded as they are, cut on event boundaries);
- `pii`: the pii-detector redact chain, the decoding relay (each event parsed, scanned, re-encoded if changed).

For each, the test asserts the exact bytes the client gets, and then that

- the answer failed the way a client can handle: an HTTP error envelope when nothing was sent yet, otherwise the
  events completed before the failure (never part of one), the OpenAI error envelope event and `data: [DONE]`;
- the upstream connection that carried a broken answer was discarded: the gateway closed it, no later request
  arrived on it, and the next request opened a new connection (while after a clean answer the next request
  reuses the pooled one: the check can tell the two apart);
- the worker survived (same pid, no restart), serves a normal request, and never logged a traceback.

Decisions the assertions encode (what is right when the upstream is wrong):

- Bytes the HTTP parser accepted as body before a framing error are still relayed, so whole events that arrived
  before the error reach the client, whether or not they came in the same read as the error.
- Bytes after the end of a whole response (a body longer than its content-length, a second response in the same
  read, garbage after the last chunk): the response stands as its framing says, and the connection is discarded.
- Invalid UTF-8 (and a multi-byte character split across two events): the pass-through path forwards the bytes
  unchanged. The decoding path decodes with replacement only to scan; an event no policy changed leaves as its
  original bytes, so it too forwards them unchanged. An event a policy rewrites is re-encoded from the decoded
  text: its invalid bytes become U+FFFD (valid UTF-8 JSON), never a crash.
- Events that are no chat chunk: pass-through forwards everything. The decoding path forwards data that is not
  a JSON object (`42`, `[1,2]`, `"str"`, plain text: no chat text a policy could scan, the same rule as for
  non-streamed bodies) and objects without choices; an object it cannot read as a chunk (choices not a list,
  a choice that is not an object, non-string content, broken JSON, a lone UTF-16 surrogate) cannot be vouched
  for, so the stream ends there with `upstream_protocol_error`.
- An SSE event over `max_event_bytes` (1 MiB, not configurable): held bytes over the limit end the stream on
  both paths. An event that completes in the read that takes it over the limit (its held part stayed under)
  still passes on the pass-through path (memory bounded by the limit plus one read, as `SSESplitter`
  documents), while the decoding path refuses it.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h11
import orjson
import pytest

from fastgw.api.limits import MAX_STREAM_TEXTS
from fastgw.proto.limits import MAX_SSE_EVENT_BYTES
from tests.conftest import GatewayFactory
from tests.hostile.hostile_upstream import Bytewise, Close, Drip, Flood, Hang, HostileUpstream, Pause, Reset, Send
from tests.support.procs import Gateway, gateway_config

# ---- upstream bytes ----------------------------------------------------------------------------------------

#: Timeouts of the hostile target: short, so answers that never end end quickly.
TIMEOUTS = {"connect": 2.0, "ttft": 1.0, "idle": 1.0, "max_duration": 2.0}
#: A pause long enough for the gateway to take what came before it as a read of its own.
P = 0.15

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
#: No content-length, no chunked: the body ends when the connection closes.
HEAD_EOF = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
DONE = b"data: [DONE]\n\n"
LAST = b"0\r\n\r\n"


def ck(data: bytes) -> bytes:
    """One chunk of chunked encoding, framed honestly."""
    return b"%x\r\n%s\r\n" % (len(data), data)


END = ck(DONE) + LAST


def raw_event(content: bytes, finish: bytes = b"null") -> bytes:
    """A chat chunk event whose content is given as the raw bytes inside the JSON string (escapes, invalid
    UTF-8 and all)."""
    return (b'data: {"id":"chatcmpl-h","object":"chat.completion.chunk","created":1,"model":"gpt-test",'
            b'"choices":[{"index":0,"delta":{"content":"' + content + b'"},"finish_reason":' + finish + b"}]}\n\n")


E1 = raw_event(b"Hello")
E2 = raw_event(b" there")
E3 = raw_event(b"!", b'"stop"')
OK_BODY = E1 + E2 + E3 + DONE


def ns_head(length: int, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (ctype, length)


NS_OK = orjson.dumps({"id": "chatcmpl-h", "object": "chat.completion", "created": 1, "model": "gpt-test",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                                   "finish_reason": "stop"}]})

# ---- expected outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """HTTP 200, SSE body exactly `events`, then (when `error`) the error envelope with that code and [DONE].
    `filler`: a block that may repeat any number of times (at least once) between `events` and the error."""

    events: bytes
    error: str | None = None
    filler: bytes | None = None


@dataclass(frozen=True)
class HttpError:
    """Nothing was sent before the failure: an HTTP error with the JSON error envelope."""

    status: int
    code: str


@dataclass(frozen=True)
class Body:
    """A non-streamed answer: this status and exactly this body."""

    status: int
    body: bytes


@dataclass(frozen=True)
class Scenario:
    script: list
    plain: object
    #: The outcome on the decoding (pii redact) path; the same as `plain` when None.
    pii: object = None
    stream: bool = True
    #: Whether the connection must be discarded; by default when the answer was broken or the upstream closed.
    #: True for clean answers followed by bytes past the response's end; False for a whole error response.
    discard: bool | None = None
    #: The upstream closes before any byte: a reused connection counts as stale and is retried once.
    stale: bool = False

    def outcome(self, path: str) -> object:
        return self.plain if path == "plain" or self.pii is None else self.pii

    def discards(self, path: str) -> bool:
        if self.discard is not None:
            return self.discard
        o = self.outcome(path)
        clean = (isinstance(o, Events) and o.error is None) or isinstance(o, Body)
        return not clean or self.server_closes

    @property
    def server_closes(self) -> bool:
        return bool(self.script) and isinstance(self.script[-1], (Close, Reset))


PROTO = "upstream_protocol_error"
GONE = "upstream_disconnected"
TIMEOUT = "upstream_timeout"

#: An event longer than the limit by 1000 bytes; all of it but its last 3000 bytes is sent first (held bytes stay
#: under the limit), then the rest in one small write.
BIG = raw_event(b"x" * (MAX_SSE_EVENT_BYTES + 1000 - len(raw_event(b""))))
assert len(BIG) == MAX_SSE_EVENT_BYTES + 1000
#: An event just under the limit, arriving over many reads.
NEAR = raw_event(b"y" * (MAX_SSE_EVENT_BYTES - 50_000))

SCENARIOS: dict[str, Scenario] = {
    # ---- (1) malformed chunk framing
    "frame-bad-hex": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(b"zz\r\n" + E2 + b"\r\n" + END)], Events(E1, PROTO)),
    "frame-bad-hex-same-read": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(ck(E2) + b"zz\r\n" + E3 + b"\r\n" + END)], Events(E1 + E2, PROTO)),
    "frame-bad-hex-first": Scenario([Send(HEAD + b"zz\r\n" + E1 + b"\r\n" + END)], HttpError(502, PROTO)),
    "frame-missing-crlf": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(b"%x\r\n" % len(E2) + E2 + b"XX" + ck(E3) + END)],
        Events(E1 + E2, PROTO)),
    "frame-size-overflow": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(b"ffffffffffffffffffffffff\r\n" + E2)], Events(E1, PROTO)),
    # ---- (2) chunk sizes that lie
    "size-larger-then-close": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(b"%x\r\n" % (4 * len(E2)) + E2 + E3[:15]), Pause(P), Close()],
        Events(E1 + E2, GONE)),
    "size-huge-then-close": Scenario(
        [Send(HEAD + b"ffffffffffff\r\n" + E1 + E2[:30]), Pause(P), Close()], Events(E1, GONE)),
    "size-smaller": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(b"a\r\n" + E2 + b"\r\n" + END)], Events(E1, PROTO)),
    "size-smaller-first": Scenario([Send(HEAD + b"5\r\n" + E1 + b"\r\n" + END)], HttpError(502, PROTO)),
    "trailing-garbage": Scenario(
        [Send(HEAD + ck(E1) + END + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nzz")], Events(E1 + DONE),
        discard=True),
    "trailing-garbage-later-read": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(END + b"garbage")], Events(E1 + DONE), discard=True),
    "trailing-garbage-no-done": Scenario(
        [Send(HEAD + ck(E1 + E2 + E3) + LAST + b"\r\nHTTP/1.1 204 No Content\r\n\r\n")], Events(OK_BODY),
        discard=True),
    # ---- (3) oversized SSE lines and events
    "oversized-line": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(ck(b'data: {"x": "')), Flood(ck(b"x" * 65536), 8 << 20), Hang()],
        Events(E1, PROTO)),
    "oversized-event-lines": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Flood(ck(b"data: x\n" * 8192), 8 << 20), Hang()], Events(E1, PROTO)),
    "oversized-event-completes": Scenario(
        [Send(HEAD + ck(E1) + b"%x\r\n" % len(BIG) + BIG[:-3000]), Pause(0.5),
         Send(BIG[-3000:] + b"\r\n" + ck(E3) + END)],
        Events(E1 + BIG + E3 + DONE), pii=Events(E1, PROTO)),
    "near-limit-event": Scenario(
        [Send(HEAD + ck(E1)), Pause(P)] + [Send(ck(NEAR[i:i + 100_000])) for i in range(0, len(NEAR), 100_000)]
        + [Send(ck(E3) + END)],
        Events(E1 + NEAR + E3 + DONE)),
    # ---- (4) invalid UTF-8
    "utf8-invalid": Scenario(
        [Send(HEAD + ck(E1 + raw_event(b"caf\xc3\xa9 \xff\xfe \xc3(") + E3) + END)],
        Events(E1 + raw_event(b"caf\xc3\xa9 \xff\xfe \xc3(") + E3 + DONE)),
    "utf8-split-across-events": Scenario(
        [Send(HEAD + ck(E1 + raw_event(b"price 5\xe2\x82")) + ck(raw_event(b"\xac each") + E3) + END)],
        Events(E1 + raw_event(b"price 5\xe2\x82") + raw_event(b"\xac each") + E3 + DONE)),
    "utf8-lone-surrogate": Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(ck(raw_event(b"half \\ud83d pair") + E3) + END)],
        Events(E1 + raw_event(b"half \\ud83d pair") + E3 + DONE), pii=Events(E1, PROTO)),
    # ---- (6) 1-byte TCP segments
    "bytewise": Scenario([Bytewise(HEAD + ck(E1) + ck(E2) + ck(E3) + END)], Events(OK_BODY)),
    # ---- (7) answers that never end
    "hang-no-head": Scenario([Hang()], HttpError(504, TIMEOUT)),
    "hang-mid-head": Scenario([Send(b"HTTP/1.1 200 OK\r\ncontent-type: text/ev"), Hang()], HttpError(504, TIMEOUT)),
    "hang-after-head": Scenario([Send(HEAD), Hang()], HttpError(504, TIMEOUT)),
    "hang-after-events": Scenario([Send(HEAD + ck(E1)), Hang()], Events(E1, TIMEOUT)),
    "hang-mid-event": Scenario([Send(HEAD + ck(E1) + b"%x\r\n" % len(E2) + E2[:20]), Hang()], Events(E1, TIMEOUT)),
    "drip-comments-forever": Scenario(
        [Send(HEAD + ck(E1)), Drip(ck(b": ping\n\n"), 0.25)], Events(E1, TIMEOUT, filler=b": ping\n\n")),
    "drip-events-forever": Scenario([Send(HEAD + ck(E1)), Drip(ck(E2), 0.25)], Events(E1, TIMEOUT, filler=E2)),
    # ---- (8) reset / close mid-event
    "rst-mid-event": Scenario([Send(HEAD + ck(E1 + E2[:20])), Pause(P), Reset()], Events(E1, GONE)),
    "rst-mid-chunk": Scenario(
        [Send(HEAD + ck(E1) + b"%x\r\n" % len(E2) + E2[:20]), Pause(P), Reset()], Events(E1, GONE)),
    "rst-after-head": Scenario([Send(HEAD), Pause(P), Reset()], HttpError(502, GONE)),
    "rst-mid-head": Scenario([Send(b"HTTP/1.1 200 OK\r\ncont"), Pause(P), Reset()], HttpError(502, GONE)),
    "rst-before-head": Scenario([Reset()], HttpError(502, GONE), stale=True),
    "fin-before-head": Scenario([Close()], HttpError(502, GONE), stale=True),
    "fin-mid-event": Scenario([Send(HEAD + ck(E1 + E2[:20])), Pause(P), Close()], Events(E1, GONE)),
    "eof-body-mid-event": Scenario([Send(HEAD_EOF + E1 + E2[:20]), Pause(P), Close()], Events(E1, PROTO)),
    "eof-body-whole-events": Scenario([Send(HEAD_EOF + E1 + E2 + E3), Pause(P), Close()], Events(OK_BODY)),
    "stream-500-html": Scenario(
        [Send(b"HTTP/1.1 500 Oops\r\ncontent-type: text/html\r\ncontent-length: 14\r\n\r\n<html>x</html>")],
        HttpError(500, "upstream_error"), discard=False),  # a whole response: the connection stays good
    # ---- (9) non-streamed
    "ns-short-body": Scenario(
        [Send(ns_head(500) + NS_OK[:40]), Pause(P), Close()], HttpError(502, GONE), stream=False),
    "ns-garbage-status": Scenario([Send(b"HTTZ/1.1 2OO OK\r\n\r\n{}")], HttpError(502, PROTO), stream=False),
    "ns-binary-garbage": Scenario(
        [Send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)))], HttpError(502, PROTO),
        stream=False),
    "ns-hang-head": Scenario([Hang()], HttpError(504, TIMEOUT), stream=False),
    "ns-hang-body": Scenario([Send(ns_head(500) + NS_OK[:40]), Hang()], HttpError(504, TIMEOUT), stream=False),
    "ns-body-longer-than-length": Scenario(
        [Send(ns_head(len(NS_OK)) + NS_OK + b"garbage after the body")], Body(200, NS_OK), stream=False,
        discard=True),
    "ns-two-responses-in-one-read": Scenario(
        [Send(ns_head(len(NS_OK)) + NS_OK + ns_head(2) + b"{}")], Body(200, NS_OK), stream=False, discard=True),
    "ns-json-array": Scenario([Send(ns_head(5) + b"[1,2]")], Body(200, b"[1,2]"), stream=False),
    "ns-choices-not-list": Scenario(
        [Send(ns_head(13) + b'{"choices":5}')], Body(200, b'{"choices":5}'), stream=False),
    # With output scanners on, a success body they cannot read is refused (it cannot be vouched for); the
    # response itself was whole, so its connection stays pooled.
    "ns-not-json": Scenario([Send(ns_head(6, b"text/plain") + b"hello!")], Body(200, b"hello!"),
                            HttpError(502, PROTO), stream=False, discard=False),
}

# ---- (5) JSON that is no chat chunk: E1, the odd event, E3, [DONE]
_ODD = {
    "json-int": (b"data: 42\n\n", True),
    "json-array": (b"data: [1,2]\n\n", True),
    "json-string": (b'data: "str"\n\n', True),
    "json-not-json": (b"data: hello, world\n\n", True),
    "json-empty-object": (b"data: {}\n\n", True),
    "json-choices-null": (b'data: {"id":"x","choices":null}\n\n', True),
    # Azure's first chunk: no choices, no usage (only the usage chunk the gateway asked for is cut out).
    "json-choices-empty": (b'data: {"choices":[],"id":"","prompt_filter_results":[{"prompt_index":0}]}\n\n', True),
    "json-choices-not-list": (b'data: {"id":"x","choices":{"0":{}}}\n\n', False),
    "json-choice-not-object": (b'data: {"id":"x","choices":[1]}\n\n', False),
    "json-delta-not-object": (b'data: {"id":"x","choices":[{"index":0,"delta":"hi"}]}\n\n', False),
    "json-content-not-string": (b'data: {"id":"x","choices":[{"index":0,"delta":{"content":5}}]}\n\n', False),
    "json-broken": (b'data: {"id":"x","choices":[\n\n', False),
}
for _key, (_odd, _passes) in _ODD.items():
    SCENARIOS[_key] = Scenario(
        [Send(HEAD + ck(E1)), Pause(P), Send(ck(_odd + E3) + END)],
        Events(E1 + _odd + E3 + DONE), pii=Events(E1 + _odd + E3 + DONE) if _passes else Events(E1, PROTO))

# The usage chunk the gateway asked for on the client's behalf is cut out, even when an Azure-style filter chunk
# (also `"choices":[]`, no usage) came in the same read; the filter chunk itself is the client's.
_FILTER = b'data: {"choices":[],"id":"","prompt_filter_results":[{"prompt_index":0}]}\n\n'
_USAGE = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
SCENARIOS["usage-after-filter-chunk"] = Scenario(
    [Send(HEAD + ck(_FILTER + E1 + E3 + _USAGE) + END)], Events(_FILTER + E1 + E3 + DONE))

OK_SCRIPT = [Send(HEAD + ck(E1 + E2) + ck(E3 + DONE) + LAST)]

# ---- the gateways --------------------------------------------------------------------------------------------


def _config(url: str, pii: bool) -> dict:
    cfg = gateway_config(url)
    for t in cfg["providers"]["targets"]:
        if t["id"] == "up":
            t["timeouts"] = dict(TIMEOUTS)
            # Every scenario fails on purpose: the breaker must not open and answer 503 instead.
            t["circuit_breaker"] = {"failures": 1_000_000, "cooldown": 1.0}
    # One attempt: each request is exactly one upstream exchange (connections can be counted).
    cfg["routing"] = [{"model": "gpt-test", "targets": ["up"], "retry": {"attempts": 1}}]
    if pii:
        cfg["policies"] = {"chain": ["pii-detector"]}
        cfg["policy"] = {"pii-detector": {"action": "redact"}}
    return cfg


def _children(pid: int) -> list[int]:
    """The master's child processes (its workers), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(out)


@pytest.fixture(scope="module")
def hostile():
    up = HostileUpstream()
    up.scripts["ok"] = OK_SCRIPT
    for key, sc in SCENARIOS.items():
        up.scripts[key] = sc.script
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateways(hostile, tmp_path_factory):
    factory = GatewayFactory(tmp_path_factory.mktemp("hostile"))
    gws: dict[str, Gateway] = {}
    try:
        for path in ("plain", "pii"):
            gw = factory.start(_config(hostile.url, pii=path == "pii"), workers=1)
            deadline = time.monotonic() + 10
            while len(_children(gw.proc.pid)) != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            (gw.worker_pid,) = _children(gw.proc.pid)  # type: ignore[attr-defined]
            gw.path = path  # type: ignore[attr-defined]
            gws[path] = gw
            _ok(gw, hostile)  # warm: one pooled connection, as in steady state
        yield gws
        for gw in gws.values():
            assert "Traceback" not in gw.stderr_text(), gw.stderr_text()[-8000:]
    finally:
        factory.close()


@pytest.fixture(params=["plain", "pii"])
def gw(request, gateways) -> Gateway:
    return gateways[request.param]


# ---- client side ----------------------------------------------------------------------------------------------


def _request(gw: Gateway, key: str, stream: bool = True, timeout: float = 20.0) -> tuple[int, bytes]:
    """POST a chat request whose last user message is `key`; the status and the body as the client got it
    (de-chunked by h11, an independent HTTP/1.1 parser)."""
    body = orjson.dumps({"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": key}]})
    conn = h11.Connection(h11.CLIENT)
    status = 0
    out = bytearray()
    with socket.create_connection((gw.host, gw.port), timeout=timeout) as s:
        s.sendall(conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=[
            ("host", "x"), ("content-type", "application/json"), ("content-length", str(len(body)))])))
        s.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(s.recv(1 << 20))
            elif isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                out += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    return status, bytes(out)


def _split_error(body: bytes) -> tuple[bytes, dict]:
    """(what came before the error event, the error object) of a stream that ends in failure."""
    assert body.endswith(b"\n\n" + DONE), body[-300:]
    rest = body[:-len(DONE)]
    start = rest.rfind(b'data: {"error"')
    assert start >= 0 and rest[start:].count(b"\n\n") == 1, body[-300:]
    err = orjson.loads(rest[start + 6:-2])["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"], err
    return rest[:start], err


def _check_outcome(outcome: object, status: int, body: bytes) -> None:
    if isinstance(outcome, HttpError):
        assert status == outcome.status, (status, body[:500])
        err = orjson.loads(body)["error"]
        assert err["code"] == outcome.code and err["message"], err
    elif isinstance(outcome, Body):
        assert (status, body) == (outcome.status, outcome.body)
    else:
        assert isinstance(outcome, Events)
        assert status == 200, (status, body[:500])
        if outcome.error is None:
            assert body == outcome.events, (len(body), body[:300], body[-300:])
            return
        before, err = _split_error(body)
        assert err["code"] == outcome.error, err
        assert err["type"] == "upstream_error", err
        assert before.startswith(outcome.events), (before[:300], outcome.events[:300])
        rest = before[len(outcome.events):]
        if outcome.filler is None:
            assert rest == b"", rest[:300]  # never part of an event, nor anything else
        else:
            n = rest.count(outcome.filler)
            assert n >= 1 and rest == outcome.filler * n, rest[:300]


def _ok(gw: Gateway, up: HostileUpstream) -> int:
    """A normal streamed request; returns the id of the upstream connection that carried it."""
    n = len(up.requests)
    assert _request(gw, "ok") == (200, OK_BODY)
    new = up.requests[n:]
    assert [k for _, k in new] == ["ok"], new
    return new[0][0]


def _alive(gw: Gateway) -> None:
    assert gw.proc.poll() is None, "the master died"
    assert _children(gw.proc.pid) == [gw.worker_pid], "the worker died or was replaced"  # type: ignore[attr-defined]
    assert "Traceback" not in gw.stderr_text(), gw.stderr_text()[-8000:]


def _check_connection(gw: Gateway, up: HostileUpstream, key: str, conns: list[int], discard: bool,
                      server_closed: bool) -> None:
    """The connection(s) that carried `key` were discarded (or, after a clean answer, reused), the worker lives."""
    cid = conns[-1]
    if discard and not server_closed:
        assert up.wait_peer_closed(cid), f"the gateway kept connection {cid} open after a broken answer"
    ok_cid = _ok(gw, up)
    if discard:
        assert ok_cid not in conns, f"connection {ok_cid} was pooled after a broken answer and reused"
        assert up.requests_on(ok_cid) == ["ok"], "the next request did not open a new connection"
        for c in conns:
            assert up.requests_on(c)[-1] == key, f"a later request arrived on discarded connection {c}"
    else:
        # Positive control: after a clean answer the pooled connection is reused, so a new connection above
        # really means the broken one was discarded.
        assert ok_cid == cid, "a clean keep-alive connection was not reused"
    _alive(gw)


# ---- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(SCENARIOS))
def test_hostile_upstream(gw, hostile, key):
    sc = SCENARIOS[key]
    path = gw.path  # type: ignore[attr-defined]
    n = len(hostile.requests)
    status, body = _request(gw, key, stream=sc.stream)
    _check_outcome(sc.outcome(path), status, body)
    new = hostile.requests[n:]
    assert {k for _, k in new} == {key}, new
    # One attempt (retry disabled); a connection closed before any byte is retried once when it was a pooled one.
    assert len(new) == 1 or (sc.stale and len(new) == 2), new
    conns = [c for c, _ in new]
    _check_connection(gw, hostile, key, conns, discard=sc.discards(path), server_closed=sc.server_closes)


def _content(body: bytes) -> tuple[str, list[bytes]]:
    """The assistant text of a clean SSE body, and its events (each must be valid UTF-8 JSON)."""
    assert body.endswith(DONE)
    events = [e + b"\n\n" for e in body[:-len(DONE)].split(b"\n\n") if e]
    text = ""
    for e in events:
        assert e.startswith(b"data: ")
        obj = orjson.loads(e[6:].decode("utf-8", "replace"))  # as an SSE client decodes
        text += obj["choices"][0]["delta"].get("content") or ""
    return text, events


def test_redaction_in_one_byte_segments_and_around_invalid_utf8(hostile, gateways):
    """The decoding path redacts a stream delivered one byte per TCP segment, an e-mail split across events, next
    to invalid UTF-8 and a character split across events; pass-through forwards the same bytes unchanged."""
    parts = [raw_event(b"Mail \xff john.d"), raw_event(b"oe@exam"), raw_event(b"ple.com now 5\xe2\x82"),
             raw_event(b"\xac ok", b'"stop"')]
    wire = HEAD + b"".join(ck(p) for p in parts) + END
    hostile.scripts["bytewise-pii"] = [Bytewise(wire)]
    hostile.scripts["pii-utf8"] = [Send(wire)]
    for key in ("bytewise-pii", "pii-utf8"):
        status, body = _request(gateways["plain"], key)
        assert (status, body) == (200, b"".join(parts) + DONE)
        status, body = _request(gateways["pii"], key)
        assert status == 200
        text, events = _content(body)
        # Invalid bytes in an event the policy rewrote become U+FFFD; the split euro sign is in events the
        # policy left alone, so its bytes pass unchanged (and the client's decoder joins them).
        assert text == "Mail \ufffd [REDACTED:EMAIL] now 5\ufffd\ufffd ok", text
        assert b"john" not in body and b"example" not in body
        assert len(events) == len(parts) and events[-1] == parts[-1], events  # untouched: original bytes
        for e in events[:-1]:
            e.decode("utf-8")  # rewritten events are valid UTF-8
        for gw in gateways.values():
            _alive(gw)


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


def _request_measured(gw: Gateway, key: str) -> tuple[int, bytes, int]:
    """`_request`, and how far the worker's resident memory rose above where it was before (KiB, at its peak)."""
    pid = gw.worker_pid  # type: ignore[attr-defined]
    base = _status_kb(pid, "VmRSS")
    peak = {"rss": base}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _status_kb(pid, "VmRSS"))
            time.sleep(0.002)

    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
        hwm = True
    except OSError:
        hwm = False
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        status, body = _request(gw, key)
    finally:
        stop.set()
        t.join()
    return status, body, max(peak["rss"], _status_kb(pid, "VmHWM") if hwm else 0) - base


@pytest.mark.parametrize("shape", ["one-line", "many-lines"])
def test_fast_endless_garbage_keeps_worker_memory_bounded(gw, hostile, shape):
    """50 MB of one SSE line (or of data lines that never end their event), as fast as the gateway reads: the
    client gets the error after the events before it, the worker's resident memory stays within +50 MB."""
    key = f"flood-{shape}"
    unit = ck(b"x" * 65536) if shape == "one-line" else ck(b"data: xxxxxxxxxxxxxxxx\n" * 2800)
    hostile.scripts[key] = [Send(HEAD + ck(E1)), Pause(P), Send(ck(b'data: {"x": "')), Flood(unit, 50 << 20), Hang()]
    n = len(hostile.requests)
    status, body, growth = _request_measured(gw, key)
    _check_outcome(Events(E1, PROTO), status, body)
    assert growth < 50 * 1024, f"worker RSS grew by {growth} KiB"
    (cid,) = [c for c, _ in hostile.requests[n:]]
    assert hostile.wait_peer_closed(cid)
    # The gateway stopped reading the endless body: the flood was cut short (kernel buffers aside).
    assert hostile.flooded[cid] < 40 << 20, hostile.flooded[cid]
    _check_connection(gw, hostile, key, [cid], discard=True, server_closed=False)


def test_an_answer_that_opens_texts_without_end_is_cut_and_costs_bounded_memory(hostile, gateways):
    """12,000 tool calls in 2.5 MB of events, each a name and arguments (24,000 texts for the output policy, each
    holding a Hyperscan stream and its state, ~3 KB, until the choice ends): the redacting gateway ends the answer
    with `upstream_protocol_error` once it passes MAX_STREAM_TEXTS, its worker's resident memory rises by less
    than 25 MB, and it serves the next request. (Before the limit: a 413 once the walks over every text per event
    had spent the request's CPU budget.)"""
    calls = [b'data: {"id":"chatcmpl-h","object":"chat.completion.chunk","created":1,"model":"gpt-test","choices":'
             b'[{"index":0,"delta":{"tool_calls":[{"index":%d,"id":"call_%d","type":"function","function":'
             b'{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}\n\n' % (i, i) for i in range(12_000)]
    hostile.scripts["texts-without-end"] = [Send(HEAD + ck(E1)), Pause(P),
                                            *[Send(ck(b"".join(calls[i:i + 500]))) for i in range(0, len(calls), 500)],
                                            Hang()]
    gw = gateways["pii"]
    status, body, growth = _request_measured(gw, "texts-without-end")
    assert status == 200
    before, err = _split_error(body)
    assert err["code"] == "upstream_protocol_error" and f"more than {MAX_STREAM_TEXTS} texts" in err["message"], err
    assert before.startswith(E1)
    assert growth < 25 * 1024, f"worker RSS grew by {growth} KiB"
    _alive(gw)
    _ok(gw, hostile)


def test_non_streamed_lone_surrogate_does_not_bypass_redaction(hostile, gateways):
    body = (b'{"id":"chatcmpl-h","object":"chat.completion","created":1,"model":"gpt-test","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"half \\ud83d mail john.doe@example.com"},'
            b'"finish_reason":"stop"}]}')
    hostile.scripts["ns-lone-surrogate-pii"] = [Send(ns_head(len(body)) + body)]
    gw = gateways["pii"]
    status, out = _request(gw, "ns-lone-surrogate-pii", stream=False)
    _alive(gw)
    assert b"john.doe@example.com" not in out, (status, out)
    # Refused like the streamed path: a body the output policy cannot read cannot be vouched for.
    assert status == 502 and b'"code":"upstream_protocol_error"' in out, (status, out)
