"""Upstream client and pool against scripted loopback servers: framing, reuse, stale connections, timeouts, TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import uvloop

from fastgw.proto.client import BadResponse, ConnectFailed, PeerClosed, TransportTimeout, UpstreamPool

REQ = b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}"


class Scripted:
    """A loopback server answering each request with the next scripted action."""

    def __init__(self, actions: list, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.actions = actions
        self.connections = 0
        self.requests = 0
        self.ssl_ctx = ssl_ctx

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_ctx)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.requests += 1
                action = self.actions.pop(0)
                if await action(writer) == "close":
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def reply(data: bytes, then: str | None = None):
    async def act(w: asyncio.StreamWriter):
        w.write(data)
        await w.drain()
        return then
    return act


def run(coro):
    return uvloop.run(coro)


def test_content_length_chunked_and_close_delimited_bodies():
    async def main():
        srv = Scripted([
            reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
            reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
            reply(b"HTTP/1.1 200 OK\r\n\r\nuntil close", then="close"),
        ])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        bodies = []
        for _ in range(3):
            conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
            bodies.append(await conn.read_body(timeout=2))
            pool.release(conn)
        assert bodies == [b"hello", b"abcde", b"until close"]
        # The first two reused one keep-alive connection; the close-delimited one cannot be pooled.
        assert srv.connections == 1 and pool.connects == 1
        assert not pool._idle[key]
    run(main())


def test_stale_pooled_connection_is_replaced_once():
    async def main():
        # The server closes after each response without saying so: the pooled connection is stale.
        srv = Scripted([reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", then="close"),
                        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", then="close")])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert await conn.read_body() == b"ok"
        pool.release(conn)
        await asyncio.sleep(0.05)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert conn.status == 200 and await conn.read_body() == b"ok"
        assert srv.requests == 2 and srv.connections == 2
    run(main())


def test_unfinished_response_is_never_pooled():
    async def main():
        srv = Scripted([reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"),
                        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert not conn.reusable
        pool.release(conn)  # mid-body: must be closed, not pooled
        assert conn.closed and not pool._idle.get(key)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert await conn.read_body() == b"ok"
        assert srv.connections == 2
    run(main())


def test_a_whole_body_within_and_past_its_limit_whether_it_came_with_the_head_or_after():
    """`read_body`'s limit holds for a body that came in the head's read (taken at once, no sink) as for one that
    comes later (gathered by its collector): past it, BadResponse and the connection never pooled; within it, the
    body, and the connection reused."""
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop())

        async def body_later(w):
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.1)
            w.write(b"0123456789")
            await w.drain()
        whole = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789"
        srv = Scripted([reply(whole), reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), body_later,
                        reply(whole), body_later])
        key = ("http", "127.0.0.1", await srv.start())
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert await conn.read_body(limit=10, timeout=2) == b"0123456789" and conn.reusable
        pool.release(conn)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert await conn.read_body(limit=10, timeout=2) == b"" and conn.reusable
        pool.release(conn)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert await conn.read_body(limit=10, timeout=2) == b"0123456789" and conn.reusable
        pool.release(conn)
        assert srv.connections == 1
        for _ in range(2):  # with the head, then after it
            conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
            with pytest.raises(BadResponse, match="exceeds 9 bytes"):
                await conn.read_body(limit=9, timeout=2)
            assert conn.closed and not conn.reusable
            pool.release(conn)
        assert srv.connections == 2  # the first refusal's connection was not pooled
    run(main())


def test_upstream_errors():
    async def main():
        loop = asyncio.get_running_loop()
        pool = UpstreamPool(loop)
        with pytest.raises(ConnectFailed):
            await pool.exchange(("http", "127.0.0.1", 9), REQ, connect_timeout=2, head_timeout=2)

        async def hang(w):
            await asyncio.sleep(5)
        srv = Scripted([hang])
        port = await srv.start()
        with pytest.raises(TransportTimeout):
            await pool.exchange(("http", "127.0.0.1", port), REQ, connect_timeout=2, head_timeout=0.2)

        srv = Scripted([reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", then="close")])
        port = await srv.start()
        conn = await pool.exchange(("http", "127.0.0.1", port), REQ, connect_timeout=2, head_timeout=2)
        with pytest.raises(PeerClosed):
            await conn.read_body(timeout=2)

        srv = Scripted([reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n")])
        port = await srv.start()
        conn = await pool.exchange(("http", "127.0.0.1", port), REQ, connect_timeout=2, head_timeout=2)
        with pytest.raises(BadResponse):
            await conn.read_body(timeout=2)
        assert conn.closed

        srv = Scripted([reply(b"not http at all\r\n\r\n")])
        port = await srv.start()
        with pytest.raises(BadResponse):
            await pool.exchange(("http", "127.0.0.1", port), REQ, connect_timeout=2, head_timeout=2)
    run(main())


def test_interim_100_continue_is_skipped():
    async def main():
        srv = Scripted([reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        conn = await pool.exchange(("http", "127.0.0.1", port), REQ, connect_timeout=2, head_timeout=2)
        assert conn.status == 200 and await conn.read_body() == b"ok"
    run(main())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl CLI is needed to make a test certificate (Debian package openssl)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_with_ca_file_and_verification_failure(tls_files):
    cert, key = tls_files

    async def main():
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        srv = Scripted([reply(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure")], ssl_ctx=ctx)
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key_ = ("https", "127.0.0.1", port)
        # System CAs do not trust a self-signed certificate: a clear connect error, not a hang.
        with pytest.raises(ConnectFailed, match="TLS|certificate|verify"):
            await pool.exchange(key_, REQ, connect_timeout=2, head_timeout=2)
        conn = await pool.exchange(key_, REQ, connect_timeout=2, head_timeout=2, ca_file=str(cert))
        assert await conn.read_body() == b"secure"
    run(main())


def test_a_keep_alive_connection_parses_each_response_with_its_one_parser():
    """A connection keeps its response parser from one clean keep-alive response to the next (llhttp starts each
    message afresh): every framing still reads right, and nothing of one response reaches the next."""
    async def main():
        srv = Scripted([
            reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-first: 1\r\n\r\nhello"),
            reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n0\r\n\r\n"),
            reply(b"HTTP/1.1 204 No Content\r\n\r\n"),
            reply(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nx-last: 1\r\n\r\nno"),
        ])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        seen, parsers = [], []
        for _ in range(4):
            conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
            parsers.append(conn._parser)  # held: a freed parser's id could be given to the next
            seen.append((conn.status, list(conn.headers), await conn.read_body(timeout=2)))
            pool.release(conn)
        assert [(status, body) for status, _, body in seen] == [(200, b"hello"), (201, b"abc"), (204, b""),
                                                                 (404, b"no")]
        assert seen[3][1] == [(b"content-length", b"2"), (b"x-last", b"1")]
        assert srv.connections == 1 and len({id(p) for p in parsers}) == 1
    run(main())


def test_head_deadline_of_a_reused_connection_counts_from_each_request():
    """One head timer per connection: a request on a reused connection gets its own whole head timeout (the
    timer a first request set fires early for it and waits on), and a shorter timeout takes effect at once."""
    async def main():
        loop = asyncio.get_running_loop()
        pool = UpstreamPool(loop)

        async def late(w):
            await asyncio.sleep(0.5)  # within its own 0.6 s, past the first request's deadline
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()

        async def hang(w):
            await asyncio.sleep(5)
        srv = Scripted([reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), late, hang])
        port = await srv.start()
        key = ("http", "127.0.0.1", port)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=0.6)
        assert await conn.read_body() == b"ok"
        pool.release(conn)
        await asyncio.sleep(0.3)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=0.6)  # the same connection
        assert srv.connections == 1 and await conn.read_body() == b"ok"
        pool.release(conn)
        t0 = loop.time()
        with pytest.raises(TransportTimeout, match="within 0.1s"):
            await pool.exchange(key, REQ, connect_timeout=2, head_timeout=0.1)
        assert loop.time() - t0 < 0.4  # the shorter deadline, not the timer already set
    run(main())


class _Relay:
    """A stream sink that keeps what it gets."""

    def __init__(self) -> None:
        self.data = b""

    def on_data(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass

    def on_end(self) -> None:
        pass

    def on_error(self, exc: Exception) -> None:
        pass


def test_a_stream_drops_the_head_timer_and_headers_a_whole_body_keeps_them():
    """Issue 18: what only the head needed does not stay as long as a stream does (the head timer would stay armed
    until it lapses; the response headers were read before the relay took the body). A whole body keeps both:
    its timer serves the connection's next request."""
    async def main():
        head = b"HTTP/1.1 200 OK\r\nx-ratelimit-remaining-requests: 9\r\ntransfer-encoding: chunked\r\n\r\n"
        srv = Scripted([reply(head + b"5\r\nhello\r\n0\r\n\r\n"), reply(head + b"7\r\ndata: 1\r\n")])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=30)
        assert await conn.read_body(timeout=2) == b"hello"
        assert conn._head_timer is not None and conn.header(b"x-ratelimit-remaining-requests") == b"9"
        pool.release(conn)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=30)  # the same connection
        assert conn.header(b"x-ratelimit-remaining-requests") == b"9" and conn._head_timer is not None
        relay = _Relay()
        conn.set_sink(relay)
        assert conn._head_timer is None and conn.headers == []
        for _ in range(50):
            if relay.data:
                break
            await asyncio.sleep(0.01)
        assert relay.data == b"data: 1"
        conn.close()
    run(main())


def test_chunked_bodies_over_many_reads_and_responses_reach_the_sink_whole():
    """The parser appends body chunks straight to the connection's held list (issue 18: no method call per chunk),
    so that list must stay the one the parser was given: bodies of many chunks, cut into reads at every kind of
    place, over several responses on one keep-alive connection, each reach their sink exactly and in order."""
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(40)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    whole = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body

    def in_pieces(cuts: list[int]):
        async def act(w: asyncio.StreamWriter):
            for a, b in zip([0, *cuts], [*cuts, len(whole)]):
                w.write(whole[a:b])
                await w.drain()
                await asyncio.sleep(0.002)  # separate reads
        return act

    cuttings = [[], [len(whole) - 1], [40, 41, 300, 301, 302], list(range(60, len(whole), 97)), [5, 70, 71, 72]]

    async def main():
        srv = Scripted([in_pieces(c) for c in cuttings] + [in_pieces([100])])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        for _ in cuttings:
            conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
            relay = _Relay()
            ended = asyncio.get_running_loop().create_future()
            relay.on_end = lambda: ended.done() or ended.set_result(None)  # type: ignore[method-assign]
            conn.set_sink(relay)
            await asyncio.wait_for(ended, 5)
            assert relay.data == b"".join(events)
            assert conn._callbacks.on_body.__self__ is conn._held and conn._held == []  # type: ignore[attr-defined]
            pool.release(conn)
        # A whole body, through the default collector, on the same connection.
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=2)
        assert await conn.read_body(timeout=2) == b"".join(events)
        assert srv.connections == 1
    run(main())


def test_a_late_detach_from_an_earlier_stream_never_strands_the_next_exchange():
    """A stream's consumer that learns late that its client left (after the connection went back to the pool and
    was taken by the next request) must not cut that next request: its detach is ignored, and the next request
    gets its answer. (Before, the connection closed with the next request's head still awaited, and that await
    was never told: the request hung until its client gave up.)"""
    async def main():
        async def late(w):
            await asyncio.sleep(0.2)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()
        srv = Scripted([reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), late])
        port = await srv.start()
        pool = UpstreamPool(asyncio.get_running_loop())
        key = ("http", "127.0.0.1", port)
        conn = await pool.exchange(key, REQ, connect_timeout=2, head_timeout=5)
        relay = _Relay()
        conn.set_sink(relay)
        for _ in range(100):
            if conn.reusable:
                break
            await asyncio.sleep(0.01)
        assert relay.data == b"hello"
        pool.release(conn)
        nxt = asyncio.ensure_future(pool.exchange(key, REQ, connect_timeout=2, head_timeout=5))
        await asyncio.sleep(0.05)  # the next request is written on the pooled connection and awaits its head
        conn.detach()  # the first stream's consumer, told late that its client left
        got = await asyncio.wait_for(nxt, 3)
        assert got is conn and await got.read_body(timeout=2) == b"ok"
        assert srv.connections == 1
    run(main())
