"""Machinery of the supervisor: a pool of daemon threads, and the slots that bound one
plugin's volume operations in flight. (Due times live in the records: ``registrations``.)

Runs on: ``WorkerPool.submit`` from any thread, its jobs on its own threads; ``Slots``
from any thread (control requests).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

class WorkerPool:
    """A fixed set of daemon threads: a call hung in a plugin never holds up exit."""

    def __init__(self, size: int, name: str):
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as err:  # noqa: BLE001 - the caller gets every failure
                    future.set_exception(err)

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class Slots:
    """At most ``limit`` holders at once, and at most ``limit`` more callers waiting.

    ``acquire`` never blocks past its ``wait``, and a caller that finds the queue full
    is refused at once: a hung plugin costs its callers at most ``wait`` seconds each,
    and never more than ``limit`` calls that really wait on the plugin.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        self.limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._held = 0
        self._waiting = 0

    @property
    def in_flight(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._waiting

    def acquire(self, wait: float) -> bool:
        """Take a slot, waiting up to ``wait`` s if the queue has room; False if none."""
        with self._cond:
            if self._held < self.limit:
                self._held += 1
                return True
            if wait <= 0 or self._waiting >= self.limit:
                return False
            self._waiting += 1
            try:
                if not self._cond.wait_for(lambda: self._held < self.limit, wait):
                    return False
                self._held += 1
                return True
            finally:
                self._waiting -= 1

    def release(self) -> None:
        with self._cond:
            if self._held <= 0:
                raise RuntimeError("Slots.release() without a slot held")
            self._held -= 1
            self._cond.notify()

    def resize(self, limit: int) -> None:
        """A new bound (a reload); calls in flight keep their slots and count."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        with self._cond:
            self.limit = limit
            self._cond.notify_all()
