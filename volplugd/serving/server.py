"""The one HTTP/1.1 server of volplugd, in the shape of the stdlib ``socketserver`` and
gunicorn's sync worker: an accept thread, then a thread per connection.

The accept thread waits on every listening socket the server holds (one for the control
socket or the metrics port; one per plugin for the gateway) and a wake-up socket. For
each client in a backlog it makes room first (at most ``budget.total`` connections:
the longest-idle one is closed, or the client waits in the backlog), accepts, reads
the peer's credentials (``SO_PEERCRED``) and takes a slot of the per-uid ``budget``
before the first byte is read: refused, the client gets the app's 503 with
``Retry-After`` at once, and the refusal goes to the one ``RefusalLog``. A connection
waiting for a head (the first, or the next on a kept-alive connection) is *idle*: when a
newcomer needs room, the idle one that has waited longest is shut down (an unprivileged
newcomer displaces only an unprivileged one). A peer whose privilege only its groups can
tell, when they are not cached, gets its thread at once and asks the user database
there, then takes its slot (bounded like the slots, so a slow directory holds no more
than a uid's share).

Each connection thread runs ``connection.serve``. Follow streams take a slot of their
own ``follow`` budget, per uid with the same headroom. ``stop()`` is prompt: it wakes the
accept thread, shuts every connection down (a follow stream sees ``stopping``);
``join()`` waits for the threads.
Runs on: the caller's thread (add, remove, start, stop, join); the accept thread;
connection threads.
"""

from __future__ import annotations

import contextlib
import functools
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from volplugd.admission import ConnectionBudget, Peer, Refusal, Ticket, peer_of
from volplugd.log import get_logger
from volplugd.refusals import RefusalLog
from volplugd.serving.connection import Client, Hooks, Rules, serve
from volplugd.serving.messages import reply_head
from volplugd.serving.peers import groups_of

__all__ = ["BACKLOG", "SEND_BUFFER", "Server"]

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn (4096 by default)
# A unix socket's default send buffer (~200 KiB) takes the plugin list of 1,000 plugins
# (~0.5 MB) in three writes; with this (the kernel doubles it) it leaves in one.
# Kernel memory, held only while a client has not read its answer yet.
SEND_BUFFER = 512 * 1024
Privileged = Callable[[Peer, "frozenset[int] | None"], "bool | None"]

_log = get_logger(__name__)


@dataclass(frozen=True, eq=False)
class _Slot:
    ticket: Ticket | None  # None while its peer's groups are asked for
    thread: threading.Thread


class Server(Hooks):
    """Serves ``rules.app`` on the listening sockets given to ``add``."""

    def __init__(self, rules: Rules, *, name: str, budget: ConnectionBudget,
                 follow: ConnectionBudget, refusals: RefusalLog,
                 privileged: Privileged | None = None,
                 prepare: Callable[[socket.socket], None] | None = None,
                 on_refused: Callable[[str], None] | None = None,
                 refused_messages: Mapping[Refusal, str] | None = None):
        self.rules = rules
        self._name = name
        self._budget = budget
        self._follow = follow
        self._refusals = refusals
        self._privileged = privileged
        self._prepare = prepare
        self._on_refused = on_refused
        self._messages = refused_messages
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._conns: dict[socket.socket, _Slot] = {}
        self._idle: dict[socket.socket, None] = {}  # oldest first: the eviction order
        self._evicted: set[socket.socket] = set()
        self._asking: dict[int, int] = {}  # uid -> connections asking for its groups
        self._listeners: dict[socket.socket, str] = {}
        self._retired: list[socket.socket] = []  # closed by the accept thread
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept",
                                        daemon=True)

    # -- lifecycle --

    def add(self, sock: socket.socket, name: str = "") -> None:
        """Serve the listening ``sock`` too (``name`` reaches the app as
        ``Request.listener``); the server owns it from now on."""
        sock.setblocking(False)
        with self._cond:
            self._listeners[sock] = name
        self._wake()

    def remove(self, sock: socket.socket) -> None:
        """Stop accepting on ``sock`` and close it (its connections go on)."""
        with self._cond:
            if self._listeners.pop(sock, None) is not None:
                self._retired.append(sock)
        self._wake()

    def start(self) -> None:
        if self._thread.ident is not None or self._stopping.is_set():
            raise RuntimeError(f"{self._name} can be started once")
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, end open connections and follow streams; idempotent."""
        with self._cond:
            if self._stopping.is_set():
                return
            self._stopping.set()
            for conn in self._conns:
                _shutdown(conn)
            self._cond.notify_all()
        self._wake()
        if self._thread.ident is None:
            self._close_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the accept and connection threads (see ``is_alive()`` after). A
        thread blocked in a plugin call ends when the call returns; the threads are
        daemons, so they never hold up the process exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread.ident is not None:
            self._thread.join(_left(deadline))
        for thread in self._threads():
            thread.join(_left(deadline))

    def is_alive(self) -> bool:
        """True while the accept thread or any connection thread still runs."""
        return self._thread.is_alive() or any(t.is_alive() for t in self._threads())

    def _threads(self) -> list[threading.Thread]:
        with self._cond:
            return [slot.thread for slot in self._conns.values()]

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        with self._cond:
            return len(self._conns)

    @property
    def idle(self) -> int:
        """Of those, the ones waiting for a head (the ones a newcomer may displace)."""
        with self._cond:
            return len(self._idle)

    # -- the accept thread --

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _accept_loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        registered: set[socket.socket] = set()
        try:
            while not self._stopping.is_set():
                self._sync(selector, registered)
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif not self._stopping.is_set():
                        self._on_backlog(key.fileobj, key.data)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 — logged; a dead accept thread must be visible
            _log.exception("server_accept_died", listener=self._name)
        finally:
            selector.close()
            self._close_all()

    def _sync(self, selector: selectors.BaseSelector, registered: set[socket.socket]) -> None:
        with self._cond:
            current = dict(self._listeners)
            retired, self._retired = self._retired, []
        for sock in [s for s in registered if s not in current]:
            selector.unregister(sock)
            registered.discard(sock)
        for sock in retired:
            sock.close()
        for sock, name in current.items():
            if sock not in registered:
                selector.register(sock, selectors.EVENT_READ, name)
                registered.add(sock)

    def _close_all(self) -> None:
        with self._cond:
            socks = [*self._listeners, *self._retired]
            self._listeners.clear()
            self._retired.clear()
        for sock in socks:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _on_backlog(self, listening: socket.socket, name: str) -> None:
        """A client waits: make room (free the longest-idle slot, or wait for one to
        end), then accept it."""
        with self._cond:
            while len(self._conns) >= self._budget.total and not self._stopping.is_set():
                if not self._evict_and_wait(privileged_too=True):
                    self._cond.wait()
            if self._stopping.is_set():
                return
        try:
            conn, _ = listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # EMFILE and friends: back off instead of spinning
            _log.warning("server_accept_failed", listener=self._name, error=str(err))
            self._stopping.wait(0.1)
            return
        accepted_at = time.monotonic()
        try:
            conn.setblocking(True)
            peer = peer_of(conn) if conn.family == socket.AF_UNIX else None
            if conn.family == socket.AF_UNIX:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            if self._prepare is not None:
                self._prepare(conn)
        except OSError:  # gone already
            conn.close()
            return
        client = Client(conn, peer, accepted_at, name)
        privileged = self._privilege(peer, None)
        if privileged is None:
            assert peer is not None
            self._ask_groups(client, peer)
            return
        ticket = self._admit(peer, privileged)
        if isinstance(ticket, Refusal):
            self._refuse(conn, peer, ticket, name)
            return
        self._start(client, ticket)

    def _start(self, client: Client, ticket: Ticket | None) -> None:
        """Give an accepted socket (with its slot, or asking its groups) its thread."""
        conn = client.sock
        thread = threading.Thread(target=self._run, args=(client, ticket), daemon=True,
                                  name=f"{self._name}-conn")
        with self._cond:
            if self._stopping.is_set():
                if ticket is not None:
                    self._budget.release(ticket)
                conn.close()
                return
            self._conns[conn] = _Slot(ticket, thread)
            if ticket is not None:
                self._idle[conn] = None  # it has sent no request yet
        thread.start()

    def _ask_groups(self, client: Client, peer: Peer) -> None:
        """Its privilege needs its groups: its thread asks, bounded like the slots."""
        per_uid = self._budget.per_uid or self._budget.total
        with self._cond:
            asking = self._asking.get(peer.uid, 0)
            asking_all = sum(self._asking.values())
            refusal = Refusal.UID_LIMIT if asking >= per_uid else \
                Refusal.FULL if asking_all + len(self._conns) >= self._budget.total else None
            if refusal is None:
                self._asking[peer.uid] = asking + 1
        if refusal is not None:
            self._refuse(client.sock, peer, refusal, client.listener)
            return
        self._start(client, None)

    def _privilege(self, peer: Peer | None, groups: frozenset[int] | None) -> bool | None:
        """Whether ``peer`` keeps the reserved slots; None: its groups must be asked for."""
        if peer is None:
            return False
        with self._cond:
            known = self._budget.privilege_of(peer.uid)
        if known is not None or self._privileged is None:
            return bool(known)
        return self._privileged(peer, groups)

    def _admit(self, peer: Peer | None, privileged: bool) -> Ticket | Refusal:
        """A slot for this peer: free the longest-idle one if need be."""
        uid = None if peer is None else peer.uid
        with self._cond:
            while not self._stopping.is_set():
                outcome = self._budget.admit(uid, privileged)
                if outcome is not Refusal.FULL or \
                        not self._evict_and_wait(privileged_too=privileged):
                    return outcome
        return Refusal.FULL

    def _evict_and_wait(self, *, privileged_too: bool) -> bool:
        """Shut the longest-idle connection down and wait (under the lock) until its
        slot is free; False if no connection is idle."""
        victim = next((conn for conn in self._idle if privileged_too
                       or not self._ticket(conn).privileged), None)
        if victim is None:
            return False
        del self._idle[victim]
        _log.debug(f"{self.rules.events}_connection_evicted", listener=self._name)
        self._evicted.add(victim)
        _shutdown(victim)
        while victim in self._conns and not self._stopping.is_set():
            self._cond.wait()
        return True

    def _ticket(self, conn: socket.socket) -> Ticket:
        ticket = self._conns[conn].ticket
        assert ticket is not None  # only connections with a slot are idle
        return ticket

    def _refuse(self, conn: socket.socket, peer: Peer | None, why: Refusal,
                plugin: str = "") -> None:
        """Answer 503 without blocking (it fits in a fresh socket's buffer) and close.
        The log line names the listening socket's plugin (the gateway's), else the
        server."""
        uid = None if peer is None else peer.uid
        if self._on_refused is not None:  # counted before the client can see its 503
            self._on_refused(why.value)
        where = {"plugin": plugin} if plugin else {"listener": self._name}
        self._refusals.refused(f"{self.rules.events}_connection_refused", uid, why.value,
                               pid=None if peer is None else peer.pid, **where)
        if self._messages is not None:
            message = self._messages[why]
        elif why is Refusal.UID_LIMIT:
            message = (f"this user has {self._budget.per_uid} connections open, the most "
                       "one user may; close one and try again")
        else:
            message = "every connection slot is taken; try again"
        reply = self.rules.protocol_error(503, message)
        reply = reply._replace(headers=(*reply.headers, ("Retry-After", "1")))
        body = reply.body if isinstance(reply.body, bytes) else b""
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(reply_head(reply, len(body), keep=False) + body)
        conn.close()

    # -- connection threads --

    def _run(self, client: Client, ticket: Ticket | None) -> None:
        try:
            if ticket is None:
                assert client.peer is not None
                client.groups, ticket = self._looked_up(client, client.peer)
                if ticket is None:
                    return
            serve(client, self.rules, self, self._stopping)
        except Exception:  # noqa: BLE001 — one broken connection must not go unnoticed
            _log.exception(f"{self.rules.events}_connection_failed", listener=self._name)
        finally:
            self._release(client.sock)

    def _looked_up(self, client: Client,
                   peer: Peer) -> tuple[frozenset[int], Ticket | None]:
        """Ask the user database for ``peer``'s groups, then take its slot (None:
        refused, answered)."""
        try:
            groups = groups_of(peer.uid, peer.gid)
        except Exception:  # noqa: BLE001 — its connection must not wait for ever
            _log.exception("server_group_lookup_failed", uid=peer.uid)
            groups = frozenset({peer.gid})  # the primary group only: no admin's rights
        with self._cond:
            left = self._asking.pop(peer.uid, 1) - 1
            if left:
                self._asking[peer.uid] = left
        conn = client.sock
        ticket = self._admit(peer, bool(self._privilege(peer, groups)))
        if isinstance(ticket, Refusal):
            with self._cond:
                del self._conns[conn]  # never had a slot: _release must not give one back
                self._cond.notify_all()
            self._refuse(conn, peer, ticket, client.listener)
            return groups, None
        with self._cond:
            self._conns[conn] = _Slot(ticket, self._conns[conn].thread)
            self._idle[conn] = None
        return groups, ticket

    def _release(self, conn: socket.socket) -> None:
        """The connection is done: its slot is free, its socket closed."""
        with self._cond:
            self._idle.pop(conn, None)
            self._evicted.discard(conn)
            slot = self._conns.pop(conn, None)
            if slot is not None and slot.ticket is not None:
                self._budget.release(slot.ticket)
            conn.close()
            self._cond.notify_all()

    # -- what a connection asks (``connection.Hooks``) --

    def set_idle(self, sock: socket.socket, idle: bool) -> bool:
        with self._cond:
            if sock in self._evicted:
                return False
            if not idle:
                self._idle.pop(sock, None)
            elif sock not in self._idle:  # idle since accept keeps its place
                self._idle[sock] = None  # the newest idle one: evicted last
                self._cond.notify_all()
            return True

    def may_keep_alive(self) -> bool:
        return len(self._conns) < self._budget.total

    def follow_slot(self, peer: Peer | None,
                    groups: frozenset[int]) -> Callable[[], None] | Refusal:
        privileged = peer is not None and bool(self._privilege(peer, groups))
        with self._cond:
            ticket = self._follow.admit(None if peer is None else peer.uid, privileged)
        if isinstance(ticket, Refusal):
            return ticket
        return functools.partial(self._release_follow, ticket)

    def _release_follow(self, ticket: Ticket) -> None:
        with self._cond:
            self._follow.release(ticket)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
