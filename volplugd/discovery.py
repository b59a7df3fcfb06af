"""Discovery: which plugins the filesystem says should exist, and hints that it changed.

``scan(dirs)`` is the truth: it reads the plugin directories (Docker's rules: sockets
beat spec files, an earlier directory beats a later one) and returns the desired state.
It is pure apart from reading the filesystem and never raises for filesystem trouble.
Runs on: the supervisor thread.

``Watcher`` only gives hints. Its event handler runs on watchdog's dispatcher thread,
under the observer's lock, and its overflow hook on watchdog's inotify reader thread:
both only call ``put`` and swallow every error, because a raising handler kills
watchdog's observer for good (watchdog #793). ``start``/``refresh``/``set_dirs``/
``stop`` run on the supervisor (or daemon main) thread; ``up`` may be read anywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

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

from volplugd.log import get_logger
from volplugd.model import DesiredPlugin, FileIdentity, FsHint, Kind, Rescan
from volplugd.plugin.address import PluginAddress, address_from_socket, load_address
from volplugd.plugin.errors import PluginAddressError

__all__ = ["Ignored", "ScanResult", "Watcher", "plugin_path_of", "scan", "scan_one"]

log = get_logger(__name__)

_KINDS = {".sock": Kind.SOCK, ".spec": Kind.SPEC, ".json": Kind.JSON}
# Docker's order inside one directory: flat before nested, .spec before .json.
_POSITION = {(Kind.SOCK, False): 0, (Kind.SOCK, True): 1, (Kind.SPEC, False): 0,
             (Kind.SPEC, True): 1, (Kind.JSON, False): 2, (Kind.JSON, True): 3}
_WRONG_TYPE = {Kind.SOCK: "not a socket", Kind.SPEC: "not a regular file",
               Kind.JSON: "not a regular file"}
_MANAGED = re.compile(r"[0-9a-f]{64}")  # Docker's managed (v2) plugin folders


@dataclass(frozen=True, slots=True)
class Ignored:
    """A file that looks like a plugin's but is not used, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ScanResult:
    desired: Mapping[str, DesiredPlugin]  # name -> winner, sorted by name
    ignored: tuple[Ignored, ...]  # the caller logs each (path, reason) once
    dirs_present: tuple[str, ...]


class _Candidate(NamedTuple):  # a tuple: scans build a thousand of these
    rank: tuple[int, int, int]
    name: str
    path: str
    kind: Kind
    st: os.stat_result


class _Found:
    """What one scan collects before the winners are chosen."""

    def __init__(self) -> None:
        self.candidates: dict[str, list[_Candidate]] = {}
        self.ignored: list[Ignored] = []
        self.present: list[str] = []

    def add(self, path: str, name: str, kind: Kind, order: int, nested: bool) -> None:
        try:
            st = os.stat(path)  # follows symlinks: a plugin's identity is its target's
        except OSError as err:
            _unstattable(path, err, self.ignored)
            return
        if not (stat.S_ISSOCK(st.st_mode) if kind is Kind.SOCK else stat.S_ISREG(st.st_mode)):
            self.ignored.append(Ignored(path, _WRONG_TYPE[kind]))
            return
        rank = (0 if kind is Kind.SOCK else 1, order, _POSITION[kind, nested])
        candidate = _Candidate(rank, name, path, kind, st)
        others = self.candidates.get(name)
        if others is None:
            self.candidates[name] = [candidate]
        else:
            others.append(candidate)

    def result(self) -> ScanResult:
        desired = {}
        for name in sorted(self.candidates):
            winner = _choose(self.candidates[name], self.ignored)
            if winner is not None:
                desired[name] = winner
        return ScanResult(MappingProxyType(desired), tuple(self.ignored), tuple(self.present))


def scan(dirs: Sequence[str]) -> ScanResult:
    """Every plugin the directories offer, resolved by Docker's precedence."""
    found = _Found()
    for order, root in _existing_dirs(dirs, found):
        _scan_dir(root, order, found)
    return found.result()


def scan_one(name: str, dirs: Sequence[str]) -> ScanResult:
    """What ``scan(dirs)`` would say about ``name`` alone, looking at its paths only."""
    found = _Found()
    for order, root in _existing_dirs(dirs, found):
        if not _is_plugin_name(name):
            continue
        for kind, suffix in ((Kind.SOCK, ".sock"), (Kind.SPEC, ".spec"), (Kind.JSON, ".json")):
            found.add(os.path.join(root, name + suffix), name, kind, order, nested=False)
            if not _MANAGED.fullmatch(name):
                found.add(os.path.join(root, name, name + suffix), name, kind, order, nested=True)
    return found.result()


def plugin_path_of(path: str, dirs: Sequence[str]) -> str | None:
    """The plugin name whose files a changed ``path`` may concern, or None."""
    path = os.path.abspath(path)
    for root in _normalized(dirs):
        if not _inside(path, root):
            continue
        first, _, rest = path[len(root):].lstrip("/").partition("/")
        stem, suffix = os.path.splitext(first)
        if not rest and suffix in _KINDS:
            return stem if _is_plugin_name(stem) else None
        # A plugin's folder, or something in it (Docker's managed folders are not ours).
        return first if _is_plugin_name(first) and not _MANAGED.fullmatch(first) else None
    return None


def _is_plugin_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and "/" not in name


def _normalized(dirs: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(os.path.abspath(d) for d in dirs))


def _inside(path: str, root: str) -> bool:
    return path.startswith(root if root.endswith("/") else root + "/")


def _existing_dirs(dirs: Sequence[str], found: _Found) -> list[tuple[int, str]]:
    """The configured directories that exist, each real directory once (first wins)."""
    seen: set[tuple[int, int]] = set()
    existing = []
    for order, root in enumerate(_normalized(dirs)):
        try:
            st = os.stat(root)
        except (FileNotFoundError, NotADirectoryError):
            continue  # a missing directory is normal: it may appear later
        except OSError as err:
            found.ignored.append(Ignored(root, f"cannot stat: {err.strerror}"))
            continue
        if not stat.S_ISDIR(st.st_mode):
            found.ignored.append(Ignored(root, "not a directory"))
        elif (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            existing.append((order, root))
            found.present.append(root)
    return existing


def _scan_dir(root: str, order: int, found: _Found) -> None:
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                _consider(entry, order, found)
    except FileNotFoundError:
        return  # removed while we looked: the next scan will not see it either
    except OSError as err:
        found.ignored.append(Ignored(root, f"cannot read: {err.strerror}"))


def _consider(entry: os.DirEntry[str], order: int, found: _Found) -> None:
    """One entry of a plugin directory: a plugin file, a plugin's folder, or noise."""
    name = entry.name
    if name.startswith("."):
        return
    stem, dot, suffix = name.rpartition(".")
    kind = _KINDS.get(dot + suffix) if stem else None
    if kind is not None:
        found.add(entry.path, stem, kind, order, nested=False)
    elif not _MANAGED.fullmatch(name) and _is_dir(entry):
        _scan_folder(entry.path, name, order, found)


def _scan_folder(folder: str, name: str, order: int, found: _Found) -> None:
    """``<name>/<name>.sock|.spec|.json``; anything else in the folder is not ours."""
    wanted = {name + suffix: kind for suffix, kind in _KINDS.items()}
    try:
        with os.scandir(folder) as entries:
            hits = [(e.path, wanted[e.name]) for e in entries if e.name in wanted]
    except OSError:
        return  # a folder we cannot read holds no plugin we could use
    for path, kind in hits:
        found.add(path, name, kind, order, nested=True)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _unstattable(path: str, err: OSError, ignored: list[Ignored]) -> None:
    if not isinstance(err, FileNotFoundError | NotADirectoryError):
        ignored.append(Ignored(path, f"cannot stat: {err.strerror}"))
    elif os.path.islink(path):
        ignored.append(Ignored(path, "dangling symlink"))
    # else there is no such file (or it vanished during the scan): nothing to say


def _choose(candidates: list[_Candidate], ignored: list[Ignored]) -> DesiredPlugin | None:
    """The best usable candidate; the others it shadows become warnings."""
    if len(candidates) == 1:  # the common case, kept cheap
        best = candidates[0]
        address = _address(best, ignored)
        return None if address is None else DesiredPlugin(
            best.name, address, best.path, best.kind, FileIdentity.of(best.st))
    candidates.sort()  # by rank first; ranks are unique per candidate path
    for i, best in enumerate(candidates):
        address = _address(best, ignored)
        if address is None:
            continue
        # Two links to the same file are one plugin, not a duplicate.
        shadowed = [c.path for c in candidates[i + 1:] if not _same_file(c.st, best.st)]
        ignored.extend(Ignored(p, f"shadowed by {best.path}") for p in shadowed)
        return DesiredPlugin(best.name, address, best.path, best.kind, FileIdentity.of(best.st),
                             warnings=tuple(f"shadows {p}" for p in shadowed))
    return None


def _address(candidate: _Candidate, ignored: list[Ignored]) -> PluginAddress | None:
    try:
        if candidate.kind is Kind.SOCK:
            return address_from_socket(candidate.path)
        return load_address(candidate.path)
    except PluginAddressError as err:
        if os.path.lexists(candidate.path):  # else it vanished between stat and read
            ignored.append(Ignored(candidate.path, err.problem))
    return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --- the watcher: inotify through watchdog, hints only ------------------------------

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
    if any(path == root or _inside(root, path) for root in dirs):
        return Rescan("watcher_restart")  # first: a plugin dir may lie inside another
    return FsHint(path) if plugin_path_of(path, dirs) else None


class Watcher:
    """watchdog observer over the plugin dirs, kept alive and re-armed by ``refresh()``.

    ``put`` must not block (e.g. ``queue.SimpleQueue.put``): it runs on watchdog's threads.
    """

    def __init__(self, dirs: Sequence[str], put: Callable[[object], None]) -> None:
        self.dirs = _normalized(dirs)  # swapped whole; read by the handler thread
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
            self.dirs = _normalized(dirs)
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
