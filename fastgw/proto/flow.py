"""Flow control of one client connection: read pausing, the write-paused state, drain waiters, the producer.

uvicorn's `flow_control.py` is the model: idempotent flags around the transport's pause/resume. Here
the producer of the response in flight (a `FlowListener`, e.g. an upstream relay) is also told, so
backpressure reaches the upstream socket without a task switch; `drain()` is for producers that await.
The shell (`server.HttpServerProtocol`) forwards the transport's callbacks; the response writer
(`writer.Responder`) reads the flags. Neither knows the other.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final, Protocol

__all__ = ["FlowControl", "FlowListener", "STREAM_SNDBUF"]

#: Kernel send buffer of a client connection once it carries a stream (SO_SNDBUF; Linux doubles it for its own
#: bookkeeping). Autotuned, it grows to net.ipv4.tcp_wmem's maximum (4 MiB by default): that much of an answer is
#: taken from the upstream and relayed (its text kept for the audit record) before a client that reads nothing
#: fills the write buffer and pauses the upstream: 2.3-2.5 MB of worker memory per unread stream, measured.
#: Capped, an unread stream costs about 100 KB; 64 KiB (128 KiB in the kernel) is 40 ms of a 3 MB/s stream,
#: far beyond any token stream. Whole (non-streamed) answers keep the autotuned buffer.
STREAM_SNDBUF: Final = 64 * 1024


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

    __slots__ = ("_transport", "_loop", "read_paused", "write_paused", "lost", "listener", "_waiter", "_sndbuf_set")

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
        self._sndbuf_set = False

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

    def limit_send_buffer(self) -> None:
        """A stream starts: cap the connection's kernel send buffer at STREAM_SNDBUF (once per connection)."""
        if self._sndbuf_set or self._transport is None:
            return
        self._sndbuf_set = True
        get = getattr(self._transport, "get_extra_info", None)
        sock = get("socket") if get is not None else None
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        except OSError:
            pass  # not a socket that has one

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
