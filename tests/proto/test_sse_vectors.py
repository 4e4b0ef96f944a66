"""SSE conformance vectors: the WHATWG event-stream interpretation rules (HTML §9.2.6), one named case each.

tests/proto/test_sse.py checks the decoder against a reference implementation on random streams; this file pins
each rule down with a hand-written expectation, so a regression names the rule it broke. Every vector is
run

  (a) whole, (b) fed byte by byte, (c) split at every position into two feeds,
  (d) through SSESplitter with the same cuts: what it forwards is a prefix of the input that ends on a
      block boundary, and re-decoding it gives the same events.

An expectation is the list of (data, event, id, retry, comments) of the blocks the decoder returns, and
whether an incomplete block is left over at the end (`has_partial`, which close() discards).

Where the decoder knowingly differs from the spec's *dispatch* model it is because it is a pass-through
parser, not an EventSource (see fastgw/proto/sse.py):

- It returns every non-empty block, also those the spec would not dispatch (no `data` field: comments
  such as heartbeats, `event`/`id`/`retry`-only blocks, unknown fields), with `data=None`: the relay
  and the stream policy must forward those bytes unchanged (`raw`) so that the client's own EventSource
  applies them (a heartbeat keeps its idle timers alive; an `id`-only block sets its last-event-id).
  Consumers skip `data is None` events when they want the spec's dispatched events.
- `id`, `event` and `retry` are per block: `id` is the value of this block's last NUL-free `id` field,
  not the spec's sticky last-event-id buffer (which lives in the client; tracking it here would make
  every event depend on all earlier ones, and the gateway never reconnects on a client's behalf).
  `event=None` means "no event field" (the spec's default type "message"); `event=""` is an explicit
  empty field, which a client also reads as "message".
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fastgw.proto.errors import ProtocolError
from fastgw.proto.sse import SSEDecoder, SSEEvent, SSESplitter

BOM = b"\xef\xbb\xbf"


def ev(data: str | None, event: str | None = None, id: str | None = None, retry: int | None = None,
       comments: tuple[str, ...] = ()) -> tuple:
    return (data, event, id, retry, comments)


@dataclass(frozen=True)
class Vector:
    name: str
    stream: bytes
    events: list[tuple]
    #: The stream ends inside a block (the spec discards it at EOF; `has_partial` reports it).
    partial: bool = False


VECTORS: list[Vector] = [
    # ---- line ends: CRLF, LF and a lone CR, mixed (§9.2.5 "end-of-line") ----
    Vector("lf", b"data: a\n\n", [ev("a")]),
    Vector("crlf", b"data: a\r\n\r\n", [ev("a")]),
    Vector("cr", b"data: a\r\r", [ev("a")]),
    Vector("mixed_line_ends_in_one_block", b"data: a\r\ndata: b\rdata: c\n\n", [ev("a\nb\nc")]),
    Vector("every_blank_line_form",
           b"data: 1\n\ndata: 2\r\rdata: 3\r\n\r\ndata: 4\n\rdata: 5\r\n\ndata: 6\n\r\n",
           [ev("1"), ev("2"), ev("3"), ev("4"), ev("5"), ev("6")]),
    # CR CR LF is a CR line end, then a blank line ended by CRLF: the LF is no further blank line.
    Vector("cr_cr_lf", b"data: a\r\r\ndata: b\r\r\n", [ev("a"), ev("b")]),
    # CRLF is one line end: "data: a" CRLF "data: b" is one block of two lines, not a block end.
    Vector("crlf_is_one_line_end", b"data: a\r\ndata: b\r\n\r\n", [ev("a\nb")]),
    Vector("blank_lines_before_and_between", b"\n\r\n\rdata: a\n\n\n\n\r\ndata: b\n\n\n", [ev("a"), ev("b")]),
    Vector("only_blank_lines", b"\n\r\n\r\n\n", []),
    Vector("empty_stream", b"", []),

    # ---- BOM: one U+FEFF at the very start of the stream is skipped, nowhere else (§9.2.6) ----
    Vector("bom_at_start", BOM + b"data: a\n\n", [ev("a")]),
    Vector("bom_then_blank_line", BOM + b"\ndata: a\n\n", [ev("a")]),
    # Not at the start: the BOM is part of the field name "\ufeffdata", an unknown field.
    Vector("bom_in_the_middle_not_stripped", b"data: a\n\n" + BOM + b"data: b\n\n", [ev("a"), ev(None)]),
    Vector("second_bom_at_start_not_stripped", BOM + BOM + b"data: a\n\n", [ev(None)]),
    Vector("bom_inside_value_kept", b"data: " + BOM + b"x\n\n", [ev("\ufeffx")]),
    Vector("bom_only", BOM, []),

    # ---- comments (lines starting with ':'); one leading space removed like field values ----
    Vector("comments_with_data", b": hello\n:\n:  two\ndata: x\n\n", [ev("x", comments=("hello", "", " two"))]),
    # Not dispatched by the spec (empty data buffer); returned here so a heartbeat is forwarded.
    Vector("comment_only_block_returned_with_data_none", b": keep-alive\n\n", [ev(None, comments=("keep-alive",))]),
    Vector("comment_with_colon_inside", b":a:b\n\n", [ev(None, comments=("a:b",))]),

    # ---- data: lines concatenated with LF, one trailing LF removed (§9.2.6 dispatch) ----
    Vector("data_concatenation", b"data: a\ndata: b\ndata: c\n\n", [ev("a\nb\nc")]),
    Vector("data_empty_value", b"data: \n\n", [ev("")]),
    Vector("data_colon_no_value", b"data:\n\n", [ev("")]),
    Vector("data_field_without_colon", b"data\n\n", [ev("")]),
    Vector("two_empty_data_lines", b"data\ndata\n\n", [ev("\n")]),
    Vector("empty_then_value", b"data:\ndata: x\n\n", [ev("\nx")]),
    Vector("data_without_space", b"data:x\n\n", [ev("x")]),
    Vector("two_spaces_only_one_stripped", b"data:  x\n\n", [ev(" x")]),
    Vector("tab_not_stripped", b"data:\tx\n\n", [ev("\tx")]),
    Vector("trailing_spaces_kept", b"data: x  \n\n", [ev("x  ")]),
    Vector("colon_inside_value", b"data: a:b: c\n\n", [ev("a:b: c")]),
    Vector("nul_in_data_kept", b"data: a\x00b\n\n", [ev("a\x00b")]),

    # ---- field names: exact, case-sensitive; unknown ones ignored ----
    Vector("unknown_fields_ignored", b"foo: bar\nData: y\ndata : z\n data: w\ndata: x\n\n", [ev("x")]),
    Vector("unknown_field_only_block", b"foo: bar\n\n", [ev(None)]),
    Vector("field_name_without_colon_unknown", b"foo\ndata: x\n\n", [ev("x")]),

    # ---- event ----
    Vector("event_and_data", b"event: delta\ndata: x\n\n", [ev("x", event="delta")]),
    Vector("last_event_field_wins", b"event: a\nevent: b\ndata: x\n\n", [ev("x", event="b")]),
    # The spec dispatches nothing for a block without data and resets the event type buffer; we return
    # the block (data None) for pass-through, and the type does not carry into the next block either.
    Vector("event_without_data", b"event: ping\n\ndata: x\n\n", [ev(None, event="ping"), ev("x")]),
    Vector("event_empty_value", b"event\ndata: x\n\n", [ev("x", event="")]),

    # ---- id: NUL-free values only; an empty value is an explicit reset ----
    Vector("id", b"id: 42\ndata: x\n\n", [ev("x", id="42")]),
    Vector("id_with_nul_ignored", b"id: a\x00b\ndata: x\n\n", [ev("x")]),
    Vector("id_with_nul_keeps_earlier_id", b"id: 1\nid: a\x00b\ndata: x\n\n", [ev("x", id="1")]),
    # Per block, not sticky: the spec's last-event-id would read "5", "", "", "" for these four events.
    Vector("id_reset_with_empty_value", b"id: 5\ndata: a\n\nid\ndata: b\n\nid:\ndata: c\n\ndata: d\n\n",
           [ev("a", id="5"), ev("b", id=""), ev("c", id=""), ev("d")]),
    Vector("id_only_block_returned", b"id: 7\n\n", [ev(None, id="7")]),

    # ---- retry: only ASCII digits, else the field is ignored (an earlier valid one stays) ----
    Vector("retry_digits", b"retry: 3000\ndata: x\n\n", [ev("x", retry=3000)]),
    Vector("retry_leading_zeros", b"retry: 007\n\n", [ev(None, retry=7)]),
    Vector("retry_only_block_returned", b"retry: 10\n\n", [ev(None, retry=10)]),
    Vector("retry_non_digits_ignored",
           b"retry: 1a\ndata: a\n\nretry: -1\ndata: b\n\nretry:  5\ndata: c\n\nretry: 1.5\ndata: d\n\n"
           b"retry:\ndata: e\n\nretry: \xd9\xa1\ndata: f\n\nretry: +5\ndata: g\n\n",
           [ev("a"), ev("b"), ev("c"), ev("d"), ev("e"), ev("f"), ev("g")]),
    Vector("retry_invalid_keeps_earlier", b"retry: 5\nretry: x\ndata: y\n\n", [ev("y", retry=5)]),
    Vector("retry_last_valid_wins", b"retry: 5\nretry: 6\ndata: y\n\n", [ev("y", retry=6)]),

    # ---- all fields together ----
    Vector("all_fields", b"id: 7\nevent: delta\nretry: 3000\ndata: {\ndata: }\n: note\n\n",
           [ev("{\n}", event="delta", id="7", retry=3000, comments=("note",))]),

    # ---- incomplete block at EOF: discarded (not returned), reported by has_partial ----
    Vector("incomplete_block_at_eof", b"data: a\n\ndata: b", [ev("a")], partial=True),
    Vector("incomplete_block_one_line_end", b"data: a\n\ndata: b\n", [ev("a")], partial=True),
    Vector("incomplete_block_crlf", b"data: a\r\n\r\ndata: b\r\n", [ev("a")], partial=True),
    Vector("incomplete_only", b"data: a", [], partial=True),
    Vector("incomplete_comment", b": x\n", [], partial=True),

    # ---- UTF-8: decoded per complete block, so a character split across reads is never mangled ----
    Vector("multibyte_utf8", "data: h\u00e9llo \u20ac \U0001f600 \u65e5\u672c\n\n".encode(),
           [ev("h\u00e9llo \u20ac \U0001f600 \u65e5\u672c")]),
    Vector("multibyte_in_every_field",
           "event: \u00e9\nid: \u20ac\n: \U0001f600\ndata: \u65e5\n\n".encode(),
           [ev("\u65e5", event="\u00e9", id="\u20ac", comments=("\U0001f600",))]),
    Vector("invalid_utf8_replaced", b"data: a\xffb\xe2\x82\n\n", [ev("a\ufffdb\ufffd")]),
    Vector("truncated_multibyte_before_line_end", b"data: \xf0\x9f\x98\ndata: x\n\n", [ev("\ufffd\nx")]),
]


def fields(e: SSEEvent) -> tuple:
    return (e.data, e.event, e.id, e.retry, e.comments)


def two_piece_splits(stream: bytes) -> list[list[bytes]]:
    return [[stream[:p], stream[p:]] for p in range(len(stream) + 1)]


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i:i + 1] for i in range(len(stream))]


def all_feedings(stream: bytes) -> list[list[bytes]]:
    return [[stream], bytewise(stream), *two_piece_splits(stream)]


def decode(pieces: list[bytes]) -> tuple[list[SSEEvent], SSEDecoder]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for p in pieces:
        out += dec.feed(p)
    return out, dec


@pytest.mark.parametrize("v", VECTORS, ids=[v.name for v in VECTORS])
def test_decoder(v: Vector) -> None:
    for pieces in all_feedings(v.stream):
        events, dec = decode(pieces)
        assert [fields(e) for e in events] == v.events, pieces
        # raw: the events' bytes are exactly the bytes consumed, in order.
        assert b"".join(e.raw for e in events) == v.stream[:len(v.stream) - dec.pending], pieces
        assert dec.has_partial == v.partial, pieces
        dec.close()
        assert dec.has_partial == v.partial and dec.pending == 0


@pytest.mark.parametrize("v", VECTORS, ids=[v.name for v in VECTORS])
def test_splitter(v: Vector) -> None:
    for pieces in all_feedings(v.stream):
        sp = SSESplitter()
        outs = [sp.feed(p) for p in pieces]
        forwarded = b"".join(outs)
        # A prefix of the input, and only the incomplete tail is held.
        assert forwarded == v.stream[:len(forwarded)] and len(forwarded) + sp.pending == len(v.stream), pieces
        # ... ending on a block boundary: what it forwards decodes completely, with the same events
        # whether re-decoded in the splitter's pieces or at once.
        for again in (outs, [forwarded]):
            events, dec = decode(again)
            assert [fields(e) for e in events] == v.events, pieces
            assert not dec.has_partial, pieces
        # What is held is at most one incomplete block (or blank lines): decoding all of it yields nothing.
        held = v.stream[len(forwarded):]
        assert decode([held])[0] == [] or held.startswith(BOM)
        if not v.stream.startswith(BOM[:1]):  # the splitter does not know the BOM (it only delays a blank line)
            assert sp.has_partial == v.partial, pieces


def test_vectors_cover_every_rule() -> None:
    names = {v.name for v in VECTORS}
    assert len(names) == len(VECTORS)
    for rule in ("crlf", "cr", "lf", "bom_at_start", "bom_in_the_middle_not_stripped", "comments_with_data",
                 "data_concatenation", "data_field_without_colon", "two_spaces_only_one_stripped",
                 "id_with_nul_ignored", "retry_non_digits_ignored", "incomplete_block_at_eof", "multibyte_utf8",
                 "event_without_data", "id_reset_with_empty_value", "retry_digits", "unknown_fields_ignored",
                 "data_empty_value", "data_without_space"):
        assert rule in names


# ---- the read boundary inside a CRLF: a CR at the end of one feed, its LF at the start of the next ----------


def test_cr_at_feed_end_then_lf_inside_a_block_is_one_line_end() -> None:
    # "data: a" CR | LF "data: b" ...: the LF completes the CRLF; it must not read as a blank line.
    events, dec = decode([b"data: a\r", b"\ndata: b\n\n"])
    assert [fields(e) for e in events] == [ev("a\nb")]
    assert not dec.has_partial


def test_cr_blank_line_at_feed_end_dispatches_at_once_and_lf_is_not_a_blank_line() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    # The blank line's CR completes the block now, without waiting for a possible LF.
    (e,) = dec.feed(b"\n\r")
    assert fields(e) == ev("a") and e.raw == b"data: a\r\n\r"
    # The LF that then arrives is the second half of that CRLF: nothing is dispatched, nothing is partial.
    assert dec.feed(b"\n") == [] and not dec.has_partial
    (e,) = dec.feed(b"data: b\r\n\r\n")
    assert fields(e) == ev("b")
    assert e.raw == b"\ndata: b\r\n\r\n"  # the carried LF opens the next block's raw
    sp = SSESplitter()
    assert sp.feed(b"data: a\r") == b""
    assert sp.feed(b"\n\r") == b"data: a\r\n\r"
    assert sp.feed(b"\n") == b""
    assert sp.feed(b"data: b\r\n\r\n") == b"\ndata: b\r\n\r\n"


def test_lone_cr_at_feed_end_then_a_non_lf_byte() -> None:
    # "data: a" CR | "data: b": the CR was a line end on its own; no line merges across it.
    events, _ = decode([b"data: a\r", b"data: b\r\r"])
    assert [fields(e) for e in events] == [ev("a\nb")]


def test_bound_holds_while_waiting_for_a_bom() -> None:
    # Found by tests/fuzz: the first bytes of a possible BOM were held without checking max_event_bytes.
    dec = SSEDecoder(max_event_bytes=1)
    with pytest.raises(ProtocolError):
        dec.feed(b"\xef\xbb")
    assert dec.pending == 0
