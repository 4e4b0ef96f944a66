"""What an admission answers: per bucket, per concurrency set and per budget, and the verdict (`fastgw.state.model`
re-exports them).

Native classes, compiled with mypyc (issue 18): every limited request builds four or five of them in
`fastgw.state.core.decide` (compiled) and the rate-limiter (compiled) reads their fields for its headers and
metrics. As msgspec Structs each construction and each field read from compiled code was a generic call or lookup;
here they are C. Mutable (a refusal's wait is filled in after the decision) and compared by value.
"""

from __future__ import annotations

__all__ = ["RateState", "SlotState", "SpendState", "Admission"]


class RateState:
    """One GCRA bucket's answer."""

    __slots__ = ("ok", "remaining", "reset", "wait", "never")

    def __init__(self, ok: bool, remaining: int, reset: float, wait: float, never: bool = False) -> None:
        self.ok = ok
        #: Units left after this take (before it, when refused).
        self.remaining = remaining
        #: Seconds until the bucket is full again.
        self.reset = reset
        #: Seconds until this take would pass (0 when it passed).
        self.wait = wait
        #: The take is larger than the burst: it can never pass.
        self.never = never

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RateState) and (self.ok, self.remaining, self.reset, self.wait, self.never) == (
            other.ok, other.remaining, other.reset, other.wait, other.never)

    def __repr__(self) -> str:
        return (f"RateState(ok={self.ok!r}, remaining={self.remaining!r}, reset={self.reset!r}, wait={self.wait!r}, "
                f"never={self.never!r})")


class SlotState:
    """One concurrency set's answer."""

    __slots__ = ("ok", "in_use", "wait")

    def __init__(self, ok: bool, in_use: int, wait: float) -> None:
        self.ok = ok
        #: Live holders before this one.
        self.in_use = in_use
        #: Seconds until the earliest lease runs out (an upper bound on when a slot frees), when refused.
        self.wait = wait

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotState) and (self.ok, self.in_use, self.wait) == (other.ok, other.in_use,
                                                                                       other.wait)

    def __repr__(self) -> str:
        return f"SlotState(ok={self.ok!r}, in_use={self.in_use!r}, wait={self.wait!r})"


class SpendState:
    """One budget ledger's answer."""

    __slots__ = ("ok", "used")

    def __init__(self, ok: bool, used: int) -> None:
        self.ok = ok
        #: nano-USD committed before this reservation (spent + reserved in flight).
        self.used = used

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpendState) and (self.ok, self.used) == (other.ok, other.used)

    def __repr__(self) -> str:
        return f"SpendState(ok={self.ok!r}, used={self.used!r})"


class Admission:
    """The all-or-nothing verdict and each part's answer, in the ask's order."""

    __slots__ = ("ok", "rates", "slots", "spends")

    def __init__(self, ok: bool, rates: list[RateState], slots: list[SlotState], spends: list[SpendState]) -> None:
        self.ok = ok
        self.rates = rates
        self.slots = slots
        self.spends = spends

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Admission) and (self.ok, self.rates, self.slots, self.spends) == (
            other.ok, other.rates, other.slots, other.spends)

    def __repr__(self) -> str:
        return f"Admission(ok={self.ok!r}, rates={self.rates!r}, slots={self.slots!r}, spends={self.spends!r})"
