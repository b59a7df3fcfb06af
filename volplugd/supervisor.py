"""The supervisor: THE loop that owns plugin state, and the Commands the API uses.

The loop drains its queue (filesystem hints, scan requests, I/O results, commands),
reconciles the scanned desired state against what it tracks (``policy.plan``), starts
activations and probes (at most one per plugin registration in flight), applies the
results through the pure transitions of ``policy`` and publishes an immutable snapshot.

Activations and probes go through ``calls``: for unix-socket plugins they are
non-blocking exchanges that the loop itself multiplexes (its wait covers their sockets
and its queue at once), so a probe costs no thread hand-off and a hung plugin costs only
a socket. Volume operations from the API run on the request's own thread, at most
``plugin.max_in_flight`` per plugin (``Slots``): a hung plugin holds its own slots only.

Runs on: ``run()`` on one thread (the daemon's main thread); ``put`` and the
Commands methods from any thread; TCP jobs on the calls' pool.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Protocol, TypeVar

from volplugd import policy
from volplugd.calls import Activated, Calls, Done
from volplugd.config import Settings
from volplugd.discovery import ScanResult, Watcher, plugin_path_of, scan, scan_one
from volplugd.log import get_logger
from volplugd.model import (
    Commands,
    DesiredPlugin,
    Event,
    EventType,
    FsHint,
    NullObserver,
    Observer,
    OperationFailed,
    PluginBusy,
    PluginNotReady,
    PluginState,
    PluginView,
    ProbeNow,
    Rescan,
    RescanResult,
    Snapshot,
    Stop,
    Stopping,
    UnknownPlugin,
)
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import (
    NotAVolumePlugin,
    PluginError,
    PluginRemoved,
    PluginTimeout,
    PluginUnreachable,
)
from volplugd.plugin.failures import Failure, classify
from volplugd.registry import PendingEvent, Registry
from volplugd.scheduling import Schedule, Slots

T = TypeVar("T")
log = get_logger(__name__)

LAZY_PUBLISH = 0.5  # seconds a timestamp-only change may wait before it is published
STATUS_EVERY = 1.0  # at most one status callback a second
MAX_BATCH = 1000    # messages handled per loop iteration before publishing
LIVENESS = 1.0      # the loop runs at least this often, so its age shows a wedged loop
# A probe due within this share of the interval (at most MAX_EARLY s) starts with the one
# that woke the loop: one wake-up then serves several probes, which is most of the CPU saved.
EARLY_SHARE = 0.02
MAX_EARLY = 0.2
SECOND_CHANCE = 0.02  # a first activation refused: bound but not yet listening; retry
HINTS_PER_SCAN = 32  # more hinted names than this in one batch: one full scan is cheaper
BURST_SCAN_DELAY = 0.25  # during a burst, one full scan covers the hints of this long
SLOT_WAIT = 1.0  # an operation waits this long at most for one of its plugin's slots
BUSY_RETRY_AFTER = 1  # seconds, the Retry-After of a 503 plugin_busy

_operation = threading.local()  # .active: this thread runs a volume operation now


class WatcherLike(Protocol):
    def start(self) -> None: ...
    def refresh(self) -> bool: ...
    def set_dirs(self, dirs: Sequence[str]) -> None: ...
    @property
    def up(self) -> bool: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Reload:
    """Re-read the configuration (SIGHUP)."""


class _Entry(NamedTuple):
    """What API threads need of a registration: its client, token and operation slots."""

    client: PluginClient
    token: int
    slots: Slots


class Supervisor(Commands):
    """Owns every plugin's state; everything else talks to it through messages."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        observer: Observer | None = None,
        watcher_factory: Callable[[Sequence[str], Callable[[object], None]], WatcherLike]
        = Watcher,
        reload: Callable[[], Settings | None] | None = None,
        heartbeat: tuple[float, Callable[[], None]] | None = None,
        on_status: Callable[[Mapping[str, int]], None] | None = None,
        on_started: Callable[[], None] | None = None,
        workers: int = 16,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self._settings = settings
        self._registry = registry
        self._observer = observer or NullObserver()
        self._reload = reload
        self._heartbeat = heartbeat
        self._on_status = on_status
        self._on_started = on_started
        self._clock = clock
        self._wall = wall
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._watcher = watcher_factory(settings.discovery.dirs, self.put)
        self._calls = Calls(self._apply_result, self.put, workers=workers, clock=clock)
        self._tracked: dict[str, policy.Tracked] = {}
        self._views: dict[str, PluginView] = {}  # what the next snapshot shows, by name
        self._changed: set[str] = set()  # names whose view changed since the last publish
        self._unpublished: list[PendingEvent] = []  # events that go out with that publish
        self._clients: dict[str, _Entry] = {}
        self._schedule = Schedule()
        self._inflight: set[int] = set()
        self._dispatched_due: dict[int, float] = {}
        self._waiters: dict[str, list[Future[PluginView]]] = {}
        self._tokens = itertools.count(1)
        self._ignored_logged: set[tuple[str, str]] = set()
        self._startup_pending: set[int] = set()
        self._second_chance: set[int] = set()  # registrations refused once, retried soon
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._urgent = False
        self._lazy_since: float | None = None
        self._next_rescan = 0.0
        self._next_beat = 0.0
        self._next_status = 0.0
        self._last_iteration = clock()
        self._burst_scan: float | None = None  # when a full scan covers a burst of hints
        self._last_counts: Mapping[str, int] | None = None
        self._thread: threading.Thread | None = None

    # --- the Commands interface (any thread) -------------------------------------

    def put(self, message: object) -> None:
        self._queue.put(message)
        self._calls.wake()

    def snapshot(self) -> Snapshot:
        return self._registry.snapshot()

    def loop_age(self) -> float:
        return max(0.0, self._clock() - self._last_iteration)

    def events(self, since: int, wait: float = 0.0) -> tuple[Event, ...]:
        return self._registry.events(since, wait)

    def rescan(self, timeout: float) -> RescanResult:
        reply: Future[RescanResult] = Future()
        self._ask(Rescan("manual", reply))
        return reply.result(timeout)

    def probe(self, name: str, timeout: float) -> PluginView:
        if name not in self.snapshot().plugins:
            raise UnknownPlugin(name)
        reply: Future[PluginView] = Future()
        self._ask(ProbeNow(name, reply))
        return reply.result(timeout)

    def _ask(self, message: Rescan | ProbeNow) -> None:
        if self._stopped.is_set():
            raise Stopping()
        self.put(message)

    def call(self, name: str, op: Callable[[PluginClient], T]) -> T:
        view = self.snapshot().plugins.get(name)
        if view is None:
            raise UnknownPlugin(name)
        entry = self._clients.get(name)
        if view.state is not PluginState.READY or entry is None:
            raise PluginNotReady(view)
        if not entry.slots.acquire(SLOT_WAIT):
            self._observer.busy(name)
            raise PluginBusy(name, entry.slots.limit, BUSY_RETRY_AFTER)
        _operation.active = True
        try:
            return op(entry.client)
        except (PluginTimeout, PluginUnreachable, PluginRemoved) as err:
            self.put(OperationFailed(name, str(err), err.outcome, entry.token))
            raise
        finally:
            _operation.active = False
            entry.slots.release()

    def wait_started(self, timeout: float) -> bool:
        """True once the first scan is reconciled and each plugin found then was tried."""
        return self._started.wait(timeout)

    # --- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on its own thread (tests, embedding); the daemon calls run()."""
        self._thread = threading.Thread(target=self.run, name="volplugd-supervisor")
        self._thread.start()

    def stop(self) -> None:
        self.put(Stop())

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopped.wait(timeout)

    def run(self) -> None:
        """The loop. Returns after a Stop message, with workers told to stop."""
        try:
            self._watcher.start()
            self._full_scan("startup", self._clock())
            while self._iterate():
                pass
        finally:
            self._shutdown()

    def _iterate(self) -> bool:
        # Results of multiplexed calls are applied inside poll; messages after it.
        self._calls.poll(0.0 if not self._queue.empty() else self._sleep_time())
        batch: list[object] = []
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        now = self._last_iteration = self._clock()
        if any(isinstance(m, Stop) for m in batch):
            for message in batch:
                _refuse(message)
            return False
        hints = [m.path for m in batch if isinstance(m, FsHint)]
        for message in batch:
            self._handle(message, now)
        if hints:
            self._apply_hints(hints, now)
        self._tick(now)
        return True

    def _sleep_time(self) -> float:
        """Seconds until the loop has something to do unless a message or an answer
        comes first."""
        wake = [self._next_rescan, self._clock() + LIVENESS]
        if self._heartbeat is not None:
            wake.append(self._next_beat)
        if self._lazy_since is not None:
            wake.append(self._lazy_since + LAZY_PUBLISH)
        if self._on_status is not None and self.snapshot().counts != self._last_counts:
            wake.append(self._next_status)
        nxt = self._schedule.next_time()
        if nxt is not None:
            wake.append(nxt)
        if self._burst_scan is not None:
            wake.append(self._burst_scan)
        return max(0.0, min(wake) - self._clock())

    def _handle(self, message: object, now: float) -> None:
        match message:
            case Done():
                self._apply_done(message, now)
            case Rescan(trigger=trigger, reply=reply):
                result = self._full_scan(trigger, now)
                if reply is not None and not reply.done():
                    self._publish()  # what the answer names is in /v1/plugins by then
                    reply.set_result(result)
            case ProbeNow():
                self._probe_now(message, now)
            case OperationFailed():
                self._apply_operation_failed(message, now)
            case Reload():
                self._apply_reload(now)

    def _tick(self, now: float) -> None:
        if self._burst_scan is not None and now >= self._burst_scan:
            self._burst_scan = None
            self._apply_scan(self._scan_dirs(), now)
        early = min(MAX_EARLY, self._settings.probe.interval * EARLY_SHARE)
        for when, token, name in self._schedule.pop_due(now + early):
            if when > now and not self._probing(name, token):
                self._schedule.at(when, token, name)  # activation retries keep their time
            else:
                self._dispatch(name, token, when, now)
        if now >= self._next_rescan:
            self._full_scan("periodic", now)
        if self._heartbeat is not None and now >= self._next_beat:
            interval, beat = self._heartbeat
            beat()
            self._next_beat = now + interval
        lazy = self._lazy_since
        if self._urgent or (lazy is not None and now - lazy >= LAZY_PUBLISH):
            self._publish()
        self._report_status(now)

    def _shutdown(self) -> None:
        self._stopped.set()
        while True:  # nobody waits out a timeout for a loop that has left
            try:
                _refuse(self._queue.get_nowait())
            except queue.Empty:
                break
        self._watcher.stop()
        self._calls.close()
        for entry in self._clients.values():
            entry.client.close()
        for name in list(self._waiters):
            self._fail_waiters(name, UnknownPlugin(name))
        self._watcher.join(2.0)
        self._started.set()

    # --- discovery -> desired state -> plan ---------------------------------------

    def _scan_dirs(self) -> ScanResult:
        return scan(self._settings.discovery.dirs, self._settings.discovery.trust)

    def _apply_hints(self, paths: list[str], now: float) -> None:
        """Re-resolve only the plugins the hinted paths concern; anything else
        (a plugin folder itself appearing or going) gets a full scan."""
        dirs = self._settings.discovery.dirs
        names = {plugin_path_of(path, dirs) for path in paths}
        if None in names:
            self._apply_scan(self._scan_dirs(), now)
            return
        if len(names) > HINTS_PER_SCAN or self._burst_scan is not None:
            # A burst: one full scan shortly covers these hints and any that follow.
            self._burst_scan = self._burst_scan or now + BURST_SCAN_DELAY
            return
        for name in sorted(n for n in names if n is not None):
            self._apply_scan(scan_one(name, dirs, self._settings.discovery.trust), now,
                             only=name)

    def _full_scan(self, trigger: str, now: float) -> RescanResult:
        self._burst_scan = None  # this scan covers every hint so far
        result = self._apply_scan(self._scan_dirs(), now)
        self._observer.rescan(trigger)
        self._event(PendingEvent(EventType.RESCAN, reason=trigger))
        self._next_rescan = now + self._settings.discovery.rescan_interval
        if self._watcher.refresh():
            log.warning("watcher_restarted")
            self._observer.rescan("watcher_restart")
            more = self._apply_scan(self._scan_dirs(), now)
            result = RescanResult(result.added + more.added, result.removed + more.removed,
                                  result.changed + more.changed)
        self._observer.watcher(self._watcher.up)
        if trigger == "startup":
            self._startup_pending = {t.token for t in self._tracked.values()}
            self._check_started()
        return result

    def _apply_scan(self, found: ScanResult, now: float, only: str | None = None
                    ) -> RescanResult:
        """Reconcile a scan: of everything, or (``only``) of one plugin name."""
        self._log_ignored(found, partial=only is not None)
        actual = self._tracked
        if only is not None:
            actual = {only: self._tracked[only]} if only in self._tracked else {}
        plan = policy.plan(found.desired, actual)
        for name in plan.remove:
            self._evict(name, "removed")
        for want in plan.replace:
            self._evict(want.name, "replaced")
            self._register(want, now)
        for want in plan.add:
            self._register(want, now)
        for want in plan.rewarn:
            _log_warnings(want, known=self._tracked[want.name].desired.warnings)
            self._update(policy.rewarned(self._tracked[want.name], want), urgent=True)
        if plan:
            self._urgent = True
        return RescanResult(tuple(w.name for w in plan.add), plan.remove,
                            tuple(w.name for w in plan.replace))

    def _log_ignored(self, found: ScanResult, partial: bool) -> None:
        """Log each ignored file once; a full scan forgets files that were fixed."""
        current = {(i.path, i.reason) for i in found.ignored}
        for path, reason in sorted(current - self._ignored_logged):
            log.warning("plugin_file_ignored", path=path, reason=reason)
            self._observer.discovery("ignored")
        self._ignored_logged = self._ignored_logged | current if partial else current

    def _register(self, want: DesiredPlugin, now: float) -> None:
        token = next(self._tokens)
        tracked = policy.register(want, token, self._wall())
        self._tracked[want.name] = tracked
        self._show(want.name, tracked.view)
        self._clients[want.name] = _Entry(self._make_client(want), token,
                                          Slots(self._settings.plugin.max_in_flight))
        self._event(PendingEvent(EventType.DISCOVERED, want.name, None,
                                 PluginState.ACTIVATING, want.source))
        self._observer.discovery("added")
        _log_warnings(want)
        log.info("plugin_discovered", plugin=want.name, address=want.address.url,
                 source=want.source)
        self._schedule.at(now, token, want.name)

    def _make_client(self, want: DesiredPlugin) -> PluginClient:
        settings = self._settings.plugin
        return PluginClient(want.name, want.address, timeouts=settings.timeouts,
                            max_response_bytes=settings.max_response_bytes,
                            on_request=partial(self._on_request, want.name))

    def _on_request(self, name: str, endpoint: str, outcome: str, seconds: float) -> None:
        """Count volume operations only: probes and activations have their own metrics."""
        if getattr(_operation, "active", False):
            self._observer.request(name, endpoint, outcome, seconds)

    def _evict(self, name: str, reason: str) -> None:
        tracked = self._tracked.pop(name)
        self._show(name, None)
        self._schedule.forget(tracked.token)
        self._startup_pending.discard(tracked.token)
        self._calls.forget(tracked.token)  # its call, if any, never reports
        self._second_chance.discard(tracked.token)
        self._inflight.discard(tracked.token)
        self._dispatched_due.pop(tracked.token, None)
        self._clients.pop(name).client.close()
        self._event(PendingEvent(EventType.EVICTED, name, tracked.state, None, reason))
        self._observer.evicted(name, reason)
        self._observer.discovery("removed" if reason == "removed" else "changed")
        log.info("plugin_evicted", plugin=name, reason=reason, state=tracked.state.value)
        self._fail_waiters(name, UnknownPlugin(name))
        self._urgent = True
        self._check_started()

    # --- activations and probes ------------------------------------------------

    def _probing(self, name: str, token: int) -> bool:
        tracked = self._tracked.get(name)
        return tracked is not None and tracked.token == token and tracked.state in (
            PluginState.READY, PluginState.UNHEALTHY)

    def _dispatch(self, name: str, token: int, due: float, now: float) -> None:
        """Start the work a registration needs; ``due`` keeps the probe phase."""
        tracked = self._tracked.get(name)
        if tracked is None or tracked.token != token or token in self._inflight:
            return
        client = self._clients[name].client
        self._inflight.add(token)
        self._dispatched_due[token] = due
        if tracked.state in (PluginState.ACTIVATING, PluginState.REJECTED):
            timeout = self._settings.plugin.timeouts.get("activate")  # for Capabilities
            self._calls.activate(name, token, client, timeout)
        else:
            self._observer.probe_lateness(now - due)
            self._calls.probe(name, token, client, self._settings.probe)

    # --- applying results -------------------------------------------------------

    def _apply_result(self, done: Done) -> None:
        """A multiplexed activation or probe finished (called inside ``Calls.poll``)."""
        self._apply_done(done, self._clock())

    def _apply_done(self, done: Done, now: float) -> None:
        self._inflight.discard(done.token)
        due = self._dispatched_due.pop(done.token, now)
        tracked = self._tracked.get(done.name)
        if tracked is None or tracked.token != done.token:
            return  # evicted or replaced while the job ran
        if done.kind == "activate":
            if self._apply_activation(tracked, done, now):
                self._startup_pending.discard(done.token)
                self._check_started()
        else:
            self._apply_probe(tracked, done, due, now)
        view = self._tracked[done.name].view
        for reply in self._waiters.pop(done.name, []):
            if not reply.done():
                reply.set_result(view)

    def _apply_activation(self, tracked: policy.Tracked, done: Done, now: float) -> bool:
        """Apply an activation's result; False while it is only given a second chance."""
        result, wall = done.result, self._wall()
        if isinstance(result, NotAVolumePlugin):
            self._update(policy.rejected(tracked, result.implements, str(result), wall))
        elif (_refused(result) and not tracked.activation_failures
              and tracked.token not in self._second_chance):
            # A plugin binds its socket (we see it) a moment before it listens: a refusal
            # right after discovery is that moment. Look again soon, before the back-off.
            self._second_chance.add(tracked.token)
            self._schedule.at(now + SECOND_CHANCE, tracked.token, tracked.desired.name)
            return False
        elif isinstance(result, BaseException):
            new, delay = policy.activation_failed(tracked, _describe(result), wall)
            self._update(new)
            log.warning("plugin_activation_failed", plugin=tracked.desired.name,
                        error=new.view.last_error, attempt=new.activation_failures,
                        retry_in=delay)
            self._schedule.at(now + delay, tracked.token, tracked.desired.name)
        elif isinstance(result, Activated):
            self._update(policy.activated(tracked, result.implements, result.scope, wall,
                                          done.seconds, warning=result.warning))
            if result.warning is not None:
                log.warning("plugin_capabilities_odd", plugin=tracked.desired.name,
                            warning=result.warning)
            interval = self._settings.probe.interval
            self._schedule.at(now + random.uniform(0.1, 1.0) * interval,  # noqa: S311 - jitter
                              tracked.token, tracked.desired.name)
        return True

    def _apply_probe(self, tracked: policy.Tracked, done: Done, due: float, now: float) -> None:
        settings, wall = self._settings.probe, self._wall()
        if isinstance(done.result, BaseException):
            label = _probe_label(done.result)
            new = policy.probe_failed(tracked, settings, _describe(done.result), wall)
        else:
            label = "success"
            new = policy.probe_succeeded(tracked, settings, wall, done.seconds)
        self._observer.probe(tracked.desired.name, label, done.seconds)
        self._update(new)
        self._schedule.at(policy.probe_due(due, settings.interval, now),
                          tracked.token, tracked.desired.name)

    def _apply_operation_failed(self, failed: OperationFailed, now: float) -> None:
        tracked = self._tracked.get(failed.name)
        if tracked is None or tracked.token != failed.token:
            return
        if tracked.state in (PluginState.READY, PluginState.UNHEALTHY):
            self._update(policy.probe_failed(tracked, self._settings.probe, failed.error,
                                             self._wall()))

    def _probe_now(self, message: ProbeNow, now: float) -> None:
        tracked = self._tracked.get(message.name)
        if tracked is None:
            message.reply.set_exception(UnknownPlugin(message.name))
            return
        self._waiters.setdefault(message.name, []).append(message.reply)
        self._schedule.forget(tracked.token)
        self._dispatch(message.name, tracked.token, now, now)

    def _update(self, new: policy.Tracked, *, urgent: bool = False) -> None:
        """Store a new record; a state change is an event, a log line, and urgent."""
        name = new.desired.name
        old = self._tracked[name]
        self._tracked[name] = new
        self._show(name, new.view)
        if old.state is not new.state:
            reason = new.view.last_error or "ok"
            self._event(PendingEvent(EventType.STATE_CHANGED, name, old.state, new.state,
                                     reason))
            log.info(_STATE_EVENTS[new.state], plugin=name, address=new.view.address,
                     **{"from": old.state.value}, reason=reason,
                     latency_ms=_ms(new.view.probe_latency_seconds))
            urgent = True
        if urgent:
            self._urgent = True
        elif self._lazy_since is None:
            self._lazy_since = self._clock()

    def _fail_waiters(self, name: str, error: Exception) -> None:
        for reply in self._waiters.pop(name, []):
            if not reply.done():
                reply.set_exception(error)

    def _check_started(self) -> None:
        if not self._startup_pending and not self._started.is_set():
            self._publish()
            self._started.set()
            if self._on_started is not None:
                self._on_started()

    # --- publishing and reload --------------------------------------------------

    def _show(self, name: str, view: PluginView | None) -> None:
        """Record a view change for the next publish (None: the plugin is gone)."""
        if view is None:
            del self._views[name]
        else:
            self._views[name] = view
        self._changed.add(name)

    def _event(self, event: PendingEvent) -> None:
        """An event about a plugin goes out with the next publish, together with the
        snapshot that shows its change (so /v1/events is never ahead of /v1/plugins, nor
        behind it); one about no plugin (a rescan) at once, unless others wait before it."""
        if event.plugin is None and not self._unpublished:
            self._registry.record(*event)
        else:
            self._unpublished.append(event)
            self._urgent = True

    def _publish(self) -> None:
        self._registry.publish(self._views, self._changed, self._unpublished)
        self._changed = set()
        self._unpublished = []
        self._urgent = False
        self._lazy_since = None

    def _report_status(self, now: float) -> None:
        if self._on_status is None or now < self._next_status:
            return
        counts = self._registry.snapshot().counts
        if counts != self._last_counts:
            self._last_counts = counts
            self._next_status = now + STATUS_EVERY
            self._on_status(counts)

    def _apply_reload(self, now: float) -> None:
        new = self._reload() if self._reload is not None else None
        if new is None:
            return
        old, self._settings = self._settings, new
        if new.plugin != old.plugin:
            for name, entry in list(self._clients.items()):
                entry.client.close()
                entry.slots.resize(new.plugin.max_in_flight)
                client = self._make_client(self._tracked[name].desired)
                self._clients[name] = entry._replace(client=client)
        if new.discovery.dirs != old.discovery.dirs:
            self._watcher.set_dirs(new.discovery.dirs)
        log.info("config_reloaded")
        self._full_scan("reload", now)


_STATE_EVENTS = {
    PluginState.READY: "plugin_ready",
    PluginState.UNHEALTHY: "plugin_unhealthy",
    PluginState.REJECTED: "plugin_rejected",
    PluginState.ACTIVATING: "plugin_activating",
}


def _log_warnings(want: DesiredPlugin, known: tuple[str, ...] = ()) -> None:
    """Each of a plugin's file warnings (shadowing, an untrusted folder, https without
    verification) once per registration, and again only when it is new."""
    for warning in want.warnings:
        if warning not in known:
            log.warning("plugin_warning", plugin=want.name, warning=warning)


def _refuse(message: object) -> None:
    """Answer a request that the loop will never handle."""
    reply = message.reply if isinstance(message, Rescan | ProbeNow) else None
    if reply is not None and not reply.done():
        reply.set_exception(Stopping())


def _refused(result: object) -> bool:
    """Nobody listens on the socket (not: the file is gone, or any other failure)."""
    cause = result.__cause__ if isinstance(result, PluginUnreachable) else None
    return cause is not None and classify(cause)[0] == Failure.REFUSED


def _describe(err: BaseException) -> str:
    if isinstance(err, PluginError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _probe_label(err: BaseException) -> str:
    outcome = err.outcome if isinstance(err, PluginError) else "error"
    return outcome if outcome in ("timeout", "refused", "bad_response") else "error"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
