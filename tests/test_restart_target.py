"""What volplugd may restart for a plugin (``target_of``, a table) and the restart as one
outcome word with its exact text: against an absent bus and an absent engine socket
here (real connects), every error class in a table; the real systemd's answers are in
tests/test_units_system.py and tests/test_restart_system.py, the engines' in
tests/test_engine.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from volplugd.supervision.cgroup import Container
from volplugd.supervision.engine import (
    ContainerGone,
    EngineError,
    EngineTimeout,
    EngineUnreachable,
)
from volplugd.supervision.identity import ProcessInfo
from volplugd.supervision.restart import OUTCOMES, Target, outcome_of, restart, target_of
from volplugd.supervision.units import NoSuchUnit, UnitsError, UnitsTimeout, UnitsUnreachable

CID = "0123456789ab" * 5 + "cdef"


def process(unit: str | None = "p.service", manager: str | None = "system",
            container: Container | None = None) -> ProcessInfo:
    return ProcessInfo(42, 0, 0, "plugin", unit, manager, container)


@pytest.mark.parametrize(("found", "units", "expected"), [
    (process(), (), Target("p.service")),
    (process(), ("p.service", "q.service"), Target("p.service")),
    (process(), ("q.service",), "its unit p.service is not in restart.units"),
    (process("p.service", "user@1000.service"), (),
     "its unit p.service runs under user@1000.service, not the system manager"),
    (process(None, None), (), "no unit or container known for it"),
    (process("session-3.scope"), (), "its unit session-3.scope is not a service"),
    (process("user@0.service"), ("user@0.service",), Target("user@0.service")),
    (None, (), "no unit or container known for it (its process was not identified)"),
    # a container wins over its scope unit; restart.units names the only units to restart
    (process("docker-x.scope", "system", Container("docker", CID)), (),
     Target(CID, "docker")),
    (process("docker-x.scope", "system", Container("docker", CID)), ("q.service",),
     "its docker container is not a unit, and restart.units names the only units to "
     "restart"),
    (process(None, None, Container("podman", CID)), (), Target(CID, "podman")),
])
def test_what_may_be_restarted(found: ProcessInfo | None, units: tuple[str, ...],
                               expected: Target | str) -> None:
    assert target_of(found, units) == expected


def test_a_target_names_itself_for_events() -> None:
    assert str(Target("p.service")) == "unit p.service"
    assert str(Target(CID, "docker")) == "docker container 0123456789ab"


def test_an_absent_system_bus_is_unreachable(tmp_path: Path) -> None:
    bus = tmp_path / "system_bus_socket"
    assert restart(Target("p.service"), 1.0, bus=str(bus)) == (
        "unreachable", f"restart p.service: the system bus is unreachable: {bus}: "
                       "No such file or directory")


def test_an_absent_engine_is_unreachable(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"
    assert restart(Target(CID, "docker"), 1.0, engines={"docker": str(sock)}) == (
        "unreachable", f"docker container {CID}: {sock}: No such file or directory")


def test_an_id_with_anything_to_escape_is_refused_before_any_io(tmp_path: Path) -> None:
    assert restart(Target("../x", "podman"), 1.0,
                   engines={"podman": str(tmp_path / "none")}) == (
        "error", "podman container ../x: not a container id")


@pytest.mark.parametrize(("error", "word"), [
    (NoSuchUnit("restart p: Unit p not found.", "org.freedesktop.systemd1.NoSuchUnit"),
     "no_such_unit"),
    (UnitsUnreachable("restart p: the system bus is unreachable"), "unreachable"),
    (UnitsTimeout("restart p: no answer"), "timeout"),
    (UnitsError("restart p: access denied", "org.freedesktop.DBus.Error.AccessDenied"),
     "error"),
    (ContainerGone("docker", CID, "no such container", 404), "container_gone"),
    (EngineUnreachable("docker", CID, "refused"), "unreachable"),
    (EngineTimeout("docker", CID, "no answer"), "timeout"),
    (EngineError("docker", CID, "restart failed (500)", 500), "error"),
    (RuntimeError("a bug"), "error"),
])
def test_each_failure_has_its_outcome_word(error: Exception, word: str) -> None:
    assert outcome_of(error) == word
    assert word in OUTCOMES
