"""The `restarting` state through the gateway's contracts: a restarting plugin keeps its
gateway socket and its manifest, and its calls fail as a plugin that is not ready does
(the hold, `restart.hold`, is the supervisor's: `Commands.call`).

Nothing in the daemon enters `restarting` yet, so the gateway's pure parts are given real
snapshots through the smallest `Commands` there is: the supervisor's own fail-fast rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import MappingProxyType
from typing import TypeVar

import pytest

from volplugd.contracts import PluginNotReady
from volplugd.gateway.answer import answer
from volplugd.gateway.choice import serves
from volplugd.model import Kind, PluginState, PluginView, Snapshot
from volplugd.plugin.client import PluginClient

T = TypeVar("T")
SOCK = "/run/docker/plugins/p.sock"
EXITED = "process 7 (vp) exited"


def view(state: PluginState, *, once_ready: bool = True) -> PluginView:
    return PluginView(name="p", address=f"unix://{SOCK}", source=SOCK, kind=Kind.SOCK,
                      state=state, registered_at=1.0, implements=("VolumeDriver",),
                      last_success_at=2.0 if once_ready else None, last_error=EXITED)


class OneSnapshot:
    """Commands over one snapshot: ``call`` fails fast as the supervisor's does."""

    def __init__(self, *views: PluginView) -> None:
        plugins = MappingProxyType({v.name: v for v in views})
        self._snapshot = Snapshot(plugins, MappingProxyType({}))

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def call(self, name: str, op: Callable[[PluginClient], T]) -> T:
        view = self._snapshot.plugins[name]
        if view.state is not PluginState.READY:
            raise PluginNotReady(view)
        raise AssertionError("a plugin that is not ready is never called")


@pytest.mark.parametrize("once_ready", [True, False])
def test_a_restarting_plugin_keeps_its_gateway_socket_even_with_nobody_listening(
        once_ready: bool) -> None:
    """serves() gives a restarting plugin its socket, and never asks who listens."""
    asked: list[str] = []
    assert serves(view(PluginState.RESTARTING, once_ready=once_ready),
                  lambda path: asked.append(path) or False) is None
    assert asked == []


def test_activate_of_a_restarting_plugin_comes_from_its_manifest() -> None:
    """Podman activates at every command: it gets the manifest, and reaches the call."""
    reply, outcome = answer(OneSnapshot(view(PluginState.RESTARTING)), "p", "POST",
                            "/Plugin.Activate", b"")
    assert (reply.status, json.loads(reply.body), outcome) == (
        200, {"Implements": ["VolumeDriver"]}, "manifest")


def test_a_call_to_a_restarting_plugin_fails_with_its_state_and_last_error() -> None:
    """Past the hold, a call gets 500 Err naming the state, like any plugin not ready."""
    reply, outcome = answer(OneSnapshot(view(PluginState.RESTARTING)), "p", "POST",
                            "/VolumeDriver.Create", b'{"Name":"v"}')
    assert (reply.status, json.loads(reply.body), outcome) == (
        500, {"Err": f"volplugd: plugin p is restarting: {EXITED}"}, "not_ready")
