"""A minimal Redis client: one pipelined connection per worker, RESP2 packed and parsed by hiredis, strict deadlines.

Why not redis-py or coredis (measured by `python -m bench.state_bench` on uvloop, EVALSHA of a three-key
script against a local redis-server, per call; 2-vCPU VM):

    client            c=1 p50 / p99 µs   client CPU µs   c=64 p50 / p99 µs   client CPU µs
    redis-py+hiredis      59 / 123           44.9           3385 / 6341          41.0
    coredis              133 / 248          119.6           6835 / 12552         60.8
    this (hiredis)        20 / 31             8.7            888 / 5761           5.5

Between the two named candidates redis-py wins clearly (2.7x less CPU than coredis at c=1, its p50 half),
but a gateway spends ~0.8 ms of CPU on a whole streamed request, so redis-py's ~45 µs per call, twice per
request, would be a tenth of it; this client spends ~9 µs. It is the same shape as the rest of fastgw (a raw
asyncio Protocol, a C parser), does only what the state backend needs (commands in, replies out, in order),
and keeps one connection per worker instead of one per concurrent request (redis-py's pool opens up to c).

Failure handling, which the backend's guarantees rest on:
- every call has a deadline (`timeout` from its start): connecting, sending and waiting all fit in it;
- a call finding no live connection connects (that is the "one reconnect attempt"); a call in flight when
  the connection dies fails at once (the command may or may not have run: it is never resent);
- after a failed connect, calls fail at once for a backoff (0.05 s doubling to 0.5 s), so a dead Redis costs
  nothing per request and a returning one is found within 0.5 s;
- a reply that does not come within the deadline fails the call; the connection stays (replies are matched
  in order, a late one is dropped or handed to the call's `late` callback), unless it is stuck: no reply at
  all for a whole timeout retires it (new calls get a new connection; the old one is read RETIRED_GRACE s
  longer, so a Redis that stalled and resumed still tells what the commands it was sent did).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from fastgw.state.model import StateUnavailable

__all__ = ["RespClient", "ReplyError", "pack", "parse_url", "RedisAddress", "BACKOFF_MIN", "BACKOFF_MAX",
           "NOT_SENT"]

ReplyError = hiredis.ReplyError
#: First wait after a failed connect: short, so a restarted Redis is found quickly.
BACKOFF_MIN = 0.05
#: Longest wait between connects: bounds how long after Redis returns the gateway still refuses (issue 16: 1 s).
BACKOFF_MAX = 0.5

#: How long a connection retired as stuck is still read for late replies before it is closed.
RETIRED_GRACE = 5.0
#: What `RespClient.send` gives its `late` callback for a call cancelled before its command was written.
NOT_SENT = object()

log = logging.getLogger("fastgw.state.resp")


class RedisAddress:
    """Where and how to connect, from `redis://`, `rediss://` (TLS) or `unix://` URLs (redis-py's URL forms)."""

    __slots__ = ("host", "port", "path", "tls", "username", "password", "db")

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, path: str | None = None, tls: bool = False,
                 username: str | None = None, password: str | None = None, db: int = 0) -> None:
        self.host, self.port, self.path, self.tls = host, port, path, tls
        self.username, self.password, self.db = username, password, db

    def __repr__(self) -> str:  # never the password
        where = f"unix:{self.path}" if self.path else f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"
        return f"<redis {where}/{self.db}>"


def parse_url(url: str) -> RedisAddress:
    """redis://[[user]:password@]host[:port][/db], rediss://..., unix://[[user]:password@]/path[?db=N]."""
    u = urlsplit(url)
    if u.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {url!r}")
    q = parse_qs(u.query)
    db_text = (q.get("db") or [""])[0] or (u.path.lstrip("/") if u.scheme != "unix" else "") or "0"
    if not db_text.isdigit():
        raise ValueError(f"the database in {url!r} must be a number")
    user = unquote(u.username) if u.username else None
    password = unquote(u.password) if u.password else None
    if u.scheme == "unix":
        if not u.path:
            raise ValueError(f"expected a socket path in {url!r}")
        return RedisAddress(path=u.path, username=user, password=password, db=int(db_text))
    try:
        port = u.port or 6379
    except ValueError as e:
        raise ValueError(f"bad port in {url!r}") from e
    return RedisAddress(host=u.hostname or "127.0.0.1", port=port, tls=u.scheme == "rediss", username=user,
                        password=password, db=int(db_text))


class _Conn(asyncio.Protocol):
    """One connection: commands written in order, each reply resolves the oldest waiting future."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.WriteTransport | None = None
        #: Not to be used for new calls (closed, or retired as stuck).
        self.lost = False
        #: Closed: no reply will come any more.
        self.dead = False
        #: Calls that stopped waiting (deadline, or their caller cancelled) after their command was written, and
        #: asked for its reply anyway: the reply, if it comes, goes to the callback (`RespClient.send`'s `late`).
        self.orphans: dict[asyncio.Future[Any], Callable[[Any], None]] = {}
        #: Since when the oldest waiting call has seen no progress (the last reply, or its own send).
        self.quiet_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self.quiet_since = time.monotonic()
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as e:  # the stream cannot be trusted any more
                self.fail(StateUnavailable(f"redis protocol error: {e}"))
                return
            if reply is False:
                return
            if not self.waiting:
                continue
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(reply)
            elif self.orphans:  # a call that timed out or was cancelled: its reply is dropped, or handed on
                late = self.orphans.pop(fut, None)
                if late is not None:
                    try:
                        late(reply)
                    except Exception:  # noqa: BLE001 - one bad callback must not stop the replies behind it
                        log.exception("handling a late redis reply failed")
            if self.lost and not self.waiting and self.transport is not None:
                self.transport.close()  # retired, and every reply it owed has come

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StateUnavailable(f"redis connection lost: {exc or 'closed by the server'}"))

    def fail(self, err: StateUnavailable) -> None:
        self.lost = self.dead = True
        self.orphans.clear()  # their commands may or may not have run: no reply will tell
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(err)
        if self.transport is not None:
            self.transport.close()

    def retire(self, err: StateUnavailable) -> None:
        """No reply for a whole timeout: fail the calls waiting, take no new ones, but read on for a while (a
        Redis that stalled and resumed still answers, and a late answer may tell what a command did)."""
        self.lost = True
        for fut in self.waiting:
            if not fut.done():
                fut.set_exception(err)
        self.loop.call_later(RETIRED_GRACE, self.fail, err)

    def send(self, data: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        if not self.waiting:
            self.quiet_since = time.monotonic()
        self.waiting.append(fut)
        assert self.transport is not None
        self.transport.write(data)
        return fut


def pack(*args: Any) -> bytes:
    """One command in RESP (hiredis packs it in C; its stub types a 1-tuple, hence the Any)."""
    packed: bytes = hiredis.pack_command(args)
    return packed


def _expire(fut: asyncio.Future[Any], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(StateUnavailable(f"redis did not answer within {timeout * 1e3:.0f} ms", timeout))


class RespClient:
    """Commands to one Redis over one connection per process, each bounded by `timeout` seconds."""

    def __init__(self, address: RedisAddress, timeout: float, setup: tuple[bytes, ...] = ()) -> None:
        self.address = address
        self.timeout = timeout
        #: Packed commands sent on every new connection, after AUTH and SELECT (the backend's SCRIPT LOADs).
        self.setup = setup
        self._conn: _Conn | None = None
        self._connecting: asyncio.Future[_Conn] | None = None
        self._down_until = 0.0
        self._backoff = BACKOFF_MIN
        #: Connections made (the first, then every reconnect): tests and metrics read it.
        self.connects = 0
        # A forked worker must not share its parent's socket (replies would go to whichever reads first).
        ref = weakref.ref(self)

        def forget() -> None:
            client = ref()
            if client is not None:
                client._forget()

        os.register_at_fork(after_in_child=forget)

    def _forget(self) -> None:
        self._conn, self._connecting, self._down_until, self._backoff = None, None, 0.0, BACKOFF_MIN

    async def call(self, *args: Any) -> Any:
        """Send one command, return its reply (a `ReplyError` is returned, not raised: scripts look at it)."""
        return await self.send(pack(*args))

    async def send(self, packed: bytes, late: Callable[[Any], None] | None = None) -> Any:
        """Send one packed command, return its reply. `late`: if this call fails by its deadline or is cancelled
        after the command was written, the reply that still comes (the command ran, or was refused) is given to
        it; if it is cancelled before the command was written (while connecting), NOT_SENT is; when the
        connection is lost first, nothing is (whether the command ran cannot be known)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        conn = self._conn
        if conn is None or conn.lost or conn.loop is not loop or (
                conn.waiting and time.monotonic() - conn.quiet_since > self.timeout):
            if conn is not None and not conn.lost and conn.loop is loop:
                # Requests are waiting and nothing has come back for a whole timeout: the peer is stuck or gone
                # without a FIN. Fail them now and start afresh rather than queue behind them.
                conn.retire(StateUnavailable(f"redis gave no reply for {self.timeout * 1e3:.0f} ms"))
            try:
                conn = await self._connect(deadline)
            except asyncio.CancelledError:
                if late is not None:
                    late(NOT_SENT)
                raise
        fut = conn.send(packed)
        timer = loop.call_at(deadline, _expire, fut, self.timeout)
        try:
            return await fut
        except BaseException:
            if late is None:
                raise
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                late(fut.result())  # answered, but the caller was cancelled before it could read the answer
            elif not conn.dead:
                conn.orphans[fut] = late
            raise
        finally:
            timer.cancel()

    async def _connect(self, deadline: float) -> _Conn:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._down_until:
            raise StateUnavailable(f"redis at {self.address!r} is down; next try in {self._down_until - now:.2f} s",
                                   max(self._down_until - now, self.timeout))
        if self._connecting is not None and self._connecting.get_loop() is not loop:
            self._connecting = None
        if self._connecting is None:  # one connect at a time; others wait for it within their own deadline
            self._connecting = loop.create_future()
            task = loop.create_task(self._open(self._connecting))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        try:
            return await asyncio.wait_for(asyncio.shield(self._connecting), max(0.0, deadline - now))
        except asyncio.TimeoutError:
            raise StateUnavailable(f"redis at {self.address!r}: no connection within {self.timeout * 1e3:.0f} ms",
                                   self.timeout) from None

    async def _open(self, done: asyncio.Future[_Conn]) -> None:
        loop = asyncio.get_running_loop()
        a = self.address
        try:
            # Connecting has its own limit (one timeout): callers stop waiting at their deadlines anyway.
            async with asyncio.timeout(self.timeout):
                if a.path:
                    _, conn = await loop.create_unix_connection(_Conn, a.path)
                else:
                    ctx = ssl.create_default_context() if a.tls else None
                    _, conn = await loop.create_connection(_Conn, a.host, a.port, ssl=ctx,
                                                           server_hostname=a.host if a.tls else None)
                hello: list[Any] = []
                if a.password is not None:
                    hello.append(conn.send(pack("AUTH", a.username, a.password) if a.username
                                           else pack("AUTH", a.password)))
                if a.db:
                    hello.append(conn.send(pack("SELECT", a.db)))
                hello += [conn.send(packed) for packed in self.setup]
                for reply in await asyncio.gather(*hello):
                    if isinstance(reply, ReplyError):
                        conn.fail(StateUnavailable(f"redis refused the connection set-up: {reply}"))
                        raise StateUnavailable(f"redis refused the connection set-up: {reply}")
        except Exception as e:  # refused, unreachable, TLS, a bad address, a refused AUTH: all mean "down"
            self._down_until = loop.time() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._connecting = None
            err = e if isinstance(e, StateUnavailable) else StateUnavailable(
                f"redis at {a!r} unreachable: {e or type(e).__name__}", self._backoff)
            if not done.done():
                done.set_exception(err)
                done.exception()  # retrieved: nobody may be waiting any more
            return
        self._conn, self._connecting = conn, None
        self._backoff = BACKOFF_MIN
        self.connects += 1
        if not done.done():
            done.set_result(conn)

    async def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
