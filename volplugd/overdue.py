"""Volume operations in flight, and which of them have waited too long.

An API or gateway thread that runs a plugin operation ``begin``s it with the moment it
becomes overdue and ``end``s it when it returns; the loop asks ``due(now)`` for the
operations still running past that moment (each once), and ``wake_at`` when the next one
would be. So the loop learns of a plugin that hangs on an operation without a message
per operation, and without waking for operations that ended in time: it wakes at least
once a second anyway (``supervisor.LIVENESS``) and then sleeps until the earliest
``wake_at``.

Runs on: ``begin``/``end`` on the threads that run operations; ``due``/``wake_at`` on
the supervisor thread. One lock; nothing blocks under it.
"""

from __future__ import annotations

import heapq
import itertools
import threading

__all__ = ["Overdue"]


class Overdue:
    """Operations by the moment they become overdue (the loop's clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, str, int]] = []  # (when, ticket, name, token)
        self._running: set[int] = set()
        self._tickets = itertools.count()

    def begin(self, name: str, token: int, when: float) -> int:
        """An operation of registration ``token`` of ``name`` started; overdue at
        ``when``. Returns its ticket for ``end``."""
        with self._lock:
            ticket = next(self._tickets)
            self._running.add(ticket)
            heapq.heappush(self._heap, (when, ticket, name, token))
            return ticket

    def end(self, ticket: int) -> None:
        with self._lock:
            self._running.discard(ticket)

    def due(self, now: float) -> list[tuple[str, int]]:
        """(name, token) of each operation still running at ``now`` past its moment,
        once per operation, earliest first."""
        out = []
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= now:
                _, ticket, name, token = heapq.heappop(heap)
                if ticket in self._running:
                    self._running.discard(ticket)  # reported once; its end is a no-op
                    out.append((name, token))
        return out

    def wake_at(self) -> float | None:
        """When the earliest operation still running becomes overdue (None: none)."""
        with self._lock:
            heap = self._heap
            while heap and heap[0][1] not in self._running:
                heapq.heappop(heap)
            return heap[0][0] if heap else None

    def __len__(self) -> int:
        """Operations running that were not yet reported overdue."""
        with self._lock:
            return len(self._running)
