"""Serving one listening socket: an accept thread and one thread per connection.

At most ``max_connections`` connections are served; further clients wait in the listen
backlog (128, not the stdlib's 5) until a slot frees, and a keep-alive connection idling
between requests gives its slot up when someone is waiting. ``stop()`` is prompt: it
wakes the accept thread, shuts every open connection down and makes follow streams end;
``join()`` waits for the threads.
Runs on: the caller's thread (start/stop/join), the accept thread, connection threads.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from volplugd.control.connection import Site, serve_connection
from volplugd.log import get_logger

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["BACKLOG", "Listener"]

BACKLOG = 128
_log = get_logger(__name__)


class Listener:
    """The accept loop and connection bookkeeping shared by both servers."""

    def __init__(self, app: WSGIApplication, *, name: str, max_connections: int,
                 max_follow: int, read_timeout: float, read_only: bool):
        self._name = name
        self._max = max_connections
        self._follow = threading.BoundedSemaphore(max_follow)
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._idle: set[socket.socket] = set()
        self._sock: socket.socket | None = None
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self.site = Site(app=app, read_timeout=read_timeout, read_only=read_only,
                         stopping=self._stopping, follow_slot=self._take_follow,
                         may_keep_alive=self._has_room, set_idle=self._set_idle)

    # -- lifecycle --

    def start(self) -> None:
        """Bind (or adopt) the socket and start accepting. Raises ControlSocketError."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError(f"{self._name} can be started once")
        self._sock = self._open()
        self._sock.setblocking(False)
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name=f"{self._name}-accept",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, end open connections and follow streams; idempotent."""
        with self._cond:
            if self._stopping.is_set():
                return
            self._stopping.set()
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake[1], b"x")
            for conn in self._conns:
                _shutdown(conn)
            self._cond.notify_all()
        self._release_address()
        if self._thread is None:
            self._discard_unstarted()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the accept and connection threads (see ``is_alive()`` after).

        A connection thread blocked inside the app (a plugin call) ends when that
        call returns; the threads are daemons, so they never hold up the process exit.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(_left(deadline))
        for thread in self._threads():
            thread.join(_left(deadline))

    def is_alive(self) -> bool:
        """True while the accept thread or any connection thread still runs."""
        accepting = self._thread is not None and self._thread.is_alive()
        return accepting or any(t.is_alive() for t in self._threads())

    def _threads(self) -> list[threading.Thread]:
        with self._cond:
            return list(self._conns.values())

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        with self._cond:
            return len(self._conns)

    # -- the accept thread --

    def _serve(self) -> None:
        assert self._sock is not None
        assert self._wake is not None
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        try:
            while not self._stopping.is_set():
                poller.poll()
                if self._stopping.is_set() or not self._wait_for_room():
                    break
                self._accept_one()
        except Exception:  # noqa: BLE001 — logged; a dead accept thread must be visible
            _log.exception("control_accept_thread_died", listener=self._name)
        finally:
            self._close_listener()

    def _wait_for_room(self) -> bool:
        """A client is waiting: free an idle keep-alive slot, or wait for one to end."""
        with self._cond:
            while len(self._conns) >= self._max and not self._stopping.is_set():
                if self._idle:
                    _shutdown(self._idle.pop())
                self._cond.wait()
            return not self._stopping.is_set()

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
        self._prepare(conn)
        with self._cond:
            if self._stopping.is_set():
                conn.close()
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True,
                                      name=f"{self._name}-conn")
            self._conns[conn] = thread
            thread.start()

    def _prepare(self, conn: socket.socket) -> None:
        conn.setblocking(True)

    def _close_listener(self) -> None:
        with self._cond:  # under the lock: stop() must never write to a closed pipe
            if self._sock is not None:
                self._sock.close()
            if self._wake is not None:
                os.close(self._wake[0])
                os.close(self._wake[1])
                self._wake = None

    # -- connection threads --

    def _handle(self, conn: socket.socket) -> None:
        try:
            serve_connection(conn, self.site)
        except Exception:  # noqa: BLE001 — one broken connection must not go unnoticed
            _log.exception("control_connection_failed", listener=self._name)
        finally:
            with self._cond:
                self._idle.discard(conn)
                del self._conns[conn]
                conn.close()
                self._cond.notify_all()

    def _has_room(self) -> bool:
        return len(self._conns) < self._max

    def _set_idle(self, conn: socket.socket, idle: bool) -> None:
        with self._cond:
            if idle:
                self._idle.add(conn)
                self._cond.notify_all()
            else:
                self._idle.discard(conn)

    def _take_follow(self) -> Callable[[], None] | None:
        if not self._follow.acquire(blocking=False):
            return None
        return self._follow.release

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
