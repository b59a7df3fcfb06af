"""The two listeners of the control API, each one ``serving.Server``: the control socket
(AF_UNIX: mode, group, stale files, socket activation, per-uid slots) and the read-only
metrics port (TCP, the loopback ``Host`` rule).

Runs on: the caller's thread (start/stop/join); the server's threads for the rest.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import cast

from volplugd.admission import ConnectionBudget
from volplugd.config import parse_listen
from volplugd.control.access import AccessPolicy
from volplugd.control.app import make_metrics_app
from volplugd.control.routing import JSON, Application, Reply
from volplugd.model import encode
from volplugd.refusals import RefusalLog
from volplugd.safefs import Folder
from volplugd.serving import BACKLOG, FIRST_REQUEST_TIMEOUT, Rules, Server, loopback_host
from volplugd.unixsocket import (
    MAX_UNIX_PATH,
    AddressKept,
    GroupRefused,
    group_id,
    listen_unix,
    replaceable,
)

__all__ = ["BACKLOG", "FOLLOW_PER_UID", "MAX_PER_UID", "PROTOCOL_ERRORS", "RESERVED_FOLLOW",
           "RESERVED_SLOTS", "ControlServer", "ControlSocketError", "TcpMetricsServer",
           "protocol_error"]

MAX_PER_UID = 16  # control-socket connections one unprivileged uid may hold
RESERVED_SLOTS = 8  # of max_connections, kept for root and the admin groups
FOLLOW_PER_UID = 4  # follow streams one unprivileged uid may hold
RESERVED_FOLLOW = 4  # of max_follow, kept for root and the admin groups
_CODES = {405: "method_not_allowed", 413: "request_too_large", 414: "request_too_large",
          421: "misdirected_request", 431: "request_too_large", 500: "internal_error",
          503: "too_many_connections"}
PROTOCOL_ERRORS = frozenset({"too_many_connections"})
"""Codes the control socket's server answers by itself, beyond the app's error table
(``misdirected_request`` is the TCP listener's only)."""


class ControlSocketError(OSError):
    """The listening socket cannot be set up (path in use, not a socket, bad group…)."""


def protocol_error(status: int, message: str) -> Reply:
    """The control API's answer to a request its server refuses by itself."""
    code = _CODES.get(status, "invalid_request")
    return Reply(status, encode({"error": {"code": code, "message": message}}), JSON)


class _Listener:
    """One ``Server`` on one listening socket, opened at ``start``."""

    def __init__(self, name: str, server: Server, inherited: socket.socket | None):
        self._name = name
        self._server = server
        self._inherited = inherited
        self._started = False

    def start(self) -> None:
        """Bind (or adopt) the socket and start accepting. Raises ControlSocketError."""
        if self._started:
            raise RuntimeError(f"{self._name} can be started once")
        self._started = True
        sock = self._open()
        self._server.add(sock)
        self._server.start()

    def stop(self) -> None:
        """Stop accepting, end open connections and follow streams; idempotent."""
        self._server.stop()
        self._release_address()
        if not self._started and self._inherited is not None:
            self._inherited.close()  # ours since the constructor took it

    def join(self, timeout: float | None = None) -> None:
        self._server.join(timeout)

    def is_alive(self) -> bool:
        return self._server.is_alive()

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        return self._server.connections

    @property
    def idle(self) -> int:
        """Of those, the ones waiting for a head (the ones a newcomer may displace)."""
        return self._server.idle

    def _open(self) -> socket.socket:
        raise NotImplementedError

    def _release_address(self) -> None:
        """Undo what binding did to the filesystem (nothing for TCP)."""


class ControlServer(_Listener):
    """The control API on a unix socket, created ``mode`` and owned by ``group``.

    Its folder must be one volplugd may write in (``volplugd.safefs``: created 0755, or
    refused when it is a symlink, owned by another user, or writable by group or
    others); the socket is made through the folder's descriptor. A stale socket file at
    ``path`` is replaced; a path that is not a socket, or a socket someone still listens
    on, is refused. The file is removed by ``stop()``.
    With ``sock`` (systemd socket activation) that socket is served as it is and the
    file is never touched.

    Each connection's peer is read at accept, before any request: one uid holds at most
    ``max_per_uid`` connections, and ``reserved`` of ``max_connections`` are kept for
    root and ``access``'s admin groups (see ``ConnectionBudget``). ``on_refused(reason)``
    is told each connection refused (503 too_many_connections): "uid_limit" or "full".
    Follow streams are shared the same way: ``follow_per_uid`` of ``max_follow`` per
    unprivileged uid, ``reserved_follow`` kept for root and admins.
    """

    def __init__(self, app: Application, *, path: str | None, mode: int,
                 group: str | None, sock: socket.socket | None = None,
                 max_connections: int = 64, max_follow: int = 16, read_timeout: float = 10.0,
                 access: AccessPolicy | None = None, max_per_uid: int = MAX_PER_UID,
                 reserved: int = RESERVED_SLOTS,
                 first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
                 on_refused: Callable[[str], None] | None = None,
                 follow_per_uid: int = FOLLOW_PER_UID, reserved_follow: int = RESERVED_FOLLOW):
        if sock is None and path is None:
            raise ValueError("ControlServer needs a path or an inherited socket")
        access = access or AccessPolicy()
        rules = Rules(app, protocol_error, read_timeout=read_timeout,
                      first_request_timeout=first_request_timeout)
        server = Server(
            rules, name="control",
            budget=ConnectionBudget(total=max_connections, per_uid=max_per_uid,
                                    reserved=min(reserved, max_connections - 1)),
            follow=ConnectionBudget(total=max_follow, per_uid=follow_per_uid,
                                    reserved=min(reserved_follow, max_follow - 1)),
            refusals=RefusalLog("volplugd.control.server"), on_refused=on_refused,
            privileged=access.keeps_reserved_slots)
        super().__init__("control", server, sock)
        self.path = path if sock is None else _name_of(sock)
        self._mode = mode
        self._group = group
        self._identity: tuple[int, int] | None = None
        self._folder: Folder | None = None  # the socket's folder, open while it is served

    def _open(self) -> socket.socket:
        if self._inherited is not None:
            return self._inherited
        assert self.path is not None
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH:
            raise ControlSocketError(errno.ENAMETOOLONG,
                                     f"unix socket path longer than {MAX_UNIX_PATH} bytes",
                                     self.path)
        folder = Folder.open(os.path.dirname(os.path.abspath(self.path)))
        name = os.path.basename(self.path)
        try:
            sock = _bind_unix(folder, name, self._mode, self._group)
        except BaseException:
            folder.close()
            raise
        self._folder = folder
        st = folder.lstat(name)
        self._identity = None if st is None else (st.st_dev, st.st_ino)
        return sock

    def _release_address(self) -> None:
        folder, self._folder = self._folder, None
        if folder is None or self.path is None:
            return
        identity, self._identity = self._identity, None
        name = os.path.basename(self.path)
        st = folder.lstat(name)
        if st is not None and (st.st_dev, st.st_ino) == identity:
            folder.remove(name)  # never a successor's socket
        folder.close()


def _name_of(sock: socket.socket) -> str | None:
    name = sock.getsockname()
    return name if isinstance(name, str) and name else None


def _bind_unix(folder: Folder, name: str, mode: int, group: str | None) -> socket.socket:
    """Replace a stale socket, then ``listen_unix``: the file appears at ``name`` only
    once it listens, with its mode and group."""
    path = folder.join(name)
    try:
        gid = None if group is None else group_id(group)
    except LookupError as err:
        raise ControlSocketError(errno.EINVAL, str(err)) from None
    try:
        replaceable(folder, name)  # a stale socket is replaced by the rename
        return listen_unix(folder, name, mode, gid, BACKLOG)
    except AddressKept as err:
        raise ControlSocketError(err.errno, err.strerror, path) from err
    except GroupRefused as err:
        raise ControlSocketError(err.errno, f"cannot give the socket to group {group!r}: "
                                 f"{err.strerror}", path) from err


class TcpMetricsServer(_Listener):
    """The metrics port: GET and HEAD only (anything else 405), so nothing on TCP can
    change state.

    Give either an ``app``, or the ``metrics`` callable with a ``status_page``
    callable (served at ``/metrics`` and ``/``; ``show_status_page=False`` leaves ``/``
    a 404). The address is ``listen`` ("HOST:PORT", "[::1]:PORT") or ``host`` and
    ``port``; port 0 picks a free port and ``.port`` says which after ``start()``. With
    ``sock`` (socket activation) that listening socket is served instead.

    Bound to a loopback address, it answers only requests whose ``Host`` is a loopback
    name or address (``421`` otherwise: a web page cannot read it by DNS rebinding);
    bound elsewhere, the operator chose to expose it and any ``Host`` is served.
    """

    def __init__(self, app: Application | Callable[[], tuple[bytes, str]],
                 status_page: Callable[[], bytes] | None = None, *,
                 listen: str | None = None, host: str | None = None, port: int | None = None,
                 sock: socket.socket | None = None,
                 on_request: Callable[[str, int], None] | None = None,
                 max_connections: int = 16, read_timeout: float = 10.0,
                 show_status_page: bool = True,
                 first_request_timeout: float = FIRST_REQUEST_TIMEOUT):
        if status_page is not None:
            metrics = cast("Callable[[], tuple[bytes, str]]", app)
            app = make_metrics_app(metrics, status_page if show_status_page else None,
                                   on_request)
        if listen:
            host, port = parse_listen(listen)
        if sock is None and port is None:
            raise ValueError("TcpMetricsServer needs listen, host and port, or a socket")
        self.host = host or ""
        self.port = port or 0
        self._app = cast("Application", app)
        self._max = max_connections
        self._read_timeout = read_timeout
        self._first = first_request_timeout
        super().__init__("metrics", self._make_server(loopback=False), sock)

    def _make_server(self, *, loopback: bool) -> Server:
        rules = Rules(self._app, protocol_error, read_timeout=self._read_timeout,
                      first_request_timeout=self._first, read_only=True,
                      host_allowed=loopback_host if loopback else None)
        return Server(rules, name="metrics", budget=ConnectionBudget(total=self._max),
                      follow=ConnectionBudget(total=1),
                      refusals=RefusalLog("volplugd.control.server"), prepare=_no_delay)

    def _open(self) -> socket.socket:
        sock = self._inherited or _bind_tcp(self.host, self.port)
        address = sock.getsockname()
        self.port = address[1]
        if ipaddress.ip_address(address[0].partition("%")[0]).is_loopback:
            self._server.stop()  # never started: frees its wake-up socket
            self._server = self._make_server(loopback=True)
        return sock


def _no_delay(conn: socket.socket) -> None:
    # headers and body leave in separate writes at times; no Nagle delay for them
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
