"""Flow control of one client connection: read pausing, the write-paused state, drain waiters, the producer.

uvicorn's `flow_control.py` is the model: idempotent flags around the transport's pause/resume. Here
the producer of the response in flight (a `FlowListener`, e.g. an upstream relay) is also told, so
backpressure reaches the upstream socket without a task switch; `drain()` is for producers that await.
The shell (`server.HttpServerProtocol`) forwards the transport's callbacks; the response writer
(`writer.Responder`) reads the flags. Neither knows the other.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["FlowControl", "FlowListener"]


class FlowListener(Protocol):
    """What a response producer implements to follow the client's write buffer and lifetime."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def client_lost(self) -> None: ...


class _Reading(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class FlowControl:
    """One connection's flow state; every method is idempotent."""

    __slots__ = ("_transport", "_loop", "read_paused", "write_paused", "lost", "listener", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: _Reading | None = None) -> None:
        self._transport = transport
        self._loop = loop
        self.read_paused = False
        self.write_paused = False
        #: The client is gone: writes are dropped, drain returns at once.
        self.lost = False
        #: The producer of the response in flight, told of pause/resume/loss.
        self.listener: FlowListener | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: _Reading) -> None:
        self._transport = transport

    # --- reading -------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.read_paused and not self.lost and self._transport is not None:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.lost and self._transport is not None:
            self.read_paused = False
            self._transport.resume_reading()

    # --- writing (the transport's pause_writing / resume_writing) --------------------------------
    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            if self.listener is not None:
                self.listener.pause()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            if self.listener is not None:
                self.listener.resume()
            self._wake()

    def set_listener(self, listener: FlowListener | None) -> None:
        """Route pause/resume/loss to `listener` (told at once if writing is paused now)."""
        self.listener = listener
        if listener is not None and self.write_paused:
            listener.pause()

    async def drain(self) -> None:
        """Wait until writing resumes (the buffer fell below the low watermark) or the client is gone."""
        if not self.write_paused or self.lost:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = self._loop.create_future()
        await self._waiter

    def connection_lost(self) -> bool:
        """The client is gone: tell the listener (then forget it) and wake drainers. False when no listener
        was there to tell, so the shell stops the response in flight itself."""
        self.lost = True
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.client_lost()
        self._wake()
        return listener is not None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        self._waiter = None
