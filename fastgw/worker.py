"""A worker process: one uvloop loop in one thread serving HTTP on the sockets inherited from the master.

It tells the master over a pipe when it serves (`R`), that it is alive (`.` once a
second), or why it could not boot (`E` + message). SIGTERM/SIGINT drain: stop
accepting, close idle connections, let requests and streams in flight finish
within the graceful timeout, then exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

import uvloop
from setproctitle import setproctitle

from fastgw import accesslog, metrics, telemetry
from fastgw.api.limits import GC_YOUNG_THRESHOLD
from fastgw.app import App
from fastgw.config import Config
from fastgw.policy.chain import Chain
from fastgw.api.errors import render
from fastgw.proto.server import ConnectionTracker, HttpServerProtocol, ServerLimits
from fastgw.providers.base import TargetRuntime

__all__ = ["run_worker", "tune_gc"]

log = logging.getLogger("fastgw.worker")

#: How often a worker tells the master it is alive (seconds).
HEARTBEAT_INTERVAL = 1.0
#: File descriptors a worker keeps for itself beside its connections (listening sockets, pipes, epoll, log and
#: audit files, the upstream pool's idle sockets): max_connections is lowered to leave them, and one upstream
#: socket per client connection, so a flood meets a 503 rather than EMFILE (which libuv answers with a reset).
FD_RESERVE = 64


def _send(fd: int, msg: bytes) -> None:
    try:
        os.write(fd, msg)
    except OSError:
        pass  # the master is gone; the parent-death check below ends us


def _die_with_parent() -> None:
    """Ask Linux to send us SIGTERM if the master dies (a SIGKILLed master must not leave orphans serving)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the heartbeat's parent check still catches it within a second


def run_worker(cfg: Config, targets: list[TargetRuntime], sockets: list[socket.socket], worker_id: int,
               pipe_fd: int, chain: Chain | None = None) -> int:
    """Serve until told to stop. Returns the process exit code."""
    setproctitle(f"fastgw: worker {worker_id}")
    _die_with_parent()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(cfg, targets, sockets, worker_id, pipe_fd, loop, chain))
    except BaseException as e:  # noqa: BLE001 - the master must learn why we could not run
        _send(pipe_fd, b"E" + f"worker {worker_id}: {type(e).__name__}: {e}".encode()[:2000] + b"\n")
        traceback.print_exc(file=sys.stderr)
        return 3  # master.BOOT_ERROR_EXIT
    finally:
        accesslog.flush()  # access lines still waiting for their batch (ACCESS_LOG_FLUSH_DELAY)
        metrics.flush()  # counts added up since the last flush
        loop.close()


def tune_gc() -> None:
    """Once booted: what boot built (config, targets, policies, modules) lives as long as the worker, so it is
    frozen out of the collector's sight (full collections no longer walk it); and the young generation is
    collected at GC_YOUNG_THRESHOLD net allocations rather than 700 (see there)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _serve(cfg: Config, targets: list[TargetRuntime], sockets: list[socket.socket], worker_id: int,
                 pipe_fd: int, loop: asyncio.AbstractEventLoop, chain: Chain | None) -> int:
    """Boot, serve until a stop signal, drain; the master hears `R` once we serve, then heartbeats."""
    app, tracker, servers = await _boot(cfg, targets, sockets, worker_id, loop, chain)
    tune_gc()
    stop: asyncio.Future[int] = loop.create_future()

    def request_stop(sig: int) -> None:
        if not stop.done():
            stop.set_result(sig)

    _handle_signals(loop, request_stop)
    master = os.getppid()
    _send(pipe_fd, b"R")
    _heartbeat(loop, pipe_fd, master, tracker, request_stop)
    await stop
    await _drain(app, servers, tracker, stop.result() == signal.SIGUSR1, worker_id, cfg.server.graceful_timeout)
    if chain is not None:
        chain.close()  # every audit record enqueued is written before the worker exits
    telemetry.shutdown()  # the spans and metric points still queued are exported
    return 0


async def _boot(cfg: Config, targets: list[TargetRuntime], sockets: list[socket.socket], worker_id: int,
                loop: asyncio.AbstractEventLoop, chain: Chain | None
                ) -> tuple[App, ConnectionTracker, list[asyncio.AbstractServer]]:
    """The app, and servers listening on the inherited sockets."""
    s = cfg.server
    lim = ServerLimits(header_timeout=s.header_timeout, keepalive_timeout=s.keepalive_timeout,
                       max_header_bytes=s.max_header_bytes, max_headers=s.max_headers,
                       max_body_bytes=s.max_body_bytes, send_timeout=s.send_timeout, body_timeout=s.body_timeout,
                       min_body_rate=s.min_body_rate)
    if chain is not None:
        chain.start(worker_id)  # one Hyperscan scratch per worker after fork, and the audit writer
    if s.access_log.path:
        accesslog.use_file(s.access_log.path, s.access_log.max_bytes, s.access_log.backups)
    tracker = ConnectionTracker(max_connections=_max_connections(s.max_connections, worker_id),
                                max_buffered_body_bytes=s.max_buffered_body_bytes)
    app = App(cfg, targets, loop, chain, tracker=tracker)
    metrics.start_flusher(loop)
    telemetry.setup(cfg, targets, worker_id)  # after fork: the exporters' threads are this worker's own
    loop.set_exception_handler(_loop_exception)

    def on_error(exc: BaseException) -> None:
        log.error("request failed with an internal error", exc_info=exc)

    servers: list[asyncio.AbstractServer] = []
    for sock in sockets:
        servers.append(await loop.create_server(
            lambda: HttpServerProtocol(app, lim, tracker, loop, on_error, render, hooks=app), sock=sock,
            backlog=2048))
    return app, tracker, servers


def _max_connections(configured: int, worker_id: int) -> int:
    """`server.max_connections`, lowered when the open-file limit could not hold that many client sockets, an
    upstream socket each and FD_RESERVE (then a warning says so)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    fits = max(1, (soft - FD_RESERVE) // 2)
    if fits < configured:
        log.warning("worker %d: open-file limit %d holds %d connections (each may need an upstream socket); "
                    "max_connections lowered from %d to %d (raise LimitNOFILE to lift it)", worker_id, soft, fits,
                    configured, fits)
        return fits
    return configured


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Errors no callback caught (an accept failing with EMFILE, a transport callback raising) are logged and
    the worker serves on: one line, never a dead worker."""
    exc = context.get("exception")
    msg = context.get("message", "event loop error")
    if isinstance(exc, OSError):
        log.error("%s: %s", msg, exc)
    else:
        log.error("%s", msg, exc_info=exc)


def _handle_signals(loop: asyncio.AbstractEventLoop, request_stop: Callable[[int], None]) -> None:
    loop.add_signal_handler(signal.SIGTERM, request_stop, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, request_stop, signal.SIGINT)
    # SIGUSR1: retire after a reload (the new workers serve already): drain as for SIGTERM, but let idle
    # keep-alive connections live until their next request.
    loop.add_signal_handler(signal.SIGUSR1, request_stop, signal.SIGUSR1)
    if os.environ.get("FASTGW_TEST_HOOKS") == "1":
        # Test-only: SIGUSR2 blocks this worker's event loop, as a runaway computation would (the master must
        # notice and replace the worker). Never set in production.
        loop.add_signal_handler(signal.SIGUSR2, time.sleep, 3600)


def _heartbeat(loop: asyncio.AbstractEventLoop, pipe_fd: int, master: int, tracker: ConnectionTracker,
               request_stop: Callable[[int], None]) -> None:
    """Tell the master now, then every HEARTBEAT_INTERVAL, that we are alive; stop once it is gone."""
    if os.getppid() != master:  # orphaned: the master died without telling us
        request_stop(signal.SIGTERM)
        return
    # Alive, and how many streams are open (the master shows the sum in systemd's STATUS).
    streams = sum(1 for c in tracker.conns if c.flow_listener is not None)
    _send(pipe_fd, b".%d;" % streams)
    loop.call_later(HEARTBEAT_INTERVAL, _heartbeat, loop, pipe_fd, master, tracker, request_stop)


async def _drain(app: App, servers: list[asyncio.AbstractServer], tracker: ConnectionTracker, retiring: bool,
                 worker_id: int, graceful_timeout: float) -> None:
    """Stop accepting, answer what is in flight, close the rest; streams still open at the timeout are ended."""
    app.draining = True
    for srv in servers:
        srv.close()
    tracker.shutdown(linger=retiring)
    log.debug("worker %d draining: %d connection(s) open", worker_id, len(tracker.conns))
    try:
        await asyncio.wait_for(tracker.wait_closed(), graceful_timeout)
    except asyncio.TimeoutError:
        log.warning("worker %d: %d connection(s) still open after %gs; ending their streams", worker_id,
                    len(tracker.conns), graceful_timeout)
        for c in list(tracker.conns):
            ender = getattr(c.flow_listener, "shutdown", None)
            if ender is not None:
                ender()  # in-stream error envelope `server_shutdown`, then [DONE]
        try:
            await asyncio.wait_for(tracker.wait_closed(), 2.0)
        except asyncio.TimeoutError:
            for c in list(tracker.conns):
                if c.transport is not None:
                    c.transport.abort()
    app.pool.close_all()
