"""``Inotify``: a raw inotify reader (ctypes, no watchdog), the floor for discovery latency.

Runs on: the bench's main thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import time
from pathlib import Path

IN_CREATE = 0x100
IN_DELETE = 0x200
_EVENT = struct.Struct("iIII")


class Inotify:
    """inotify on one directory, read straight from the fd (no watchdog)."""

    def __init__(self, directory: Path, mask: int = IN_CREATE | IN_DELETE):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify setup failed")

    def wait_for(self, name: str, mask: int, timeout: float) -> float | None:
        """monotonic time at which an event ``mask`` on ``name`` was read, else None."""
        want = os.fsencode(name)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], left)[0]:
                return None
            seen = time.monotonic()
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _, event_mask, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + 16:offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if event_mask & mask and raw == want:
                    return seen
        return None

    def close(self) -> None:
        os.close(self.fd)
