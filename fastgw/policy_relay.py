"""The relay of a streamed answer through the output policies: decode, scan, hold what could still be a match,
release whole events in order (the upstream's bytes unless a policy changed them), end with the dialect's error.

A failure is the policy's own (never the upstream's): a block ends the stream with the clean prefix and the
error; an internal policy failure fails closed with nothing unchecked sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable, Final

from fastgw.api import dialects
from fastgw.api.errors import GatewayError, RequestTooExpensive, UpstreamProtocolError, from_transport
from fastgw.api.limits import SCAN_SLICE
from fastgw.policy.base import PolicyFailure
from fastgw.policy.stream import StreamBlocked, StreamPolicy
from fastgw.proto.errors import ProtocolError
from fastgw.proto.server import Responder
from fastgw.proto.sse import SSEDecoder, SSEEvent
from fastgw.stream import Source, SSERelay

_monotonic: Final = time.monotonic  # compiled: a constant, not a lookup per call

__all__ = ["PolicyRelay"]

log = logging.getLogger("fastgw.stream")

#: Bytes a stream receives before its policy work is metered against the request's CPU budget: below it no
#: stream can spend a meaningful share of the budget (~0.1 s at the slowest text found), and a clock read per
#: read would cost the common short answer ~4 % of its policy CPU.
METER_FROM: Final = 65536
#: What a structured chunk (a translated provider's) counts toward METER_FROM: a generous token's event.
_CHUNK_BYTES: Final = 256


class PolicyRelay(SSERelay):
    """An SSE relay with output policies: events are decoded, scanned, held only as long as a match could
    still be in progress, and written (original bytes unless a policy changed them) in upstream order.

    Slices: an event with a long text (`StreamPolicy.has_work` after its push) is scanned in slices of about
    `SCAN_SLICE` of the loop (`_step`, scheduled with `call_soon`), the upstream paused meanwhile; events that
    arrive before it is done wait behind it, in order, and nothing is released until it is. CPU budget: past
    `METER_FROM` bytes of a stream its policy work is metered (`time.thread_time`); once it exceeds what the
    request has left (`StreamPolicy.cpu_left`), the stream ends with the dialect's error event
    (`request_too_expensive`), or an HTTP 413 when nothing was sent yet."""

    __slots__ = ("_decoder", "_policy", "_backlog", "_stepping", "_end_after", "_cpu", "_seen")

    def __init__(self, resp: Responder, source: Source, loop: asyncio.AbstractEventLoop,
                 head: tuple[int, list[tuple[bytes, bytes]]], policy: StreamPolicy, defer_end: bool = False) -> None:
        super().__init__(resp, source, loop, head, defer_end, policy.dialect)
        self._decoder = SSEDecoder()
        self._policy = policy
        #: Events (SSEEvent) and structured chunks (dict) that came while a long text is scanned; None when
        #: nothing is deferred.
        self._backlog: deque[SSEEvent | dict] | None = None
        self._stepping = False
        #: The upstream ended while text was still being scanned: end once it is.
        self._end_after = False
        #: Policy CPU seconds metered on this stream, and the bytes it received (metering starts past METER_FROM).
        self._cpu = 0.0
        self._seen = 0

    def on_data(self, data: bytes) -> None:
        if self.done.done():
            return
        self._activity()
        self._seen += len(data)
        t0 = time.thread_time() if self._seen > METER_FROM else -1.0
        now = _monotonic()  # the read's events arrived together (deferred ones are counted on arrival too)
        try:
            start = 0
            if not self._started and self.early_write:
                # Until the first byte is out, what is final goes out at once rather than after the rest of the
                # read: time to first event waits neither for the decoding nor for the scan of a read that brought
                # the whole answer (at most one more write per stream, and only while no other request waits for
                # the CPU: `SSERelay.early_write`). The decoder takes any split; the rest is given from `cut`
                # rather than copied.
                cut = data.find(b"\n\n") + 2
                if 1 < cut < len(data):
                    if not self._judge(self._decoder.feed(data[:cut]), now):
                        return
                    start = cut
            self._judge(self._decoder.feed(data, start), now)
        except ProtocolError as e:
            self._terminate(UpstreamProtocolError(f"upstream SSE stream invalid: {e.message}"))
        except GatewayError as e:
            self._terminate(e)
        except Exception:  # noqa: BLE001 - a policy bug fails closed: nothing unchecked reaches the client
            log.exception("output policy failed")
            self._fail_closed()
        finally:
            self._meter(t0)

    def _judge(self, events: list[SSEEvent], now: float) -> bool:
        """Events (arrived at `now`) into the policy (or behind the deferred scan); False when the relay ended on
        one."""
        self.clock.ticks(now, len(events))
        for ev in events:
            if self._backlog is not None:
                self._backlog.append(ev)
            elif not self._push(ev):
                return False
            elif not self._started and self.early_write:
                self.flush()
                if self.done.done():
                    return False
        return True

    def _push(self, ev: SSEEvent) -> bool:
        """One event into the policy; False when the relay ended on it. Starts deferred scanning if it needs."""
        data = ev.data  # (an SSEEvent's fields are generic attribute lookups from compiled code: read once)
        if data == "[DONE]":
            self.saw_done = True
        elif (not self._started and not self.content and data and data.startswith('{"error"')
              and self.dialect is dialects.CHAT):  # (the dialect last: a module lookup, for every event of a first read)
            self._first_event_error(ev.raw)
            return False
        self._policy.push(ev)
        if self._policy.has_work:
            self._defer()
        return True

    def on_chunks(self, chunks: list[dict]) -> None:
        if self.done.done():
            return
        self._activity()
        self._seen += _CHUNK_BYTES * len(chunks)
        t0 = time.thread_time() if self._seen > METER_FROM else -1.0
        self.clock.ticks(_monotonic(), len(chunks))
        try:
            for obj in chunks:
                if self._backlog is not None:
                    self._backlog.append(obj)
                    continue
                self._policy.push_chunk(obj)
                if self._policy.has_work:
                    self._defer()
        except GatewayError as e:
            self._terminate(e)
        except Exception:  # noqa: BLE001 - a policy bug fails closed: nothing unchecked reaches the client
            log.exception("output policy failed")
            self._fail_closed()
        finally:
            self._meter(t0)

    # ---- slices --------------------------------------------------------------------------------------
    def _defer(self) -> None:
        """A long text waits to be scanned: later events wait behind it, the upstream pauses, a step is due."""
        if self._backlog is None:
            self._backlog = deque()
        if not self._stepping:
            self._stepping = True
            self._source.pause_reading()
            self._loop.call_soon(self._step)

    def _step(self) -> None:
        """One slice of deferred scanning, then the events behind it; when all is done, release and read on."""
        self._stepping = False
        if self.done.done():
            return
        t0 = time.thread_time()
        deadline = time.perf_counter() + SCAN_SLICE
        policy = self._policy
        backlog = self._backlog
        try:
            while True:
                if policy.has_work:
                    policy.work(deadline)
                    if policy.has_work:
                        break
                if not backlog or time.perf_counter() >= deadline:
                    break
                item = backlog.popleft()
                if isinstance(item, dict):
                    policy.push_chunk(item)
                elif not self._push(item):
                    return
        except GatewayError as e:
            self._terminate(e)
            return
        except Exception:  # noqa: BLE001 - a policy bug fails closed: nothing unchecked reaches the client
            log.exception("output policy failed")
            self._fail_closed()
            return
        finally:
            self._meter(t0)
        if self.done.done():
            return
        if policy.has_work or backlog:
            self._stepping = True
            self._loop.call_soon(self._step)
            return
        self._backlog = None
        self.flush()
        if self.done.done():
            return
        if self._end_after:
            self._end_after = False
            self.on_end()
        elif not self._client_slow:
            self._source.resume_reading()

    def _drain(self) -> None:
        """Everything deferred, now (the stream is ending on an error: what came before it is judged first)."""
        backlog, self._backlog = self._backlog, None
        if backlog is None:
            return
        for item in backlog:
            if isinstance(item, dict):
                self._policy.push_chunk(item)
            else:
                self._policy.push(item)

    def _meter(self, t0: float) -> None:
        """Charge the policy work since `t0` (a `thread_time`; negative: not metered); past the request's budget,
        end the stream."""
        if t0 < 0 or self.done.done():
            return
        self._cpu += time.thread_time() - t0
        if self._cpu > self._policy.cpu_left:
            self._over_budget()

    def _over_budget(self) -> None:
        """The request's policy CPU budget is spent: what was released stays released, nothing held is
        judged further; the dialect's error event ends the stream (an HTTP 413 when nothing was sent)."""
        err = RequestTooExpensive(self._policy.cpu_budget)
        log.warning("stream stopped: %s", err.message)
        self._policy.close()
        self._source.detach()
        self._backlog = None
        self.error = err
        self._end(self.dialect.terminal_error(err, self._policy.last_seq), False)

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
        if self.done.done() or self._backlog is not None:
            return  # a long text is being scanned: what is behind it waits (see _step)
        t0 = time.thread_time() if self._seen > METER_FROM else -1.0
        out = self._checked(self._policy.release)
        self._meter(t0)
        if self.done.done():
            return
        if out:
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def on_end(self) -> None:
        if self.done.done():
            return
        if self._backlog is not None:
            self._end_after = True  # once the deferred scanning is done (see _step)
            return
        if self._decoder.has_partial and not self.saw_done:
            self._terminate(UpstreamProtocolError("upstream ended the stream in the middle of an event"))
            return
        out = self._checked(self._policy.finish)
        if out is None:
            return
        if not self.saw_done:
            out.append(self.dialect.done)
        self._policy.close()
        held = self._take()
        if held:
            out.insert(0, held)
        self._end(b"".join(out), complete=True)  # (one copy of the answer's rest, not a join and a concatenation)

    def on_error(self, exc: BaseException) -> None:
        if self.saw_done and self.dialect.sentinel:
            self.on_end()  # complete already: a connection dropped after [DONE] is no failure
            return
        self._terminate(from_transport(exc))

    def _terminate(self, err: GatewayError) -> None:
        """A failure mid-stream: what was held is final now (released redacted), then the error and [DONE]."""
        if self.done.done():
            return
        try:
            self._drain()
            out = self._policy.finish()
        except StreamBlocked as b:
            self._blocked(b)
            return
        except Exception:  # noqa: BLE001 - what was held cannot be vouched for: drop it
            out = []
        self._policy.close()
        self._source.detach()
        self.error = err
        self._end(b"".join(out) + self.dialect.terminal_error(err, self._policy.last_seq), bool(out))

    def _fail_closed(self) -> None:
        """An internal policy failure: drop what is held, end with an error naming the output policies."""
        if self.done.done():
            return
        self._policy.close()
        self._source.detach()
        self.error = PolicyFailure("output")
        self._end(self.dialect.terminal_error(self.error, self._policy.last_seq), False)

    def _blocked(self, b: StreamBlocked) -> None:
        self._policy.close()
        self._source.detach()  # stop the upstream generating what nobody will see
        self.error = b.error
        self._end(b"".join(b.prefix) + self.dialect.terminal_error(b.error, self._policy.last_seq), bool(b.prefix))

    def client_lost(self) -> None:
        self._policy.close()
        super().client_lost()
