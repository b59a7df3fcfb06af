"""Docker spec files that point Docker at the gateway (``gateway.docker_specs``).

Docker looks for ``/run/docker/plugins/NAME.sock`` first, then ``NAME.spec`` and
``NAME.json`` in ``/etc/docker/plugins`` (then ``/usr/lib/docker/plugins``). For a
plugin from a *trusted* folder (discovery's rule, as for the Podman drop-in: an untrusted
one never reaches root's configuration) that volplugd found *outside* Docker's socket
folder, this writes
``<dir>/NAME.json`` = ``{"Generated-By": "volplugd …", "Addr": "unix://<gateway socket>"}``.
A ``.json`` file, not a ``.spec``: a ``.spec`` holds nothing but the address, so it
could not carry the mark by which volplugd knows its own files, and Docker's JSON
decoder ignores the extra key. Files are written atomically, never over a file volplugd
did not write (nor when the administrator has a ``NAME.spec`` there, which Docker reads
first), removed when their plugin leaves, and at a clean stop rewritten to the plugin's
own address (removed if that is an ``https`` one: its TLS settings are not copied, or
if the plugin is untrusted). The folder is one volplugd may write in
(``volplugd.safefs``: created 0755 at ``open``, or refused); every file in it is read,
written (``.NAME.json.tmp``, then renamed) and removed through its descriptor, and a
symlink at a spec file's name is "not written by volplugd": left alone.

Runs on: the gateway's ``gateway`` thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from volplugd import __version__
from volplugd.discovery.scan import GENERATED_SPEC, is_inside
from volplugd.discovery.trust import untrusted_reason
from volplugd.log import get_logger
from volplugd.model import PluginView, Snapshot
from volplugd.safefs import Folder

__all__ = ["DOCKER_SOCKETS", "DOCKER_SPECS", "SpecFiles"]

log = get_logger(__name__)

DOCKER_SOCKETS = "/run/docker/plugins"
DOCKER_SPECS = "/etc/docker/plugins"
_RESTORABLE = ("unix://", "tcp://", "http://")
_READ_LIMIT = 64 * 1024


class SpecFiles:
    """volplugd's spec files in ``directory`` (``.json``, each starting with the mark)."""

    def __init__(self, directory: str = DOCKER_SPECS,
                 docker_sockets: str = DOCKER_SOCKETS) -> None:
        self.dir = os.path.abspath(directory)
        self._docker_sockets = os.path.abspath(docker_sockets)
        self._left: dict[str, str] = {}  # name -> why no file was written (logged once)
        self._opened: Folder | None = None

    def open(self) -> None:
        """Open (or create) the folder now: UnsafeFolder if volplugd may not write in it."""
        self._folder()

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def _folder(self) -> Folder:
        if self._opened is None:
            self._opened = Folder.open(self.dir, 0o755)  # Docker must read it; others too
        return self._opened

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
            untrusted = untrusted_reason(view.warnings)
            why = f"untrusted: {untrusted}" if untrusted is not None else self._foreign(name)
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
            trusted = view is not None and untrusted_reason(view.warnings) is None
            address = view.address if view is not None and trusted else ""
            if address.startswith(_RESTORABLE):
                self._write(name, address)
            else:
                self._remove(name)

    def ours(self) -> list[str]:
        """Names of the spec files in the folder that volplugd wrote."""
        folder = self._folder()
        names = [n[:-5] for n in folder.names() if n.endswith(".json")]
        return sorted(n for n in names if self._is_ours(n + ".json"))

    def _foreign(self, name: str) -> str | None:
        """Why the administrator's files must keep ``name`` (None: ours to write)."""
        folder = self._folder()
        for other in (name + ".spec", os.path.join(name, name + ".spec"),
                      os.path.join(name, name + ".json")):
            if _lexists(folder, other):
                return f"{folder.join(other)} exists (Docker reads it before {name}.json)"
        file = name + ".json"
        if folder.lstat(file) is not None and not self._is_ours(file):
            return f"{folder.join(file)} was not written by volplugd; not overwriting it"
        return None

    def _is_ours(self, file: str) -> bool:
        """A regular file that starts with the mark (a symlink never is)."""
        try:
            data = self._folder().read(file, _READ_LIMIT)
        except OSError:
            return False
        return data is not None and data.startswith(GENERATED_SPEC)

    def _write(self, name: str, address: str) -> None:
        data = (json.dumps({"Generated-By": f"volplugd {__version__}; rewritten when "
                            "volplugd starts and stops, do not edit", "Addr": address},
                           separators=(",", ":")) + "\n").encode()
        folder = self._folder()
        try:
            if folder.read(name + ".json", _READ_LIMIT) == data:
                return
        except OSError:
            pass  # not a regular file we can read: replaced by the rename
        folder.write(name + ".json", data, 0o644)
        log.info("docker_spec_written", plugin=name, path=self.path(name), address=address)

    def _remove(self, name: str) -> None:
        if self._folder().remove(name + ".json"):
            log.info("docker_spec_removed", plugin=name)


def _lexists(folder: Folder, name: str) -> bool:
    try:
        return folder.lstat(name) is not None
    except OSError:  # e.g. NAME is a file, not a folder: nothing below it
        return False
