"""The policy chain of a config, compiled once in the master and shared by every worker after fork."""

from __future__ import annotations

from fastgw.config import Config
from fastgw.policy.findings import Findings
from fastgw.policy.pii import PiiPolicy

__all__ = ["Chain", "build_chain"]


class Chain:
    """The enabled policies, in chain order, with the findings fan-out they report to."""

    __slots__ = ("pii", "findings")

    def __init__(self, pii: PiiPolicy | None, findings: Findings | None = None) -> None:
        self.pii = pii
        self.findings = findings or Findings()

    @property
    def output(self) -> bool:
        """Whether any policy inspects answers (streams then take the policy relay)."""
        return self.pii is not None and self.pii.output

    def allocate_scratch(self) -> None:
        """Per-worker scan state (Hyperscan scratch), after fork."""
        if self.pii is not None:
            self.pii.allocate_scratch()


def build_chain(cfg: Config) -> Chain:
    pii = cfg.pii()
    return Chain(PiiPolicy(pii) if pii is not None else None)
