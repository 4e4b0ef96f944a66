"""HTTP/1.1 request reader, sans-IO: bytes in (`feed`), complete requests or framing errors out (`events`).

It owns httptools (llhttp), the `FramingGuard` that bounds what llhttp does not, the RFC 9112 rules
(Host, Transfer-Encoding, versions, Expect, the HTTP/2 preface), the size limits, and the replay of
heads llhttp refuses but that deserve a better answer. Between messages a plain head (the strict subset
SDKs send) is read by one C call instead (`_feed_fast`, fastgw/proto/_plainheadc.c), with the same checks;
everything else reaches llhttp from its first byte. No socket, loop or timer: the shell reads
`state` after each `feed` to arm its header and body timers, and answers `events` in order.

`on_head` lets the layer above judge a request on its head alone, before a byte of its body is read
(a missing key, a worker with no room for another body): a refused head is queued as a `Request`
with `refusal` set and nothing after it is read.

The connection's lifecycle is one enum (`ReaderState`) with one transition table (`TRANSITIONS`),
as in h11's `_state.py`; an illegal transition raises `StateError` naming the state and the event.
"""

from __future__ import annotations

import enum
from typing import Callable, Final

import httptools

from fastgw.proto import limits
from fastgw.proto.errors import HttpError, LimitError, ProtocolError, StateError
from fastgw.proto.framing_guard import FramingGuard
from fastgw.proto.plainhead import read_request

__all__ = ["Request", "RequestReader", "ReaderState", "ReaderEvent", "TRANSITIONS", "StateError"]

# tchar (RFC 9110 §5.6.2): what a method token is made of; bytes.translate deletes them to test a token.
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What a Host value (RFC 9110 §7.2: uri-host [":" port], RFC 3986 §3.2.2) is made of: reg-name (unreserved,
# pct-encoded, sub-delims), IP-literal brackets and the port colon. Anything else (space, "/", "@", "?", "#",
# controls, obs-text) is an invalid Host, refused with 400 (RFC 9112 §3.2).
_HOST_CHARS: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]"
# The methods a gateway's clients send, decoded once (a str made per request otherwise).
_METHODS: Final = {m.encode(): m for m in ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")}
# A method token still growing past this is refused (400); the longest registered method is 17 bytes.
_MAX_METHOD: Final = 64
# Heads parsed anew per connection. Each copies the rest of its read and nests one call deeper (a
# pipelined head after it may need the same), so a client sending thousands must not get them all.
_MAX_REPLAYS: Final = 16
# llhttp's reasons for refusing a Transfer-Encoding that may only need its OWS or empty elements removed.
_TE_REFUSALS: Final = frozenset({"Invalid `Transfer-Encoding` header value", "Request has invalid `Transfer-Encoding`"})
# The server connection preface (an empty SETTINGS frame, RFC 9113 §3.4) and a GOAWAY with last stream 0 and
# HTTP_1_1_REQUIRED (0xd, §7): what an h2 prior-knowledge client can read and report ("HTTP/1.1 required"),
# where an HTTP/1.1 status line is to it a protocol error with no reason.
_GOAWAY_DEBUG: Final = b"this port speaks HTTP/1.1 only"
H2_GOAWAY: Final = (b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                    + (8 + len(_GOAWAY_DEBUG)).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00"
                    + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x0d" + _GOAWAY_DEBUG)


class ReaderState(enum.Enum):
    """Where the connection's request byte stream is."""

    IDLE = "IDLE"  # between messages
    HEAD = "HEAD"  # a request head is being received
    BODY = "BODY"  # the head was accepted; its body is being received
    REPLAY = "REPLAY"  # llhttp refused a head; its bytes are collected to answer it better or parse it anew
    MUST_CLOSE = "MUST_CLOSE"  # an Upgrade/CONNECT request or a refused head: answer what is queued, read nothing more
    FAILED = "FAILED"  # a framing or limit error was queued: nothing after it is read
    CLOSED = "CLOSED"  # the connection is gone

    # Members are singletons: identity hashing, in C, instead of Enum's hash of the name (a Python call for each
    # of the ~6 transition-table lookups of every request).
    __hash__ = object.__hash__


class ReaderEvent(enum.Enum):
    """What moves the state."""

    BEGIN = "BEGIN"  # llhttp began a message
    HEAD_DONE = "HEAD_DONE"  # the head passed every check
    END = "END"  # the message (body included) is complete
    REFUSE = "REFUSE"  # llhttp refused a head that may deserve 501 or a normalised Transfer-Encoding
    REPARSE = "REPARSE"  # the refused head is parsed anew by a fresh parser
    UPGRADE = "UPGRADE"  # llhttp stopped after an Upgrade/CONNECT request
    STOP = "STOP"  # `on_head` refused a head: it is answered, nothing after it is read
    FAIL = "FAIL"  # an error answers in order, then the connection closes
    CLOSE = "CLOSE"  # the transport is gone

    __hash__ = object.__hash__  # as ReaderState's


_S, _E = ReaderState, ReaderEvent
# Final, one per line: compiled, each is then a C static, where a module global is a dictionary lookup at each use
# (~130 instructions; the reader and the server compare states a dozen times a request).
IDLE: Final = ReaderState.IDLE
HEAD: Final = ReaderState.HEAD
BODY: Final = ReaderState.BODY
REPLAY: Final = ReaderState.REPLAY
MUST_CLOSE: Final = ReaderState.MUST_CLOSE
FAILED: Final = ReaderState.FAILED
CLOSED: Final = ReaderState.CLOSED
_BEGIN: Final = ReaderEvent.BEGIN
_HEAD_DONE: Final = ReaderEvent.HEAD_DONE
_END: Final = ReaderEvent.END

#: The whole lifecycle: state -> {event: next state}. Anything missing is a bug in the reader or its shell.
TRANSITIONS: Final[dict[ReaderState, dict[ReaderEvent, ReaderState]]] = {
    IDLE: {_BEGIN: HEAD, _E.REFUSE: REPLAY, _E.UPGRADE: MUST_CLOSE, _E.FAIL: FAILED, _E.CLOSE: CLOSED},
    HEAD: {_HEAD_DONE: BODY, _E.REFUSE: REPLAY, _E.STOP: MUST_CLOSE, _E.FAIL: FAILED, _E.CLOSE: CLOSED},
    BODY: {_END: IDLE, _E.REFUSE: REPLAY, _E.FAIL: FAILED, _E.CLOSE: CLOSED},
    REPLAY: {_E.REPARSE: IDLE, _E.FAIL: FAILED, _E.CLOSE: CLOSED},
    MUST_CLOSE: {_E.CLOSE: CLOSED},
    FAILED: {_E.CLOSE: CLOSED},
    CLOSED: {},
}


#: Request targets seen lately, each with its (path, query): a client sends a handful of targets, so a request finds
#: its path by one lookup, and the path is the same str object each time, its hash computed once (the router, the
#: metrics and the access line each look it up). Bounded: a client varying its targets only refills it.
_targets: Final[dict[bytes, tuple[str, bytes]]] = {}


def _split_target(target: bytes) -> tuple[str, bytes]:
    """(path, query) of an origin-form target, kept in `_targets` when it is short."""
    q = target.find(b"?")
    split = ((target if q < 0 else target[:q]).decode("latin-1"), b"" if q < 0 else target[q + 1:])
    if len(target) <= limits.TARGET_CACHE_KEY_BYTES:
        if len(_targets) >= limits.TARGET_CACHE_ENTRIES:
            _targets.clear()
        _targets[target] = split
    return split


class Request:
    """One parsed request. Header names are lower-cased bytes; values are raw bytes.

    `refusal`: the error `on_head` answered its head with (the body was never read); `peer`: the client's
    address as the connection gives it; `context`: whatever the layer above attached at head time.
    """

    __slots__ = ("method", "target", "path", "query", "headers", "body", "version", "keep_alive", "seq", "refusal",
                 "peer", "context")

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                 version: str, keep_alive: bool, peer: str = "") -> None:
        self.method = method
        # (The origin form, "/...", tested first: `startswith` is native to compiled code, where two slices and
        # compares were made for every request. Not `b"?" in target`: bytes' `in` tries its operand as an int
        # first and formats a TypeError, ~2,100 instructions.)
        if not target.startswith(b"/") and (target.startswith(b"http://") or target.startswith(b"https://")):
            # Absolute form (RFC 9112 §3.2.2: a server MUST accept it): route by its path.
            slash = target.find(b"/", target.find(b"//") + 2)
            target = target[slash:] if slash > 0 else b"/"
        self.target = target
        split = _targets.get(target)
        if split is None:
            split = _split_target(target)
        self.path, self.query = split
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.seq = 0
        self.refusal: HttpError | None = None
        self.peer = peer
        self.context: object = None

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (name lower-case), or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


def _h2_preface() -> ProtocolError:
    # The HTTP/2 connection preface (prior knowledge, RFC 9113 §3.4): this port speaks HTTP/1.1. The answer is
    # in HTTP/2 (SETTINGS, GOAWAY HTTP_1_1_REQUIRED), the only thing such a client can read.
    err = ProtocolError("HTTP/2 is not supported on this port; use HTTP/1.1", status=505,
                        code="http_version_not_supported")
    err.raw = H2_GOAWAY
    return err


class _Refused(Exception):
    """Raised from on_headers_complete to stop llhttp at a head `on_head` refused."""


def _header_limit(max_header_bytes: int) -> LimitError:
    return LimitError("request headers exceed %d bytes" % max_header_bytes, status=431,
                      code="request_header_fields_too_large")


def _body_limit(max_body_bytes: int) -> LimitError:
    return LimitError("request body exceeds %d bytes" % max_body_bytes, status=413, code="request_too_large")


def _normalize_te(head: bytes) -> bytes | None:
    """The head with each Transfer-Encoding value rewritten as its non-empty, OWS-stripped list elements
    (RFC 9110 §5.6.1: empty elements are ignored), or None when that changes nothing."""
    lines = head.split(b"\r\n")
    changed = False
    for i in range(1, len(lines)):
        name, colon, value = lines[i].partition(b":")
        if colon and name.lower() == b"transfer-encoding":
            elems = [e for e in (e.strip(b" \t") for e in value.split(b",")) if e]
            if elems:
                line = name + b": " + b", ".join(elems)
                if line != lines[i]:
                    lines[i] = line
                    changed = True
    return b"\r\n".join(lines) if changed else None


def _check_version(version: str) -> str:
    """The version the request is served as (RFC 9110 §2.5), or a ProtocolError."""
    if version == "1.1" or version == "1.0":
        return version
    if version == "0.9":
        # llhttp reports a version-less request line ("GET /", HTTP/0.9's simple request) as 0.9.
        raise ProtocolError("HTTP/0.9 requests are not supported", code="unsupported_http_version")
    if version[0] != "1":
        # RFC 9110 §15.6.6: 505 refuses the request's major version.
        raise ProtocolError(f"HTTP/{version} is not supported on this port; use HTTP/1.1", status=505,
                            code="http_version_not_supported")
    # A higher minor version of a major version we implement is processed as the highest minor version
    # we conform to (and answered with HTTP/1.1, as every response is).
    return "1.1"


def _is_chunked(te: bytes, version: str) -> bool:
    """Check a Transfer-Encoding value (RFC 9112 §6.1): only `chunked`, once and last, and never in HTTP/1.0."""
    if version == "1.0":
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        raise ProtocolError("Transfer-Encoding is not allowed in HTTP/1.0", code="bad_transfer_encoding")
    codings = [c.strip().lower() for c in te.split(b",") if c.strip()]
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        raise ProtocolError("chunked must be the final transfer coding, once", code="bad_transfer_encoding")
    if len(codings) > 1:
        raise ProtocolError("unsupported transfer coding %r" % codings[0].decode("latin-1"), status=501,
                            code="unsupported_transfer_encoding")
    return True


class RequestReader:
    """One connection's request stream: `feed` bytes, take `Request`s and `HttpError`s from `events` in order.

    After an error event nothing more is read (`state` FAILED); after an Upgrade or CONNECT request
    neither (MUST_CLOSE). `continue_due` says that the head just read asked for 100 Continue, is first
    in line, and still waits for its body: the shell sends the interim response if it is idle.
    """

    __slots__ = ("state", "events", "continue_due", "heads", "version", "on_head", "peer", "body_expected",
                 "counted_total", "_max_header_bytes", "_max_headers", "_max_body_bytes", "_parser", "_guard", "_url",
                 "_headers", "_head_bytes", "_body", "_body_size", "_continue_seq", "_replay", "_replay_kind",
                 "_replay_reason", "_replays", "_req", "_cont", "_host_ok", "read_head", "_fast_left")

    def __init__(self, max_header_bytes: int = limits.MAX_HEADER_BYTES, max_headers: int = limits.MAX_HEADERS,
                 max_body_bytes: int = limits.MAX_BODY_BYTES) -> None:
        self.state = IDLE
        #: Requests and errors in arrival order; the shell pops from the left.
        # A list, not a deque: an empty deque is a 624-byte block, and every open connection holds this queue (it
        # stays short: the server stops parsing at a few queued requests, and pop(0) is cheap at that length).
        self.events: list[Request | HttpError] = []
        self.continue_due = False
        #: Request heads accepted so far (a request's `seq` is its index).
        self.heads = 0
        #: Of the current message, as the head settled it.
        self.version = "1.1"
        #: Judges each accepted head before its body is read: an HttpError refuses it (see the module docstring).
        self.on_head: Callable[[Request], HttpError | None] | None = None
        #: The client's address, copied into each request.
        self.peer = ""
        #: Of the current message: its Content-Length, -1 when chunked, 0 without a body (set before `on_head`).
        self.body_expected = 0
        #: Body bytes of chunked messages received on this connection (their size is known only as they come).
        self.counted_total = 0
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_body_bytes = max_body_bytes
        self._parser = self._new_parser()
        self._guard = FramingGuard(max_trailer_bytes=max_header_bytes)
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._continue_seq = -1  # the last head that was given continue_due (a head parsed anew comes twice)
        # a head llhttp refused, collected until it can be answered or parsed anew (see _recover)
        self._replay: bytearray | None = None
        self._replay_kind = ""
        self._replay_reason = ""
        self._replays = 0  # heads parsed anew (bounded: each copies the rest of its read)
        self._req: Request | None = None  # the request whose head was accepted, until it is complete
        # The last Host value found valid: a keep-alive client sends the same one with every request.
        self._host_ok = b""
        # An Upgrade request whose body is read by a fresh parser (httptools skips the body of any Upgrade
        # request): that parser's own head only frames the body, and its callbacks fill this request.
        self._cont: Request | None = None
        #: Reads plain heads in C between messages (`_feed_fast`); None gives every head to llhttp (tests set it
        #: to compare the two).
        self.read_head = read_request
        #: Content-Length bytes still to come of a body whose head `read_head` read (llhttp never saw it).
        self._fast_left = 0

    # ---- state ----------------------------------------------------------------------------------------
    def _to(self, event: ReaderEvent) -> None:
        nxt = TRANSITIONS[self.state].get(event)
        if nxt is None:
            raise StateError(self.state, event)
        self.state = nxt

    @property
    def in_head(self) -> bool:
        """A request head has begun and is not complete (the header timer runs)."""
        return self.state is HEAD or self.state is REPLAY

    @property
    def in_message(self) -> bool:
        """A request has begun and is not complete."""
        return self.state is HEAD or self.state is BODY or self.state is REPLAY

    @property
    def body_received(self) -> int:
        """Body bytes of the current message so far."""
        return self._body_size

    @property
    def body_remaining(self) -> int:
        """Content-Length bytes of the current body still to come (0 when chunked or none)."""
        if self.state is BODY and self.body_expected > 0:
            return self.body_expected - self._body_size
        return 0

    @property
    def stopped(self) -> bool:
        """Nothing more is read: an error was queued, an Upgrade stopped the parser, or the connection closed."""
        return self.state is FAILED or self.state is MUST_CLOSE or self.state is CLOSED

    def fail(self, err: HttpError) -> None:
        """Queue an error to answer in order; it closes the connection and nothing after it is read."""
        if err.request is None and self._req is not None and (self.state is HEAD or self.state is BODY):
            err.request = self._req  # its method, path and headers, for the access line
        self._to(_E.FAIL)
        self.continue_due = False
        err.close = True
        self.events.append(err)

    def close(self) -> None:
        """The connection is gone: drop what was not answered."""
        self._to(_E.CLOSE)
        self.events.clear()

    # ---- bytes in -------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse the next bytes of the connection; complete requests and errors are appended to `events`."""
        st = self.state
        if st is IDLE:
            if self.read_head is not None and self._guard.idle and self._cont is None:
                self._feed_fast(data, 0)
            else:
                self._feed(data, data)
        elif st is BODY and self._fast_left:
            self._fast_body(data)
        elif st is REPLAY:
            self._replay += data  # type: ignore[operator]
            self._resume_replay()
        elif st is not FAILED and st is not MUST_CLOSE and st is not CLOSED:
            self._feed(data, data)

    # ---- plain heads, read in C ------------------------------------------------------------------------
    # Between messages, a head `read_head` reads whole (the strict subset its source names) and its Content-Length
    # body never reach llhttp or the guard: llhttp stays at a message start and the guard idle, so the first head it
    # does not read goes to them from its first byte, as if every message before it had.

    def _feed_fast(self, data: bytes, pos: int) -> None:
        """Read the plain heads (and their bodies) at data[pos:] in C; the rest goes to llhttp."""
        read_head = self.read_head
        assert read_head is not None
        n = len(data)
        while True:
            got = read_head(data, pos, self._max_header_bytes, self._max_headers)
            if got is None:
                rest = data[pos:] if pos else data
                if rest:
                    self._feed(rest, rest)
                return
            method, url, headers, end = got
            self.state = HEAD  # (IDLE -BEGIN-> HEAD, as on_message_begin)
            self._headers = headers
            self._body = []
            self._body_size = 0
            try:
                self._accept(method, url, "1.1", True)
            except _Refused:
                self._to(_E.STOP)
                self.continue_due = False
                return
            except HttpError as e:
                self.fail(e)
                return
            except StateError:
                raise
            except Exception:  # (a fault of `on_head`: answered as when llhttp wraps it, never out of `feed`)
                self.fail(ProtocolError("malformed request: User callback error"))
                return
            length = self.body_expected
            if length > n - end:
                if n > end:
                    self._body.append(data[end:])
                    self._body_size = n - end
                self._fast_left = length - (n - end)
                return
            pos = end + length
            if length:
                self._body.append(data[end:pos])
                self._body_size = length
            self._end()
            if pos == n:
                return

    def _fast_body(self, data: bytes) -> None:
        """More of the body of a head read in C."""
        left = self._fast_left
        n = len(data)
        if n < left:
            self._body.append(data)
            self._body_size += n
            self._fast_left = left - n
            return
        self._fast_left = 0
        self._body.append(data[:left] if n > left else data)
        self._body_size += left
        self._end()
        if n > left:
            self.feed(data[left:])

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # llhttp refuses any version but 0.9, 1.0, 1.1 and 2.0 with a bare 400; on_headers_complete decides
        # instead (RFC 9110 §2.5). The flag only skips that check: the syntax HTTP/DIGIT.DIGIT is still enforced.
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    def _feed(self, data: bytes, raw: bytes) -> None:
        """Parse `data`; `raw` is the same bytes as received (they differ only in a head parsed anew, see
        `_resume_replay`), which the guard follows."""
        try:
            self._parser.feed_data(data)
            try:
                self._guard.feed(raw)
            except ProtocolError:
                self._forget_from_guard_error()
                if self.state is HEAD and self._parser.get_method() == b"PRI":
                    # llhttp holds the HTTP/2 preface's head until the "SM" line; the guard saw it end first.
                    raise _h2_preface() from None
                raise
            if self._guard.head_bytes > self._max_header_bytes:
                # httptools buffers a header name/value until it ends: bound that buffer too.
                raise _header_limit(self._max_header_bytes)
            if self.state is HEAD and self._req is None and not self._headers and self._url:
                self._check_simple_request()
        except httptools.HttpParserUpgrade as e:
            self._upgrade(e, data, raw)
        except HttpError as e:
            self.fail(e)
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, StateError):
                raise ctx from None
            if isinstance(ctx, _Refused):
                self._to(_E.STOP)
                self.continue_due = False
                return
            self.fail(ctx if isinstance(ctx, HttpError) else ProtocolError(f"malformed request: {e}"))
        except httptools.HttpParserInvalidMethodError as e:
            # llhttp knows a fixed list of methods: a well-formed unknown one deserves 501, garbage 400.
            self._recover("method", e, raw)
        except httptools.HttpParserError as e:
            reason = str(e)
            if reason in _TE_REFUSALS:
                self._recover("te", e, raw)
            elif reason.startswith("Invalid method for"):
                # An RTSP method (DESCRIBE, SETUP, ...) in an HTTP request: a method token we do not implement.
                self.fail(ProtocolError(f"method not implemented: {reason}", status=501, code="not_implemented"))
            elif reason.startswith("Pause on PRI"):
                self.fail(_h2_preface())
            else:
                self.fail(ProtocolError(f"malformed request: {e}"))

    def _check_simple_request(self) -> None:
        """An HTTP/0.9 request line (`GET /path` then LF, no version): llhttp would wait for header lines
        that never come, so it is refused at once (400) instead of at the header timeout."""
        # From the head's own bytes (the guard holds an unfinished head's), not llhttp's version: that is the
        # last message's until this one's is parsed, so a later message on the connection went unchecked.
        line = self._guard.request_line()
        if line is not None and line.find(b" HTTP/") < 0:
            raise ProtocolError("HTTP/0.9 requests are not supported", code="unsupported_http_version")

    def _upgrade(self, e: httptools.HttpParserUpgrade, data: bytes, raw: bytes) -> None:
        """llhttp stopped after a request asking to switch protocols. We speak HTTP/1.1 only and answer it as
        plain HTTP (RFC 9110 §7.8 lets a server ignore Upgrade). A CONNECT or a body-less Upgrade request
        is answered, then the connection closes (nothing after its head is read). An Upgrade request with a
        body (`curl --http2` POSTs with `Upgrade: h2c`) is an ordinary request: httptools skipped its body,
        so a fresh parser reads it, framed as the head announced, and goes on with what follows."""
        events = self.events
        req = events[-1] if events and isinstance(events[-1], Request) else None
        if req is None or req.method == "CONNECT" or self.body_expected == 0 or self.state is not IDLE:
            if req is not None:
                req.keep_alive = False  # its answer says close: nothing after it is read
            self._to(_E.UPGRADE)
            return
        events.pop()
        self._cont = req
        self._parser = self._new_parser()
        framing = (b"transfer-encoding: chunked\r\n" if self.body_expected < 0
                   else b"content-length: %d\r\n" % self.body_expected)
        self._feed(b"POST / HTTP/1.1\r\nhost: x\r\n" + framing + b"\r\n" + data[e.args[0]:], raw)

    def _forget_from_guard_error(self) -> None:
        # httptools accepted what the guard refuses: forget requests from the faulty one on.
        bad = self.heads - self._guard.unreached - 1
        q = self.events
        while q and isinstance(q[-1], Request) and q[-1].seq >= bad:
            q.pop()

    # ---- heads llhttp refuses that deserve a better answer than 400 ----------------------------------
    #
    # llhttp (strict) refuses an unknown method at its first byte that matches no method it knows, and a
    # Transfer-Encoding value with trailing whitespace or empty list elements ("chunked\t", "chunked, ").
    # RFC 9110 §9.1 wants 501 for a well-formed method the server does not implement, and §5.6.1 /
    # §5.5 make "chunked, " and "chunked<TAB>" mean exactly "chunked". httptools reports no error offset,
    # so the guard finds the refused head (`FramingGuard.failed_head`); its bytes are collected in
    # `_replay` until they decide (the method token up to its SP; the whole head for Transfer-Encoding).
    #
    # Accepting the normalised Transfer-Encoding is safe against request smuggling: it is parsed again by
    # a fresh llhttp with every strict check (chunked final and once, no Content-Length beside it, strict
    # chunk-size lines), so the body length is exactly what an RFC-conforming front end computes for the
    # same bytes. A front end that instead ignores the header and treats the body as the next request
    # cannot smuggle through us either: those bytes must then parse as chunk-size lines, which no request
    # line does (a method token is followed by SP, which a chunk-size line refuses).

    def _recover(self, kind: str, err: Exception, raw: bytes) -> None:
        announced = self.state is BODY  # on_headers_complete accepted the refused head before llhttp refused it
        try:
            head = self._guard.failed_head(raw, announced)
        except ProtocolError as e:  # an earlier message in this read broke a guard limit: that answers first
            self._forget_from_guard_error()
            self.fail(e)
            return
        if head is None or (kind == "te" and self._replays >= _MAX_REPLAYS):
            self.fail(ProtocolError(f"malformed request: {err}"))
            return
        if announced:
            # on_headers_complete counted the refused head; it will be counted again when parsed anew.
            self.heads -= 1
        self._to(_E.REFUSE)
        self._replay = bytearray(head)
        self._replay_kind = kind
        self._replay_reason = str(err)
        self._resume_replay()

    def _resume_replay(self) -> None:
        buf = self._replay
        assert buf is not None
        if self._replay_kind == "method":
            sp = buf.find(b" ")
            token = bytes(buf if sp < 0 else buf[:sp])
            if not token or token.translate(None, _TCHAR):
                self.fail(ProtocolError(f"malformed request: {self._replay_reason}"))
            elif sp >= 0:
                self.fail(ProtocolError("method %r is not implemented" % token.decode("latin-1"), status=501,
                                        code="not_implemented"))
            elif len(token) > _MAX_METHOD:
                self.fail(ProtocolError("request method longer than %d bytes" % _MAX_METHOD))
            return  # else the token goes on in the next read
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self._max_header_bytes:
                self.fail(_header_limit(self._max_header_bytes))
            return
        raw = bytes(buf)
        fixed = _normalize_te(raw[:end + 4])
        if fixed is None:  # nothing to normalise: llhttp's refusal stands
            self.fail(ProtocolError(f"malformed request: {self._replay_reason}"))
            return
        self._replay = None
        self._replays += 1
        self._to(_E.REPARSE)
        self._parser = self._new_parser()  # the refused one is in its error state for good
        self._feed(fixed + raw[end + 4:], raw)

    # ---- parser callbacks -------------------------------------------------------------------------------
    # The three per-message transitions are inlined (a table lookup, no call): they run for every request.

    def on_message_begin(self) -> None:
        nxt = TRANSITIONS[self.state].get(_BEGIN)
        if nxt is None:
            raise StateError(self.state, _BEGIN)
        self.state = nxt
        self._url = []
        self._headers = []
        self._head_bytes = 0
        self._body = []
        self._body_size = 0
        self._req = self._cont

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self._max_header_bytes:
            raise LimitError("request line too long", status=414 if len(self._headers) == 0 else 431,
                             code="uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state is not HEAD:
            # A trailer field (after a chunked body): RFC 9110 §6.5.1 forbids merging it into the header
            # section, where it would reach the application as a header no front end ever saw (an
            # Authorization or X-Forwarded-For smuggled past a proxy that checks headers). Nothing here
            # uses trailers, so they are discarded; the framing guard bounds their size.
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_header_bytes:
            raise _header_limit(self._max_header_bytes)
        if len(self._headers) >= self._max_headers:
            raise LimitError("more than %d request headers" % self._max_headers, status=431,
                             code="request_header_fields_too_large")
        # Optional whitespace around a value is not part of it (RFC 9110 §5.5); llhttp keeps trailing OWS.
        self._headers.append((name.lower(), value.rstrip(b" \t") if value[-1:] in (b" ", b"\t") else value))

    def on_headers_complete(self) -> None:
        if self._cont is not None:  # the framing head of an Upgrade request's body (see _upgrade)
            self.state = BODY
            return
        parser = self._parser
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        raw = parser.get_method()
        cl = self._accept(_METHODS.get(raw) or raw.decode("ascii", "replace"), url, parser.get_http_version(),
                          parser.should_keep_alive())
        self._guard.push_framing(self.body_expected < 0, None if cl < 0 else cl)

    def _accept(self, method: str, url: bytes, http_version: str, keep_alive: bool) -> int:
        """Judge the head whose fields are in `_headers` (state HEAD) and move to BODY; its Content-Length, or -1
        without one. Raises the HttpError that answers it, or _Refused when `on_head` refused it."""
        req = self._req = Request(method, url, self._headers, b"", "1.1", keep_alive, self.peer)
        version = req.version = self.version = _check_version(http_version)
        te: bytes | None = None
        cl: bytes | None = None
        hosts = 0
        host = b""
        expect: bytes | None = None
        for n, v in self._headers:
            if n == b"transfer-encoding":
                te = v if te is None else te + b"," + v
            elif n == b"content-length":
                cl = v
            elif n == b"host":
                hosts += 1
                host = v
            elif n == b"expect":
                expect = v
        # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any request with more than one
        # Host line or an invalid Host value.
        if hosts > 1:
            raise ProtocolError("duplicate Host header", code="bad_host")
        if hosts == 0:
            if version == "1.1":
                raise ProtocolError("HTTP/1.1 requires exactly one Host header", code="bad_host")
        elif host != self._host_ok:
            if host.translate(None, _HOST_CHARS):
                raise ProtocolError("invalid Host header", code="bad_host")
            self._host_ok = host
        chunked = te is not None and _is_chunked(te, version)
        length = 0
        if cl is not None:
            length = int(cl)  # llhttp (or read_head) has validated digits-only and refused duplicates and CL+TE
            if length > self._max_body_bytes:
                raise _body_limit(self._max_body_bytes)
        self.body_expected = -1 if chunked else length
        if self.on_head is not None:
            refusal = self.on_head(req)
            if refusal is not None:
                # Answered in order; the body is never read, nor anything after it.
                refusal.close = True
                refusal.request = req
                req.refusal = refusal
                req.keep_alive = False
                req.seq = self.heads
                self.heads += 1
                self.events.append(req)
                self._req = None
                raise _Refused()
        if expect is not None:
            self._expect(expect, version == "1.1" and (chunked or length > 0))
        req.seq = self.heads
        self.heads += 1
        nxt = TRANSITIONS[self.state].get(_HEAD_DONE)
        if nxt is None:
            raise StateError(self.state, _HEAD_DONE)
        self.state = nxt
        return -1 if cl is None else length

    def _expect(self, expect: bytes, body_due: bool) -> None:
        if expect.lower() != b"100-continue":
            raise ProtocolError("unsupported Expect", status=417, code="expectation_failed")
        # RFC 9110 §10.1.1: only promise to read the body when we are about to (nothing queued before it).
        if body_due and not self.events and self._continue_seq != self.heads:
            self._continue_seq = self.heads
            self.continue_due = True

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body_bytes:
            raise _body_limit(self._max_body_bytes)
        if self.body_expected < 0:
            self.counted_total += len(body)
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        if self._cont is None:
            if req is not None:
                req.keep_alive = self._parser.should_keep_alive()
                if not req.keep_alive:
                    # llhttp refuses what follows a message that ends the connection: nothing may bypass it now.
                    self.read_head = None
        else:
            self._cont = None
        self._end()

    def _end(self) -> None:
        """The message is complete, its body in `_body` (BODY -END-> IDLE): its request is queued."""
        if self.state is not BODY:  # (END's only row: test_h1_reader holds the table to it)
            raise StateError(self.state, _END)
        self.state = IDLE
        self.continue_due = False
        req = self._req
        assert req is not None
        self._req = None
        body = self._body
        req.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self.events.append(req)
