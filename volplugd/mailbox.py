"""A queue with its own wake-up: what other threads hand to one thread that waits in a
poll.

``put`` queues an item and makes the mailbox's descriptor (an eventfd) readable, so the
owner's poll (``select``/``epoll`` over its other descriptors too) returns; ``take``
resets the descriptor, then drains the queue. The reset comes first: an item put while
``take`` runs is either taken now or leaves the descriptor readable for the next poll,
never lost behind a quiet descriptor.

Runs on: ``put`` and ``take`` from any thread (``put`` also in a signal handler), also
after ``close`` (an item put then is queued and wakes nobody: the supervisor, once
stopped, takes and refuses it on the caller's thread); ``empty``, ``fileno`` and
``close`` on the owner's thread.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import Generic, TypeVar

__all__ = ["Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Items for one thread, and a descriptor that is readable while some may wait."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # close() must not free the fd under a write. Reentrant: a signal handler runs on
        # the owner's thread, perhaps inside take(), and its put() must not wait for it.
        self._lock = threading.RLock()

    def fileno(self) -> int:
        return self._fd

    def put(self, item: T) -> None:
        """Queue ``item`` and wake the owner's poll. Any thread; never blocks."""
        self._items.put(item)
        with self._lock:
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)

    def empty(self) -> bool:
        return self._items.empty()

    def take(self, limit: int | None = None) -> list[T]:
        """The queued items, oldest first (at most ``limit``); the descriptor is quiet
        again unless an item came after the reset."""
        with self._lock, contextlib.suppress(BlockingIOError):
            if self._fd >= 0:
                os.eventfd_read(self._fd)
        taken: list[T] = []
        while limit is None or len(taken) < limit:
            try:
                taken.append(self._items.get_nowait())
            except queue.Empty:
                break
        return taken

    def close(self) -> None:
        """Close the descriptor; items still queued stay for ``take``."""
        with self._lock:
            fd, self._fd = self._fd, -1  # first: a put in a signal handler sees -1
            if fd >= 0:
                os.close(fd)
