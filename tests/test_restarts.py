"""Restarts in the loop, in-process: real scans, real fake plugins, the real budget and
metrics; only what restarts (systemd, an engine) is a stand-in here, a function that
starts the fake plugin again or answers as systemd would. The real systemd restarts
real units in tests/test_restart_system.py.

The loop identifies each plugin's process from the kernel: here that is this test
process, in no unit. Once identified, a test tells the record who serves it
(``serve_as``): the unit or container a real plugin would run in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fakeplugin import FakePlugin
from tests.trusting import folder, trusted_base
from tests.waiting import wait_until
from volplugd.config import (
    DiscoverySettings,
    PluginSettings,
    ProbeSettings,
    RestartSettings,
    Settings,
)
from volplugd.contracts import NotRestartable, PluginNotReady, UnknownPlugin
from volplugd.metrics.observer import Observations
from volplugd.model import EventType, PluginState, PluginView
from volplugd.supervision.cgroup import Container
from volplugd.supervision.identity import ProcessInfo
from volplugd.supervision.restart import OUTCOMES, Target
from volplugd.supervisor import Reload, Supervisor

FAST = ProbeSettings(interval=0.2, timeout=0.3, failure_threshold=2, success_threshold=1)
TIMEOUTS = {"activate": 0.5, "default": 0.5}
UNIT = ProcessInfo(pid=4242, uid=0, gid=0, command="fake", unit="vp-svc.service",
                   manager="system", container=None)


class Restarter:
    """Stands in for systemd/an engine: records each target, then does ``then``."""

    def __init__(self, then: Callable[[Target], tuple[str, str]]) -> None:
        self.then = then
        self.targets: list[Target] = []
        self.release = threading.Event()  # for ``blocking``
        self.lock = threading.Lock()

    def __call__(self, target: Target, timeout: float) -> tuple[str, str]:
        with self.lock:
            self.targets.append(target)
        return self.then(target)


@pytest.fixture
def run(plugins_dir: Path, supervisors: Callable[..., Supervisor]
        ) -> Callable[..., tuple[Supervisor, Observations]]:
    def make(restarter: Restarter, **restart: Any) -> tuple[Supervisor, Observations]:
        settings = Settings(
            discovery=DiscoverySettings(dirs=(str(plugins_dir),)), probe=FAST,
            plugin=PluginSettings(timeouts=TIMEOUTS),
            restart=RestartSettings(**{"enabled": True, "after": 0.2, **restart}))
        observer = Observations()
        return supervisors(settings, workers=4, observer=observer,
                           restarter=restarter), observer

    return make


def view_of(sup: Supervisor, name: str) -> PluginView:
    view = sup.snapshot().plugins.get(name)
    assert view is not None, f"{name} is not registered"
    return view


def wait_state(sup: Supervisor, name: str, state: PluginState) -> PluginView:
    wait_until(lambda: name in sup.snapshot().plugins and view_of(sup, name).state is state,
               10, message=f"{name} -> {state.value}")
    return view_of(sup, name)


def serve_as(sup: Supervisor, name: str, process: ProcessInfo) -> None:
    """Once the loop has identified the plugin's process: say it runs in ``process``'s
    unit or container."""
    wait_until(lambda: view_of(sup, name).process is not None, 10,
               message=f"{name}'s process identified")
    sup._book.records[name].process = process


def restart_events(sup: Supervisor, name: str) -> list[tuple[str, str]]:
    kinds = (EventType.RESTART_STARTED, EventType.RESTART_DONE, EventType.RESTART_GIVEN_UP)
    return [(e.type.value, e.reason) for e in sup.events(0)
            if e.plugin == name and e.type in kinds]


def restarts_counted(observer: Observations, sup: Supervisor, name: str) -> dict[str, int]:
    """The plugin's restart counters that are not 0 (all exist from its first restart)."""
    series = observer.take(sup.snapshot()).series.get(name)
    assert series is not None
    assert set(series.restarts) == set(OUTCOMES)
    return {outcome: n for outcome, n in series.restarts.items() if n}


def given_up_gauge(observer: Observations, sup: Supervisor, name: str) -> bool | None:
    series = observer.take(sup.snapshot()).series.get(name)
    return None if series is None else series.given_up


def ready_fake(sup: Supervisor, fakes: Callable[..., FakePlugin], name: str,
               process: ProcessInfo = UNIT) -> FakePlugin:
    fp = fakes(name)
    wait_state(sup, name, PluginState.READY)
    serve_as(sup, name, process)
    return fp


def test_an_unhealthy_plugin_is_restarted_and_ready_again(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """Unhealthy for restart.after: its unit is restarted (on a worker), the plugin is
    restarting (events state_changed and restart_started), its new socket is activated,
    and ready ends the restart done: event, view, metric."""
    def start_again(target: Target) -> tuple[str, str]:
        fakes("svc")  # the restarted process binds a new socket at the same path
        return "done", "restart vp-svc.service: job /org/freedesktop/systemd1/job/7 done"

    restarter = Restarter(start_again)
    sup, observer = run(restarter)
    ready_fake(sup, fakes, "svc").stop(unlink=False)  # killed: its socket file stays
    wait_until(lambda: restarter.targets, 10, message="a restart")
    view = wait_state(sup, "svc", PluginState.READY)
    assert restarter.targets == [Target("vp-svc.service")]
    assert view.restart is not None
    assert (view.restart.target, view.restart.outcome, view.restart.error,
            view.restart.recent, view.restart.given_up) == (
        "unit vp-svc.service", "done", None, 1, False)
    assert restart_events(sup, "svc") == [("restart_started", "unit vp-svc.service"),
                                          ("restart_done", "done: ready again")]
    states = [(e.from_state, e.to_state) for e in sup.events(0)
              if e.plugin == "svc" and e.type is EventType.STATE_CHANGED]
    assert (PluginState.UNHEALTHY, PluginState.RESTARTING) in states
    assert (PluginState.RESTARTING, PluginState.READY) in states
    assert restarts_counted(observer, sup, "svc") == {"done": 1}


def test_a_failed_restart_leaves_it_unhealthy_and_the_others_supervised(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """systemd says no such unit: outcome no_such_unit with systemd's exact text, the
    plugin unhealthy again with that text; another plugin goes on being probed."""
    text = "restart vp-svc.service: Unit vp-svc.service not found."
    restarter = Restarter(lambda target: ("no_such_unit", text))
    sup, observer = run(restarter, burst=1)
    other = fakes("other")
    ready_fake(sup, fakes, "svc").stop(unlink=False)
    wait_until(lambda: ("restart_done", f"no_such_unit: {text}")
               in restart_events(sup, "svc"), 10, message="the failed restart")
    view = wait_state(sup, "svc", PluginState.UNHEALTHY)
    assert view.last_error == f"restart no_such_unit: {text}"
    assert view.restart is not None
    assert (view.restart.outcome, view.restart.error) == ("no_such_unit", text)
    assert restarts_counted(observer, sup, "svc")["no_such_unit"] == 1
    seen = len(other.requests)
    other.wait_requests(seen + 2)  # still probed
    assert view_of(sup, "other").state is PluginState.READY


def test_past_its_budget_it_is_given_up_once_until_an_admin_asks(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """Every restart's job fails: after burst restarts, one restart_given_up event, the
    view says given_up and no restart follows; an admin's restart gets a fresh budget."""
    restarter = Restarter(lambda target: ("failed", "restart vp-svc.service: job 9 failed"))
    sup, observer = run(restarter, burst=2)
    with capture_logs() as logs:
        ready_fake(sup, fakes, "svc").stop(unlink=False)
        wait_until(lambda: any(kind == "restart_given_up"
                               for kind, _ in restart_events(sup, "svc")), 15,
                   message="the budget given up")
        sup.probe("svc", 5)  # a few more loop turns, unhealthy
        sup.probe("svc", 5)
    given_up = [e for e in logs if e["event"] == "plugin_restart_given_up"]
    assert given_up == [{"event": "plugin_restart_given_up", "log_level": "error",
                         "logger_name": "volplugd.restarts", "plugin": "svc",
                         "target": "unit vp-svc.service",
                         "reason": "2 restarts within 600 s: no more until it is ready "
                                   "again or an admin asks"}]
    assert restart_events(sup, "svc") == [
        ("restart_started", "unit vp-svc.service"),
        ("restart_done", "failed: restart vp-svc.service: job 9 failed"),
        ("restart_started", "unit vp-svc.service"),
        ("restart_done", "failed: restart vp-svc.service: job 9 failed"),
        ("restart_given_up", "2 restarts within 600 s: no more until it is ready again or "
                             "an admin asks")]
    view = wait_state(sup, "svc", PluginState.UNHEALTHY)
    assert view.restart is not None
    assert (view.restart.given_up, view.restart.recent) == (True, 2)
    assert restarts_counted(observer, sup, "svc") == {"failed": 2, "given_up": 1}
    assert given_up_gauge(observer, sup, "svc") is True
    assert sup.restart("svc", 5).state is PluginState.RESTARTING
    wait_until(lambda: len(restarter.targets) == 3, 10, message="the admin's restart")
    wait_until(lambda: restart_events(sup, "svc")[-1][0] == "restart_done", 10,
               message="the admin's restart to end")
    assert view_of(sup, "svc").restart.given_up is False  # type: ignore[union-attr]
    assert given_up_gauge(observer, sup, "svc") is False


def test_ready_again_by_itself_lifts_a_give_up(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """Given up, then the plugin is back (started by hand): ready lifts the give-up."""
    restarter = Restarter(lambda target: ("failed", "job failed"))
    sup, observer = run(restarter, burst=1)
    ready_fake(sup, fakes, "svc").stop(unlink=False)
    wait_until(lambda: (view_of(sup, "svc").restart or _NONE).given_up, 10,
               message="given up")
    fakes("svc")
    view = wait_state(sup, "svc", PluginState.READY)
    wait_until(lambda: not (view_of(sup, "svc").restart or _NONE).given_up, 10,
               message="the give-up lifted")
    assert view.restart is not None
    assert view.restart.outcome == "failed"
    assert given_up_gauge(observer, sup, "svc") is False


class _Nothing:
    given_up = False


_NONE = _Nothing()


@pytest.mark.parametrize(("process", "units", "why"), [
    (ProcessInfo(1, 0, 0, "x", None, None, None), (), "no unit or container known for it"),
    (ProcessInfo(1, 0, 0, "x", "session-2.scope", "system", None), (),
     "its unit session-2.scope is not a service"),
    (ProcessInfo(1, 1000, 1000, "x", "p.service", "user@1000.service", None), (),
     "its unit p.service runs under user@1000.service, not the system manager"),
    (UNIT, ("other.service",), "its unit vp-svc.service is not in restart.units"),
])
def test_what_is_not_restarted_says_why(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin], process: ProcessInfo,
        units: tuple[str, ...], why: str) -> None:
    """No unit, a scope, a user's unit, a unit outside restart.units: an admin's
    restart is refused with the reason, and an unhealthy plugin is never restarted."""
    restarter = Restarter(lambda target: ("done", "restarted"))
    sup, _ = run(restarter, units=units)
    fp = fakes("svc")
    wait_state(sup, "svc", PluginState.READY)
    serve_as(sup, "svc", process)
    with pytest.raises(NotRestartable) as refused:
        sup.restart("svc", 5)
    assert str(refused.value) == f"plugin svc cannot be restarted: {why}"
    with capture_logs() as logs:
        fp.stop(unlink=False)
        wait_state(sup, "svc", PluginState.UNHEALTHY)
        wait_until(lambda: any(e["event"] == "plugin_not_restarted" for e in logs), 10,
                   message="the decision")
    assert [e for e in logs if e["event"] == "plugin_not_restarted"] == [
        {"event": "plugin_not_restarted", "log_level": "info",
         "logger_name": "volplugd.restarts", "plugin": "svc", "reason": why}]
    assert restarter.targets == []
    assert restart_events(sup, "svc") == []


def test_a_container_is_restarted_through_its_engine(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """A plugin in a container: the target is the container (engine and id)."""
    restarter = Restarter(lambda target: ("container_gone", "docker container ab: gone"))
    sup, _ = run(restarter, burst=1)
    cid = "ab" * 32
    ready_fake(sup, fakes, "svc", ProcessInfo(
        7, 0, 0, "x", "docker-x.scope", "system", Container("docker", cid))).stop(unlink=False)
    wait_until(lambda: restarter.targets, 10, message="a restart")
    assert restarter.targets == [Target(cid, "docker")]
    wait_until(lambda: len(restart_events(sup, "svc")) >= 2, 10, message="its end")
    assert restart_events(sup, "svc")[:2] == [
        ("restart_started", f"docker container {cid[:12]}"),
        ("restart_done", "container_gone: docker container ab: gone")]


def test_admin_restart_refusals(run: Callable[..., tuple[Supervisor, Observations]],
                                fakes: Callable[..., FakePlugin]) -> None:
    """Unknown: UnknownPlugin; restarting already: refused, the one restart goes on."""
    restarter = Restarter(lambda target: (restarter.release.wait(10), ("done", "ok"))[1])
    sup, _ = run(restarter)
    with pytest.raises(UnknownPlugin):
        sup.restart("nobody", 5)
    ready_fake(sup, fakes, "svc")
    assert sup.restart("svc", 5).state is PluginState.RESTARTING
    with pytest.raises(NotRestartable) as refused:
        sup.restart("svc", 5)
    assert str(refused.value) == "plugin svc cannot be restarted: it is restarting already"
    restarter.release.set()
    wait_state(sup, "svc", PluginState.READY)  # the same socket: activated again
    assert len(restarter.targets) == 1


def test_restart_turned_off_refuses_an_admin(
        plugins_dir: Path, supervisors: Callable[..., Supervisor],
        fakes: Callable[..., FakePlugin]) -> None:
    """[restart] enabled = false: nothing is restarted, and an admin is told so."""
    sup = supervisors(Settings(discovery=DiscoverySettings(dirs=(str(plugins_dir),)),
                               probe=FAST, plugin=PluginSettings(timeouts=TIMEOUTS)),
                      workers=4)
    fakes("svc")
    wait_state(sup, "svc", PluginState.READY)
    serve_as(sup, "svc", UNIT)
    with pytest.raises(NotRestartable) as refused:
        sup.restart("svc", 5)
    assert str(refused.value) == ("plugin svc cannot be restarted: restarts are turned off "
                                  "(restart.enabled = false)")


def starting_on_release(fakes: Callable[..., FakePlugin],
                        started: list[FakePlugin]) -> Restarter:
    """A restart that waits for its ``release``, then binds the fake plugin svc again
    (appended to ``started``) and is done."""
    def then(target: Target) -> tuple[str, str]:
        restarter.release.wait(10)
        started.append(fakes("svc"))
        return "done", "ok"

    restarter = Restarter(then)
    return restarter


def test_calls_are_held_while_restarting_then_forwarded(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """A volume operation while restarting waits for ready (restart.hold), then runs."""
    plugin: list[FakePlugin] = []
    restarter = starting_on_release(fakes, plugin)
    sup, _ = run(restarter, hold=30.0)
    ready_fake(sup, fakes, "svc")
    sup.restart("svc", 5)
    answer: list[object] = []
    caller = threading.Thread(target=lambda: answer.append(
        sup.call("svc", lambda c: c.create("held", {}))))
    caller.start()
    wait_until(lambda: restarter.targets, 10, message="the restart under way")
    assert view_of(sup, "svc").state is PluginState.RESTARTING
    assert not answer
    restarter.release.set()
    caller.join(15)
    assert answer == [None]
    assert "held" in plugin[0].volumes


def evictions(sup: Supervisor, name: str) -> list[str]:
    return [e.reason for e in sup.events(0) if e.plugin == name and e.type is EventType.EVICTED]


def test_a_restarting_plugin_whose_socket_file_goes_is_kept_until_it_is_back(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """A restarted process that removes its socket as it stops and binds a new one later
    (buttervolume does): while the file is gone the plugin stays registered, restarting
    (so its gateway socket stays and calls are held); the new socket replaces it."""
    plugin: list[FakePlugin] = []
    restarter = starting_on_release(fakes, plugin)
    sup, _ = run(restarter, hold=30.0)
    old = ready_fake(sup, fakes, "svc")
    with capture_logs() as logs:
        sup.restart("svc", 5)
        old.stop()  # unlinks its socket file
        wait_until(lambda: any(e["event"] == "plugin_kept_while_restarting" for e in logs),
                   10, message="the loop seeing the file gone")
        assert (view_of(sup, "svc").state, evictions(sup, "svc")) == (
            PluginState.RESTARTING, [])
        answer: list[object] = []
        caller = threading.Thread(target=lambda: answer.append(
            sup.call("svc", lambda c: c.create("held", {}))))
        caller.start()
        restarter.release.set()
        caller.join(15)
    assert answer == [None]
    assert "held" in plugin[0].volumes
    assert [e for e in logs if e["event"] == "plugin_kept_while_restarting"] == [
        {"event": "plugin_kept_while_restarting", "log_level": "info",
         "logger_name": "volplugd.lifecycle", "plugin": "svc",
         "reason": "its socket file went while it restarts"}]
    assert evictions(sup, "svc") == ["replaced"]
    assert restart_events(sup, "svc") == [("restart_started", "unit vp-svc.service"),
                                          ("restart_done", "done: ready again")]


def test_a_kept_plugin_whose_restart_ends_without_its_file_is_evicted(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """The job is done but no new socket comes within restart.hold: the restart ends
    not_ready, and the plugin, its file still gone, is evicted (removed)."""
    restarter = Restarter(lambda target: ("done", "ok"))
    sup, _ = run(restarter, hold=0.3)
    old = ready_fake(sup, fakes, "svc")
    with capture_logs() as logs:
        old.stop()  # gone before the restart: no restart of a plugin not there
        wait_until(lambda: "svc" not in sup.snapshot().plugins, 10, message="evicted")
    assert [e["event"] for e in logs if e["event"] == "plugin_kept_while_restarting"] == []
    new = ready_fake(sup, fakes, "svc")

    def stop_and_wait_kept(target: Target) -> tuple[str, str]:
        new.stop()  # the job ends once the loop keeps the plugin: it is never called
        wait_until(lambda: any(e["event"] == "plugin_kept_while_restarting" for e in logs),
                   10, message="the plugin kept")
        return "done", "ok"

    restarter.then = stop_and_wait_kept
    with capture_logs() as logs:
        sup.restart("svc", 5)
        wait_until(lambda: "svc" not in sup.snapshot().plugins, 10, message="evicted")
    assert evictions(sup, "svc") == ["removed", "removed"]
    assert restart_events(sup, "svc") == [
        ("restart_started", "unit vp-svc.service"),
        ("restart_done", "not_ready: not ready within 0.3 s of its restart")]
    assert [e["event"] for e in logs if e["event"] == "plugin_activation_failed"] == []


def test_past_the_hold_a_call_fails_as_before(
        run: Callable[..., tuple[Supervisor, Observations]],
        fakes: Callable[..., FakePlugin]) -> None:
    """Still restarting after restart.hold: PluginNotReady, as for any plugin not ready."""
    restarter = Restarter(lambda target: (restarter.release.wait(10), ("done", "ok"))[1])
    sup, _ = run(restarter, hold=0.2)
    ready_fake(sup, fakes, "svc")
    sup.restart("svc", 5)
    with pytest.raises(PluginNotReady) as refused:
        sup.call("svc", lambda c: c.list())
    assert str(refused.value) == "plugin svc is restarting"
    restarter.release.set()


def test_a_plugin_in_an_untrusted_folder_is_never_restarted(
        supervisors: Callable[..., Supervisor], fakes_at: Callable[..., FakePlugin]) -> None:
    """A folder others may write: whatever serves its plugin is never restarted, by the
    loop or by an admin, and the refusal names the folder's problem."""
    restarter = Restarter(lambda target: ("done", "restarted"))
    with trusted_base() as base:
        shared = folder(base / "shared", 0o777)
        settings = Settings(discovery=DiscoverySettings(dirs=(str(shared),)), probe=FAST,
                            plugin=PluginSettings(timeouts=TIMEOUTS),
                            restart=RestartSettings(enabled=True, after=0.2))
        sup = supervisors(settings, workers=4, restarter=restarter)
        fp = fakes_at(shared / "svc.sock")
        view = wait_state(sup, "svc", PluginState.READY)
        serve_as(sup, "svc", UNIT)
        untrusted = view.warnings[0].removeprefix("untrusted: ")
        assert view.warnings[0] == f"untrusted: {untrusted}"
        why = f"plugin svc cannot be restarted: its folder is untrusted: {untrusted}"
        with pytest.raises(NotRestartable) as refused:
            sup.restart("svc", 5)
        assert str(refused.value) == why
        with capture_logs() as logs:
            fp.stop(unlink=False)
            wait_state(sup, "svc", PluginState.UNHEALTHY)
            wait_until(lambda: any(e["event"] == "plugin_not_restarted" for e in logs), 10,
                       message="the decision")
        assert [e["reason"] for e in logs if e["event"] == "plugin_not_restarted"] == [
            f"its folder is untrusted: {untrusted}"]
        assert restarter.targets == []


def test_turned_on_by_a_reload_it_restarts_a_plugin_already_unhealthy(
        plugins_dir: Path, supervisors: Callable[..., Supervisor],
        fakes: Callable[..., FakePlugin]) -> None:
    """Unhealthy while restarts were off; SIGHUP turns them on: it is restarted."""
    def settings(enabled: bool) -> Settings:
        return Settings(discovery=DiscoverySettings(dirs=(str(plugins_dir),)), probe=FAST,
                        plugin=PluginSettings(timeouts=TIMEOUTS),
                        restart=RestartSettings(enabled=enabled, after=0.2))

    restarter = Restarter(lambda target: ("no_such_unit", "Unit vp-svc.service not found."))
    sup = supervisors(settings(False), workers=4, restarter=restarter,
                      reload=lambda: settings(True))
    ready_fake(sup, fakes, "svc").stop(unlink=False)
    wait_state(sup, "svc", PluginState.UNHEALTHY)
    assert restarter.targets == []
    sup.put(Reload())
    wait_until(lambda: restarter.targets, 10, message="the restart after the reload")
    assert restarter.targets == [Target("vp-svc.service")]
