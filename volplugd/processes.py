"""Who serves each unix-socket plugin, and seeing that process exit (docs/supervision.md).

``identify`` looks a plugin's listener up on a small pool of worker threads
(``supervision.identity.identify``: blocking ``/proc`` reads, and for a socket-activated
plugin systemd's D-Bus API), never on the loop. Each outcome comes back as an
``Identified`` fact carrying the process's pidfd; the loop keeps that pidfd in the
one ``ProcessWatch`` (``watch``) or closes it when the registration is gone. The watch's
descriptor and the results' mailbox are in the loop's poll (``Calls.watch``): a watched
process that exits becomes an ``Exited`` fact at the next ``take``.

A socket-activated plugin's listener is systemd itself (pid 1), which never exits for
us: the process watched and shown is then the main process of the service behind the
``.socket`` unit (``SystemdManager.main_pid``). When systemd cannot be asked, the
plugin is shown without a process to watch, and the reason is one of its problems.

Runs on: the supervisor thread; identify jobs on the ``volplugd-identify`` threads.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from volplugd.calls import Calls, WorkerPool
from volplugd.mailbox import Mailbox
from volplugd.supervision.identity import (
    ProcessInfo,
    ProcessUnknown,
    identify,
    served_by,
)
from volplugd.supervision.pidfd import PidFd, ProcessWatch
from volplugd.supervision.units import SystemdManager, UnitsError

__all__ = ["Exited", "Fact", "Identified", "Processes", "Systemd", "lookup"]

WORKERS = 2  # identify jobs are short: a connect, two /proc reads (D-Bus: rare)

Key = tuple[str, int]  # (plugin name, registration token)


class Systemd(Protocol):
    """What identifying asks of systemd (``units.SystemdManager``)."""

    def socket_service(self, path: str) -> str | None: ...

    def main_pid(self, unit: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Identified:
    """The process that serves registration ``token`` of ``name``: ``info`` and its
    ``pidfd`` (None: nothing to watch), or ``problem`` when none could be told."""

    name: str
    token: int
    info: ProcessInfo | None
    pidfd: PidFd | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Exited:
    """The watched process ``pid`` of registration ``token`` of ``name`` has exited."""

    name: str
    token: int
    pid: int


Fact = Identified | Exited


class Processes:
    """Identify jobs in flight, and the pidfds of the processes that serve plugins."""

    def __init__(self, calls: Calls, systemd: Systemd | None = None,
                 workers: int = WORKERS) -> None:
        self._calls = calls
        self._systemd = SystemdManager() if systemd is None else systemd
        self._workers = workers
        self._pool: WorkerPool | None = None  # started with the first identify
        self._done: Mailbox[Identified] = Mailbox()
        self._watch: ProcessWatch[Key] = ProcessWatch()
        self._fired = False
        self._closed = False
        self._closing = threading.Lock()  # a job's fact is queued, or closed, never lost
        calls.watch(self._done.fileno())  # ``take`` drains it after every poll
        calls.watch(self._watch.fileno(), self._exited)

    def identify(self, name: str, token: int, path: str) -> None:
        """Look up who listens on ``path``, on a worker; an ``Identified`` follows."""
        if self._pool is None:
            self._pool = WorkerPool(self._workers, "volplugd-identify")
        self._pool.submit(partial(self._run, name, token, path))

    def watch(self, name: str, token: int, pidfd: PidFd) -> None:
        """Watch ``pidfd`` (owned from now on) for registration ``token`` of ``name``."""
        self._watch.watch((name, token), pidfd)

    def watched(self, name: str, token: int) -> int | None:
        """The pid watched for the registration, or None."""
        return self._watch.pid((name, token))

    def forget(self, name: str, token: int) -> None:
        """Stop watching the registration's process (it was evicted or replaced)."""
        self._watch.unwatch((name, token))

    def take(self) -> list[Fact]:
        """What came since the last call: identify outcomes, then exits (each watched
        exit once; it is no longer watched)."""
        facts: list[Fact] = list(self._done.take())
        if self._fired:
            self._fired = False
            facts.extend(Exited(name, token, pid)
                         for (name, token), pid in self._watch.exited())
        return facts

    def close(self) -> None:
        self._calls.unwatch(self._watch.fileno())
        self._calls.unwatch(self._done.fileno())
        self._watch.close()
        with self._closing:
            self._closed = True
            for fact in self._done.take():  # outcomes nobody will apply
                _drop(fact)
        self._done.close()
        if self._pool is not None:
            self._pool.stop()

    def _exited(self) -> None:
        """Inside the poll: the watch is readable; ``take`` reads it after the poll."""
        self._fired = True

    def _run(self, name: str, token: int, path: str) -> None:
        """A worker's job: every outcome, an unexpected error too, becomes a fact."""
        try:
            fact = lookup(name, token, path, self._systemd)
        except Exception as err:  # noqa: BLE001 - a failed lookup is a fact for the loop
            fact = Identified(name, token, None, problem=f"{type(err).__name__}: {err}")
        with self._closing:
            if self._closed:
                _drop(fact)
            else:
                self._done.put(fact)


def _drop(fact: Identified) -> None:
    if fact.pidfd is not None:
        fact.pidfd.close()


def lookup(name: str, token: int, path: str, systemd: Systemd) -> Identified:
    """Who serves the plugin at ``path`` (blocking: a worker thread's)."""
    try:
        info, pidfd = identify(path, systemd.socket_service)
    except ProcessUnknown as err:
        return Identified(name, token, None, problem=err.reason)
    except OSError as err:  # volplugd itself lacks something (EMFILE)
        return Identified(name, token, None, problem=f"cannot identify: {err.strerror}")
    if not _service_manager(info):
        return Identified(name, token, info, pidfd)
    pidfd.close()  # the service manager's: it never exits for us
    if info.socket_unit is None or info.unit is None:  # systemd did not say which unit
        return Identified(name, token, info)
    return _main_process(name, token, info, systemd)


def _service_manager(info: ProcessInfo) -> bool:
    """The listener is systemd itself: the plugin is socket-activated."""
    return info.pid == 1 or info.socket_unit is not None or any(
        problem.startswith("socket-activated:") for problem in info.problems)


def _main_process(name: str, token: int, info: ProcessInfo,
                  systemd: Systemd) -> Identified:
    """A socket-activated plugin: the main process of its service, to show and watch."""
    unit = info.unit or ""
    problem: Callable[[str], Identified] = partial(_with_problem, name, token, info)
    try:
        pid = systemd.main_pid(unit)
    except UnitsError as err:
        return problem(f"socket-activated: {err}")
    if pid <= 0:
        return problem(f"socket-activated: {unit} has no main process")
    try:
        pidfd = PidFd.open(pid)
    except ProcessLookupError:
        return problem(f"socket-activated: the main process of {unit} (pid {pid}) exited")
    try:
        return Identified(name, token, served_by(info, pidfd), pidfd)
    except ProcessUnknown as err:
        pidfd.close()
        return problem(f"socket-activated: {err.reason}")
    except BaseException:
        pidfd.close()
        raise


def _with_problem(name: str, token: int, info: ProcessInfo, problem: str) -> Identified:
    return Identified(name, token,
                      dataclasses.replace(info, problems=(*info.problems, problem)))
