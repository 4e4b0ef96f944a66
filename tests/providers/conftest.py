"""Fixtures for the provider tests (see `stack.py`): `mock`, `gw` and `client` for the provider a test is about —
its module's `PROVIDER`, or the `provider` it is parametrised with (the contract suite) — and `pii_gw` /
`pii_client`, the same gateway with pii-detector. Mocks and gateways are started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.providers.stack import Stacks, client_for
from tests.support.procs import Gateway, Upstream


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    s = Stacks(tmp_path_factory.mktemp("providers"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> str:
    return request.module.PROVIDER


@pytest.fixture
def mock(stacks: Stacks, provider: str) -> Upstream:
    return stacks.mock(provider)


@pytest.fixture
def gw(stacks: Stacks) -> Gateway:
    return stacks.gateway()


@pytest.fixture(scope="session")
def client(stacks: Stacks) -> openai.OpenAI:
    return client_for(stacks.gateway())


@pytest.fixture
def pii_gw(stacks: Stacks) -> Gateway:
    return stacks.gateway("pii-detector")


@pytest.fixture(scope="session")
def pii_client(stacks: Stacks) -> openai.OpenAI:
    return client_for(stacks.gateway("pii-detector"))
