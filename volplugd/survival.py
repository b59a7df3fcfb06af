"""How the supervisor loop survives an OSError in one of its steps.

A plugin folder can make the loop's own calls fail: descriptors used up (EMFILE), a
folder that cannot be read, an inotify limit. None of that may end the loop. ``Survival``
runs each step; an OSError is counted (``Observer.loop_error``), logged once per errno
and step every LOG_EVERY seconds (with how many there were), answered to a request that
was waiting for the step, and makes the next poll wait at least PAUSE seconds (or for a
message), so a step that keeps failing never spins the loop.

Runs on: the supervisor thread only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from volplugd.contracts import Observer, ProbeNow, Rescan
from volplugd.log import get_logger
from volplugd.plugin.text import safe_text

__all__ = ["LOG_EVERY", "PAUSE", "Survival"]

T = TypeVar("T")
log = get_logger("volplugd.supervisor")

LOG_EVERY = 600.0  # seconds between two loop_error lines for one errno and step
PAUSE = 0.1  # after a failed step the loop waits at least this long (or a message)


class Survival:
    """Runs the loop's steps; remembers what failed, and when it was last said."""

    def __init__(self, observer: Observer, clock: Callable[[], float]) -> None:
        self._observer = observer
        self._clock = clock
        self._erred = False  # a step raised since the last ``pause``
        self._counts: dict[tuple[str, str], int] = {}  # (errno name, step) -> errors
        self._next_log: dict[tuple[str, str], float] = {}

    def __call__(self, step: Callable[..., T], *args: object) -> T | None:
        """``step(*args)``, or None after an OSError (counted, logged, answered)."""
        try:
            return step(*args)
        except OSError as err:
            self._erred = True
            self._observer.loop_error(err.errno or 0)
            self._say(err, step.__name__.lstrip("_"))
            for arg in args:
                reply = arg.reply if isinstance(arg, Rescan | ProbeNow) else None
                if reply is not None and not reply.done():
                    reply.set_exception(err)
            return None

    def pause(self, timeout: float) -> float:
        """The next poll's timeout: at least PAUSE after a failed step."""
        if not self._erred:
            return timeout
        self._erred = False
        return max(timeout, PAUSE)

    def _say(self, err: OSError, step: str) -> None:
        key = (errno.errorcode.get(err.errno or 0, "other"), step)
        self._counts[key] = count = self._counts.get(key, 0) + 1
        now = self._clock()
        if now >= self._next_log.get(key, now):
            self._next_log[key] = now + LOG_EVERY
            log.error("loop_error", errno=key[0], step=step, error=safe_text(str(err)),
                      count=count)
