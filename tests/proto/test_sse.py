"""SSE codec: the decoder against a line-by-line reference of the WHATWG algorithm, for any split of the input."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.proto.errors import ProtocolError
from fastgw.api.sse import DONE
from fastgw.proto.sse import SSEDecoder, SSEEvent, SSESplitter, encode_comment, encode_data, encode_event

# --- reference: HTML §9.2.6 read literally, on the whole stream at once ---------------------------


def reference(stream: bytes) -> list[tuple]:
    """Events (data, event, id, retry, comments) of every complete block with at least one line."""
    text = stream.decode("utf-8", "replace")  # the spec decodes the stream first, then parses lines
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = []
    pos = 0
    for m in re.finditer(r"\r\n|\r|\n", text):
        lines.append(text[pos : m.start()])
        pos = m.end()
    # text[pos:] is an incomplete line: discarded at end of stream.
    out = []
    data: list[str] | None = None
    event = id_ = retry = None
    comments: list[str] = []
    seen = False
    for line in lines:
        if line == "":
            if seen:
                out.append((None if data is None else "\n".join(data), event, id_, retry, tuple(comments)))
            data, event, id_, retry, comments, seen = None, None, None, None, [], False
            continue
        seen = True
        if line.startswith(":"):
            c = line[1:]
            comments.append(c[1:] if c.startswith(" ") else c)
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "data":
            data = [value] if data is None else data + [value]
        elif name == "event":
            event = value
        elif name == "id":
            if "\0" not in value:
                id_ = value
        elif name == "retry":
            if value and all(c in "0123456789" for c in value):
                retry = int(value)
    return out


def fields(e: SSEEvent) -> tuple:
    return (e.data, e.event, e.id, e.retry, e.comments)


def feed_all(dec: SSEDecoder, pieces: list[bytes]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for p in pieces:
        out += dec.feed(p)
    return out


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def check_decoder(stream: bytes, pieces: list[bytes]) -> list[SSEEvent]:
    dec = SSEDecoder()
    events = feed_all(dec, pieces)
    assert [fields(e) for e in events] == reference(stream)
    consumed = len(stream) - dec.pending
    assert b"".join(e.raw for e in events) == stream[:consumed]
    # What is held is never a complete block: re-decoding it alone yields nothing more.
    assert SSEDecoder().feed(stream[consumed:]) == []
    return events


WARM = b"data: warm-up\n\n"

# --- stream strategy: random fields, comments, blank lines and line ends ---------------------------

EOL = st.sampled_from([b"\n", b"\r", b"\r\n"])
value_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12).map(
    lambda s: s.encode()
)
value_bytes = st.binary(max_size=8).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
value = st.one_of(
    value_text, value_bytes, st.sampled_from([b"", b" ", b"  x", b"12", b"007", b"1a", b"\xd9\xa1", b"a\0b", b"[DONE]"])
)
name = st.sampled_from([b"data", b"event", b"id", b"retry", b"foo", b"", b"dat", b"Data", b"\xef\xbb\xbfdata"])
field_line = st.builds(
    lambda n, sep, v: n + sep + v, name, st.sampled_from([b":", b": ", b":  ", b""]), value
)
comment_line = st.builds(lambda v: b":" + v, value)
line = st.one_of(field_line, field_line, comment_line, st.just(b""))
streams = st.builds(
    lambda bom, lines, tail: bom + b"".join(l + e for l, e in lines) + tail,
    st.sampled_from([b"", b"", b"\xef\xbb\xbf"]),
    st.lists(st.tuples(line, EOL), max_size=25),
    st.sampled_from([b"", b"", b"data: partial", b"\r", b"\xe2\x82"]),
)


@given(streams)
def test_decoder_whole_matches_reference(stream):
    check_decoder(stream, [stream])


@given(streams)
def test_decoder_bytewise_matches_reference(stream):
    check_decoder(stream, bytewise(stream))


@given(st.data())
def test_decoder_any_split_same_events(data):
    stream = data.draw(streams)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    if data.draw(st.booleans()):
        # A first read that ends on a boundary: later reads then take the nothing-held path.
        stream = WARM + stream
        points = [len(WARM)] + [p + len(WARM) for p in points]
    whole = check_decoder(stream, [stream])
    split = check_decoder(stream, split_at(stream, points))
    assert [fields(e) for e in split] == [fields(e) for e in whole]
    # raw only differs when a cut falls inside a block-ending CRLF (its LF moves to the next block).
    if not any(stream[p - 1 : p + 1] == b"\r\n" for p in points):
        assert [e.raw for e in split] == [e.raw for e in whole]


@settings(max_examples=50)
@given(streams)
def test_decoder_every_two_piece_split(stream):
    want = [fields(e) for e in check_decoder(stream, [stream])]
    warm_want = [fields(e) for e in check_decoder(WARM + stream, [WARM + stream])]
    for p in range(len(stream) + 1):
        assert [fields(e) for e in feed_all(SSEDecoder(), [stream[:p], stream[p:]])] == want
        assert [fields(e) for e in feed_all(SSEDecoder(), [WARM, stream[:p], stream[p:]])] == warm_want
        check_splitter(WARM + stream, [WARM, stream[:p], stream[p:]])


@settings(max_examples=50)
@given(streams)
def test_a_read_fed_from_an_offset_is_its_rest_fed_alone(stream):
    """`feed(data, start)` after `feed(data[:start])` (the relay's first event sent early, the rest not copied) is
    the same decoding, fields and raw bytes, as two reads, with and without a block decoded before."""
    for warm in (b"", WARM):
        data = warm + stream
        for p in range(len(warm), len(data) + 1):
            want = feed_all(SSEDecoder(), [data[:p], data[p:]])
            dec = SSEDecoder()
            got = dec.feed(data[:p]) + dec.feed(data, p)
            assert [(fields(e), e.raw) for e in got] == [(fields(e), e.raw) for e in want], (data, p)
            assert dec.pending == len(data) - sum(len(e.raw) for e in got)


def test_feed_from_an_offset_outside_the_data_is_refused():
    dec = SSEDecoder()
    for start in (-1, 3):
        with pytest.raises(ValueError):
            dec.feed(b"ab", start)
    assert dec.feed(b"data: x\n\n", 9) == [] and dec.feed(b"data: y\n\n") == [SSEEvent("y", None, None, None,
                                                                                          b"data: y\n\n")]


# --- line ends ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_end(eol):
    stream = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    for pieces in ([stream], bytewise(stream)):
        events = feed_all(SSEDecoder(), pieces)
        assert [(e.event, e.data) for e in events] == [("e", "a\nb"), (None, "c")]


def test_mixed_line_ends():
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r: x\n\n"
    events = SSEDecoder().feed(stream)
    assert [e.data for e in events] == ["a\nb\nc", "d", None]
    assert events[2].comments == ("x",)


def test_cr_at_feed_end_then_lf_is_one_line_end():
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\ndata: b\r\n\r") != []  # the blank line's CR completes the block at once
    assert dec.pending == 0 and not dec.has_partial
    # The LF of that CRLF dispatches nothing and is not a blank line of its own.
    assert dec.feed(b"\n") == []
    assert not dec.has_partial
    (e,) = dec.feed(b"data: c\r\n\r\n")
    assert e.data == "c"
    assert e.raw == b"\ndata: c\r\n\r\n"  # the carried LF opens the next block's raw


def test_trailing_cr_completes_block_without_waiting():
    dec = SSEDecoder()
    (e,) = dec.feed(b"data: x\r\r")
    assert e.data == "x" and e.raw == b"data: x\r\r"
    (e,) = dec.feed(b"\ndata: y\r\r\n")  # CRLF in one read stays in this block's raw
    assert e.raw == b"\ndata: y\r\r\n"


def test_crlf_split_inside_block_is_not_two_lines():
    # CR ends "data: a"; the LF in the next read must not be read as a blank line ending the block.
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\n") == []
    (e,) = dec.feed(b"data: b\n\n")
    assert e.data == "a\nb"


def test_lone_cr_held_then_more_lines():
    # The held "\r" must keep the general line-end rules even when the next read has no CR.
    for warm in (b"", WARM):
        dec = SSEDecoder()
        dec.feed(warm)
        assert dec.feed(b"data: a\r") == []
        (e,) = dec.feed(b"data: b\n\n")
        assert e.data == "a\nb"
    sp = SSESplitter()
    assert sp.feed(b"data: a\r") == b""
    assert sp.feed(b"\ndata: b\n") == b""  # "\r\n" is one line end: no blank line yet
    assert sp.feed(b"\n") == b"data: a\r\ndata: b\n\n"


def test_extra_blank_lines_are_carried_in_next_raw():
    stream = b"\n\r\n\ndata: a\n\n\n\n\rdata: b\n\n\n"
    dec = SSEDecoder()
    events = dec.feed(stream)
    assert [e.raw for e in events] == [b"\n\r\n\ndata: a\n\n", b"\n\n\rdata: b\n\n"]
    assert dec.pending == 1 and not dec.has_partial


# --- fields ------------------------------------------------------------------------------------------


def test_multiline_data_and_all_fields():
    (e,) = SSEDecoder().feed(b"id: 7\nevent: delta\nretry: 3000\ndata: {\ndata:   \"a\": 1\ndata: }\n: note\n\n")
    assert e == SSEEvent('{\n  "a": 1\n}', "delta", "7", 3000, e.raw, ("note",))


def test_colon_and_space_rules():
    dec = SSEDecoder()
    assert dec.feed(b"data:x\n\n")[0].data == "x"
    assert dec.feed(b"data: x\n\n")[0].data == "x"
    assert dec.feed(b"data:  x\n\n")[0].data == " x"
    assert dec.feed(b"data\n\n")[0].data == ""  # no colon: field with empty value
    assert dec.feed(b"data\ndata\n\n")[0].data == "\n"
    assert dec.feed(b"data: a:b\n\n")[0].data == "a:b"
    assert dec.feed(b"data :x\n\n")[0].data is None  # field name "data " is unknown


def test_unknown_fields_and_comment_only_blocks_are_returned():
    dec = SSEDecoder()
    (e,) = dec.feed(b"foo: bar\n\n")
    assert fields(e) == (None, None, None, None, ())
    (e,) = dec.feed(b": keep-alive\n:\n:  two\n\n")
    assert e.data is None and e.comments == ("keep-alive", "", " two")


def test_id_with_nul_is_ignored():
    dec = SSEDecoder()
    assert dec.feed(b"id: a\0b\ndata: x\n\n")[0].id is None
    assert dec.feed(b"id: ok\nid: a\0b\ndata: x\n\n")[0].id == "ok"
    assert dec.feed(b"id\ndata: x\n\n")[0].id == ""


@pytest.mark.parametrize("val,want", [(b"10", 10), (b"0", 0), (b"1a", None), (b"", None), (b" 5", None),
                                      (b"-1", None), (b"\xd9\xa1", None), (b"5" * 5000, None)])
def test_retry_only_ascii_digits(val, want):
    # "retry:  5" keeps one space after the first is removed, so it is not all digits.
    (e,) = SSEDecoder().feed(b"retry: " + val + b"\ndata: x\n\n")
    # int() may refuse thousands of digits: then the field is ignored, never an exception.
    assert e.retry == want or (val == b"5" * 5000 and e.retry == int(val))


def test_bom_skipped_only_at_stream_start():
    stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\ndata: c\n\n"
    for pieces in ([stream], bytewise(stream), [stream[:1], stream[1:2], stream[2:]]):
        dec = SSEDecoder()
        events = feed_all(dec, pieces)
        # the second BOM is part of a field name, so that block has no data
        assert [e.data for e in events] == ["a", None, "c"]
        assert events[0].raw == b"\xef\xbb\xbfdata: a\n\n"


def test_bom_then_blank_line():
    (e,) = SSEDecoder().feed(b"\xef\xbb\xbf\ndata: a\n\n")
    assert e.data == "a" and e.raw == b"\xef\xbb\xbf\ndata: a\n\n"


def test_short_stream_that_is_not_a_bom():
    dec = SSEDecoder()
    assert dec.feed(b"\xef") == []
    assert dec.feed(b"\n\n") == [SSEEvent(None, None, None, None, b"\xef\n\n")]


def test_invalid_utf8_replaced_and_multibyte_split():
    (e,) = SSEDecoder().feed(b"data: a\xffb\xe2\x82\n\n")
    assert e.data == "a\ufffdb\ufffd"
    stream = "data: h\u00e9llo \u20ac \U0001f600\n\n".encode()
    for pieces in (bytewise(stream), [stream[:10], stream[10:]], [stream[:9], stream[9:17], stream[17:]]):
        (e,) = feed_all(SSEDecoder(), pieces)
        assert e.data == "h\u00e9llo \u20ac \U0001f600"
        assert e.raw == stream


# --- limits, close -----------------------------------------------------------------------------------


def test_max_event_bytes_raises_for_any_split():
    big = b"data: " + b"x" * 100 + b"\n\n"
    for pieces in ([big], bytewise(big), [big[:50], big[50:]]):
        dec = SSEDecoder(max_event_bytes=64)
        with pytest.raises(ProtocolError, match="max_event_bytes") as info:
            feed_all(dec, pieces)
        assert info.value.status == 502
        assert dec.pending == 0
    # exactly at the limit passes
    ok = b"data: " + b"x" * 56 + b"\n\n"
    assert len(ok) == 64 and SSEDecoder(max_event_bytes=64).feed(ok)[0].raw == ok


def test_max_event_bytes_counts_from_the_previous_block_in_a_read_of_many():
    # Decoded a run at a time (`_ssec.blocks`), the limit still holds per block, blank lines before it included.
    small = b"data: a\n\n"
    for stream in (small + b"data: " + b"x" * 100 + b"\n\n" + small, small + b"\n" * 60 + small + small,
                   b"\n" * 60 + small):
        for pieces in ([stream], [stream[:9], stream[9:]]):
            with pytest.raises(ProtocolError, match="max_event_bytes"):
                feed_all(SSEDecoder(max_event_bytes=64), pieces)
    fits = small + b"\n" * 55 + small + small  # 55 blank lines + 9 bytes: 64
    assert [e.raw for e in SSEDecoder(max_event_bytes=64).feed(fits)] == [small, b"\n" * 55 + small, small]


def test_endless_blank_lines_are_bounded():
    dec = SSEDecoder(max_event_bytes=100)
    with pytest.raises(ProtocolError):
        for _ in range(200):
            dec.feed(b"\n")
    assert dec.pending <= 100


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_held_bytes_never_exceed_bound(data):
    limit = data.draw(st.integers(8, 64))
    stream = data.draw(streams)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    for cls in (SSEDecoder, SSESplitter):
        dec = cls(max_event_bytes=limit)
        for p in split_at(stream, points):
            try:
                dec.feed(p)
            except ProtocolError:
                break
            assert dec.pending <= limit


def test_close_discards_partial_and_reports_truncation():
    dec = SSEDecoder()
    dec.feed(b"data: a\n\ndata: trunc")
    assert dec.has_partial
    dec.close()
    assert dec.has_partial and dec.pending == 0
    with pytest.raises(ValueError):
        dec.feed(b"\n\n")
    dec = SSEDecoder()
    dec.feed(b"data: a\r\n\r")
    dec.feed(b"\n")
    dec.close()
    assert not dec.has_partial


def test_openai_stream():
    chunks = [
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
        *(
            b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
            b'"choices":[{"index":0,"delta":{"content":"' + w.encode() + b'"},"finish_reason":null}]}'
            for w in ["Hel", "lo", " w\u00f6rld", " \U0001f600"]
        ),
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
        b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    ]
    stream = b"".join(encode_data(c) for c in chunks) + DONE
    for pieces in ([stream], bytewise(stream), split_at(stream, list(range(0, len(stream), 37)))):
        dec = SSEDecoder()
        events = feed_all(dec, pieces)
        assert [e.data.encode() for e in events] == [*chunks, b"[DONE]"]
        assert b"".join(e.raw for e in events) == stream and dec.pending == 0


def test_whole_read_event_is_not_copied():
    data = b"data: {}\n\n"
    dec = SSEDecoder()
    (first,) = dec.feed(data)  # a first read of 3 bytes or more that is no BOM settles the BOM question at once
    assert first.raw is data
    (e,) = dec.feed(data)
    assert e.raw is data
    read = data * 40  # a whole answer in the first read: read in place, not through the held buffer
    events = SSEDecoder().feed(read)
    assert len(events) == 40 and b"".join(ev.raw for ev in events) == read
    late = SSEDecoder()  # a caller that fed the read's first part (`start`) gives the rest the same way
    assert [ev.raw for ev in late.feed(read, len(data) * 39)] == [data]


# --- splitter ----------------------------------------------------------------------------------------


def check_splitter(stream: bytes, pieces: list[bytes]) -> None:
    sp = SSESplitter()
    ref = SSEDecoder()  # decodes the input with the same cuts
    out_dec = SSEDecoder()  # decodes what the splitter forwards
    outs = []
    for p in pieces:
        out = sp.feed(p)
        outs.append(out)
        n_ref = len(ref.feed(p))
        got = out_dec.feed(out)
        # every block completed by this read is forwarded by this read, and the output ends on a boundary
        assert len(got) == n_ref
        assert not out_dec.has_partial
    forwarded = b"".join(outs)
    assert forwarded == stream[: len(stream) - sp.pending]
    if not stream.startswith(b"\xef"):  # the splitter does not know the BOM (it only delays a blank line)
        assert sp.has_partial == ref.has_partial


@given(streams)
def test_splitter_whole_and_bytewise(stream):
    check_splitter(stream, [stream])
    check_splitter(stream, bytewise(stream))


@given(st.data())
def test_splitter_any_split(data):
    stream = data.draw(streams)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    check_splitter(stream, split_at(stream, points))


def test_splitter_fast_path_returns_the_read_itself():
    sp = SSESplitter()
    data = b"data: a\n\ndata: b\n\n"
    assert sp.feed(data) is data
    assert sp.feed(b"data: c\n\ndata: d") == b"data: c\n\n"
    assert sp.pending == 7
    assert sp.feed(b"\n") == b""
    assert sp.feed(b"\ndata: e\n\n") == b"data: d\n\ndata: e\n\n"


def test_splitter_trailing_cr_rule():
    sp = SSESplitter()
    assert sp.feed(b"data: a\r\n\r") == b"data: a\r\n\r"  # complete at the CR, forwarded now
    assert sp.feed(b"\ndata: b\r\n\r\n") == b"\ndata: b\r\n\r\n"
    assert sp.feed(b"data: c\r") == b""
    assert sp.feed(b"\r") == b"data: c\r\r"
    assert sp.pending == 0


def test_splitter_bound():
    sp = SSESplitter(max_event_bytes=16)
    assert sp.feed(b"data: 0123456789") == b""
    with pytest.raises(ProtocolError, match="max_event_bytes"):
        sp.feed(b"abc")
    assert sp.pending == 0


# --- encoders ----------------------------------------------------------------------------------------


any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
one_line = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=20)


@given(any_text, st.none() | one_line, st.none() | one_line, st.booleans())
def test_encode_event_round_trip(data, event, id_, as_bytes):
    raw = encode_event(data.encode() if as_bytes else data, event=event, id=id_)
    assert raw.endswith(b"\n\n")
    (e,) = SSEDecoder().feed(raw)
    assert e.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert (e.event, e.id) == (event, id_)
    assert e.raw == raw


@given(any_text)
def test_encode_comment_round_trip(text):
    (e,) = SSEDecoder().feed(encode_comment(text))
    assert e.data is None
    assert e.comments == tuple(re.split(r"\r\n|\r|\n", text))


@given(st.binary(max_size=64))
def test_encode_data_round_trip(payload):
    raw = encode_data(payload)
    (e,) = SSEDecoder().feed(raw)
    text = payload.decode("utf-8", "replace")
    assert e.data == text.replace("\r\n", "\n").replace("\r", "\n")


def test_encoders_exact_bytes():
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event("a\nb", event="e", id="1") == b"event: e\nid: 1\ndata: a\ndata: b\n\n"
    assert encode_event("") == b"data: \n\n"
    assert encode_comment("ping") == b": ping\n\n"
    assert DONE == b"data: [DONE]\n\n"
    assert SSEDecoder().feed(DONE)[0].data == "[DONE]"


@pytest.mark.parametrize("kw", [{"event": "a\nb"}, {"event": "a\r"}, {"id": "1\r\n"}, {"id": "a\0"}])
def test_encode_event_rejects_line_ends_in_fields(kw):
    with pytest.raises(ValueError):
        encode_event("x", **kw)
