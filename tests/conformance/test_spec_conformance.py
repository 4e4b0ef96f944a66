"""Every JSON object the gateway writes, judged by the specs its clients are written against (issue 17).

Each case (`cases.py`: every provider × endpoint × scenario × streamed or not, and the gateway's own refusals) is
sent raw to a real gateway in front of the providers' mocks; the answer's status is checked, then each object —
the body, or each SSE event — is judged by its schema (`judges.py`: the vendored OpenAI OpenAPI spec, the
`anthropic` SDK's types on `/v1/messages`). Zero violations is the bar.
"""

from __future__ import annotations

import pytest

from tests.conformance import openapi
from tests.conformance.cases import Case, cases
from tests.conformance.gateways import Gateways
from tests.conformance.judges import DIALECTS, JUDGED, dialect_of, judge
from tests.conformance.wire import exchange, sse_objects

CASES = [pytest.param(c, id=c.id) for c in cases()]


@pytest.mark.parametrize("case", CASES)
def test_every_object_conforms(gateways: Gateways, case: Case) -> None:
    gw = gateways.get(case.gateway)
    ex = exchange(gw.base, case.method, case.path, case.body, case.headers)
    assert ex.status == case.status, (ex.status, ex.raw[:300])
    assert ex.objects, ex.raw[:300]
    dialect = dialect_of(case.path)
    problems = []
    errors = 0
    for i, (event, obj) in enumerate(ex.objects):
        name, found = judge(dialect, ex.status, ex.streamed, event, obj, case.schema, case.asked_usage)
        JUDGED[name] += 1
        errors += name.endswith("ErrorResponse") and ex.streamed
        problems += [f"object {i} ({event or 'body'}): {p}\n    {str(obj)[:400]}" for p in found]
    assert not problems, "\n".join(problems)
    if ex.streamed:
        assert ex.status == 200
        if case.stream_error is not None:
            assert bool(errors) == case.stream_error, ex.raw[-600:]
        if not dialect.anthropic:
            assert ex.done, ex.raw[-300:]  # every OpenAI stream ends with [DONE], errors included


# ---- the judges judge ----------------------------------------------------------------------------------------------

CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": None, "finish_reason": None}]}


def test_the_spec_catches_what_issue_17_found() -> None:
    assert openapi.violations("CreateChatCompletionStreamResponse", CHUNK) == []
    # nullable (OpenAPI 3.0) is honoured: usage null on a chat chunk is allowed ...
    assert openapi.violations("CreateChatCompletionStreamResponse", {**CHUNK, "usage": None}) == []
    # ... system_fingerprint null is not, nor usage null on a legacy completion, nor an error without param/code
    assert openapi.violations("CreateChatCompletionStreamResponse", {**CHUNK, "system_fingerprint": None})
    completion = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
                  "choices": [{"text": "a", "index": 0, "logprobs": None, "finish_reason": None}]}
    assert openapi.violations("CreateCompletionResponse+streamed", completion) == []
    assert openapi.violations("CreateCompletionResponse+streamed", {**completion, "usage": None})
    assert openapi.violations("CreateCompletionResponse+streamed+usage", {**completion, "usage": None}) == []
    assert openapi.violations("CreateCompletionResponse", completion)  # the spec's own: finish_reason a string
    assert openapi.violations("ErrorResponse", {"error": {"message": "m", "type": "t"}})
    assert openapi.violations("ErrorResponse", {"error": {"message": "m", "type": "t", "param": None,
                                                          "code": None}}) == []


def test_every_dialect_names_schemas_the_judges_have() -> None:
    import anthropic.types

    known = openapi.schema_names()
    for path, d in DIALECTS.items():
        for name in (d.body, d.event, d.event_usage, d.error):
            if name is not None:
                assert (hasattr(anthropic.types, name) if d.anthropic else name in known), (path, name)
    for case in cases():
        assert case.schema is None or case.schema in known, case.id


def test_without_nullable_keeps_null_where_the_spec_says() -> None:
    schema = {"type": "string", "enum": ["a"], "nullable": True, "properties": {"nullable": {"type": "string"}}}
    assert openapi.without_nullable(schema) == {
        "anyOf": [{"type": "string", "enum": ["a"], "properties": {"nullable": {"type": "string"}}},
                  {"type": "null"}]}


def test_anthropic_judge_is_strict() -> None:
    messages = DIALECTS["/v1/messages"]
    bad_type = {"type": "error", "error": {"type": "upstream_error", "message": "m"}}
    assert judge(messages, 502, False, "", bad_type)[1]
    assert judge(messages, 529, False, "", {"type": "error", "error": {"type": "overloaded_error",
                                                                        "message": "m"}})[1] == []
    start = {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "x",
                                                   "content": [], "stop_reason": None, "stop_sequence": None,
                                                   "usage": {"input_tokens": 1, "output_tokens": 1}}}
    assert judge(messages, 200, True, "message_start", start)[1] == []
    assert judge(messages, 200, True, "message_delta", start)[1]  # the event name must be the data's type
    # strict: a number where a string belongs is a violation, not coerced
    assert judge(messages, 200, True, "message_start", {**start, "message": {**start["message"], "id": 7}})[1]


def test_sse_objects_reads_events_names_and_done() -> None:
    raw = b'event: ping\ndata: {"type": "ping"}\n\n: comment\n\ndata: {"a":1}\r\n\r\ndata: [DONE]\n\n'
    assert sse_objects(raw) == ([("ping", {"type": "ping"}), ("", {"a": 1})], True)
