"""A listener's event loop: one thread, one epoll over the listening socket, a wake-up
pipe and the connections it holds.

A held connection is read without blocking and its complete heads are answered here
when the app can answer them at once (``Connection.serve_buffered``), one request per
connection per turn: a client that pipelines many waits behind every other ready
connection between two of its answers, so no one client holds the loop. One that must
wait is handed to its listener, which gives it a thread. A held connection whose
deadline passes (no first head in time, an idle keep-alive, a head that never ends) is
closed. What a slot is and who may have one is the listener's business: the loop asks
it through ``accept`` (a connection is waiting in the backlog), ``hand_off`` and
``release``, and tells it when another thread woke it up (``wake``, then ``woken``).
Runs on: the loop thread (``run`` and everything it calls); ``holds`` and ``wake`` from
any thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from volplugd.control.connection import Connection
from volplugd.control.site import Step

__all__ = ["Loop"]


class Loop:
    """Runs until ``stopping`` is set (and the wake-up pipe written)."""

    def __init__(self, listening: socket.socket, stopping: threading.Event, *,
                 accept: Callable[[], bool], hand_off: Callable[[Connection], None],
                 release: Callable[[socket.socket], None], woken: Callable[[], None]):
        self._listening = listening.fileno()
        self._stopping = stopping
        self._accept = accept  # False: the listener is stopping
        self._hand_off = hand_off
        self._release = release
        self._woken = woken
        self._pipe: tuple[int, int] | None = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe_lock = threading.Lock()  # a write never meets a closed (or reused) fd
        self._epoll = select.epoll()
        self._held: dict[socket.socket, Connection] = {}
        self._turns: deque[Connection] = deque()  # with a request buffered, in turn
        self._queued: set[Connection] = set()  # the same, for a quick lookup
        self._by_fd: dict[int, Connection] = {}  # the same connections, by descriptor
        # No held connection's deadline is before this (inf: none held). A deadline only
        # moves later while its connection is held, so the minimum over all of them is
        # worked out again only when this passes, not on every turn.
        self._nearest = float("inf")

    def wake(self) -> None:
        """Make ``run`` look up from its poll (any thread; once it ended, nothing)."""
        with self._pipe_lock:
            if self._pipe is not None:
                with contextlib.suppress(BlockingIOError):  # full: it wakes up anyway
                    os.write(self._pipe[1], b"x")

    def holds(self, sock: socket.socket) -> bool:
        """Whether ``sock`` is on the loop (dict lookups are atomic: any thread)."""
        return sock in self._held

    def hold(self, conn: Connection) -> None:
        """Serve a newly accepted connection on the loop."""
        fd = conn.sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._held[conn.sock] = self._by_fd[fd] = conn
        self._nearest = min(self._nearest, conn.deadline)

    def close(self, sock: socket.socket) -> None:
        """Take a held connection off the loop and end it (its slot is freed)."""
        self._unhold(sock)
        self._release(sock)

    def run(self) -> None:
        epoll, by_fd = self._epoll, self._by_fd
        assert self._pipe is not None  # run once
        woke = self._pipe[0]
        epoll.register(self._listening, select.EPOLLIN)
        epoll.register(woke, select.EPOLLIN)
        try:
            while not self._stopping.is_set():
                nearest = self._nearest
                timeout = -1.0 if not by_fd else max(0.0, nearest - time.monotonic())
                if self._turns:
                    timeout = 0.0
                for fd, _ in epoll.poll(timeout):
                    conn = by_fd.get(fd)
                    if conn is not None:
                        self._on_readable(conn)
                    elif fd == woke:
                        with contextlib.suppress(BlockingIOError):
                            os.read(woke, 4096)
                        self._woken()
                    elif fd == self._listening and not self._accept():
                        return
                self._take_turns()
                if nearest <= time.monotonic():
                    self._expire()
        finally:
            for sock in list(self._held):
                self.close(sock)
            epoll.close()
            with self._pipe_lock:
                os.close(self._pipe[0])
                os.close(self._pipe[1])
                self._pipe = None

    def _on_readable(self, conn: Connection) -> None:
        if not conn.receive():
            if not conn.wire.buf:
                self.close(conn.sock)
                return  # closed between requests, or reset
            self._after(conn, Step.THREAD)  # it hung up mid-head: a thread sends the 400
        elif conn not in self._queued:  # else its turn comes
            self._after(conn, conn.serve_buffered())

    def _take_turns(self) -> None:
        """One request from each connection that had more buffered."""
        for _ in range(len(self._turns)):
            conn = self._turns.popleft()
            self._queued.discard(conn)
            if self._held.get(conn.sock) is conn:
                self._after(conn, conn.serve_buffered())

    def _after(self, conn: Connection, step: Step) -> None:
        if step is Step.AGAIN:
            self._turns.append(conn)
            self._queued.add(conn)
        elif step is Step.CLOSE:
            self.close(conn.sock)
        elif step is Step.THREAD:
            self._unhold(conn.sock)
            self._hand_off(conn)

    def _expire(self) -> None:
        """Close the held connections whose deadline passed; note the next deadline."""
        now = time.monotonic()
        for sock, conn in list(self._held.items()):
            if conn.deadline <= now:
                conn.log_timeout()
                self.close(sock)
        self._nearest = min((c.deadline for c in self._by_fd.values()), default=float("inf"))

    def _unhold(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        self._epoll.unregister(fd)
        del self._by_fd[fd], self._held[sock]
