"""Test tiers: a test that starts a real process says so with its marker.

Two markers split the suite (``pyproject.toml``):

* ``system``: the test starts the volplugd process (``tests/harness.py``), a real
  systemd, or the installer (``make install``: a virtual environment and pip, ~15-40 s);
* ``peer``: the test runs a real third-party program: buttervolume, Docker, Podman,
  Prometheus or promtool, Chromium, systemd's own tools.

``pytest -m "not system and not peer"`` is then the unit tier, which needs no Debian
package beyond Python and runs in well under a minute; ``make test`` runs everything.
The launchers of those processes call ``require`` (or ``tool``, for a program found on
PATH), so a new test that starts one without its marker fails, naming the marker it
lacks, instead of slipping into the unit tier unseen. The check comes before any skip: a
machine without the program still catches the missing marker.
"""

from __future__ import annotations

import shutil

import pytest

__all__ = ["require", "running", "tool"]

_running: list[pytest.Item] = []


def running(item: pytest.Item | None) -> None:
    """Record the test being run (``tests/conftest.py`` calls this around each test)."""
    _running.clear()
    if item is not None:
        _running.append(item)


def require(marker: str, what: str) -> None:
    """Fail the running test unless it carries ``marker``; ``what`` says what it started.

    Outside a test run (the bench scripts use the harness too) there is nothing to check.
    """
    if not _running:
        return
    item = _running[0]
    if item.get_closest_marker(marker) is None:
        pytest.fail(f"{item.nodeid} {what}: mark it @pytest.mark.{marker} "
                    f"(tests/tiers.py)", pytrace=False)


def tool(name: str, package: str, marker: str = "peer") -> str:
    """The path of program ``name``, for a test marked ``marker``; skip if not installed."""
    require(marker, f"runs {name}")
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package}; make system-deps)")
    return path
