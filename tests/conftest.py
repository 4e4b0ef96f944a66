"""Shared fixtures: the mock OpenAI upstream and gateways started as real processes.

- `upstream` (session): the mock upstream; `.url` is its `/v1` base, `.last(path)`
  the headers and body of the last request it saw on `path`.
- `gateway_factory` (function): `start(config, workers=1, extra_args=(), env=None)`
  starts `python -m fastgw serve` on a free port and waits for `/readyz`; every
  gateway it started is stopped (SIGTERM, then kill after 15 s) at teardown.
- `gateway` (module): the standard test config (`gateway_config`) with 2 workers.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.support.procs import (  # noqa: E402
    Gateway,
    Upstream,
    gateway_config,
    start_gateway,
    start_upstream,
)

# Long fuzz campaigns (tests/fuzz/README.md): `pytest tests/fuzz --hypothesis-profile=fuzz-long`; the budget per
# target is FASTGW_FUZZ_EXAMPLES (default 100000). `make test` keeps the default profile and bounded budgets.
import os as _os  # noqa: E402

from hypothesis import HealthCheck as _HealthCheck  # noqa: E402
from hypothesis import settings as _settings  # noqa: E402

_settings.register_profile(
    "fuzz-long",
    max_examples=int(_os.environ.get("FASTGW_FUZZ_EXAMPLES", "100000")),
    deadline=None,
    print_blob=True,
    suppress_health_check=[_HealthCheck.too_slow, _HealthCheck.data_too_large, _HealthCheck.filter_too_much,
                           _HealthCheck.large_base_example],
)

__all__ = ["gateway_config"]


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    up = start_upstream()
    try:
        yield up
    finally:
        up.stop()


class GatewayFactory:
    """Starts gateways for one test (or one module) and stops them all afterwards."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.started: list[Gateway] = []

    def start(
        self,
        config: dict,
        workers: int = 1,
        extra_args: tuple[str, ...] | list[str] = (),
        env: dict | None = None,
    ) -> Gateway:
        gw = start_gateway(config, self.tmp_dir, workers=workers, extra_args=extra_args, env=env)
        self.started.append(gw)
        return gw

    __call__ = start

    def close(self) -> None:
        for gw in reversed(self.started):
            gw.stop()
        self.started.clear()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    factory = GatewayFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    try:
        yield factory.start(gateway_config(upstream.url), workers=2)
    finally:
        factory.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On a failing test that used a gateway, attach the gateway's output to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    gateways: list[Gateway] = []
    if isinstance(funcargs.get("gateway"), Gateway):
        gateways.append(funcargs["gateway"])
    factory = funcargs.get("gateway_factory")
    if isinstance(factory, GatewayFactory):
        gateways.extend(factory.started)
    for gw in gateways:
        text = gw.stderr_text()
        if len(text) > 8000:
            text = "...\n" + text[-8000:]
        report.sections.append((f"fastgw output ({gw.base})", text))
