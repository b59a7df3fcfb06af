"""Pure decisions of the supervisor: what to do about the filesystem's desired state,
how each activation or probe result moves a plugin, and every timing decision of the
loop (back-off, the second chance, the early-probe window, burst coalescing, publishing).

No I/O, no clock, no threads: every function takes ``now`` and returns new frozen
values, so the whole lifecycle is table-tested. Runs on: the supervisor thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from volplugd.config import ProbeSettings
from volplugd.model import (
    DesiredPlugin,
    DesiredState,
    PluginState,
    PluginView,
    ProcessView,
    RestartView,
)

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0


@dataclass(frozen=True, slots=True)
class Tracked:
    """The supervisor's record of one plugin: what it was registered as, and its view.

    ``token`` is unique per registration, so a result that arrives after the plugin
    was evicted or replaced is recognised as stale and dropped. ``notes`` are the last
    activation's warnings and ``process_notes`` what could not be told about its
    process; the view shows the file's warnings, then these, then those.
    """

    desired: DesiredPlugin
    view: PluginView
    token: int
    activation_failures: int = 0
    successes: int = 0
    notes: tuple[str, ...] = ()
    process_notes: tuple[str, ...] = ()

    @property
    def state(self) -> PluginState:
        return self.view.state


@dataclass(frozen=True, slots=True)
class Plan:
    """The difference between the filesystem and the registry, by name (sorted)."""

    add: tuple[DesiredPlugin, ...] = ()
    remove: tuple[str, ...] = ()
    replace: tuple[DesiredPlugin, ...] = ()
    rewarn: tuple[DesiredPlugin, ...] = ()  # same plugin, only its warnings changed

    def __bool__(self) -> bool:
        return bool(self.add or self.remove or self.replace or self.rewarn)


def plan(desired: DesiredState, actual: Mapping[str, Tracked]) -> Plan:
    """Reconcile: new names are added, gone ones removed, replaced files re-registered."""
    add, replace, rewarn = [], [], []
    for name in sorted(desired):
        want = desired[name]
        have = actual.get(name)
        if have is None:
            add.append(want)
        elif (have.desired.identity, have.desired.address) != (want.identity, want.address):
            replace.append(want)
        elif have.desired.warnings != want.warnings:
            rewarn.append(want)
    remove = tuple(sorted(name for name in actual if name not in desired))
    return Plan(tuple(add), remove, tuple(replace), tuple(rewarn))


def backoff(failures: int) -> float:
    """Delay before activation attempt ``failures + 1``: 0.5 s doubling, capped at 30 s."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_FIRST * 2.0 ** (failures - 1), BACKOFF_CAP)


def register(want: DesiredPlugin, token: int, now: float) -> Tracked:
    """A newly discovered plugin starts in ``activating``."""
    view = PluginView(
        name=want.name, address=want.address.url, source=want.source, kind=want.kind,
        state=PluginState.ACTIVATING, registered_at=now, warnings=want.warnings,
    )
    return Tracked(desired=want, view=view, token=token)


def rewarned(t: Tracked, want: DesiredPlugin) -> Tracked:
    view = dataclasses.replace(t.view, warnings=want.warnings + t.notes + t.process_notes)
    return dataclasses.replace(t, desired=want, view=view)


def activated(t: Tracked, implements: tuple[str, ...], scope: str, now: float,
              latency: float, *, warning: str | None = None) -> Tracked:
    """Activation answered with "VolumeDriver": the plugin is ready. A ``warning`` (an
    odd Capabilities answer) is shown until the next activation."""
    notes = () if warning is None else (warning,)
    view = dataclasses.replace(
        t.view, state=PluginState.READY, implements=implements, scope=scope,
        last_probe_at=now, last_success_at=now, last_error=None, consecutive_failures=0,
        probe_latency_seconds=latency,
        warnings=t.desired.warnings + notes + t.process_notes,
    )
    return dataclasses.replace(t, view=view, activation_failures=0, successes=0,
                               notes=notes)


def rejected(t: Tracked, implements: tuple[str, ...], error: str, now: float) -> Tracked:
    """It answers, but is not a volume driver: re-checked only when its file changes."""
    view = dataclasses.replace(t.view, state=PluginState.REJECTED, implements=implements,
                               last_probe_at=now, last_error=error)
    return dataclasses.replace(t, view=view)


def activation_failed(t: Tracked, error: str, now: float) -> tuple[Tracked, float]:
    """Stay ``activating``, keep the error, and say when to try again."""
    failures = t.activation_failures + 1
    view = dataclasses.replace(t.view, last_probe_at=now, last_error=error,
                               consecutive_failures=failures)
    return dataclasses.replace(t, view=view, activation_failures=failures), backoff(failures)


def probe_succeeded(t: Tracked, settings: ProbeSettings, now: float, latency: float) -> Tracked:
    """A success; an unhealthy plugin recovers after ``success_threshold`` in a row."""
    successes = t.successes + 1
    state = t.state
    if state is PluginState.UNHEALTHY and successes >= settings.success_threshold:
        state = PluginState.READY
    # Built field by field: this runs for every probe, and replace() is several times dearer.
    v = t.view
    view = PluginView(v.name, v.address, v.source, v.kind, state, v.registered_at,
                      v.implements, last_probe_at=now, last_success_at=now,
                      last_error=None if state is PluginState.READY else v.last_error,
                      consecutive_failures=0, probe_latency_seconds=latency, scope=v.scope,
                      warnings=v.warnings, process=v.process, restart=v.restart)
    return Tracked(t.desired, view, t.token, t.activation_failures, successes, t.notes,
                   t.process_notes)


def probe_failed(t: Tracked, settings: ProbeSettings, error: str, now: float) -> Tracked:
    """A failure; a ready plugin turns unhealthy after ``failure_threshold`` in a row."""
    failures = t.view.consecutive_failures + 1
    state = t.state
    if state is PluginState.READY and failures >= settings.failure_threshold:
        state = PluginState.UNHEALTHY
    view = dataclasses.replace(t.view, state=state, last_probe_at=now, last_error=error,
                               consecutive_failures=failures)
    return dataclasses.replace(t, view=view, successes=0)


def identified(t: Tracked, process: ProcessView | None, problems: tuple[str, ...]) -> Tracked:
    """Who serves the plugin (None: not known), and what could not be told about it
    (shown as warnings after the file's and the activation's)."""
    notes = tuple(f"process: {problem}" for problem in problems)
    view = dataclasses.replace(t.view, process=process,
                               warnings=t.desired.warnings + t.notes + notes)
    return dataclasses.replace(t, view=view, process_notes=notes)


def exited_text(pid: int, command: str | None) -> str:
    """The ``last_error`` of a plugin whose process exited (and whose probe then failed)."""
    return f"process {pid} exited" if command is None else f"process {pid} ({command}) exited"


def process_exited(t: Tracked, error: str, now: float) -> Tracked:
    """Its process exited and a probe right after failed: a ready plugin is unhealthy at
    once, without waiting for ``failure_threshold`` failures; ``error`` says which
    process exited (``exited_text``)."""
    state = PluginState.UNHEALTHY if t.state is PluginState.READY else t.state
    view = dataclasses.replace(t.view, state=state, last_probe_at=now, last_error=error,
                               consecutive_failures=t.view.consecutive_failures + 1)
    return dataclasses.replace(t, view=view, successes=0)


def probe_due(last_due: float, interval: float, now: float) -> float:
    """The next probe keeps the plugin's phase (no drift), but never lies in the past."""
    due = last_due + interval
    return due if due > now else now + interval * 0.5


# --- restarts (``restarts``: when; these: what each step does to a plugin) -------------

EXIT_GRACE = 1.0  # unhealthy at once (its process exited): a new listener may appear


def restart_delay(view: PluginView, settings: ProbeSettings, after: float) -> float:
    """How long an ``unhealthy`` plugin waits before volplugd restarts what serves it:
    ``after``, or at most EXIT_GRACE when it turned unhealthy at once, before
    ``failure_threshold`` failed probes (its process was seen to exit)."""
    if view.consecutive_failures < settings.failure_threshold:
        return min(after, EXIT_GRACE)
    return after


def restarting(t: Tracked, restart: RestartView, like: PluginView | None = None) -> Tracked:
    """A restart began: ``restarting`` until its next successful activation. ``like``:
    the view the restart began from, when this is a new registration of the same plugin
    (its socket was replaced by the restarted process): what it implements is kept."""
    base = t.view if like is None else like
    view = dataclasses.replace(t.view, state=PluginState.RESTARTING, restart=restart,
                               implements=base.implements, scope=base.scope,
                               last_error=base.last_error)
    return dataclasses.replace(t, view=view, activation_failures=0, successes=0)


def restart_failed(t: Tracked, restart: RestartView, error: str, now: float) -> Tracked:
    """The restart failed, or the plugin was not ready in time: ``unhealthy`` again."""
    view = dataclasses.replace(t.view, state=PluginState.UNHEALTHY, restart=restart,
                               last_error=error, last_probe_at=now)
    return dataclasses.replace(t, view=view, successes=0)


def restart_noted(t: Tracked, restart: RestartView | None) -> Tracked:
    """The plugin's view with ``restart`` as its restart object (no state change)."""
    return dataclasses.replace(t, view=dataclasses.replace(t.view, restart=restart))


# --- timing: when the loop does what -----------------------------------------------------

SECOND_CHANCE = 0.02  # a first activation refused: bound but not yet listening; retry
EARLY_SHARE = 0.02  # a probe due within this share of the interval starts early ...
MAX_EARLY = 0.2  # ... but at most this many seconds early
FIRST_PROBE = (0.1, 1.0)  # the first probe after activation: this share of the interval
HINTS_PER_SCAN = 32  # more hinted names than this in one batch: one full scan is cheaper
BURST_SCAN_DELAY = 0.25  # during a burst, one full scan covers the hints of this long
LAZY_PUBLISH = 0.5  # seconds a timestamp-only change may wait before it is published
SUSPECT_EVERY = 1.0  # a suspect plugin is probed this often, each probe this long at most


def second_chance(refused: bool, activation_failures: int, given: bool) -> float | None:
    """Seconds until a quick retry of a refused first activation, or None (back off).

    A plugin binds its socket (discovery sees it) a moment before it listens: a refusal
    right after discovery is that moment. It is looked at again once, soon, before the
    back-off; any other failure, or a second refusal, backs off."""
    return SECOND_CHANCE if refused and not activation_failures and not given else None


def suspect_timeout(probe_timeout: float) -> float:
    """The deadline of a suspect plugin's probe: a plugin that answers at all answers a
    probe in milliseconds, so one that has not within SUSPECT_EVERY is taken to hang."""
    return min(probe_timeout, SUSPECT_EVERY)


def suspect_due(started: float, now: float) -> float:
    """When a suspect plugin's next probe is due: SUSPECT_EVERY after the last one
    started, or now if that one took as long."""
    return max(started + SUSPECT_EVERY, now)


def still_suspect(t: Tracked, succeeded: bool) -> bool:
    """Whether a suspect plugin stays suspect after a probe: until a probe succeeds, or
    the failed ones have made it unhealthy (the suspicion is settled either way)."""
    return not succeeded and t.state is not PluginState.UNHEALTHY


def early_window(interval: float) -> float:
    """How far ahead of their due time probes start with the one that woke the loop:
    one wake-up then serves several probes, which is most of the CPU saved."""
    return min(MAX_EARLY, interval * EARLY_SHARE)


def starts_now(due: float, now: float, probing: bool) -> bool:
    """Whether work popped from the early window starts now: anything due, and probes
    early; an activation retry keeps its time."""
    return due <= now or probing


def first_probe(now: float, interval: float, spread: float) -> float:
    """When the first probe after an activation is due: at a random point of the interval
    (``spread`` in [0, 1), e.g. ``random.random()``), so plugins are probed evenly."""
    low, high = FIRST_PROBE
    return now + (low + (high - low) * spread) * interval


@dataclass(frozen=True, slots=True)
class Hints:
    """What one batch of filesystem hints asks of the loop."""

    full: bool = False  # scan everything now (a hint no plugin name explains)
    names: tuple[str, ...] = ()  # else re-resolve only these (sorted)
    burst_at: float | None = None  # when one full scan covers a burst (None: no burst)


def coalesce(names: Collection[str | None], burst_at: float | None, now: float) -> Hints:
    """Decide about the plugin names a batch of hints concerns (None: a path no name
    explains, e.g. a plugin folder itself). More names than HINTS_PER_SCAN, or any while
    a burst is pending, is a burst: one full scan BURST_SCAN_DELAY after it began covers
    these hints and any that follow. ``burst_at`` is the pending burst scan's time."""
    if None in names:
        return Hints(full=True, burst_at=burst_at)
    if len(names) > HINTS_PER_SCAN or burst_at is not None:
        return Hints(burst_at=now + BURST_SCAN_DELAY if burst_at is None else burst_at)
    return Hints(names=tuple(sorted(n for n in names if n is not None)))


def publish_now(urgent: bool, lazy_since: float | None, now: float) -> bool:
    """Membership and state changes publish at once; timestamp-only changes wait up to
    LAZY_PUBLISH seconds, so many probes share one publish."""
    return urgent or (lazy_since is not None and now - lazy_since >= LAZY_PUBLISH)


def sleep_time(now: float, wake_at: Iterable[float | None]) -> float:
    """Seconds until the earliest of ``wake_at`` (None: not set), never negative."""
    return max(0.0, min((t for t in wake_at if t is not None), default=now) - now)
