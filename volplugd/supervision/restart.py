"""What volplugd may restart for a plugin, and the restart itself as one outcome word.

``target_of(process, units)`` turns what the kernel told about a plugin's listener
(``identity.ProcessInfo``) into a ``Target``: a service of the system manager
(``manager == "system"``, a ``.service``, and in ``units`` when that is not empty) or,
when ``units`` is empty, a Docker/Podman container; else the reason there is none.
``restart(target, timeout)`` restarts it (``units.SystemdManager``, the job awaited;
``engine.restart_container``) and returns ``(outcome, text)``: ``done``, or a word from
``OUTCOMES`` with the exact text of what went wrong. It never raises for a failure of
systemd, the bus or the engine: each is an outcome.

Runs on: ``target_of`` anywhere (pure); ``restart`` on a worker thread (blocking,
bounded by its timeout).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from volplugd.supervision.dbus import SYSTEM_BUS
from volplugd.supervision.engine import (
    ENGINE_SOCKETS,
    ContainerGone,
    EngineError,
    EngineTimeout,
    EngineUnreachable,
    restart_container,
)
from volplugd.supervision.identity import ProcessInfo
from volplugd.supervision.units import (
    NoSuchUnit,
    SystemdManager,
    UnitsError,
    UnitsTimeout,
    UnitsUnreachable,
)

__all__ = ["JOB_RESULTS", "OUTCOMES", "Restarter", "Target", "outcome_of", "restart",
           "target_of"]

#: The words a systemd job ends with besides ``done`` (``JobRemoved``'s result).
JOB_RESULTS = ("failed", "timeout", "canceled", "dependency", "skipped")
#: Every outcome of a restart (the metric's ``outcome`` label): ``done`` (ready again),
#: ``not_ready`` (restarted, not ready within ``restart.hold``), systemd's job words,
#: what went wrong asking, and ``given_up`` (the budget ran out; no restart).
OUTCOMES = ("done", "not_ready", *JOB_RESULTS, "no_such_unit", "unreachable", "error",
            "container_gone", "given_up")


@dataclass(frozen=True, slots=True)
class Target:
    """What to restart: a system unit (``engine`` None) or an engine's container."""

    name: str  # the unit's name, or the container's id
    engine: str | None = None  # "docker" | "podman" for a container

    def __str__(self) -> str:
        return f"unit {self.name}" if self.engine is None else \
            f"{self.engine} container {self.name[:12]}"


def target_of(process: ProcessInfo | None, units: Collection[str]) -> Target | str:
    """What may be restarted for a plugin served by ``process``, or why nothing may."""
    if process is None:
        return "no unit or container known for it (its process was not identified)"
    if process.container is not None:
        if units:  # the operator named what may be restarted: units only
            return (f"its {process.container.engine} container is not a unit, and "
                    "restart.units names the only units to restart")
        return Target(process.container.id, process.container.engine)
    if process.unit is None:
        return "no unit or container known for it"
    return _unit_problem(process.unit, process.manager, units) or Target(process.unit)


def _unit_problem(unit: str, manager: str | None, units: Collection[str]) -> str | None:
    """Why volplugd may not restart ``unit`` of ``manager``, or None."""
    if not unit.endswith(".service"):  # a scope (a login session...) is no service
        return f"its unit {unit} is not a service"
    if manager != "system":
        return f"its unit {unit} runs under {manager}, not the system manager"
    if units and unit not in units:
        return f"its unit {unit} is not in restart.units"
    return None


Restarter = Callable[[Target, float], tuple[str, str]]


def restart(target: Target, timeout: float, *, bus: str = SYSTEM_BUS,
            engines: Mapping[str, str] = ENGINE_SOCKETS) -> tuple[str, str]:
    """Restart ``target`` within ``timeout`` s: ``(outcome, text)`` (module docstring).
    ``bus``: the system bus socket; ``engines``: each engine's API socket."""
    try:
        if target.engine is None:
            job = SystemdManager(bus).restart_unit(target.name, timeout)
            word = job.result if job.result == "done" or job.result in JOB_RESULTS \
                else "failed"
            return word, f"restart {job.unit}: job {job.job} {job.result}"
        restart_container(target.engine, target.name, engines.get(target.engine),
                          stop_timeout=max(1, int(timeout) // 2), margin=timeout / 2)
    except Exception as err:  # noqa: BLE001 - every failure is an outcome for the loop
        return outcome_of(err), str(err) or type(err).__name__
    return "done", f"{target} restarted"


def outcome_of(err: BaseException) -> str:
    """The outcome word of a restart that raised ``err``."""
    for kinds, word in _OUTCOMES:
        if isinstance(err, kinds):
            return word
    return "error"


_OUTCOMES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (NoSuchUnit, "no_such_unit"),
    (ContainerGone, "container_gone"),
    ((UnitsUnreachable, EngineUnreachable), "unreachable"),
    ((UnitsTimeout, EngineTimeout), "timeout"),
    ((UnitsError, EngineError), "error"),
)
