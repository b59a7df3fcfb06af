"""Table tests of the supervisor's pure decisions (policy.py)."""

from __future__ import annotations

import dataclasses

import pytest

from volplugd import policy
from volplugd.config import ProbeSettings
from volplugd.model import (
    DesiredPlugin,
    FileIdentity,
    Kind,
    PluginState,
    ProcessView,
    RestartView,
)
from volplugd.plugin.address import PluginAddress

PROBE = ProbeSettings(failure_threshold=3, success_threshold=2)


def desired(name: str, ino: int = 1, path: str = "", warnings: tuple[str, ...] = ()
            ) -> DesiredPlugin:
    path = path or f"/run/docker/plugins/{name}.sock"
    return DesiredPlugin(name, PluginAddress("unix", path), path, Kind.SOCK,
                         FileIdentity(1, ino, 100), warnings)


def tracked(name: str, state: PluginState = PluginState.READY, **kw: object) -> policy.Tracked:
    t = policy.register(desired(name, **kw), token=1, now=0.0)  # type: ignore[arg-type]
    return dataclasses.replace(t, view=dataclasses.replace(t.view, state=state))


def test_plan_adds_removes_and_replaces_by_name() -> None:
    """New names are added, vanished ones removed, a new inode at the same name replaced."""
    actual = {"keep": tracked("keep"), "gone": tracked("gone"), "swap": tracked("swap")}
    want = {"keep": desired("keep"), "swap": desired("swap", ino=2), "new": desired("new")}
    result = policy.plan(want, actual)
    assert [d.name for d in result.add] == ["new"]
    assert result.remove == ("gone",)
    assert [d.name for d in result.replace] == ["swap"]
    assert result.rewarn == ()


@pytest.mark.parametrize(
    ("change", "field"),
    [({"path": "/etc/docker/plugins/x.spec"}, "replace"), ({"warnings": ("shadows y",)}, "rewarn")],
)
def test_plan_address_change_replaces_warning_change_only_rewarns(
    change: dict[str, object], field: str
) -> None:
    """A new address is a new plugin; new warnings alone do not re-activate it."""
    result = policy.plan({"x": desired("x", **change)}, {"x": tracked("x")})  # type: ignore[arg-type]
    assert [d.name for d in getattr(result, field)] == ["x"]
    assert bool(result)


def test_plan_of_equal_states_is_empty() -> None:
    """Nothing to do when the filesystem matches the registry."""
    assert not policy.plan({"a": desired("a")}, {"a": tracked("a")})


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)],
)
def test_backoff_doubles_from_half_a_second_capped_at_30(failures: int, delay: float) -> None:
    """Activation retries back off 0.5 s, 1 s, 2 s, ... up to 30 s."""
    assert policy.backoff(failures) == delay


def test_register_starts_activating_with_warnings() -> None:
    """A discovered plugin is activating and carries its discovery warnings."""
    t = policy.register(desired("a", warnings=("shadows b",)), token=7, now=5.0)
    assert (t.state, t.token, t.view.registered_at, t.view.warnings) == (
        PluginState.ACTIVATING, 7, 5.0, ("shadows b",))


def test_activation_success_makes_ready_and_clears_error() -> None:
    """Activation with VolumeDriver → ready, implements and scope recorded."""
    t, _ = policy.activation_failed(tracked("a", PluginState.ACTIVATING), "refused", 1.0)
    t = policy.activated(t, ("VolumeDriver",), "global", 2.0, 0.003)
    assert (t.state, t.view.implements, t.view.scope, t.view.last_error,
            t.view.consecutive_failures, t.activation_failures) == (
        PluginState.READY, ("VolumeDriver",), "global", None, 0, 0)


WEIRD = "Capabilities: unknown scope 'weird'; treated as local"


def test_an_odd_capabilities_answer_is_ready_with_a_warning_after_the_files() -> None:
    """A warning from activation is shown after the file's warnings, kept by probes and
    a rescan's new file warnings, and dropped by an activation without one."""
    t = tracked("a", PluginState.ACTIVATING, warnings=("shadows b",))
    t = policy.activated(t, ("VolumeDriver",), "local", 2.0, 0.003, warning=WEIRD)
    assert (t.state, t.view.scope, t.view.warnings) == (
        PluginState.READY, "local", ("shadows b", WEIRD))
    t = policy.probe_succeeded(t, PROBE, 3.0, 0.001)
    assert t.view.warnings == ("shadows b", WEIRD)
    t = policy.rewarned(t, desired("a", warnings=("shadows c",)))
    assert t.view.warnings == ("shadows c", WEIRD)
    t = policy.activated(t, ("VolumeDriver",), "global", 4.0, 0.003)
    assert (t.view.scope, t.view.warnings, t.notes) == ("global", ("shadows c",), ())


def test_activation_failures_stay_activating_and_back_off() -> None:
    """Each failed activation keeps the error and doubles the delay."""
    t = tracked("a", PluginState.ACTIVATING)
    delays = []
    for n in range(3):
        t, delay = policy.activation_failed(t, f"error {n}", float(n))
        delays.append(delay)
    assert (t.state, t.view.last_error, t.activation_failures, delays) == (
        PluginState.ACTIVATING, "error 2", 3, [0.5, 1.0, 2.0])


def test_rejected_keeps_the_manifest_and_reason() -> None:
    """A plugin that is not a volume driver is rejected with what it implements."""
    t = policy.rejected(tracked("a", PluginState.ACTIVATING), ("NetworkDriver",), "nope", 1.0)
    assert (t.state, t.view.implements, t.view.last_error) == (
        PluginState.REJECTED, ("NetworkDriver",), "nope")


PROBE_TABLE = [
    # start state, results (True = success), expected state, consecutive failures
    (PluginState.READY, [False, False], PluginState.READY, 2),
    (PluginState.READY, [False, False, False], PluginState.UNHEALTHY, 3),
    (PluginState.READY, [False, False, True, False, False], PluginState.READY, 2),
    (PluginState.UNHEALTHY, [True], PluginState.UNHEALTHY, 0),
    (PluginState.UNHEALTHY, [True, True], PluginState.READY, 0),
    (PluginState.UNHEALTHY, [True, False, True], PluginState.UNHEALTHY, 0),
]


@pytest.mark.parametrize(("start", "results", "end", "failures"), PROBE_TABLE)
def test_probe_results_move_between_ready_and_unhealthy(
    start: PluginState, results: list[bool], end: PluginState, failures: int
) -> None:
    """failure_threshold failures make a ready plugin unhealthy; success_threshold heal it."""
    t = tracked("a", start)
    for i, ok in enumerate(results):
        t = (policy.probe_succeeded(t, PROBE, float(i), 0.001) if ok
             else policy.probe_failed(t, PROBE, "timed out", float(i)))
    assert (t.state, t.view.consecutive_failures) == (end, failures)


def test_probe_failure_keeps_last_success_time_and_records_error() -> None:
    """A failed probe records its error without losing when the plugin last answered."""
    t = policy.probe_succeeded(tracked("a"), PROBE, 10.0, 0.002)
    t = policy.probe_failed(t, PROBE, "connection refused", 20.0)
    assert (t.view.last_success_at, t.view.last_probe_at, t.view.last_error,
            t.view.probe_latency_seconds) == (10.0, 20.0, "connection refused", 0.002)


@pytest.mark.parametrize(
    ("last_due", "now", "expected"),
    [(100.0, 100.2, 110.0), (100.0, 109.0, 110.0), (100.0, 125.0, 130.0)],
)
def test_probe_due_keeps_phase_unless_late(last_due: float, now: float, expected: float) -> None:
    """Probes keep their phase; a probe that ran late is not followed by a burst."""
    assert policy.probe_due(last_due, 10.0, now) == expected


def test_a_probe_success_keeps_every_field_it_does_not_set() -> None:
    """probe_succeeded builds the view field by field: none of the others may be lost."""
    t = tracked("a", state=PluginState.UNHEALTHY, warnings=("shadows b",))
    t = dataclasses.replace(t, view=dataclasses.replace(
        t.view, implements=("VolumeDriver",), last_probe_at=1.0, last_success_at=0.5,
        last_error="boom", consecutive_failures=4, probe_latency_seconds=0.3, scope="global",
        process=ProcessView(7, 0, "plugin --serve", "p.service"),
        restart=RestartView("unit a.service", 0.5, "done")))
    defaults = {f.name: f.default for f in dataclasses.fields(t.view)}
    assert [n for n, d in defaults.items() if getattr(t.view, n) == d] == []  # all set
    t = dataclasses.replace(t, notes=("odd",), activation_failures=2,
                            process_notes=("process: x",))
    new = policy.probe_succeeded(t, PROBE, 9.0, 0.002)  # 1 of 2 successes: still unhealthy
    assert (new.notes, new.activation_failures, new.successes, new.process_notes) == (
        ("odd",), 2, 1, ("process: x",))
    assert new.view == dataclasses.replace(
        t.view, last_probe_at=9.0, last_success_at=9.0, consecutive_failures=0,
        probe_latency_seconds=0.002)


# --- who serves a plugin: its process exits; suspicion ---------------------------------

@pytest.mark.parametrize(("state", "failures", "expected"), [
    (PluginState.READY, 0, PluginState.UNHEALTHY),  # at once, not after 3 failures
    (PluginState.UNHEALTHY, 5, PluginState.UNHEALTHY),
])
def test_a_process_exit_with_a_failed_probe_is_unhealthy_at_once(
        state: PluginState, failures: int, expected: PluginState) -> None:
    """process_exited: unhealthy whatever failure_threshold says, its error the exit's."""
    t = tracked("a", state=state)
    t = dataclasses.replace(t, view=dataclasses.replace(t.view, consecutive_failures=failures),
                            successes=1)
    new = policy.process_exited(t, "process 7 (plugin) exited", 4.0)
    assert (new.state, new.view.last_error, new.view.consecutive_failures, new.successes,
            new.view.last_probe_at) == (expected, "process 7 (plugin) exited",
                                        failures + 1, 0, 4.0)


@pytest.mark.parametrize(("pid", "command", "text"), [
    (4242, "python -m plugin --sock /run/p.sock", "process 4242 (python -m plugin --sock "
                                                  "/run/p.sock) exited"),
    (4242, None, "process 4242 exited"),  # its command could not be read
])
def test_the_exit_text_names_pid_and_command(pid: int, command: str | None, text: str) -> None:
    """The last_error of an exited process: "process PID (COMMAND) exited"."""
    assert policy.exited_text(pid, command) == text


def test_identified_shows_the_process_and_its_problems_after_other_warnings() -> None:
    """The process goes in the view; its problems are warnings after the file's and the
    activation's, and a new identification replaces the old problems."""
    t = dataclasses.replace(tracked("a", warnings=("shadows b",)), notes=("odd",))
    process = ProcessView(7, 0, "plugin", "p.service", ("docker", "ab" * 32))
    t = policy.identified(t, process, ("/proc/7/cgroup: Permission denied",))
    assert t.view.process == process
    assert t.view.warnings == ("shadows b", "odd", "process: /proc/7/cgroup: Permission denied")
    t = policy.identified(t, None, ("the listener is in another pid namespace",))
    assert (t.view.process, t.view.warnings) == (
        None, ("shadows b", "odd", "process: the listener is in another pid namespace"))
    assert policy.rewarned(t, desired("a")).view.warnings == (
        "odd", "process: the listener is in another pid namespace")
    again = policy.activated(t, ("VolumeDriver",), "local", 5.0, 0.001)
    assert again.view.warnings == ("shadows b", "process: the listener is in another pid "
                                                "namespace")


@pytest.mark.parametrize(("timeout", "expected"), [(5.0, 1.0), (0.2, 0.2)])
def test_a_suspect_plugins_probes_wait_a_second_at_most(timeout: float, expected: float) -> None:
    """A suspect plugin's probe deadline: probe.timeout, but at most SUSPECT_EVERY."""
    assert policy.suspect_timeout(timeout) == expected


@pytest.mark.parametrize(("started", "now", "expected"), [
    (10.0, 10.004, 11.0),  # answered (or failed) fast: a second after it started
    (10.0, 11.0, 11.0),  # timed out after its second: the next at once
])
def test_a_suspect_plugin_is_probed_every_second(started: float, now: float,
                                                 expected: float) -> None:
    """suspect_due: one probe a second, back to back when each takes the whole second."""
    assert policy.suspect_due(started, now) == expected


@pytest.mark.parametrize(("state", "succeeded", "expected"), [
    (PluginState.READY, False, True),  # failed, not yet unhealthy: probe again in 1 s
    (PluginState.READY, True, False),  # answered: no longer suspect
    (PluginState.UNHEALTHY, False, False),  # failure_threshold reached: settled
])
def test_suspicion_ends_on_a_success_or_when_unhealthy(state: PluginState, succeeded: bool,
                                                       expected: bool) -> None:
    """still_suspect after a probe."""
    assert policy.still_suspect(tracked("a", state=state), succeeded) is expected


def test_three_failed_suspect_probes_make_a_ready_plugin_unhealthy() -> None:
    """Suspect probes count like any: failure_threshold of them in a row → unhealthy."""
    t = tracked("a")
    states = []
    for now in (5.0, 6.0, 7.0):
        t = policy.probe_failed(t, PROBE, "timeout after 1.0s", now)
        states.append((t.state, policy.still_suspect(t, False)))
    assert states == [(PluginState.READY, True), (PluginState.READY, True),
                      (PluginState.UNHEALTHY, False)]


# --- timing decisions -----------------------------------------------------------------

@pytest.mark.parametrize(("refused", "failures", "given", "expected"), [
    (True, 0, False, policy.SECOND_CHANCE),  # right after discovery: bound, not listening
    (True, 0, True, None),  # refused again after its second chance: back off
    (True, 1, False, None),  # refused after an earlier failure: back off
    (False, 0, False, None),  # any other failure: back off
])
def test_a_refused_first_activation_gets_one_second_chance(
        refused: bool, failures: int, given: bool, expected: float | None) -> None:
    assert policy.second_chance(refused, failures, given) == expected
    assert policy.SECOND_CHANCE == 0.02


@pytest.mark.parametrize(("interval", "window"), [
    (10.0, 0.2), (5.0, 0.1), (1.0, 0.02), (100.0, 0.2), (0.5, 0.01),
])
def test_the_early_window_is_2_percent_of_the_interval_at_most_200_ms(
        interval: float, window: float) -> None:
    assert policy.early_window(interval) == pytest.approx(window)


@pytest.mark.parametrize(("due", "now", "probing", "expected"), [
    (9.0, 10.0, False, True),  # an activation retry that is due
    (10.0, 10.0, False, True),  # exactly due
    (10.1, 10.0, False, False),  # an activation retry keeps its time
    (10.1, 10.0, True, True),  # a probe starts early with the one that woke the loop
    (9.0, 10.0, True, True),
])
def test_only_probes_start_early(due: float, now: float, probing: bool, expected: bool) -> None:
    assert policy.starts_now(due, now, probing) is expected


@pytest.mark.parametrize(("spread", "expected"), [(0.0, 101.0), (0.5, 105.5), (1.0, 110.0)])
def test_the_first_probe_lands_between_a_tenth_and_one_interval(
        spread: float, expected: float) -> None:
    assert policy.first_probe(100.0, 10.0, spread) == pytest.approx(expected)


MANY = [f"p{i:03}" for i in range(policy.HINTS_PER_SCAN + 1)]


@pytest.mark.parametrize(("names", "burst_at", "expected"), [
    ({"b", "a"}, None, policy.Hints(names=("a", "b"))),  # few names: each re-resolved
    ({"a", None}, None, policy.Hints(full=True)),  # a folder itself: a full scan now
    ({"a", None}, 7.0, policy.Hints(full=True, burst_at=7.0)),  # the burst scan stays due
    (set(MANY), None, policy.Hints(burst_at=5.25)),  # a burst: one scan 0.25 s later
    (set(MANY[:policy.HINTS_PER_SCAN]), None,
     policy.Hints(names=tuple(MANY[:policy.HINTS_PER_SCAN]))),  # 32 names: not a burst
    ({"a"}, 5.1, policy.Hints(burst_at=5.1)),  # hints during a burst wait for its scan
    (set(), None, policy.Hints()),
])
def test_hints_are_coalesced_into_a_burst_scan(
        names: set[str | None], burst_at: float | None, expected: policy.Hints) -> None:
    assert policy.coalesce(names, burst_at, now=5.0) == expected


@pytest.mark.parametrize(("urgent", "lazy_since", "now", "expected"), [
    (True, None, 0.0, True),  # a membership or state change: at once
    (False, None, 9.0, False),  # nothing changed
    (False, 1.0, 1.4, False),  # a timestamp-only change waits ...
    (False, 1.0, 1.5, True),  # ... at most 0.5 s
    (True, 1.0, 1.1, True),
])
def test_publishing_is_at_once_or_lazy(urgent: bool, lazy_since: float | None, now: float,
                                       expected: bool) -> None:
    assert policy.publish_now(urgent, lazy_since, now) is expected


@pytest.mark.parametrize(("wake_at", "expected"), [
    ((12.0, None, 11.0), 1.0), ((9.0, 30.0), 0.0), ((None,), 0.0), ((10.5,), 0.5),
])
def test_the_loop_sleeps_until_its_earliest_timer(
        wake_at: tuple[float | None, ...], expected: float) -> None:
    assert policy.sleep_time(10.0, wake_at) == pytest.approx(expected)


# --- restarts -------------------------------------------------------------------------

RESTART = RestartView("unit a.service", 5.0)


def viewed(state: PluginState, **view: object) -> policy.Tracked:
    """Plugin "a" in ``state`` with these view fields."""
    t = tracked("a", state)
    return dataclasses.replace(t, view=dataclasses.replace(t.view, **view))  # type: ignore[arg-type]


@pytest.mark.parametrize(("failures", "after", "delay"), [
    (3, 10.0, 10.0),  # failure_threshold failed probes: restart.after
    (4, 10.0, 10.0),
    (1, 10.0, policy.EXIT_GRACE),  # unhealthy at once (its process exited): the grace
    (0, 10.0, policy.EXIT_GRACE),
    (1, 0.5, 0.5),  # restart.after shorter than the grace: restart.after
])
def test_restart_delay_is_after_or_the_grace_when_unhealthy_at_once(
        failures: int, after: float, delay: float) -> None:
    t = viewed(state=PluginState.UNHEALTHY, consecutive_failures=failures)
    assert policy.restart_delay(t.view, PROBE, after) == delay


@pytest.mark.parametrize("state", [PluginState.UNHEALTHY, PluginState.READY,
                                   PluginState.ACTIVATING])
def test_restarting_keeps_what_it_implements_and_why(state: PluginState) -> None:
    """Any state may be restarted (an admin's restart: ready too); the view keeps its
    manifest and last error, shows the restart, and retries count afresh."""
    t = viewed(state=state, implements=("VolumeDriver",), scope="global",
                last_error="boom")
    t = dataclasses.replace(t, activation_failures=3, successes=1)
    new = policy.restarting(t, RESTART)
    assert new.view == dataclasses.replace(t.view, state=PluginState.RESTARTING,
                                           restart=RESTART)
    assert (new.activation_failures, new.successes) == (0, 0)


def test_a_new_registration_restarting_is_like_the_one_restarted() -> None:
    """The restarted process made a new socket: the new registration (activating, no
    manifest yet) is restarting with the manifest, scope and error of the old one."""
    old = viewed(state=PluginState.UNHEALTHY, implements=("VolumeDriver",),
                  scope="global", last_error="boom").view
    new = policy.restarting(viewed(state=PluginState.ACTIVATING, registered_at=9.0),
                            RESTART, like=old)
    assert (new.state, new.view.implements, new.view.scope, new.view.last_error,
            new.view.registered_at, new.view.restart) == (
        PluginState.RESTARTING, ("VolumeDriver",), "global", "boom", 9.0, RESTART)


def test_a_failed_restart_is_unhealthy_with_its_text() -> None:
    t = dataclasses.replace(viewed(state=PluginState.RESTARTING), successes=1)
    failed = dataclasses.replace(RESTART, outcome="no_such_unit", error="gone")
    new = policy.restart_failed(t, failed, "restart no_such_unit: gone", 7.0)
    assert new.view == dataclasses.replace(t.view, state=PluginState.UNHEALTHY,
                                           restart=failed, last_probe_at=7.0,
                                           last_error="restart no_such_unit: gone")
    assert new.successes == 0


@pytest.mark.parametrize("state", list(PluginState))
def test_a_restart_noted_changes_nothing_else(state: PluginState) -> None:
    t = viewed(state=state, last_error="x")
    assert policy.restart_noted(t, RESTART).view == dataclasses.replace(t.view,
                                                                        restart=RESTART)
    assert policy.restart_noted(t, None).view == t.view


def test_a_probe_success_ends_no_restart_itself() -> None:
    """Only an activation makes a restarting plugin ready: a late probe answer does not
    (its manifest may have changed with the restart)."""
    t = viewed(state=PluginState.RESTARTING)
    assert policy.probe_succeeded(t, PROBE, 1.0, 0.001).state is PluginState.RESTARTING
    assert policy.probe_failed(t, PROBE, "x", 1.0).state is PluginState.RESTARTING
