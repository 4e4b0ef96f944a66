"""The request pipeline in one process, with no sockets: scripted upstreams, a fake transport, a fake clock.

The fast tier for routes → pipeline → attempts: each test drives the real `App` (the
chain, the router, the attempt, the relay and the real `Responder`) with an upstream
that answers from a script, and a clock the test moves, so breakers, retries and
fallbacks are checked without wall-clock waits. Includes the regression tests for a
circuit breaker whose half-open probe wedged it for good, and for an output-policy
failure blamed on the upstream.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import types

import msgspec
import orjson
import pytest

from fastgw.api.errors import GatewayError, render
from fastgw.app import App, build_targets
from fastgw.pipeline import parse_body, usage_of
from fastgw.config import Config
from fastgw.policy.chain import build_chain
from fastgw.proto.client import ConnectFailed
from fastgw.proto.errors import HttpError
from fastgw.proto.flow import FlowControl
from fastgw.proto.h1 import Request
from fastgw.proto.writer import Responder
from fastgw.proto.sse import encode_data

EMAIL = "jane.doe@example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """Collects what the responder writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts) -> None:  # noqa: ANN001
        for p in parts:
            self.data += p

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _chat_json(text: str) -> bytes:
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def _chat_events(text: str) -> list[bytes]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [encode_data(orjson.dumps({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                                "finish_reason": None}]}))
              for piece in (text[:5], text[5:])]
    events.append(encode_data(orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})))
    return events + [b"data: [DONE]\n\n"]


_ANTHROPIC_OK = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                              "content": [{"type": "text", "text": "Hello from claude"}], "stop_reason": "end_turn",
                              "usage": {"input_tokens": 3, "output_tokens": 4}})


class FakeConn:
    """A scripted upstream response: a head, then a whole body or SSE events delivered to a sink."""

    def __init__(self, loop: asyncio.AbstractEventLoop, status: int, body: bytes = b"",
                 events: list[bytes] | None = None) -> None:
        self.loop = loop
        self.status = status
        ctype = b"text/event-stream" if events is not None else b"application/json"
        self.headers = [(b"content-type", ctype)]
        self.body = body
        self.events = events or []
        self.detached = False

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    async def read_body(self, timeout: float | None = None, first_by: float | None = None,
                        idle: float | None = None) -> bytes:
        return self.body

    def set_sink(self, sink) -> None:  # noqa: ANN001
        def run() -> None:
            for ev in self.events:
                if self.detached:
                    return
                sink.on_data(ev)
                sink.flush()
            if not self.detached:
                sink.on_end()
        self.loop.call_soon(run)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def detach(self) -> None:
        self.detached = True


class ScriptedUpstream:
    """Answers each attempt with the next step of a script; records which target each attempt went to."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.steps: list[str] = []
        self.calls: list[str] = []
        #: The upstream request bytes of each attempt.
        self.bodies: list[bytes] = []
        self.hanging: asyncio.Future[None] | None = None

    def prepare(self, target, adapter, call):  # noqa: ANN001, ANN201
        return adapter.build_request(target, call.endpoint, call.body, call.stream)  # as HttpUpstream

    async def open(self, target, request, call):  # noqa: ANN001, ANN201
        self.calls.append(target.id)
        self.bodies.append(request.body)
        self.last = (request, call)
        step = self.steps.pop(0)
        if step == "held":  # a stream that has sent its first event and waits
            conn = FakeConn(self.loop, 200, events=_chat_events("Hello there")[:1])

            def set_sink(sink) -> None:  # noqa: ANN001
                self.loop.call_soon(lambda: (sink.on_data(conn.events[0]), sink.flush()))
            conn.set_sink = set_sink
            self.held = conn
            return conn
        if step == "connect":
            raise ConnectFailed(f"cannot connect to {target.id}")
        if step == "500":
            return FakeConn(self.loop, 500, b'{"error": {"message": "boom", "type": "server_error"}}')
        if step == "400":
            return FakeConn(self.loop, 400, b'{"error": {"message": "bad", "type": "invalid_request_error"}}')
        if step == "hang":
            self.hanging = self.loop.create_future()
            await self.hanging
        if step == "ok":
            return FakeConn(self.loop, 200, _chat_json("Hello there"))
        if step == "pii":
            return FakeConn(self.loop, 200, _chat_json(f"Write to {EMAIL} now"))
        if step == "stream":
            return FakeConn(self.loop, 200, events=_chat_events("Hello there"))
        if step == "anthropic-ok":
            return FakeConn(self.loop, 200, _ANTHROPIC_OK)
        raise AssertionError(f"unknown step {step}")

    def release(self, conn) -> None:  # noqa: ANN001
        conn.detach()


class Harness:
    def __init__(self, cfg: dict) -> None:
        self.loop = asyncio.new_event_loop()
        config = msgspec.convert(cfg, Config)
        self.clock = Clock()
        chain = build_chain(config.chain_settings())
        chain.allocate_scratch()
        self.app = App(config, build_targets(config, {}), self.loop, chain, clock=self.clock)
        self.upstream = ScriptedUpstream(self.loop)
        attempt = self.app.pipeline.attempt
        attempt._http = self.upstream  # type: ignore[assignment]
        attempt._upstreams = {}
        #: Extra request headers (an Authorization for rbac).
        self.headers: list[tuple[bytes, bytes]] = []

    def close(self) -> None:
        self.loop.close()

    def breaker(self, target: str):  # noqa: ANN201
        return self.app.router.breakers[target]

    async def _call(self, body: dict | bytes, transport: FakeTransport) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        req = Request("POST", b"/v1/chat/completions", [(b"content-type", b"application/json"), *self.headers], raw,
                      "1.1", True)
        resp = Responder(transport, FlowControl(self.loop, transport), True, False, render_error=render)
        try:
            await self.app(req, resp)
        except HttpError as e:
            resp.send_error(e)

    def ask(self, model: str = "m", stream: bool = False, **extra: object) -> tuple[int, bytes]:
        t = FakeTransport()
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
        self.loop.run_until_complete(self._call(body, t))
        head, _, rest = bytes(t.data).partition(b"\r\n\r\n")
        return int(head[9:12]), rest

    def ask_raw(self, raw: bytes) -> tuple[int, bytes]:
        t = FakeTransport()
        self.loop.run_until_complete(self._call(raw, t))
        head, _, rest = bytes(t.data).partition(b"\r\n\r\n")
        return int(head[9:12]), rest

    def ask_and_leave(self, model: str = "m") -> None:
        """A request whose client goes away while the upstream has not answered (the server cancels it)."""
        t = FakeTransport()
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        task = self.loop.create_task(self._call(body, t))
        self.loop.run_until_complete(asyncio.sleep(0))
        while self.upstream.hanging is None:
            self.loop.run_until_complete(asyncio.sleep(0))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            self.loop.run_until_complete(task)


def _target(tid: str, provider: str = "openai", model: str = "m", failures: int = 1) -> dict:
    return {"id": tid, "provider": provider, "model": model, "base_url": f"http://{tid}.invalid/v1",
            "circuit_breaker": {"failures": failures, "cooldown": 30}}


def _cfg(*targets: dict, chain: list[str] | None = None, policy: dict | None = None,
         attempts: int = 1) -> dict:
    cfg: dict = {"pack": {"name": "t"}, "providers": {"targets": list(targets)},
                 "routing": [{"model": targets[0]["model"], "targets": [t["id"] for t in targets],
                              "retry": {"attempts": attempts, "backoff": 0}}]}
    if chain:
        cfg["policies"] = {"chain": chain}
    if policy:
        cfg["policy"] = policy
    return cfg


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(cfg: dict) -> Harness:
        h = Harness(cfg)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def _open_then_half_open(h: Harness, target: str) -> None:
    h.upstream.steps.append("500")
    status, _ = h.ask()
    assert status == 500 and h.breaker(target).state() == "open"
    h.clock.now += 31
    assert h.breaker(target).state() == "half-open"


# ---- the half-open probe is always released ---------------------------------------------------------------

def test_a_probe_refused_by_the_gateway_for_its_target_releases_the_circuit(harness):
    """`n: 2` to an Anthropic target is a 400 the gateway gives before any upstream call; the probe it held
    must be released, so the target answers the next request (it used to answer 503 until a restart)."""
    h = harness(_cfg(_target("claude", "anthropic", "claude")))
    h.upstream.steps.append("500")
    assert h.ask("claude")[0] == 500
    h.clock.now += 31
    status, body = h.ask("claude", n=2)
    assert status == 400 and orjson.loads(body)["error"]["param"] == "n"
    h.upstream.steps.append("anthropic-ok")
    status, body = h.ask("claude")
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "Hello from claude"
    assert h.breaker("claude").state() == "closed"
    assert h.upstream.calls == ["claude", "claude"]


def test_a_probe_whose_client_left_releases_the_circuit(harness):
    h = harness(_cfg(_target("a")))
    _open_then_half_open(h, "a")
    h.upstream.steps.append("hang")
    h.ask_and_leave()
    assert not h.breaker("a").probing
    h.upstream.steps.append("ok")
    assert h.ask()[0] == 200
    assert h.breaker("a").state() == "closed"


def test_a_probe_whose_answer_a_policy_blocked_releases_the_circuit(harness):
    h = harness(_cfg(_target("a"), chain=["pii-detector"], policy={"pii-detector": {"action": "block"}}))
    _open_then_half_open(h, "a")
    h.upstream.steps.append("pii")
    status, body = h.ask()
    assert status == 409 and EMAIL.encode() not in body
    h.upstream.steps.append("ok")
    assert h.ask()[0] == 200


def test_a_probe_answered_with_an_upstream_4xx_is_neutral(harness):
    h = harness(_cfg(_target("a")))
    _open_then_half_open(h, "a")
    h.upstream.steps.append("400")
    assert h.ask()[0] == 400
    assert h.breaker("a").state() == "half-open" and not h.breaker("a").probing
    h.upstream.steps.append("ok")
    assert h.ask()[0] == 200 and h.breaker("a").state() == "closed"


def test_a_failed_probe_reopens_and_a_good_one_closes(harness):
    h = harness(_cfg(_target("a")))
    _open_then_half_open(h, "a")
    h.upstream.steps.append("connect")
    status, body = h.ask()
    assert status == 502 and orjson.loads(body)["error"]["code"] == "upstream_connect_error"
    assert h.breaker("a").state() == "open"
    status, body = h.ask()  # open: not tried at all
    assert status == 503 and orjson.loads(body)["error"]["code"] == "upstream_unavailable"
    assert h.upstream.calls == ["a", "a"]
    h.clock.now += 31
    h.upstream.steps.append("stream")
    status, body = h.ask(stream=True)
    assert status == 200 and b"Hello there" not in body and b"Hello" in body and b"[DONE]" in body
    assert h.breaker("a").state() == "closed"


# ---- a policy failure is the policy's, not the upstream's ---------------------------------------------------

def _failing_push(*_a, **_k) -> None:
    raise RuntimeError("a bug in an output policy")


class _FailingReader:
    read = staticmethod(_failing_push)


@pytest.mark.parametrize("stream", [True, False])
def test_an_output_policy_failure_is_not_retried_nor_blamed_on_the_upstream(harness, monkeypatch, stream):
    """An output policy that raises on the first event used to become a retryable upstream 5xx: one client
    request made 4 billed upstream calls and opened a healthy target's breaker."""
    from fastgw.policy.stream import chat

    # The chat policy's push fails on the first event (through its chunk readers: a compiled class's methods
    # cannot be replaced).
    monkeypatch.setattr(chat, "decode_chunk", _failing_push)
    monkeypatch.setattr(chat, "_PlainReader", _FailingReader)
    h = harness(_cfg(_target("a", failures=2), _target("b", failures=2), chain=["pii-detector"], attempts=2))
    if not stream:
        # A non-streamed answer's scan fails: its output scanner is no scanner (compiled, the chain refuses its type;
        # interpreted, it has no database). The input policies are the chain's own and still pass.
        h.app.chain.output_scanners = [object()]  # type: ignore[list-item]
    h.upstream.steps += ["stream" if stream else "ok"] * 4
    status, body = h.ask(stream=stream)
    err = orjson.loads(body)["error"]
    assert status == 500 and err["code"] == "policy_failed"
    assert h.upstream.calls == ["a"]  # one billed upstream call
    for t in ("a", "b"):
        assert h.breaker(t).state() == "closed" and h.breaker(t).failures == 0


# ---- retries and fallbacks still do their job ----------------------------------------------------------------

def test_an_upstream_failure_falls_back_to_the_next_target(harness):
    h = harness(_cfg(_target("a", failures=5), _target("b", failures=5)))
    h.upstream.steps += ["500", "ok"]
    status, body = h.ask()
    assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"] == "Hello there"
    assert h.upstream.calls == ["a", "b"]
    assert h.breaker("a").failures == 1 and h.breaker("b").failures == 0


def test_a_retry_on_the_same_target_then_the_upstream_error_is_relayed(harness):
    h = harness(_cfg(_target("a", failures=5), attempts=2))
    h.upstream.steps += ["500", "500"]
    status, body = h.ask()
    assert status == 500 and orjson.loads(body)["error"]["message"] == "boom"
    assert h.upstream.calls == ["a", "a"]


def test_a_stream_that_fails_before_its_first_byte_falls_back(harness):
    h = harness(_cfg(_target("a", failures=5), _target("b", failures=5)))
    h.upstream.steps += ["connect", "stream"]
    status, body = h.ask(stream=True)
    assert status == 200 and body.count(b"data: ") == 4
    assert h.upstream.calls == ["a", "b"]


# ---- one body: the upstream sees what the policies judged --------------------------------------------------

@pytest.mark.parametrize("dup", ["messages", "model"])
def test_a_duplicated_key_cannot_send_the_upstream_what_the_policies_did_not_judge(harness, dup):
    """`{"messages": [PII], "messages": [clean]}`: the policies judge the last value; forwarding the client's
    bytes would hand the upstream both (and a first-wins parser the PII). The upstream gets the judged body."""
    h = harness(_cfg(_target("a"), _target("b", model="other"), chain=["pii-detector"],
                     policy={"pii-detector": {"action": "block"}}))
    h.upstream.steps.append("ok")
    pii = b'[{"role": "user", "content": "mail ' + EMAIL.encode() + b'"}]'
    clean = b'[{"role": "user", "content": "hi"}]'
    if dup == "messages":
        raw = b'{"model": "m", "messages": ' + pii + b', "messages": ' + clean + b'}'
    else:  # a second model key would pick the target the routing and rbac did not judge
        raw = b'{"model": "other", "messages": ' + clean + b', "model": "m"}'
    status, _ = h.ask_raw(raw)
    assert status == 200 and h.upstream.calls == ["a"]
    sent = orjson.loads(h.upstream.bodies[0])
    assert h.upstream.bodies[0].count(b'"messages"') == 1 and h.upstream.bodies[0].count(b'"model"') == 1
    assert EMAIL.encode() not in h.upstream.bodies[0] and sent["model"] == "m"
    assert sent["messages"] == [{"role": "user", "content": "hi"}]



# --- rbac: the model rules apply to the requested name and to the target's model (issue 15, item 7) ----------

def _rbac_cfg(*targets: dict, models: list[str], routing_model: str, aliases: dict[str, list[str]] | None = None
              ) -> dict:
    cfg = _cfg(*targets, chain=["rbac"], policy={"rbac": {
        "keys": [{"name": "team", "sha256": hashlib.sha256(b"sk-team").hexdigest(), "roles": ["r"]}],
        "roles": {"r": {"models": models}}}}, attempts=1)
    cfg["routing"][0]["model"] = routing_model
    for t in cfg["providers"]["targets"]:
        t["aliases"] = (aliases or {}).get(t["id"], [])
    return cfg


def test_an_alias_cannot_reach_a_model_the_role_does_not_name(harness):
    h = harness(_rbac_cfg(_target("pro", model="o1-pro"), models=["gpt-4o*"], routing_model="gpt-4o-reasoning"))
    h.headers = [(b"authorization", b"Bearer sk-team")]
    h.upstream.steps = ["ok"]
    status, body = h.ask("gpt-4o-reasoning")
    assert status == 403, body
    err = orjson.loads(body)["error"]
    assert err["code"] == "model_not_allowed" and "'o1-pro'" in err["message"]
    assert h.upstream.calls == []


def test_a_fallback_the_role_may_not_use_is_skipped(harness):
    h = harness(_rbac_cfg(_target("openai", model="gpt-4o"), _target("claude", "anthropic", model="claude-3-5"),
                          _target("mini", model="gpt-4o-mini"), models=["gpt-4o*"], routing_model="gpt-4o"))
    h.headers = [(b"authorization", b"Bearer sk-team")]
    h.upstream.steps = ["500", "ok"]
    status, body = h.ask("gpt-4o")
    assert status == 200, body
    assert h.upstream.calls == ["openai", "mini"]  # never the Claude target the role does not name


def test_a_role_that_names_every_model_keeps_every_fallback(harness):
    h = harness(_rbac_cfg(_target("openai", model="gpt-4o"), _target("claude", "anthropic", model="claude-3-5"),
                          models=["gpt-4o", "claude-*"], routing_model="gpt-4o"))
    h.headers = [(b"authorization", b"Bearer sk-team")]
    h.upstream.steps = ["500", "anthropic-ok"]
    status, body = h.ask("gpt-4o")
    assert status == 200, body
    assert h.upstream.calls == ["openai", "claude"]


def test_an_open_stream_keeps_neither_its_upstream_request_nor_the_call_made_for_usage(harness):
    """Issue 18: once the request is written, an open stream's coroutine frames hold neither the encoded upstream
    request nor the call whose body is the copy with `stream_options.include_usage` (~0.9 KB per open stream)."""
    h = harness(_cfg(_target("a")))
    h.upstream.steps.append("held")
    t = FakeTransport()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    task = h.loop.create_task(h._call(body, t))
    for _ in range(20):
        h.loop.run_until_complete(asyncio.sleep(0))
    assert b"Hello" in t.data and not task.done()  # the stream is open, its first event sent
    request, call = h.upstream.last
    assert call.strip_usage and call.body["stream_options"] == {"include_usage": True}  # the copy, asked for usage
    gc.collect()
    for obj in (request, call, call.body):
        # A coroutine's frame, or compiled (mypyc), its environment object (`<function>_<class>_env`).
        frames = [r for r in gc.get_referrers(obj)
                  if isinstance(r, types.CoroutineType) or type(r).__name__.endswith(("_env", "_gen"))]
        assert not frames, (obj, frames)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        h.loop.run_until_complete(task)


@pytest.mark.parametrize("ctype, accepted", [
    (b"application/json", True), (b"application/json; charset=utf-8", True), (b"APPLICATION/JSON", True),
    (b"application/vnd.api+json", True), (None, True),
    (b"text/plain", False), (b"application/x-www-form-urlencoded", False), (b"", False), (b"application/jso", False),
])
def test_a_model_request_is_read_only_as_json(ctype: bytes | None, accepted: bool) -> None:
    headers = [] if ctype is None else [(b"content-type", ctype)]
    req = Request("POST", b"/v1/chat/completions", headers, b'{"model": "m", "messages": []}', "1.1", True)
    if accepted:
        assert parse_body(req)["model"] == "m"
    else:
        with pytest.raises(GatewayError) as e:
            parse_body(req)
        assert (e.value.status, e.value.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize("body, usage", [
    (b'{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}',
     {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
    # Responses and Messages name them input/output: the chat names are added beside them
    (b'{"type":"message","usage":{"input_tokens":5,"output_tokens":6}}',
     {"input_tokens": 5, "output_tokens": 6, "prompt_tokens": 5, "completion_tokens": 6}),
    (b'{"usage":{"input_tokens":5}}', {"input_tokens": 5, "prompt_tokens": 5, "completion_tokens": 0}),
    (b'{"usage":{"prompt_tokens":1,"input_tokens":9}}', {"prompt_tokens": 1, "input_tokens": 9}),
    (b'{"choices":[]}', None), (b'{"usage":null}', None), (b"not json", None), (b'{"usage":[1]}', None), (b"", None),
])
def test_a_whole_answers_usage_is_read_in_every_dialect(body: bytes, usage: dict | None) -> None:
    assert usage_of(body) == usage
