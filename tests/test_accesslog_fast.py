"""The access line of a common request is written in C (`fastgw._accessline`, through `accesslog._fast_line` here):
it must be, character for character, the line the general path writes (`_json(access_record(...))`), whatever the
values hold, it must take every line it can (a plain request never falls back), and it must leave to the general path
every request whose strings need redaction, capping or escaping."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _accessline, accesslog
from fastgw.api.limits import ACCESS_LOG_BATCH_BYTES, ACCESS_LOG_BATCH_LINES
from fastgw.policy.base import RequestContext

ROUTE, MODEL = "/v1/chat/completions", "gpt-x"
WALL = 1738324800.125
#: What `set_redactor` gives the C line: the known names JSON writes as they are, with their JSON form.
_KNOWN = {ROUTE: orjson.dumps(ROUTE), MODEL: orjson.dumps(MODEL)}

_text = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["", "a\u2028b", "q\"uote\\", "\x7f\x85", "tab\tnew\nline", "é€😀"])
#: What an answer's usage may say of an estimate: any JSON value (its truth is the flag).
_flag = st.booleans() | st.none() | st.integers(-1, 2) | st.sampled_from(["", "y", 0.0, 1.5, [], [0], {}, {"a": 1}])
_usage = st.none() | st.just({}) | st.fixed_dictionaries(
    {}, optional={"prompt_tokens": st.integers(0, 10**9) | st.none() | st.just("7"),
                  "completion_tokens": st.integers(0, 10**9), "input_tokens": st.integers(0, 99),
                  "output_tokens": st.integers(0, 99), "estimated": _flag, "partial": _flag,
                  # keys the line does not read, some a character away from one it does
                  "total_tokens": st.integers(0, 99), "prompt_tokens_details": st.just({"cached_tokens": 1}),
                  "prompt_tokenz": st.integers(0, 9), "estimatef": st.booleans(), "\u00e9stimated": st.booleans()})


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


def _both(ctx: RequestContext, route: str = ROUTE, nbytes: int | None = 1234, dur: float = 1.5,
          wall: float = WALL) -> tuple[str | None, str | None]:
    """(the C line, the general path's line; None where that cannot be formatted)."""
    now = ctx.started + dur
    try:
        general: str | None = accesslog._json(accesslog.access_record(ctx, route, nbytes, now=now, wall=wall))
    except Exception:  # noqa: BLE001 - e.g. a lone surrogate, which no JSON encoder takes
        general = None
    return accesslog._fast_line(ctx, route, nbytes, now, wall), general


def _plain(s: object) -> bool:
    """What JSON writes as is: printable ASCII but quote and backslash (and not DEL, which the log escapes)."""
    return type(s) is str and all(" " <= ch <= "~" and ch not in "\"\\" for ch in s)


def _in_c_range(ctx: RequestContext, route: str, nbytes: object, dur: float, wall: float) -> bool:
    """Whether the C encoder must take the line (the head comment of _accessline.c, written out again)."""
    usage = ctx.usage or {}
    counts = [usage.get("prompt_tokens", usage.get("input_tokens")),
              usage.get("completion_tokens", usage.get("output_tokens"))]
    ints = [ctx.status, nbytes, *[v for v in counts if type(v) is int]]
    times = [dur] + ([] if ctx.first_byte is None else [ctx.first_byte - ctx.started])
    policy = {d.policy: d.outcome for d in ctx.decisions}
    return _plain(ctx.request_id) and len(ctx.request_id) <= 128 \
        and (ctx.principal is None or _plain(ctx.principal)) \
        and (ctx.client == "" or (_plain(ctx.client) and len(ctx.client) <= 45)) and _plain(ctx.method) \
        and all(v is None or _plain(v) for v in (ctx.target, ctx.error)) \
        and all(_plain(k) and _plain(v) for k, v in policy.items()) \
        and route in (ROUTE, "/v1/models") and ctx.model in (None, MODEL) \
        and 0 <= wall < 253402300800 and all(abs(t * 1e6) < 1e15 for t in times) \
        and all(v is None or -2**63 <= v < 2**63 for v in ints)


#: Printable ASCII but quote and backslash: what the C line writes as is.
_ascii = st.from_regex(r"[ !#-\[\]-~]{0,45}", fullmatch=True)
_big = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63, -2**63 - 1, -1, 0])


@settings(max_examples=400, deadline=None)
@given(rid=st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True) | _text.filter(lambda s: len(s) <= 130),
       principal=st.none() | _ascii | _text, client=_ascii | _text.filter(lambda s: len(s) <= 47),
       error=st.none() | _ascii | _text,
       usage=_usage | st.fixed_dictionaries({"prompt_tokens": _big, "completion_tokens": _big}),
       status=st.sampled_from([0, 200, 404, 499]) | _big, first=st.none() | st.floats(-10, 1e5) | st.just(2e9),
       nbytes=st.none() | st.integers(0, 2**40) | _big, target=st.none() | _ascii | _text,
       model=st.sampled_from([None, MODEL]), method=st.sampled_from(["POST", "GET", "M-SEARCH", "a\"b"]),
       stream=st.booleans(), route=st.sampled_from([ROUTE, "/v1/models", ROUTE + "?k=v", "/v1/other"]),
       dur=st.floats(0, 1e5) | st.sampled_from([0.0, 1e-7, -1e-7, -0.5, 999999999.9995, 1e9, 2e9]),
       wall=st.floats(0, 4.1e9) | st.sampled_from([0.0, 0.9995, WALL, 253402300799.999, 253402300800.0]),
       decisions=st.lists(st.tuples(st.sampled_from(["rbac", "pii", "routing", "a\"b", "é"]),
                                    st.sampled_from(["allow", "observe", "redact", "block", "deny", "x"])),
                          max_size=5))
def test_the_c_line_is_the_general_line(rid, principal, client, error, usage, status, first, nbytes, target, model,
                                        method, stream, route, dur, wall, decisions) -> None:
    ctx = _ctx(rid, principal, client, model, target, error, usage, status, first, tuple(decisions))
    ctx.method, ctx.stream = method, stream
    fast, general = _both(ctx, route, nbytes, dur, wall)
    if fast is not None:
        assert fast == general
    # It takes every line it can: a request whose values are all plain never costs the general path's work.
    assert (fast is not None) == _in_c_range(ctx, route, nbytes, dur, wall), (fast, general)


def test_the_c_line_reads_the_clocks_when_given_none() -> None:
    ctx = _ctx()
    ctx.started = time.monotonic() - 2.0
    before = time.time()
    line = _accessline.line(_KNOWN, "p", "", "POST", ROUTE, MODEL, None, False, "r", 200, None,
                            ctx.started, None, None, None, None, None, 0, None)
    assert line is not None and line.endswith(b"}\n")
    rec = orjson.loads(line)
    assert 2000 <= rec["duration_ms"] < 2000 + 5000  # monotonic, as time.monotonic() reads it
    stamp = time.strptime(rec["ts"][:19], "%Y-%m-%dT%H:%M:%S")
    assert abs(time.mktime(stamp) - time.timezone - before) < 5  # UTC, as time.time() reads it
    assert (rec["client"], rec["ttft_ms"], rec["tokens"], rec["policy"]) == (None, None, None, {})


class _Truthy:
    def __bool__(self) -> bool:
        return True


@pytest.mark.parametrize("usage, tokens", [
    # keys equal to the ones the line reads but not the same objects (the C line compares their characters)
    ({"".join(["prompt_", "tokens"]): 3, "".join(["completion", "_tokens"]): 4, "".join(["esti", "mated"]): 1},
     {"prompt": 3, "completion": 4, "estimated": True}),
    ({"prompt_tokens": None, "input_tokens": 5, "output_tokens": 6}, {"prompt": None, "completion": 6,
                                                                       "estimated": False}),
])
def test_the_c_line_reads_usage_by_its_keys_characters(usage: dict, tokens: dict) -> None:
    fast, general = _both(_ctx(usage=usage))
    assert fast is not None and fast == general and orjson.loads(fast)["tokens"] == tokens


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 3, 7: 1},                          # a key that is not a str: the general path reads it
    {"prompt_tokens": 3, "estimated": _Truthy()},        # a truth that runs code
    {"prompt_tokens": 3, "partial": _Truthy()},
])
def test_usage_the_c_line_cannot_read_without_running_code_takes_the_general_path(usage: dict) -> None:
    fast, general = _both(_ctx(usage=usage))
    assert fast is None and general is not None and orjson.loads(general)["tokens"]["prompt"] == 3


def test_the_c_line_refuses_a_wrong_call() -> None:
    with pytest.raises(TypeError, match="19 arguments"):
        _accessline.line({})
    with pytest.raises(TypeError, match="dict"):
        _accessline.line(frozenset([ROUTE]), *[None] * 18)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 15, 16, 17, 24, 40])
def test_every_character_json_escapes_is_found_at_every_place(length: int) -> None:
    """The C checks a string eight bytes at a time: each character JSON or the log escapes, at each place of a
    string of each length around a word's, sends the line to the general path; every other printable one stays."""
    def line(principal: str) -> bytes | None:
        return _accessline.line(_KNOWN, principal, "", "POST", ROUTE, None, None, False, "r", 200, None,
                                0.0, 1.0, WALL, None, None, None, 0, None)
    escaped = [chr(c) for c in range(0x20)] + ['"', "\\", "\x7f"]
    for at in range(length):
        for ch in escaped:
            assert line("a" * at + ch + "b" * (length - at - 1)) is None, (at, ch)
    for ch in (chr(c) for c in range(0x20, 0x7f)):
        if ch not in escaped:
            text = (ch * length)
            out = line(text)
            assert out is not None and orjson.loads(out)["principal"] == text


def test_a_known_name_with_a_query_string_is_still_cut_and_redacted() -> None:
    accesslog.set_redactor(None, [ROUTE, MODEL, ROUTE + "?api_key=sk-" + "k" * 40])
    fast, general = _both(_ctx(), ROUTE + "?api_key=sk-" + "k" * 40)
    assert fast is None and general is not None and orjson.loads(general)["route"] == ROUTE


def test_without_the_c_module_every_line_takes_the_general_path() -> None:
    """A checkout where `make` did not build _accessline (its import fails): the log runs its general path."""
    script = f"""
import io, sys, orjson
sys.modules["fastgw._accessline"] = None  # what an import of a module that is not there raises: ImportError
from fastgw import accesslog
from fastgw.policy.base import RequestContext
assert accesslog._c is None
buf = io.StringIO()
accesslog.configure("info", "json", buf)
accesslog.set_redactor(None, [{ROUTE!r}, {MODEL!r}])
ctx = RequestContext("r1", "POST", {ROUTE!r}, [], "10.0.0.7")
ctx.model, ctx.status, ctx.usage = {MODEL!r}, 200, {{"prompt_tokens": 3, "completion_tokens": 4}}
accesslog.log_request(ctx, {ROUTE!r}, 12)
rec = orjson.loads(buf.getvalue())
assert (rec["request_id"], rec["model"], rec["bytes"]) == ("r1", {MODEL!r}, 12), rec
assert rec["tokens"] == {{"prompt": 3, "completion": 4, "estimated": False}}, rec
print("general path ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "general path ok" in run.stdout, run.stdout + run.stderr


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


def test_a_known_name_json_escapes_is_written_by_the_general_path() -> None:
    accesslog.set_redactor(None, [ROUTE, "modèle-é", 'q"m'])
    for model in ("modèle-é", 'q"m'):
        fast, general = _both(_ctx(model=model))
        assert fast is None and general is not None and orjson.loads(general)["model"] == model


def test_a_config_reload_sends_a_model_it_no_longer_defines_the_general_way() -> None:
    ctx = _ctx()
    assert _both(ctx)[0] is not None
    accesslog.set_redactor(None, [ROUTE])  # the model is no longer a configured name
    assert _both(ctx)[0] is None


def test_a_config_reload_sends_a_route_it_no_longer_defines_the_general_way() -> None:
    """The C line keeps the last route it found by identity: a new set of names is looked up again."""
    route = "/v1/" + "".join(["resp", "onses"])  # one object, as a request's path is
    accesslog.set_redactor(None, [route, MODEL])
    assert _both(_ctx(), route)[0] is not None and _both(_ctx(), route)[0] is not None
    accesslog.set_redactor(None, [MODEL, "/v1/other"])
    fast, general = _both(_ctx(), route)
    assert fast is None and general is not None
    accesslog.set_redactor(None, [route + "?x", MODEL])  # known, but only with a query string: never as is
    assert _both(_ctx(), route + "?x")[0] is None


def test_what_json_escapes_takes_the_general_path() -> None:
    for ctx in (_ctx(error="\x7f"), _ctx(client="a\u2028b"), _ctx(principal='q"'), _ctx(target="é"),
                _ctx(rid="tab\t"), _ctx(decisions=(("pii", "re\\dact"),))):
        fast, general = _both(ctx)
        assert fast is None and general is not None and not any(ch in general for ch in "\x7f\u2028\t")


# ---- lines wait formatted, written in batches ------------------------------------------------------------------

@pytest.fixture
def batched() -> Iterator[io.StringIO]:
    """The access log into a buffer (each test then leaves it only its own handler: pytest's log capture, which
    attaches its own for the test's call, would take the logging path)."""
    buf = io.StringIO()
    accesslog.configure("info", "json", buf)
    yield buf
    accesslog.configure("info", "json", io.StringIO())


def test_a_waiting_line_is_its_requests_line_at_its_end(batched: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 1}}
    ctx = _ctx(usage=usage, decisions=(("pii", "redact"),))
    waited: list[bytes] = []

    async def main() -> None:
        accesslog.log_request(ctx, ROUTE, 10)
        assert batched.getvalue() == "" and len(accesslog._pending) == 1  # waiting for the batch's timer
        waited.append(accesslog._pending[0])  # formatted already: the request's objects are not held
        # The request object changes after its line was taken.
        ctx.status, ctx.error = 503, "late"
        usage["completion_tokens"] = 99
        ctx.decide("pii", "output", "block")
        while not batched.getvalue():
            await asyncio.sleep(0.002)

    asyncio.run(main())
    assert type(waited[0]) is bytes and batched.getvalue() == waited[0].decode()
    line = orjson.loads(batched.getvalue())
    assert (line["status"], line["error"], line["bytes"]) == (200, None, 10)
    assert line["tokens"] == {"prompt": 3, "completion": 4, "estimated": False}
    assert line["policy"] == {"pii": "redact"}


def test_lines_of_every_path_waiting_together_are_the_lines_written_at_once(batched: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])
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
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])
    async def main() -> None:
        accesslog.log_request(_ctx(), ROUTE, 1)
        accesslog.set_redactor(lambda s: "[X]", [ROUTE])  # the model is no longer a configured name
        accesslog.log_request(_ctx(), ROUTE, 2)
        accesslog.flush()

    asyncio.run(main())
    assert [orjson.loads(ln)["model"] for ln in batched.getvalue().splitlines()] == [MODEL, "[X]"]


def test_a_line_that_cannot_be_formatted_costs_itself_not_its_batch(batched: io.StringIO,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])
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


class _Raw(io.RawIOBase):
    """A raw stream that takes at most 100 bytes a write (as a pipe may), as stdout's binary layer is under
    PYTHONUNBUFFERED=1 (the systemd unit's)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001
        part = bytes(b[:100])
        self.data += part
        return len(part)

    def getvalue(self) -> bytes:
        return bytes(self.data)


@pytest.mark.parametrize("layer", ["buffered", "raw"])
def test_lines_go_to_a_text_streams_binary_buffer_after_the_text_written_before(layer: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw: io.BytesIO | _Raw = io.BytesIO() if layer == "buffered" else _Raw()
    text = io.TextIOWrapper(raw, encoding="utf-8", write_through=layer == "raw")  # type: ignore[arg-type]
    accesslog.configure("info", "json", text)
    try:
        monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])
        text.write("a line through logging, still in the text layer\n")
        accesslog._pending.extend([accesslog._encode(_ctx(rid="é"), ROUTE, 1, None),  # the general path
                                   accesslog._encode(_ctx(rid="r2"), ROUTE, 2, None)])  # the C one
        accesslog.flush()
        first, *lines = raw.getvalue().decode().splitlines()
        assert first.startswith("a line through logging")
        assert [(ln["request_id"], ln["bytes"]) for ln in map(orjson.loads, lines)] == [("é", 1), ("r2", 2)]
    finally:
        accesslog.configure("info", "json", io.StringIO())


def test_the_level_logging_sets_is_followed_at_once(batched: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log reads logging's own memo of the level (`_enabled`): every way logging turns the logger off holds at
    the next request, and so does turning it on again."""
    logger = logging.getLogger(accesslog.LOGGER_NAME)
    monkeypatch.setattr(logger, "handlers", [accesslog._st.handler])
    try:
        accesslog.log_request(_ctx(rid="a"), ROUTE, 1)  # no loop: written at once
        logger.setLevel(logging.WARNING)
        accesslog.log_request(_ctx(rid="b"), ROUTE, 1)
        logger.setLevel(logging.INFO)
        logging.disable(logging.INFO)
        accesslog.log_request(_ctx(rid="c"), ROUTE, 1)
        logging.disable(logging.NOTSET)
        logger.disabled = True  # what logging.config does to a logger it was not told about
        accesslog.log_request(_ctx(rid="d"), ROUTE, 1)
        logger.disabled = False
        accesslog.log_request(_ctx(rid="e"), ROUTE, 1)
    finally:
        logging.disable(logging.NOTSET)
        logger.disabled = False
        logger.setLevel(logging.INFO)
    assert [orjson.loads(ln)["request_id"] for ln in batched.getvalue().splitlines()] == ["a", "e"]
    assert accesslog._enabled is logger._cache  # type: ignore[attr-defined]  # the memo read is logging's own


def test_handlers_attached_while_a_batch_waits_get_its_lines(batched: io.StringIO,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The handlers are looked at by a batch's first line: one attached while the batch waits still gets every line
    of it, through logging, and our stream too."""
    logger = logging.getLogger(accesslog.LOGGER_NAME)
    monkeypatch.setattr(logger, "handlers", [accesslog._st.handler])
    seen: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    async def main() -> None:
        accesslog.log_request(_ctx(rid="a"), ROUTE, 1)  # the batch starts: only our handler
        logger.addHandler(Seen())
        accesslog.log_request(_ctx(rid="b"), ROUTE, 2)
        assert batched.getvalue() == "" and seen == []  # both wait
        while not batched.getvalue():
            await asyncio.sleep(0.002)
        accesslog.log_request(_ctx(rid="c"), ROUTE, 3)  # no batch waits: through logging at once

    asyncio.run(main())
    assert [orjson.loads(m)["request_id"] for m in seen] == ["a", "b", "c"]
    assert [orjson.loads(ln)["request_id"] for ln in batched.getvalue().splitlines()] == ["a", "b", "c"]


def _write_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A full batch of lines logged; the size of each os.write the log made (what our file calls)."""
    sizes: list[int] = []
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", counting)
    monkeypatch.setattr(logging.getLogger(accesslog.LOGGER_NAME), "handlers", [accesslog._st.handler])

    async def main() -> None:
        for i in range(ACCESS_LOG_BATCH_LINES):
            accesslog.log_request(_ctx(rid=f"r{i}"), ROUTE, i)

    asyncio.run(main())
    return sizes


def test_a_batch_goes_to_a_regular_file_in_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accesslog.use_file(str(tmp_path / "access.log"), 100 * 1024 * 1024, 1)
    try:
        sizes = _write_sizes(monkeypatch)
    finally:
        accesslog.configure("info", "json", io.StringIO())
    text = (tmp_path / "access.log").read_bytes()
    assert len(text) > ACCESS_LOG_BATCH_BYTES and sizes == [len(text)]  # the batch whole: one system call
    assert [orjson.loads(ln)["bytes"] for ln in text.splitlines()] == list(range(ACCESS_LOG_BATCH_LINES))


def test_a_batch_goes_to_a_pipe_in_pipe_buf_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    raw = io.FileIO(w, "w")
    got = bytearray()
    sizes: list[int] = []
    real_write = raw.write

    class _Counted(io.RawIOBase):  # stdout's raw layer over the pipe, counting each write
        def writable(self) -> bool:
            return True

        def fileno(self) -> int:
            return w

        def write(self, b) -> int:  # noqa: ANN001
            sizes.append(len(b))
            n = real_write(b)
            while True:  # drained as it goes: a batch is more than the pipe holds
                try:
                    got.extend(os.read(r, 1 << 16))
                except BlockingIOError:
                    return n

    counted = io.TextIOWrapper(_Counted(), encoding="utf-8", write_through=True)  # type: ignore[arg-type]
    accesslog.configure("info", "json", counted)
    try:
        _write_sizes(monkeypatch)
    finally:
        accesslog.configure("info", "json", io.StringIO())
        raw.close()
        os.close(r)
    assert len(sizes) > 1 and max(sizes) <= ACCESS_LOG_BATCH_BYTES  # each atomic on a pipe the workers share
    assert [orjson.loads(ln)["bytes"] for ln in bytes(got).splitlines()] == list(range(ACCESS_LOG_BATCH_LINES))
