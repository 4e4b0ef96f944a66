"""A `type` the client (or an upstream) sends as a list or an object where a string is expected: looked at, never
a crash. It used to meet a frozenset membership test (`TypeError: unhashable type`), and the pii-detector failed
the request with a 500 `policy_failed` instead of the answer or the 400 it deserves."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from fastgw.front.messages import anthropic_error
from fastgw.policy.textscan import request_slots, text_chars
from tests.support.procs import Gateway, start_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    cfg = {"pack": {"name": "unhashable"}, "policies": {"chain": ["pii-detector"]},
           "policy": {"pii-detector": {"action": "redact"}},
           "providers": {"targets": [{"id": "mock", "provider": "mock", "model": "mock-1"}]}}
    g = start_gateway(cfg, Path(tmp_path_factory.mktemp("unhashable")), workers=1)
    yield g
    g.stop()


def _post(gw: Gateway, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(gw.url + path, orjson.dumps(body), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/chat/completions", {"model": "mock-1", "messages": [{"role": "user", "content": [
        {"type": [], "input": ["a"]}, {"type": "text", "text": "hi"}]}]}, 200),
    ("/chat/completions", {"model": "mock-1", "type": {}, "input": [], "messages": [{"role": "user",
                                                                                     "content": "hi"}]}, 200),
    ("/messages", {"model": "mock-1", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": {}, "input": {}}]}]}, 400),
    ("/responses", {"model": "mock-1", "input": [{"type": [], "input": []}]}, 400),
])
def test_a_type_that_is_no_string_is_no_crash(gw: Gateway, path: str, body: dict, status: int) -> None:
    got, answer = _post(gw, path, body)
    assert got == status, answer
    if status == 400:
        err = answer["error"]
        assert err["type"] == "invalid_request_error" and "policy" not in str(answer)


def test_the_request_walk_reads_around_an_unhashable_type() -> None:
    body = {"messages": [{"content": [{"type": [], "input": ["x y"]}, {"type": {"a": 1}, "input": {"k": "secret"}}]}]}
    texts = [slot[0][slot[1]] for slot in request_slots(body)]
    assert "x y" in texts
    assert text_chars(body) == sum(len(t) for t in texts)


def test_an_upstream_error_whose_type_is_a_list_is_rewrapped() -> None:
    out = orjson.loads(anthropic_error(400, orjson.dumps({"type": "error", "error": {"type": [], "message": "m"}})))
    assert out["type"] == "error" and isinstance(out["error"]["type"], str)
