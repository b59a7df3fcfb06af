"""The supervisor in-process over a directory of real fake plugins: fixtures shared by
test_supervisor, test_fair_share and test_odd_capabilities (tests/conftest.py imports them;
a module may still define its own ``fakes``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplugin import FakePlugin
from volplugd.config import Settings
from volplugd.registry import Registry
from volplugd.supervisor import Supervisor


@pytest.fixture
def plugins_dir(short_tmp: Path) -> Path:
    path = short_tmp / "plugins"
    path.mkdir()
    return path


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


@pytest.fixture
def fakes(plugins_dir: Path) -> Iterator[Callable[..., FakePlugin]]:
    """Fake plugins at ``plugins_dir/<name>.sock``, stopped after the test."""
    made: list[FakePlugin] = []

    def make(name: str, **kw: Any) -> FakePlugin:
        fp = FakePlugin(str(plugins_dir / f"{name}.sock"), **kw).start()
        made.append(fp)
        return fp

    yield make
    for fp in made:
        fp.stop()
