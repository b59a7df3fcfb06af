"""The gateway: one v1-protocol unix socket per registered plugin, ``<dir>/<name>.sock``.

The ``gateway`` thread follows the registry's snapshots: a plugin ``choice`` picks gets a
socket (bound, given ``mode`` and ``group``, and only then listening), one that leaves
or is no longer picked loses it, and at a clean
stop every socket is closed and removed. A plugin whose socket cannot be made (EMFILE,
ENOSPC, EACCES...) is logged once, not once per snapshot. The folder is
one volplugd may write in (``volplugd.safefs``: created 0755, or refused), every file in
it is made and removed through its descriptor, and an existing file at a socket's name
is replaced only when it is a socket nobody listens on. The folder holds
``GATEWAY_MARK`` so that discovery never takes these sockets for plugins.
Every socket is served by one ``serving.Server`` (the server core of the control socket
too: its ``gateway-accept`` thread and a thread per connection), at most
``max_connections`` at once over all sockets, ``max_per_uid`` for a uid other than root,
``reserved`` for root alone (Docker and Podman), so no member of ``gateway.group`` can
keep them out; a connection over a bound gets its ``503 {"Err": …}`` with
``Retry-After`` at once, and the refusal is logged once per 10 s per uid and reason.
What a request gets is ``answer``'s job; Docker spec files are ``specs``'.

Runs on: the ``gateway`` thread; the server's threads; ``start``/``stop``/``join`` from
the daemon's main thread; ``socket_for`` on any thread.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from volplugd.admission import ConnectionBudget, Peer, Refusal
from volplugd.config import GatewaySettings
from volplugd.contracts import Commands
from volplugd.discovery.scan import GATEWAY_MARK
from volplugd.gateway.answer import GatewayApp, OnGatewayRequest, protocol_error
from volplugd.gateway.choice import Choice, socket_path
from volplugd.gateway.specs import SpecFiles
from volplugd.log import get_logger
from volplugd.model import PluginView, Snapshot
from volplugd.refusals import RefusalLog
from volplugd.safefs import Folder
from volplugd.serving import Rules, Server
from volplugd.unixsocket import group_id, listen_unix, replaceable

__all__ = ["IDLE", "MAX_CONNECTIONS", "MAX_PER_UID", "READ", "RESERVED", "Gateway",
           "OnGatewayRequest"]

log = get_logger(__name__)

WaitSnapshot = Callable[[int, float], Snapshot]
BACKLOG = 128
MAX_CONNECTIONS = 512  # client connections at once, over all gateway sockets
MAX_PER_UID = 64  # of them, what one uid other than root may hold
RESERVED = 64  # of them, kept for root (Docker, Podman)
IDLE = 120.0  # seconds an idle keep-alive connection stays open (Go's client: 90 s)
READ = 10.0  # seconds from a request's first byte to its last; each write
_REFUSALS = {
    Refusal.UID_LIMIT: "this user has as many gateway connections open as one user may; "
                       "close one and try again",
    Refusal.FULL: "every gateway connection slot is taken; try again",
}
SPECS_REFRESH = 30.0  # seconds between looks at unchanged spec files
MARK_TEXT = b"volplugd's gateway sockets: never plugins of their own\n"


class Gateway:
    """Keeps the gateway sockets in step with the registry and serves them."""

    def __init__(self, settings: GatewaySettings, commands: Commands,
                 wait_snapshot: WaitSnapshot, *, on_request: OnGatewayRequest | None = None,
                 specs: SpecFiles | None = None, tick: float = 0.5,
                 max_connections: int = MAX_CONNECTIONS, max_per_uid: int = MAX_PER_UID,
                 reserved: int = RESERVED,
                 on_refused: Callable[[str], None] | None = None,
                 read_timeout: float = READ) -> None:
        self._settings = settings
        self._dir = os.path.abspath(settings.dir)
        self._commands = commands
        self._wait = wait_snapshot
        self._on_request = on_request
        self._specs = specs
        self._tick = tick
        try:
            self._gid = None if settings.group is None else group_id(settings.group)
        except LookupError as err:
            raise ValueError(f"gateway.group: {err}") from None
        self._listeners: dict[str, socket.socket] = {}  # name -> listening socket
        self._lock = threading.Lock()
        self._choice = Choice(self._dir)
        self._failed: dict[str, str] = {}  # name -> the error its socket got (logged once)
        self._inodes: dict[str, tuple[int, int]] = {}  # name -> its socket file's identity
        self._folder: Folder | None = None
        rules = Rules(GatewayApp(commands, on_request, read_timeout), protocol_error,
                      read_timeout=read_timeout, first_request_timeout=IDLE,
                      idle_timeout=IDLE, events="gateway")
        self._server = Server(
            rules, name="gateway",
            budget=ConnectionBudget(total=max_connections, per_uid=max_per_uid,
                                    reserved=min(reserved, max_connections - 1)),
            follow=ConnectionBudget(total=1), refusals=RefusalLog(__name__),
            privileged=_root, on_refused=on_refused, refused_messages=_REFUSALS)
        self._stopping = threading.Event()
        self._follower = threading.Thread(target=self._follow, name="gateway", daemon=True)
        self._last: Snapshot | None = None
        self._specs_key: frozenset[tuple[str, str, str]] | None = None
        self._specs_due = 0.0

    def socket_for(self, name: str) -> str | None:
        """Where plugin ``name``'s gateway socket is (or will be); None if never."""
        return socket_path(self._dir, name)

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._listeners)

    @property
    def connections(self) -> int:
        """Client connections admitted and not yet ended, over all gateway sockets."""
        return self._server.connections

    @property
    def idle(self) -> int:
        """Of those, the ones waiting for a request (the ones a newcomer may displace)."""
        return self._server.idle

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Open (or create) the folder and write its mark, open the spec folder (errors
        raise here: UnsafeFolder for a folder volplugd may not write in), then start
        the threads."""
        folder = Folder.open(self._dir, 0o755)
        try:
            folder.write(GATEWAY_MARK, MARK_TEXT, 0o644)
            if self._specs is not None:
                self._specs.open()
        except BaseException:
            folder.close()
            raise
        self._folder = folder
        self._server.start()
        self._follower.start()

    def stop(self) -> None:
        """Stop following: the sockets go (``_finish``), then the server stops."""
        self._stopping.set()
        if self._follower.ident is None:
            self._server.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._follower.ident is not None:
            self._follower.join(timeout)
        self._server.join(timeout)

    # --- following the snapshots (the ``gateway`` thread) --------------------------

    def _follow(self) -> None:
        generation = -1
        try:
            while not self._stopping.is_set():
                snapshot = self._wait(generation, self._tick)
                if snapshot.generation != generation and not self._stopping.is_set():
                    generation = snapshot.generation
                    self.update(snapshot)
        finally:
            self._finish()

    def update(self, snapshot: Snapshot) -> None:
        """Bring the sockets (and spec files) in step with ``snapshot``: one step."""
        self._last = snapshot
        wanted = self._choice.wanted(snapshot)
        self._failed = {n: error for n, error in self._failed.items() if n in wanted}
        with self._lock:
            gone = [n for n in self._listeners if n not in wanted]
        for name in gone:
            self._close(name)
        for name in sorted(wanted):
            if name not in self._listeners:
                self._open(name)
        if self._specs is not None:
            self._update_specs(wanted)

    def _update_specs(self, wanted: Mapping[str, PluginView]) -> None:
        """Spec files follow the served plugins and their sources; unchanged, they are
        looked at again every SPECS_REFRESH s (the administrator may add a file)."""
        assert self._specs is not None
        with self._lock:
            served = {n: wanted[n] for n in self._listeners}
        key = frozenset((n, v.source, v.address) for n, v in served.items())
        now = time.monotonic()
        if key == self._specs_key and now < self._specs_due:
            return
        self._specs_key, self._specs_due = key, now + SPECS_REFRESH
        try:
            self._specs.update({n: (self._path(n), v) for n, v in served.items()})
        except OSError as err:
            self._specs_due = 0.0  # try again with the next snapshot
            log.error("docker_specs_failed", error=str(err))

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name + ".sock")

    def _open(self, name: str) -> None:
        assert self._folder is not None
        file = name + ".sock"
        try:
            replaceable(self._folder, file)  # a stale socket (ours, a crash's) is replaced
            sock = listen_unix(self._folder, file, self._settings.mode, self._gid, BACKLOG)
            st = self._folder.lstat(file)
        except OSError as err:
            error = str(err)
            if self._failed.get(name) != error:
                log.error("gateway_socket_failed", plugin=name, path=self._path(name),
                          error=error)
            self._failed[name] = error
            return
        self._failed.pop(name, None)
        if st is not None:
            self._inodes[name] = (st.st_dev, st.st_ino)
        with self._lock:
            self._listeners[name] = sock
        self._server.add(sock, name)
        log.info("gateway_socket_created", plugin=name, path=self._path(name))

    def _close(self, name: str) -> None:
        """Remove the socket's file, then stop serving it: once ``names`` leaves it out,
        its file is gone too."""
        identity = self._inodes.pop(name, None)
        if self._folder is not None:
            st = self._folder.lstat(name + ".sock")
            if st is not None and (st.st_dev, st.st_ino) == identity:
                self._folder.remove(name + ".sock")  # never a file someone put there since
        with self._lock:
            sock = self._listeners.pop(name)
        self._server.remove(sock)
        log.info("gateway_socket_removed", plugin=name)

    def _finish(self) -> None:
        """A clean stop: spec files back to the plugins' own sockets, sockets removed."""
        if self._specs is not None and self._last is not None:
            try:
                self._specs.restore(self._last)
            except Exception:  # the sockets must go whatever happened to the spec files
                log.exception("gateway_specs_restore_failed")
        for name in self.names:
            self._close(name)
        if self._folder is not None:
            self._folder.remove(GATEWAY_MARK)
            self._folder.close()
        if self._specs is not None:
            self._specs.close()
        self._server.stop()  # idle keep-alive clients see the end now, not at IDLE


def _root(peer: Peer, groups: frozenset[int] | None) -> bool:
    """Only root (Docker, Podman) keeps the reserved slots."""
    return peer.uid == 0
