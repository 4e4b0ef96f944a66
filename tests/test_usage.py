"""Usage accounting: the provider's own count (asked for and taken out of the stream when the client did not ask),
an estimate when there is none, and `partial` when the client leaves early — as the audit log records it."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import openai
import orjson

from fastgw.policy.base import RequestContext
from fastgw.proto.flow import FlowControl
from fastgw.proto.writer import Responder
from tests.conftest import gateway_config
from tests.support.scripted_upstream import ScriptedUpstream, script_key
from tests.support.sse_streams import build_stream


def _ctx() -> RequestContext:
    """The request whose usage a relay reports (a real one: the compiled relay accepts nothing else)."""
    return RequestContext("req_usage", "POST", "/v1/chat/completions", [])


def _audited(cfg: dict, d: Path) -> dict:
    cfg["policies"] = {"chain": ["audit-logger"]}
    cfg["policy"] = {"audit-logger": {"path": str(d), "fsync": "never"}}
    return cfg


def _records(d: Path) -> list[dict]:
    return [json.loads(ln) for f in sorted(d.glob("*.jsonl")) for ln in f.read_text().splitlines() if ln.strip()]


def test_usage_injected_counted_and_stripped(gateway_factory, upstream, tmp_path):
    d = tmp_path / "a"
    gw = gateway_factory.start(_audited(gateway_config(upstream.url), d))
    c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
    chunks = list(c.chat.completions.create(model="gpt-test", stream=True,
                                            messages=[{"role": "user", "content": "count me"}]))
    assert all(ch.choices for ch in chunks)  # the client did not ask: no usage chunk reaches it
    assert upstream.last("/v1/chat/completions")["body"]["stream_options"] == {"include_usage": True}
    rec = _records(d)[-1]
    assert rec["usage"]["completion_tokens"] > 0 and "estimated" not in rec["usage"]
    # A client that asks gets the chunk, exactly once
    chunks = list(c.chat.completions.create(model="gpt-test", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "count me"}]))
    assert [ch for ch in chunks if not ch.choices][0].usage.total_tokens > 0
    assert sum(1 for ch in chunks if ch.usage is not None) == 1


def test_usage_estimated_when_the_upstream_reports_none(gateway_factory, tmp_path):
    up = ScriptedUpstream()
    try:
        key = script_key()
        up.scripts[key] = [build_stream(["one ", "two ", "three ", "four"])]  # no usage chunk at all
        d = tmp_path / "a"
        cfg = {"pack": {"name": "t"}, "providers": {"targets": [
            {"id": "s", "provider": "openai", "model": "m", "base_url": up.url}]}}
        gw = gateway_factory.start(_audited(cfg, d))
        c = openai.OpenAI(base_url=gw.url, api_key="x", max_retries=0, timeout=20)
        list(c.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": key}]))
        usage = _records(d)[-1]["usage"]
        assert usage["estimated"] is True and usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    finally:
        up.stop()


def test_usage_marked_partial_when_the_client_leaves(gateway_factory, upstream, tmp_path):
    d = tmp_path / "a"
    gw = gateway_factory.start(_audited(gateway_config(upstream.url), d))
    s = socket.create_connection((gw.host, gw.port), timeout=10)
    body = orjson.dumps({"model": "fault-slow", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _records(d):
        time.sleep(0.05)
    usage = _records(d)[-1]["usage"]
    assert usage["partial"] is True


def test_usage_chunk_stripped_on_the_pass_through_path_too(gateway, upstream):
    """No policy at all: the byte-for-byte relay still takes out the usage chunk the client did not ask for."""
    c = openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0, timeout=20)
    chunks = list(c.chat.completions.create(model="gpt-test", stream=True,
                                            messages=[{"role": "user", "content": "plain"}]))
    assert chunks and all(ch.choices for ch in chunks)
    assert upstream.last("/v1/chat/completions")["body"]["stream_options"] == {"include_usage": True}
    asked = list(c.chat.completions.create(model="gpt-test", stream=True, stream_options={"include_usage": True},
                                           messages=[{"role": "user", "content": "plain"}]))
    assert sum(1 for ch in asked if not ch.choices and ch.usage is not None) == 1


def _idle_responder(loop: asyncio.AbstractEventLoop) -> Responder:
    """A response writer no byte is written to (these tests call the relay's usage cut directly)."""
    return Responder(object(), FlowControl(loop), True, False)  # type: ignore[arg-type]


def test_usage_cut_skips_a_json_array_that_mentions_empty_choices() -> None:
    """A hostile event that is JSON but no object, holding `"choices":[]`, neither raises nor hides the usage chunk."""
    import asyncio

    from fastgw.stream import SSERelay

    loop = asyncio.new_event_loop()
    try:
        relay = SSERelay(_idle_responder(loop), None, loop, (200, []))  # type: ignore[arg-type]
        relay.usage_sink, relay.strip_usage = _ctx(), True
        odd = b'data: [{"choices":[]}]\n\n'
        out = relay._take_usage(odd + b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n')
        assert out == odd and relay.usage_sink.usage == {"prompt_tokens": 3}
    finally:
        loop.close()


def test_usage_chunk_written_with_spaces_is_counted_and_cut() -> None:
    """An upstream that writes `json.dumps`'s default (`"choices": []`, a space after the colon) still has its
    usage read and its usage chunk cut: otherwise quotas would settle streams on the gateway's estimate."""
    import asyncio

    from fastgw.stream import SSERelay

    loop = asyncio.new_event_loop()
    try:
        relay = SSERelay(_idle_responder(loop), None, loop, (200, []))  # type: ignore[arg-type]
        relay.usage_sink, relay.strip_usage = _ctx(), True
        finish = b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
        out = relay._take_usage(finish + b'data: {"choices": [], "usage": {"prompt_tokens": 8, '
                                         b'"completion_tokens": 40}}\n\ndata: [DONE]\n\n')
        assert out == finish + b"data: [DONE]\n\n"
        assert relay.usage_sink.usage == {"prompt_tokens": 8, "completion_tokens": 40}
    finally:
        loop.close()


def test_usage_chunk_in_cr_or_crlf_lines_is_counted_and_cut() -> None:
    """SSE lets a server end its lines with CRLF or a lone CR: its usage chunk is read and cut as a LF one is (a
    client that did not ask gets no `"choices": []` chunk, which SDKs that read `choices[0]` fail on), a hostile
    `"choices":[]` that is no usage stays, and every other byte (comments, extra blank lines) is kept."""
    import asyncio

    from fastgw.stream import SSERelay

    events = [b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', b": keep-alive\n\n\n",
              b'data: {"choices":[],"prompt_filter_results":[]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n', b"data: [DONE]\n\n"]
    loop = asyncio.new_event_loop()
    try:
        for end in (b"\r\n", b"\r", b"\n"):
            evs = [e.replace(b"\n", end) for e in events]
            for strip in (True, False):
                relay = SSERelay(_idle_responder(loop), None, loop, (200, []))  # type: ignore[arg-type]
                relay.usage_sink, relay.strip_usage = _ctx(), strip
                out = relay._take_usage(b"".join(evs))
                assert out == b"".join(evs[:4] + evs[5:] if strip else evs), (end, strip, out)
                assert relay.usage_sink.usage == {"prompt_tokens": 3, "completion_tokens": 1}, end
    finally:
        loop.close()


def test_null_usage_members_dropped_with_the_usage_chunk() -> None:
    """Asked for on the client's behalf, `"usage": null` on every legacy completion chunk goes with the usage chunk
    (the spec allows it no null usage; a chat chunk's is allowed and left, at no cost per event); a client that
    asked keeps them, as the provider sends them."""
    import asyncio

    from fastgw.api.sse import drop_null_usage, drop_null_usage_text
    from fastgw.stream import SSERelay

    chunk = b'data: {"choices":[{"text":"a"}],"usage":null}\n\ndata: {"choices":[{"text":"b"}], "usage": null}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n'
    clean = b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}\n\n'
    assert drop_null_usage(chunk) == clean
    assert drop_null_usage_text(chunk.decode()) == clean.decode()
    text = b'data: {"choices":[{"text":"say ,\\"usage\\":null"}]}\n\n'  # the words in a text are text
    assert drop_null_usage(text) == text
    loop = asyncio.new_event_loop()
    try:
        for strip, null, expected in ((True, True, clean), (True, False, chunk), (False, False, chunk + usage)):
            relay = SSERelay(_idle_responder(loop), None, loop, (200, []))  # type: ignore[arg-type]
            relay.usage_sink, relay.strip_usage = _ctx(), strip
            relay.strip_null_usage = null
            assert relay._take_usage(chunk + usage) == expected
    finally:
        loop.close()


def test_no_usage_member_reaches_a_legacy_completion_client_that_did_not_ask(gateway_factory, upstream):
    """Both relays (byte for byte, and through an output policy): no `usage` at all on a legacy completion stream;
    a chat stream keeps the null usage the spec allows on its chunks, and loses the usage chunk."""
    cfg = gateway_config(upstream.url)
    plain = gateway_factory.start(cfg)
    pii = gateway_factory.start({**cfg, "policies": {"chain": ["pii-detector"]}})
    for gw in (plain, pii):
        for path, body in (("/chat/completions", {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
                           ("/completions", {"model": "instruct-test", "prompt": "hi"})):
            rq = urllib.request.Request(gw.url + path, data=orjson.dumps({**body, "stream": True}),
                                        headers={"content-type": "application/json"})
            with urllib.request.urlopen(rq, timeout=20) as r:
                raw = r.read()
            assert raw.count(b"data: {") > 3 and raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
            if path == "/completions":
                assert b'"usage"' not in raw, (gw.base, path, raw[:300])
            else:
                assert b'"usage":{' not in raw and b'"usage":null' in raw, (gw.base, path, raw[:300])
            asked = {**body, "stream": True, "stream_options": {"include_usage": True}}
            rq = urllib.request.Request(gw.url + path, data=orjson.dumps(asked),
                                        headers={"content-type": "application/json"})
            with urllib.request.urlopen(rq, timeout=20) as r:
                assert re.search(rb'"usage": ?null', r.read())  # asked for: the upstream's chunks as they are


class _Wire:
    """A client transport that keeps what is written, and what the relay had counted at each write."""

    def __init__(self) -> None:
        self.data = b""
        self.counted_at_write: list[int] = []
        self.relay = None

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writelines((data,))

    def writelines(self, parts) -> None:  # type: ignore[no-untyped-def]
        self.counted_at_write.append(self.relay.events)  # type: ignore[attr-defined]
        self.data += b"".join(parts)

    def get_write_buffer_size(self) -> int:
        return 0


def test_pass_through_counts_the_events_it_relayed_after_writing_them() -> None:
    """The byte-for-byte relay's event count (the usage estimate's input, `end.events`) is the number of events the
    client got — a usage chunk cut out is not one — whatever the reads' boundaries; and a read's events are
    counted after they are written (counting 12 KB stands between the upstream's bytes and the client's first
    byte otherwise)."""
    import random

    from fastgw.stream import SSERelay
    from tests.policy.test_cpu_stream import _Source

    events = [b'data: {"choices":[{"index":0,"delta":{"content":"w%d"}}]}\n\n' % i for i in range(40)]
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":40}}\n\n'
    stream = b"".join(events) + usage + b"data: [DONE]\n\n"
    rng = random.Random(18)
    loop = asyncio.new_event_loop()
    try:
        for case in range(60):
            strip = case % 2 == 0
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 12)))
            wire = _Wire()
            relay = SSERelay(Responder(wire, FlowControl(loop), True, False), _Source(), loop,  # type: ignore[arg-type]
                             (200, []))
            wire.relay = relay  # type: ignore[assignment]
            relay.usage_sink, relay.strip_usage = _ctx(), strip
            relay.start()
            for a, b in zip([0, *cuts], [*cuts, len(stream)]):
                relay.on_data(stream[a:b])
                relay.flush()
            relay.on_end()
            end = relay.done.result()
            body = wire.data.split(b"\r\n\r\n", 1)[1]
            relayed = b"".join(part for i, part in enumerate(body.split(b"\r\n")) if i % 2)  # the chunks' data
            assert relayed == (stream.replace(usage, b"") if strip else stream), (case, cuts)
            assert end.events == relayed.count(b"data:") == 42 - strip, (case, cuts, end.events)
            assert relay.usage_sink.usage == {"prompt_tokens": 3, "completion_tokens": 40}
            assert wire.counted_at_write[0] == 0, wire.counted_at_write  # the first write came before any count
    finally:
        loop.close()
