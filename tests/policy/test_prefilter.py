"""One block scan decides a body no scanning policy can find anything in (`fastgw.policy.textscan.Prefilter`, issue
18): the chain's decisions, texts and refusals are exactly those of every policy scanning every text, on requests
and non-streamed answers, whatever hides in them (values, disguises the fold undoes, JSON escapes, logprobs)."""

from __future__ import annotations

import copy
import random

import orjson
import pytest

from fastgw.config import PiiDetector, SafetyFilter
from fastgw.policy.base import RequestContext
from fastgw.policy.chain import Chain
from fastgw.policy.findings import Findings
from fastgw.policy.pii import PiiPolicy
from fastgw.policy.safety import SafetyPolicy
from fastgw.policy.textscan import request_slots, response_slots

#: Clean words, values, disguises (full-width digits, a zero-width split, an escaped @ in JSON source), phrases.
PIECES = ("hello", " ", "the quick brown fox", "\n", "1234", "a@b.co", "joe@example.com", "+1 415 555 0100",
          "０９０－３２０５－１２３４", "j\u200bo\u200be@example.com", "joe\\u0040example.com",
          "4111 1111 1111 1111", "192.168.1.1", "forbidden fruit", "forbidden", " fruit", "secret sauce", "é",
          "| Phone |\n| --- |\n| 5551234 |", "sk-" + "a1" * 20, "-----BEGIN RSA PRIVATE KEY-----")


def _chains(pii_action: str) -> tuple[Chain, Chain]:
    """(with the prefilters, without them): the same policies."""
    pii = PiiPolicy(PiiDetector(action=pii_action))
    safety = SafetyPolicy(SafetyFilter(action="redact", terms=["forbidden fruit", "secret sauce"]))
    out = []
    for _ in range(2):
        chain = Chain(["pii-detector", "safety-filter"], {"pii-detector": pii, "safety-filter": safety}, Findings([]))
        chain.allocate_scratch()
        out.append(chain)
    out[1]._input_filter = out[1]._output_filter = None
    return out[0], out[1]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 4)))


def _arguments(rng: random.Random) -> str:
    """Tool-call arguments as JSON source, its escapes as sent (`joe\\u0040example.com` spells an address)."""
    return '{"q": "' + _text(rng).replace('"', "'").replace("\n", "\\n") + '"}'


def _request(rng: random.Random) -> dict:
    body: dict = {"model": "m", "messages": [{"role": rng.choice(("user", "system")), "content": _text(rng)}
                                             for _ in range(rng.randint(1, 3))]}
    if rng.random() < 0.3:
        body["messages"].append({"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": _arguments(rng)}}]})
    if rng.random() < 0.3:
        body["metadata"] = {"note": _text(rng)}
    return body


def _answer(rng: random.Random) -> dict:
    ch: dict = {"index": 0, "message": {"role": "assistant", "content": _text(rng), "refusal": None},
                "finish_reason": "stop", "logprobs": None}
    if rng.random() < 0.2:
        ch["logprobs"] = {"content": [{"token": _text(rng), "logprob": -0.1, "bytes": [1], "top_logprobs": []}]}
    if rng.random() < 0.2:
        ch["message"]["tool_calls"] = [{"id": "c", "type": "function",
                                        "function": {"name": "f", "arguments": _arguments(rng)}}]
    return {"id": "x", "object": "chat.completion", "model": "m", "choices": [ch],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}


def _outcome(fn, ctx: RequestContext) -> tuple:
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - a refusal is an outcome to compare
        result = f"{type(e).__name__}: {e}"
    return result, [(d.policy, d.phase, d.outcome, sorted(d.detail.items())) for d in ctx.decisions]


def _ctx() -> RequestContext:
    return RequestContext("r", "POST", "/v1/chat/completions", [])


@pytest.mark.parametrize("pii_action", ["redact", "block"])
def test_the_prefilter_changes_no_decision_no_text_and_no_refusal(pii_action: str) -> None:
    fast, full = _chains(pii_action)
    rng = random.Random(18)
    verdicts = {True: 0, False: 0}
    for _ in range(600):
        req = _request(rng)
        verdicts[fast._input_filter.clean(list(request_slots(copy.deepcopy(req))))] += 1
        a, b = copy.deepcopy(req), copy.deepcopy(req)
        ca, cb = _ctx(), _ctx()
        assert _outcome(lambda: fast.check_input(ca, a), ca) == _outcome(lambda: full.check_input(cb, b), cb), req
        assert a == b
        ans = _answer(rng)
        verdicts[fast._output_filter.clean(list(response_slots(copy.deepcopy(ans))))] += 1
        data = orjson.dumps(ans)
        ca, cb = _ctx(), _ctx()
        assert _outcome(lambda: fast.check_output_body(ca, data), ca) == \
            _outcome(lambda: full.check_output_body(cb, data), cb), ans
    assert min(verdicts.values()) > 100  # both ways, often


def test_clean_bodies_are_decided_by_the_prefilter_and_anything_else_goes_to_the_policies() -> None:
    fast, _ = _chains("redact")
    flt = fast._input_filter
    assert flt is not None and fast._output_filter is not None

    def clean(body: dict) -> bool:
        return flt.clean(list(request_slots(body)))

    def body(text: str) -> dict:
        return {"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": text}]}

    assert clean(body("x" * 5000))
    for odd in ("joe@example.com", "forbidden fruit", "call ０９０－３２０５－１２３４", "é", "4111 1111 1111 1111"):
        assert not clean(body(odd))
    args = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                 "function": {"name": "f", "arguments": "{}"}}]}
    assert not clean({"model": "m", "messages": [args]})  # JSON source: escapes fold to what they spell
    escaped = copy.deepcopy(args)
    escaped["tool_calls"][0]["function"]["arguments"] = '{"to": "joe\\u0040example.com"}'
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, escaped]}
    fast.check_input(_ctx(), body)
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"to": "[REDACTED:EMAIL]"}'
    tokens = {"choices": [{"index": 0, "message": {"content": "hi"}, "logprobs": {"content": [{"token": "hi"}]}}]}
    assert not fast._output_filter.clean(list(response_slots(tokens)))
    # A clean body: one "allow" per scanning policy, as when each scans each text.
    ctx = _ctx()
    assert fast.check_input(ctx, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}) is False
    assert [(d.policy, d.outcome, d.detail) for d in ctx.decisions] == [
        ("pii-detector", "allow", {"count": 0}), ("safety-filter", "allow", {"count": 0})]
