"""Which plugins get a gateway socket, and where: ``serves`` is the rule, ``Choice`` the
gateway thread's memory of it (each plugin left out is logged once, each plugin's socket
is asked whether anyone listens once per version of its view), ``name_problem`` and
``socket_path`` the names a socket can have.

Runs on: the gateway's ``gateway`` thread (``Choice``); the helpers on any thread.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

from volplugd.discovery.trust import untrusted_reason
from volplugd.log import get_logger
from volplugd.model import PluginState, PluginView, Snapshot
from volplugd.unixsocket import MAX_UNIX_PATH

__all__ = ["Choice", "name_problem", "serves", "socket_path"]

log = get_logger("volplugd.gateway.server")  # the logger these lines always had

NAME_MAX = 255


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


def serves(view: PluginView, listening: Callable[[str], bool]) -> str | None:
    """Why plugin ``view`` gets no gateway socket, or None if it gets one: not when it is
    ``rejected``, nor from an untrusted folder, nor, while it has never been activated
    (``activating`` with no success yet), when nobody listens on its own unix socket
    (``listening(path)``): a folder of stale sockets costs no descriptors. A plugin once
    ready keeps its socket while it is ``unhealthy`` (answered at once, fail-fast) and
    while it is ``restarting``, whether anyone listens or not: its calls wait there for
    the restarted plugin (``restart.hold``), and Docker and Podman never see it vanish
    (the lifecycle keeps a restarting plugin whose own socket file is gone a moment)."""
    if view.state is PluginState.REJECTED:
        return "rejected"
    untrusted = untrusted_reason(view.warnings)
    if untrusted is not None:
        return f"untrusted: {untrusted}"
    never_ready = view.state is PluginState.ACTIVATING and view.last_success_at is None
    if never_ready and view.address.startswith("unix://") \
            and not listening(view.address[len("unix://"):]):
        return "nobody listens on its socket"
    return None



class Choice:
    """The plugins of each snapshot that get a gateway socket, with what was logged."""

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._skipped: set[str] = set()
        self._left: dict[str, str] = {}  # name -> why it has no socket (logged once)
        self._heard: dict[str, tuple[PluginView, bool]] = {}  # name -> (view, listening)

    def wanted(self, snapshot: Snapshot) -> dict[str, PluginView]:
        wanted = {name: view for name, view in snapshot.plugins.items()
                  if self._usable(name) and self._wanted(name, view)}
        self._left = {n: why for n, why in self._left.items() if n in snapshot.plugins}
        self._heard = {n: seen for n, seen in self._heard.items() if n in snapshot.plugins}
        return wanted

    def _usable(self, name: str) -> bool:
        problem = name_problem(self._dir, name)
        if problem is not None and name not in self._skipped:
            self._skipped.add(name)
            log.warning("gateway_plugin_skipped", plugin=name, reason=problem)
        return problem is None

    def _wanted(self, name: str, view: PluginView) -> bool:
        """Whether ``view`` gets a socket (``serves``); a change of reason is logged."""
        why = serves(view, lambda path: self._listening(name, view, path))
        if why is not None and why != "rejected" and self._left.get(name) != why:
            log.warning("gateway_plugin_left_out", plugin=name, reason=why)
        if why is None:
            self._left.pop(name, None)
        else:
            self._left[name] = why
        return why is None

    def _listening(self, name: str, view: PluginView, path: str) -> bool:
        """Asked once per version of the view (a failed activation makes a new one)."""
        seen = self._heard.get(name)
        if seen is None or seen[0] is not view:
            seen = (view, _listens(path))
            self._heard[name] = seen
        return seen[1]


def _listens(path: str) -> bool:
    """Whether someone listens on the unix socket at ``path`` (a non-blocking connect,
    closed at once; a socket too long to name, or not there, listens to nobody)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        code = probe.connect_ex(path)
    except (OSError, ValueError):
        return False
    finally:
        probe.close()
    return code in (0, errno.EAGAIN, errno.EINPROGRESS)
