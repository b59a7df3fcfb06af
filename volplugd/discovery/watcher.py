"""Discovery's watcher: hints that the plugin directories changed, through watchdog.

``Watcher`` only gives hints (``FsHint``/``Rescan``); ``scan`` stays the truth. Its event
handler runs on watchdog's dispatcher thread, under the observer's lock, and its inotify
overflow hook on watchdog's inotify reader thread: both only call ``put`` and swallow
every error, because a raising handler kills watchdog's observer for good (watchdog #793).
``start``/``refresh``/``set_dirs``/``stop`` run on the supervisor (or daemon main) thread;
``up`` may be read anywhere.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, EventEmitter, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

from volplugd.contracts import FsHint, Rescan
from volplugd.discovery.scan import is_inside, normalized_dirs, plugin_path_of
from volplugd.log import get_logger

__all__ = ["Watcher"]

log = get_logger(__name__)

# No IN_OPEN/IN_CLOSE_NOWRITE: our own scan reading a .spec file must not hint.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent,
    DirMovedEvent, FileClosedEvent, FileModifiedEvent, FileAttribEvent,
]
_SETTLE_ROUNDS = 4  # a directory may appear while we re-arm: look again, a few times
_JOIN_TIMEOUT = 5.0


class _InotifyReader(InotifyFD):
    """watchdog's inotify reader, plus the one fact it keeps from handlers: overflow.

    watchdog 7.1 sees IN_Q_OVERFLOW here, logs a warning and discards what it had
    buffered, but tells no handler (#654); this subclass reports it first.
    """

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self.name = "volplugd-inotify"
        self._on_overflow = on_overflow

    def handle_event(self, event: InotifyEvent) -> None:
        if event.is_queue_overflow:
            self._on_overflow()
        super().handle_event(event)


class _Observer(BaseObserver):
    """InotifyObserver with our reader: one inotify instance per observer."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        self.reader = _InotifyReader(on_overflow)
        self.reader.start()
        super().__init__(InotifyEmitter, inotify_fd=self.reader)
        self.name = "volplugd-watcher"

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.reader.stop()
        self.reader.join(_JOIN_TIMEOUT)


@dataclass(frozen=True, slots=True)
class _Spec:
    """One inotify watch we want: a configured dir, or the nearest parent of a missing one."""

    path: str  # the real path watched
    recursive: bool  # True: the plugin directory itself; False: a parent awaiting it
    dev: int
    ino: int  # a directory deleted and recreated is a new watch
    shown: str = field(compare=False)  # the same place as the configured dirs name it


def _spec_for(root: str) -> _Spec | None:
    target = root
    while True:
        with contextlib.suppress(OSError):
            st = os.stat(target)
            if stat.S_ISDIR(st.st_mode):
                return _Spec(os.path.realpath(target), target == root, st.st_dev, st.st_ino,
                             target)
        parent = os.path.dirname(target)
        if parent == target:
            return None
        target = parent


class _Hints(FileSystemEventHandler):
    """One watch's events as hints: only calls ``put``, never raises, never blocks."""

    def __init__(self, watcher: Watcher, spec: _Spec) -> None:
        self._watcher = watcher
        self._real = spec.path
        self._shown = spec.shown

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            for raw in (event.src_path, event.dest_path):
                if raw:
                    self._hint(os.fsdecode(raw))
        except BaseException:  # noqa: BLE001 -- a raising handler kills watchdog's observer
            self._watcher.lost.append(True)  # refresh() reports it: the caller rescans

    def _hint(self, real_path: str) -> None:
        path = self._shown + real_path[len(self._real):]
        message = _classify(path, self._watcher.dirs)
        if message is not None:
            self._watcher.put(message)


def _classify(path: str, dirs: tuple[str, ...]) -> FsHint | Rescan | None:
    """A path inside a plugin dir is a hint; a plugin dir (or its parent) coming or going
    means the watches must be re-armed; anything else next to a parent is noise."""
    if any(path == root or is_inside(root, path) for root in dirs):
        return Rescan("watcher_restart")  # first: a plugin dir may lie inside another
    return FsHint(path) if plugin_path_of(path, dirs) else None


class Watcher:
    """watchdog observer over the plugin dirs, kept alive and re-armed by ``refresh()``.

    ``put`` must not block (e.g. ``queue.SimpleQueue.put``): it runs on watchdog's threads.
    """

    def __init__(self, dirs: Sequence[str], put: Callable[[object], None]) -> None:
        self.dirs = normalized_dirs(dirs)  # swapped whole; read by the handler thread
        self.put = put
        # A ``put`` failed on a watchdog thread. deque.append/popleft are atomic, and a
        # signal that lands while refresh() reads it is covered by the rescan it asks for.
        self.lost: deque[bool] = deque(maxlen=1)
        self._lock = threading.Lock()
        self._observer: _Observer | None = None
        self._watches: dict[_Spec, ObservedWatch] = {}
        self._emitters: tuple[EventEmitter, ...] = ()  # for ``up``, read from any thread
        self._complete = False  # every wanted watch is in place
        self._started = False
        self._stopped = False

    @property
    def up(self) -> bool:
        observer = self._observer
        return (not self._stopped and self._complete and observer is not None
                and observer.is_alive() and observer.reader.is_alive()
                and all(e.is_alive() for e in self._emitters))

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._ensure_observer()
            self._settle()

    def refresh(self) -> bool:
        """Re-arm after a full scan; True if something was restarted or re-watched (or
        a hint was lost), so events may have been missed: the caller rescans."""
        with self._lock:
            if not self._started or self._stopped:
                return False
            changed = self._ensure_observer()
            changed |= self._settle()
            if self.lost:
                self.lost.popleft()
                return True
            return changed

    def set_dirs(self, dirs: Sequence[str]) -> None:
        with self._lock:
            self.dirs = normalized_dirs(dirs)
            if self._started and not self._stopped:
                self._settle()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._watches.clear()
            if self._observer is not None:
                self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
        observer = self._observer
        if observer is not None and observer.is_alive():
            observer.join(timeout)

    # --- under self._lock ---

    def _ensure_observer(self) -> bool:
        """A live observer (and reader); True if a dead one had to be replaced."""
        old = self._observer
        if old is not None and old.is_alive() and old.reader.is_alive():
            return False
        self._observer = None
        self._watches.clear()
        if old is not None:
            old.stop()  # also stops the emitters a dead dispatcher left running
            old.join(_JOIN_TIMEOUT)
        try:
            observer = _Observer(self._overflow)
            observer.start()
        except OSError as err:  # e.g. the inotify instance limit: scans still work
            log.warning("watcher_start_failed", error=str(err))
            return False
        self._observer = observer
        return old is not None

    def _settle(self) -> bool:
        changed = False
        for _ in range(_SETTLE_ROUNDS):
            if not self._sync_watches():
                break
            changed = True
        return changed

    def _sync_watches(self) -> bool:
        """Make the watches match the dirs as they are now; True if any was added."""
        observer = self._observer
        if observer is None:
            self._complete = False
            return False
        wanted = {s for s in map(_spec_for, self.dirs) if s is not None}
        alive = {e.watch for e in list(observer.emitters) if e.is_alive()}
        for spec, watch in list(self._watches.items()):
            if spec not in wanted or watch not in alive:
                self._unschedule(observer, spec)
        added = [self._schedule(observer, s) for s in wanted if s not in self._watches]
        self._complete = len(self._watches) == len(wanted)
        self._emitters = tuple(observer.emitters)
        return any(added)

    def _schedule(self, observer: _Observer, spec: _Spec) -> bool:
        try:
            self._watches[spec] = observer.schedule(
                _Hints(self, spec), spec.path, recursive=spec.recursive, event_filter=_EVENTS)
        except OSError as err:  # vanished meanwhile, or the watch limit: next refresh retries
            log.warning("watch_failed", path=spec.shown, error=str(err))
            return False
        return True

    def _unschedule(self, observer: _Observer, spec: _Spec) -> None:
        watch = self._watches.pop(spec)
        with contextlib.suppress(KeyError):
            observer.unschedule(watch)

    def _overflow(self) -> None:
        """Runs on the inotify reader thread: events were lost, ask for a full scan."""
        try:
            self.put(Rescan("overflow"))
        except BaseException:  # noqa: BLE001 -- must not kill watchdog's reader thread
            self.lost.append(True)
