"""Restarts: when volplugd restarts what serves a plugin, and what each step does.

With ``restart.enabled``, a plugin that has been ``unhealthy`` for ``restart.after`` (at
most ``policy.EXIT_GRACE`` when it turned unhealthy at once: its process exited) is
restarted if what serves it is known from the kernel (``Registration.process``), its
folder is trusted, and that is a system unit (in ``restart.units`` when set) or a
container (``supervision.restart.target_of``). Its ``Budget`` (kept by name, so it
outlives the new registration a restarted plugin's new socket makes) decides:

* ``RESTART`` — the plugin turns ``restarting``, event ``restart_started``; the
  restart runs on a worker thread (never the loop) and comes back as ``RestartEnded``.
  A finished job lets the plugin be activated again: ``ready`` within ``restart.hold``
  (as long as the calls held meanwhile wait) ends the restart ``done``; otherwise it
  ends ``not_ready``. A failed job ends with its word (``supervision.restart.OUTCOMES``).
  Either way: event ``restart_done`` (``OUTCOME: text``), the view's ``restart``
  object, the metric; a failure makes it ``unhealthy`` again, and the budget counts it.
* ``WAIT`` — decided again at the time the budget allows.
* ``GIVE_UP`` — once: event ``restart_given_up``, one log line, ``given_up`` in the
  view; no restart until the plugin is ``ready`` again (which lifts the give-up, but
  keeps counting the restarts inside ``restart.interval``) or an admin asks
  (``POST /v1/plugins/{name}/restart``: a fresh budget).

The room learns of registrations added, evicted or changing state from the book
(``Book.moved``), so it sees every transition, whoever made it. A plugin that leaves the
registry keeps its restart state for ``restart.interval`` (a restarted or restarted-by-
hand plugin's socket is unlinked and bound again: its budget must not start afresh).

Runs on: the supervisor thread; the restarts themselves on the ``volplugd-restart``
worker threads, which only ``put`` their result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from volplugd import policy
from volplugd.calls import Calls, WorkerPool
from volplugd.config import Settings
from volplugd.contracts import NotRestartable, Observer, UnknownPlugin
from volplugd.discovery.trust import untrusted_reason
from volplugd.log import get_logger
from volplugd.model import EventType, PluginState, PluginView, RestartView
from volplugd.registrations import Book, Registration
from volplugd.registry import PendingEvent
from volplugd.supervision.budget import Budget, BudgetRules, Verdict, decide, restarted
from volplugd.supervision.restart import Restarter, Target, restart, target_of

__all__ = ["RestartEnded", "Restarts"]

log = get_logger(__name__)

WORKERS = 2  # restarts at once; more wait their turn in the pool's queue


@dataclass(frozen=True, slots=True)
class RestartEnded:
    """A restart job ended (a worker's message to the loop): ``outcome`` and its text."""

    name: str
    job: int
    outcome: str
    text: str


@dataclass(slots=True)
class _Plugin:
    """The restart state of one plugin name."""

    budget: Budget = field(default_factory=Budget)
    view: RestartView | None = None
    decide_at: float | None = None  # unhealthy: decide about a restart then
    ready_by: float | None = None  # restarted: ready by then, or not_ready
    job: int | None = None  # the restart job in flight
    like: PluginView | None = None  # the view the restart began from
    gone_at: float | None = None  # unregistered since (its socket may come back)

    @property
    def under_way(self) -> bool:
        return self.job is not None or self.ready_by is not None


class Restarts:
    """The restart state of every plugin that needs or had one, and its due times."""

    def __init__(self, settings: Settings, book: Book, calls: Calls, observer: Observer,
                 put: Callable[[object], None], *, restarter: Restarter = restart,
                 wall: Callable[[], float]) -> None:
        self.settings = settings  # replaced by ``reload``
        self._book = book
        self._calls = calls
        self._observer = observer
        self._put = put
        self._restarter = restarter
        self._wall = wall
        self._plugins: dict[str, _Plugin] = {}
        self._jobs = 0
        self._pool: WorkerPool | None = None  # started for the first restart

    @property
    def _rules(self) -> BudgetRules:
        r = self.settings.restart
        return BudgetRules(burst=r.burst, interval=r.interval)

    # --- the loop's calls -------------------------------------------------------------
    def wake_at(self) -> float | None:
        """The earliest decision or ready deadline (None: none waits)."""
        times = [t for p in self._plugins.values() for t in (p.decide_at, p.ready_by)
                 if t is not None]
        return min(times, default=None)

    def tick(self, now: float) -> None:
        """Follow what moved in the book, then decide what is due."""
        moved, self._book.moved = self._book.moved, set()
        for name in sorted(moved):
            self._moved(name, now)
        interval = self.settings.restart.interval
        for name, plugin in list(self._plugins.items()):
            if plugin.gone_at is not None and now - plugin.gone_at >= interval:
                del self._plugins[name]  # its budget has nothing left to count
            elif plugin.ready_by is not None and plugin.ready_by <= now and plugin.job is None:
                self._not_ready(name, plugin, now)
            elif plugin.decide_at is not None and plugin.decide_at <= now:
                plugin.decide_at = None
                self._decide(name, plugin, now)

    def ended(self, message: RestartEnded, now: float) -> None:
        """A restart job's result (a message from a worker)."""
        plugin = self._plugins.get(message.name)
        if plugin is None or plugin.job != message.job:
            return
        plugin.job = None
        record = self._book.get(message.name)
        log.info("plugin_restart_job_ended", plugin=message.name, outcome=message.outcome,
                 detail=message.text)
        if message.outcome != "done":
            self._end(message.name, plugin, message.outcome, message.text, now)
            return
        # ready by then; unregistered meanwhile, it may be binding its new socket
        plugin.ready_by = now + self.settings.restart.hold
        if record is not None and record.state is PluginState.RESTARTING:
            self._book.at(record, now)  # activate it again now

    def restart_now(self, name: str, now: float) -> PluginView:
        """An admin's restart: at once, on a fresh budget (a give-up lifted); the view
        as the restart begins. Raises UnknownPlugin, NotRestartable."""
        record = self._book.get(name)
        if record is None:
            raise UnknownPlugin(name)
        plugin = self._plugins.get(name) or _Plugin()
        why = self._refusal(record, plugin)
        target = why if why is not None else self._target(record)
        if isinstance(target, str):
            raise NotRestartable(name, target)
        self._plugins[name] = plugin
        log.info("plugin_restart_requested", plugin=name, target=str(target))
        plugin.budget = Budget()
        self._start(record, plugin, target, now)
        return record.view

    def reload(self, new: Settings) -> None:
        """New settings: every unhealthy plugin is looked at again (restarts may just
        have been turned on, or its unit added to ``restart.units``)."""
        self.settings = new
        self._book.moved.update(r.name for r in self._book if r.state is PluginState.UNHEALTHY)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()

    # --- following the book ---------------------------------------------------------------
    def _moved(self, name: str, now: float) -> None:
        record, plugin = self._book.get(name), self._plugins.get(name)
        if record is None:  # evicted: its socket may come back (a restarted plugin's does)
            if plugin is not None and not plugin.under_way:
                plugin.gone_at = now
            return
        if plugin is None:
            if record.state is not PluginState.UNHEALTHY or not self.settings.restart.enabled:
                return
            plugin = self._plugins[name] = _Plugin()
        plugin.gone_at = None
        state = record.state
        if record.view.restart is not plugin.view and state is not PluginState.RESTARTING:
            self._book.update(record, policy.restart_noted(record.tracked, plugin.view))
        if state is PluginState.ACTIVATING and plugin.under_way:
            # the restarted process made a new socket: a new registration, still restarting
            self._book.update(record, policy.restarting(record.tracked, _shown(plugin),
                                                        plugin.like))
        elif state is PluginState.READY:
            self._ready(name, plugin, now)
        elif state is PluginState.UNHEALTHY and not plugin.under_way:
            restart = self.settings.restart
            plugin.decide_at = now + policy.restart_delay(record.view, self.settings.probe,
                                                          restart.after)
        elif state is PluginState.REJECTED:
            plugin.decide_at = plugin.ready_by = None

    def _ready(self, name: str, plugin: _Plugin, now: float) -> None:
        """Ready again: a restart under way ends ``done``; a give-up is lifted."""
        plugin.decide_at = None
        if plugin.ready_by is not None or plugin.job is not None:
            plugin.job = None  # a job still running reports to nobody
            self._end(name, plugin, "done", "ready again", now)
        elif plugin.budget.given_up:
            plugin.budget = dataclasses.replace(plugin.budget, given_up=False)
            self._observer.restart_given_up(name, False)
            self._show(name, plugin, dataclasses.replace(_shown(plugin), given_up=False))

    # --- deciding and starting ----------------------------------------------------------
    def _decide(self, name: str, plugin: _Plugin, now: float) -> None:
        record = self._book.get(name)
        if record is None or record.state is not PluginState.UNHEALTHY \
                or not self.settings.restart.enabled:
            return
        target = self._target(record)
        if isinstance(target, str):
            log.info("plugin_not_restarted", plugin=name, reason=target)
            return
        decision = decide(plugin.budget, self._rules, now)
        plugin.budget = decision.budget
        if decision.verdict is Verdict.RESTART:
            self._start(record, plugin, target, now)
        elif decision.verdict is Verdict.WAIT:
            plugin.decide_at = decision.at
        elif decision.verdict is Verdict.GIVE_UP:
            self._give_up(record, plugin, target)

    def _target(self, record: Registration) -> Target | str:
        untrusted = untrusted_reason(record.tracked.desired.warnings)
        if untrusted is not None:
            return f"its folder is untrusted: {untrusted}"
        return target_of(record.process, self.settings.restart.units)

    def _refusal(self, record: Registration, plugin: _Plugin) -> str | None:
        """Why an admin's restart is refused before looking for a target, or None."""
        if not self.settings.restart.enabled:
            return "restarts are turned off (restart.enabled = false)"
        if plugin.under_way or record.state is PluginState.RESTARTING:
            return "it is restarting already"
        return None

    def _start(self, record: Registration, plugin: _Plugin, target: Target,
               now: float) -> None:
        plugin.budget = restarted(plugin.budget, self._rules, now)
        self._jobs += 1
        plugin.job, plugin.decide_at, plugin.ready_by = self._jobs, None, None
        plugin.like = record.view
        plugin.view = RestartView(str(target), self._wall(),
                                  recent=len(plugin.budget.restarts))
        self._calls.forget(record.token)  # a probe in flight would only fail now
        record.serving = record.due = None
        self._book.update(record, policy.restarting(record.tracked, plugin.view))
        self._book.event(PendingEvent(EventType.RESTART_STARTED, record.name,
                                      reason=str(target)))
        self._observer.restart_given_up(record.name, False)
        log.warning("plugin_restart_started", plugin=record.name, target=str(target),
                    reason=record.view.last_error, recent=plugin.view.recent)
        record.answer_waiters()
        if self._pool is None:
            self._pool = WorkerPool(WORKERS, "volplugd-restart")
        self._pool.submit(_Job(self._restarter, self._put, record.name, plugin.job, target,
                               self.settings.restart.hold))

    def _give_up(self, record: Registration, plugin: _Plugin, target: Target) -> None:
        rules = self._rules
        why = (f"{len(plugin.budget.restarts)} restarts within {rules.interval:g} s: "
               "no more until it is ready again or an admin asks")
        view = plugin.view or RestartView(str(target), self._wall(), recent=0)
        self._show(record.name, plugin, dataclasses.replace(view, given_up=True,
                                                            recent=len(plugin.budget.restarts)))
        self._book.event(PendingEvent(EventType.RESTART_GIVEN_UP, record.name, reason=why))
        self._observer.restart(record.name, "given_up")
        self._observer.restart_given_up(record.name, True)
        log.error("plugin_restart_given_up", plugin=record.name, target=str(target),
                  reason=why)

    # --- ending -------------------------------------------------------------------------
    def _not_ready(self, name: str, plugin: _Plugin, now: float) -> None:
        record = self._book.get(name)
        error = None if record is None else record.view.last_error
        text = f"not ready within {self.settings.restart.hold:g} s of its restart" + (
            f": {error}" if error else "")
        self._end(name, plugin, "not_ready", text, now)

    def _end(self, name: str, plugin: _Plugin, outcome: str, text: str, now: float) -> None:
        """The restart under way ended: told once (event, metric, view); a failure
        makes the plugin unhealthy, to be decided about again after ``restart.after``."""
        plugin.ready_by = None
        view = dataclasses.replace(_shown(plugin), outcome=outcome,
                                   error=None if outcome == "done" else text)
        plugin.view = view
        self._book.event(PendingEvent(EventType.RESTART_DONE, name, reason=f"{outcome}: {text}"))
        self._observer.restart(name, outcome)
        record = self._book.get(name)
        if outcome == "done":
            log.info("plugin_restart_done", plugin=name, target=view.target)
            if record is not None:
                self._book.update(record, policy.restart_noted(record.tracked, view))
            return
        log.warning("plugin_restart_failed", plugin=name, target=view.target,
                    outcome=outcome, error=text)
        if record is None:  # unregistered: its budget is kept a while
            plugin.gone_at = now
            return
        if record.state is not PluginState.RESTARTING:  # moved on meanwhile (rejected)
            self._book.update(record, policy.restart_noted(record.tracked, view))
            return
        self._calls.forget(record.token)  # an activation in flight: probes from now on
        record.serving = None
        self._book.update(record, policy.restart_failed(
            record.tracked, view, f"restart {outcome}: {text}", self._wall()))
        self._book.moved.discard(name)  # decided here, not as a fresh unhealthy
        plugin.decide_at = now + self.settings.restart.after
        self._book.at(record, now)  # probe it: it may be up after all

    def _show(self, name: str, plugin: _Plugin, view: RestartView) -> None:
        plugin.view = view
        record = self._book.get(name)
        if record is not None:
            self._book.update(record, policy.restart_noted(record.tracked, view),
                              urgent=True)


def _shown(plugin: _Plugin) -> RestartView:
    assert plugin.view is not None  # set when a restart begins or is given up
    return plugin.view


@dataclass(frozen=True, slots=True)
class _Job:
    """One restart on a worker thread; it always reports (``RestartEnded``)."""

    restarter: Restarter
    put: Callable[[object], None]
    name: str
    job: int
    target: Target
    timeout: float

    def __call__(self) -> None:
        try:
            outcome, text = self.restarter(self.target, self.timeout)
        except Exception as err:  # noqa: BLE001 - a restarter's bug is an outcome too
            outcome, text = "error", f"{type(err).__name__}: {err}"
        self.put(RestartEnded(self.name, self.job, outcome, text))
