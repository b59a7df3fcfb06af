"""Who serves each registration, and whether it still does: the loop's side of the
processes room (``processes``) and of operations that wait too long (``overdue``).

``Watching`` applies the processes room's facts to the ``Book``: an identified process
goes in the record (``Registration.process``) and its view, its pidfd in the watch; an
exit marks the record (``exited``) and asks for a probe at once. Volume operations
register here while they run; one still running ``probe.timeout`` after it started
makes its ready plugin suspect (``suspect``) and asks for a probe at once. What a probe
then means (unhealthy at once after an exit, suspect again in a second) is
``lifecycle``'s, through ``policy``.

Runs on: the supervisor thread; ``begin``/``end`` on the threads that run operations.
"""

from __future__ import annotations

from collections.abc import Callable

from volplugd import policy
from volplugd.config import ProbeSettings
from volplugd.log import get_logger
from volplugd.model import PluginState, ProcessView
from volplugd.overdue import Overdue
from volplugd.processes import Exited, Fact, Identified, Processes
from volplugd.registrations import Book, Registration
from volplugd.supervision.identity import ProcessInfo

__all__ = ["ProbeAtOnce", "Watching"]

log = get_logger(__name__)

#: Probe a registration now (``sooner``: a suspect's probe may replace a slower one).
ProbeAtOnce = Callable[[Registration, float, bool], None]


class Watching:
    """The processes that serve a book's registrations, and its overdue operations."""

    def __init__(self, book: Book, processes: Processes, probe: Callable[[], ProbeSettings],
                 probe_at_once: ProbeAtOnce, clock: Callable[[], float]) -> None:
        self._book = book
        self._processes = processes
        self._probe = probe  # the current probe settings (a reload replaces them)
        self._probe_at_once = probe_at_once
        self._clock = clock
        self._overdue = Overdue()

    # --- who serves ---------------------------------------------------------------------
    def identify(self, record: Registration) -> None:
        """Look up who serves a unix-socket plugin (a fact follows)."""
        address = record.tracked.desired.address
        if address.is_unix:
            self._processes.identify(record.name, record.token, address.target)

    def watched(self, record: Registration) -> bool:
        return self._processes.watched(record.name, record.token) is not None

    def forget(self, record: Registration) -> None:
        """The registration is gone: its process is no longer watched."""
        self._processes.forget(record.name, record.token)

    def take(self, now: float) -> None:
        """Apply what the processes room found since the last iteration."""
        for fact in self._processes.take():
            self._apply(fact, now)

    def _apply(self, fact: Fact, now: float) -> None:
        record = self._book.current(fact.name, fact.token)
        if isinstance(fact, Identified):
            if record is not None:
                self._identified(record, fact)
            elif fact.pidfd is not None:  # evicted or replaced meanwhile
                fact.pidfd.close()
        elif record is not None and record.probing:
            self._exited(record, fact, now)

    def _identified(self, record: Registration, fact: Identified) -> None:
        info = fact.info
        record.process = info
        if fact.pidfd is not None:
            self._processes.watch(record.name, record.token, fact.pidfd)
        else:
            self.forget(record)
        problems = (fact.problem,) if fact.problem is not None else (
            () if info is None else info.problems)
        # Not urgent: a lazy publish carries it within LAZY_PUBLISH, so the thousand
        # lookups after a start cost a few publishes, not one each.
        self._book.update(record, policy.identified(record.tracked, _view(info), problems))
        if info is None:
            log.warning("plugin_process_unknown", plugin=record.name, reason=fact.problem)
        else:
            log.info("plugin_process", plugin=record.name, pid=info.pid, uid=info.uid,
                     command=info.command, unit=info.unit,
                     watched=self._processes.watched(record.name, record.token),
                     problems=list(info.problems))

    def _exited(self, record: Registration, fact: Exited, now: float) -> None:
        """Its process exited: a probe at once tells what that means."""
        record.exited = fact.pid
        log.info("plugin_process_exited", plugin=record.name, pid=fact.pid)
        self._probe_at_once(record, now, False)

    # --- operations that wait too long --------------------------------------------------
    def begin(self, name: str, token: int) -> int:
        """A volume operation of registration ``token`` starts; a ticket for ``end``."""
        return self._overdue.begin(name, token, self._clock() + self._probe().timeout)

    def end(self, ticket: int) -> None:
        self._overdue.end(ticket)

    def wake_at(self) -> float | None:
        """When the next operation running becomes overdue (None: none)."""
        return self._overdue.wake_at()

    def suspects(self, now: float) -> None:
        """Plugins with an operation still running after ``probe.timeout`` are suspect:
        probed at once, then every second until a probe succeeds or they are unhealthy."""
        for name, token in self._overdue.due(now):
            record = self._book.current(name, token)
            if record is None or record.state is not PluginState.READY or record.suspect:
                continue
            record.suspect = True
            log.warning("plugin_suspect", plugin=name,
                        reason=f"a volume operation has waited more than "
                               f"{self._probe().timeout:g}s")
            self._probe_at_once(record, now, True)

    def close(self) -> None:
        self._processes.close()


def exit_error(record: Registration, pid: int) -> str:
    """"process PID (COMMAND) exited", with the command known for that pid."""
    info = record.process
    command = info.command if info is not None and info.pid == pid else None
    return policy.exited_text(pid, command)


def _view(info: ProcessInfo | None) -> ProcessView | None:
    if info is None:
        return None
    container = None if info.container is None else (info.container.engine,
                                                     info.container.id)
    return ProcessView(info.pid, info.uid, info.command, info.unit, container)
