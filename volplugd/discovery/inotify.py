"""Discovery's inotify layer: watchdog's inotify reader with its bounds, and what one
watch tree (a plugin dir and its ``<name>/`` folders, or a parent awaiting a dir) is.

``Reader`` is watchdog's ``InotifyFD`` (the inotify instance, its reader thread and its
dispatcher thread) plus overflow reporting and a bound on what it reads ahead of its
dispatcher; ``Spec`` names a tree's folder by identity; ``Tree`` holds a tree's watches
and its flood budget. The ``Watcher`` (``watcher.py``) owns them.
Runs on: ``Reader`` on its own threads; the rest wherever the watcher calls them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD, Mask

if TYPE_CHECKING:
    from volplugd.discovery.watcher import Folder

__all__ = ["FLOOD_EVENTS", "FLOOD_WINDOW", "MASK", "MAX_BACKLOG", "Reader", "Spec", "Tree",
           "spec_for"]

FLOOD_EVENTS = 1000  # events a watch tree may send per FLOOD_WINDOW before it is muted
FLOOD_WINDOW = 1.0  # seconds; also how long a flooding tree stays muted
MAX_BACKLOG = 64  # inotify read buffers (up to 80 KiB each) waiting for the dispatcher

_C = InotifyConstants
# No IN_OPEN/IN_CLOSE_NOWRITE (our own scan reading a .spec file must not hint), no
# IN_MODIFY (each write(); IN_CLOSE_WRITE says the same once). No symlink is followed.
MASK = Mask(_C.IN_CREATE | _C.IN_DELETE | _C.IN_MOVED_FROM | _C.IN_MOVED_TO
             | _C.IN_CLOSE_WRITE | _C.IN_ATTRIB | _C.IN_DELETE_SELF | _C.IN_MOVE_SELF
             | _C.IN_ONLYDIR | _C.IN_DONT_FOLLOW | _C.IN_EXCL_UNLINK)
class Reader(InotifyFD):
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
class Spec:
    """One watch tree we want: a configured dir, or the nearest parent of a missing one."""

    path: str  # the real path watched
    is_dir: bool  # True: the plugin directory itself; False: a parent awaiting it
    dev: int
    ino: int  # a directory deleted and recreated is a new watch
    shown: str = field(compare=False)  # the same place as the configured dirs name it


def spec_for(root: str) -> Spec | None:
    target = root
    while True:
        with contextlib.suppress(OSError):
            st = os.stat(target)
            if stat.S_ISDIR(st.st_mode):
                return Spec(os.path.realpath(target), target == root, st.st_dev, st.st_ino,
                             target)
        parent = os.path.dirname(target)
        if parent == target:
            return None
        target = parent


class Tree:
    """A spec's watches (its folder, and for a dir its ``<name>/`` folders) and its
    flood budget. Mutated under the watcher's ``_watches`` lock."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.folders: dict[str, Folder] = {}  # "" (the spec's folder) or a <name>
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
