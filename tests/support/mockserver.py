"""Running a test mock server as its own process: bind (port 0 = any free one), print `LISTENING <port>` once
serving, stop on SIGTERM/SIGINT. Shared by every wire-format mock in tests/support."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from aiohttp import web


async def serve(make_app: Callable[[], web.Application], host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    print(f"LISTENING {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=3.0)
    except (asyncio.TimeoutError, Exception):  # shutting down: nothing left to report to
        pass


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    return p


def main(make_app: Callable[[], web.Application], description: str, argv: list[str] | None = None) -> int:
    args = parser(description).parse_args(argv)
    asyncio.run(serve(make_app, args.host, args.port))
    return 0
