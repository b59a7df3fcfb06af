"""Serving one listening socket: connection slots, an event loop (``control.loop``)
that accepts and answers what can be answered at once, and a thread for each
connection that needs one (``Connection.run``).

Slots are counted by a ``ConnectionBudget``: at most ``max_connections`` in all. The
peer is read at accept (``_peer``: SO_PEERCRED), before any request; it is admitted (its
groups, if needed and not cached, asked for off the loop: ``control.gate``) or refused
with 503: the control socket bounds each uid and keeps headroom for root and admins. A
connection that has not yet sent its head (or idles between keep-alive requests) is
*waiting*: when a newcomer needs room, the one that has waited longest is closed (on the
control socket only an unprivileged one makes room for an unprivileged newcomer). When
every slot is at work, clients wait in the listen backlog (1024: a client that connects
with a timeout, as volplugctl does, fails at once with EAGAIN when a unix socket's
backlog is full). Follow streams are counted by a budget of their own (``follows``).
``stop()`` is prompt: it wakes the loop, shuts every connection down and ends follow
streams; ``join()`` waits for the threads.
Runs on: the caller's thread (start/stop/join), the loop thread, connection threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from volplugd.admission import ConnectionBudget, Peer, Refusal, Slots, Ticket
from volplugd.control.connection import Connection
from volplugd.control.gate import Lookups, Refusals
from volplugd.control.loop import Loop
from volplugd.control.site import FIRST_REQUEST_TIMEOUT, Site
from volplugd.log import get_logger

if TYPE_CHECKING:
    from volplugd.control.routing import Application

__all__ = ["BACKLOG", "Listener"]

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn (4096 by default)
_log = get_logger(__name__)


@dataclass(frozen=True, eq=False)
class _Slot:
    ticket: Ticket
    thread: threading.Thread | None = None  # None while the connection is on the loop


class Listener:
    """The accept loop and connection bookkeeping shared by both servers."""

    def __init__(self, app: Application, *, name: str, max_connections: int,
                 follows: ConnectionBudget, read_timeout: float, read_only: bool,
                 first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
                 budget: ConnectionBudget | None = None):
        self._name = name
        self._budget = budget or ConnectionBudget(total=max_connections)
        self._max = self._budget.total
        self._follows = Slots(follows)
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._conns: dict[socket.socket, _Slot] = {}
        self._waiting: dict[socket.socket, None] = {}  # oldest first: the eviction order
        self._evicted: set[socket.socket] = set()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: Loop | None = None
        self._lookups = Lookups(self._poke, name=name, total=self._max,
                                per_uid=self._budget.per_uid or self._max)
        self._refusals = Refusals(name, self._budget.per_uid)
        self.site = Site(app=app, read_timeout=read_timeout, read_only=read_only,
                         stopping=self._stopping, follow_slot=self._take_follow,
                         may_keep_alive=self._has_room, set_idle=self._set_idle,
                         first_request_timeout=first_request_timeout,
                         app_inline=getattr(app, "runs_inline", None))

    # -- lifecycle --

    def start(self) -> None:
        """Bind (or adopt) the socket and start accepting. Raises ControlSocketError."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError(f"{self._name} can be started once")
        self._sock = self._open()
        self._sock.setblocking(False)
        self._loop = Loop(self._sock, self._stopping, accept=self._on_backlog,
                          hand_off=self._hand_off, release=self._release,
                          woken=self._admit_looked_up)
        self._thread = threading.Thread(target=self._serve, args=(self._loop,),
                                        name=f"{self._name}-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, end open connections and follow streams; idempotent."""
        with self._cond:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._poke()
            for conn in self._conns:
                _shutdown(conn)
            self._cond.notify_all()
        self._lookups.close()
        self._release_address()
        if self._thread is None:
            self._discard_unstarted()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the loop and connection threads (see ``is_alive()`` after). A thread
        blocked in a plugin call ends when the call returns; the threads are daemons, so
        they never hold up the process exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(_left(deadline))
        for thread in self._threads():
            thread.join(_left(deadline))

    def is_alive(self) -> bool:
        """True while the loop thread or any connection thread still runs."""
        accepting = self._thread is not None and self._thread.is_alive()
        return accepting or any(t.is_alive() for t in self._threads())

    def _threads(self) -> list[threading.Thread]:
        with self._cond:
            return [slot.thread for slot in self._conns.values() if slot.thread is not None]

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        with self._cond:
            return len(self._conns)

    @property
    def waiting(self) -> int:
        """Of those, the ones waiting for a head (the ones a newcomer may displace)."""
        with self._cond:
            return len(self._waiting)

    # -- the loop thread --

    def _serve(self, loop: Loop) -> None:
        try:
            loop.run()
        except Exception:  # noqa: BLE001 — logged; a dead loop thread must be visible
            _log.exception("control_loop_died", listener=self._name)
        finally:
            self._close_listener()

    def _on_backlog(self) -> bool:
        """A client waits: make room (free the longest-waiting slot, or wait for one to
        end), then accept it; False when the listener is stopping."""
        with self._cond:
            while len(self._conns) >= self._max and not self._stopping.is_set():
                if not self._evict_and_wait(privileged_too=True):
                    self._cond.wait()
            if self._stopping.is_set():
                return False
        self._accept_one()
        return True

    def _hand_off(self, conn: Connection) -> None:
        """Give a connection the loop let go a thread of its own."""
        with self._cond:
            slot = self._conns[conn.sock]
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True,
                                      name=f"{self._name}-conn")
            self._conns[conn.sock] = _Slot(slot.ticket, thread)
            thread.start()

    def _accept_one(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # EMFILE and friends: back off instead of spinning
            _log.warning("control_accept_failed", listener=self._name, error=str(err))
            self._stopping.wait(0.1)
            return
        try:
            peer = self._peer(conn)
            self._prepare(conn)
        except OSError:  # gone already
            conn.close()
            return
        privileged = self._privilege(peer, None)
        if privileged is None:  # its groups are not cached: asked on a thread of their own
            assert peer is not None
            refusal = self._lookups.ask(conn, peer)
            if refusal is not None:
                self._refuse(conn, peer, refusal)
            return
        self._admit_accepted(conn, peer, privileged)

    def _admit_looked_up(self) -> None:
        """The loop was woken: admit the sockets whose peer's groups came."""
        for looked in self._lookups.done():
            self._admit_accepted(looked.sock, looked.peer,
                                 bool(self._privilege(looked.peer, looked.groups)))

    def _admit_accepted(self, conn: socket.socket, peer: Peer | None, privileged: bool) -> None:
        """Give an accepted socket a slot and the loop, or refuse it."""
        accepted_at = time.monotonic()
        ticket = self._admit(peer, privileged)
        if not isinstance(ticket, Ticket):
            self._refuse(conn, peer, ticket)
            return
        with self._cond:
            if self._stopping.is_set():
                self._budget.release(ticket)
                conn.close()
                return
            self._conns[conn] = _Slot(ticket)
            self._waiting[conn] = None  # it has sent no request yet
        try:
            held = Connection(conn, self.site, peer, accepted_at)
        except OSError:  # gone already
            self._release(conn)
            return
        assert self._loop is not None
        self._loop.hold(held)

    def _privilege(self, peer: Peer | None, groups: frozenset[int] | None) -> bool | None:
        """Whether ``peer`` keeps the reserved slots; None: its groups must be asked for."""
        with self._cond:
            known = self._budget.privilege_of(None if peer is None else peer.uid)
        return known if known is not None or peer is None else self._privileged(peer, groups)

    def _admit(self, peer: Peer | None, privileged: bool) -> Ticket | Refusal:
        """A slot for this peer: free the longest-waiting one if need be."""
        uid = None if peer is None else peer.uid
        with self._cond:
            while not self._stopping.is_set():
                outcome = self._budget.admit(uid, privileged)
                if outcome is not Refusal.FULL or \
                        not self._evict_and_wait(privileged_too=privileged):
                    return outcome
        return Refusal.FULL

    def _evict_and_wait(self, *, privileged_too: bool) -> bool:
        """Shut the longest-waiting connection down and wait (under the lock) until its
        slot is free; False if no connection is waiting."""
        victim = next((conn for conn in self._waiting
                       if privileged_too or not self._conns[conn].ticket.privileged), None)
        if victim is None:
            return False
        del self._waiting[victim]
        _log.debug("control_connection_evicted", listener=self._name)
        if self._loop is not None and self._loop.holds(victim):
            self._loop.close(victim)  # this is the loop's thread: closed at once
            return True
        self._evicted.add(victim)
        _shutdown(victim)
        while victim in self._conns and not self._stopping.is_set():
            self._cond.wait()
        return True

    def _refuse(self, conn: socket.socket, peer: Peer | None, why: Refusal) -> None:
        self._refusals.refuse(conn, peer, why)

    def _peer(self, conn: socket.socket) -> Peer | None:
        """Who connected, as the kernel saw it (None: no credentials, as on TCP)."""
        return None

    def _privileged(self, peer: Peer, groups: frozenset[int] | None) -> bool | None:
        """Whether this peer (in ``groups``, if known) keeps the reserved slots (none by
        default); None: only its groups can tell, and they are not cached."""
        return False

    def _prepare(self, conn: socket.socket) -> None:
        conn.setblocking(True)

    def _poke(self) -> None:
        if self._loop is not None:
            self._loop.wake()

    def _close_listener(self) -> None:
        with self._cond:
            if self._sock is not None:
                self._sock.close()

    # -- connection threads --

    def _handle(self, conn: Connection) -> None:
        try:
            conn.run()
        except Exception:  # noqa: BLE001 — one broken connection must not go unnoticed
            _log.exception("control_connection_failed", listener=self._name)
        finally:
            self._release(conn.sock)

    def _release(self, conn: socket.socket) -> None:
        """The connection is done: its slot is free, its socket closed."""
        with self._cond:
            self._waiting.pop(conn, None)
            self._evicted.discard(conn)
            self._budget.release(self._conns.pop(conn).ticket)
            conn.close()
            self._cond.notify_all()

    def _has_room(self) -> bool:
        return len(self._conns) < self._max

    def _set_idle(self, conn: socket.socket, idle: bool) -> bool:
        """A connection starts (True) or stops waiting for its next head. False if it
        was evicted meanwhile: it must not start serving a request."""
        if self._loop is not None and self._loop.holds(conn):
            # Asked by the loop thread, the only one that evicts and the only one that
            # waits for a waiter: no lock, no wake-up. (Dict steps are atomic.)
            self._waiting.pop(conn, None)
            if idle:
                self._waiting[conn] = None
            return True
        with self._cond:
            if conn in self._evicted:
                return False
            if not idle:
                self._waiting.pop(conn, None)
            elif conn not in self._waiting:  # waiting since accept keeps its place
                self._waiting[conn] = None  # the newest waiter: evicted last
                self._cond.notify_all()
            return True

    def _take_follow(self, peer: Peer | None,
                     groups: frozenset[int]) -> Callable[[], None] | Refusal:
        privileged = peer is not None and bool(self._privileged(peer, groups))
        return self._follows.take(None if peer is None else peer.uid, privileged)

    # -- per listener kind --

    def _open(self) -> socket.socket:
        raise NotImplementedError

    def _release_address(self) -> None:
        """Undo what binding did to the filesystem (nothing for TCP)."""

    def _discard_unstarted(self) -> None:
        if self._sock is not None:
            self._sock.close()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
