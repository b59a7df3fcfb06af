"""The process that serves a unix-socket plugin, from the kernel only (never from what
the plugin says): who listens on the socket, its command, and what runs it.

``identify(path)`` connects to the socket (non-blocking: a listening socket accepts the
connection into its backlog at once, or refuses it) and asks the kernel who called
``listen()`` on it: ``SO_PEERCRED`` gives its pid, uid and gid, and ``SO_PEERPIDFD``
(Linux 6.5+) a pidfd of that very process. A pid alone is a number that a new process
may get once the listener has exited (a forked child may still hold the socket, and
``SO_PEERCRED`` then still names the dead listener's pid), so identity is the pidfd:

* with ``SO_PEERPIDFD``, the kernel's pidfd of the listener: exited → ``ProcessGone``;
* without it (older kernels), ``pidfd_open(pid)`` and then a second, fresh connection
  must name the same pid (else ``ListenerChanged``). This cannot catch a pid reused
  while a child of the exited listener holds the socket; ``SO_PEERPIDFD`` can.

``/proc/PID`` is then read (``cmdline``, ``cgroup``) and the pidfd checked again: if
the process exited meanwhile, what was read may be another process's, and the answer is
``ProcessGone``. A pid of 0 means the listener is in a pid namespace this one cannot
name (a container's): ``OtherPidNamespace``. What cannot be read (``hidepid``,
permissions) is left None, with the reason in ``problems``.

A socket-activated plugin's listener is the service manager itself (pid 1, or a cgroup
``init.scope``): its unit is then the service behind the ``.socket`` unit that listens
on the path, which the caller's ``socket_units`` lookup tells (``units.SystemdManager``).
The connection, like any probe's, starts that service if it is not running; the process
to watch for it is the service's main process (``SystemdManager.main_pid``), not pid 1.

Runs on: a worker thread (it does blocking /proc reads); no state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from volplugd.plugin.text import from_bytes
from volplugd.supervision.cgroup import Container, placement
from volplugd.supervision.pidfd import PidFd

__all__ = ["ListenerChanged", "NotListening", "OtherPidNamespace", "ProcessGone",
           "ProcessInfo", "ProcessUnknown", "SocketUnitLookup", "identify", "served_by"]

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5; Python 3.11 lacks the name
MAX_UNIX_PATH = 107
COMMAND_LIMIT = 1024  # bytes of the command line kept, marker included
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_PROC_READ_LIMIT = 64 * 1024

#: The service behind the ``.socket`` unit listening on a path, or None if there is none.
SocketUnitLookup = Callable[[str], str | None]


class ProcessUnknown(Exception):
    """No process can be told for the socket at ``path``; ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NotListening(ProcessUnknown):
    """Nobody accepts connections on the socket (refused, missing, backlog full...)."""


class OtherPidNamespace(ProcessUnknown):
    """The listener is in a pid namespace this one cannot name (the kernel says pid 0)."""


class ProcessGone(ProcessUnknown):
    """The listener exited before (or while) it was looked at."""


class ListenerChanged(ProcessUnknown):
    """Two connections, one after the other, reached listeners with different pids."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The listener of a plugin's socket as the kernel tells it.

    ``unit``/``manager``: the systemd unit that runs it and its manager (``"system"``,
    ``"user@UID.service"``); ``container``: the Docker or Podman container it runs in;
    ``socket_unit``: the ``.socket`` unit that listens for it when it is socket-activated
    (then ``pid`` is the service manager's and ``unit`` the service behind the socket).
    ``problems``: what could not be read, one short text each."""

    pid: int
    uid: int
    gid: int
    command: str | None
    unit: str | None
    manager: str | None
    container: Container | None
    socket_unit: str | None = None
    problems: tuple[str, ...] = ()

    def view(self) -> dict[str, Any]:
        """The plugin view's ``process`` object (``pid, uid, command, unit, container``)."""
        container = None if self.container is None else {
            "engine": self.container.engine, "id": self.container.id}
        return {"pid": self.pid, "uid": self.uid, "command": self.command,
                "unit": self.unit, "container": container}


def identify(path: str, socket_units: SocketUnitLookup | None = None, *,
             peer_pidfd: bool = True) -> tuple[ProcessInfo, PidFd]:
    """The listener on unix socket ``path`` and a pidfd of it (the caller closes it).

    Raises a ``ProcessUnknown`` (``NotListening``, ``OtherPidNamespace``,
    ``ProcessGone``, ``ListenerChanged``), or ``OSError`` when volplugd itself lacks a
    resource (no descriptor left: EMFILE). ``peer_pidfd=False`` uses the older kernels'
    way even where ``SO_PEERPIDFD`` exists (tests exercise both)."""
    pidfd, uid, gid = _listener(path, peer_pidfd)
    try:
        info = _describe(path, pidfd, uid, gid, socket_units)
    except BaseException:
        pidfd.close()
        raise
    return info, pidfd


def served_by(info: ProcessInfo, pidfd: PidFd) -> ProcessInfo:
    """A socket-activated plugin's ``info`` (its listener is the service manager) with
    the service's main process in its place: ``pidfd``'s pid, owner (of ``/proc/PID``)
    and command; the unit, manager and socket unit stay. ``ProcessGone`` if that process
    exited while it was looked at."""
    pid = pidfd.pid
    problems = list(info.problems)
    try:
        owner = os.stat(f"/proc/{pid}")
    except OSError as err:
        raise ProcessGone(f"/proc/{pid}", f"the main process (pid {pid}) exited: "
                                          f"{err.strerror}") from None
    command, _ = _read_proc(pid, problems)
    if pidfd.exited():
        raise ProcessGone(f"/proc/{pid}", f"the main process (pid {pid}) exited "
                                          "while it was looked at")
    return dataclasses.replace(info, pid=pid, uid=owner.st_uid, gid=owner.st_gid,
                               command=command, problems=tuple(problems))


def _listener(path: str, peer_pidfd: bool) -> tuple[PidFd, int, int]:
    with _connected(path) as conn:
        pid, uid, gid = _CREDS.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
        if pid == 0:
            raise OtherPidNamespace(path, "the listener is in another pid namespace "
                                          "(the kernel gives its pid as 0)")
        pidfd = _peer_pidfd(conn) if peer_pidfd else None
    if pidfd is None:
        return _opened_and_confirmed(path, pid), uid, gid
    if pidfd.pid <= 0 or pidfd.exited():
        pidfd.close()
        raise _gone(path, pid)
    return pidfd, uid, gid


def _gone(path: str, pid: int) -> ProcessGone:
    return ProcessGone(path, f"the process that listened on it (pid {pid}) has exited; "
                             "another process still holds the socket")


def _peer_pidfd(conn: socket.socket) -> PidFd | None:
    """The kernel's pidfd of the peer, or None where the kernel has no SO_PEERPIDFD."""
    try:
        fd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as err:
        if err.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            return None
        if err.errno == errno.ESRCH:
            return PidFd(-1, -1)
        raise
    return PidFd.adopt(fd)


def _opened_and_confirmed(path: str, pid: int) -> PidFd:
    try:
        pidfd = PidFd.open(pid)
    except ProcessLookupError:
        raise _gone(path, pid) from None
    try:
        with _connected(path) as again:
            now = _CREDS.unpack(
                again.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))[0]
    except BaseException:
        pidfd.close()
        raise
    if now != pid:
        pidfd.close()
        raise ListenerChanged(path, f"the listener changed while it was looked at "
                                    f"(pid {pid}, then pid {now})")
    return pidfd


@contextlib.contextmanager
def _connected(path: str) -> Iterator[socket.socket]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.setblocking(False)
        code = _connect(conn, path)
        if code == 0:
            yield conn
            return
        if code == errno.EAGAIN:
            raise NotListening(path, "its backlog is full (the listener does not accept)")
        raise NotListening(path, f"cannot connect: {os.strerror(code)}")
    finally:
        conn.close()


def _connect(conn: socket.socket, path: str) -> int:
    if len(os.fsencode(path)) <= MAX_UNIX_PATH:
        return conn.connect_ex(path)
    folder, name = os.path.split(path)  # too long for sun_path: through the folder's fd
    try:
        fd = os.open(folder or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        return err.errno or errno.ENOENT
    try:
        return conn.connect_ex(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


def _describe(path: str, pidfd: PidFd, uid: int, gid: int,
              socket_units: SocketUnitLookup | None) -> ProcessInfo:
    problems: list[str] = []
    command, cgroup = _read_proc(pidfd.pid, problems)
    if pidfd.exited():  # what was read may be a new process's with the same pid
        raise ProcessGone(path, f"the listener (pid {pidfd.pid}) exited while it was looked at")
    where = None if cgroup is None else placement(cgroup)
    unit = None if where is None else where.unit
    manager = None if where is None else where.manager
    socket_unit = None
    if pidfd.pid == 1 or unit == "init.scope":  # the service manager listens: activation
        unit, socket_unit = _activated(path, socket_units, problems)
    return ProcessInfo(pid=pidfd.pid, uid=uid, gid=gid, command=command, unit=unit,
                       manager=manager, container=None if where is None else where.container,
                       socket_unit=socket_unit, problems=tuple(problems))


def _activated(path: str, socket_units: SocketUnitLookup | None,
               problems: list[str]) -> tuple[str | None, str | None]:
    """(service, socket unit) for a socket the service manager listens on."""
    if socket_units is None:
        problems.append("socket-activated: no way to ask systemd which unit")
        return None, None
    try:
        service = socket_units(path)
    except Exception as err:  # noqa: BLE001 - any lookup failure is reported, not raised
        problems.append(f"socket-activated: {err}")
        return None, None
    if service is None:
        problems.append("socket-activated: no .socket unit listens on it")
        return None, None
    return service, _socket_name(service)


def _socket_name(service: str) -> str:
    return service.rpartition(".")[0] + ".socket"


def _read_proc(pid: int, problems: list[str]) -> tuple[str | None, str | None]:
    try:
        folder = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        problems.append(f"/proc/{pid}: {err.strerror}")
        return None, None
    try:
        raw = _read(folder, "cmdline", pid, problems)
        cgroup = _read(folder, "cgroup", pid, problems)
    finally:
        os.close(folder)
    command = None
    if raw is not None:
        command = from_bytes(raw.rstrip(b"\0").replace(b"\0", b" "), COMMAND_LIMIT) or None
    return command, None if cgroup is None else cgroup.decode("utf-8", "replace")


def _read(folder: int, name: str, pid: int, problems: list[str]) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder)
    except OSError as err:
        problems.append(f"/proc/{pid}/{name}: {err.strerror}")
        return None
    try:
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read(_PROC_READ_LIMIT)
    except OSError as err:
        problems.append(f"/proc/{pid}/{name}: {err.strerror}")
        return None
    finally:
        os.close(fd)

