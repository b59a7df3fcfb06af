"""The socket files dead plugins leave, and when the loop removes them (opt-in:
``discovery.remove_stale_after``; docs/supervision.md, "Stale sockets").

A registration is *watched* while it is a ``.sock`` plugin from a trusted folder in
state ``activating`` or ``unhealthy`` (its calls fail; ``ready`` ones answer, a
``restarting`` one is being brought back, a ``rejected`` one is not volplugd's to judge).
``remove_stale_after / LOOKS`` apart, each watched socket is looked at: it is *silent*
when a connect is refused and no socket of this network namespace is bound to its name
(``supervision.stale``). A socket silent at every look for ``remove_stale_after`` —
the same file all along, by device and inode — is removed, after its folder is judged
trusted once more: an event ``stale_socket_removed`` (before the ``evicted`` that
follows), a log line, the counter. Anything else resets its silence. What cannot be
removed (a read-only mount, permissions) is logged once per file and not tried again.

The looks cost one non-blocking connect per watched socket, and one read of
``/proc/net/unix`` when one of them is refused (docs/performance.md).

Runs on: the supervisor thread only.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from volplugd.contracts import Observer
from volplugd.discovery import Trust, untrusted_reason
from volplugd.discovery.scan import normalized_dirs
from volplugd.lifecycle import Lifecycle
from volplugd.log import get_logger
from volplugd.model import DesiredPlugin, EventType, Kind, PluginState
from volplugd.registrations import Book, Registration
from volplugd.registry import PendingEvent
from volplugd.supervision.stale import (
    Bound,
    Removal,
    aside_name,
    connect_code,
    read_proc_net_unix,
    readable_path,
    remove_socket,
)

__all__ = ["LOOKS", "WATCHED", "Silence", "StaleSockets", "silence", "watched_path"]

log = get_logger(__name__)

LOOKS = 4  # looks at each watched socket within remove_stale_after
WATCHED = frozenset({PluginState.ACTIVATING, PluginState.UNHEALTHY})

File = tuple[int, int]  # device, inode


@dataclass(frozen=True, slots=True)
class Silence:
    """Since when one socket file has been silent at every look."""

    file: File
    since: float


def watched_path(desired: DesiredPlugin, state: PluginState) -> str | None:
    """The socket file whose silence is looked for, or None if the registration is not
    watched (not a ``.sock``, not in ``WATCHED``, untrusted, a name ``/proc/net/unix``
    cannot show)."""
    if desired.kind is not Kind.SOCK or state not in WATCHED:
        return None
    if untrusted_reason(desired.warnings) is not None or not readable_path(desired.source):
        return None
    return desired.source


def silence(previous: Silence | None, file: File, silent: bool, now: float
            ) -> Silence | None:
    """A socket's silence after a look: None once it is heard (or is another file)."""
    if not silent:
        return None
    if previous is None or previous.file != file:
        return Silence(file, now)
    return previous


class StaleSockets:
    """The loop's looks for stale sockets: when the next is due, and what each does."""

    def __init__(self, plugins: Lifecycle, book: Book, observer: Observer,
                 read_bound: Callable[[], bytes] = read_proc_net_unix, *,
                 evict: Callable[[list[str], float], None] | None = None) -> None:
        self._plugins = plugins
        self._evict = evict  # told the paths removed (the scans' hints), in the same step
        self._book = book
        self._observer = observer
        self._read_bound = read_bound
        self.look_at: float | None = None  # the next look (None: at the next due())
        self._looked_with: float | None = None  # the remove_stale_after of look_at
        self._silent: dict[str, Silence] = {}
        self._kept: set[tuple[str, File]] = set()  # could not be removed: logged, left
        self._bound_failed = False  # /proc/net/unix could not be read: logged once

    @property
    def _after(self) -> float | None:
        return self._plugins.settings.discovery.remove_stale_after

    def wake_at(self) -> float | None:
        """When the next look is due (None: the setting is off)."""
        return None if self._after is None else self.look_at

    def remove_stale(self, now: float) -> list[str]:
        """Look, if a look is due, and remove what has been stale long enough; the
        paths of the sockets removed (also told to ``evict``)."""
        after = self._after
        if after is None:
            self._silent.clear()
            self.look_at = None
            return []
        if self.look_at is not None and now < self.look_at and after == self._looked_with:
            return []
        self.look_at, self._looked_with = now + after / LOOKS, after
        removed = self._look(now, after)
        if removed and self._evict is not None:  # evicted in the publish with the event
            self._evict(removed, now)
        return removed

    def _look(self, now: float, after: float) -> list[str]:
        watched = {}
        for record in self._book:
            path = watched_path(record.tracked.desired, record.state)
            if path is not None:
                watched[record.name] = (record, path)
        self._silent = {n: s for n, s in self._silent.items() if n in watched}
        self._kept = {kept for kept in self._kept if kept[0] in watched}
        refused = {n for n, (_, path) in watched.items()
                   if connect_code(path) == errno.ECONNREFUSED}
        self._silent = {n: s for n, s in self._silent.items() if n in refused}
        if not refused:
            return []
        bound = self._bound()
        removed = []
        for name in sorted(refused):
            record, path = watched[name]
            identity = record.tracked.desired.identity
            file = (identity.dev, identity.ino)
            heard = bound is None or bound.holds(path)
            now_silent = silence(self._silent.get(name), file, not heard, now)
            if now_silent is None:
                self._silent.pop(name, None)
                continue
            self._silent[name] = now_silent
            if now - now_silent.since >= after and (name, file) not in self._kept \
                    and self._remove(record, path, file, after):
                removed.append(path)
        return removed

    def _bound(self) -> Bound | None:
        """What /proc/net/unix says is bound; None (every socket heard) if unreadable."""
        try:
            bound = Bound(self._read_bound())
        except OSError as err:
            if not self._bound_failed:
                log.warning("stale_sockets_unknown", path="/proc/net/unix",
                            error=err.strerror or str(err))
            self._bound_failed = True
            return None
        self._bound_failed = False
        return bound

    def _remove(self, record: Registration, path: str, file: File, after: float) -> bool:
        """Remove one socket silent for ``after``; True if it is gone."""
        name = record.name
        self._silent.pop(name, None)
        folder, base = os.path.split(path)
        problem = self._untrusted(folder)
        if problem is not None:
            self._keep(name, path, file, f"untrusted: {problem}")
            return False
        try:
            outcome = remove_socket(folder, base, *file, read_bound=self._read_bound)
        except OSError as err:
            self._keep(name, path, file, err.strerror or str(err))
            return False
        if outcome is Removal.GONE:  # the watcher tells the loop: it is evicted anyway
            return False
        if outcome is not Removal.REMOVED:
            self._keep(name, path, file, outcome.value)
            return False
        state = record.state
        reason = f"{path} refused connections and no process had it bound for {after:g} s"
        self._book.event(PendingEvent(EventType.STALE_SOCKET_REMOVED, name, state, None,
                                      reason))
        self._observer.stale_socket_removed()
        log.warning("stale_socket_removed", plugin=name, path=path, state=state.value,
                    after=after)
        return True

    def _untrusted(self, folder: str) -> str | None:
        """The folder judged now, as a scan would (``discovery.trust``, nested or not)."""
        discovery = self._plugins.settings.discovery
        trust = Trust(discovery.trust)
        nested = folder not in normalized_dirs(discovery.dirs)
        return trust.nested(folder) if nested else trust.folder(folder)

    def _keep(self, name: str, path: str, file: File, reason: str) -> None:
        """A silent socket that stays: logged once per file, never tried again."""
        self._kept.add((name, file))
        folder, base = os.path.split(path)
        fields = {"aside": os.path.join(folder, aside_name(base))} \
            if reason == Removal.MISPLACED.value else {}
        log.warning("stale_socket_kept", plugin=name, path=path, reason=reason, **fields)
