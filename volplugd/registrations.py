"""The supervisor's book: one record per plugin registration, and what the next publish
carries; and the ``Slots`` that bound one registration's volume operations in flight.

A ``Registration`` holds all the loop knows about one registration of a plugin name:
its ``policy.Tracked`` (desired entry, view, token, retry state), its client and the
fair-share ``Slots`` of its volume operations, when it next needs work, the call in
flight, its second chance, the ``probe`` requests waiting for its next result, and who
serves it (``process``; ``exited`` and ``suspect`` while a probe is to tell whether it
still does).
Evicting a plugin is one ``pop``.

The ``Book`` keeps the records by name, a heap of due times (lazily deleted: an entry
counts only while it matches its record's ``due``), and the outbox of the next publish:
the names whose view changed and the events that go out with them. It answers when it
next needs the loop (``wake_at``): the earliest due time, or the end of a lazy
publish's wait. The published snapshot itself is the registry's; a publish copies it
and applies the changed names.

Runs on: the supervisor thread; API threads only read a record's ``client``, ``slots``
and ``token`` (``Commands.call``); ``Slots`` from any thread (control requests).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from volplugd import policy
from volplugd.log import get_logger
from volplugd.model import EventType, PluginState, PluginView
from volplugd.plugin.client import PluginClient
from volplugd.registry import PendingEvent, Registry
from volplugd.supervision.identity import ProcessInfo

__all__ = ["Book", "Registration", "Slots"]

log = get_logger(__name__)


class Slots:
    """At most ``limit`` holders at once, and at most ``limit`` more callers waiting.

    ``acquire`` never blocks past its ``wait``, and a caller that finds the queue full
    is refused at once: a hung plugin costs its callers at most ``wait`` seconds each,
    and never more than ``limit`` calls that really wait on the plugin.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        self.limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._held = 0
        self._waiting = 0

    @property
    def in_flight(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting

    def acquire(self, wait: float) -> bool:
        """Take a slot, waiting up to ``wait`` s if the queue has room; False if none."""
        with self._cond:
            if self._held < self.limit:
                self._held += 1
                return True
            if wait <= 0 or self._waiting >= self.limit:
                return False
            self._waiting += 1
            try:
                if not self._cond.wait_for(lambda: self._held < self.limit, wait):
                    return False
                self._held += 1
                return True
            finally:
                self._waiting -= 1

    def release(self) -> None:
        with self._cond:
            if self._held <= 0:
                raise RuntimeError("Slots.release() without a slot held")
            self._held -= 1
            self._cond.notify()

    def resize(self, limit: int) -> None:
        """A new bound (a reload); calls in flight keep their slots and count."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        with self._cond:
            self.limit = limit
            self._cond.notify_all()


@dataclass(eq=False, slots=True)
class Registration:
    """One registration of a plugin name, everything about it in one place."""

    tracked: policy.Tracked  # desired entry, view, token, retry state
    client: PluginClient
    slots: Slots  # its volume operations in flight (fair share: plugin.max_in_flight)
    due: float | None = None  # when it next needs work (None: not scheduled)
    serving: float | None = None  # the due time its call in flight serves (None: no call)
    second_chance: bool = False  # refused once right after discovery, retried soon
    waiters: list[Future[PluginView]] = field(default_factory=list)
    process: ProcessInfo | None = None  # who serves it, from the kernel (None: not known)
    exited: int | None = None  # pid of its watched process that exited; the next probe decides
    suspect: bool = False  # an operation waited past probe.timeout: probed every second

    @property
    def name(self) -> str:
        return self.tracked.desired.name

    @property
    def token(self) -> int:
        return self.tracked.token

    @property
    def state(self) -> PluginState:
        return self.tracked.view.state

    @property
    def view(self) -> PluginView:
        return self.tracked.view

    @property
    def probing(self) -> bool:
        """Its work is probes (not activations)."""
        return self.tracked.view.state in (PluginState.READY, PluginState.UNHEALTHY)

    def answer_waiters(self) -> None:
        for reply in self.waiters:
            if not reply.done():
                reply.set_result(self.tracked.view)
        self.waiters.clear()

    def fail_waiters(self, error: Exception) -> None:
        for reply in self.waiters:
            if not reply.done():
                reply.set_exception(error)
        self.waiters.clear()


class Book:
    """The records by name, their due times, and the outbox of the next publish."""

    def __init__(self, registry: Registry, clock: Callable[[], float]) -> None:
        self._registry = registry
        self._clock = clock
        self.records: dict[str, Registration] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._changed: set[str] = set()  # names whose view changed since the last publish
        self._events: list[PendingEvent] = []  # events that go out with that publish
        self.urgent = False  # publish at the end of this iteration
        self.lazy_since: float | None = None  # a timestamp-only change waits since then
        self.moved: set[str] = set()  # added, popped or changed state: ``restarts`` reads it

    # -- records ---------------------------------------------------------------------
    def get(self, name: str) -> Registration | None:
        return self.records.get(name)

    def current(self, name: str, token: int) -> Registration | None:
        """The record of registration ``token``; None once it was evicted or replaced."""
        record = self.records.get(name)
        return record if record is not None and record.tracked.token == token else None

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self.records.values()))

    def add(self, record: Registration) -> None:
        self.records[record.name] = record
        self._changed.add(record.name)
        self.moved.add(record.name)

    def pop(self, name: str) -> Registration:
        """Evict: the record and everything about it goes; its heap entries go stale."""
        record = self.records.pop(name)
        self._changed.add(name)
        self.moved.add(name)
        return record

    # -- due times ---------------------------------------------------------------------
    def at(self, record: Registration, when: float) -> None:
        record.due = when
        heapq.heappush(self._heap, (when, record.tracked.token, record.name))

    def pop_due(self, limit: float) -> list[tuple[float, Registration]]:
        """The records due at or before ``limit``, unscheduled, earliest first."""
        out = []
        while self._heap and self._heap[0][0] <= limit:
            when, token, name = heapq.heappop(self._heap)
            record = self.current(name, token)
            if record is not None and record.due == when:
                record.due = None
                out.append((when, record))
        return out

    def wake_at(self) -> float | None:
        """When the book next needs the loop: its earliest due time, or the moment a
        lazy publish has waited long enough (None: neither)."""
        lazy = None if self.lazy_since is None else self.lazy_since + policy.LAZY_PUBLISH
        due = self.next_due()
        return lazy if due is None else due if lazy is None else min(due, lazy)

    def next_due(self) -> float | None:
        """The earliest due time of a record (stale heap entries are dropped)."""
        while self._heap:
            when, token, name = self._heap[0]
            record = self.current(name, token)
            if record is not None and record.due == when:
                return when
            heapq.heappop(self._heap)
        return None

    # -- changes and the outbox ----------------------------------------------------------
    def update(self, record: Registration, new: policy.Tracked, *, urgent: bool = False) -> None:
        """Store a new record; a state change is an event, a log line, and urgent."""
        old, record.tracked = record.tracked, new
        self._changed.add(record.name)
        if old.state is not new.state:
            self.moved.add(record.name)
            reason = new.view.last_error or "ok"
            self.event(PendingEvent(EventType.STATE_CHANGED, record.name, old.state,
                                    new.state, reason))
            log.info(_STATE_EVENTS[new.state], plugin=record.name, address=new.view.address,
                     **{"from": old.state.value}, reason=reason,
                     latency_ms=_ms(new.view.probe_latency_seconds))
            urgent = True
        if urgent:
            self.urgent = True
        elif self.lazy_since is None:
            self.lazy_since = self._clock()

    def event(self, event: PendingEvent) -> None:
        """An event about a plugin goes out with the next publish, together with the
        snapshot that shows its change (so /v1/events is never ahead of /v1/plugins, nor
        behind it); one about no plugin (a rescan) at once, unless others wait before it."""
        if event.plugin is None and not self._events:
            self._registry.record(*event)
        else:
            self._events.append(event)
            self.urgent = True

    def publish_due(self, now: float) -> bool:
        return policy.publish_now(self.urgent, self.lazy_since, now)

    def publish(self) -> None:
        """The last snapshot with the changed names' current views (or without them)."""
        views = self._registry.views()
        for name in self._changed:
            record = self.records.get(name)
            if record is None:
                views.pop(name, None)
            else:
                views[name] = record.tracked.view
        self._registry.publish(views, self._changed, self._events)
        self._changed = set()
        self._events = []
        self.urgent = False
        self.lazy_since = None


_STATE_EVENTS = {
    PluginState.READY: "plugin_ready",
    PluginState.UNHEALTHY: "plugin_unhealthy",
    PluginState.RESTARTING: "plugin_restarting",
    PluginState.REJECTED: "plugin_rejected",
    PluginState.ACTIVATING: "plugin_activating",
}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
