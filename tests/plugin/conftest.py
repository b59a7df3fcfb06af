"""Fixtures for the plugin client's tests: a fake plugin on a short socket path, a client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplugin import FakePlugin
from volplugd.plugin import PluginAddress, PluginClient


@pytest.fixture
def sock_path(short_tmp: Path) -> str:
    return str(short_tmp / "foo.sock")


@pytest.fixture
def fake(sock_path: str) -> Iterator[FakePlugin]:
    with FakePlugin(sock_path) as plugin:
        yield plugin


@pytest.fixture
def make_client(sock_path: str) -> Iterator[Callable[..., PluginClient]]:
    """Clients named "foo" for the socket at ``sock_path``; closed after the test."""
    made: list[PluginClient] = []

    def make(**kwargs: Any) -> PluginClient:
        client = PluginClient("foo", PluginAddress("unix", sock_path), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(fake: FakePlugin, make_client: Callable[..., PluginClient]) -> PluginClient:
    return make_client()
