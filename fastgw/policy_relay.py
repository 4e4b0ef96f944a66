"""The relay of a streamed answer through the output policies: decode, scan, hold what could still be a match,
release whole events in order (the upstream's bytes unless a policy changed them), end with the dialect's error.

A failure is the policy's own (never the upstream's): a block ends the stream with the clean prefix and the
error; an internal policy failure fails closed with nothing unchecked sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from fastgw.api import dialects
from fastgw.api.errors import GatewayError, UpstreamProtocolError, from_transport
from fastgw.policy.base import PolicyFailure
from fastgw.policy.stream import StreamBlocked, StreamPolicy
from fastgw.proto.errors import ProtocolError
from fastgw.proto.server import Responder
from fastgw.proto.sse import SSEDecoder
from fastgw.stream import Source, SSERelay

__all__ = ["PolicyRelay"]

log = logging.getLogger("fastgw.stream")


class PolicyRelay(SSERelay):
    """An SSE relay with output policies: events are decoded, scanned, held only as long as a match could
    still be in progress, and written (original bytes unless a policy changed them) in upstream order."""

    __slots__ = ("_decoder", "_policy")

    def __init__(self, resp: Responder, source: Source, loop: asyncio.AbstractEventLoop,
                 head: tuple[int, list[tuple[bytes, bytes]]], policy: StreamPolicy, defer_end: bool = False) -> None:
        super().__init__(resp, source, loop, head, defer_end, policy.dialect)
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
                elif (not self.content and self.dialect is dialects.CHAT and ev.data and ev.data.startswith('{"error"')
                      and not self._started):
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

    def on_chunks(self, chunks: list[dict]) -> None:
        if self.done.done():
            return
        self._activity()
        try:
            for obj in chunks:
                self.clock.tick(time.monotonic())
                self._policy.push_chunk(obj)
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
            out.append(self.dialect.done)
        self._policy.close()
        self._end(self._take() + b"".join(out), complete=True)

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
