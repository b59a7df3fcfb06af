"""The registry: the current immutable Snapshot and a bounded, numbered event log.

Events about plugins are appended by ``publish``, under the same lock as the snapshot
they describe: a reader who sees an event finds its change in the snapshot, and a reader
who sees a snapshot finds the events that led to it.

Runs on: ``publish`` and ``record`` from the supervisor thread only; ``snapshot``,
``wait`` and ``events`` from any thread. Readers never block the writer for longer
than a reference swap under a condition.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from volplugd.model import (
    EMPTY_SNAPSHOT,
    Event,
    EventType,
    JsonRecords,
    PluginState,
    PluginView,
    Snapshot,
)


class PendingEvent(NamedTuple):
    """An event to append with the next ``publish`` (it gets its number and time then)."""

    type: EventType
    plugin: str | None = None
    from_state: PluginState | None = None
    to_state: PluginState | None = None
    reason: str = ""


class Registry:
    """Publishes snapshots (re-encoding only views that changed) and keeps events."""

    def __init__(self, *, max_events: int = 10_000, clock: Callable[[], float] = time.time):
        self._snapshot = EMPTY_SNAPSHOT
        self._views: dict[str, PluginView] = {}  # the dict under the snapshot's proxy
        self._json: dict[str, tuple[PluginView, bytes]] = {}  # shared by the snapshots
        self._events: deque[Event] = deque(maxlen=max_events)
        self._seq = 0
        self._clock = clock
        self._changed = threading.Condition()

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def views(self) -> dict[str, PluginView]:
        """A new dict of the current snapshot's views, to edit into the next one: a
        C-level copy (``dict()`` of the snapshot's read-only proxy goes key by key, many
        times slower and all of it holding the GIL: docs/performance.md)."""
        return self._views.copy()

    def publish(self, views: Mapping[str, PluginView],
                changed: Iterable[str] | None = None,
                events: Sequence[PendingEvent] = ()) -> Snapshot:
        """Swap in a snapshot of ``views`` (in any order) and append ``events`` with it,
        atomically for readers. Only the ``changed`` names (default: all) are recounted,
        so a publish costs O(changes) apart from one C-level copy of ``views``. Nothing is
        encoded here: a record is encoded when a reader first asks for it
        (``JsonRecords``), once per version of the view."""
        old = self._snapshot
        names = views.keys() | old.plugins.keys() if changed is None else changed
        counts = dict(old.counts)
        for name in names:
            before, after = old.plugins.get(name), views.get(name)
            if before is after:
                continue
            if before is not None:
                counts[before.state.value] -= 1
            if after is not None:
                counts[after.state.value] += 1
            else:
                self._json.pop(name, None)
        plain = dict(views)
        plugins = MappingProxyType(plain)
        snap = Snapshot(plugins, JsonRecords(plugins, self._json),
                        generation=old.generation + 1, published_at=self._clock(),
                        counts=MappingProxyType(counts))
        with self._changed:
            self._snapshot, self._views = snap, plain
            for event in events:
                self._append(*event)
            self._changed.notify_all()
        return snap

    def wait(self, after_generation: int, timeout: float) -> Snapshot:
        """The first snapshot newer than ``after_generation``, or the current one at timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._snapshot.generation > after_generation, timeout)
            return self._snapshot

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float) -> Snapshot:
        """The first snapshot for which ``predicate`` holds (tested on each publish), or
        the current one after ``timeout`` s."""
        with self._changed:
            self._changed.wait_for(lambda: predicate(self._snapshot), timeout)
            return self._snapshot

    def record(self, type_: EventType, plugin: str | None = None,
               from_state: PluginState | None = None, to_state: PluginState | None = None,
               reason: str = "") -> Event:
        with self._changed:
            event = self._append(type_, plugin, from_state, to_state, reason)
            self._changed.notify_all()
        return event

    def _append(self, type_: EventType, plugin: str | None, from_state: PluginState | None,
                to_state: PluginState | None, reason: str) -> Event:
        """Number and keep one event (under ``self._changed``)."""
        self._seq += 1
        event = Event(self._seq, self._clock(), type_, plugin, from_state, to_state, reason)
        self._events.append(event)
        return event

    def events(self, since: int, wait: float = 0.0) -> tuple[Event, ...]:
        """Events with ``seq > since`` (the oldest kept first); waits up to ``wait`` s."""
        with self._changed:
            if wait > 0:
                self._changed.wait_for(lambda: self._seq > since, wait)
            if self._seq <= since or not self._events:
                return ()
            # From the newest end: a follower asks for the last few of 10 000 events.
            newest = itertools.islice(reversed(self._events), self._seq - max(since, 0))
            return tuple(reversed(list(newest)))
