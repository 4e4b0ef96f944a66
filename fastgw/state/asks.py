"""What a caller asks of a state backend: the admission (`Ask` of `Rate`s, `Slot`s and `Spend`s), the settlement
(`Settle`) and the reservation's id (`new_holder`); `fastgw.state.model` re-exports them and says what each means.

Native classes, compiled with mypyc (issue 18): the rate-limiter (compiled) builds an `Ask` and a `Settle` per
request and the `local` backend and the decision (compiled) read their fields a few dozen times; as msgspec
Structs each read from compiled code was a generic attribute lookup (~160 instructions), here a C field. Immutable
(each field `Final`: mypy refuses an assignment), hashable and compared by value, as the Structs were.
"""

from __future__ import annotations

import os
from itertools import count
from typing import Final

__all__ = ["Rate", "Slot", "Spend", "Ask", "Settle", "new_holder"]


class Rate:
    """Take `take` units from a GCRA bucket that lets `burst` through at once and refills one per `interval` µs."""

    __slots__ = ("key", "interval", "burst", "take")

    def __init__(self, key: str, interval: float, burst: int, take: int) -> None:
        self.key: Final = key
        self.interval: Final = interval
        self.burst: Final = burst
        self.take: Final = take

    def _key(self) -> tuple[object, ...]:
        return (self.key, self.interval, self.burst, self.take)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rate) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Rate({self.key!r}, {self.interval!r}, {self.burst!r}, {self.take!r})"


class Slot:
    """Join a concurrency set of at most `limit` holders (each with a lease)."""

    __slots__ = ("key", "limit")

    def __init__(self, key: str, limit: int) -> None:
        self.key: Final = key
        self.limit: Final = limit

    def _key(self) -> tuple[object, ...]:
        return (self.key, self.limit)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Slot) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Slot({self.key!r}, {self.limit!r})"


class Spend:
    """Reserve `cost` nano-USD against a ledger of `limit`; `expires`: Unix s after which the key may go (0: never)."""

    __slots__ = ("key", "limit", "cost", "expires")

    def __init__(self, key: str, limit: int, cost: int, expires: int) -> None:
        self.key: Final = key
        self.limit: Final = limit
        self.cost: Final = cost
        self.expires: Final = expires

    def _key(self) -> tuple[object, ...]:
        return (self.key, self.limit, self.cost, self.expires)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spend) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Spend({self.key!r}, {self.limit!r}, {self.cost!r}, {self.expires!r})"


class Ask:
    """One admission: every rate, slot and spend is taken, or none is."""

    __slots__ = ("holder", "rates", "slots", "spends", "lease")

    def __init__(self, holder: str, rates: tuple[Rate, ...], slots: tuple[Slot, ...], spends: tuple[Spend, ...],
                 lease: float) -> None:
        #: This reservation's id: its name in the concurrency sets.
        self.holder: Final = holder
        self.rates: Final = rates
        self.slots: Final = slots
        self.spends: Final = spends
        #: Seconds a concurrency slot lives without a renewal.
        self.lease: Final = lease

    def _key(self) -> tuple[object, ...]:
        return (self.holder, self.rates, self.slots, self.spends, self.lease)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ask) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Ask({self.holder!r}, {self.rates!r}, {self.slots!r}, {self.spends!r}, {self.lease!r})"


class Settle:
    """Replace a reservation by real usage: adjust buckets, leave concurrency sets, move spend."""

    __slots__ = ("holder", "rates", "slots", "spends")

    def __init__(self, holder: str, rates: tuple[tuple[str, float, int], ...], slots: tuple[str, ...],
                 spends: tuple[tuple[str, int, int], ...]) -> None:
        self.holder: Final = holder
        #: (key, interval, units used minus units reserved)
        self.rates: Final = rates
        #: Concurrency set keys to leave.
        self.slots: Final = slots
        #: (key, nano-USD reserved, nano-USD really spent)
        self.spends: Final = spends

    def _key(self) -> tuple[object, ...]:
        return (self.holder, self.rates, self.slots, self.spends)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settle) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Settle({self.holder!r}, {self.rates!r}, {self.slots!r}, {self.spends!r})"


_PROCESS: Final = [os.urandom(6).hex() + "."]
_SERIAL: Final = count(1)
# forked: the parent's random prefix would repeat in every child (a hook, not a getpid() system call per request)
os.register_at_fork(after_in_child=lambda: _PROCESS.__setitem__(0, os.urandom(6).hex() + "."))


def new_holder() -> str:
    """A reservation id unique across processes and instances: 48 random bits per process, then a serial."""
    return _PROCESS[0] + str(next(_SERIAL))
