"""Answers of many texts (issue 18: costs that stay flat as the work grows): an event's cost does not depend on how
many texts the answer opened before it, a finished text's scanners are freed at once, and an answer may open at
most MAX_STREAM_TEXTS texts (each holds a Hyperscan stream per policy until it ends)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from fastgw.api.errors import GatewayError
from fastgw.api.limits import MAX_STREAM_TEXTS
from fastgw.api.sse import DONE
from fastgw.policy.base import RequestContext
from fastgw.policy.findings import Findings
from fastgw.policy.stream import StreamPolicy, open_stream
from fastgw.proto.sse import SSEDecoder, SSEEvent, encode_data, encode_event
from tests.support.sse_streams import pii_policy


class _Watched(dict):
    """The policy's texts, counting every walk over all of them."""

    walks = 0

    def values(self):  # type: ignore[override]
        type(self).walks += 1
        return super().values()

    def items(self):  # type: ignore[override]
        type(self).walks += 1
        return super().items()

    def __iter__(self) -> Iterator:
        type(self).walks += 1
        return super().__iter__()


def _ctx(endpoint: str) -> RequestContext:
    ctx = RequestContext("r", "POST", "/v1/" + endpoint, [])
    ctx.endpoint = endpoint
    return ctx


def _policy(dialect: str, action: str = "redact") -> StreamPolicy:
    endpoint = {"chat": "chat/completions", "responses": "responses", "messages": "messages"}[dialect]
    sp = open_stream([pii_policy(action)], Findings([]), _ctx(endpoint), dialect=dialect)
    sp._texts = _Watched()  # type: ignore[assignment]
    _Watched.walks = 0
    return sp


def _chat_tool_calls(n: int, finish: bool = True) -> list[SSEEvent]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    objs = [{**base, "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": '{"q": 1}'}}]}}]}
        for i in range(n)]
    if finish:
        objs.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return SSEDecoder().feed(b"".join(encode_data(orjson.dumps(o)) for o in objs) + (DONE if finish else b""))


def _chat_choices(n: int) -> list[SSEEvent]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    objs = []
    for i in range(n):
        objs.append({**base, "choices": [{"index": i, "delta": {"content": f"answer {i} mail a{i}@example.com"}}]})
        objs.append({**base, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})
    return SSEDecoder().feed(b"".join(encode_data(orjson.dumps(o)) for o in objs) + DONE)


def _responses_items(n: int) -> list[SSEEvent]:
    objs: list[dict] = []
    for i in range(n):
        iid, seq, text = f"msg_{i}", 4 * i, f"item {i} mail a{i}@example.com"
        item = {"id": iid, "type": "message", "role": "assistant", "content": []}
        objs += [{"type": "response.output_item.added", "output_index": i, "item": item, "sequence_number": seq},
                 {"type": "response.output_text.delta", "item_id": iid, "output_index": i, "content_index": 0,
                  "delta": text, "sequence_number": seq + 1},
                 {"type": "response.output_text.done", "item_id": iid, "output_index": i, "content_index": 0,
                  "text": text, "sequence_number": seq + 2},
                 {"type": "response.output_item.done", "output_index": i, "sequence_number": seq + 3,
                  "item": {**item, "content": [{"type": "output_text", "text": text, "annotations": []}]}}]
    return SSEDecoder().feed(b"".join(encode_event(orjson.dumps(o), event=o["type"]) for o in objs))


def _messages_blocks(n: int) -> list[SSEEvent]:
    objs: list[dict] = []
    for i in range(n):
        objs += [{"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                 {"type": "content_block_delta", "index": i,
                  "delta": {"type": "text_delta", "text": f"block {i} mail a{i}@example.com"}},
                 {"type": "content_block_stop", "index": i}]
    return SSEDecoder().feed(b"".join(encode_event(orjson.dumps(o), event=o["type"]) for o in objs))


CASES = {"chat tool calls": ("chat", _chat_tool_calls), "chat choices": ("chat", _chat_choices),
         "responses items": ("responses", _responses_items), "messages blocks": ("messages", _messages_blocks)}


@pytest.mark.parametrize("case", list(CASES))
def test_no_event_walks_every_text_of_the_answer(case: str) -> None:
    """A release, a choice's finish, an item's or a block's end look only at the texts concerned: before, each
    release and each end walked all the answer's texts, so an event cost more the more texts came before it."""
    dialect, build = CASES[case]
    sp = _policy(dialect)
    events = build(300)
    body = [ev for ev in events if ev.data != "[DONE]"]  # the answer's end finishes all its texts: one walk, once
    released = 0
    for ev in body:
        sp.push(ev)
        released += len(sp.release())
    assert _Watched.walks == 0
    assert len(sp._texts) >= 300
    for ev in events[len(body):]:
        sp.push(ev)
    released += len(sp.finish())
    assert released == len(events)
    sp.close()


@pytest.mark.parametrize("case", ["chat choices", "responses items", "messages blocks"])
def test_a_finished_text_frees_its_scanners_at_once(case: str) -> None:
    """A text is final at its choice's finish, its item's done event, its block's stop: its Hyperscan streams are
    closed then, not at the answer's end, while the byte counts stay readable (each byte scanned once)."""
    dialect, build = CASES[case]
    sp = _policy(dialect)
    events = build(50)
    for ev in events:
        sp.push(ev)
        sp.release()
    texts = list(dict.values(sp._texts))
    assert len(texts) >= 50 and all(t.done and t.scanners == [] for t in texts)
    assert all(n > 0 for t in texts for n in t.scanned())
    out = b"".join(sp.finish())
    sp.close()
    assert b"example.com" not in out  # what was redacted stays redacted


def test_an_open_text_keeps_its_scanners_until_it_ends() -> None:
    sp = _policy("chat")
    for ev in _chat_tool_calls(5, finish=False):
        sp.push(ev)
        sp.release()
    texts = list(dict.values(sp._texts))
    assert texts and all(not t.done and len(t.scanners) == 1 for t in texts)
    sp.finish()
    assert all(t.done and t.scanners == [] for t in texts)
    sp.close()


@pytest.mark.parametrize("case", list(CASES))
def test_an_answer_opens_at_most_max_stream_texts(case: str) -> None:
    """Past MAX_STREAM_TEXTS texts the answer is refused as the upstream's protocol error (what came before it
    was released as usual); up to it, nothing changes."""
    dialect, build = CASES[case]
    per = 2 if case == "chat tool calls" else 1  # a tool call is two texts: its name and its arguments
    ok = _policy(dialect)
    for ev in build(MAX_STREAM_TEXTS // per):
        ok.push(ev)
        ok.release()
    ok.finish()
    ok.close()
    assert len(ok._texts) == MAX_STREAM_TEXTS

    sp = _policy(dialect)
    released = 0
    with pytest.raises(GatewayError) as e:
        for ev in build(MAX_STREAM_TEXTS // per + 1):
            sp.push(ev)
            released += len(sp.release())
    assert e.value.code == "upstream_protocol_error" and e.value.status == 502
    assert f"more than {MAX_STREAM_TEXTS} texts" in str(e.value)
    assert len(sp._texts) == MAX_STREAM_TEXTS
    # (A tool call's arguments hold their events back until the choice ends: JSON source may go on.)
    assert released > 0 or case == "chat tool calls"
    sp.close()


@pytest.mark.parametrize("dialect,event", [
    ("chat", {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": [0], "function": {"arguments": "{}"}}]}}]}),
    ("responses", {"type": "response.output_text.delta", "item_id": {"id": 1}, "content_index": 0, "delta": "hi"}),
    ("responses", {"type": "response.output_text.delta", "item_id": "m", "content_index": [0], "delta": "hi"}),
    ("messages", {"type": "content_block_delta", "index": [1], "delta": {"type": "text_delta", "text": "hi"}}),
])
def test_a_text_named_by_a_list_or_an_object_is_unreadable(dialect: str, event: dict) -> None:
    """An index or id the upstream sent as a list or an object names no text (it is no dict key): the event is
    the upstream's protocol error, not a policy failure (which logged a traceback and answered `policy_failed`)."""
    for structured in (False, True):
        sp = _policy(dialect)
        with pytest.raises(GatewayError) as e:
            if structured:
                sp.push_chunk(event)
            else:
                (ev,) = SSEDecoder().feed(encode_data(orjson.dumps(event)))
                sp.push(ev)
            sp.release()
        assert e.value.code == "upstream_protocol_error"
        sp.close()
