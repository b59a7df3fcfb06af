"""Who gets a slot (a connection, a follow stream): a bound per uid, and headroom that
privileged peers (root, the admin groups) always keep. Pure bookkeeping that any server
can reuse (the control socket, the gateway): no sockets but ``peer_of``, no lock of its
own (the caller serialises admit and release, e.g. under its connection lock; ``Slots``
is a budget with a lock of its own, for callers that have none).

Of ``total`` slots, unprivileged peers share ``total - reserved`` and each uid holds at
most ``per_uid`` of them; privileged peers (root, admins) may take any free slot and
have no per-uid bound. A peer without credentials (TCP) counts as unprivileged with no
per-uid bound. Whether a uid is privileged is asked once while it has connections open,
so refusing a uid that keeps reconnecting costs no user-database lookups.
Runs on: the caller's threads (a listener's loop thread admits; the loop or a
connection thread releases).
"""

from __future__ import annotations

import functools
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

__all__ = ["ConnectionBudget", "Peer", "Refusal", "Slots", "Ticket", "peer_of"]


class Peer(NamedTuple):
    """SO_PEERCRED of one connection: the process that connected, as the kernel saw it."""

    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    """The connected unix socket's peer (SO_PEERCRED): one syscall, no lookups."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


class Refusal(Enum):
    UID_LIMIT = "uid_limit"  # this uid holds its ``per_uid`` connections already
    FULL = "full"  # no slot is free for this peer: free an idle one, or refuse


@dataclass(frozen=True, slots=True, eq=False)
class Ticket:
    """One admitted connection's slot; give it back with ``release`` exactly once."""

    uid: int | None
    privileged: bool


@dataclass(slots=True)
class _Holder:
    count: int
    privileged: bool


class ConnectionBudget:
    """The counts behind one bound of one server (its connections, its follow streams)."""

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

    def admit(self, uid: int | None, privileged: bool) -> Ticket | Refusal:
        """A slot for a new connection of ``uid``, or why there is none."""
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


class Slots:
    """A ``ConnectionBudget`` any thread may take from and give back to."""

    def __init__(self, budget: ConnectionBudget):
        self._budget = budget
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._budget.in_use

    def take(self, uid: int | None, privileged: bool) -> Callable[[], None] | Refusal:
        """A slot for ``uid``: its release (call it exactly once), or why there is none."""
        with self._lock:
            ticket = self._budget.admit(uid, privileged)
        if not isinstance(ticket, Ticket):
            return ticket
        return functools.partial(self._release, ticket)

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            self._budget.release(ticket)
