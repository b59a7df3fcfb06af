"""Process descriptors (pidfds), and a watch over many that one poll can wait on.

A pidfd names one process, not a number: it never comes to mean another process when
the pid is reused, and it becomes readable when that process exits (the kernel wakes
``poll`` at once, ~0.9 ms after a ``kill -9`` here). ``PidFd`` owns one; ``ProcessWatch``
keeps one per key (a plugin's name) in an epoll set whose own descriptor is readable
while any watched process has exited, so a loop adds ONE descriptor to whatever it waits
in (``select``, ``selectors``, ``poll``) and asks ``exited()`` when it fires.

Runs on: the thread that owns the object (the supervisor loop); neither is thread-safe.
"""

from __future__ import annotations

import os
import select
from collections.abc import Hashable
from typing import Generic, Self, TypeVar

__all__ = ["PidFd", "ProcessWatch"]

K = TypeVar("K", bound=Hashable)


class PidFd:
    """An open pidfd of process ``pid`` (the pid as this pid namespace numbers it)."""

    __slots__ = ("_fd", "pid")

    def __init__(self, fd: int, pid: int) -> None:
        self._fd = fd
        self.pid = pid

    @classmethod
    def open(cls, pid: int) -> PidFd:
        """A pidfd of the process that has ``pid`` now; ProcessLookupError if none."""
        return cls(os.pidfd_open(pid), pid)

    @classmethod
    def adopt(cls, fd: int) -> PidFd:
        """Own ``fd``, a pidfd from elsewhere (``SO_PEERPIDFD``); its pid from fdinfo
        (-1 when the process has exited, 0 when it is in no pid namespace of ours)."""
        try:
            return cls(fd, fdinfo_pid(fd))
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("the pidfd is closed")
        return self._fd

    def exited(self) -> bool:
        """True once the process has exited (its pidfd is readable); never blocks."""
        return bool(select.select([self.fileno()], [], [], 0)[0])

    def close(self) -> None:
        """Close the descriptor; idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PidFd(pid={self.pid}, fd={self._fd})"


def fdinfo_pid(fd: int) -> int:
    """The ``Pid:`` that ``/proc/self/fdinfo/FD`` shows for pidfd ``fd``."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
        for line in info:
            key, _, value = line.partition(":")
            if key == "Pid":
                return int(value)
    raise OSError(f"fd {fd} is not a pidfd (no Pid: in its fdinfo)")


class ProcessWatch(Generic[K]):
    """Pidfds by key; ``fileno()`` is readable while a watched process has exited.

    ``watch(key, pidfd)`` takes ownership of the pidfd (a key watched again drops its
    old one); ``exited()`` returns the keys whose process has exited, without blocking,
    and stops watching them (their pidfds are closed); ``unwatch`` drops a key.
    ``close()`` closes everything; idempotent."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._by_fd: dict[int, tuple[K, PidFd]] = {}
        self._by_key: dict[K, PidFd] = {}

    def fileno(self) -> int:
        return self._epoll.fileno()

    def watch(self, key: K, pidfd: PidFd) -> None:
        self.unwatch(key)
        self._epoll.register(pidfd.fileno(), select.EPOLLIN)
        self._by_fd[pidfd.fileno()] = (key, pidfd)
        self._by_key[key] = pidfd

    def unwatch(self, key: K) -> None:
        pidfd = self._by_key.pop(key, None)
        if pidfd is None:
            return
        del self._by_fd[pidfd.fileno()]
        self._epoll.unregister(pidfd.fileno())
        pidfd.close()

    def pid(self, key: K) -> int | None:
        """The pid watched for ``key``, or None."""
        pidfd = self._by_key.get(key)
        return None if pidfd is None else pidfd.pid

    def exited(self, timeout: float = 0) -> list[tuple[K, int]]:
        """(key, pid) of each watched process that has exited, waiting up to ``timeout``
        seconds for one (0: never blocks); they are no longer watched."""
        ready = self._epoll.poll(timeout)
        gone = [self._by_fd[fd] for fd, _ in ready if fd in self._by_fd]
        for key, _ in gone:
            self.unwatch(key)  # closes the pidfd; its pid stays readable
        return [(key, pidfd.pid) for key, pidfd in gone]

    def __len__(self) -> int:
        return len(self._by_key)

    def close(self) -> None:
        for key in list(self._by_key):
            self.unwatch(key)
        self._epoll.close()
