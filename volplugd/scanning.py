"""When the loop scans the plugin folders, and what it does about each scan's leftovers.

Scan is truth, events are hints. A *full* scan (at startup, every
``discovery.rescan_interval``, on ``POST /v1/rescan``, after a reload, and when a folder
the watcher muted for a flood is due to be re-armed) first re-arms the watcher, so a
change in between is hinted, then scans every folder and reconciles; it covers every
hint and burst so far. Filesystem hints re-resolve only the names they concern, or
coalesce into one burst scan a little later (``policy.coalesce``). Each ignored file is
logged once (a full scan forgets files that were fixed), a flooded folder once a minute.
What a scan changes is ``Lifecycle.reconcile``'s.

Runs on: the supervisor thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from volplugd import policy
from volplugd.contracts import Flooded, Observer
from volplugd.discovery import ScanResult, plugin_path_of, scan, scan_one
from volplugd.lifecycle import Lifecycle
from volplugd.log import get_logger
from volplugd.model import EventType, RescanResult
from volplugd.registrations import Book
from volplugd.registry import PendingEvent

__all__ = ["FLOOD_LOG_EVERY", "Scans", "WatcherLike"]

log = get_logger(__name__)

FLOOD_LOG_EVERY = 60.0  # seconds between two discovery_flooded lines for one folder


class WatcherLike(Protocol):
    def start(self) -> None: ...
    def refresh(self) -> bool: ...
    def set_dirs(self, dirs: Sequence[str]) -> None: ...
    @property
    def up(self) -> bool: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


class Scans:
    """The loop's scans: when each is due, and running them."""

    def __init__(self, plugins: Lifecycle, book: Book, watcher: WatcherLike,
                 observer: Observer) -> None:
        self._plugins = plugins
        self._book = book
        self._watcher = watcher
        self._observer = observer
        self.rescan_at = 0.0  # the next periodic full scan (0.0: at the first iteration)
        self.burst_at: float | None = None  # one scan that covers a burst of hints
        self.rearm_at: float | None = None  # a full scan that re-arms a muted folder
        self._ignored_logged: set[tuple[str, str]] = set()
        self._flood_logged: dict[str, float] = {}  # folder -> when it was last logged

    def wake_at(self) -> tuple[float | None, ...]:
        """When the scans next need the loop (None: not pending)."""
        return self.rescan_at, self.burst_at, self.rearm_at

    def full_scan(self, trigger: str, now: float) -> RescanResult:
        """Re-arm the watcher, then scan (a change in between is hinted); covers all so far."""
        self.burst_at = self.rearm_at = None
        self.rescan_at = now + self._plugins.settings.discovery.rescan_interval
        if self._watcher.refresh():
            log.warning("watcher_restarted")
            self._observer.rescan("watcher_restart")
        result = self._scan(now)
        self._observer.rescan(trigger)
        self._book.event(PendingEvent(EventType.RESCAN, reason=trigger))
        self._observer.watcher(self._watcher.up)
        return result

    def hints(self, paths: list[str], now: float) -> None:
        """Re-resolve only the plugins the hinted paths concern; anything else (a plugin
        folder itself appearing or going) gets a scan now, a burst one a little later
        (``burst_at``)."""
        discovery = self._plugins.settings.discovery
        names = {plugin_path_of(path, discovery.dirs) for path in paths}
        hints = policy.coalesce(names, self.burst_at, now)
        if hints.full:
            self._scan(now)
        for name in hints.names:
            self._resolve(name, now)
        self.burst_at = hints.burst_at

    def kept(self, now: float) -> None:
        """Resolve again each plugin kept while restarting (``Lifecycle.kept``), before
        the restarts room follows the book: its new socket replaces it, and the new
        registration is ``restarting`` before it is published."""
        for name in self._plugins.kept():
            self._resolve(name, now)

    def _resolve(self, name: str, now: float) -> None:
        discovery = self._plugins.settings.discovery
        found = scan_one(name, discovery.dirs, discovery.trust)
        self._log_ignored(found, partial=True)
        self._plugins.reconcile(found, now, only=name)

    def burst(self, now: float) -> bool:
        """The scan that covers a burst of hints, once it is due; True if it ran."""
        if self.burst_at is None or now < self.burst_at:
            return False
        self.burst_at = None
        self._scan(now)
        return True

    def flooded(self, flooded: Flooded, now: float) -> None:
        """The watcher muted a folder: the full scan that re-arms it is due at the
        earlier of ``rearm_at`` and the mute's end. Logged once a minute per folder at
        most: a storm must not flood the log too."""
        folder, until = flooded.folder, flooded.until
        last = self._flood_logged.get(folder)
        if last is None or now - last >= FLOOD_LOG_EVERY:
            self._flood_logged[folder] = now
            log.warning("discovery_flooded", dir=folder, muted_for=max(0.0, until - now))
        self.rearm_at = until if self.rearm_at is None else min(self.rearm_at, until)

    def due(self, now: float) -> bool:
        """The full scans due now: a muted folder's re-arming, then the periodic one.
        True if one ran."""
        ran = False
        if self.rearm_at is not None and now >= self.rearm_at:
            self.full_scan("flood", now)
            ran = True
        if now >= self.rescan_at:
            self.full_scan("periodic", now)
            ran = True
        return ran

    def _scan(self, now: float) -> RescanResult:
        """Scan every plugin folder and reconcile."""
        discovery = self._plugins.settings.discovery
        found = scan(discovery.dirs, discovery.trust)
        self._log_ignored(found, partial=False)
        return self._plugins.reconcile(found, now)

    def _log_ignored(self, found: ScanResult, partial: bool) -> None:
        """Log each ignored file once; a full scan forgets files that were fixed."""
        current = {(i.path, i.reason) for i in found.ignored}
        for path, reason in sorted(current - self._ignored_logged):
            log.warning("plugin_file_ignored", path=path, reason=reason)
            self._observer.discovery("ignored")
        if partial:  # in place: a copy per hint grew with every file ignored since a scan
            self._ignored_logged |= current
        else:
            self._ignored_logged = current
