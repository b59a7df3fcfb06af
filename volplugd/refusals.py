"""Refusals in the log: one line per ``REFUSAL_LOG_SECONDS`` per event, uid and reason,
carrying how many were left out since the last one.

A user who is refused 80,000 times in six seconds (a 403 loop, a reconnect loop) then
costs a line per 10 s instead of a flood in which journald's rate limit would drop
volplugd's own records. The first refusal of a window is logged at once; the ones after
it in the window are counted, and the next line of that event, uid and reason says how
many (``suppressed=N``; ``refused=N+1`` with itself). Counting every refusal is the
metrics' job, the caller's: a log line is a sample, the counter is the truth.
Runs on: any thread (one short lock, never any I/O under it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from volplugd.log import get_logger

__all__ = ["MAX_WINDOWS", "REFUSAL_LOG_SECONDS", "RefusalLog"]

REFUSAL_LOG_SECONDS = 10.0
MAX_WINDOWS = 4096  # (event, uid, reason) kept at once; past it, finished windows go
_Key = tuple[str, int | None, str]


class RefusalLog:
    """The refusals of one server (``logger``: its module's), rate-limited per key."""

    def __init__(self, logger: str, *, every: float = REFUSAL_LOG_SECONDS,
                 clock: Callable[[], float] = time.monotonic, level: str = "warning"):
        self._log = getattr(get_logger(logger), level)
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[_Key, list[float]] = {}  # key -> [logged at, suppressed since]

    def refused(self, event: str, uid: int | None, reason: str, **fields: object) -> bool:
        """Log ``event`` with ``uid``, ``reason``, ``fields``, ``suppressed`` and
        ``refused``, unless this event, uid and reason were logged less than ``every``
        s ago (then it is only counted). True if it was logged."""
        key = (event, uid, reason)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] < self._every:
                window[1] += 1
                return False
            suppressed = 0 if window is None else int(window[1])
            if window is None and len(self._windows) >= MAX_WINDOWS:
                self._forget_finished(now)
            self._windows[key] = [now, 0]
        self._log(event, uid=uid, reason=reason, suppressed=suppressed,
                  refused=suppressed + 1, **fields)
        return True

    def _forget_finished(self, now: float) -> None:
        """Drop the windows that ended (their suppressed counts stay in the metrics)."""
        self._windows = {key: window for key, window in self._windows.items()
                         if now - window[0] < self._every}
