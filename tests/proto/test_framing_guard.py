"""Framing guard: follows pipelined CL / chunked / bodiless requests for any split; enforces line and trailer limits."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgw.proto import limits
from fastgw.proto.errors import LimitError, ProtocolError
from fastgw.proto.framing_guard import FramingGuard

# --- building pipelines ------------------------------------------------------------------------------

Framing = tuple[bool, "int | None"]


def get(path: bytes = b"/") -> tuple[bytes, Framing]:
    return b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n", (False, None)


def post_cl(body: bytes) -> tuple[bytes, Framing]:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head + body, (False, len(body))


def post_chunked(
    chunks: list[tuple[bytes, bytes]], trailers: list[bytes] = (), last_ext: bytes = b""
) -> tuple[bytes, Framing]:
    out = [b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for data, ext in chunks:
        out.append(b"%x%s\r\n%s\r\n" % (len(data), ext, data))
    out.append(b"0" + last_ext + b"\r\n")
    out += [t + b"\r\n" for t in trailers]
    out.append(b"\r\n")
    return b"".join(out), (True, None)


# Bodies full of what a naive scanner would trip on: CRLFCRLF, a fake last chunk, a fake request.
tricky = st.sampled_from([b"\r\n\r\n", b"0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", b"\r", b"\n", b"ff;x\r\n"])
body = st.lists(st.one_of(st.binary(max_size=30), tricky), max_size=5).map(b"".join)
ext = st.sampled_from([b"", b";a=b", b";ext", b";a=1;b=2", b";" + b"e" * 200])
trailer = st.sampled_from([b"X-Checksum: abc", b"X-T: 1", b"Expires: 0"])
request = st.one_of(
    st.builds(get, st.sampled_from([b"/", b"/v1/models", b"/health"])),
    st.builds(post_cl, body),
    st.builds(
        post_chunked, st.lists(st.tuples(body.filter(bool), ext), max_size=4), st.lists(trailer, max_size=3), ext
    ),
)
# llhttp skips empty lines before a request line (RFC 9112 §2.2), so the guard must not read them as a head end.
lead = st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n", b"\n\r\n\n"])
pipelines = st.lists(st.tuples(lead, request), min_size=1, max_size=5).map(
    lambda reqs: (b"".join(lead + wire for lead, (wire, _) in reqs), [f for _, (_, f) in reqs])
)


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def run_guard(framings: list[Framing], pieces: list[bytes], **kw) -> FramingGuard:
    g = FramingGuard(**kw)
    for f in framings:
        g.push_framing(*f)
    for p in pieces:
        g.feed(p)
    return g


# --- pipelines never raise, and end between messages ---------------------------------------------------


@given(pipelines)
def test_pipeline_whole_and_bytewise(pipe):
    wire, framings = pipe
    for pieces in ([wire], bytewise(wire)):
        g = run_guard(framings, pieces)
        assert g.idle and g.state == "HEAD" and g.unreached == 0


@given(st.data())
def test_pipeline_any_split(data):
    wire, framings = data.draw(pipelines)
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    g = run_guard(framings, split_at(wire, points))
    assert g.idle and g.unreached == 0


def test_states_along_one_message():
    wire, f = post_chunked([(b"hello", b";a=b")], [b"X-T: 1"])
    g = FramingGuard()
    g.push_framing(*f)
    seen = []
    for b in bytewise(wire):
        g.feed(b)
        if not seen or seen[-1] != g.state:
            seen.append(g.state)
    assert seen == ["HEAD", "CHUNK_LINE", "CHUNK_DATA", "CHUNK_LINE", "TRAILERS", "HEAD"]
    wire, f = post_cl(b"abc")
    g = FramingGuard()
    g.push_framing(*f)
    g.feed(wire[:-1])
    assert g.state == "BODY_LENGTH" and not g.idle
    g.feed(wire[-1:])
    assert g.idle


def test_large_body_is_skipped_not_scanned():
    wire, f = post_cl(b"\r\n0\r\n\r\n" * 100_000)
    g = FramingGuard()
    g.push_framing(*f)
    for p in split_at(wire, list(range(0, len(wire), 65536))):
        g.feed(p)
    assert g.idle


# --- chunk-size line limit -----------------------------------------------------------------------------


def long_ext(n: int) -> bytes:
    """A chunk-size line `5;eee...` of exactly n bytes (without its CRLF)."""
    return b";" + b"e" * (n - 2)


def test_chunk_line_exactly_at_limit_passes():
    wire, f = post_chunked([(b"hello", long_ext(limits.MAX_CHUNK_LINE))])
    for pieces in ([wire], split_at(wire, list(range(0, len(wire), 7)))):
        assert run_guard([f], pieces).idle


@pytest.mark.parametrize("where", ["data", "last"])
def test_chunk_line_over_limit_raises(where):
    ext = long_ext(limits.MAX_CHUNK_LINE + 1)
    wire, f = post_chunked([(b"hello", ext)]) if where == "data" else post_chunked([(b"hello", b"")], last_ext=ext)
    for pieces in ([wire], split_at(wire, list(range(0, len(wire), 100)))):
        with pytest.raises(ProtocolError, match=f"chunk size line exceeds {limits.MAX_CHUNK_LINE} bytes") as e:
            run_guard([f], pieces)
        assert e.value.status == 400 and e.value.close


def test_endless_extension_caught_before_its_end_across_many_feeds():
    head, f = post_chunked([])
    head = head[: head.index(b"\r\n\r\n") + 4]
    g = FramingGuard()
    g.push_framing(*f)
    g.feed(head + b"5;")
    fed = 2
    with pytest.raises(ProtocolError, match="chunk size line exceeds"):
        while True:
            g.feed(b"e" * 10)  # never a LF: the line would go on forever
            fed += 10
            assert fed <= limits.MAX_CHUNK_LINE + 11
    assert len(g._line) <= limits.MAX_CHUNK_LINE + 1


def test_4k_extension_raises_and_limit_is_configurable():
    # MAX_CHUNK_LINE is 4 KiB of extensions plus room for the size: 4 KiB + 32 of extension is over.
    wire, f = post_chunked([(b"x", b";" + b"a" * (4096 + 32))])
    with pytest.raises(ProtocolError):
        run_guard([f], [wire])
    wire, f = post_chunked([(b"x", b";" + b"a" * 20)])
    with pytest.raises(ProtocolError, match="exceeds 16 bytes"):
        run_guard([f], [wire], max_chunk_line=16)


def test_chunk_line_over_limit_with_bare_lf_raises():
    # llhttp rejects a bare LF itself; the guard must still not let the extra byte through.
    head, f = post_chunked([])
    head = head[: head.index(b"\r\n\r\n") + 4]
    with pytest.raises(ProtocolError, match="exceeds 16 bytes"):
        run_guard([f], [head + b"5" + long_ext(17) + b"\n"], max_chunk_line=16)
    assert run_guard([f], [head + b"5" + long_ext(16) + b"\n"], max_chunk_line=16).state == "CHUNK_DATA"


@pytest.mark.parametrize("line", [b"x5", b"", b"-5", b"0x5", b"5x", b" 5", b"+5"])
def test_invalid_chunk_size_raises(line):
    head, f = post_chunked([])
    head = head[: head.index(b"\r\n\r\n") + 4]
    with pytest.raises(ProtocolError, match="invalid chunk size"):
        run_guard([f], [head + line + b"\r\n"])


def test_chunk_size_with_whitespace_and_extensions():
    head, f = post_chunked([])
    head = head[: head.index(b"\r\n\r\n") + 4]
    g = run_guard([f], [head + b"A \t;x=1\r\n" + b"y" * 10 + b"\r\n" + b"0\r\n\r\n"])
    assert g.idle


# --- trailers ---------------------------------------------------------------------------------------------


def test_trailers_over_limit_raise_431():
    wire, f = post_chunked([(b"hi", b"")], [b"X-Big: " + b"v" * limits.MAX_HEADER_BYTES])
    for pieces in ([wire], split_at(wire, list(range(0, len(wire), 1000)))):
        with pytest.raises(LimitError) as e:
            run_guard([f], pieces)
        assert e.value.status == 431


def test_trailers_exactly_at_limit_pass():
    # Trailer section = "X: vvv\r\n" + "\r\n"; make it exactly 100 bytes.
    t = b"X: " + b"v" * (100 - 3 - 4)
    wire, f = post_chunked([(b"hi", b"")], [t])
    for pieces in ([wire], bytewise(wire)):
        assert run_guard([f], pieces, max_trailer_bytes=100).idle
    wire, f = post_chunked([(b"hi", b"")], [t + b"v"])
    for pieces in ([wire], bytewise(wire)):
        with pytest.raises(LimitError):
            run_guard([f], pieces, max_trailer_bytes=100)


def test_endless_trailers_caught_across_feeds():
    head, f = post_chunked([(b"hi", b"")])
    g = FramingGuard(max_trailer_bytes=1000)
    g.push_framing(*f)
    g.feed(head[:-2])  # up to the last chunk line, without the empty line
    with pytest.raises(LimitError):
        for _ in range(200):
            g.feed(b"X-T: 12345678\r\n")


# --- out of step -------------------------------------------------------------------------------------------


def test_head_without_framing_raises():
    g = FramingGuard()
    with pytest.raises(ProtocolError, match="no framing"):
        g.feed(get()[0])


def test_unreached_counts_announced_messages():
    w1, f1 = post_cl(b"abc")
    w2, f2 = get()
    g = FramingGuard()
    g.push_framing(*f1)
    g.push_framing(*f2)
    assert g.unreached == 2
    g.feed(w1[:-3])
    assert g.unreached == 1
    g.feed(w1[-3:] + w2)
    assert g.unreached == 0 and g.idle


# --- integration: httptools first, then the guard, as the server does -----------------------------------


class Callbacks:
    def __init__(self, guard: FramingGuard) -> None:
        self.guard = guard
        self.headers: dict[bytes, bytes] = {}
        self.complete = 0

    def on_message_begin(self) -> None:
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        te = self.headers.get(b"transfer-encoding", b"").lower()
        cl = self.headers.get(b"content-length")
        self.guard.push_framing(b"chunked" in te, int(cl) if cl is not None else None)

    def on_message_complete(self) -> None:
        self.complete += 1


def serve(pieces: list[bytes], **kw) -> tuple[FramingGuard, Callbacks]:
    g = FramingGuard(**kw)
    cb = Callbacks(g)
    parser = httptools.HttpRequestParser(cb)
    for p in pieces:
        parser.feed_data(p)
        g.feed(p)
    return g, cb


@given(st.data())
def test_with_httptools_any_split(data):
    wire, framings = data.draw(pipelines)
    points = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    for pieces in ([wire], split_at(wire, points)):
        g, cb = serve(pieces)
        assert cb.complete == len(framings)
        assert g.idle and g.unreached == 0


def test_with_httptools_bytewise():
    wire = b"".join(
        w
        for w, _ in [
            post_chunked([(b"0\r\n\r\n", b";a=b"), (b"xyz", b"")], [b"X-T: 1"]),
            get(),
            post_cl(b"\r\n\r\n"),
            post_chunked([]),
        ]
    )
    g, cb = serve(bytewise(wire))
    assert cb.complete == 4 and g.idle


def test_with_httptools_limits():
    wire, _ = post_chunked([(b"hello", long_ext(limits.MAX_CHUNK_LINE))])
    g, cb = serve([wire])
    assert cb.complete == 1 and g.idle
    wire, _ = post_chunked([(b"hello", long_ext(limits.MAX_CHUNK_LINE + 1))])
    with pytest.raises(ProtocolError, match="chunk size line exceeds"):
        serve(split_at(wire, list(range(0, len(wire), 512))))
    wire, _ = post_chunked([(b"hi", b"")], [b"X-Big: " + b"v" * limits.MAX_HEADER_BYTES])
    with pytest.raises(LimitError):
        serve([wire])
