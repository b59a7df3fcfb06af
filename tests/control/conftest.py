"""Fixtures for control-API tests: short socket dirs, an in-memory daemon, a live server."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.control.memory import MemoryCommands, view
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from volplugd.control import AccessPolicy, ControlServer, make_app
from volplugd.model import PluginState
from volplugd.plugin.address import PluginAddress
from volplugd.plugin.client import PluginClient


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory under /tmp (sun_path is 108 bytes; tmp_path can be longer)."""
    path = tempfile.mkdtemp(dir="/tmp", prefix="vp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def commands() -> MemoryCommands:
    """demo is ready, sick is unhealthy (with a last error), fresh is activating."""
    cmds = MemoryCommands()
    cmds.add(view("demo"))
    cmds.add(view("sick", PluginState.UNHEALTHY, last_error="timeout after 5.0s",
                  consecutive_failures=3))
    cmds.add(view("fresh", PluginState.ACTIVATING))
    return cmds


def build_app(commands: MemoryCommands, access: AccessPolicy | None = None,
              seen: list[tuple[str, int]] | None = None):  # type: ignore[no-untyped-def]
    def metrics() -> tuple[bytes, str]:
        return b"# HELP x y\nx 1\n", "text/plain; version=0.0.4; charset=utf-8"

    return make_app(commands, metrics=metrics,
                    on_request=None if seen is None else (lambda r, s: seen.append((r, s))),
                    version="9.9.9", started_at=time.time(),
                    access=access or AccessPolicy())


@dataclass
class Live:
    server: ControlServer
    commands: MemoryCommands
    path: str
    plugins: dict[str, FakePlugin]


@contextlib.contextmanager
def fake_backed(sockdir: str) -> Iterator[tuple[MemoryCommands, dict[str, FakePlugin]]]:
    """demo (ready) and broken (ready, every answer 200+Err) are FakePlugins reached
    through real PluginClients; sick (unhealthy) and fresh (activating) are never called.
    """
    cmds = MemoryCommands()
    fakes = {name: FakePlugin(os.path.join(sockdir, f"{name}.sock"))
             for name in ("demo", "broken")}
    fakes["broken"].set("*", b.ErrOn200("broken on purpose"))
    clients = {name: PluginClient(name, PluginAddress("unix", fake.socket_path),
                                  timeouts={"default": 5.0})
               for name, fake in fakes.items()}
    try:
        for name, client in clients.items():
            cmds.add(view(name, address=f"unix://{fakes[name].socket_path}"), client)
        cmds.add(view("sick", PluginState.UNHEALTHY, last_error="timeout after 5.0s"))
        cmds.add(view("fresh", PluginState.ACTIVATING))
        yield cmds, fakes
    finally:
        for client in clients.values():
            client.close()
        for fake in fakes.values():
            fake.stop()


@contextlib.contextmanager
def serving(app: Any, path: str, **kw: Any) -> Iterator[ControlServer]:
    """A started ControlServer; stopped and joined on exit."""
    kw.setdefault("mode", 0o660)
    kw.setdefault("group", None)
    server = ControlServer(app, path=path, **kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.join(10.0)
        assert not server.is_alive()


@pytest.fixture
def live(sockdir: str) -> Iterator[Live]:
    """The app over fake-backed commands, behind a real ControlServer on a unix socket."""
    path = os.path.join(sockdir, "control.sock")
    with fake_backed(sockdir) as (cmds, fakes), \
            serving(build_app(cmds), path, read_timeout=5.0) as server:
        yield Live(server, cmds, path, fakes)
