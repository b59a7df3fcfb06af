"""The restart budget (systemd's StartLimitBurst= with growing pauses), table-tested with
an injected clock."""

from __future__ import annotations

import pytest

from volplugd.supervision.budget import (
    Budget,
    BudgetRules,
    Decision,
    Verdict,
    decide,
    restarted,
)

RULES = BudgetRules(burst=3, interval=600.0, backoff=1.0, max_backoff=60.0)


def run(steps: list[tuple[float, str]], rules: BudgetRules = RULES) -> list[str]:
    """Each step: at time t, "need" (decide, and restart if allowed) or "reset"."""
    budget = Budget()
    said: list[str] = []
    for now, what in steps:
        if what == "reset":
            budget = Budget()
            said.append("reset")
            continue
        decision = decide(budget, rules, now)
        budget = decision.budget
        said.append(decision.verdict if decision.at is None else f"wait:{decision.at:g}")
        if decision.verdict is Verdict.RESTART:
            budget = restarted(budget, rules, now)
    return said


@pytest.mark.parametrize(("steps", "expected"), [
    # three restarts with pauses 1 s and 2 s, then the fourth need gives up, once
    ([(0, "need"), (0.5, "need"), (1, "need"), (2, "need"), (3, "need"), (4, "need"),
      (5, "need")],
     ["restart", "wait:1", "restart", "wait:3", "restart", "give_up", "given_up"]),
    # given up stays given up, even after the interval has passed, until a reset
    ([(0, "need"), (1, "need"), (3, "need"), (7, "need"), (10_000, "need"), (10_001, "reset"),
      (10_002, "need")],
     ["restart", "restart", "restart", "give_up", "given_up", "reset", "restart"]),
    # a restart older than the interval no longer counts: a fourth need is no give-up
    ([(0, "need"), (1, "need"), (3, "need"), (600.5, "need")],
     ["restart", "restart", "restart", "restart"]),
    # the pause follows the restarts still inside the interval
    ([(0, "need"), (1, "need"), (600.5, "need"), (601.5, "need"), (602.5, "need")],
     ["restart", "restart", "restart", "restart", "wait:603.5"]),
    # a healthy reset in between starts the count afresh
    ([(0, "need"), (1, "need"), (2, "reset"), (2, "need"), (3, "need"), (5, "need")],
     ["restart", "restart", "reset", "restart", "restart", "restart"]),
])
def test_the_budget_allows_burst_restarts_per_interval_with_growing_pauses(
        steps: list[tuple[float, str]], expected: list[str]) -> None:
    """At most burst restarts per interval, a doubling pause, give up once, reset."""
    assert run(steps) == expected


def test_the_pause_doubles_up_to_its_cap() -> None:
    """pause(n) = backoff * 2^(n-1), at most max_backoff."""
    rules = BudgetRules(burst=10, backoff=5.0, max_backoff=30.0)
    assert [rules.pause(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 30.0, 30.0]


def test_a_burst_of_one_gives_up_at_the_second_need() -> None:
    """burst=1: one restart, then give up."""
    assert run([(0, "need"), (100, "need")], BudgetRules(burst=1)) == ["restart", "give_up"]


def test_decide_keeps_the_budget_unchanged_when_nothing_drops_out() -> None:
    """A decision with nothing to drop returns the very budget it was given."""
    budget = Budget(restarts=(10.0,))
    assert decide(budget, RULES, 10.5) == Decision(Verdict.WAIT, budget, at=11.0)
    assert decide(budget, RULES, 10.5).budget is budget
