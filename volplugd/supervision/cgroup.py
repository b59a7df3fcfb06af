"""What runs a process, read from its ``/proc/PID/cgroup`` text (pure, no I/O).

systemd puts every service in a cgroup named after its unit, and container engines put
each container in one named after its id, so the innermost such name says who runs the
process:

* ``0::/system.slice/buttervolume.service``: unit ``buttervolume.service`` (system);
* ``0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service``: unit
  ``x.service`` of the manager ``user@1000.service``;
* ``0::/system.slice/docker-<64 hex>.scope``: a Docker container (systemd driver);
* ``0::/docker/<64 hex>``: a Docker container (cgroupfs driver);
* ``0::/machine.slice/libpod-<64 hex>.scope[/container]``: a Podman container (systemd);
* ``0::/libpod_parent/libpod-<64 hex>``: a Podman container (cgroupfs driver);
* ``0::/machine.slice/libpod-conmon-<64 hex>.scope``: Podman's conmon of that container.

A container's cgroup is also inside a unit (its ``.scope``), but the container is what
to restart, so a container wins. Only the unified (v2) line ``0::`` is read when there is
one; on a v1 host the ``name=systemd`` hierarchy's line is.

Runs on: any thread; no state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Container", "Placement", "placement"]

_ID = "[0-9a-f]{64}"
# (engine, the cgroup's name, the name its parent must have or None)
_CONTAINERS: tuple[tuple[str, re.Pattern[str], str | None], ...] = (
    ("docker", re.compile(rf"^docker-(?P<id>{_ID})\.scope$"), None),
    ("docker", re.compile(rf"^(?P<id>{_ID})$"), "docker"),
    ("podman", re.compile(rf"^libpod-(?:conmon-)?(?P<id>{_ID})(?:\.scope)?$"), None),
)
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(?:service|scope)$")
_USER_MANAGER = re.compile(r"^user@[0-9]+\.service$")


@dataclass(frozen=True, slots=True)
class Container:
    """A container by its engine (``"docker"`` or ``"podman"``) and full id."""

    engine: str
    id: str
    conmon: bool = False  # the process is Podman's conmon of the container, not in it


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a process runs: its cgroup path, the innermost unit and its manager
    (``"system"`` or ``"user@UID.service"``), and the container, when there are ones."""

    cgroup: str
    unit: str | None
    manager: str | None
    container: Container | None


def placement(cgroup_text: str) -> Placement | None:
    """The placement that ``cgroup_text`` (the content of ``/proc/PID/cgroup``) tells,
    or None when it has no line to read (empty, or no unified or systemd hierarchy)."""
    path = _path(cgroup_text)
    if path is None:
        return None
    parts = [part for part in path.split("/") if part]
    unit, manager = _unit(parts)
    return Placement(cgroup=path, unit=unit, manager=manager, container=_container(parts))


def _path(text: str) -> str | None:
    v1 = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        if hierarchy == "0" and controllers == "":
            return path
        if controllers == "name=systemd":
            v1 = path
    return v1


def _unit(parts: list[str]) -> tuple[str | None, str | None]:
    unit = manager = None
    for index, part in enumerate(parts):
        if _UNIT.match(part) is None:
            continue
        if _USER_MANAGER.match(part) and index + 1 < len(parts):
            manager = part  # the user's own manager; units below it are the user's
            unit = None
            continue
        unit = part
    if unit is not None and manager is None:
        manager = "system"
    return unit, manager


def _container(parts: list[str]) -> Container | None:
    found = None
    for index, part in enumerate(parts):
        for engine, pattern, parent in _CONTAINERS:
            match = pattern.match(part)
            if match is None or (parent is not None and parts[index - 1:index] != [parent]):
                continue
            found = Container(engine, match["id"], conmon=part.startswith("libpod-conmon-"))
    return found
