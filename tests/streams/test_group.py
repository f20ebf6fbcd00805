"""A static worker counts the resets of its member id and stops at the limit
(``streams/group.py``, :class:`MemberResets`); the group commands run against the real broker in
``tests/integration/test_static_membership.py``."""

from __future__ import annotations

import pytest

from streams.group import DuplicateInstanceError, MemberResets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_assignment_and_the_same_member_again_are_no_resets() -> None:
    r = MemberResets("w1", limit=2, clock=Clock())
    assert r.assigned("w1-a") is False  # its first join
    for _ in range(5):  # rebalances that keep its member id
        assert r.assigned("w1-a") is False
    assert len(r.resets) == 0


def test_a_new_member_id_is_a_reset_and_the_limit_stops_the_worker() -> None:
    clock = Clock()
    r = MemberResets("w1", limit=3, window_s=600.0, clock=clock)
    r.assigned("w1-a")
    clock.now = 10.0
    assert r.assigned("w1-b") is True
    clock.now = 13.0
    assert r.assigned("w1-c") is True
    clock.now = 16.0
    with pytest.raises(DuplicateInstanceError) as err:
        r.assigned("w1-d")
    assert err.value.context == {"instance_id": "w1", "resets": 3, "window_s": 600.0}
    assert "RISKSTREAM_GROUP_INSTANCE_ID" in str(err.value)


def test_resets_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    r = MemberResets("w1", limit=3, window_s=600.0, clock=clock)
    r.assigned("a")
    for i, member in enumerate("bcdefg"):  # a stall every 301 s: never 3 within 600 s
        clock.now = 301.0 * (i + 1)
        assert r.assigned(member) is True
        assert len(r.resets) <= 2


def test_a_worker_that_replaced_a_member_tolerates_two_resets_more() -> None:
    """Of two workers on one id, the one that found the other in the group when it started
    outlasts it: the older one reaches its limit first and stops."""
    clock = Clock()
    older = MemberResets("w1", clock=clock)
    newer = MemberResets("w1", clock=clock, replacing=True)
    older.assigned("a")
    newer.assigned("b")
    for i in range(2):  # they replace each other in turn
        clock.now += 3.0
        assert older.assigned(f"a{i}") is True
        clock.now += 3.0
        assert newer.assigned(f"b{i}") is True
    with pytest.raises(DuplicateInstanceError):
        older.assigned("a-last")
    newer.assigned("b-after-the-older-stopped")  # its third reset: still running
    assert newer.limit == 5 and len(newer.resets) == 3
