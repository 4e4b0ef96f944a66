"""Relaying a streamed answer: upstream SSE bytes to client chunks, event-aligned, with flow control both ways.

The relay is a sink driven from the upstream protocol's `data_received`: each
completed event is written to the client in the same loop iteration, byte-identical
(no decode/encode), all events completed by one read in one chunk (but for a large first read's first event
while the worker is otherwise idle, see `SSERelay.on_data`); a translated
provider's chunk objects are encoded once, here. The response head goes out with the
first byte, so a failure before it leaves the pipeline free to fall back. A slow
client pauses the upstream read; a vanished client closes the upstream. A failure
after the first byte becomes the dialect's in-stream error (for chat, an error event
and `data: [DONE]`). The relay ends by resolving `done` with a `StreamEnd`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Final, Protocol as TypingProtocol

import orjson

from fastgw.api import dialects
from fastgw.api.dialects import error_event
from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, UpstreamTimeout, from_transport
from fastgw.api.sse import DONE, drop_null_usage, usage_c
from fastgw.metrics import EventClock
from fastgw.policy.base import RequestContext
from fastgw.proto import limits
from fastgw.proto.client import BadResponse
from fastgw.proto.errors import ProtocolError
from fastgw.proto.server import Responder
from fastgw.proto.sse import SSEDecoder, SSESplitter
from fastgw.providers.base import Translator
from fastgw.providers.chunks import encode_chunks
from fastgw.scan.literals import Literals

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call
_EARLY_WRITE_BYTES: Final = limits.EARLY_WRITE_BYTES

__all__ = ["SSERelay", "StreamEnd", "TranslatedSource", "error_event", "Source"]

_DONE_TAIL: Final = b"[DONE]"
_SEQ: Final = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


def _count_data_py(data: bytes) -> int:
    """The `data:` lines of whole SSE events (a block starts at an event): not a `data:` inside an event's JSON."""
    return data.startswith(b"data:") + data.count(b"\ndata:") + data.count(b"\rdata:")


def _event_span_py(data: bytes, i: int) -> tuple[int, int]:
    """The event around index `i`: from after the last blank line that ends before `i` (or 0) to after the first
    that begins at or after it (or the end)."""
    start = data.rfind(b"\n\n", 0, i)
    end = data.find(b"\n\n", i)
    return 0 if start < 0 else start + 2, len(data) if end < 0 else end + 2


def _without_py(data: bytes, start: int, end: int) -> bytes:
    """`data` without `data[start:end]`."""
    return data[:start] + data[end:]


#: The usage chunk's event found and cut out: in C (one memrchr/memchr a line end; one copy) where it is built.
_event_span: Final[Callable[[bytes, int], tuple[int, int]]] = (_event_span_py if usage_c is None
                                                                else usage_c.event_span)
_without: Final[Callable[[bytes, int, int], bytes]] = _without_py if usage_c is None else usage_c.without
#: Where `"choices":[]` (as OpenAI writes it) or `"choices": []` (as Python's `json.dumps` does: a server of that kind
#: must have its usage counted too) first starts in a read from an index, or -1. Most reads have neither. In C
#: (fastgw/api/_usagec.c: one memchr pass, ~0.05 µs a read of one event) where it is built; else one Hyperscan pass
#: (`fastgw.scan.literals`), a fraction of what two `bytes.find` over the read cost.
_first_empty_choices: Final[Callable[[bytes, int], int]] = (
    Literals(b'"choices":[]', b'"choices": []').first if usage_c is None else usage_c.first_empty_choices)
#: How many `data:` lines a read holds (its events, for the usage estimate and the event clock): in C (a memchr per
#: line end, ~9x the Python form) where it is built.
_count_data: Final[Callable[[bytes], int]] = _count_data_py if usage_c is None else usage_c.count_data

log = logging.getLogger("fastgw.stream")


class Source(TypingProtocol):
    """Where streamed bytes come from: an upstream connection or an in-process generator."""

    def set_sink(self, sink: SSERelay) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def detach(self) -> None: ...


class StreamEnd:
    """How a relayed stream ended, as the relay hands it to the request pipeline."""

    __slots__ = ("error", "started", "content", "tail", "complete", "client_left", "events")

    def __init__(self, error: GatewayError | None, started: bool, content: bool, tail: bytes | None,
                 complete: bool, client_left: bool, events: int) -> None:
        #: What ended the stream early (an upstream failure, a policy block or failure), if anything.
        self.error = error
        #: Bytes of the response reached the socket: nothing can fall back any more.
        self.started = started
        #: The stream carried events for the client besides an error.
        self.content = content
        #: The last bytes, left for the caller to write with `SSERelay.close_with` (None: written, or nobody
        #: to write them to).
        self.tail = tail
        #: The upstream ended the stream cleanly.
        self.complete = complete
        #: The client went away before the end.
        self.client_left = client_left
        self.events = events

    @property
    def before_first_byte(self) -> bool:
        """A failure before anything reached the client: another target may still answer."""
        return self.error is not None and not self.started and not self.content


class SSERelay:
    """Sink for an upstream SSE body and flow listener for the client connection.

    Complete events from one upstream read are written as one chunk when the read ends (`flush`),
    still inside the same `data_received` call: no added latency, one writev per read (a large first read, on
    a worker with no other request in flight, is two: see `early_write`).
    """

    __slots__ = ("_client_slow", "_resp", "_source", "_splitter", "_pending", "done", "saw_done", "defer_end",
                 "error", "dialect", "_loop", "_timer", "_first", "_last", "_ttft_at", "_idle", "_max_at",
                 "usage_sink", "strip_usage", "strip_null_usage", "events", "content", "_beat", "_beat_at",
                 "clock", "_head", "_started", "last_seq", "_sequenced", "_uncounted", "_uncounted_at", "early_write")

    def __init__(self, resp: Responder, source: Source, loop: asyncio.AbstractEventLoop,
                 head: tuple[int, list[tuple[bytes, bytes]]], defer_end: bool = False, dialect: str = "chat") -> None:
        self.dialect = dialects.dialect(dialect)
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._first = False
        self._last = 0.0
        self._ttft_at = self._max_at = math.inf
        self._idle = math.inf
        #: Usage accounting: where the upstream's usage goes (a RequestContext), and whether the usage chunk
        #: must be taken out of the stream (we asked for it, the client did not).
        self.usage_sink: RequestContext | None = None
        self.strip_usage = False
        #: ... and the other chunks' `"usage": null` too (legacy completions, whose spec allows no null usage).
        self.strip_null_usage = False
        self.events = 0
        #: The last read's events, counted once they are written (`_count`): counting 12 KB costs ~6 µs that
        #: would otherwise stand between the upstream's read and the client's first byte.
        self._uncounted = b""
        self._uncounted_at = 0.0
        #: Whether the stream carried events for the client before it ended (then a failure is in-stream).
        self.content = False
        #: Inter-event gaps for the metrics histogram, accumulated per stream (no per-event metric write).
        self.clock = EventClock()
        #: The client stopped reading and the upstream is paused for it: the upstream is not silent then.
        self._client_slow = False
        self._beat = 0.0  # heartbeat interval while waiting for the first event (0: none)
        self._beat_at = math.inf
        self._resp = resp
        #: The response head (status, headers): started with the first byte written, so a stream that fails
        #: before it leaves the response unstarted and the caller free to fall back or answer with an error.
        self._head = head
        self._started = False
        #: Write a large first read's first event before the rest (see `on_data`): set when the worker has no
        #: other request in flight, where the extra write costs no other request its CPU.
        self.early_write = False
        self._source = source
        self._splitter = SSESplitter()
        self._pending: list[bytes] = []
        #: Resolves with how the stream ended.
        self.done: asyncio.Future[StreamEnd] = loop.create_future()
        self.saw_done = False
        #: Leave the last bytes for the caller to write (after the audit record is handed to the OS).
        self.defer_end = defer_end
        #: The error that ended the stream (upstream failure, policy block), if any.
        self.error: GatewayError | None = None
        #: The last Responses `sequence_number` relayed (an error event we add continues it); read from the bytes
        #: only for that dialect.
        self.last_seq = -1
        self._sequenced = self.dialect is dialects.RESPONSES

    def start(self) -> None:
        self._resp.set_listener(self)
        self._source.set_sink(self)

    # ---- deadlines -----------------------------------------------------------------------
    def arm(self, ttft_at: float, idle: float, max_at: float, heartbeat: float = 0.0) -> None:
        """Time limits (loop clock): first event by `ttft_at`, no silence longer than `idle` after it, all by
        `max_at`; `: ping` comments every `heartbeat` seconds until the first event. One timer for all,
        rescheduled only when it fires, never per event."""
        self._ttft_at, self._idle, self._max_at = ttft_at, idle, max_at
        if heartbeat > 0:
            self._beat = heartbeat
            self._beat_at = self._loop.time() + heartbeat
        self._schedule()

    def _schedule(self) -> None:
        due = min(self._max_at, self._last + self._idle if self._first else min(self._ttft_at, self._beat_at))
        if due != math.inf:
            self._timer = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.done.done():
            return
        now = self._loop.time()
        if not self._first and now >= self._ttft_at:
            what = "sent no first event within the time-to-first-token limit"
        elif self._first and now - self._last >= self._idle and not self._client_slow:
            what = "went silent for longer than the idle limit"
        elif now >= self._max_at:
            what = "did not finish within the maximum duration"
        else:
            if self._first and self._client_slow and now - self._last >= self._idle:
                self._last = now  # paused by us, for a slow client: the idle limit counts from the resume
            if not self._first and now >= self._beat_at:
                # A comment keeps intermediaries from timing the connection out (data-less events would
                # crash the openai SDK; comments it skips).
                self._emit(b": ping\n\n")
                self._beat_at = now + self._beat
            self._schedule()
            return
        self._source.detach()  # close it: a connection with an unfinished response is never reused
        self.on_error(UpstreamTimeout(f"upstream {what}"))

    def _activity(self) -> None:
        self._last = self._loop.time()
        if not self._first:
            self._first = True
            if self._timer is not None:
                # Once per stream: from the first event on, the idle limit governs (not the TTFT one).
                self._timer.cancel()
                self._schedule()

    # ---- sink (upstream side) ---------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        self._activity()
        try:
            block = self._splitter.feed(data)
        except ProtocolError as e:
            raise BadResponse(f"upstream SSE stream invalid: {e.message}") from None
        if not block:
            return
        if self.early_write and not self._started and len(block) > _EARLY_WRITE_BYTES:
            # Until the first byte is out, a read that brought much more than the first event (a fast upstream's
            # whole answer) has that event written at once, before the rest is searched and written: time to
            # first event waits for one event's work, not the read's (~20 µs less at c=1 on the bench box). The
            # write more is the price (+14 µs of worker CPU a stream when every stream paid it, 64 connections),
            # so it is paid only when no other request waits for the CPU. A block of CR-ended lines is written
            # whole.
            cut = block.find(b"\n\n") + 2
            if 1 < cut < len(block):
                self._relay(block[:cut])
                if self.done.done():
                    return
                self.flush()
                block = block[cut:]
        self._relay(block)

    def _relay(self, block: bytes) -> None:
        """Complete events: their usage read (and cut if asked), held for the read's write."""
        if not self.content and not self._started and block.startswith(b'data: {"error"'):
            self._first_event_error(block)
            return
        if self.usage_sink is not None:
            block = self._take_usage(block)
            if self._uncounted:
                self._count()
            self._uncounted = block
            self._uncounted_at = _monotonic()
        if self._sequenced:
            self._note_seq(block)
        self._pending.append(block)
        if block.find(_DONE_TAIL, -16) >= 0:  # (not `in`: a bytes needle raises and clears a TypeError)
            self.saw_done = True

    def _note_seq(self, block: bytes) -> None:
        """The last `sequence_number` of a block of Responses events (a JSON string escapes its quotes, so the
        key in quotes is the event's own)."""
        m = _SEQ.search(block, max(0, block.rfind(b'"sequence_number"')))
        if m is not None:
            self.last_seq = int(m.group(1))

    def on_chunks(self, chunks: list[dict]) -> None:
        """Structured chunks from a translated provider: encoded once, here, on their way out."""
        self._activity()
        n = len(chunks)
        self.events += n
        self.clock.ticks(_monotonic(), n)
        if self.usage_sink is not None:
            usage = chunks[-1].get("usage")  # a translator's usage chunk is its last
            if isinstance(usage, dict):
                self.usage_sink.usage = usage
        self._pending.append(encode_chunks(chunks))

    def _first_event_error(self, block: bytes) -> None:
        """An upstream whose first event is an error has not answered: fail before the first byte (fallback)."""
        end = block.find(b"\n\n")
        try:
            err = orjson.loads(block[6:end if end > 0 else len(block)])["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
        except (ValueError, KeyError, TypeError, AttributeError):
            message = "upstream sent an error event"
        self._source.detach()
        self.on_error(UpstreamError(f"upstream error before the first token: {message}"))

    def _take_usage(self, block: bytes) -> bytes:
        """Read the usage chunk (the one with `"choices":[]` and a usage), and cut it out if asked to
        (with the other chunks' `"usage": null` where `strip_null_usage` says).

        Only an event that carries usage is cut: other `"choices":[]` events (Azure's first chunk holds
        `prompt_filter_results`) are the client's, as on the decoding path; each such event in the block is
        looked at, so one of those in the same read does not hide the usage chunk."""
        i = _first_empty_choices(block, 0)
        while i >= 0:
            start, end = _event_span(block, i)
            event = block[start:end]
            if 13 in event:  # a CR line end, which the search for LF LF does not see: cut as the SSE decoder cuts
                block = self._take_usage_cr(block)
                break
            j = event.find(b"{")
            if j >= 0 and self._usage_of(event[j:].strip()):
                block = _without(block, start, end)  # (so never counted: see `_count`)
                i = _first_empty_choices(block, start)
                continue
            i = _first_empty_choices(block, end)
        # ... and the `"usage": null` the upstream wrote on every other chunk because we asked (whole events here).
        return drop_null_usage(block) if self.strip_null_usage else block

    def _take_usage_cr(self, block: bytes) -> bytes:
        """`_take_usage` for a block with CR line ends (CRLF or CR, which SSE allows; OpenAI's servers end lines
        with LF, which the blank-line search above assumes): its events cut where the SSE decoder cuts them."""
        kept: list[bytes] = []
        consumed = 0
        cut = False
        for ev in SSEDecoder().feed(block):
            raw = ev.raw
            consumed += len(raw)
            if ev.data is not None and _first_empty_choices(raw, 0) >= 0 and self._usage_of(ev.data):
                cut = True
            else:
                kept.append(raw)
        return b"".join(kept) + block[consumed:] if cut else block

    def _usage_of(self, doc: bytes | str) -> bool:
        """Read the usage an event's JSON carries into the sink; whether the event is to be cut (it carries one and
        the client did not ask for it). Not JSON, or JSON that is no object (`[{"choices":[]}]`): neither."""
        try:
            usage = orjson.loads(doc).get("usage")
        except (ValueError, AttributeError):
            return False
        if usage is None:
            return False
        if isinstance(usage, dict) and self.usage_sink is not None:
            self.usage_sink.usage = usage
        return self.strip_usage

    def _take(self) -> bytes:
        p = self._pending
        if not p:
            return b""
        self._pending = []
        return p[0] if len(p) == 1 else b"".join(p)

    def _count(self) -> None:
        """Count the events of the last read (as relayed: a usage chunk taken out is not one), after their write."""
        block = self._uncounted
        self._uncounted = b""
        n = _count_data(block)
        self.events += n
        self.clock.ticks(self._uncounted_at, n)

    def flush(self) -> None:
        if self._pending:
            self._write(self._take())
        if self._uncounted:
            self._count()

    def _write(self, data: bytes) -> None:
        """Write events now; with defer_end the closing `[DONE]` waits for the end, so a client that stops
        reading at `[DONE]` has its audit record on disk first (the record precedes the last byte)."""
        if self.defer_end and data.endswith(DONE):
            data = data[:-len(DONE)]
            self._pending.append(DONE)  # re-held: the tail at the end takes it
        if data:
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            self._resp.start_stream(*self._head)
        self._resp.write(data)

    def close_with(self, tail: bytes) -> None:
        """Write the tail the stream left (see `StreamEnd.tail`) and end the response."""
        if not self._started:
            self._started = True
            self._resp.start_stream(*self._head)
        self._resp.end(tail)

    def on_end(self) -> None:
        if self.done.done():
            return
        if self._splitter.has_partial and not self.saw_done:
            self.on_error(UpstreamProtocolError("upstream ended the stream in the middle of an event"))
            return
        tail = self._take()
        if not self.saw_done:
            # A clean HTTP end without the sentinel: close the SSE stream the way OpenAI does.
            tail += self.dialect.done
        self._end(tail, complete=True)

    def on_error(self, exc: BaseException) -> None:
        if self.done.done():
            return
        exc = from_transport(exc)
        if self.saw_done and self.dialect.sentinel:
            self.on_end()  # the answer was complete ([DONE] seen): a connection dropped after it is no failure
            return
        # Whole events that arrived before the failure still go out, then the error, then [DONE].
        self.error = exc
        before = self._take()
        self._end(before + self.dialect.terminal_error(exc, self.last_seq), bool(before))

    def _end(self, tail: bytes, content: bool = True, complete: bool = False) -> None:
        """Finish: write the last bytes and the terminator now, or leave them to the caller: with defer_end,
        and when a failure came before any byte (the caller may fall back or answer with an HTTP error).
        `content`: the tail carries events for the client besides the error."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        before_first_byte = self.error is not None and not content and not self._started
        self.content = self.content or content or self._started
        left: bytes | None = tail
        if not (self.defer_end or before_first_byte):
            self.close_with(tail)
            left = None
        if self._uncounted:
            self._count()
        self.done.set_result(StreamEnd(self.error, self._started or left is None, self.content, left, complete,
                                       False, self.events))

    # ---- flow listener (client side) -----------------------------------------------------
    def pause(self) -> None:
        self._client_slow = True
        if not self.done.done():
            # Once done, the upstream connection may be back in the pool, or serving another request: the last
            # bytes (a deferred end) still fill the client's buffer, and must not pause a reader not ours.
            self._source.pause_reading()

    def resume(self) -> None:
        self._client_slow = False
        self._last = self._loop.time()  # the upstream was held by us, not silent: its idle time starts now
        if not self.done.done():
            self._source.resume_reading()

    def shutdown(self) -> None:
        """The drain budget is spent: end the stream with the error envelope (not a silent cut)."""
        if not self.done.done():
            self._source.detach()
            self.on_error(GatewayError("the gateway is shutting down; the answer was cut short", status=503,
                                       type="server_error", code="server_shutdown"))

    def client_lost(self) -> None:
        if not self.done.done():
            # Nobody to read the answer: stop the upstream generating (and billing) it. Once done, the connection
            # went back to the pool, or already carries another request: closing it would leave that one
            # waiting for ever (its connection marked ended, so neither a head nor an error reaches it).
            self._source.detach()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._uncounted:
            self._count()
        if not self.done.done():
            self.done.set_result(StreamEnd(self.error, self._started, self.content, None, False, True, self.events))


class TranslatedSource:
    """A provider's streamed body as OpenAI chunks: sits between the upstream connection and the relay,
    translating each read in place (same loop iteration) into chunk objects the relay encodes once, and
    passing flow control straight through."""

    __slots__ = ("_conn", "_translator", "_sink")

    def __init__(self, conn: Source, translator: Translator) -> None:
        self._conn = conn
        self._translator = translator
        self._sink: SSERelay | None = None

    def set_sink(self, sink: SSERelay) -> None:
        self._sink = sink
        self._conn.set_sink(self)  # type: ignore[arg-type]

    def on_data(self, data: bytes) -> None:
        sink = self._sink
        if sink is None or sink.done.done():
            return
        try:
            out = self._translator.feed(data)
        except GatewayError as e:
            self._conn.detach()
            sink.on_error(e)
            return
        if out:
            sink.on_chunks(out)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    def on_end(self) -> None:
        sink = self._sink
        if sink is None or sink.done.done():
            return
        try:
            out = self._translator.finish()
        except GatewayError as e:
            sink.on_error(e)
            return
        if out:
            sink.on_chunks(out)
        sink.on_end()

    def on_error(self, exc: BaseException) -> None:
        if self._sink is not None:
            self._sink.on_error(exc)

    def pause_reading(self) -> None:
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        self._conn.resume_reading()

    def detach(self) -> None:
        self._conn.detach()
