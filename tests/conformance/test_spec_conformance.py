"""Every JSON object the gateway writes, judged by the specs its clients are written against (issue 17).

Each case (`cases.py`: every provider × endpoint × scenario × streamed or not, and the gateway's own refusals) is
sent raw to a real gateway in front of the providers' mocks; the answer's status is checked, then each object —
the body, or each SSE event — is judged by its schema (`judges.py`: the vendored OpenAI OpenAPI spec, the
`anthropic` SDK's types on `/v1/messages`). Zero violations is the bar. A stream's shape is checked too: its end
(`[DONE]`, a terminal Responses event, `message_stop`, or the error event), the Responses `sequence_number`s
0, 1, 2, ..., and that a finish by length or a tool call is said as the client API says it (`meaning`).
"""

from __future__ import annotations

import pytest

from tests.conformance import openapi
from tests.conformance.cases import Case, cases
from tests.conformance.gateways import Gateways
from tests.conformance.judges import DIALECTS, JUDGED, STREAM_ERRORS, dialect_of, judge
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
        JUDGED[f"{case.path} {name}"] += 1
        errors += name in STREAM_ERRORS and ex.streamed
        problems += [f"object {i} ({event or 'body'}): {p}\n    {str(obj)[:400]}" for p in found]
    assert not problems, "\n".join(problems)
    if ex.streamed:
        assert ex.status == 200
        if case.stream_error is not None:
            assert bool(errors) == case.stream_error, ex.raw[-600:]
        # every OpenAI chat/completions stream ends with [DONE], errors included; the typed APIs send none
        assert ex.done == dialect.done, ex.raw[-300:]
        if dialect.sequenced:
            assert not (found := sequence([obj for _, obj in ex.objects])), found
    if ex.status == 200:
        assert not (found := meaning(case, [obj for _, obj in ex.objects], bool(errors))), found


def sequence(objects: list[dict]) -> list[str]:
    """A Responses stream's `sequence_number`s that are not 0, 1, 2, ... (the error event included)."""
    seqs = [o.get("sequence_number") for o in objects]
    return [] if seqs == list(range(len(seqs))) else [f"sequence_number {seqs}"]


def meaning(case: Case, objects: list[dict], failed: bool) -> list[str]:
    """What a 200 answer of the typed APIs says wrong: how it ends (a clean stream's last event is
    `response.completed`/`incomplete` or `message_stop`, a failed one's the error event), a finish by length
    (Responses `incomplete` with `max_output_tokens`, Messages `max_tokens`), a tool call (a `function_call` item,
    a `tool_use` block)."""
    last = objects[-1]
    if case.path == "/v1/responses":
        kinds = [o.get("type") for o in objects]
        if len(objects) > 1 or "type" in last:
            if failed:
                ok = kinds[-1] == "error"
            else:
                ok = kinds[-1] in ("response.completed", "response.incomplete")
            if not ok:
                return [f"the stream ends with {kinds[-1]!r}"]
            if failed:
                return []
            response = last["response"]
        else:
            response = last
        status = response["status"]
        reason = (response.get("incomplete_details") or {}).get("reason")
        if case.scenario == "length" and (status, reason) != ("incomplete", "max_output_tokens"):
            return [f"finish length answered status {status!r}, incomplete_details.reason {reason!r}"]
        if case.scenario and case.scenario != "length" and status != "completed":
            return [f"status {status!r}"]
        if case.scenario == "tools" and not any(i["type"] == "function_call" for i in response["output"]):
            return ["no function_call item"]
    elif case.path == "/v1/messages":
        if last.get("type") != "message":
            if failed:
                return [] if last.get("type") == "error" else [f"the stream ends with {last.get('type')!r}"]
            if last.get("type") != "message_stop":
                return [f"the stream ends with {last.get('type')!r}"]
            stop = next(o["delta"]["stop_reason"] for o in objects if o["type"] == "message_delta")
            blocks = [o["content_block"] for o in objects if o["type"] == "content_block_start"]
        else:
            stop, blocks = last["stop_reason"], last["content"]
        if case.scenario and (case.scenario == "length") != (stop == "max_tokens"):
            return [f"stop_reason {stop!r} for scenario {case.scenario!r}"]
        if case.scenario == "tools" and not any(b["type"] == "tool_use" for b in blocks):
            return ["no tool_use block"]
    return []


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


def test_the_responses_judge() -> None:
    responses = DIALECTS["/v1/responses"]
    delta = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0,
             "delta": "a", "logprobs": [], "sequence_number": 3}
    assert judge(responses, 200, True, "response.output_text.delta", delta) == ("ResponseTextDeltaEvent", [])
    assert judge(responses, 200, True, "message", delta)[1]  # the event name must be the data's type
    assert judge(responses, 200, True, "response.output_text.delta", {**delta, "delta": 1})[1]
    assert judge(responses, 200, True, "response.nonsense", {**delta, "type": "response.nonsense"})[1]
    error = {"type": "error", "code": "server_error", "message": "m", "param": None, "sequence_number": 4}
    assert judge(responses, 200, True, "error", error) == ("ResponseErrorEvent", [])
    assert judge(responses, 200, True, "error", {k: v for k, v in error.items() if k != "param"})[1]
    assert sequence([{"sequence_number": 0}, {"sequence_number": 1}]) == []
    assert sequence([{"sequence_number": 0}, {"sequence_number": 0}])  # the issue-17 cut: an error event at 0
    assert sequence([{"sequence_number": 1}])


def test_the_spec_patches_and_what_the_suite_found() -> None:
    body = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "error": None,
            "incomplete_details": None, "instructions": None, "model": "m", "tools": [], "output": [],
            "parallel_tool_calls": True, "metadata": {}, "tool_choice": "auto", "temperature": 1.0, "top_p": 1.0}
    # the spec's own response.created example: usage and user null (PATCHED)
    assert openapi.violations("Response", {**body, "usage": None, "user": None}) == []
    assert openapi.violations("Response", {**body, "user": 7})
    # a function tool echoed without `strict` (the Responses front did, issue 17)
    tool = {"type": "function", "name": "f", "parameters": None}
    assert openapi.violations("Response", {**body, "tools": [tool]})
    assert openapi.violations("Response", {**body, "tools": [{**tool, "strict": False}]}) == []


def test_count_tokens_judge_is_strict() -> None:
    count = DIALECTS["/v1/messages/count_tokens"]
    assert judge(count, 200, False, "", {"input_tokens": 5}) == ("anthropic.types.MessageTokensCount", [])
    assert judge(count, 200, False, "", {"input_tokens": "5"})[1]
    assert judge(count, 404, False, "", {"type": "error", "error": {"type": "not_found_error", "message": "m"}}
                 )[1] == []


def test_meaning_reads_what_the_answer_says() -> None:
    def case(path: str, scenario: str) -> Case:
        return Case("c", "plain", path, {}, scenario=scenario)

    def response(status: str, reason: str | None = None, output: list | None = None) -> dict:
        return {"status": status, "incomplete_details": {"reason": reason} if reason else None,
                "output": output or []}

    assert meaning(case("/v1/responses", "length"), [response("incomplete", "max_output_tokens")], False) == []
    assert meaning(case("/v1/responses", "length"), [response("completed")], False)
    assert meaning(case("/v1/responses", "tools"), [response("completed")], False)
    assert meaning(case("/v1/responses", "tools"), [response("completed", output=[{"type": "function_call"}])],
                   False) == []
    created = {"type": "response.created", "response": response("in_progress")}
    assert meaning(case("/v1/responses", "text"), [created], False)  # a stream without its terminal event
    assert meaning(case("/v1/responses", "text"), [created, {"type": "error"}], True) == []
    message = {"type": "message", "stop_reason": "end_turn", "content": [{"type": "text"}]}
    assert meaning(case("/v1/messages", "text"), [message], False) == []
    assert meaning(case("/v1/messages", "length"), [message], False)
    assert meaning(case("/v1/messages", "tools"), [{**message, "stop_reason": "tool_use"}], False)
    delta = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}
    assert meaning(case("/v1/messages", "length"), [delta, {"type": "message_stop"}], False) == []
    assert meaning(case("/v1/messages", "length"), [delta], False)  # no message_stop
