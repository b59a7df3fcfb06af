"""Listeners: the control socket (AF_UNIX) and the read-only metrics port (TCP).

One accept thread per listener, one thread per connection, at most ``max_connections``
of them: further clients wait in the listen backlog (128, not the stdlib's 5) until a
slot frees, and a keep-alive connection idling between requests gives its slot up when
someone is waiting. ``stop()`` is prompt: it wakes the accept thread, shuts every open
connection down and makes follow streams end; ``join()`` waits for the threads.
Runs on: the caller's thread (start/stop/join), the accept thread, connection threads.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import structlog

from volplugd.control.app import make_metrics_app
from volplugd.control.connection import Site, serve_connection

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["BACKLOG", "ControlServer", "ControlSocketError", "TcpMetricsServer", "split_listen"]

BACKLOG = 128
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL
_log = structlog.get_logger()


class ControlSocketError(OSError):
    """The listening socket cannot be set up (path in use, not a socket, bad group…)."""


class _Listener:
    """The accept loop and connection bookkeeping shared by both servers."""

    def __init__(self, app: WSGIApplication, *, name: str, max_connections: int,
                 max_follow: int, read_timeout: float, read_only: bool):
        self._name = name
        self._max = max_connections
        self._follow = threading.BoundedSemaphore(max_follow)
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._idle: set[socket.socket] = set()
        self._sock: socket.socket | None = None
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self.site = Site(app=app, read_timeout=read_timeout, read_only=read_only,
                         stopping=self._stopping, follow_slot=self._take_follow,
                         may_keep_alive=self._has_room, set_idle=self._set_idle)

    # -- lifecycle --

    def start(self) -> None:
        """Bind (or adopt) the socket and start accepting. Raises ControlSocketError."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError(f"{self._name} can be started once")
        self._sock = self._open()
        self._sock.setblocking(False)
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name=f"{self._name}-accept",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, end open connections and follow streams; idempotent."""
        with self._cond:
            if self._stopping.is_set():
                return
            self._stopping.set()
            if self._wake is not None:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake[1], b"x")
            for conn in self._conns:
                _shutdown(conn)
            self._cond.notify_all()
        self._release_address()
        if self._thread is None:
            self._discard_unstarted()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the accept and connection threads (see ``is_alive()`` after).

        A connection thread blocked inside the app (a plugin call) ends when that
        call returns; the threads are daemons, so they never hold up the process exit.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(_left(deadline))
        for thread in self._threads():
            thread.join(_left(deadline))

    def is_alive(self) -> bool:
        """True while the accept thread or any connection thread still runs."""
        accepting = self._thread is not None and self._thread.is_alive()
        return accepting or any(t.is_alive() for t in self._threads())

    def _threads(self) -> list[threading.Thread]:
        with self._cond:
            return list(self._conns.values())

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        with self._cond:
            return len(self._conns)

    # -- the accept thread --

    def _serve(self) -> None:
        assert self._sock is not None
        assert self._wake is not None
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        try:
            while not self._stopping.is_set():
                poller.poll()
                if self._stopping.is_set() or not self._wait_for_room():
                    break
                self._accept_one()
        except Exception:  # noqa: BLE001 — logged; a dead accept thread must be visible
            _log.exception("control_accept_thread_died", listener=self._name)
        finally:
            self._close_listener()

    def _wait_for_room(self) -> bool:
        """A client is waiting: free an idle keep-alive slot, or wait for one to end."""
        with self._cond:
            while len(self._conns) >= self._max and not self._stopping.is_set():
                if self._idle:
                    _shutdown(self._idle.pop())
                self._cond.wait()
            return not self._stopping.is_set()

    def _accept_one(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # EMFILE and friends: back off instead of spinning
            _log.warning("control_accept_failed", listener=self._name, error=str(err))
            self._stopping.wait(0.1)
            return
        self._prepare(conn)
        with self._cond:
            if self._stopping.is_set():
                conn.close()
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True,
                                      name=f"{self._name}-conn")
            self._conns[conn] = thread
            thread.start()

    def _prepare(self, conn: socket.socket) -> None:
        conn.setblocking(True)

    def _close_listener(self) -> None:
        with self._cond:  # under the lock: stop() must never write to a closed pipe
            if self._sock is not None:
                self._sock.close()
            if self._wake is not None:
                os.close(self._wake[0])
                os.close(self._wake[1])
                self._wake = None

    # -- connection threads --

    def _handle(self, conn: socket.socket) -> None:
        try:
            serve_connection(conn, self.site)
        except Exception:  # noqa: BLE001 — one broken connection must not go unnoticed
            _log.exception("control_connection_failed", listener=self._name)
        finally:
            with self._cond:
                self._idle.discard(conn)
                del self._conns[conn]
                conn.close()
                self._cond.notify_all()

    def _has_room(self) -> bool:
        return len(self._conns) < self._max

    def _set_idle(self, conn: socket.socket, idle: bool) -> None:
        with self._cond:
            if idle:
                self._idle.add(conn)
                self._cond.notify_all()
            else:
                self._idle.discard(conn)

    def _take_follow(self) -> Callable[[], None] | None:
        if not self._follow.acquire(blocking=False):
            return None
        return self._follow.release

    # -- per listener kind --

    def _open(self) -> socket.socket:
        raise NotImplementedError

    def _release_address(self) -> None:
        """Undo what binding did to the filesystem (nothing for TCP)."""

    def _discard_unstarted(self) -> None:
        if self._sock is not None:
            self._sock.close()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class ControlServer(_Listener):
    """The control API on a unix socket, created ``mode`` and owned by ``group``.

    A stale socket file at ``path`` is replaced; a path that is not a socket, or a
    socket someone still listens on, is refused. The file is removed by ``stop()``.
    With ``sock`` (systemd socket activation) that socket is served as it is and the
    file is never touched.
    """

    def __init__(self, app: WSGIApplication, *, path: str | None, mode: int,
                 group: str | None, sock: socket.socket | None = None,
                 max_connections: int = 64, max_follow: int = 16, read_timeout: float = 10.0):
        if sock is None and path is None:
            raise ValueError("ControlServer needs a path or an inherited socket")
        super().__init__(app, name="control", max_connections=max_connections,
                         max_follow=max_follow, read_timeout=read_timeout, read_only=False)
        self._inherited = sock
        self.path = path if sock is None else _name_of(sock)
        self._mode = mode
        self._group = group
        self._identity: tuple[int, int] | None = None

    def _open(self) -> socket.socket:
        if self._inherited is not None:
            return self._inherited
        assert self.path is not None
        sock = _bind_unix(self.path, self._mode, self._group)
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        return sock

    def _discard_unstarted(self) -> None:
        if self._inherited is not None:
            self._inherited.close()  # ours since the constructor took it

    def _release_address(self) -> None:
        if self._identity is None or self.path is None:
            return
        identity, self._identity = self._identity, None
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == identity:  # never remove a successor's socket
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def _name_of(sock: socket.socket) -> str | None:
    name = sock.getsockname()
    return name if isinstance(name, str) and name else None


def _bind_unix(path: str, mode: int, group: str | None) -> socket.socket:
    """Replace a stale socket, bind, set mode and group, and only then listen.

    Until ``listen()`` a bound socket refuses every connection, so nobody can connect
    while the file still has the umask's permissions.
    """
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ControlSocketError(errno.ENAMETOOLONG,
                                 f"unix socket path longer than {_MAX_UNIX_PATH} bytes", path)
    gid = None if group is None else _gid(group)
    if _check_replaceable(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if gid is not None:
            _chgrp(path, gid, group)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return sock


def _check_replaceable(path: str) -> bool:
    """True if a stale socket is there to remove; raises if the path must be kept."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(errno.EEXIST, "exists and is not a socket; not replacing it",
                                 path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True  # stale: nobody listens
    except FileNotFoundError:
        return False
    except OSError as err:
        raise ControlSocketError(err.errno, f"cannot tell whether it is in use: {err}",
                                 path) from err
    finally:
        probe.close()
    raise ControlSocketError(errno.EADDRINUSE, "another process is listening on it", path)


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(errno.EINVAL, f"no group named {group!r}") from None


def _chgrp(path: str, gid: int, group: str | None) -> None:
    if os.stat(path).st_gid == gid:
        return
    try:
        os.chown(path, -1, gid)
    except OSError as err:
        raise ControlSocketError(err.errno, f"cannot give the socket to group {group!r}: "
                                 f"{err.strerror}", path) from err


class TcpMetricsServer(_Listener):
    """The metrics port: GET and HEAD only (anything else 405), so nothing on TCP can
    change state.

    Give either a WSGI ``app``, or the ``metrics`` callable with a ``status_page``
    callable (served at ``/metrics`` and ``/``). The address is ``listen``
    ("HOST:PORT", "[::1]:PORT") or ``host`` and ``port``; port 0 picks a free port and
    ``.port`` says which after ``start()``. With ``sock`` (socket activation) that
    listening socket is served instead.
    """

    def __init__(self, app: WSGIApplication | Callable[[], tuple[bytes, str]],
                 status_page: Callable[[], bytes] | None = None, *,
                 listen: str | None = None, host: str | None = None, port: int | None = None,
                 sock: socket.socket | None = None,
                 on_request: Callable[[str, int], None] | None = None,
                 max_connections: int = 16, read_timeout: float = 10.0):
        if status_page is not None:
            metrics = cast("Callable[[], tuple[bytes, str]]", app)
            app = make_metrics_app(metrics, status_page, on_request)
        super().__init__(cast("WSGIApplication", app), name="metrics",
                         max_connections=max_connections, max_follow=1,
                         read_timeout=read_timeout, read_only=True)
        if listen:
            host, port = split_listen(listen)
        if sock is None and port is None:
            raise ValueError("TcpMetricsServer needs listen, host and port, or a socket")
        self.host = host or ""
        self.port = port or 0
        self._inherited = sock

    def _open(self) -> socket.socket:
        sock = self._inherited or _bind_tcp(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.site.base_environ["SERVER_PORT"] = str(self.port)
        return sock

    def _discard_unstarted(self) -> None:
        if self._inherited is not None:
            self._inherited.close()

    def _prepare(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        # headers and body leave in separate writes at times; no Nagle delay for them
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def split_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:9612" → ("127.0.0.1", 9612); "[::1]:9612" → ("::1", 9612)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _bind_tcp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
