"""Relaying a streamed answer: upstream SSE bytes to client chunks, event-aligned, with flow control both ways.

The relay is a sink driven from the upstream protocol's `data_received`: each
completed event is written to the client in the same loop iteration, byte-identical
(no decode/encode), all events completed by one read in one chunk. A slow client
pauses the upstream read; a vanished client closes the upstream. A failure after
the first byte becomes an in-stream error event followed by `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol as TypingProtocol

import orjson

from fastgw.api.errors import GatewayError, UpstreamError, UpstreamProtocolError, UpstreamTimeout, from_transport
from fastgw.metrics import EventClock
from fastgw.policy.base import PolicyFailure, RequestContext
from fastgw.policy.stream import StreamBlocked, StreamPolicy
from fastgw.proto.client import BadResponse
from fastgw.proto.errors import ProtocolError
from fastgw.proto.server import Responder
from fastgw.api.sse import DONE
from fastgw.proto.sse import SSEDecoder, SSESplitter, encode_data, encode_event
from fastgw.providers.base import Translator

__all__ = ["SSERelay", "PolicyRelay", "TimedSource", "TranslatedSource", "error_event", "Source"]

_DONE_TAIL = b"[DONE]"

log = logging.getLogger("fastgw.stream")


def error_event(err: GatewayError) -> bytes:
    """The in-stream error: an SSE data event carrying the OpenAI error envelope (SDKs raise APIError on it)."""
    return encode_data(err.body())


def terminal_error(dialect: str, err: GatewayError, last_seq: int = -1) -> bytes:
    """How a stream of this dialect ends in failure: its own error event (and `[DONE]` for chat)."""
    if dialect == "chat":
        return error_event(err) + DONE
    body = orjson.loads(err.body())["error"]
    if dialect == "responses":
        obj = {"type": "error", "code": body.get("code"), "message": body.get("message"), "param": body.get("param"),
               "sequence_number": last_seq + 1}
        if body.get("policy"):
            obj["policy"] = body["policy"]
        return encode_event(orjson.dumps(obj), event="error")
    return encode_event(orjson.dumps({"type": "error", "error": {"type": body.get("type"),
                                                                 "message": body.get("message")}}), event="error")


def _done_marker(dialect: str) -> bytes:
    """What closes a clean stream when the upstream did not send it ([DONE] is OpenAI chat's alone)."""
    return DONE if dialect == "chat" else b""


class Source(TypingProtocol):
    """Where streamed bytes come from: an upstream connection or an in-process generator."""

    def set_sink(self, sink: SSERelay) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def detach(self) -> None: ...


class SSERelay:
    """Sink for an upstream SSE body and flow listener for the client connection.

    Complete events from one upstream read are written as one chunk when the read ends (`flush`),
    still inside the same `data_received` call: no added latency, one writev per read.
    """

    __slots__ = ("_client_slow", "_resp", "_source", "_splitter", "_pending", "done", "saw_done", "ok", "defer_end",
                 "tail", "error", "dialect", "_loop", "_timer", "_first", "_last", "_ttft_at", "_idle", "_max_at",
                 "usage_sink", "strip_usage", "events", "content", "_beat", "_beat_at", "clock")

    def __init__(self, resp: Responder, source: Source, loop: asyncio.AbstractEventLoop,
                 defer_end: bool = False, dialect: str = "chat") -> None:
        self.dialect = dialect
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._first = False
        self._last = 0.0
        self._ttft_at = self._max_at = float("inf")
        self._idle = float("inf")
        #: Usage accounting: where the upstream's usage goes (a RequestContext), and whether the usage chunk
        #: must be taken out of the stream (we asked for it, the client did not).
        self.usage_sink: RequestContext | None = None
        self.strip_usage = False
        self.events = 0
        #: Whether the stream carried events for the client before it ended (then a failure is in-stream).
        self.content = False
        #: Inter-event gaps for the metrics histogram, accumulated per stream (no per-event metric write).
        self.clock = EventClock()
        #: The client stopped reading and the upstream is paused for it: the upstream is not silent then.
        self._client_slow = False
        self._beat = 0.0  # heartbeat interval while waiting for the first event (0: none)
        self._beat_at = float("inf")
        self._resp = resp
        self._source = source
        self._splitter = SSESplitter()
        self._pending: list[bytes] = []
        #: Resolves when the stream is over (cleanly or not); `ok` says which.
        self.done: asyncio.Future[None] = loop.create_future()
        self.saw_done = False
        self.ok = False
        #: Leave the last bytes for the caller to write (after the audit record is handed to the OS).
        self.defer_end = defer_end
        self.tail: bytes | None = None
        #: The error that ended the stream (upstream failure, policy block), if any.
        self.error: GatewayError | None = None

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
        if due != float("inf"):
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
                self._resp.write(b": ping\n\n")
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
        if block:
            if not self.content and self._resp.head_pending and block.startswith(b'data: {"error"'):
                self._first_event_error(block)
                return
            if self.usage_sink is not None:
                block = self._take_usage(block)
            self._pending.append(block)
            if _DONE_TAIL in block[-16:]:
                self.saw_done = True

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
        """Count events; read the usage chunk (the one with `"choices":[]` and a usage), and cut it out if asked to.

        Only an event that carries usage is cut: other `"choices":[]` events (Azure's first chunk holds
        `prompt_filter_results`) are the client's, as on the decoding path; each such event in the block is
        looked at, so one of those in the same read does not hide the usage chunk."""
        n = block.count(b"data:")
        self.events += n
        self.clock.ticks(time.monotonic(), n)
        i = block.find(b'"choices":[]')
        while i >= 0:
            start = block.rfind(b"\n\n", 0, i)
            start = 0 if start < 0 else start + 2
            end = block.find(b"\n\n", i)
            end = len(block) if end < 0 else end + 2
            event = block[start:end]
            try:
                usage = orjson.loads(event[event.index(b"{"):].strip()).get("usage")
            except (ValueError, AttributeError):  # not JSON, or JSON that is no object (`[{"choices":[]}]`)
                usage = None
            if usage is not None:
                if isinstance(usage, dict) and self.usage_sink is not None:
                    self.usage_sink.usage = usage
                if self.strip_usage:
                    self.events -= 1
                    block = block[:start] + block[end:]
                    i = block.find(b'"choices":[]', start)
                    continue
            i = block.find(b'"choices":[]', end)
        return block

    def _take(self) -> bytes:
        p = self._pending
        if not p:
            return b""
        self._pending = []
        return p[0] if len(p) == 1 else b"".join(p)

    def flush(self) -> None:
        if self._pending:
            self._write(self._take())

    def _write(self, data: bytes) -> None:
        """Write events now; with defer_end the closing `[DONE]` waits for the end, so a client that stops
        reading at `[DONE]` has its audit record on disk first (the record precedes the last byte)."""
        if self.defer_end and data.endswith(DONE):
            data = data[:-len(DONE)]
            self._pending.append(DONE)  # re-held: the tail at the end takes it
        if data:
            self._resp.write(data)

    def on_end(self) -> None:
        if self.done.done():
            return
        if self._splitter.has_partial and not self.saw_done:
            self.on_error(UpstreamProtocolError("upstream ended the stream in the middle of an event"))
            return
        tail = self._take()
        if not self.saw_done:
            # A clean HTTP end without the sentinel: close the SSE stream the way OpenAI does.
            tail += _done_marker(self.dialect)
        self.ok = True
        self._end(tail)

    def on_error(self, exc: BaseException) -> None:
        if self.done.done():
            return
        exc = from_transport(exc)
        if self.saw_done and self.dialect == "chat":
            self.on_end()  # the answer was complete ([DONE] seen): a connection dropped after it is no failure
            return
        # Whole events that arrived before the failure still go out, then the error, then [DONE].
        self.error = exc
        before = self._take()
        self._end(before + terminal_error(self.dialect, exc), bool(before))

    def _end(self, tail: bytes, content: bool = True) -> None:
        """Finish: write the last bytes and the terminator now, or leave them to the caller: with defer_end,
        and when a failure came before any content (the caller may fall back or answer with an HTTP error).
        `content`: the tail carries events for the client besides the error."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.content = self.content or content or not self._resp.head_pending
        if self.defer_end or (self.error is not None and not content and self._resp.head_pending):
            self.tail = tail
        else:
            self._resp.end(tail)
        self.done.set_result(None)

    # ---- flow listener (client side) -----------------------------------------------------
    def pause(self) -> None:
        self._client_slow = True
        self._source.pause_reading()

    def resume(self) -> None:
        self._client_slow = False
        self._last = self._loop.time()  # the upstream was held by us, not silent: its idle time starts now
        self._source.resume_reading()

    def shutdown(self) -> None:
        """The drain budget is spent: end the stream with the error envelope (not a silent cut)."""
        if not self.done.done():
            self._source.detach()
            self.on_error(GatewayError("the gateway is shutting down; the answer was cut short", status=503,
                                       type="server_error", code="server_shutdown"))

    def client_lost(self) -> None:
        # Nobody to read the answer: stop the upstream generating (and billing) it.
        self._source.detach()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.done.done():
            self.done.set_result(None)


class TimedSource:
    """An in-process source: emits prepared SSE events with a first delay and a per-event delay, honouring pause."""

    __slots__ = ("_loop", "_events", "_i", "_ttft", "_delay", "_sink", "_paused", "_timer", "_stopped")

    def __init__(self, loop: asyncio.AbstractEventLoop, events: list[bytes], ttft: float, delay: float) -> None:
        self._loop = loop
        self._events = events
        self._i = 0
        self._ttft = ttft
        self._delay = delay
        self._sink: SSERelay | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._stopped = False

    def set_sink(self, sink: SSERelay) -> None:
        self._sink = sink
        self._schedule(self._ttft)

    def _schedule(self, delay: float) -> None:
        if delay > 0:
            self._timer = self._loop.call_later(delay, self._tick)
        else:
            self._timer = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._stopped or self._paused or self._sink is None:
            return
        sink = self._sink
        events = self._events
        if self._i < len(events):
            sink.on_data(events[self._i])
            self._i += 1
        if self._i >= len(events):
            self._stopped = True
            sink.on_end()  # the last event and the terminator in one write
            return
        sink.flush()
        self._schedule(self._delay)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._timer is None and not self._stopped:
                self._schedule(0)

    def detach(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PolicyRelay(SSERelay):
    """An SSE relay with output policies: events are decoded, scanned, held only as long as a match could
    still be in progress, and written (original bytes unless a policy changed them) in upstream order."""

    __slots__ = ("_decoder", "_policy")

    def __init__(self, resp: Responder, source: Source, loop: asyncio.AbstractEventLoop,
                 policy: StreamPolicy, defer_end: bool = False) -> None:
        super().__init__(resp, source, loop, defer_end, policy.dialect)
        self._decoder = SSEDecoder()
        self._policy = policy

    def on_data(self, data: bytes) -> None:
        if self.done.done():
            return
        self._activity()
        try:
            for ev in self._decoder.feed(data):
                if ev.data == "[DONE]":
                    self.saw_done = True
                elif (not self.content and self.dialect == "chat" and ev.data and ev.data.startswith('{"error"')
                      and self._resp.head_pending):
                    self._first_event_error(ev.raw)
                    return
                self.clock.tick(time.monotonic())
                self._policy.push(ev)
        except ProtocolError as e:
            self._terminate(UpstreamProtocolError(f"upstream SSE stream invalid: {e.message}"))
        except GatewayError as e:
            self._terminate(e)
        except Exception:  # noqa: BLE001 - a policy bug fails closed: nothing unchecked reaches the client
            log.exception("output policy failed")
            self._fail_closed()

    def _checked(self, step: Callable[[], list[bytes]]) -> list[bytes] | None:
        """What the policy releases, or None when it ended the stream (a block, or a policy bug: fail closed)."""
        try:
            return step()
        except StreamBlocked as b:
            self._blocked(b)
        except Exception:  # noqa: BLE001 - nothing unchecked reaches the client
            log.exception("output policy failed")
            self._fail_closed()
        return None

    def flush(self) -> None:
        if self.done.done():
            return
        out = self._checked(self._policy.release)
        if out:
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def on_end(self) -> None:
        if self.done.done():
            return
        if self._decoder.has_partial and not self.saw_done:
            self._terminate(UpstreamProtocolError("upstream ended the stream in the middle of an event"))
            return
        out = self._checked(self._policy.finish)
        if out is None:
            return
        if not self.saw_done:
            out.append(_done_marker(self.dialect))
        self._policy.close()
        self.ok = True
        self._end(self._take() + b"".join(out))

    def on_error(self, exc: BaseException) -> None:
        if self.saw_done and self.dialect == "chat":
            self.on_end()  # complete already: a connection dropped after [DONE] is no failure
            return
        self._terminate(from_transport(exc))

    def _terminate(self, err: GatewayError) -> None:
        """A failure mid-stream: what was held is final now (released redacted), then the error and [DONE]."""
        if self.done.done():
            return
        try:
            out = self._policy.finish()
        except StreamBlocked as b:
            self._blocked(b)
            return
        except Exception:  # noqa: BLE001 - what was held cannot be vouched for: drop it
            out = []
        self._policy.close()
        self._source.detach()
        self.error = err
        self._end(b"".join(out) + terminal_error(self.dialect, err, self._policy.last_seq), bool(out))

    def _fail_closed(self) -> None:
        """An internal policy failure: drop what is held, end with an error naming the output policies."""
        if self.done.done():
            return
        self._policy.close()
        self._source.detach()
        self.error = PolicyFailure("output")
        self._end(terminal_error(self.dialect, self.error, self._policy.last_seq), False)

    def _blocked(self, b: StreamBlocked) -> None:
        self._policy.close()
        self._source.detach()  # stop the upstream generating what nobody will see
        self.error = b.error
        self._end(b"".join(b.prefix) + terminal_error(self.dialect, b.error, self._policy.last_seq), bool(b.prefix))

    def client_lost(self) -> None:
        self._policy.close()
        super().client_lost()


class TranslatedSource:
    """A provider's streamed body seen as OpenAI SSE: sits between the upstream connection and the relay,
    translating each read in place (same loop iteration) and passing flow control straight through."""

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
            sink.on_error(e)  # type: ignore[arg-type]
            return
        if out:
            sink.on_data(out)

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
            sink.on_error(e)  # type: ignore[arg-type]
            return
        if out:
            sink.on_data(out)
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
