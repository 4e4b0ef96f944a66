"""The quality-scorer: each heuristic on crafted answers, the aggregate as their minimum, the block decision."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.config import QualityScorer, QualityThresholds
from fastgw.policy.quality import QualityPolicy, score_answer, wants_json

GOOD = "Paris is the capital of France. It has been the country's capital since the tenth century."


def parts(text: str, finish: str | None = "stop", json_: bool = False) -> dict[str, float]:
    return score_answer(text, finish, json_)[1]


# ---- components ------------------------------------------------------------------------------

def test_good_answer_scores_one_everywhere():
    agg, p = score_answer(GOOD, "stop", False)
    assert agg == 1.0
    assert p == {"non_empty": 1.0, "complete": 1.0, "not_refusal": 1.0, "repetition": 1.0}


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n"])
def test_non_empty(text: str):
    assert parts(text)["non_empty"] == 0.0
    assert score_answer(text, "stop", False)[0] == 0.0
    assert parts("ok")["non_empty"] == 1.0


def test_tool_call_answer_may_be_empty():
    agg, p = score_answer("", "tool_calls", True)
    assert p["non_empty"] == 1.0 and "valid_json" not in p and agg == 1.0
    assert parts("", "function_call")["non_empty"] == 1.0
    assert parts("", "stop")["non_empty"] == 0.0


@pytest.mark.parametrize("finish,expected", [
    ("stop", 1.0), ("tool_calls", 1.0), (None, 1.0), ("function_call", 1.0),
    ("length", 0.5), ("content_filter", 0.2), ("something_new", 1.0),
])
def test_complete(finish: str | None, expected: float):
    assert parts(GOOD, finish)["complete"] == expected


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, but I can’t assist with that request.",  # typographic apostrophes
    "I am sorry, but I cannot provide that information.",
    "I'm really sorry, but I'm unable to do that.",
    "I cannot help with creating malware.",
    "I can't assist with that.",
    "I won't write that.",
    "I'm not able to help with this request.",
    "As an AI language model, I do not have personal opinions.",
    "As an AI, I can't browse the internet.",
    "Sure? No. I must decline this request.",
    "Thanks for asking. " + "x" * 150 + " I'm sorry, but I cannot do that.",  # starts within the first 200
])
def test_refusals(text: str):
    assert parts(text)["not_refusal"] == 0.3


@pytest.mark.parametrize("text", [
    GOOD,
    "I can help with that! Here is the code.",
    "Sorry for the delay. Here is the summary you asked for.",
    "The function cannot help with parsing dates; use dateutil instead.",
    "x" * 210 + " I'm sorry, but I cannot do that.",  # starts after the first 200 characters
    # A long answer that opens with a caveat and then helps is not a refusal.
    "I'm sorry, but I can't give legal advice. That said, here is how leases usually work: " + "detail " * 60,
])
def test_not_refusals(text: str):
    assert parts(text)["not_refusal"] == 1.0


def test_refusal_length_boundary():
    base = "I'm sorry, but I can't help with that."
    assert parts(base + " " + "z" * (399 - len(base) - 1))["not_refusal"] == 0.3  # 399 characters
    assert parts(base + " " + "z" * (400 - len(base) - 1))["not_refusal"] == 1.0  # 400 characters
    assert parts("   \n" + base + "   \n" * 200)["not_refusal"] == 0.3  # length counts the stripped answer


def test_repetition():
    # 7 words: too short to judge.
    assert parts("the the the the the the the")["repetition"] == 1.0
    # 8 identical words: 5 four-grams, 1 distinct.
    assert parts("the " * 8)["repetition"] == pytest.approx(1 / 5)
    # A loop: the same sentence ten times.
    loop = "I will now answer the question. " * 10
    assert parts(loop)["repetition"] < 0.2
    # Case and punctuation do not hide a repeat.
    assert parts("One two three four. ONE, two; three four!")["repetition"] == pytest.approx(4 / 5)
    # No repeated 4-gram at all.
    assert parts("a b c d e f g h i j")["repetition"] == 1.0


def test_valid_json():
    assert parts('{"a": 1}', json_=True)["valid_json"] == 1.0
    assert parts('  \n[1, 2, 3]\n ', json_=True)["valid_json"] == 1.0
    assert parts('{"a": 1', json_=True)["valid_json"] == 0.0
    assert parts("Here you go: {\"a\": 1}", json_=True)["valid_json"] == 0.0
    assert parts("", json_=True)["valid_json"] == 0.0
    assert "valid_json" not in parts('{"a": 1}')  # only when the request asked for JSON


@pytest.mark.parametrize("text", [
    '```json\n{"a": 1}\n```',
    '```JSON\n{"a": [1, 2]}\n```\n',
    '\n```\n{"a": 1}\n```',
    '```json\n{\n  "a": 1\n}```',
    '```json\r\n{"a": 1}\r\n```',
])
def test_fenced_json_is_accepted(text: str):
    assert parts(text, json_=True)["valid_json"] == 1.0


@pytest.mark.parametrize("text", [
    '```json\n{"a": 1\n```',                                 # body does not parse
    'Here it is:\n```json\n{"a": 1}\n```',                  # prose around the block
    '```json\n{"a": 1}\n```\n```json\n{"b": 2}\n```',       # two blocks
    '```python\n{"a": 1}\n```',                             # not JSON-tagged
    '```json {"a": 1}```',                                  # no newline after the opening fence
])
def test_fenced_json_rejected(text: str):
    assert parts(text, json_=True)["valid_json"] == 0.0


def test_deeply_nested_json_is_invalid_not_an_error():
    assert parts("[" * 100_000 + "]" * 100_000, json_=True)["valid_json"] in (0.0, 1.0)


# ---- aggregate ------------------------------------------------------------------------------

def test_aggregate_is_the_minimum():
    agg, p = score_answer("I'm sorry, but I can't help with that.", "length", True)
    assert p == {"non_empty": 1.0, "complete": 0.5, "not_refusal": 0.3, "repetition": 1.0, "valid_json": 0.0}
    assert agg == 0.0 == min(p.values())
    agg, p = score_answer(GOOD, "length", False)
    assert agg == 0.5


def test_wants_json():
    assert wants_json({"response_format": {"type": "json_object"}})
    assert wants_json({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}})
    assert not wants_json({"response_format": {"type": "text"}})
    assert not wants_json({"response_format": "json_object"})
    assert not wants_json({})
    assert not wants_json(None)


# ---- the policy ------------------------------------------------------------------------------

def policy(action: str = "block", min_aggregate: float = 0.7) -> QualityPolicy:
    return QualityPolicy(QualityScorer(action=action, thresholds=QualityThresholds(min_aggregate=min_aggregate)))


def test_policy_blocks_below_the_threshold():
    p = policy()
    assert p.evaluate({0: GOOD}, {0: "stop"}, False) == (False, 1.0, {0: {
        "aggregate": 1.0, "non_empty": 1.0, "complete": 1.0, "not_refusal": 1.0, "repetition": 1.0}})
    blocked, agg, _ = p.evaluate({0: GOOD}, {0: "length"}, False)
    assert blocked and agg == 0.5
    blocked, agg, _ = p.evaluate({0: ""}, {0: "stop"}, False)
    assert blocked and agg == 0.0


def test_threshold_is_exclusive():
    blocked, agg, _ = policy(min_aggregate=0.5).evaluate({0: GOOD}, {0: "length"}, False)
    assert not blocked and agg == 0.5  # blocked only when aggregate < min_aggregate


def test_observe_never_blocks():
    assert policy("observe").evaluate({0: ""}, {0: "stop"}, False)[:2] == (False, 0.0)


def test_multi_choice_takes_the_worst():
    p = policy()
    blocked, agg, details = p.evaluate({0: GOOD, 1: GOOD, 2: "I can't help with that."},
                                       {0: "stop", 1: "length", 2: "stop"}, False)
    assert blocked and agg == 0.3
    assert [details[i]["aggregate"] for i in (0, 1, 2)] == [1.0, 0.5, 0.3]


def test_multi_choice_json():
    blocked, agg, details = policy().evaluate({0: '{"ok": true}', 1: "```json\n[1]\n```"}, {0: "stop", 1: "stop"}, True)
    assert not blocked and agg == 1.0 and details[1]["valid_json"] == 1.0
    blocked, agg, _ = policy().evaluate({0: '{"ok": true}', 1: "not json"}, {0: "stop", 1: "stop"}, True)
    assert blocked and agg == 0.0


def test_choices_from_texts_or_finish():
    p = policy()
    # Choice 1 ended in a tool call and has no text: it still counts, and is fine.
    blocked, agg, details = p.evaluate({0: GOOD}, {0: "stop", 1: "tool_calls"}, False)
    assert not blocked and agg == 1.0 and set(details) == {0, 1}
    # A text with no finish reason seen (provider did not say): complete.
    assert p.evaluate({0: GOOD}, {}, False)[:2] == (False, 1.0)
    # No choice at all is no answer.
    assert p.evaluate({}, {}, False) == (True, 0.0, {})


# ---- properties -------------------------------------------------------------------------------

_FINISH = st.one_of(st.none(), st.sampled_from(["stop", "length", "tool_calls", "content_filter", "function_call"]),
                    st.text(max_size=10))
_TEXT = st.one_of(st.text(max_size=600),
                  st.lists(st.sampled_from(["the", "a", "I", "can't", "help", "sorry,", "but", "```json\n", "{", "}",
                                            "\n```", "As", "an", "AI", "\n", " "]), max_size=120).map(" ".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT, finish=_FINISH, json_=st.booleans())
def test_scores_stay_in_unit_interval(text: str, finish: str | None, json_: bool):
    agg, p = score_answer(text, finish, json_)
    assert all(0.0 <= v <= 1.0 for v in p.values())
    assert agg == min(p.values())
    assert ("valid_json" in p) == (json_ and not (finish in ("tool_calls", "function_call") and not text.strip()))
