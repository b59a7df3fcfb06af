"""The supervisor in-process over a directory of real fake plugins: fixtures shared by
test_supervisor, test_fair_share and test_odd_capabilities (tests/conftest.py imports
them; the fake plugins themselves come from tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from volplugd.config import Settings
from volplugd.registrations import Book
from volplugd.registry import Registry
from volplugd.supervisor import Supervisor


@pytest.fixture
def plugins_dir(short_tmp: Path) -> Path:
    """``short_tmp/plugins``, made (it may exist: a daemon fixture may have made it)."""
    path = short_tmp / "plugins"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def book() -> Iterator[Book]:
    """An empty book (its clock stands at 1 s); its records' clients closed after."""
    subject = Book(Registry(), clock=lambda: 1.0)
    yield subject
    for r in subject:
        r.client.close()


@pytest.fixture
def supervisors() -> Iterator[Callable[..., Supervisor]]:
    """Start a Supervisor (settings, a registry or a new one, Supervisor's keywords) on
    its own thread; each is stopped and joined after the test."""
    running: list[Supervisor] = []

    def make(settings: Settings, registry: Registry | None = None, **kw: Any) -> Supervisor:
        sup = Supervisor(settings, Registry() if registry is None else registry, **kw)
        sup.start()
        running.append(sup)
        return sup

    yield make
    for sup in running:
        sup.stop()
        sup.join(5)
