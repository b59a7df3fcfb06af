"""The supervisor: THE loop that owns plugin state, and the Commands the API uses.

Each iteration waits on its plugins' sockets and its queue at once (``Calls.poll``),
applies the results the poll returns (``Activated | Probed | Failed``), then the queued
messages (filesystem hints, scan requests, commands), starts the work that is due and
publishes an immutable snapshot. What happens to registrations is ``lifecycle``'s, their
records are ``registrations``'s, and every timing decision is a pure function in
``policy``; this module is the shell that runs them in order. Every step survives an
OSError (``survival``): nothing a plugin folder holds ends the loop.

Activations and probes of unix-socket plugins are non-blocking exchanges the loop
multiplexes itself, so a probe costs no thread hand-off and a hung plugin costs only a
socket. Volume operations from the API run on the request's own thread, at most
``plugin.max_in_flight`` per plugin: a hung plugin holds its own slots only.

Runs on: ``run()`` on one thread (the daemon's main thread); ``put`` and the Commands
methods from any thread; TCP jobs on the calls' pool.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, TypeVar

from volplugd import policy
from volplugd.calls import Calls
from volplugd.config import Settings
from volplugd.contracts import (
    Commands,
    Flooded,
    FsHint,
    NullObserver,
    Observer,
    OperationFailed,
    PluginNotReady,
    ProbeNow,
    Rescan,
    Stop,
    Stopping,
    UnknownPlugin,
)
from volplugd.discovery import Watcher
from volplugd.lifecycle import Lifecycle
from volplugd.log import get_logger
from volplugd.model import Event, EventType, PluginState, PluginView, RescanResult, Snapshot
from volplugd.plugin.client import PluginClient
from volplugd.registrations import Book
from volplugd.registry import PendingEvent, Registry
from volplugd.survival import Survival

T = TypeVar("T")
log = get_logger(__name__)

STATUS_EVERY = 1.0  # at most one status callback a second
MAX_BATCH = 1000    # messages handled per loop iteration before publishing
LIVENESS = 1.0      # the loop runs at least this often, so its age shows a wedged loop


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


@dataclass(slots=True)
class Timers:
    """When the loop next does each of its own chores (None: not pending)."""

    rescan: float = 0.0  # the periodic full scan
    beat: float = 0.0  # the heartbeat (systemd's watchdog), if there is one
    status: float = 0.0  # the earliest next status callback
    burst_scan: float | None = None  # one full scan that covers a burst of hints
    flood: float | None = None  # a muted plugin dir is re-armed and rescanned


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
        self._registry = registry
        self._observer = observer or NullObserver()
        self._reload = reload
        self._heartbeat = heartbeat
        self._on_status = on_status
        self._on_started = on_started
        self._clock = clock
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._watcher = watcher_factory(settings.discovery.dirs, self.put)
        self._calls = Calls(workers=workers, clock=clock)
        self._book = Book(registry, clock)
        self._plugins = Lifecycle(settings, self._book, self._calls, self._observer, wall)
        self._timers = Timers()
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._last_iteration = clock()
        self._last_counts: Mapping[str, int] | None = None
        self._survive = Survival(self._observer, clock)
        self._thread: threading.Thread | None = None

    # --- the Commands interface (any thread) -------------------------------------

    def put(self, message: object) -> None:
        self._queue.put(message)
        if self._stopped.is_set():  # the loop has left (or is leaving): nobody else will
            _refuse_queued(self._queue)
            return
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

    def fail_fast(self, name: str) -> PluginView:
        view = self.snapshot().plugins.get(name)
        if view is None or view.state is not PluginState.READY:
            raise UnknownPlugin(name) if view is None else PluginNotReady(view)
        return view

    def call(self, name: str, op: Callable[[PluginClient], T]) -> T:
        return self._plugins.call(self.fail_fast(name), op, self.put)

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
            self._survive(self._watcher.start)
            self._survive(self._full_scan, "startup", self._clock())
            while self._iterate():
                pass
        finally:
            self._shutdown()

    def _iterate(self) -> bool:
        timeout = 0.0 if not self._queue.empty() else self._sleep_time()
        results = self._survive(self._calls.poll, self._survive.pause(timeout)) or []
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
        for result in results:  # the one way results reach the loop
            self._survive(self._plugins.apply, result, now)
        for message in batch:
            self._survive(self._handle, message, now)
        hints = [m.path for m in batch if isinstance(m, FsHint)]
        if hints:
            self._timers.burst_scan = self._survive(self._plugins.hints, hints,
                                                    self._timers.burst_scan, now)
        self._check_started()
        self._survive(self._tick, now)
        return True

    def _sleep_time(self) -> float:
        """Seconds until the loop has something to do unless a message or an answer
        comes first."""
        now, timers, book = self._clock(), self._timers, self._book
        status_pending = (self._on_status is not None
                          and self.snapshot().counts != self._last_counts)
        return policy.sleep_time(now, (
            timers.rescan, now + LIVENESS,
            timers.beat if self._heartbeat is not None else None,
            None if book.lazy_since is None else book.lazy_since + policy.LAZY_PUBLISH,
            timers.status if status_pending else None,
            book.next_due(), timers.burst_scan, timers.flood))

    def _handle(self, message: object, now: float) -> None:
        match message:
            case Rescan(trigger=trigger, reply=reply):
                result = self._full_scan(trigger, now)
                if reply is not None and not reply.done():
                    self._check_started()
                    self._book.publish()  # what the answer names is in /v1/plugins by then
                    reply.set_result(result)
            case Flooded():
                self._timers.flood = self._plugins.flooded(message, self._timers.flood, now)
            case ProbeNow():
                self._plugins.probe_now(message, now)
            case OperationFailed():
                self._plugins.operation_failed(message)
            case Reload():
                self._apply_reload(now)

    def _tick(self, now: float) -> None:
        timers = self._timers
        if self._heartbeat is not None and now >= timers.beat:  # first: whatever fails next
            interval, beat = self._heartbeat
            beat()
            timers.beat = now + interval
        if timers.burst_scan is not None and now >= timers.burst_scan:
            timers.burst_scan = None
            self._plugins.scan(now)
            self._check_started()
        self._plugins.dispatch_due(now)
        if timers.flood is not None and now >= timers.flood:
            self._full_scan("flood", now)
        if now >= timers.rescan:
            self._full_scan("periodic", now)
            self._check_started()
        if self._book.publish_due(now):
            self._book.publish()
        self._report_status(now)

    def _shutdown(self) -> None:
        self._stopped.set()  # before the drain: a later put() drains for itself
        _refuse_queued(self._queue)
        self._watcher.stop()
        self._calls.close()
        self._plugins.close()
        self._watcher.join(2.0)
        self._started.set()

    # --- discovery ------------------------------------------------------------------

    def _full_scan(self, trigger: str, now: float) -> RescanResult:
        """Re-arm the watcher, then scan (a change in between is hinted); covers all so far."""
        self._timers.burst_scan = self._timers.flood = None
        self._timers.rescan = now + self._plugins.settings.discovery.rescan_interval
        if self._watcher.refresh():
            log.warning("watcher_restarted")
            self._observer.rescan("watcher_restart")
        result = self._plugins.scan(now)
        self._observer.rescan(trigger)
        self._book.event(PendingEvent(EventType.RESCAN, reason=trigger))
        self._observer.watcher(self._watcher.up)
        if trigger == "startup":
            self._book.start_all()
            self._check_started()
        return result

    # --- startup, status and reload ------------------------------------------------

    def _check_started(self) -> None:
        """Once every plugin found by the startup scan was tried (or is gone): started."""
        if not self._book.starting and not self._started.is_set():
            self._book.publish()
            self._started.set()
            if self._on_started is not None:
                self._on_started()

    def _report_status(self, now: float) -> None:
        if self._on_status is None or now < self._timers.status:
            return
        counts = self._registry.snapshot().counts
        if counts != self._last_counts:
            self._last_counts = counts
            self._timers.status = now + STATUS_EVERY
            self._on_status(counts)

    def _apply_reload(self, now: float) -> None:
        new = self._reload() if self._reload is not None else None
        if new is None:
            return
        old = self._plugins.settings
        self._plugins.reload(new)
        if new.discovery.dirs != old.discovery.dirs:
            self._watcher.set_dirs(new.discovery.dirs)
        log.info("config_reloaded")
        self._full_scan("reload", now)


def _refuse_queued(messages: queue.SimpleQueue[object]) -> None:
    """Answer every queued request: nobody waits out a timeout for a loop that left."""
    while True:
        try:
            _refuse(messages.get_nowait())
        except queue.Empty:
            return


def _refuse(message: object) -> None:
    """Answer a request that the loop will never handle."""
    reply = message.reply if isinstance(message, Rescan | ProbeNow) else None
    if reply is not None and not reply.done():
        reply.set_exception(Stopping())
