"""What happens to an accepted socket before it has a slot: its peer's groups asked for
off the loop (``Lookups``), or its ``503 too_many_connections`` (``Refusals``).

The user database may be slow (a directory server that does not answer), and a
listener's event loop must never wait for it. A listener that needs a peer's groups to
admit it (are they an admin's?) takes them from the cache (``access.cached_groups``);
when they are not there it hands the socket to ``Lookups``. One thread per (uid, gid)
asks (``access.groups_of``, which fills the cache); that peer's sockets wait, without a
slot, and go back to the loop with the groups found (``done``), which is woken up for
them. What may wait is bounded like the slots: ``per_uid`` sockets of one uid, ``total``
in all; past that, or when no slot is free for it, a socket is refused.
Runs on: the loop thread (``ask``, ``done``, ``refuse``); lookup threads; ``close``
from any thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import NamedTuple

from volplugd.admission import Peer, Refusal
from volplugd.control.access import groups_of
from volplugd.control.replies import too_many_connections
from volplugd.log import get_logger
from volplugd.refusals import RefusalLog

__all__ = ["Looked", "Lookups", "Refusals"]

_log = get_logger(__name__)


class Looked(NamedTuple):
    """An accepted socket whose peer's groups are known now."""

    sock: socket.socket
    peer: Peer
    groups: frozenset[int]


class Lookups:
    """The sockets waiting for their peer's groups, and the threads asking for them."""

    def __init__(self, wake: Callable[[], None], *, name: str, per_uid: int, total: int):
        self._wake = wake
        self._name = name
        self._per_uid = per_uid
        self._total = total
        self._lock = threading.Lock()
        self._waiting: dict[tuple[int, int], list[tuple[socket.socket, Peer]]] = {}
        self._of_uid: dict[int, int] = {}  # sockets waiting, by uid
        self._count = 0
        self._done: list[Looked] = []
        self._closed = False

    def ask(self, sock: socket.socket, peer: Peer) -> Refusal | None:
        """Let ``sock`` wait for ``peer``'s groups (None), or say why it may not: too
        many sockets of its uid, or in all, wait already (the caller refuses it)."""
        key = (peer.uid, peer.gid)
        with self._lock:
            if self._of_uid.get(peer.uid, 0) >= self._per_uid:
                return Refusal.UID_LIMIT
            if self._count >= self._total:
                return Refusal.FULL
            self._count += 1
            self._of_uid[peer.uid] = self._of_uid.get(peer.uid, 0) + 1
            waiting = self._waiting.setdefault(key, [])  # by (uid, gid)
            waiting.append((sock, peer))
            if len(waiting) > 1:
                return None  # its peer's groups are being asked for already
        threading.Thread(target=self._look_up, args=(peer,), daemon=True,
                         name=f"{self._name}-lookup").start()
        return None

    def done(self) -> list[Looked]:
        """The sockets whose peer's groups came, for the loop to admit."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Close every socket still waiting or not yet taken (the listener stops)."""
        with self._lock:
            self._closed = True
            socks = [s for waiting in self._waiting.values() for s, _ in waiting]
            socks += [looked.sock for looked in self._done]
            self._waiting.clear()
            self._of_uid.clear()
            self._count = 0
            self._done.clear()
        for sock in socks:
            sock.close()

    def _look_up(self, peer: Peer) -> None:
        try:
            groups = groups_of(peer.uid, peer.gid)
        except Exception:  # noqa: BLE001 — its sockets must not wait for ever
            _log.exception("control_group_lookup_failed", uid=peer.uid)
            groups = frozenset({peer.gid})  # the primary group only: no admin's rights
        with self._lock:
            waited = self._waiting.pop((peer.uid, peer.gid), [])
            self._count -= len(waited)
            left = self._of_uid.pop(peer.uid, 0) - len(waited)
            if left > 0:
                self._of_uid[peer.uid] = left
            if not self._closed:
                self._done += [Looked(sock, who, groups) for sock, who in waited]
                waited = []
        for sock, _ in waited:  # the listener stopped meanwhile
            sock.close()
        self._wake()


class Refusals:
    """Answers a socket refused at accept and closes it; logs refusals once per 10 s
    per uid and reason, with a count (``refusals.RefusalLog``)."""

    def __init__(self, name: str, per_uid: int | None):
        self._name = name
        self._per_uid = per_uid
        self._log = RefusalLog(__name__)

    def refuse(self, sock: socket.socket, peer: Peer | None, why: Refusal) -> None:
        """Answer 503 without blocking (it fits in a fresh socket's buffer) and close."""
        if why is Refusal.UID_LIMIT:
            message = (f"this user has {self._per_uid} connections open, the most one user "
                       "may; close one and try again")
        else:
            message = "every connection slot is taken; try again"
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(too_many_connections(message))
        sock.close()
        self._log.refused("control_connection_refused", None if peer is None else peer.uid,
                          why.value, listener=self._name,
                          pid=None if peer is None else peer.pid)
