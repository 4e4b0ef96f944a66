"""What the rate-limiter asks a state backend and what it answers (fastgw.state.asks, fastgw.state.answers: native
classes where they were msgspec Structs): compared and hashed by value, as a settlement kept for a retry is found
again by value (`RateLimitPolicy._pending`), and shown by their fields."""

from __future__ import annotations

from collections import deque

from fastgw.state import Admission, Ask, Rate, RateState, Settle, Slot, SlotState, Spend, SpendState


def _ask(holder: str = "h1", take: int = 5) -> Ask:
    return Ask(holder, (Rate("p:rq:l:a", 600.0, 100, 1), Rate("p:tk:l:a", 0.6, 10**6, take)), (Slot("p:cc:l:a", 4),),
               (Spend("p:bg:b:a:2026-12", 10**9, 7_000, 1_800_000_000),), 60.0)


def test_asks_are_equal_and_hash_alike_by_value() -> None:
    assert _ask() == _ask() and hash(_ask()) == hash(_ask())
    assert _ask() != _ask("h2") and _ask() != _ask(take=6) and _ask() != "h1"
    assert len({_ask(), _ask(), _ask("h2")}) == 2
    pairs: list[tuple[object, object, object]] = [
        (Rate("k", 1.0, 2, 3), Rate("k", 1.0, 2, 3), Rate("k", 1.0, 2, 4)),
        (Slot("k", 1), Slot("k", 1), Slot("k", 2)),
        (Spend("k", 1, 2, 3), Spend("k", 1, 2, 3), Spend("k", 1, 2, 0)),
        (Settle("h", (), ("k",), ()), Settle("h", (), ("k",), ()), Settle("h", (), (), ()))]
    for a, same, other in pairs:
        assert a == same and hash(a) == hash(same) and a != other
    assert repr(Rate("k", 1.0, 2, 3)) == "Rate('k', 1.0, 2, 3)"


def test_a_settlement_kept_for_a_retry_is_found_again_by_value() -> None:
    pending: deque[Settle] = deque(maxlen=8)
    pending.append(Settle("h1", (("p:tk:l:a", 0.6, -3),), ("p:cc:l:a",), (("p:bg:b:a:2026-12", 7_000, 1_200),)))
    same = Settle("h1", (("p:tk:l:a", 0.6, -3),), ("p:cc:l:a",), (("p:bg:b:a:2026-12", 7_000, 1_200),))
    assert same in pending
    pending.remove(same)
    assert not pending


def test_answers_compare_by_value_and_say_their_fields() -> None:
    a = Admission(True, [RateState(True, 4, 0.1, 0.0)], [SlotState(True, 0, 0.0)], [SpendState(True, 0)])
    assert a == Admission(True, [RateState(True, 4, 0.1, 0.0, False)], [SlotState(True, 0, 0.0)], [SpendState(True, 0)])
    assert a != Admission(True, [RateState(True, 3, 0.1, 0.0)], [SlotState(True, 0, 0.0)], [SpendState(True, 0)])
    a.slots[0].wait = 1.5  # a refusal's wait is filled in after the decision
    assert "SlotState(ok=True, in_use=0, wait=1.5)" in repr(a)
