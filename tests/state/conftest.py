"""Fixtures of the state tests: a shared redis-server for the session, fresh ones for the tests that kill it,
and `store`: a factory of backends of one kind that share one store (Redis, or one local table file), so that a
test can play several workers or instances."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastgw.state import Backend, LocalBackend, MemoryBackend, RedisBackend
from tests.state.redis_server import MISSING, REDIS_SERVER, RedisServer

#: Per-call timeout of the semantic tests: generous, so that a loaded CI box does not turn into a failure; the
#: failure tests set the production default (0.05) themselves.
TIMEOUT = 1.0

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.fail(MISSING)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a server of this test's own (aof=True for persistence); stopped at teardown."""
    if REDIS_SERVER is None:
        pytest.fail(MISSING)
    started: list[RedisServer] = []

    def start(aof: bool = False) -> RedisServer:
        s = RedisServer(tmp_path / f"redis{len(started)}", aof=aof).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


Factory = Callable[..., Backend]


@pytest.fixture(params=["local", "redis", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """`store()` -> a new backend on this test's store (memory: always the same one: it is one process's)."""
    prefix = f"t{next(_prefixes)}"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return lambda timeout=TIMEOUT: RedisBackend(server.url, prefix, timeout)
    if request.param == "local":
        return lambda timeout=TIMEOUT: LocalBackend(str(tmp_path / "state"), prefix, timeout)
    mem = MemoryBackend(prefix)
    return lambda timeout=TIMEOUT: mem
