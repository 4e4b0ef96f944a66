"""`ctx.texts` after a long streamed answer: the released text per choice is collected in parts and joined only
when read (end of stream, buffered judge, client gone). Whatever the collection does, the text read must be the
whole answer as the client got it (redacted), per choice, for every dialect."""

from __future__ import annotations

import orjson

from fastgw.config import PiiDetector
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.pii import PiiPolicy
from fastgw.policy.stream import StreamBlocked, StreamPolicy, open_stream
from fastgw.api.errors import GatewayError
from fastgw.api.sse import DONE
from fastgw.proto.sse import SSEDecoder, encode_data, encode_event
from fastgw.scan.scanner import find_spans

N = 5_000
EMAIL = "joe.bloggs@example.com"

_POLICIES: dict[str, PiiPolicy] = {}


def _policy(action: str = "redact", mode: str = "realtime") -> PiiPolicy:
    key = action + mode
    if key not in _POLICIES:
        p = PiiPolicy(PiiDetector(action=action, streaming_mode=mode))
        p.allocate_scratch()
        _POLICIES[key] = p
    return _POLICIES[key]


def _ctx(path: str = "/v1/chat/completions") -> RequestContext:
    return RequestContext("t", "POST", path, [])


def _pieces(n: int, tag: str = "") -> list[str]:
    """n small pieces of prose; every 500th piece starts an e-mail address that ends in the next piece."""
    out = []
    for i in range(n):
        if i % 500 == 250:
            out.append(f" mail {EMAIL[:7]}")
        elif i % 500 == 251:
            out.append(f"{EMAIL[7:]} now")
        else:
            out.append(f" {tag}w{i}")
    return out


def _expected(text: str) -> str:
    pol = _policy()
    data = text.encode()
    return pol.redact(data, find_spans(pol.db, data)).decode()


def _chat(content: str | None = None, idx: int = 0, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict = {"role": "assistant", "content": ""} if role else ({} if content is None else {"content": content})
    return encode_data(orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                     "model": "m", "choices": [{"index": idx, "delta": delta, "logprobs": None,
                                                                "finish_reason": finish}]}))


def _drive(sp: StreamPolicy, wire: bytes, every: int = 1) -> list[bytes]:
    """Push the events, releasing after every `every` events (as the relay does after each upstream read)."""
    out: list[bytes] = []
    for i, ev in enumerate(SSEDecoder().feed(wire)):
        sp.push(ev)
        if i % every == 0:
            out += sp.release()
    out += sp.finish()
    return out


def _chat_client_texts(out: list[bytes]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for e in SSEDecoder().feed(b"".join(out)):
        if e.data and e.data != "[DONE]":
            for ch in orjson.loads(e.data)["choices"]:
                texts[ch["index"]] = texts.get(ch["index"], "") + (ch["delta"].get("content") or "")
    return texts


def test_chat_long_stream_texts_is_the_whole_redacted_answer():
    pieces = _pieces(N)
    wire = b"".join([_chat(role=True)] + [_chat(p) for p in pieces] + [_chat(finish="stop"), DONE])
    ctx = _ctx()
    sp = open_stream([_policy()], Findings([]), ctx)
    out = _drive(sp, wire)
    sp.close()
    expected = _expected("".join(pieces))
    assert EMAIL not in expected and expected.count("[REDACTED:EMAIL]") == N // 500
    assert ctx.texts[0] == expected
    assert _chat_client_texts(out)[0] == expected  # the same text the client got
    assert ctx.events == N + 2


def test_chat_two_interleaved_choices_each_get_their_own_text():
    a, b = _pieces(N, "a"), _pieces(N, "b")
    events = [_chat(role=True, idx=0), _chat(role=True, idx=1)]
    for pa, pb in zip(a, b):
        events += [_chat(pa, idx=0), _chat(pb, idx=1)]
    events += [_chat(finish="stop", idx=0), _chat(finish="stop", idx=1), DONE]
    ctx = _ctx()
    sp = open_stream([_policy()], Findings([]), ctx)
    out = _drive(sp, b"".join(events), every=7)
    sp.close()
    assert ctx.texts == {0: _expected("".join(a)), 1: _expected("".join(b))}
    assert _chat_client_texts(out) == ctx.texts


def test_chat_two_choices_in_one_event():
    a, b = _pieces(N, "a"), _pieces(N, "b")
    events = []
    for pa, pb in zip(a, b):
        events.append(encode_data(orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                                                "model": "m", "choices": [
                                                    {"index": 1, "delta": {"content": pb}, "finish_reason": None},
                                                    {"index": 0, "delta": {"content": pa}, "finish_reason": None}]})))
    events.append(DONE)
    ctx = _ctx()
    sp = open_stream([_policy()], Findings([]), ctx)
    _drive(sp, b"".join(events))
    sp.close()
    assert ctx.texts == {0: _expected("".join(a)), 1: _expected("".join(b))}


def test_client_gone_mid_stream_texts_is_what_was_released():
    pieces = _pieces(N)
    wire = b"".join([_chat(role=True)] + [_chat(p) for p in pieces] + [_chat(finish="stop"), DONE])
    ctx = _ctx()
    sp = open_stream([_policy()], Findings([]), ctx)
    out: list[bytes] = []
    for ev in SSEDecoder().feed(wire)[:N // 2]:
        sp.push(ev)
        out += sp.release()
    sp.close()  # the client left: what it got is what the record says
    released = _chat_client_texts(out)[0]
    assert len(released) > 1000
    assert ctx.texts[0] == released
    assert _expected("".join(pieces)).startswith(released)


def _responses_wire(pieces: list[str]) -> bytes:
    seq = 0
    out = []

    def send(kind: str, **fields) -> None:
        nonlocal seq
        out.append(encode_event(orjson.dumps({"type": kind, **fields, "sequence_number": seq}), event=kind))
        seq += 1

    text = "".join(pieces)
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [part]}
    send("response.created", response={"id": "resp_1", "status": "in_progress", "output": []})
    send("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
    send("response.content_part.added", item_id="msg_1", output_index=0, content_index=0,
         part={"type": "output_text", "text": "", "annotations": []})
    for p in pieces:
        send("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=p, logprobs=[])
    send("response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text=text, logprobs=[])
    send("response.content_part.done", item_id="msg_1", output_index=0, content_index=0, part=part)
    send("response.output_item.done", output_index=0, item=item)
    send("response.completed", response={"id": "resp_1", "status": "completed", "output": [item]})
    return b"".join(out)


def test_responses_long_stream_texts_and_whole_text_events():
    pieces = _pieces(N)
    ctx = _ctx("/v1/responses")
    sp = open_stream([_policy()], Findings([]), ctx, dialect="responses")
    out = _drive(sp, _responses_wire(pieces), every=3)
    sp.close()
    expected = _expected("".join(pieces))
    assert ctx.texts[0] == expected
    events = [orjson.loads(e.data) for e in SSEDecoder().feed(b"".join(out))]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == expected
    # Events that repeat the whole text carry the text the client got, joined from every part.
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == expected
    completed = events[-1]
    assert completed["type"] == "response.completed"
    assert completed["response"]["output"][0]["content"][0]["text"] == expected
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_messages_long_stream_texts():
    pieces = _pieces(N)
    out = [encode_event(orjson.dumps({"type": "message_start", "message": {"id": "m", "content": []}}),
                        event="message_start"),
           encode_event(orjson.dumps({"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}), event="content_block_start")]
    for p in pieces:
        out.append(encode_event(orjson.dumps({"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": p}}),
                                event="content_block_delta"))
    out += [encode_event(orjson.dumps({"type": "content_block_stop", "index": 0}), event="content_block_stop"),
            encode_event(orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
                         event="message_delta"),
            encode_event(orjson.dumps({"type": "message_stop"}), event="message_stop")]
    ctx = _ctx("/v1/messages")
    sp = open_stream([_policy()], Findings([]), ctx, dialect="messages")
    _drive(sp, b"".join(out))
    sp.close()
    assert ctx.texts[0] == _expected("".join(pieces))


def test_buffered_judge_sees_the_whole_text():
    pieces = _pieces(N)
    wire = b"".join([_chat(role=True)] + [_chat(p) for p in pieces] + [_chat(finish="stop"), DONE])
    seen: list[str] = []
    ctx = _ctx()

    def judge(c: RequestContext) -> None:
        seen.append(c.texts.get(0, ""))

    sp = open_stream([_policy()], Findings([]), ctx, buffered=True, judge=judge)
    events = SSEDecoder().feed(wire)
    for ev in events[:-1]:
        sp.push(ev)
        assert sp.release() == []  # held whole until the end
    assert seen == []
    sp.push(events[-1])
    out = sp.release() + sp.finish()
    sp.close()
    expected = _expected("".join(pieces))
    assert seen and all(s == expected for s in seen)  # judged once the whole answer is known, and only then
    assert ctx.texts[0] == expected
    assert _chat_client_texts(out)[0] == expected


def test_buffered_judge_block_sees_the_whole_text():
    pieces = _pieces(N)
    wire = b"".join([_chat(p) for p in pieces] + [DONE])
    ctx = _ctx()
    seen: list[str] = []

    def judge(c: RequestContext) -> None:
        seen.append(c.texts[0])
        raise GatewayError("low quality", status=409, type="policy_violation", code="output_blocked")

    sp = open_stream([_policy()], Findings([]), ctx, buffered=True, judge=judge)
    try:
        _drive(sp, wire)
    except StreamBlocked as b:
        assert b.prefix == [] and b.error.code == "output_blocked"
    else:
        raise AssertionError("the judge's block did not end the stream")
    finally:
        sp.close()
    assert seen == [_expected("".join(pieces))]


def test_pieces_with_multibyte_text_join_exactly():
    pieces = [("caf\u00e9 \u65e5\u672c \U0001f600" if i % 3 else f" {i}") for i in range(N)]
    wire = b"".join([_chat(p) for p in pieces] + [DONE])
    ctx = _ctx()
    sp = open_stream([_policy()], Findings([]), ctx)
    _drive(sp, wire, every=11)
    sp.close()
    assert ctx.texts[0] == "".join(pieces)


def test_no_policy_texts_still_collected():
    """Observe-only chain: nothing held, nothing changed, texts still the whole answer."""
    pieces = _pieces(N)
    wire = b"".join([_chat(p) for p in pieces] + [DONE])
    ctx = _ctx()
    sp = open_stream([_policy("observe")], Findings([]), ctx)
    out = _drive(sp, wire)
    sp.close()
    assert b"".join(out) == wire
    assert ctx.texts[0] == "".join(pieces)
