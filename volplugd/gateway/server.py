"""The gateway: one v1-protocol unix socket per registered plugin, ``<dir>/<name>.sock``.

The ``gateway`` thread follows the registry's snapshots: a plugin that is registered and
not ``rejected`` gets a socket (bound, given ``mode`` and ``group``, and only then
listening), one that leaves or is rejected loses it, and at a clean stop every socket is
closed and removed. A name that cannot be a file name is skipped with one warning. The
folder holds ``GATEWAY_MARK`` so that discovery never takes these sockets for plugins.
Every socket is served by one ``serving.Server`` (its ``gateway-accept`` thread and a
thread per connection): at most ``max_connections`` at once, ``max_per_uid`` of one
unprivileged uid, ``reserved`` of them kept for root and ``gateway.group`` (Docker and
Podman run as root); a connection refused gets ``503 {"Err": …}`` with ``Retry-After``
at once. What a request gets is ``answer``'s job; Docker spec files are ``specs``'.

Runs on: the ``gateway`` thread; the server's threads; ``start``/``stop``/``join`` from
the daemon's main thread; ``socket_for`` on any thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping

from volplugd.config import GatewaySettings
from volplugd.contracts import Commands
from volplugd.discovery.scan import GATEWAY_MARK
from volplugd.gateway.answer import GatewayApp, OnGatewayRequest, protocol_error
from volplugd.gateway.specs import SpecFiles
from volplugd.log import get_logger
from volplugd.model import PluginState, PluginView, Snapshot
from volplugd.serving import Budget, Peer, RefusalLog, Rules, Server, cached_groups
from volplugd.unixsocket import MAX_UNIX_PATH, group_id, listen_unix

__all__ = ["IDLE", "MAX_PER_UID", "READ", "RESERVED_SLOTS", "Gateway", "OnGatewayRequest",
           "name_problem", "socket_path"]

log = get_logger(__name__)

WaitSnapshot = Callable[[int, float], Snapshot]
NAME_MAX = 255
BACKLOG = 128
SPECS_REFRESH = 30.0  # seconds between looks at unchanged spec files
IDLE = 120.0  # seconds an idle keep-alive connection stays open (Go's client: 90 s)
READ = 10.0  # seconds from a request's first byte to its last; each write
MAX_PER_UID = 64  # gateway connections one unprivileged uid may hold
RESERVED_SLOTS = 128  # of max_connections, kept for root and gateway.group


def name_problem(directory: str, name: str) -> str | None:
    """Why ``<directory>/<name>.sock`` cannot be a gateway socket, or None."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        return "cannot be a file name"
    if name.startswith("."):
        return "a hidden file name"
    if len(os.fsencode(name + ".sock")) > NAME_MAX:
        return f"{name}.sock is longer than {NAME_MAX} bytes"
    if len(os.fsencode(os.path.join(directory, name + ".sock"))) > MAX_UNIX_PATH:
        return f"the socket path would be longer than {MAX_UNIX_PATH} bytes"
    return None


def socket_path(directory: str, name: str) -> str | None:
    """The gateway socket of plugin ``name``, or None if the name cannot have one."""
    if name_problem(directory, name) is not None:
        return None
    return os.path.join(directory, name + ".sock")


class Gateway:
    """Keeps the gateway sockets in step with the registry and serves them."""

    def __init__(self, settings: GatewaySettings, commands: Commands,
                 wait_snapshot: WaitSnapshot, *, on_request: OnGatewayRequest | None = None,
                 specs: SpecFiles | None = None, tick: float = 0.5,
                 max_connections: int = 512, max_per_uid: int = MAX_PER_UID,
                 reserved: int = RESERVED_SLOTS, read_timeout: float = READ) -> None:
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
        self._skipped: set[str] = set()
        self._stopping = threading.Event()
        rules = Rules(GatewayApp(commands, on_request, read_timeout), protocol_error,
                      read_timeout=read_timeout, first_request_timeout=IDLE,
                      idle_timeout=IDLE, events="gateway")
        self._server = Server(
            rules, name="gateway",
            budget=Budget(total=max_connections, per_uid=max_per_uid,
                          reserved=min(reserved, max_connections - 1)),
            follow=Budget(total=1),
            refusals=RefusalLog("gateway_connection_refused", listener="gateway"),
            privileged=self._privileged)
        self._follower = threading.Thread(target=self._follow, name="gateway", daemon=True)
        self._last: Snapshot | None = None
        self._specs_key: frozenset[tuple[str, str, str]] | None = None
        self._specs_due = 0.0

    def socket_for(self, name: str) -> str | None:
        """Where plugin ``name``'s gateway socket is (or will be); None if never."""
        return socket_path(self._dir, name)

    @property
    def connections(self) -> int:
        """Client connections being served right now, on all the sockets."""
        return self._server.connections

    @property
    def idle(self) -> int:
        """Of those, the ones waiting for a request (the ones a newcomer may displace)."""
        return self._server.idle

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._listeners)

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Create the folder and its mark (errors raise here), then start the threads."""
        _make_dir(self._dir)
        with open(os.path.join(self._dir, GATEWAY_MARK), "w") as f:
            f.write("volplugd's gateway sockets: never plugins of their own\n")
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

    def _privileged(self, peer: Peer, groups: frozenset[int] | None) -> bool | None:
        """Root and ``gateway.group`` keep the reserved slots; None: only the peer's
        groups (not cached) can tell."""
        if peer.uid == 0 or self._gid is None or peer.gid == self._gid:
            return peer.uid == 0 or peer.gid == self._gid
        if groups is None:
            groups = cached_groups(peer.uid, peer.gid)
        return None if groups is None else self._gid in groups

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
        wanted = {name: view for name, view in snapshot.plugins.items()
                  if view.state is not PluginState.REJECTED and self._usable(name)}
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

    def _usable(self, name: str) -> bool:
        problem = name_problem(self._dir, name)
        if problem is not None and name not in self._skipped:
            self._skipped.add(name)
            log.warning("gateway_plugin_skipped", plugin=name, reason=problem)
        return problem is None

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name + ".sock")

    def _open(self, name: str) -> None:
        path = self._path(name)
        try:
            sock = _bind(path, self._settings.mode, self._gid)
        except OSError as err:
            log.error("gateway_socket_failed", plugin=name, path=path, error=str(err))
            return
        with self._lock:
            self._listeners[name] = sock
        self._server.add(sock, name)
        log.info("gateway_socket_created", plugin=name, path=path)

    def _close(self, name: str) -> None:
        with self._lock:
            sock = self._listeners.pop(name)
        self._server.remove(sock)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._dir, GATEWAY_MARK))
        self._server.stop()  # idle keep-alive clients see the end now, not at IDLE


def _make_dir(path: str) -> None:
    """Create ``path`` 0755 whatever the umask (the unit's is 0077: the socket modes
    must decide who may connect); a folder that exists is left as it is."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chmod(path, 0o755)  # noqa: S103 - a folder others must traverse, read-only


def _bind(path: str, mode: int, gid: int | None) -> socket.socket:
    """Replace a stale socket (ours, from a crash), bind, set mode and group, listen."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
        os.unlink(path)
    return listen_unix(path, mode, gid, BACKLOG)
