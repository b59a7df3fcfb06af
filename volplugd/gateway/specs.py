"""Docker spec files that point Docker at the gateway (``gateway.docker_specs``).

Docker looks for ``/run/docker/plugins/NAME.sock`` first, then ``NAME.spec`` and
``NAME.json`` in ``/etc/docker/plugins`` (then ``/usr/lib/docker/plugins``). For a
plugin that volplugd found *outside* Docker's socket folder, this writes
``<dir>/NAME.json`` = ``{"Generated-By": "volplugd …", "Addr": "unix://<gateway socket>"}``.
A ``.json`` file, not a ``.spec``: a ``.spec`` holds nothing but the address, so it
could not carry the mark by which volplugd knows its own files, and Docker's JSON
decoder ignores the extra key. Files are written atomically, never over a file volplugd
did not write (nor when the administrator has a ``NAME.spec`` there, which Docker reads
first), removed when their plugin leaves, and at a clean stop rewritten to the plugin's
own address (removed if that is an ``https`` one: its TLS settings are not copied).

Runs on: the gateway's ``gateway`` thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping

from volplugd import __version__
from volplugd.discovery.scan import GENERATED_SPEC, is_inside
from volplugd.log import get_logger
from volplugd.model import PluginView, Snapshot

__all__ = ["DOCKER_SOCKETS", "DOCKER_SPECS", "SpecFiles"]

log = get_logger(__name__)

DOCKER_SOCKETS = "/run/docker/plugins"
DOCKER_SPECS = "/etc/docker/plugins"
_RESTORABLE = ("unix://", "tcp://", "http://")


class SpecFiles:
    """volplugd's spec files in ``directory`` (``.json``, each starting with the mark)."""

    def __init__(self, directory: str = DOCKER_SPECS,
                 docker_sockets: str = DOCKER_SOCKETS) -> None:
        self.dir = os.path.abspath(directory)
        self._docker_sockets = os.path.abspath(docker_sockets)
        self._left: dict[str, str] = {}  # name -> why no file was written (logged once)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name + ".json")

    def update(self, served: Mapping[str, tuple[str, PluginView]]) -> None:
        """``served``: name -> (gateway socket, view) of every plugin the gateway serves.
        Writes the files of those found outside Docker's folders; removes the others."""
        left: dict[str, str] = {}
        wanted: dict[str, str] = {}
        for name, (gateway, view) in served.items():
            source = os.path.abspath(view.source)
            if is_inside(source, self._docker_sockets) or is_inside(source, self.dir):
                continue  # Docker finds it there itself
            why = self._foreign(name)
            if why is None:
                wanted[name] = "unix://" + gateway
            else:
                left[name] = why
        for name, why in left.items():
            if self._left.get(name) != why:
                log.warning("docker_spec_left", plugin=name, reason=why)
        self._left = left
        for name in self.ours():
            if name not in wanted:
                self._remove(name)
        for name, address in wanted.items():
            self._write(name, address)

    def restore(self, snapshot: Snapshot) -> None:
        """A clean stop: each of our files points at its plugin's own address again."""
        for name in self.ours():
            view = snapshot.plugins.get(name)
            address = "" if view is None else view.address
            if address.startswith(_RESTORABLE):
                self._write(name, address)
            else:
                self._remove(name)

    def ours(self) -> list[str]:
        """Names of the spec files in the folder that volplugd wrote."""
        try:
            with os.scandir(self.dir) as entries:
                names = [e.name[:-5] for e in entries if e.name.endswith(".json")]
        except OSError:
            return []
        return sorted(n for n in names if _is_ours(self.path(n)))

    def _foreign(self, name: str) -> str | None:
        """Why the administrator's files must keep ``name`` (None: ours to write)."""
        for other in (os.path.join(self.dir, name + ".spec"),
                      os.path.join(self.dir, name, name + ".spec"),
                      os.path.join(self.dir, name, name + ".json")):
            if os.path.lexists(other):
                return f"{other} exists (Docker reads it before {name}.json)"
        path = self.path(name)
        if os.path.lexists(path) and not _is_ours(path):
            return f"{path} was not written by volplugd; not overwriting it"
        return None

    def _write(self, name: str, address: str) -> None:
        data = (json.dumps({"Generated-By": f"volplugd {__version__}; rewritten when "
                            "volplugd starts and stops, do not edit", "Addr": address},
                           separators=(",", ":")) + "\n").encode()
        path = self.path(name)
        if _read(path) == data:
            return
        if not os.path.isdir(self.dir):  # Docker's folder: readable whatever the umask
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            os.chmod(self.dir, 0o755)  # noqa: S103 - Docker must read it; others too
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o644)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        log.info("docker_spec_written", plugin=name, path=path, address=address)

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(name))
            log.info("docker_spec_removed", plugin=name)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(64 * 1024)
    except OSError:
        return None


def _is_ours(path: str) -> bool:
    data = _read(path)
    return data is not None and data.startswith(GENERATED_SPEC)
