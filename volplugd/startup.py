"""When volplugd has started: the one answer to "when does READY=1 go out?".

The daemon binds its sockets (control, TCP metrics, gateway) before the loop runs, so
they are bound by then. The loop arms the watcher and runs the startup scan; ``Startup``
then waits for every registration that scan found (``expect``) until its activation has
run its course (``tried``: ready, rejected, or a failure that starts the back-off — not
the quick second chance of a refusal right after discovery) or it is gone (evicted or
replaced). A startup scan that failed (an OSError) found nothing to wait for.

When nothing is waited for any more (at once with no plugins), ``check`` publishes the
snapshot, sets ``started`` and calls ``on_started`` exactly once; the daemon's callback
sends READY=1 with the counts (``systemd.Notifier.ready``) and logs ``volplugd_ready``.
A loop that ends before then sets ``started`` too (``stopped``: nobody waits out a
timeout for it), without ``on_started``.

Runs on: the supervisor thread; ``wait`` from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from volplugd.registrations import Book, Registration

__all__ = ["Startup"]


class Startup:
    """The registrations the startup scan found and that were not tried yet."""

    def __init__(self, on_started: Callable[[], None] | None = None) -> None:
        self._on_started = on_started
        self._waiting: dict[str, int] | None = None  # name -> token; None: no scan yet
        self._started = threading.Event()

    def expect(self, found: Iterable[Registration]) -> None:
        """The startup scan is reconciled: wait for each of these registrations."""
        self._waiting = {record.name: record.token for record in found}

    def tried(self, name: str, token: int) -> None:
        """Registration ``token`` of ``name`` ran its activation's course."""
        if self._waiting is not None and self._waiting.get(name) == token:
            del self._waiting[name]

    def check(self, book: Book) -> None:
        """Started, once nothing the startup scan found is waited for (or still there)."""
        if self._waiting is None or self._started.is_set():
            return
        self._waiting = {name: token for name, token in self._waiting.items()
                         if book.current(name, token) is not None}
        if not self._waiting:
            book.publish()
            self._started.set()
            if self._on_started is not None:
                self._on_started()

    def stopped(self) -> None:
        """The loop has ended: whoever waits for the start stops waiting."""
        self._started.set()

    def wait(self, timeout: float) -> bool:
        """True once started (or stopped) within ``timeout`` seconds."""
        return self._started.wait(timeout)
