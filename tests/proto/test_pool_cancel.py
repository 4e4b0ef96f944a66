"""A request cancelled (the client left) while it waits for the response head on a REUSED pooled connection:
the connection is closed at once, never left open outside the pool (the upstream would keep generating)."""

from __future__ import annotations

import asyncio

import uvloop

from fastgw.proto.client import UpstreamPool

REQ = b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}"


class FirstOnly:
    """Answers the first request on a connection (keep-alive, Content-Length), never the ones after it;
    notes when a connection is closed by the client (EOF or reset)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.second_request = asyncio.Event()
        self.closed = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _read_request(self, reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        self.requests += 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self._read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
            await self._read_request(reader)
            self.second_request.set()
            # Never answer: wait for the client to go away.
            while await reader.read(65536):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.closed.set()
        writer.close()

    def stop(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()  # ends any handler still waiting (the test failed)


async def closed_within(srv: FirstOnly, seconds: float) -> bool:
    try:
        await asyncio.wait_for(srv.closed.wait(), seconds)
        return True
    except TimeoutError:
        return False


def test_cancelled_wait_for_head_on_reused_connection_closes_it():
    async def main():
        srv = FirstOnly()
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        try:
            conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=30)
            assert conn.status == 200 and await conn.read_body(timeout=2) == b"{}"
            pool.release(conn)
            assert len(pool._idle[key]) == 1  # pooled, keep-alive

            task = asyncio.create_task(pool.exchange(key, REQ, connect_timeout=2, head_timeout=30))
            await asyncio.wait_for(srv.second_request.wait(), 2)
            assert not task.done()  # waiting for a head that never comes
            assert srv.connections == 1 and pool.connects == 1  # on the reused connection
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            else:
                raise AssertionError("the exchange was not cancelled")

            # The upstream sees the connection go within a second (before the fix it stayed open for good).
            assert await closed_within(srv, 1.0), "the cancelled request's upstream connection was left open"
            assert conn.closed
            assert not pool._idle.get(key)
        finally:
            pool.close_all()
            srv.stop()

    uvloop.run(main())


def test_cancelled_exchange_on_reused_connection_then_a_new_request_works():
    """After the cancel, the next request is not sent on the abandoned connection: a fresh one answers."""
    async def main():
        srv = FirstOnly()
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        try:
            conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=30)
            await conn.read_body(timeout=2)
            pool.release(conn)
            with_timeout = asyncio.wait_for(pool.exchange(key, REQ, connect_timeout=2, head_timeout=30), 0.3)
            try:
                await with_timeout
            except TimeoutError:
                pass
            else:
                raise AssertionError("the upstream answered a request it never answers")
            assert await closed_within(srv, 1.0), "the cancelled request's upstream connection was left open"
            assert not pool._idle.get(key)
            conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=5)
            assert conn.status == 200 and await conn.read_body(timeout=2) == b"{}"
            assert pool.connects == 2 and srv.connections == 2
            pool.release(conn)
        finally:
            pool.close_all()
            srv.stop()

    uvloop.run(main())
