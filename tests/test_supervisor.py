"""The supervisor loop in-process: real scans, real watchdog, real fake plugins."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.plugin.test_client_tcp import TCPPlugin
from tests.waiting import wait_until
from volplugd.config import DiscoverySettings, PluginSettings, ProbeSettings, Settings
from volplugd.contracts import PluginNotReady, Rescan, Stop, Stopping, UnknownPlugin
from volplugd.model import Event, PluginState, PluginView, RescanResult, Snapshot
from volplugd.plugin.errors import PluginTimeout
from volplugd.policy import SECOND_CHANCE
from volplugd.registry import Registry
from volplugd.supervisor import Supervisor

FAST = ProbeSettings(interval=0.2, timeout=0.3, failure_threshold=2, success_threshold=1)
TIMEOUTS = {"activate": 0.5, "default": 0.5}


class MissesEverything:
    """A watcher that delivers no events: what an inotify overflow leaves behind."""

    up = True

    def __init__(self, dirs: object, put: object) -> None:
        pass

    def start(self) -> None:
        pass

    def refresh(self) -> bool:
        return False

    def set_dirs(self, dirs: object) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def start(plugins_dir: Path, supervisors: Callable[..., Supervisor]) -> Callable[..., Supervisor]:
    """Start a Supervisor on its own thread watching ``plugins_dir``; stopped after."""

    def make(probe: ProbeSettings = FAST, rescan: float = 30.0, watch: bool = True,
             **extra: Any) -> Supervisor:
        settings = Settings(discovery=DiscoverySettings(dirs=(str(plugins_dir),),
                                                        rescan_interval=rescan),
                            probe=probe, plugin=PluginSettings(timeouts=TIMEOUTS))
        if not watch:
            extra["watcher_factory"] = MissesEverything
        return supervisors(settings, workers=4, **extra)

    return make


def state_of(sup: Supervisor, name: str) -> PluginState | None:
    view = sup.snapshot().plugins.get(name)
    return None if view is None else view.state


def wait_state(sup: Supervisor, name: str, state: PluginState | None,
               timeout: float = 10.0) -> PluginView | None:
    wait_until(lambda: state_of(sup, name) is state, timeout, message=f"{name} -> {state}")
    return sup.snapshot().plugins.get(name)


def event_kinds(sup: Supervisor, name: str) -> list[tuple[str, str | None]]:
    return [(e.type.value, e.to_state.value if e.to_state else None)
            for e in sup.events(0) if e.plugin == name]


def test_plugins_present_at_start_are_tried_before_started(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """wait_started() returns once every plugin present at start has been activated."""
    for i in range(5):
        fakes(f"p{i}")
    sup = start()
    assert sup.wait_started(10)
    assert dict(sup.snapshot().counts)["ready"] == 5


def test_socket_appears_ready_then_disappears_evicted(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """A new socket is discovered and activated; its removal evicts it."""
    sup = start()
    assert sup.wait_started(10)
    fp = fakes("alpha")
    view = wait_state(sup, "alpha", PluginState.READY)
    assert view is not None
    assert (view.implements, view.scope, view.kind.value) == (("VolumeDriver",), "local", "sock")
    fp.stop()
    wait_state(sup, "alpha", None)
    assert event_kinds(sup, "alpha") == [
        ("discovered", "activating"), ("state_changed", "ready"), ("evicted", None)]


def test_replaced_socket_is_evicted_and_activated_again(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin],
        plugins_dir: Path) -> None:
    """A new socket at the same path (new inode) is a new plugin registration."""
    sup = start()
    first = fakes("swap")
    wait_state(sup, "swap", PluginState.READY)
    first.stop(unlink=False)
    os.unlink(plugins_dir / "swap.sock")
    fakes("swap", implements=("NetworkDriver",))
    wait_state(sup, "swap", PluginState.REJECTED)
    kinds = [k for k, _ in event_kinds(sup, "swap")]
    assert kinds[:3] == ["discovered", "state_changed", "evicted"]
    assert kinds[-2:] == ["discovered", "state_changed"]


def test_not_a_volume_driver_is_rejected_with_the_seed_message(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """Implements without VolumeDriver → rejected, with what it provides."""
    sup = start()
    fakes("net", implements=("NetworkDriver",))
    view = wait_state(sup, "net", PluginState.REJECTED)
    assert view is not None
    assert view.implements == ("NetworkDriver",)
    assert view.last_error == ("plugin net does not implement volume plugin, instead provides "
                               "NetworkDriver: plugin is not a volume plugin")


def test_hung_plugin_turns_unhealthy_and_recovers(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """failure_threshold timed-out probes → unhealthy; answering again → ready."""
    sup = start()
    fp = fakes("slowpoke")
    wait_state(sup, "slowpoke", PluginState.READY)
    fp.set("/Plugin.Activate", b.Hang())
    view = wait_state(sup, "slowpoke", PluginState.UNHEALTHY)
    assert view is not None
    assert view.consecutive_failures >= 2
    assert "timed out" in (view.last_error or "")
    fp.reset("/Plugin.Activate")
    view = wait_state(sup, "slowpoke", PluginState.READY)
    assert view is not None
    assert view.last_error is None


def test_stale_socket_keeps_activating_with_refused_error(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """A socket file nobody listens on stays activating; last_error says refused."""
    fp = fakes("stale")
    fp.stop(unlink=False)
    sup = start()
    assert sup.wait_started(10)
    view = wait_until(lambda: sup.snapshot().plugins.get("stale"), message="stale listed")
    assert view.state is PluginState.ACTIVATING
    assert "refused" in (view.last_error or "")
    wait_until(lambda: sup.snapshot().plugins["stale"].consecutive_failures >= 2,
               message="a retry with backoff")


def test_an_activation_retry_is_not_started_early(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """Probes due soon start together, but an activation retry waits its whole back-off."""
    fp = fakes("stale")
    fp.stop(unlink=False)
    # A 10 s interval lets probes start up to 0.2 s early; the first back-off is 0.5 s.
    sup = start(probe=ProbeSettings(interval=10.0, timeout=0.3))
    first = wait_until(lambda: _failed(sup, "stale", 1), message="first activation failed")

    def second_after_nudging() -> PluginView | None:
        sup.put(Rescan("manual"))  # keep the loop waking up, as API requests would
        return _failed(sup, "stale", 2)

    second = wait_until(second_after_nudging, message="second activation failed")
    assert first.last_probe_at is not None
    assert second.last_probe_at is not None
    assert second.last_probe_at - first.last_probe_at >= 0.5


def test_a_first_refusal_gets_a_second_chance_before_the_backoff(
        start: Callable[..., Supervisor], plugins_dir: Path) -> None:
    """A socket found bound but not listening is tried again after SECOND_CHANCE; only
    that second refusal is recorded, and the back-off starts from it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(plugins_dir / "late.sock"))  # and never listens
        sup = start()
        view = wait_until(lambda: _failed(sup, "late", 1), message="a recorded failure")
        assert view.last_probe_at is not None
        assert view.last_probe_at - view.registered_at >= SECOND_CHANCE
        assert view.last_error == ("sending request to plugin late activation endpoint: "
                                   f"dial unix {plugins_dir}/late.sock: connect: "
                                   "connection refused")


def _failed(sup: Supervisor, name: str, times: int) -> PluginView | None:
    view = sup.snapshot().plugins.get(name)
    return view if view is not None and view.consecutive_failures == times else None


def test_a_tcp_plugin_is_activated_and_probed(start: Callable[..., Supervisor],
                                              plugins_dir: Path) -> None:
    """A .spec plugin on TCP (served by worker threads, not the multiplexer) gets ready,
    takes its scope from Capabilities, and is probed."""
    plugin = TCPPlugin()
    try:
        (plugins_dir / "far.spec").write_text(f"tcp://127.0.0.1:{plugin.port}\n")
        sup = start()
        view = wait_state(sup, "far", PluginState.READY)
        assert view is not None
        assert view.scope == "global"
        wait_until(lambda: len(plugin.raw) >= 3, message="a probe after the activation")
        endpoints = [raw.split(b" ")[1] for raw in plugin.raw[:3]]
        assert endpoints == [b"/Plugin.Activate", b"/VolumeDriver.Capabilities",
                             b"/Plugin.Activate"]
    finally:
        plugin.stop()


def test_fail_fast_for_plugins_that_are_not_ready(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """call() raises PluginNotReady without sending anything; unknown names raise."""
    fp = fakes("stale")
    fp.stop(unlink=False)
    sup = start()
    assert sup.wait_started(10)
    with pytest.raises(PluginNotReady, match=r"^plugin stale is activating: .*refused"):
        sup.call("stale", lambda client: client.list())
    with pytest.raises(UnknownPlugin, match="no plugin named 'ghost'"):
        sup.call("ghost", lambda client: client.list())


def test_operation_timeouts_count_towards_health(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """Timed-out volume calls make a plugin unhealthy before any probe fails."""
    sup = start(probe=ProbeSettings(interval=60.0, timeout=0.3, failure_threshold=2))
    fp = fakes("vols")
    wait_state(sup, "vols", PluginState.READY)
    fp.set("/VolumeDriver.List", b.Hang())
    for _ in range(2):
        with pytest.raises(PluginTimeout):
            sup.call("vols", lambda client: client.list(timeout=0.2))
    wait_state(sup, "vols", PluginState.UNHEALTHY)
    with pytest.raises(PluginNotReady):
        sup.call("vols", lambda client: client.list())


def test_probe_now_answers_with_the_view_after_the_probe(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """probe() runs a probe at once and returns the updated view."""
    sup = start(probe=ProbeSettings(interval=60.0, timeout=0.3))
    fp = fakes("p")
    first = wait_state(sup, "p", PluginState.READY)
    assert first is not None
    before = len(fp.requests)
    view = sup.probe("p", timeout=5)
    assert len(fp.requests) > before
    assert view.last_probe_at is not None
    assert first.last_probe_at is not None
    assert view.last_probe_at >= first.last_probe_at
    with pytest.raises(UnknownPlugin):
        sup.probe("ghost", timeout=5)


def test_manual_rescan_reports_added_and_removed(
        start: Callable[..., Supervisor], plugins_dir: Path,
        fakes: Callable[..., FakePlugin]) -> None:
    """With events missed, rescan() finds what changed and reports it."""
    gone = fakes("gone")
    sup = start(watch=False)
    assert sup.wait_started(10)
    assert sup.rescan(5).to_json() == {"added": [], "removed": [], "changed": []}
    gone.stop()
    fakes("late")
    assert sup.rescan(5).to_json() == {"added": ["late"], "removed": ["gone"], "changed": []}
    assert set(sup.snapshot().plugins) == {"late"}  # published before the answer
    wait_state(sup, "late", PluginState.READY)
    assert [e.reason for e in sup.events(0) if e.type.value == "rescan"] == [
        "startup", "manual", "manual"]


def test_an_idle_loop_keeps_running_so_its_age_shows_liveness(
        start: Callable[..., Supervisor]) -> None:
    """With nothing to do the loop still runs every second: loop_age() stays small."""
    sup = start(watch=False)
    assert sup.wait_started(10)
    began = time.monotonic()
    wait_until(lambda: time.monotonic() - began > 2.5 and sup.loop_age() < 1.5, timeout=10,
               message="the idle loop to have run recently")


def test_a_burst_of_new_sockets_is_discovered_in_full(
        start: Callable[..., Supervisor], plugins_dir: Path) -> None:
    """300 sockets bound at once (more hints than one batch resolves name by name) all
    end up registered; nothing listens, so they stay activating."""
    sup = start()
    assert sup.wait_started(10)
    socks = []
    try:
        for i in range(300):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(str(plugins_dir / f"b{i:03}.sock"))
        wait_until(lambda: sup.snapshot().counts["activating"] == 300, timeout=30,
                   message="all 300 registered")
    finally:
        for sock in socks:
            sock.close()


def test_requests_queued_with_stop_are_answered_not_left_waiting(
        start: Callable[..., Supervisor]) -> None:
    """A rescan queued behind Stop gets an error at once instead of a timeout."""
    sup = start(watch=False)
    assert sup.wait_started(10)
    reply: Future[RescanResult] = Future()
    sup.put(Stop())
    sup.put(Rescan("manual", reply))
    with pytest.raises(Stopping, match="volplugd is stopping"):
        reply.result(timeout=10)


def test_a_request_put_after_the_loop_left_is_answered(
        start: Callable[..., Supervisor]) -> None:
    """A rescan put once the loop has already left is refused at once, not left queued
    (the caller of put() lost the race against the loop's last drain)."""
    sup = start(watch=False)
    assert sup.wait_started(10)
    sup.stop()
    sup.join(10)
    reply: Future[RescanResult] = Future()
    sup.put(Rescan("manual", reply))
    assert reply.done()
    with pytest.raises(Stopping, match="volplugd is stopping"):
        reply.result(timeout=0)


def test_status_reports_follow_the_counts_at_most_once_a_second(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """on_status (systemd's STATUS=) gets changed counts, never twice within a second,
    and the last report is the final state."""
    reports: list[tuple[float, dict[str, int]]] = []
    sup = start(on_status=lambda counts: reports.append((time.monotonic(), dict(counts))))
    assert sup.wait_started(10)
    for i in range(3):
        fakes(f"s{i}")
    wait_until(lambda: reports and reports[-1][1]["ready"] == 3, timeout=15,
               message="a report with all three ready")
    assert len(reports) >= 2  # the empty start, then changes as the plugins turn ready
    # spacing is enforced on the loop's clock; 0.1 s allows for the callback's own delay
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(reports)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert all(a[1] != b[1] for a, b in itertools.pairwise(reports))


class Witness(Registry):
    """A registry that notes, as each event appears, the snapshot readers see with it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Event, Snapshot]] = []

    def _append(self, *args: Any) -> Event:
        event = super()._append(*args)
        self.seen.append((event, self.snapshot()))
        return event


def test_events_never_run_ahead_of_the_snapshot(
        start: Callable[..., Supervisor], fakes: Callable[..., FakePlugin],
        plugins_dir: Path) -> None:
    """A socket replaced at the same path. Each event appears together with the snapshot
    that shows it: when the eviction appears, the old registration (ready) is no longer
    listed, so a client that saw the event and then waits for "ready" waits for the new
    one (a system test once read the old one's "ready" beside the new one's discovery)."""
    witness = Witness()
    sup = start(registry=witness)
    old = fakes("swap")
    first = wait_state(sup, "swap", PluginState.READY)
    assert first is not None
    old.stop(unlink=False)
    os.unlink(plugins_dir / "swap.sock")
    fakes("swap")
    wait_until(lambda: [(e.type.value, e.to_state) for e, _ in witness.seen
                        if e.plugin == "swap"][-1:] == [("state_changed", PluginState.READY)]
               and any(e.type.value == "evicted" for e, _ in witness.seen), 10,
               message="the old swap evicted and the new one ready")
    for event, snap in witness.seen:
        shown = snap.plugins.get("swap")
        if event.plugin != "swap":
            continue
        if event.type.value == "evicted":
            assert shown is None or shown.registered_at > first.registered_at, event
        elif shown is None or shown.state is not event.to_state:
            raise AssertionError(f"{event} appeared beside {shown}")
