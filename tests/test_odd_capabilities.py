"""An odd but harmless Capabilities answer never keeps a plugin out (the supervisor
in-process, unix plugins on the multiplexer and a TCP plugin on the pool)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.plugin.test_client_tcp import TCPPlugin
from tests.waiting import wait_until
from volplugd.config import DiscoverySettings, PluginSettings, ProbeSettings, Settings
from volplugd.model import PluginState, PluginView
from volplugd.plugin.errors import PluginBadResponse
from volplugd.plugin.protocol import CAPABILITIES
from volplugd.supervisor import Supervisor

TIMEOUTS = {"activate": 0.3, "default": 0.5}
WEIRD = b.Json({"Capabilities": {"Scope": "weird"}})


@pytest.fixture
def start(plugins_dir: Path,
          supervisors: Callable[..., Supervisor]) -> Callable[[ProbeSettings], Supervisor]:

    def make(probe: ProbeSettings) -> Supervisor:
        settings = Settings(discovery=DiscoverySettings(dirs=(str(plugins_dir),)),
                            probe=probe, plugin=PluginSettings(timeouts=TIMEOUTS))
        return supervisors(settings, workers=2)

    return make


def ready(sup: Supervisor, name: str) -> PluginView:
    def found() -> PluginView | None:
        view = sup.snapshot().plugins.get(name)
        return view if view is not None and view.state is PluginState.READY else None
    view = wait_until(found, message=f"{name} ready")
    assert view is not None
    return view


def test_unknown_scope_on_unix_and_a_timeout_on_tcp_are_ready_as_local(
        start: Callable[[ProbeSettings], Supervisor], plugins_dir: Path) -> None:
    """Multiplexer and pool alike: ready, scope local, the warning in the view, no error;
    the capabilities call itself still reports the unknown scope."""
    tcp = TCPPlugin()
    tcp.drip.add(CAPABILITIES)  # a byte every 50 ms: never complete within 0.3 s
    fake = FakePlugin(str(plugins_dir / "weird.sock")).start()
    fake.set(CAPABILITIES, WEIRD)
    try:
        (plugins_dir / "far.spec").write_text(f"tcp://127.0.0.1:{tcp.port}\n")
        sup = start(ProbeSettings(interval=60.0, timeout=0.5))
        weird, far = ready(sup, "weird"), ready(sup, "far")
        assert (weird.scope, weird.warnings, weird.last_error, weird.consecutive_failures) == (
            "local", ("Capabilities: unknown scope 'weird'; treated as local",), None, 0)
        assert (far.scope, far.warnings, far.last_error) == (
            "local", ("Capabilities failed (reading response body from volume plugin far: "
                      "timed out: no complete answer within 0.3 s); treated as local",), None)
        with pytest.raises(PluginBadResponse, match=(
                r"^unmarshalling volume plugin weird capabilities response: unknown Scope "
                r"'weird' \(want \"local\" or \"global\"\)$")):
            sup.call("weird", lambda c: c.capabilities())
        assert sup.call("weird", lambda c: c.list()) == []
    finally:
        fake.stop()
        tcp.stop()


def test_probing_capabilities_keeps_a_plugin_with_an_unknown_scope_ready(
        start: Callable[[ProbeSettings], Supervisor], plugins_dir: Path) -> None:
    """With probe.endpoint Capabilities and a failure threshold of 1, several probes of
    the odd plugin pass: it never flaps to unhealthy."""
    fake = FakePlugin(str(plugins_dir / "weird.sock")).start()
    fake.set(CAPABILITIES, WEIRD)
    try:
        sup = start(ProbeSettings(interval=0.1, timeout=0.1, failure_threshold=1,
                                  endpoint=CAPABILITIES))
        ready(sup, "weird")
        wait_until(lambda: sum(r.path == CAPABILITIES for r in fake.requests) >= 5,
                   message="4 probes after the activation")
        view = sup.snapshot().plugins["weird"]
        assert (view.state, view.consecutive_failures, view.last_error) == (
            PluginState.READY, 0, None)
        assert [e.to_state for e in sup.events(0) if e.plugin == "weird"] == [
            PluginState.ACTIVATING, PluginState.READY]
    finally:
        fake.stop()


def test_a_plugin_whose_capabilities_turn_sane_loses_the_warning_on_its_next_activation(
        start: Callable[[ProbeSettings], Supervisor], plugins_dir: Path) -> None:
    """The warning describes the last activation: a fixed plugin (replaced socket) is
    ready again without it."""
    path = str(plugins_dir / "p.sock")
    first = FakePlugin(path).start()
    first.set(CAPABILITIES, WEIRD)
    sup = start(ProbeSettings(interval=60.0, timeout=0.5))
    try:
        assert ready(sup, "p").warnings != ()
    finally:
        first.stop()
    wait_until(lambda: "p" not in sup.snapshot().plugins, message="p evicted")
    second = FakePlugin(path).start()
    try:
        view = ready(sup, "p")
        assert (view.scope, view.warnings) == ("local", ())
    finally:
        second.stop()
