"""The access line of a common request is encoded by msgspec (`accesslog._fast_json`, a batch at a time): it must be,
character for character, the line the general path writes (`_json(access_record(...))`), whatever the strings
hold, and it must leave to the general path every request whose route or model needs redaction or capping."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import accesslog
from fastgw.policy.base import RequestContext

ROUTE, MODEL = "/v1/chat/completions", "gpt-x"
WALL = 1738324800.125

_text = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["", "a\u2028b", "q\"uote\\", "\x7f\x85", "tab\tnew\nline", "é€😀"])
_usage = st.none() | st.just({}) | st.fixed_dictionaries(
    {}, optional={"prompt_tokens": st.integers(0, 10**9) | st.none() | st.just("7"),
                  "completion_tokens": st.integers(0, 10**9), "input_tokens": st.integers(0, 99),
                  "output_tokens": st.integers(0, 99), "estimated": st.booleans(), "partial": st.booleans()})


@pytest.fixture(autouse=True)
def known_names():
    accesslog.set_redactor(None, [ROUTE, MODEL, "/v1/models"])
    yield
    accesslog.set_redactor(None, ())


def _ctx(rid: str = "req_abc", principal: str | None = "team-a", client: str = "10.0.0.7", model: str | None = MODEL,
         target: str | None = "t1", error: str | None = None, usage: dict | None = None, status: int = 200,
         first: float | None = 0.25, decisions: tuple = ()) -> RequestContext:
    ctx = RequestContext(rid, "POST", ROUTE, [], client)
    ctx.model, ctx.target, ctx.status, ctx.stream, ctx.principal = model, target, status, True, principal
    ctx.error, ctx.usage = error, usage
    ctx.first_byte = None if first is None else ctx.started + first
    for policy, outcome in decisions:
        ctx.decide(policy, "input", outcome)
    return ctx


def _both(ctx: RequestContext, route: str = ROUTE, nbytes: int | None = 1234) -> tuple[str | None, str]:
    now = ctx.started + 1.5
    return (accesslog._fast_json(ctx, route, nbytes, now=now, wall=WALL),
            accesslog._json(accesslog.access_record(ctx, route, nbytes, now=now, wall=WALL)))


@settings(max_examples=300, deadline=None)
@given(rid=st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True) | _text.filter(lambda s: 0 < len(s) <= 128),
       principal=st.none() | _text, client=_text.filter(lambda s: len(s) <= 45), error=st.none() | _text,
       usage=_usage, status=st.sampled_from([0, 200, 404, 499]), first=st.none() | st.floats(0, 1e5),
       nbytes=st.none() | st.integers(0, 2**40), target=st.none() | _text, model=st.sampled_from([None, MODEL]),
       decisions=st.lists(st.tuples(st.sampled_from(["rbac", "pii", "routing", "a\"b"]),
                                    st.sampled_from(["allow", "observe", "redact", "block", "deny", "x"])),
                          max_size=5))
def test_the_fast_line_is_the_general_line(rid, principal, client, error, usage, status, first, nbytes, target,
                                           model, decisions) -> None:
    ctx = _ctx(rid, principal, client, model, target, error, usage, status, first, tuple(decisions))
    fast, general = _both(ctx, nbytes=nbytes)
    if accesslog._PLAIN_ID(rid) is None:
        assert fast is None  # an id the app would not have accepted: the general path escapes or caps it
        return
    assert fast == general
    # And among others, a batch encoded at once (`flush`): the same line.
    assert accesslog._encode_run([accesslog._fast_struct(accesslog._values(ctx, ROUTE, nbytes, None, ctx.started + 1.5,
                                                                             WALL))] * 3) == (general + "\n").encode() * 3


def test_del_reads_the_same_in_a_part_encoded_alone_and_in_a_whole_line() -> None:
    # An ASCII error code with DEL in a line that is not ASCII elsewhere (the client): both paths escape DEL.
    fast, general = _both(_ctx(rid="0", client="\x80", error="\x7f"))
    assert fast == general and "\\u007f" in general and "\x7f" not in general


@pytest.mark.parametrize("ctx, route", [
    (_ctx(model="sk-" + "a" * 40), ROUTE),       # a model the config does not define: redacted on the general path
    (_ctx(), "/v1/models/sk-" + "b" * 40),       # an unknown route
    (_ctx(), ROUTE + "?api_key=x"),              # a query string
    (_ctx(client="1" * 46), ROUTE),              # an X-Forwarded-For value longer than an address: capped
    (_ctx(rid="r" * 129), ROUTE),                # a request id longer than the app accepts: capped
])
def test_what_needs_redaction_or_capping_takes_the_general_path(ctx: RequestContext, route: str) -> None:
    fast, general = _both(ctx, route)
    assert fast is None and "sk-" not in general


def test_a_config_reload_sends_a_model_it_no_longer_defines_the_general_way() -> None:
    ctx = _ctx()
    assert _both(ctx)[0] is not None
    accesslog.set_redactor(None, [ROUTE])  # the model is no longer a configured name
    assert _both(ctx)[0] is None


# ---- lines wait as values, formatted at the batch's write ------------------------------------------------------

@pytest.fixture
def batched() -> Iterator[io.StringIO]:
    """The access log into a buffer (each test then leaves it only its own handler: pytest's log capture, which
    attaches its own for the test's call, would take the logging path)."""
    buf = io.StringIO()
    accesslog.configure("info", "json", buf)
    yield buf
    accesslog.configure("info", "json", io.StringIO())


def test_a_waiting_line_holds_its_requests_values_at_the_end_and_nothing_the_collector_walks(batched: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._handler])
    # Usage with details (a nested dict: tracked by the collector) and a decision: what waits holds neither.
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 1}}
    ctx = _ctx(usage=usage, decisions=(("pii", "redact"),))
    # (observed through what waits, not by patching the formatter: accesslog is compiled, and a compiled caller
    # does not see a module attribute replaced)
    expected: list[str] = []

    async def main() -> None:
        accesslog.log_request(ctx, ROUTE, 10)
        assert batched.getvalue() == "" and len(accesslog._pending) == 1  # waiting for the batch's timer
        waiting = accesslog._pending[0]
        assert type(waiting) is tuple and not any(isinstance(x, (bytes, accesslog._Line)) for x in waiting)  # values,
        # not formatted yet: that is done at the batch's write, by the fast path
        line = accesslog._fast_struct(waiting)
        assert line is not None
        expected.append(accesslog._encode_run([line]).decode())  # what the batch must write: these values, once
        assert not any(gc.is_tracked(value) for value in waiting)  # no container the collector walks
        # The request object changes after its line was taken (it is not what waits).
        ctx.status, ctx.error = 503, "late"
        usage["completion_tokens"] = 99
        ctx.decide("pii", "output", "block")
        while not batched.getvalue():
            await asyncio.sleep(0.002)

    asyncio.run(main())
    assert batched.getvalue().count("\n") == 1 and batched.getvalue() == expected[0]
    line = orjson.loads(batched.getvalue())
    assert (line["status"], line["error"], line["bytes"]) == (200, None, 10)
    assert line["tokens"] == {"prompt": 3, "completion": 4, "estimated": False}
    assert line["policy"] == {"pii": "redact"}


def test_lines_of_every_path_waiting_together_are_the_lines_written_at_once(batched: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._handler])
    ctxs = [(_ctx(), ROUTE), (_ctx(model="sk-" + "a" * 40), ROUTE), (_ctx(rid="r" * 129), ROUTE),
            (_ctx(usage={"input_tokens": 5, "partial": True}, error="upstream_timeout", first=None), ROUTE + "?k=v")]
    for ctx, route in ctxs:  # no loop: each written at once
        accesslog.log_request(ctx, route, 7)
    at_once = batched.getvalue().splitlines()
    batched.truncate(0), batched.seek(0)

    async def main() -> None:
        for ctx, route in ctxs:
            accesslog.log_request(ctx, route, 7)
        assert batched.getvalue() == ""
        while not batched.getvalue():
            await asyncio.sleep(0.002)

    asyncio.run(main())
    batched_lines = batched.getvalue().splitlines()
    assert len(batched_lines) == len(at_once) == 4 and "sk-" not in batched.getvalue()
    for a, b in zip(at_once, batched_lines):  # the same but for the clocks
        ra, rb = orjson.loads(a), orjson.loads(b)
        for r in (ra, rb):
            del r["ts"], r["duration_ms"]
        assert ra == rb


def test_a_new_redactor_writes_the_lines_waiting_under_the_old_one_first(batched: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._handler])
    async def main() -> None:
        accesslog.log_request(_ctx(), ROUTE, 1)
        accesslog.set_redactor(lambda s: "[X]", [ROUTE])  # the model is no longer a configured name
        accesslog.log_request(_ctx(), ROUTE, 2)
        accesslog.flush()

    asyncio.run(main())
    assert [orjson.loads(ln)["model"] for ln in batched.getvalue().splitlines()] == [MODEL, "[X]"]


def test_a_line_that_cannot_be_formatted_costs_itself_not_its_batch(batched: io.StringIO,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._handler])
    monkeypatch.setattr(accesslog, "_write_error_at", 0.0)  # its report's once-a-second clock, for the next test
    monkeypatch.setattr(accesslog, "_write_errors", 0)

    async def main() -> None:
        accesslog.log_request(_ctx(rid="a"), ROUTE, 1)
        accesslog.log_request(_ctx(rid="b", error="\ud800"), ROUTE, 2)  # a lone surrogate: no JSON encoder takes it
        accesslog.log_request(_ctx(rid="c"), ROUTE, 3)
        accesslog.flush()
        assert not accesslog._pending  # nothing stays behind to fail every later batch
        accesslog.log_request(_ctx(rid="d"), ROUTE, 4)
        accesslog.flush()

    asyncio.run(main())
    assert [orjson.loads(ln)["request_id"] for ln in batched.getvalue().splitlines()] == ["a", "c", "d"]


def test_lines_go_to_a_text_streams_binary_buffer_after_the_text_written_before(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="utf-8")
    accesslog.configure("info", "json", text)
    try:
        monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._handler])
        text.write("a line through logging, still in the text layer\n")
        accesslog._pending.extend([accesslog._values(_ctx(rid="é"), ROUTE, 1, None),  # the general path
                                   accesslog._values(_ctx(rid="r2"), ROUTE, 2, None)])  # the fast one
        accesslog.flush()
        first, *lines = raw.getvalue().decode().splitlines()
        assert first.startswith("a line through logging")
        assert [(ln["request_id"], ln["bytes"]) for ln in map(orjson.loads, lines)] == [("é", 1), ("r2", 2)]
    finally:
        accesslog.configure("info", "json", io.StringIO())
