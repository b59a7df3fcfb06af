"""systemd's Manager over D-Bus: restart a unit and await its job; find the service
behind the ``.socket`` unit that listens on a path.

``main_pid(name)`` is a service's main process (the one to watch when systemd itself
listens for the plugin). ``restart_unit(name, timeout)`` subscribes to the Manager's signals, calls
``RestartUnit(name, "replace")`` and waits for the ``JobRemoved`` of the job it got,
returning that job's result as systemd names it: ``done``, ``failed``, ``timeout``
(systemd's own start timeout), ``canceled``, ``dependency``, ``skipped`` (or any other
word a later systemd adds). Errors, each a ``UnitsError``:

* ``NoSuchUnit`` — systemd knows no such unit (``org.freedesktop.systemd1.NoSuchUnit``);
* ``UnitsUnreachable`` — the system bus cannot be reached (``dbus.BusUnreachable``);
* ``UnitsTimeout`` — no answer to a call, or no end of the job, by the deadline (the
  job may still be running: systemd goes on with it);
* ``UnitsError`` itself — any other error reply (e.g. access denied), its D-Bus name kept.

Every call opens its own connection and closes it, so nothing is shared between threads.

Runs on: a worker thread (blocking, bounded by its timeout).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from volplugd.supervision.dbus import (
    BUS_DRIVER,
    SYSTEM_BUS,
    Bus,
    BusCallFailed,
    BusError,
    BusTimeout,
    BusUnreachable,
    Signal,
    Target,
)

__all__ = ["JobDone", "NoSuchUnit", "SystemdManager", "UnitsError", "UnitsTimeout",
           "UnitsUnreachable"]

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
MANAGER_OBJECT = Target(SYSTEMD, MANAGER_PATH, MANAGER)
_NO_SUCH_UNIT = ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed")


class UnitsError(Exception):
    """systemd could not be asked, or said no: ``error`` is the D-Bus error name, if any."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class NoSuchUnit(UnitsError):
    """systemd has no unit of that name."""


class UnitsUnreachable(UnitsError):
    """The bus (and so systemd) cannot be reached."""


class UnitsTimeout(UnitsError):
    """No answer, or no end of the job, by the deadline."""


@dataclass(frozen=True, slots=True)
class JobDone:
    """A finished job: ``unit``, its job's object path and ``result`` (systemd's word)."""

    unit: str
    job: str
    result: str


class SystemdManager:
    """The system manager reached through the bus socket at ``bus`` (the host's system
    bus by default; a container's as ``/proc/PID/root/run/dbus/system_bus_socket``)."""

    def __init__(self, bus: str = SYSTEM_BUS, call_timeout: float = 5.0) -> None:
        self.bus = bus
        self.call_timeout = call_timeout

    def restart_unit(self, unit: str, timeout: float) -> JobDone:
        """Restart ``unit`` ("replace" mode) and wait up to ``timeout`` s for its job."""
        deadline = time.monotonic() + timeout
        with self._asked(f"restart {unit}") as bus:
            bus.call(BUS_DRIVER, "AddMatch", "s", (
                f"type='signal',sender='{SYSTEMD}',path='{MANAGER_PATH}',"
                f"interface='{MANAGER}',member='JobRemoved'",), deadline=deadline)
            bus.call(MANAGER_OBJECT, "Subscribe", deadline=deadline)
            job = str(bus.call(MANAGER_OBJECT, "RestartUnit", "ss", (unit, "replace"),
                               deadline=deadline)[0])
            removed = bus.next_signal(lambda s: _job_removed(s, job), deadline,
                                      f"the end of job {job} ({unit})")
        return JobDone(unit=unit, job=job, result=str(removed.body[3]))

    def socket_service(self, path: str) -> str | None:
        """The service behind the loaded ``.socket`` unit that listens on ``path`` (the
        path as systemd sees it; ``/var/run/x`` and ``/run/x`` are one), or None if no
        socket unit does."""
        deadline = time.monotonic() + self.call_timeout
        wanted = {path, os.path.realpath(path)}
        with self._asked(f"the socket unit of {path}") as bus:
            units = bus.call(MANAGER_OBJECT, "ListUnitsByPatterns", "asas",
                             ([], ["*.socket"]), deadline=deadline)[0]
            for name, object_path in _names_and_paths(units):
                listen = _property(bus, object_path, "org.freedesktop.systemd1.Socket",
                                   "Listen", deadline)
                if not any(str(address) in wanted or os.path.realpath(str(address)) in wanted
                           for _, address in listen):
                    continue
                triggers = _property(bus, object_path, "org.freedesktop.systemd1.Unit",
                                     "Triggers", deadline)
                services = [str(t) for t in triggers if str(t).endswith(".service")]
                return services[0] if services else name.removesuffix(".socket") + ".service"
        return None

    def main_pid(self, unit: str) -> int:
        """The service's main process as systemd numbers it (0: none runs), e.g. the
        process to watch for a socket-activated plugin, whose listener is systemd itself.
        ``NoSuchUnit`` if the unit is not loaded."""
        deadline = time.monotonic() + self.call_timeout
        with self._asked(f"the main process of {unit}") as bus:
            path = str(bus.call(MANAGER_OBJECT, "GetUnit", "s", (unit,), deadline=deadline)[0])
            return int(_property(bus, path, "org.freedesktop.systemd1.Service", "MainPID",
                                 deadline))

    def _asked(self, what: str) -> _Asking:
        return _Asking(self.bus, self.call_timeout, what)


class _Asking:
    """A connection whose bus errors become UnitsErrors naming ``what`` was asked."""

    def __init__(self, path: str, timeout: float, what: str) -> None:
        self.what = what
        try:
            self.bus = Bus(path, timeout)
        except BusError as err:
            raise _translated(what, err) from None

    def __enter__(self) -> Bus:
        return self.bus

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: object) -> None:
        self.bus.close()
        if isinstance(err, BusError):
            raise _translated(self.what, err) from None


def _translated(what: str, err: BusError) -> UnitsError:
    if isinstance(err, BusCallFailed):
        if err.name in _NO_SUCH_UNIT:
            return NoSuchUnit(f"{what}: {err.text}", err.name)
        return UnitsError(f"{what}: {err.name}: {err.text}", err.name)
    if isinstance(err, BusTimeout):
        return UnitsTimeout(f"{what}: {err}")
    if isinstance(err, BusUnreachable):
        return UnitsUnreachable(f"{what}: the system bus is unreachable: {err}")
    return UnitsError(f"{what}: {err}")


def _job_removed(signal: Signal, job: str) -> bool:
    return (signal.member == "JobRemoved" and signal.interface == MANAGER
            and len(signal.body) == 4 and signal.body[1] == job)


def _names_and_paths(units: Any) -> Iterator[tuple[str, str]]:
    for row in units:
        yield str(row[0]), str(row[6])


def _property(bus: Bus, path: str, interface: str, name: str, deadline: float) -> Any:
    variant = bus.call(Target(SYSTEMD, path, PROPERTIES), "Get", "ss", (interface, name),
                       deadline=deadline)[0]
    return variant[1]  # jeepney gives a variant as (signature, value)
