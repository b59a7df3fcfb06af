"""ConnectionBudget: per-uid bounds and the headroom root and admins keep (pure)."""

from __future__ import annotations

import pytest

from volplugd.admission import ConnectionBudget, Refusal, Ticket


def _admit_all(budget: ConnectionBudget, uid: int | None, n: int,
               privileged: bool = False) -> list[Ticket | Refusal]:
    return [budget.admit(uid, privileged) for _ in range(n)]


def test_one_uid_stops_at_its_bound_and_others_go_on() -> None:
    """uid 1000 gets per_uid slots, then UID_LIMIT; uid 1001 is still admitted."""
    budget = ConnectionBudget(total=10, per_uid=3, reserved=2)
    results = _admit_all(budget, 1000, 5)
    assert [isinstance(r, Ticket) for r in results] == [True, True, True, False, False]
    assert results[3:] == [Refusal.UID_LIMIT, Refusal.UID_LIMIT]
    assert isinstance(budget.admit(1001, False), Ticket)
    assert budget.held_by(1000) == 3
    assert budget.in_use == 4


def test_unprivileged_share_all_but_the_reserved_slots() -> None:
    """Many uids fill total - reserved; then FULL for them, still room for root."""
    budget = ConnectionBudget(total=6, per_uid=1, reserved=2)
    assert all(isinstance(budget.admit(uid, False), Ticket) for uid in range(1000, 1004))
    assert budget.admit(1004, False) is Refusal.FULL
    root = _admit_all(budget, 0, 2, privileged=True)
    assert all(isinstance(t, Ticket) for t in root)
    assert budget.admit(0, True) is Refusal.FULL  # every slot taken
    assert budget.in_use == 6


def test_privileged_peers_have_no_per_uid_bound() -> None:
    """Root may hold more than per_uid connections, up to total."""
    budget = ConnectionBudget(total=5, per_uid=1, reserved=1)
    assert all(isinstance(t, Ticket) for t in _admit_all(budget, 0, 5, privileged=True))
    assert budget.admit(0, True) is Refusal.FULL


def test_release_gives_the_slot_back() -> None:
    """A released ticket frees the uid's slot and the shared slot."""
    budget = ConnectionBudget(total=3, per_uid=2, reserved=1)
    first, second = _admit_all(budget, 7, 2)
    assert budget.admit(8, False) is Refusal.FULL
    assert isinstance(first, Ticket)
    budget.release(first)
    assert budget.held_by(7) == 1
    assert isinstance(budget.admit(8, False), Ticket)
    assert isinstance(second, Ticket)
    budget.release(second)
    assert budget.held_by(7) == 0
    assert budget.privilege_of(7) is None  # forgotten with its last connection


def test_a_uid_is_classified_once_while_it_has_connections() -> None:
    """The first connection's privilege holds for the uid until all its slots go."""
    budget = ConnectionBudget(total=4, per_uid=1, reserved=1)
    first = budget.admit(1000, True)
    assert isinstance(first, Ticket)
    assert first.privileged
    assert budget.privilege_of(1000) is True
    later = budget.admit(1000, False)  # the caller's answer is not asked again
    assert isinstance(later, Ticket)
    assert later.privileged


def test_peers_without_credentials_are_unprivileged_and_unbounded_per_uid() -> None:
    """uid None (TCP): no per-uid bound, never privileged, total still holds."""
    budget = ConnectionBudget(total=3, per_uid=1)
    tickets = _admit_all(budget, None, 3, privileged=True)
    assert all(isinstance(t, Ticket) and not t.privileged for t in tickets)
    assert budget.admit(None, False) is Refusal.FULL
    assert budget.privilege_of(None) is False


@pytest.mark.parametrize(("total", "per_uid", "reserved"), [
    (0, None, 0), (4, 0, 0), (4, 1, 4), (4, 1, -1),
])
def test_impossible_bounds_are_refused(total: int, per_uid: int | None, reserved: int) -> None:
    """total >= 1, per_uid >= 1, and reserved below total."""
    with pytest.raises(ValueError, match="need total >= 1"):
        ConnectionBudget(total=total, per_uid=per_uid, reserved=reserved)
