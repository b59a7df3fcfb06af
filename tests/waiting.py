"""Wait on a condition with a deadline: the only way tests wait."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last={last!r}")
        time.sleep(interval)
        last = predicate()
    return last


def terminal_lines(master: int, count: int, timeout: float = 10.0) -> list[str]:
    """What a pseudo-terminal shows once it holds ``count`` whole lines (``master``: its
    master side). What is written to the other side reaches the master through the
    kernel's line discipline a moment later, so one read right after the write may
    return only the first lines."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        assert left > 0, f"the terminal shows only {data!r}"
        if select.select([master], [], [], left)[0]:
            data += os.read(master, 65536)
    return data.decode().replace("\r\n", "\n").splitlines()
