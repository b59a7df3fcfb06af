"""The restart budget of one plugin, like systemd's ``StartLimitBurst=`` /
``StartLimitIntervalSec=``: at most ``burst`` restarts in any ``interval`` seconds, a
growing pause between them, and past that volplugd *gives up* on the plugin until it is
healthy again or an admin asks (``Budget()`` afresh). Pure: the caller passes the
(monotonic) time and keeps the returned ``Budget``.

=========================================  ==============================================
restarts within the last ``interval``      ``decide`` says
=========================================  ==============================================
none                                       ``RESTART`` now
n < burst, last at t                       ``RESTART`` from t + pause(n), ``WAIT`` before
n ≥ burst                                  ``GIVE_UP`` once (say it: one event, one log
                                           line), then ``GIVEN_UP`` until reset
=========================================  ==============================================

pause(n) = ``backoff`` * 2^(n-1), at most ``max_backoff``: 1 s, 2 s, 4 s… by default.

Runs on: any thread (the supervisor loop); immutable values only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

__all__ = ["Budget", "BudgetRules", "Decision", "Verdict", "decide", "restarted"]


@dataclass(frozen=True, slots=True)
class BudgetRules:
    burst: int = 3
    interval: float = 600.0
    backoff: float = 1.0  # the pause after the first restart; doubled after each one
    max_backoff: float = 60.0

    def pause(self, restarts: int) -> float:
        """The pause after ``restarts`` (≥ 1) restarts within the interval."""
        return min(self.backoff * 2.0 ** (restarts - 1), self.max_backoff)


@dataclass(frozen=True, slots=True)
class Budget:
    """The times of the restarts still inside the interval, and whether it gave up."""

    restarts: tuple[float, ...] = ()
    given_up: bool = False


class Verdict(StrEnum):
    RESTART = "restart"
    WAIT = "wait"
    GIVE_UP = "give_up"  # the budget has just run out: say so, once
    GIVEN_UP = "given_up"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    budget: Budget  # the budget to keep (old restarts dropped, given_up set)
    at: float | None = None  # WAIT: when a restart is allowed


def decide(budget: Budget, rules: BudgetRules, now: float) -> Decision:
    """Whether a plugin that needs a restart may have one at ``now``."""
    if budget.given_up:
        return Decision(Verdict.GIVEN_UP, budget)
    kept = _inside(budget, rules, now)
    if len(kept.restarts) >= rules.burst:
        return Decision(Verdict.GIVE_UP, replace(kept, given_up=True))
    if not kept.restarts:
        return Decision(Verdict.RESTART, kept)
    allowed = kept.restarts[-1] + rules.pause(len(kept.restarts))
    if now < allowed:
        return Decision(Verdict.WAIT, kept, at=allowed)
    return Decision(Verdict.RESTART, kept)


def restarted(budget: Budget, rules: BudgetRules, now: float) -> Budget:
    """``budget`` after a restart (whatever its outcome) was begun at ``now``."""
    kept = _inside(budget, rules, now)
    return replace(kept, restarts=(*kept.restarts, now))


def _inside(budget: Budget, rules: BudgetRules, now: float) -> Budget:
    restarts = tuple(t for t in budget.restarts if now - t < rules.interval)
    return budget if restarts == budget.restarts else replace(budget, restarts=restarts)
