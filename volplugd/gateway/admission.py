"""Who gets a gateway connection: counted per uid from the kernel's peer credentials
(``admission.Slots``), root's headroom kept; a connection over a bound is answered at
once, before its request is read, ``503 {"Err": …}`` with ``Connection: close``, and the
refusal logged once per 10 s per uid and reason (``refusals.RefusalLog``).
Runs on: the ``gateway-accept`` thread (``admit``); connection threads (a release).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from volplugd.admission import ConnectionBudget, Refusal, Slots, peer_of
from volplugd.gateway.answer import error_reply
from volplugd.gateway.connection import encode_reply
from volplugd.refusals import RefusalLog

__all__ = ["MAX_CONNECTIONS", "MAX_PER_UID", "RESERVED", "Admission"]

MAX_CONNECTIONS = 512  # client connections at once, over all gateway sockets
MAX_PER_UID = 64  # of them, what one uid other than root may hold
RESERVED = 64  # of them, kept for root (Docker, Podman)

_REFUSALS = {
    Refusal.UID_LIMIT: "this user has as many gateway connections open as one user may; "
                       "close one and try again",
    Refusal.FULL: "every gateway connection slot is taken; try again",
}


class Admission:
    """The gateway's connection slots: ``total`` at once, ``per_uid`` for a uid other
    than root, ``reserved`` for root alone. ``on_refused(reason)`` is told each refusal
    ("uid_limit" or "full") before the client can see its answer."""

    def __init__(self, *, total: int, per_uid: int, reserved: int,
                 on_refused: Callable[[str], None] | None = None):
        self._slots = Slots(ConnectionBudget(total=total, per_uid=per_uid,
                                             reserved=min(reserved, total - 1)))
        self._on_refused = on_refused
        self._refusals = RefusalLog(__name__)

    @property
    def in_use(self) -> int:
        return self._slots.in_use

    def admit(self, conn: socket.socket, plugin: str) -> Callable[[], None] | None:
        """The slot's release for this accepted connection, or None: it was refused
        (answered and closed) or is gone already (closed)."""
        try:
            peer = peer_of(conn)
        except OSError:
            conn.close()
            return None
        release = self._slots.take(peer.uid, peer.uid == 0)
        if not isinstance(release, Refusal):
            return release
        if self._on_refused is not None:
            self._on_refused(release.value)
        self._refusals.refused("gateway_connection_refused", peer.uid, release.value,
                               plugin=plugin, pid=peer.pid)
        with contextlib.suppress(OSError):  # fits in a fresh socket's buffer: never waits
            conn.setblocking(False)
            conn.send(encode_reply(error_reply(_REFUSALS[release], "refused", 503),
                                   keep_alive=False))
        conn.close()
        return None
