"""The two ways tests make fake plugins that are stopped after the test (tests/conftest.py
imports both fixtures for every test):

* ``fakes(name, **kw)``: a fake plugin called ``name``, at ``plugins_dir/<name>.sock``
  (the folder the in-process supervisor of tests/supervising.py and the fair-share
  tests watch);
* ``fakes_at(path, **kw)``: a fake plugin at any socket path (system tests put them
  into the real daemon's folders, or beside them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplugin import FakePlugin

__all__ = ["fakes", "fakes_at"]


@pytest.fixture
def fakes_at() -> Iterator[Callable[..., FakePlugin]]:
    """Fake plugins at any socket path (``FakePlugin``'s keywords), stopped after the test."""
    made: list[FakePlugin] = []

    def make(path: Path | str, **kw: Any) -> FakePlugin:
        made.append(FakePlugin(str(path), **kw))
        return made[-1]

    yield make
    for fp in made:
        fp.stop()


@pytest.fixture
def fakes(plugins_dir: Path, fakes_at: Callable[..., FakePlugin]
          ) -> Callable[..., FakePlugin]:
    """Fake plugins called by name, at ``plugins_dir/<name>.sock``, stopped after the test."""

    def make(name: str, **kw: Any) -> FakePlugin:
        return fakes_at(plugins_dir / f"{name}.sock", **kw)

    return make
