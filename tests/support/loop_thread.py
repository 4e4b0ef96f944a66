"""A uvloop event loop in a daemon thread, for tests that serve the real protocol to blocking sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import uvloop


class LoopThread:
    """`loop` runs in a thread once `start(setup)` has run `setup()` on it (e.g. to bind a server); `stop()` ends
    it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread: threading.Thread | None = None

    def start(self, setup: Callable[[], Awaitable[None]]) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(setup())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5), "the loop thread did not start"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(5)
