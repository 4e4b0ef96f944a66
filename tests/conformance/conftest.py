"""Fixtures of the conformance suite: `gateways` (session), the gateways the spec cases go to (`gateways.py`). At
the end of a run that judged objects, the terminal summary says how many, by schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.gateways import Gateways
from tests.conformance.judges import JUDGED


@pytest.fixture(scope="session")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    gws = Gateways(tmp_path_factory.mktemp("conformance"))
    try:
        yield gws
    finally:
        gws.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if JUDGED:
        total = sum(JUDGED.values())
        terminalreporter.write_sep("-", f"conformance: {total} JSON objects judged")
        for name, n in sorted(JUDGED.items()):
            terminalreporter.write_line(f"{n:6d}  {name}")
