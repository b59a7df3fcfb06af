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
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    WatchDescriptor,
)

from volplugd.contracts import Flooded, FsHint, Rescan
from volplugd.discovery.inotify import (
    FLOOD_EVENTS,
    FLOOD_WINDOW,
    MASK,
    MAX_BACKLOG,
    Reader,
    Spec,
    Tree,
    spec_for,
)
from volplugd.discovery.paths import classify, is_plugin_folder, normalized_dirs
from volplugd.log import get_logger

__all__ = ["FLOOD_EVENTS", "FLOOD_WINDOW", "MAX_BACKLOG", "MAX_FOLDERS", "Folder", "Watcher"]

log = get_logger(__name__)

MAX_FOLDERS = 256  # <name>/ folders watched per plugin dir
_C = InotifyConstants
_NEW_DIR = _C.IN_CREATE | _C.IN_MOVED_TO
_SELF_GONE = _C.IN_DELETE_SELF | _C.IN_MOVE_SELF
_SETTLE_ROUNDS = 4  # a directory may appear while we re-arm: look again, a few times
_JOIN_TIMEOUT = 5.0


class Folder:
    """One inotify watch's callback (watchdog's ``WatchCallback``): events as hints."""

    def __init__(self, watcher: Watcher, tree: Tree, name: str) -> None:
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
        self._reader: Reader | None = None
        self._trees: dict[Spec, Tree] = {}
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

    # --- the dispatcher thread (through Folder) ---

    def event(self, folder: Folder, event: InotifyEvent) -> None:
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
        message = classify(path, self.dirs)
        if message is not None:
            self.put(message)

    def deleted(self, folder: Folder) -> None:
        """The kernel dropped a watch (its folder was deleted, or unmounted)."""
        with self._watches:
            if folder.tree.folders.get(folder.name) is folder:
                del folder.tree.folders[folder.name]
                if not folder.name:
                    self._complete = False

    def _mute(self, tree: Tree) -> None:
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

    def _add(self, tree: Tree, name: str) -> bool:
        """Watch the tree's folder (``name`` "") or one of its ``<name>/`` folders."""
        reader = self._reader
        if reader is None:
            return False
        folder = Folder(self, tree, name)
        path = os.path.join(tree.spec.path, name) if name else tree.spec.path
        try:
            folder.wd = reader.add_callback(os.fsencode(path), MASK, folder, folder.id)
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

    def _watch_folder(self, tree: Tree, name: str) -> bool:
        """Watch a ``<name>/`` folder of the tree; False if the bound refuses it."""
        with self._watches:
            if name in tree.folders or tree.muted_until is not None:
                return True
            if len(tree.folders) > MAX_FOLDERS:  # the tree's own folder is one of them
                return False
            self._add(tree, name)
            return True

    def _forget_folder(self, tree: Tree, name: str) -> None:
        """A ``<name>/`` folder moved away: its watch would follow it."""
        with self._watches:
            folder = tree.folders.pop(name, None)
            if folder is not None:
                self._remove(folder)

    def _remove(self, folder: Folder) -> None:
        reader = self._reader
        if reader is not None and folder.wd != -1:
            with contextlib.suppress(OSError):
                reader.remove_callbacks([(folder.wd, folder.id)])

    def _remove_all(self, tree: Tree) -> None:
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
            reader = Reader(self._overflow)
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
        wanted = {s for s in map(spec_for, self.dirs) if s is not None}
        now = self._clock()
        added = False
        with self._watches:
            for spec in [s for s in self._trees if s not in wanted]:
                self._remove_all(self._trees.pop(spec))
            for spec in wanted:
                tree = self._trees.get(spec)
                if tree is None:
                    tree = self._trees[spec] = Tree(spec)
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

    def _sync_folders(self, tree: Tree) -> None:
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
