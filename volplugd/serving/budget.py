"""Who gets a slot (a connection, a follow stream): a bound per uid, and headroom that
root and the privileged groups always keep; and the one log of refusals. Pure
bookkeeping: no sockets, no lock of its own (the caller serialises ``take`` and
``release``, e.g. under its connection lock).

Of ``total`` slots, unprivileged peers share ``total - reserved`` and each uid holds at
most ``per_uid`` of them; privileged peers (root, admins) may take any free slot and
have no per-uid bound. A peer without credentials (TCP) counts as unprivileged with no
per-uid bound. Whether a uid is privileged is asked once while it has connections open,
so refusing a uid that keeps reconnecting costs no user-database lookups.

``RefusalLog`` writes one warning per uid and reason per ``REFUSAL_LOG_SECONDS``, with
the count of refusals since the last line: a user who is refused 80,000 times a minute
costs six lines, not 80,000.
Runs on: the caller's threads (a server's accept thread takes slots; connection threads
take stream slots and release).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from volplugd.log import get_logger

__all__ = ["REFUSAL_LOG_SECONDS", "Budget", "Refusal", "RefusalLog", "Ticket"]

REFUSAL_LOG_SECONDS = 10.0  # refusals are logged once per this per uid and reason
_log = get_logger(__name__)


class Refusal(Enum):
    UID_LIMIT = "uid_limit"  # this uid holds its ``per_uid`` slots already
    FULL = "full"  # no slot is free for this peer: free an idle one, or refuse


@dataclass(frozen=True, slots=True, eq=False)
class Ticket:
    """One slot taken; give it back with ``release`` exactly once."""

    uid: int | None
    privileged: bool


@dataclass(slots=True)
class _Holder:
    count: int
    privileged: bool


class Budget:
    """The counts behind one bound (a server's connections, its follow streams)."""

    def __init__(self, *, total: int, per_uid: int | None = None, reserved: int = 0):
        if total < 1 or not 0 <= reserved < total or (per_uid is not None and per_uid < 1):
            raise ValueError("need total >= 1, 0 <= reserved < total, per_uid >= 1")
        self.total = total
        self.per_uid = per_uid
        self.reserved = reserved
        self._holders: dict[int | None, _Holder] = {}
        self._in_use = 0
        self._shared = 0  # slots held by unprivileged peers

    @property
    def in_use(self) -> int:
        return self._in_use

    def held_by(self, uid: int | None) -> int:
        holder = self._holders.get(uid)
        return 0 if holder is None else holder.count

    def privilege_of(self, uid: int | None) -> bool | None:
        """What was decided for ``uid`` while it has connections; None: ask afresh."""
        if uid is None:
            return False
        holder = self._holders.get(uid)
        return None if holder is None else holder.privileged

    def take(self, uid: int | None, privileged: bool) -> Ticket | Refusal:
        """A slot for ``uid``, or why there is none."""
        if uid is None:
            privileged = False
        known = self.privilege_of(uid)
        privileged = privileged if known is None else known
        if self._in_use >= self.total:
            return Refusal.FULL
        if not privileged:
            if uid is not None and self.per_uid is not None and \
                    self.held_by(uid) >= self.per_uid:
                return Refusal.UID_LIMIT
            if self._shared >= self.total - self.reserved:
                return Refusal.FULL
            self._shared += 1
        self._in_use += 1
        holder = self._holders.setdefault(uid, _Holder(0, privileged))
        holder.count += 1
        return Ticket(uid, privileged)

    def release(self, ticket: Ticket) -> None:
        self._in_use -= 1
        if not ticket.privileged:
            self._shared -= 1
        holder = self._holders[ticket.uid]
        holder.count -= 1
        if holder.count == 0:
            del self._holders[ticket.uid]


class RefusalLog:
    """One warning ``event`` per (uid, reason) per REFUSAL_LOG_SECONDS, with the count of
    refusals since its last line (``refused``); every refusal is also told to
    ``on_refused(reason)`` (a metric) at once."""

    def __init__(self, event: str, *, listener: str,
                 on_refused: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._event = event
        self._listener = listener
        self._on_refused = on_refused
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[int | None, str], tuple[float, int]] = {}

    def refused(self, uid: int | None, reason: str, **context: object) -> None:
        """Count one refusal; log it if this uid's last line for ``reason`` is old."""
        if self._on_refused is not None:
            self._on_refused(reason)
        now = self._clock()
        key = (uid, reason)
        with self._lock:
            logged_at, count = self._counts.get(key, (now - REFUSAL_LOG_SECONDS, 0))
            count += 1
            due = now - logged_at >= REFUSAL_LOG_SECONDS
            self._counts[key] = (now, 0) if due else (logged_at, count)
            if due and len(self._counts) > _MAX_KEYS:
                self._forget(now)
        if due:
            _log.warning(self._event, listener=self._listener, reason=reason, uid=uid,
                         refused=count, **context)

    def _forget(self, now: float) -> None:
        """Drop the keys with nothing left to report (under the lock): bounded memory
        whatever uids come and go."""
        self._counts = {key: entry for key, entry in self._counts.items()
                        if entry[1] or now - entry[0] < REFUSAL_LOG_SECONDS}


_MAX_KEYS = 1024
