"""Discovery's watcher: hints that the plugin directories changed, from inotify.

``Watcher`` only gives hints (``FsHint``/``Rescan``/``Flooded``); ``scan`` stays the truth.
It watches exactly what Docker's layout needs, one level deep and never recursively:
each configured dir (or, while it is missing, the nearest parent that exists) and each
``<name>/`` folder in a dir, at most ``MAX_FOLDERS`` of those per dir (past it a
warning, once per dir; the periodic scan still finds what lies in the others). Nothing a
user creates below that costs a watch, a thread or a recursion.

It uses watchdog's inotify reader (``InotifyFD``: the inotify instance, its reader
thread and its dispatcher thread) with one callback per watched folder, and none of
watchdog's emitters, event objects or event queues: each inotify event costs one call.
Two bounds keep a storm in one dir from delaying discovery in another:

* each watch tree (a dir and its ``<name>/`` folders, or a parent) may send
  ``FLOOD_EVENTS`` events within ``FLOOD_WINDOW`` seconds; the next one mutes it (its
  watches are removed, so the kernel stops queueing its events) and puts one
  ``Flooded(dir, until)``: at ``until`` the loop re-arms it (``refresh``) and rescans;
* events read from the kernel but not yet dispatched are bounded (``MAX_BACKLOG``
  buffers): past it they are dropped and one ``Rescan("overflow")`` is put, as for a
  kernel queue overflow.

Runs on: the callbacks on watchdog's dispatcher thread (they only ``put``, add or remove a
watch, and swallow every error: an exception there would end the reader for good);
``start``/``refresh``/``set_dirs``/``stop`` on the supervisor (or daemon main) thread;
``up`` anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)

from volplugd.contracts import Flooded, FsHint, Rescan
from volplugd.discovery.scan import is_inside, is_plugin_folder, normalized_dirs, plugin_path_of
from volplugd.log import get_logger

__all__ = ["FLOOD_EVENTS", "FLOOD_WINDOW", "MAX_BACKLOG", "MAX_FOLDERS", "Watcher"]

log = get_logger(__name__)

MAX_FOLDERS = 256  # <name>/ folders watched per plugin dir
FLOOD_EVENTS = 1000  # events a watch tree may send per FLOOD_WINDOW before it is muted
FLOOD_WINDOW = 1.0  # seconds; also how long a flooding tree stays muted
MAX_BACKLOG = 64  # inotify read buffers (up to 64 KiB each) waiting for the dispatcher

_C = InotifyConstants
# No IN_OPEN/IN_CLOSE_NOWRITE (our own scan reading a .spec file must not hint), no
# IN_MODIFY (each write(); IN_CLOSE_WRITE says the same once). No symlink is followed.
_MASK = Mask(_C.IN_CREATE | _C.IN_DELETE | _C.IN_MOVED_FROM | _C.IN_MOVED_TO
             | _C.IN_CLOSE_WRITE | _C.IN_ATTRIB | _C.IN_DELETE_SELF | _C.IN_MOVE_SELF
             | _C.IN_ONLYDIR | _C.IN_DONT_FOLLOW | _C.IN_EXCL_UNLINK)
_NEW_DIR = _C.IN_CREATE | _C.IN_MOVED_TO
_SELF_GONE = _C.IN_DELETE_SELF | _C.IN_MOVE_SELF
_SETTLE_ROUNDS = 4  # a directory may appear while we re-arm: look again, a few times
_JOIN_TIMEOUT = 5.0


class _Reader(InotifyFD):
    """watchdog's inotify reader, plus what it keeps from callbacks: overflow, and a
    bound on what it has read ahead of its dispatcher.

    watchdog 7.1 sees IN_Q_OVERFLOW, logs a warning and tells callbacks only through
    hooks a plain callback may miss (#654), and its reader thread queues what it reads
    for the dispatcher without a bound; this subclass reports both as ``on_overflow``.
    It also closes its descriptors when stopped before its thread first read (watchdog
    7.1 leaves them open then).
    """

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__()
        self.name = "volplugd-inotify"
        self._on_overflow = on_overflow
        self._seen = 0
        self._released = False

    def run(self) -> None:
        try:
            super().run()
        finally:
            with self._lock:
                if self._closed:
                    self._close_resources()

    def _close_resources(self) -> None:  # under self._lock, in watchdog and in run()
        if not self._released:
            self._released = True
            super()._close_resources()

    def handle_event(self, event: InotifyEvent) -> None:  # the dispatcher thread
        self._seen += 1
        if event.is_queue_overflow or (self._seen % 256 == 0 and self._shed()):
            self._on_overflow()
            if event.is_queue_overflow:
                return  # watchdog's own handling only logs, and would warn for each
        super().handle_event(event)

    def _shed(self) -> bool:
        """Drop the read-ahead past MAX_BACKLOG buffers; True if any was dropped."""
        backlog = self._raw_queue  # watchdog 7.1's SimpleQueue (tests hold us to it)
        if backlog.qsize() <= MAX_BACKLOG:
            return False
        with contextlib.suppress(Exception):
            while backlog.qsize() > 0:
                if not backlog.get_nowait():
                    backlog.put(b"")  # the reader's stop sentinel: keep it
                    break
        return True


@dataclass(frozen=True, slots=True)
class _Spec:
    """One watch tree we want: a configured dir, or the nearest parent of a missing one."""

    path: str  # the real path watched
    is_dir: bool  # True: the plugin directory itself; False: a parent awaiting it
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


class _Tree:
    """A spec's watches (its folder, and for a dir its ``<name>/`` folders) and its
    flood budget. Mutated under the watcher's ``_watches`` lock."""

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.folders: dict[str, _Folder] = {}  # "" (the spec's folder) or a <name>
        self.muted_until: float | None = None
        self.window_start = 0.0
        self.events = 0
        self.over_limit_said = False

    def flooding(self, now: float) -> bool:
        """Count one event; True when it is one too many for the current window."""
        if now - self.window_start >= FLOOD_WINDOW:
            self.window_start, self.events = now, 0
        self.events += 1
        return self.events > FLOOD_EVENTS


class _Folder:
    """One inotify watch's callback (watchdog's ``WatchCallback``): events as hints."""

    def __init__(self, watcher: Watcher, tree: _Tree, name: str) -> None:
        self.watcher = watcher
        self.tree = tree
        self.name = name  # "" for the tree's own folder, else the <name>/ folder
        self.shown = tree.spec.shown + ("/" + name if name else "")
        self.id = CallbackId(id(self))
        self.wd = WatchDescriptor(-1)

    def on_event(self, event: InotifyEvent) -> None:
        try:
            self.watcher.event(self, event)
        except BaseException:  # noqa: BLE001 -- would end watchdog's dispatcher thread
            self.watcher.lost.append(True)  # refresh() reports it: the caller rescans

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        try:
            self.watcher.deleted(self)
        except BaseException:  # noqa: BLE001 -- same as on_event
            self.watcher.lost.append(True)

    def on_queue_overflow(self) -> None:
        pass  # the reader reports overflow once, for every watch

    def on_events_lost(self) -> None:
        pass


class Watcher:
    """Non-recursive inotify watches over the plugin dirs, kept alive and re-armed by
    ``refresh()``.

    ``put`` must not block (e.g. ``queue.SimpleQueue.put``): it runs on watchdog's threads.
    """

    def __init__(self, dirs: Sequence[str], put: Callable[[object], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dirs = normalized_dirs(dirs)  # swapped whole; read by the dispatcher thread
        self.put = put
        self._clock = clock
        # A ``put`` failed on a watchdog thread. deque.append/popleft are atomic, and a
        # signal that lands while refresh() reads it is covered by the rescan it asks for.
        self.lost: deque[bool] = deque(maxlen=1)
        self._lock = threading.Lock()  # start/refresh/set_dirs/stop, one at a time
        # The watch table: held only around adding and removing watches (syscalls), on
        # either thread; reentrant because the reader's close() calls back on_watch_deleted.
        self._watches = threading.RLock()
        self._reader: _Reader | None = None
        self._trees: dict[_Spec, _Tree] = {}
        self._complete = False  # every wanted tree is in place (or muted on purpose)
        self._started = False
        self._stopped = False

    @property
    def up(self) -> bool:
        reader = self._reader
        return (not self._stopped and self._complete and reader is not None
                and reader.is_alive())

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._ensure_reader()
            self._settle()

    def refresh(self) -> bool:
        """Re-arm every watch (new dirs and ``<name>/`` folders, muted trees whose time
        is up); call it before a full scan. True if the reader had to be replaced or a
        hint was lost, so events may have been missed: worth a warning."""
        with self._lock:
            if not self._started or self._stopped:
                return False
            restarted = self._ensure_reader()
            self._settle()
            if self.lost:
                self.lost.popleft()
                return True
            return restarted

    def set_dirs(self, dirs: Sequence[str]) -> None:
        with self._lock:
            self.dirs = normalized_dirs(dirs)
            if self._started and not self._stopped:
                self._settle()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            with self._watches:
                self._trees.clear()
            if self._reader is not None:
                self._reader.stop()

    def join(self, timeout: float | None = None) -> None:
        reader = self._reader
        if reader is not None and reader.is_alive():
            reader.join(timeout)

    # --- the dispatcher thread (through _Folder) ---

    def event(self, folder: _Folder, event: InotifyEvent) -> None:
        tree = folder.tree
        if tree.muted_until is not None or self._trees.get(tree.spec) is not tree:
            return  # queued before the watch was removed
        if tree.flooding(self._clock()):
            self._mute(tree)
            return
        if event.mask & _SELF_GONE:
            if folder.name:  # a <name>/ folder moved or deleted: its plugin may have gone
                self._forget_folder(tree, folder.name)
                self.put(FsHint(folder.shown))
            else:  # the dir itself went: re-arm on its parent
                self.put(Rescan("watcher_restart"))
            return
        name = os.fsdecode(event.name)
        path = folder.shown + "/" + name
        if tree.spec.is_dir and not folder.name and event.is_directory:
            if event.mask & _NEW_DIR and is_plugin_folder(name):
                self._watch_folder(tree, name)  # first: what it holds from now on is hinted
            elif event.mask & _C.IN_MOVED_FROM:
                self._forget_folder(tree, name)
        message = _classify(path, self.dirs)
        if message is not None:
            self.put(message)

    def deleted(self, folder: _Folder) -> None:
        """The kernel dropped a watch (its folder was deleted, or unmounted)."""
        with self._watches:
            if folder.tree.folders.get(folder.name) is folder:
                del folder.tree.folders[folder.name]
                if not folder.name:
                    self._complete = False

    def _mute(self, tree: _Tree) -> None:
        until = self._clock() + FLOOD_WINDOW
        with self._watches:
            if tree.muted_until is not None:
                return
            tree.muted_until = until
            self._remove_all(tree)
        self.put(Flooded(tree.spec.shown, until))

    def _overflow(self) -> None:
        """Events were lost (kernel overflow or our read-ahead bound): ask for a full scan."""
        try:
            self.put(Rescan("overflow"))
        except BaseException:  # noqa: BLE001 -- must not end watchdog's dispatcher thread
            self.lost.append(True)

    # --- watches (either thread, under self._watches) ---

    def _add(self, tree: _Tree, name: str) -> bool:
        """Watch the tree's folder (``name`` "") or one of its ``<name>/`` folders."""
        reader = self._reader
        if reader is None:
            return False
        folder = _Folder(self, tree, name)
        path = os.path.join(tree.spec.path, name) if name else tree.spec.path
        try:
            folder.wd = reader.add_callback(os.fsencode(path), _MASK, folder, folder.id)
        except OSError as err:  # gone meanwhile, or the watch limit: next refresh retries
            if name and err.errno in (errno.ENOENT, errno.ENOTDIR):  # it went meanwhile
                return False
            log.warning("watch_failed", path=folder.shown, error=str(err))
            return False
        old = tree.folders.get(name)
        tree.folders[name] = folder
        if old is not None and old.wd != folder.wd:
            self._remove(old)
        return True

    def _watch_folder(self, tree: _Tree, name: str) -> bool:
        """Watch a ``<name>/`` folder of the tree; False if the bound refuses it."""
        with self._watches:
            if name in tree.folders or tree.muted_until is not None:
                return True
            if len(tree.folders) > MAX_FOLDERS:  # the tree's own folder is one of them
                return False
            self._add(tree, name)
            return True

    def _forget_folder(self, tree: _Tree, name: str) -> None:
        """A ``<name>/`` folder moved away: its watch would follow it."""
        with self._watches:
            folder = tree.folders.pop(name, None)
            if folder is not None:
                self._remove(folder)

    def _remove(self, folder: _Folder) -> None:
        reader = self._reader
        if reader is not None and folder.wd != -1:
            with contextlib.suppress(OSError):
                reader.remove_callbacks([(folder.wd, folder.id)])

    def _remove_all(self, tree: _Tree) -> None:
        for folder in list(tree.folders.values()):
            self._remove(folder)
        tree.folders.clear()

    # --- under self._lock (the supervisor thread) ---

    def _ensure_reader(self) -> bool:
        """A live reader; True if a dead one had to be replaced."""
        old = self._reader
        if old is not None and old.is_alive():
            return False
        with self._watches:
            self._reader = None
            self._trees.clear()
        if old is not None:
            old.stop()
            old.join(_JOIN_TIMEOUT)
        try:
            reader = _Reader(self._overflow)
            reader.start()
        except OSError as err:  # e.g. the inotify instance limit: scans still work
            log.warning("watcher_start_failed", error=str(err))
            return False
        self._reader = reader
        return old is not None

    def _settle(self) -> None:
        for _ in range(_SETTLE_ROUNDS):
            if not self._sync():
                break

    def _sync(self) -> bool:
        """Make the watches match the dirs as they are now; True if a tree was added."""
        if self._reader is None:
            self._complete = False
            return False
        wanted = {s for s in map(_spec_for, self.dirs) if s is not None}
        now = self._clock()
        added = False
        with self._watches:
            for spec in [s for s in self._trees if s not in wanted]:
                self._remove_all(self._trees.pop(spec))
            for spec in wanted:
                tree = self._trees.get(spec)
                if tree is None:
                    tree = self._trees[spec] = _Tree(spec)
                    added = True
                if tree.muted_until is not None and now >= tree.muted_until:
                    tree.muted_until = None
                    tree.window_start, tree.events = now, 0
                if tree.muted_until is None and "" not in tree.folders:
                    added |= self._add(tree, "")
        for tree in list(self._trees.values()):
            if tree.spec.is_dir and tree.muted_until is None and "" in tree.folders:
                self._sync_folders(tree)
        self._complete = all("" in t.folders or t.muted_until is not None
                             for t in self._trees.values())
        return added

    def _sync_folders(self, tree: _Tree) -> None:
        """Watch each ``<name>/`` folder the dir holds now (up to the bound)."""
        names = []
        with contextlib.suppress(OSError), os.scandir(tree.spec.path) as entries:
            for entry in entries:
                if is_plugin_folder(entry.name) and _is_dir(entry):
                    names.append(entry.name)
        refused = [name for name in names if not self._watch_folder(tree, name)]
        if refused and not tree.over_limit_said:
            tree.over_limit_said = True
            log.warning("watch_limit_reached", dir=tree.spec.shown, limit=MAX_FOLDERS,
                        unwatched=len(refused))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _classify(path: str, dirs: tuple[str, ...]) -> FsHint | Rescan | None:
    """A path inside a plugin dir is a hint; a plugin dir (or its parent) coming or going
    means the watches must be re-armed; anything else next to a parent is noise."""
    if any(path == root or is_inside(root, path) for root in dirs):
        return Rescan("watcher_restart")  # first: a plugin dir may lie inside another
    return FsHint(path) if plugin_path_of(path, dirs) else None
