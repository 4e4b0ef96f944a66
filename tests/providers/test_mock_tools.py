"""The mock's tool-call rules and argument samples (`fastgw.providers.mock_tools`), without a gateway."""

from __future__ import annotations

import json

import pytest

from fastgw.providers import mock_tools
from fastgw.providers.mock_tools import MAX_QUOTED, MAX_VALUES, plan_calls, tool_result_text


def _fn(name: str, params: dict | None = None) -> dict:
    fn: dict = {"name": name}
    if params is not None:
        fn["parameters"] = params
    return {"type": "function", "function": fn}


def _args(params: dict, said: str = "use f", name: str = "f") -> dict:
    calls = plan_calls({"messages": [{"role": "user", "content": said}], "tools": [_fn(name, params)],
                        "tool_choice": "required"})
    assert calls is not None and calls[0][0] == name
    return json.loads(calls[0][1])


def _obj(props: dict, required: list[str] | None = None, **extra: object) -> dict:
    out: dict = {"type": "object", "properties": props, **extra}
    if required is not None:
        out["required"] = required
    return out


# ---- which calls ---------------------------------------------------------------------------------


def _plan(said: str, tools: list[dict], **kw: object) -> list[str] | None:
    calls = plan_calls({"messages": [{"role": "user", "content": said}], "tools": tools, **kw})
    return None if calls is None else [n for n, _ in calls]


def test_names_count_as_whole_words_in_the_order_said() -> None:
    tools = [_fn("a_b"), _fn("c-d"), _fn("e")]
    assert _plan("first c-d then a_b", tools) == ["c-d", "a_b"]
    assert _plan("xa_b, c-dx and e2", tools) is None
    assert _plan("e", tools) == ["e"]
    assert _plan("e a_b", tools, parallel_tool_calls=False) == ["e"]


def test_tool_choice_rules() -> None:
    tools = [_fn("a"), _fn("b")]
    assert _plan("nothing named", tools, tool_choice="required") == ["a"]
    assert _plan("say b", tools, tool_choice="required") == ["b"]
    assert _plan("say a", tools, tool_choice={"type": "function", "function": {"name": "b"}}) == ["b"]
    assert _plan("say a", tools, tool_choice="none") is None
    assert _plan("say a", [{"type": "custom", "custom": {"name": "a"}}]) is None  # only functions are called


def test_after_a_tool_answer_auto_speaks_and_a_forced_choice_calls_again() -> None:
    msgs = [{"role": "user", "content": "use a"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                  "function": {"name": "a", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    assert plan_calls({"messages": msgs, "tools": [_fn("a")]}) is None
    assert tool_result_text({"messages": msgs}) == "The tool a returned: 42."
    forced = plan_calls({"messages": msgs, "tools": [_fn("a")], "tool_choice": "required"})
    assert forced is not None and [n for n, _ in forced] == ["a"]


def test_the_tool_result_text_is_bounded_and_names_unknown_calls_plainly() -> None:
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                  "function": {"name": "a", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "other", "content": "y" * (MAX_QUOTED + 50)}]
    text = tool_result_text({"messages": msgs})
    assert text == "The tool call returned: " + "y" * MAX_QUOTED + "…."
    assert tool_result_text({"messages": msgs[:1]}) is None


def test_call_ids_are_deterministic_and_distinct() -> None:
    ids = {mock_tools.call_id("a", "said", i, c) for i in range(3) for c in range(2)}
    assert len(ids) == 6 and all(i.startswith("call_") and len(i) == 29 for i in ids)
    assert mock_tools.call_id("a", "said", 0, 0) == mock_tools.call_id("a", "said", 0, 0)


# ---- arguments --------------------------------------------------------------------------------------


def test_each_type_gets_a_sample() -> None:
    params = _obj({
        "s": {"type": "string"}, "s2": {"type": "string"}, "when": {"type": "string", "format": "date-time"},
        "mail": {"type": "string", "format": "email"}, "short": {"type": "string", "maxLength": 3},
        "i": {"type": "integer"}, "i_min": {"type": "integer", "minimum": 5}, "i_x": {"type": "integer",
                                                                                    "exclusiveMinimum": 5},
        "i_max": {"type": "integer", "maximum": 0}, "num": {"type": "number"}, "b": {"type": "boolean"},
        "nothing": {"type": "null"}, "maybe": {"type": ["null", "integer"]},
        "e": {"enum": ["x", "y"]}, "c": {"const": 7}, "d": {"type": "integer", "default": 9},
        "ex": {"type": "string", "examples": ["eg"]},
        "arr": {"type": "array", "items": {"type": "integer"}, "minItems": 3}, "none": {"type": "array",
                                                                                       "maxItems": 0},
        "obj": _obj({"inner": {"type": "boolean"}}, ["inner"]),
    })
    assert _args(params, "use f for Lyon") == {
        "s": "Lyon", "s2": "s2", "when": "2024-01-01T00:00:00Z", "mail": "user@example.com", "short": "sho",
        "i": 1, "i_min": 5, "i_x": 6, "i_max": 0, "num": 1.5, "b": True, "nothing": None, "maybe": 1,
        "e": "x", "c": 7, "d": 9, "ex": "eg", "arr": [1, 1, 1], "none": [], "obj": {"inner": True}}


def test_required_properties_only_when_listed() -> None:
    params = _obj({"a": {"type": "integer"}, "b": {"type": "integer"}}, ["b"])
    assert _args(params) == {"b": 1}
    assert _args(_obj({"a": {"type": "integer"}, "b": {"type": "integer"}})) == {"a": 1, "b": 1}
    assert _args({}) == {}


def test_refs_and_unions_are_followed() -> None:
    params = _obj({"p": {"$ref": "#/$defs/Point"}, "u": {"anyOf": [{"type": "null"}, {"type": "integer"}]}},
                  ["p", "u"], **{"$defs": {"Point": _obj({"x": {"type": "number"}}, ["x"])}})
    assert _args(params) == {"p": {"x": 1.5}, "u": 1}


def test_the_user_sets_values_by_name() -> None:
    params = _obj({"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
                   "note": {"type": "string"}}, ["city", "days", "metric", "note"])
    assert _args(params, 'use f for Oslo, days=3, metric: false, note: "a, b"') == {
        "city": "Oslo", "days": 3, "metric": False, "note": "a, b"}
    # A value that is not of the property's type is not taken.
    assert _args(params, "use f for Oslo days: many")["days"] == 1


@pytest.mark.parametrize("params", [
    {"$ref": "#"},  # itself, forever
    _obj({"next": {"$ref": "#"}}, ["next"]),
    _obj({"a": {"type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000,
                                                             "items": {"type": "array", "minItems": 1000}}}}),
])
def test_hostile_schemas_give_bounded_arguments(params: dict) -> None:
    args = json.dumps(_args(params))
    assert len(args) < MAX_VALUES * 16


def test_a_long_message_is_read_only_so_far() -> None:
    said = "x" * 500_000 + " f"
    assert _plan(said, [_fn("f")]) is None  # the name lies past what is scanned
    assert _plan("f " + "word " * 100_000, [_fn("f", _obj({"s": {"type": "string"}}, ["s"]))]) == ["f"]
