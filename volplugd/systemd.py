"""systemd's service protocols, spoken directly: sd_notify(3) and sd_listen_fds(3).

No libsystemd and no logging here: a failed notification is returned as ``False``
and the caller decides what to say. Without ``NOTIFY_SOCKET`` (not run by systemd)
every call is a cheap no-op.

Runs on: the main thread (``listen_fds`` at start-up; READY, RELOADING, STOPPING) and
the supervisor thread (``watchdog()`` from its own iteration, STATUS); a lock
serialises sending against ``close()``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping

__all__ = ["Notifier", "listen_fds"]

SD_LISTEN_FDS_START = 3  # the first inherited fd, fixed by the protocol
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _notify_address(value: str) -> str | None:
    """A path, or "@name" for the abstract namespace (leading NUL); else unusable."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:…" (systemd 254+) is not spoken here


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC if it is meant for this process (WATCHDOG_PID absent or ours)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = env.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET``; never raises."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self._address = _notify_address(env.get("NOTIFY_SOCKET", ""))
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = _watchdog_usec(env) if self._sock is not None else None
        # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval: float | None = None if usec is None else usec / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one newline-separated datagram; False if not delivered."""
        data = "\n".join(fields).encode()
        with self._lock:
            if self._sock is None or self._address is None:
                return False
            try:
                self._sock.sendto(data, self._address)
            except OSError:
                return False
        return True

    def ready(self, status: str | None = None) -> None:
        fields = ["READY=1"] if status is None else ["READY=1", _status_field(status)]
        self.notify(*fields)

    def reloading(self) -> None:
        # systemd 253+ (Type=notify-reload) wants the CLOCK_MONOTONIC time of the
        # reload start so that a late READY=1 is matched to it; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(_status_field(text))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Idempotent; later calls become no-ops returning False."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status_field(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return "STATUS=" + " ".join(text.splitlines())


def listen_fds(env: MutableMapping[str, str] | None = None,
               unset: bool = True) -> dict[str, socket.socket]:
    """Sockets passed by socket activation, by name, in fd order; {} when none.

    Names come from LISTEN_FDNAMES; an fd without one is "unknown". Raises
    ValueError for malformed variables, a non-socket fd or a name used twice
    (the caller could not tell those sockets apart). With ``unset`` the variables
    are removed first, as sd_listen_fds(1) does, so no child inherits them.
    """
    env = os.environ if env is None else env
    values = {name: env.get(name) for name in _LISTEN_VARS}
    if unset:
        for name in _LISTEN_VARS:
            env.pop(name, None)
    if values["LISTEN_PID"] is None or _int_var("LISTEN_PID", values["LISTEN_PID"]) != os.getpid():
        return {}
    count = _int_var("LISTEN_FDS", values["LISTEN_FDS"] or "0")
    names = _fd_names(values["LISTEN_FDNAMES"], count)
    return {name: _adopt(SD_LISTEN_FDS_START + i, name) for i, name in enumerate(names)}


def _int_var(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"{name}: not a non-negative integer: {value!r}")
    return number


def _fd_names(value: str | None, count: int) -> list[str]:
    given = value.split(":") if value else []
    names = [given[i] if i < len(given) and given[i] else "unknown" for i in range(count)]
    for i, name in enumerate(names):
        if name in names[:i]:
            first = SD_LISTEN_FDS_START + names.index(name)
            raise ValueError(f"LISTEN_FDNAMES: fds {first} and {SD_LISTEN_FDS_START + i} "
                             f"are both named {name!r}; give each socket its own name")
    return names


def _adopt(fd: int, name: str) -> socket.socket:
    # systemd hands the fds over inheritable; like sd_listen_fds, keep them from
    # leaking into anything we spawn.
    try:
        os.set_inheritable(fd, False)
        return socket.socket(fileno=fd)
    except OSError as err:
        raise ValueError(f"LISTEN_FDS: fd {fd} ({name!r}) is not a socket: {err}") from err
