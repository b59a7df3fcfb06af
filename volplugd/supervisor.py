"""The supervisor: THE loop that owns plugin state, and the Commands the API uses.

Each iteration waits on its plugins' sockets and its mailbox at once (``Calls.poll``,
which can wait on more descriptors: ``Calls.watch``, e.g. the plugin processes' pidfds),
applies the results the poll returns (``Activated | Probed | Failed``) and what the
processes room found (who serves a plugin, a process that exited), then the queued
messages (filesystem hints, scan requests, commands), starts the work that is due (and
the probes of suspect plugins) and publishes an immutable snapshot. When the folders
are scanned is ``scanning``'s, what happens to registrations ``lifecycle``'s, their
records and due times ``registrations``'s, when the daemon counts as started
``startup``'s, which stale sockets go ``stalesockets``', and every timing decision is
a pure function in ``policy``; this module is the shell that runs them in order and
sleeps until the earliest thing any of them waits for. Every step survives an OSError
(``survival``): nothing a plugin folder holds ends the loop.

Activations and probes of unix-socket plugins are non-blocking exchanges the loop
multiplexes itself, so a probe costs no thread hand-off and a hung plugin costs only a
socket. Volume operations from the API run on the request's own thread, at most
``plugin.max_in_flight`` per plugin: a hung plugin holds its own slots only.

Runs on: ``run()`` on one thread (the daemon's main thread); ``put`` and the Commands
methods from any thread; TCP jobs on the calls' pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

from volplugd import policy
from volplugd.calls import Calls
from volplugd.config import Settings
from volplugd.contracts import (
    Commands,
    Flooded,
    FsHint,
    NotRestartable,
    NullObserver,
    Observer,
    OperationFailed,
    PluginNotReady,
    ProbeNow,
    Rescan,
    RestartNow,
    Stop,
    Stopping,
    UnknownPlugin,
)
from volplugd.discovery import Watcher
from volplugd.lifecycle import Lifecycle
from volplugd.log import get_logger
from volplugd.mailbox import Mailbox
from volplugd.model import Event, PluginState, PluginView, RescanResult, Snapshot
from volplugd.plugin.client import PluginClient
from volplugd.registrations import Book
from volplugd.registry import Registry
from volplugd.restarts import RestartEnded, Restarts
from volplugd.scanning import Scans, WatcherLike
from volplugd.stalesockets import StaleSockets
from volplugd.startup import Startup
from volplugd.supervision.restart import Restarter, restart
from volplugd.survival import Survival

T = TypeVar("T")
log = get_logger(__name__)

STATUS_EVERY = 1.0  # at most one status callback a second
MAX_BATCH = 1000    # messages handled per loop iteration before publishing
LIVENESS = 1.0      # the loop runs at least this often, so its age shows a wedged loop


@dataclass(frozen=True, slots=True)
class Reload:
    """Re-read the configuration (SIGHUP)."""


@dataclass(slots=True)
class Timers:
    """When the loop next does each of its own chores (monotonic seconds; 0.0: at the
    first iteration). Registrations' due times are the book's, scans' are ``Scans``'."""

    beat: float = 0.0  # the heartbeat (systemd's watchdog); used only if there is one
    status: float = 0.0  # the earliest next status callback; used only if counts changed


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
        restarter: Restarter = restart,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self._registry = registry
        self._observer = observer or NullObserver()
        self._reload = reload
        self._heartbeat = heartbeat
        self._on_status = on_status
        self._clock = clock
        self._mailbox: Mailbox[object] = Mailbox()
        self._watcher = watcher_factory(settings.discovery.dirs, self.put)
        self._calls = Calls(workers=workers, clock=clock)
        self._calls.watch(self._mailbox.fileno())  # _iterate takes the messages
        self._book = Book(registry, clock)
        self._plugins = Lifecycle(settings, self._book, self._calls, self._observer, wall,
                                  clock=clock)
        self._scans = Scans(self._plugins, self._book, self._watcher, self._observer)
        self._stale = StaleSockets(self._plugins, self._book, self._observer,
                                   evict=self._scans.hints)
        self._restarts = Restarts(settings, self._book, self._calls, self._observer, self.put,
                                  restarter=restarter, wall=wall)
        self._startup = Startup(on_started)
        self._timers = Timers()
        self._stopped = threading.Event()
        self._last_iteration = clock()
        self._last_counts: Mapping[str, int] | None = None
        self._survive = Survival(self._observer, clock)
        self._thread: threading.Thread | None = None

    # --- the Commands interface (any thread) -------------------------------------

    def put(self, message: object) -> None:
        self._mailbox.put(message)
        if self._stopped.is_set():  # the loop has left (or is leaving): nobody else will
            _refuse_all(self._mailbox.take())

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
        return self._ask_about(ProbeNow, name, timeout)

    def restart(self, name: str, timeout: float) -> PluginView:
        return self._ask_about(RestartNow, name, timeout)

    def _ask_about(self, kind: type[ProbeNow | RestartNow], name: str,
                   timeout: float) -> PluginView:
        """Ask the loop to act on one plugin now; its view once it has (or its error)."""
        if name not in self.snapshot().plugins:
            raise UnknownPlugin(name)
        reply: Future[PluginView] = Future()
        self._ask(kind(name, reply))
        return reply.result(timeout)

    def _ask(self, message: Rescan | ProbeNow | RestartNow) -> None:
        if self._stopped.is_set():
            raise Stopping()
        self.put(message)

    def fail_fast(self, name: str) -> PluginView:
        view = self.snapshot().plugins.get(name)
        if view is None or view.state is not PluginState.READY:
            raise UnknownPlugin(name) if view is None else PluginNotReady(view)
        return view

    def call(self, name: str, op: Callable[[PluginClient], T]) -> T:
        """``op`` on the plugin's client; while the plugin is ``restarting``, after up to
        ``restart.hold`` s waiting for it to be ready (then as ``fail_fast`` says)."""
        view = self.snapshot().plugins.get(name)
        if view is not None and view.state is PluginState.RESTARTING:
            self._registry.wait_for(lambda s: _not_restarting(s, name),
                                    self._plugins.settings.restart.hold)
        return self._plugins.call(self.fail_fast(name), op, self.put)

    def wait_started(self, timeout: float) -> bool:
        """True once started (``startup``: each plugin the first scan found was tried)."""
        return self._startup.wait(timeout)

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
            scanned = self._survive(self._scans.full_scan, "startup", self._clock())
            self._startup.expect(self._book if scanned is not None else ())
            self._startup.check(self._book)
            while self._iterate():
                pass
        finally:
            self._shutdown()

    def _iterate(self) -> bool:
        timeout = 0.0 if not self._mailbox.empty() else self._sleep_time()
        results = self._survive(self._calls.poll, self._survive.pause(timeout)) or []
        batch = self._mailbox.take(MAX_BATCH)
        now = self._last_iteration = self._clock()
        if any(isinstance(m, Stop) for m in batch):
            for message in batch:
                _refuse(message)
            return False
        for result in results:  # the one way results reach the loop
            if self._survive(self._plugins.apply, result, now):
                self._startup.tried(result.name, result.token)
        self._survive(self._plugins.processes, now)  # who serves plugins; exits
        for message in batch:
            self._survive(self._handle, message, now)
        hints = [m.path for m in batch if isinstance(m, FsHint)]
        if hints:
            self._survive(self._scans.hints, hints, now)
        self._startup.check(self._book)
        self._survive(self._tick, now)
        return True

    def _sleep_time(self) -> float:
        """Seconds until the loop has something to do unless a message or an answer
        comes first."""
        now, timers = self._clock(), self._timers
        status_pending = (self._on_status is not None
                          and self.snapshot().counts != self._last_counts)
        return policy.sleep_time(now, (
            now + LIVENESS,
            timers.beat if self._heartbeat is not None else None,
            timers.status if status_pending else None,
            self._book.wake_at(), self._plugins.wake_at(), self._restarts.wake_at(),
            *self._scans.wake_at(), self._stale.wake_at()))

    def _handle(self, message: object, now: float) -> None:
        match message:
            case Rescan(trigger=trigger, reply=reply):
                result = self._scans.full_scan(trigger, now)
                if reply is not None and not reply.done():
                    self._startup.check(self._book)
                    self._book.publish()  # what the answer names is in /v1/plugins by then
                    reply.set_result(result)
            case Flooded():
                self._scans.flooded(message, now)
            case ProbeNow():
                self._plugins.probe_now(message, now)
            case OperationFailed():
                self._plugins.operation_failed(message)
            case RestartNow(name=name, reply=reply):
                try:
                    view = self._restarts.restart_now(name, now)
                except (UnknownPlugin, NotRestartable) as refused:
                    reply.set_exception(refused)
                else:
                    self._book.publish()  # /v1/plugins shows it restarting by the answer
                    reply.set_result(view)
            case RestartEnded():
                self._restarts.ended(message, now)
            case Reload():
                self._apply_reload(now)

    def _tick(self, now: float) -> None:
        timers = self._timers
        if self._heartbeat is not None and now >= timers.beat:  # first: whatever fails next
            interval, beat = self._heartbeat
            beat()
            timers.beat = now + interval
        if self._scans.burst(now):
            self._startup.check(self._book)
        self._scans.kept(now)
        self._restarts.tick(now)
        self._plugins.suspects(now)
        self._plugins.dispatch_due(now)
        if self._scans.due(now):
            self._startup.check(self._book)
        self._survive(self._stale.remove_stale, now)
        if self._book.publish_due(now):
            self._book.publish()
        self._report_status(now)

    def _shutdown(self) -> None:
        self._stopped.set()  # before the drain: a later put() drains for itself
        _refuse_all(self._mailbox.take())
        self._watcher.stop()
        self._calls.close()
        self._mailbox.close()
        self._plugins.close()
        self._restarts.close()
        self._watcher.join(2.0)
        self._startup.stopped()

    # --- status and reload ------------------------------------------------------------

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
        self._restarts.reload(new)
        if new.discovery.dirs != old.discovery.dirs:
            self._watcher.set_dirs(new.discovery.dirs)
        log.info("config_reloaded")
        self._scans.full_scan("reload", now)


def _not_restarting(snapshot: Snapshot, name: str) -> bool:
    """Held no longer: the plugin is there and not restarting (a restarted process that
    binds a new socket leaves the plugin unregistered for a moment: still held)."""
    view = snapshot.plugins.get(name)
    return view is not None and view.state is not PluginState.RESTARTING


def _refuse_all(messages: list[object]) -> None:
    """Answer every queued request: nobody waits out a timeout for a loop that left."""
    for message in messages:
        _refuse(message)


def _refuse(message: object) -> None:
    """Answer a request that the loop will never handle."""
    reply = message.reply if isinstance(message, Rescan | ProbeNow | RestartNow) else None
    if reply is not None and not reply.done():
        reply.set_exception(Stopping())
