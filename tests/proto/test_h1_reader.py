"""The sans-IO request reader: every input whole, byte by byte, and with trailing bytes; the state table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgw.proto import h1, limits
from fastgw.proto.errors import HttpError
from fastgw.proto.h1 import (
    BODY, CLOSED, FAILED, HEAD, IDLE, MUST_CLOSE, REPLAY, TRANSITIONS, ReaderEvent, ReaderState, Request,
    RequestReader, StateError,
)

_H = b"Host: x\r\n"
GET = b"GET /a?q=1 HTTP/1.1\r\n" + _H + b"\r\n"
POST_CL = b"POST /p HTTP/1.1\r\n" + _H + b"Content-Length: 5\r\n\r\nhello"
POST_TE = b"POST /c HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nT: v\r\n\r\n"


def reader() -> RequestReader:
    return RequestReader(max_header_bytes=512, max_headers=10, max_body_bytes=100)


def feed_all(pieces: list[bytes]) -> RequestReader:
    r = reader()
    for p in pieces:
        r.feed(p)
    return r


def ways(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and in two halves."""
    mid = len(data) // 2
    return [[data], [data[i:i + 1] for i in range(len(data))], [data[:mid], data[mid:]]]


def summary(r: RequestReader) -> list[tuple]:
    out: list[tuple] = []
    for ev in r.events:
        if isinstance(ev, Request):
            out.append(("req", ev.method, ev.path, ev.body, ev.version, ev.keep_alive, ev.seq))
        else:
            out.append(("err", ev.status, ev.code))
    return out


# ---- complete requests -------------------------------------------------------------------------------

@pytest.mark.parametrize("data, want", [
    (GET, [("req", "GET", "/a", b"", "1.1", True, 0)]),
    (POST_CL, [("req", "POST", "/p", b"hello", "1.1", True, 0)]),
    (POST_TE, [("req", "POST", "/c", b"abcde", "1.1", True, 0)]),
    (b"GET / HTTP/1.0\r\n\r\n", [("req", "GET", "/", b"", "1.0", False, 0)]),
    (b"GET / HTTP/1.2\r\n" + _H + b"\r\n", [("req", "GET", "/", b"", "1.1", True, 0)]),
    (b"\r\n" + GET, [("req", "GET", "/a", b"", "1.1", True, 0)]),
    # A Transfer-Encoding llhttp refuses for its trailing comma is normalised and parsed anew (replay).
    (b"POST /n HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked, \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     [("req", "POST", "/n", b"abc", "1.1", True, 0)]),
])
def test_requests_whole_byte_by_byte_and_split(data, want):
    for pieces in ways(data):
        r = feed_all(pieces)
        assert summary(r) == want, pieces
        assert r.state is IDLE


def test_pipelined_requests_come_out_in_order_with_sequence_numbers():
    data = GET + POST_CL + POST_TE + b"POST /n HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\t\r\n\r\n1\r\nz\r\n0\r\n\r\n"
    for pieces in ways(data):
        r = feed_all(pieces)
        assert [(e.path, e.body, e.seq) for e in r.events if isinstance(e, Request)] == [
            ("/a", b"", 0), ("/p", b"hello", 1), ("/c", b"abcde", 2), ("/n", b"z", 3)]


def test_trailing_bytes_leave_the_next_head_in_progress():
    for pieces in ways(GET + b"GET /next HTTP/1.1\r\nHo"):
        r = feed_all(pieces)
        assert len(r.events) == 1 and r.state is HEAD and r.in_head and r.in_message
    r = feed_all([POST_CL[:-2]])
    assert r.state is BODY and not r.in_head and r.in_message and not r.events


def test_trailers_are_not_headers():
    r = feed_all([POST_TE])
    req = r.events[0]
    assert isinstance(req, Request) and req.header(b"t") is None and req.header(b"host") == b"x"


@given(st.lists(st.integers(0, len(GET + POST_TE + POST_CL)), max_size=8))
def test_any_split_gives_the_same_events(cuts):
    data = GET + POST_TE + POST_CL
    bounds = [0, *sorted(set(cuts)), len(data)]
    r = feed_all([data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a])
    assert summary(r) == summary(feed_all([data]))


# ---- errors, answered in order -----------------------------------------------------------------------

@pytest.mark.parametrize("data, status, code", [
    (b"GET / HTTP/1.1\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "bad_host"),
    (b"GET / HTTP/2.0\r\n" + _H + b"\r\n", 505, "http_version_not_supported"),
    (b"GET / HTTP/3.1\r\n" + _H + b"\r\n", 505, "http_version_not_supported"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501, "unsupported_transfer_encoding"),
    (b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 101\r\n\r\n", 413, "request_too_large"),
    (b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n65\r\n" + b"a" * 101 + b"\r\n0\r\n\r\n",
     413, "request_too_large"),
    (b"GET / HTTP/1.1\r\n" + _H + b"Expect: x\r\n\r\n", 417, "expectation_failed"),
    (b"GET / HTTP/1.1\r\n" + _H + b"X: " + b"a" * 600 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
    (b"GET / HTTP/1.1\r\n" + _H + b"".join(b"X%d: v\r\n" % i for i in range(11)) + b"\r\n", 431,
     "request_header_fields_too_large"),
    (b"FOO / HTTP/1.1\r\n" + _H + b"\r\n", 501, "not_implemented"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported"),
    (b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"e" * 5000 + b"\r\n", 400, "bad_request"),
])
def test_errors_whole_and_byte_by_byte(data, status, code):
    for pieces in ways(data)[:2]:
        r = feed_all(pieces)
        assert summary(r) == [("err", status, code)], pieces
        assert r.state is FAILED and r.stopped
        err = r.events[0]
        assert isinstance(err, HttpError) and err.close


@pytest.mark.parametrize("bad", [b"a b", b"x/y", b"x@y", b"h\x80", b"a\tb", b"x?y", b"x#"])
def test_each_requests_host_is_checked_on_a_keep_alive_connection(bad: bytes) -> None:
    """A Host found valid is remembered for the next request of the connection, never a different one."""
    good = b"GET / HTTP/1.1\r\nHost: api.example:8080\r\n\r\n"
    data = good + good + b"GET / HTTP/1.1\r\nHost: " + bad + b"\r\n\r\n"
    for pieces in ways(data):
        r = feed_all(pieces)
        assert summary(r) == [("req", "GET", "/", b"", "1.1", True, 0), ("req", "GET", "/", b"", "1.1", True, 1),
                              ("err", 400, "bad_host")], (bad, pieces)


def test_a_long_target_is_414_whole_and_431_when_it_trickles_in():
    # httptools holds an unfinished URL back; the raw head-byte bound (431) then stops it first.
    data = b"GET /" + b"a" * 600 + b" HTTP/1.1\r\n\r\n"
    assert summary(feed_all([data])) == [("err", 414, "uri_too_long")]
    assert summary(feed_all([data[i:i + 1] for i in range(len(data))])) == [
        ("err", 431, "request_header_fields_too_large")]


def test_requests_before_an_error_are_kept_and_nothing_after_it_is_read():
    for pieces in ways(GET + b"GET / HTTP/1.1\r\n\r\n" + GET):
        r = feed_all(pieces)
        assert [e[0] for e in summary(r)] == ["req", "err"]
        r.feed(GET)  # ignored after the error
        assert len(r.events) == 2


def test_a_guard_error_forgets_requests_httptools_read_past_it():
    # The chunk-size line breaks the guard's limit; the request pipelined behind it must not come out.
    data = (b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"e" * 5000 + b"\r\nabc\r\n0\r\n\r\n"
            + GET)
    r = feed_all([data])
    assert summary(r) == [("err", 400, "bad_request")]


def test_upgrade_answers_the_request_then_reads_nothing():
    data = b"GET /u HTTP/1.1\r\n" + _H + b"Connection: upgrade\r\nUpgrade: h2c\r\n\r\n" + GET
    for pieces in ways(data):
        r = feed_all(pieces)
        assert [e[2] for e in summary(r)] == ["/u"] and r.state is MUST_CLOSE and r.stopped


def test_unknown_method_token_split_across_reads_waits_in_replay():
    r = feed_all([b"FO"])
    assert r.state is REPLAY and r.in_head
    r.feed(b"O / HTTP/1.1\r\n" + _H + b"\r\n")
    assert summary(r) == [("err", 501, "not_implemented")]


def test_replay_limits_hold():
    r = feed_all([b"FOO" + b"O" * 70])
    assert summary(r) == [("err", 400, "bad_request")]
    r = feed_all([b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked, \r\nX: " + b"a" * 600])
    assert r.state is FAILED


def test_expect_continue_is_due_only_while_the_body_is_awaited():
    head = b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    r = feed_all([head])
    assert r.continue_due and r.state is BODY
    r.continue_due = False
    r.feed(b"ok")
    assert not r.continue_due and len(r.events) == 1
    assert not feed_all([head + b"ok"]).continue_due  # the body is already here: no promise needed
    assert not feed_all([GET + head]).continue_due  # a request ahead of it is not answered yet


def test_fail_and_close_from_the_shell():
    r = feed_all([b"GET / HT"])
    r.fail(HttpError("timeout", status=408))
    assert summary(r) == [("err", 408, None)] and r.state is FAILED
    r.close()
    assert r.state is CLOSED and not r.events


# ---- the state table ----------------------------------------------------------------------------------

def test_every_state_has_a_row_and_closed_is_terminal():
    assert set(TRANSITIONS) == set(ReaderState)
    assert TRANSITIONS[CLOSED] == {}
    for state in ReaderState:
        if state is not CLOSED:
            assert TRANSITIONS[state][ReaderEvent.CLOSE] is CLOSED


def test_a_message_ends_only_from_body_to_idle():
    """The reader's `_end` checks END inline (it runs for every request): the table must have only that row."""
    assert [(s, row[ReaderEvent.END]) for s, row in TRANSITIONS.items() if ReaderEvent.END in row] == [(BODY, IDLE)]
    r = reader()
    r.state = HEAD
    with pytest.raises(StateError):
        r._end()


@pytest.mark.parametrize("state, event", [(s, e) for s, row in TRANSITIONS.items() for e in row])
def test_each_legal_transition(state, event):
    r = reader()
    r.state = state
    r._to(event)
    assert r.state is TRANSITIONS[state][event]


@pytest.mark.parametrize("state, event", [(s, e) for s in ReaderState for e in ReaderEvent
                                          if e not in TRANSITIONS[s]])
def test_each_illegal_transition_names_state_and_event(state, event):
    r = reader()
    r.state = state
    with pytest.raises(StateError, match=f"{event.name} in state {state.name}") as info:
        r._to(event)
    assert info.value.state is state and info.value.event is event
    assert r.state is state


def test_an_illegal_transition_inside_a_parser_callback_is_not_turned_into_a_400():
    r = reader()
    r.state = BODY  # out of step on purpose: llhttp's next message begin is illegal here
    with pytest.raises(StateError, match="BEGIN in state BODY"):
        r._feed(GET, GET)


def test_a_fail_after_close_is_illegal():
    r = reader()
    r.close()
    with pytest.raises(StateError, match="FAIL in state CLOSED"):
        r.fail(HttpError("late"))


def _split(target: bytes) -> tuple[str, bytes]:
    """A target's path and query as RFC 3986 reads an origin form: the path up to the first "?", the query after."""
    path, sep, query = target.partition(b"?")
    return path.decode("latin-1"), query


@given(st.lists(st.binary(max_size=300) | st.sampled_from([b"/v1/chat/completions", b"/v1/x?a=1", b"/?", b"/a?b?c"]),
                max_size=40))
def test_a_requests_path_and_query_are_its_targets_whether_seen_before_or_not(targets: list[bytes]) -> None:
    for target in targets + targets:  # each seen once more: from the table the second time when it was kept
        req = Request("GET", b"/" + target, [], b"", "1.1", True)
        assert (req.path, req.query) == _split(b"/" + target)
        assert len(h1._targets) <= limits.TARGET_CACHE_ENTRIES


def test_a_known_target_gives_the_same_path_object_and_a_long_one_is_not_kept() -> None:
    first = Request("POST", b"/v1/chat/completions", [], b"", "1.1", True)
    again = Request("POST", bytes(bytearray(b"/v1/chat/completions")), [], b"", "1.1", True)
    assert again.path is first.path  # one object: its hash is computed once
    long = b"/v1/models/" + b"m" * limits.TARGET_CACHE_KEY_BYTES
    assert Request("GET", long, [], b"", "1.1", True).path == long.decode()
    assert long not in h1._targets
    for i in range(limits.TARGET_CACHE_ENTRIES + 5):  # a client varying its targets: the table stays bounded
        assert Request("GET", b"/t%d?q" % i, [], b"", "1.1", True).path == "/t%d" % i
        assert len(h1._targets) <= limits.TARGET_CACHE_ENTRIES
