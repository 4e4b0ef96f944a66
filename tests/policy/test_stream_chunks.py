"""Structured chunks: a translated provider hands the output policy `chat.completion.chunk` dicts instead of SSE
bytes. For any stream and any split, the dicts give exactly the bytes the same stream as SSE gives, under
redaction and under block; a dict is encoded once, when released (after the change when a policy changed it)."""

from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.api.errors import GatewayError
from fastgw.api.sse import DONE
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.stream import StreamBlocked, StreamPolicy, open_stream
from fastgw.proto.sse import SSEDecoder, encode_data
from fastgw.scan.scanner import find_spans
from tests.support.sse_streams import PII, WORDS, pii_policy, split_text

policy = pii_policy


def _ctx() -> RequestContext:
    return RequestContext("t", "POST", "/v1/chat/completions", [])


def _chunk(choices: list[dict], usage: object = "absent") -> dict:
    obj: dict = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": choices}
    if usage != "absent":
        obj["usage"] = usage
    return obj


def _choice(idx: int, delta: dict, finish: str | None = None) -> dict:
    return {"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}


@st.composite
def chat_objects(draw: st.DrawFn) -> tuple[str, list[dict]]:
    """A chat stream as chunk dicts: prose with PII as content, as tool-call arguments (JSON source), or as two
    interleaved choices; optionally the usage chunk at the end."""
    parts = []
    for _ in range(draw(st.integers(1, 10))):
        parts.append(draw(st.sampled_from(PII)) if draw(st.integers(0, 3)) == 0 else draw(st.sampled_from(WORDS)))
        parts.append(draw(st.sampled_from([" ", ", ", "\n", ""])))
    text = "".join(parts)
    mode = draw(st.sampled_from(["content", "tool", "choices"]))
    objs = [_chunk([_choice(0, {"role": "assistant", "content": ""})])]
    if mode == "content":
        objs += [_chunk([_choice(0, {"content": p})]) for p in split_text(draw, text)]
        objs.append(_chunk([_choice(0, {}, "stop")]))
    elif mode == "tool":
        source = orjson.dumps({"note": text}).decode()  # JSON source: escapes (\n) inside the arguments
        objs.append(_chunk([_choice(0, {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                        "function": {"name": "send", "arguments": ""}}]})]))
        objs += [_chunk([_choice(0, {"tool_calls": [{"index": 0, "function": {"arguments": p}}]})])
                 for p in split_text(draw, source)]
        objs.append(_chunk([_choice(0, {}, "tool_calls")]))
    else:
        a, b = split_text(draw, text), split_text(draw, text[::-1])
        for i in range(max(len(a), len(b))):
            objs += [_chunk([_choice(0, {"content": a[i]})])] if i < len(a) else []
            objs += [_chunk([_choice(1, {"content": b[i]})])] if i < len(b) else []
        objs.append(_chunk([_choice(0, {}, "stop"), _choice(1, {}, "stop")]))
    if draw(st.booleans()):
        objs.append(_chunk([], {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}))
    return text, objs


def _wire(objs: list[dict]) -> bytes:
    return b"".join(encode_data(orjson.dumps(o)) for o in objs) + DONE


def _reads(wire: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(c for c in cuts if 0 < c < len(wire))), len(wire)]
    return [wire[a:b] for a, b in zip(edges, edges[1:])]


def _drive(sp: StreamPolicy, steps: list[list]) -> tuple[list[list[bytes]], GatewayError | None]:
    """Push each read's events (an SSEEvent, a dict, or None for the end), release after each read, then finish.
    Returns what each release gave (the grouping is compared too) and the blocking error."""
    out: list[list[bytes]] = []
    try:
        for step in steps:
            for item in step:
                if item is None:
                    sp.push_done()
                elif isinstance(item, dict):
                    sp.push_chunk(item)
                else:
                    sp.push(item)
            out.append(sp.release())
        out.append(sp.finish())
    except StreamBlocked as b:
        out.append([b"PREFIX", *b.prefix])
        return out, b.error
    finally:
        sp.close()
    return out, None


def _both(action: str, objs: list[dict], cuts: list[int], strip_usage: bool = False) -> tuple[tuple, tuple]:
    """The same stream through the SSE path (wire cut at `cuts`) and the dict path (the same events per read)."""
    wire = _wire(objs)
    dec = SSEDecoder()
    sse_steps: list[list] = []
    dict_steps: list[list] = []
    dicts = iter(copy.deepcopy(objs))  # the policy owns (and may change) the dicts it is handed
    for r in _reads(wire, cuts):
        evs = dec.feed(r)
        sse_steps.append(list(evs))
        dict_steps.append([None if e.data == "[DONE]" else next(dicts) for e in evs])
    results = []
    for steps in (sse_steps, dict_steps):
        ctx = _ctx()
        sp = open_stream([policy(action)], Findings([]), ctx)
        sp.strip_usage = strip_usage
        out, err = _drive(sp, steps)
        results.append((out, None if err is None else err.body(), ctx.texts, ctx.finish, ctx.usage, ctx.events))
    return results[0], results[1]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_objects(), st.data())
def test_dicts_and_sse_give_identical_output_any_split(s, data):
    _text, objs = s
    wire_len = len(_wire(objs))
    cuts = data.draw(st.one_of(st.lists(st.integers(0, wire_len), max_size=30),
                               st.integers(1, 9).map(lambda k: list(range(0, wire_len, k)))), "cuts")
    strip = data.draw(st.booleans(), "strip_usage")
    for action in ("redact", "block"):
        via_sse, via_dicts = _both(action, objs, cuts, strip)
        assert via_dicts == via_sse


def test_identical_under_redaction_and_block_with_pii_split_across_chunks():
    pieces = ["Write to joe.bl", "oggs@exa", "mple.com or call ", "(212) 555-", "0147 now"]
    objs = ([_chunk([_choice(0, {"role": "assistant", "content": ""})])]
            + [_chunk([_choice(0, {"content": p})]) for p in pieces] + [_chunk([_choice(0, {}, "stop")])])
    text = "".join(pieces)
    pol = policy("redact")
    data = text.encode()
    expected = pol.redact(data, find_spans(pol.db, data)).decode()
    for cuts in ([], list(range(0, len(_wire(objs)), 1)), list(range(0, len(_wire(objs)), 13))):
        (out, _, texts, *_rest), via_dicts = _both("redact", objs, cuts)
        assert via_dicts[0] == out
        assert texts[0] == expected and "joe.bloggs" not in expected
        (bout, err, *_rest), bdicts = _both("block", objs, cuts)
        assert bdicts[0] == bout and bdicts[1] == err and err is not None
        assert b"joe" not in b"".join(b for step in bout for b in step)


_dumps, _loads = orjson.dumps, orjson.loads


class _Counting:
    """Stands in for orjson's dumps and loads (what the stream policy calls them through, compiled or not):
    counts encodes and decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dumps_n = 0
        self.loads_n = 0
        monkeypatch.setattr(orjson, "dumps", self.dumps)
        monkeypatch.setattr(orjson, "loads", self.loads)

    def dumps(self, obj: object) -> bytes:
        self.dumps_n += 1
        return _dumps(obj)

    def loads(self, data: str | bytes) -> object:
        self.loads_n += 1
        return _loads(data)


def test_a_dict_is_encoded_once_when_released_and_never_decoded(monkeypatch: pytest.MonkeyPatch):
    counting = _Counting(monkeypatch)
    objs = ([_chunk([_choice(0, {"content": p})]) for p in ["hello ", "mail joe@exa", "mple.com", " bye"]]
            + [_chunk([_choice(0, {}, "stop")])])
    sp = open_stream([policy("redact")], Findings([]), _ctx())
    for o in objs[:2]:
        sp.push_chunk(o)
    assert counting.dumps_n == 0  # nothing is encoded before release
    out = sp.release()
    assert out == [b"data: " + _dumps(objs[0]) + b"\n\n"]  # untouched: data: + orjson.dumps + \n\n
    assert counting.dumps_n == 1
    for o in objs[2:]:
        sp.push_chunk(o)
    sp.push_done()
    out += sp.finish()
    sp.close()
    assert counting.dumps_n == len(objs)  # one encode per chunk, changed or not
    assert counting.loads_n == 0  # a dict is never decoded
    assert out[-1] == DONE
    assert _loads(out[1][6:])["choices"][0]["delta"]["content"] == "mail [REDACTED:EMAIL]"
    assert _loads(out[2][6:])["choices"][0]["delta"]["content"] == ""


def test_sse_untouched_events_are_not_encoded_changed_ones_once(monkeypatch: pytest.MonkeyPatch):
    objs = [_chunk([_choice(0, {"content": p})]) for p in ["hello ", "mail joe@exa", "mple.com", " bye"]]
    wire = _wire(objs)
    counting = _Counting(monkeypatch)
    sp = open_stream([policy("redact")], Findings([]), _ctx())
    for ev in SSEDecoder().feed(wire):
        sp.push(ev)
    out = sp.release() + sp.finish()
    sp.close()
    assert out[0] == encode_data(_dumps(objs[0])) and out[-1] == DONE
    assert (counting.loads_n, counting.dumps_n) == (2, 2)  # the two events the e-mail touches


def test_usage_chunk_is_taken_out_when_the_gateway_asked_for_it():
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    objs = [_chunk([_choice(0, {"content": "hi"}, "stop")], None), _chunk([], usage)]
    for strip in (False, True):
        ctx = _ctx()
        sp = open_stream([policy("redact")], Findings([]), ctx)
        sp.strip_usage = strip
        for o in copy.deepcopy(objs):
            sp.push_chunk(o)
        sp.push_done()
        out = sp.finish()
        sp.close()
        assert ctx.usage == usage and ctx.texts == {0: "hi"} and ctx.finish == {0: "stop"}
        assert len(out) == (2 if strip else 3) and out[-1] == DONE


@pytest.mark.parametrize("bad", [
    {"choices": [{"index": 0, "delta": {"content": 5}}]},
    {"choices": "nope"},
    {"choices": [{"index": "0", "delta": {"content": "x"}}]},
])
def test_a_chunk_the_policy_cannot_read_is_refused(bad: dict):
    sp = open_stream([policy("redact")], Findings([]), _ctx())
    with pytest.raises(GatewayError) as e:
        sp.push_chunk(bad)
    assert e.value.status == 502 and e.value.code == "upstream_protocol_error"
    sp.close()
