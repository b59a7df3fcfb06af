"""The folders volplugd writes in, judged as they are on disk: ``check_folders`` runs in
``volplugd check-config`` and before the daemon starts, so that a folder volplugd may not
write in (``volplugd.safefs``: a symlink, another user's, writable by group or others),
or two settings that name one folder, is a config error naming the key. Folders are
compared by what they are (``realpath``, device and inode), not by how they are spelt.

The writers check again when they open the folder (``safefs.Folder.open``): this is the
early, readable refusal, not the only one. Runs on: the main thread.
"""

from __future__ import annotations

import os

from volplugd.config.checks import ConfigError, show
from volplugd.config.settings import Settings
from volplugd.safefs import folder_problem, inside, same_folder

__all__ = ["check_folders", "written_folders"]

_REFUSED = "volplugd writes only in a folder that no one but root (or its own user) may change"


def written_folders(settings: Settings) -> list[tuple[str, str]]:
    """(key, folder) of every folder the settings make volplugd write in."""
    folders = [("control.socket", os.path.dirname(settings.control.socket))]
    gateway = settings.gateway
    if gateway.enabled:
        folders.append(("gateway.dir", gateway.dir))
        if gateway.docker_specs:
            folders.append(("gateway.docker_spec_dir", gateway.docker_spec_dir))
    if settings.podman.enabled:
        folders.append(("podman.dropin", os.path.dirname(settings.podman.dropin)))
    return folders


def check_folders(settings: Settings, *, euid: int | None = None) -> None:
    """ConfigError for the first folder volplugd would refuse to write in, or the first
    setting whose folder is another's that it must not share."""
    folders = written_folders(settings)
    if settings.gateway.enabled:
        _check_gateway_apart(settings, folders)
    for key, folder in folders:
        problem = folder_problem(folder, euid=euid)
        if problem is not None:
            raise ConfigError(key, f"{problem}: {_REFUSED}")


def _check_gateway_apart(settings: Settings, folders: list[tuple[str, str]]) -> None:
    """The gateway's folder is no plugin folder, lies in none, and holds nothing else of
    volplugd's (its stale-socket cleanup and discovery's skipping of it stay its own)."""
    gateway = settings.gateway.dir
    for i, plugins in enumerate(settings.discovery.dirs):
        if same_folder(gateway, plugins):
            raise ConfigError("gateway.dir", f"is discovery.dirs[{i}] {show(plugins)}: the "
                              "plugins there would be hidden (discovery skips the gateway's "
                              "folder); give it its own")
        if inside(gateway, plugins):
            raise ConfigError("gateway.dir", f"lies inside discovery.dirs[{i}] "
                              f"{show(plugins)}: a plugin folder is no place for the "
                              "gateway's sockets; give it its own")
    for key, folder in folders:
        if key != "gateway.dir" and same_folder(folder, gateway):
            where = "is" if key.endswith("_dir") else "lies in"
            raise ConfigError(key, f"{where} gateway.dir {show(gateway)}: the gateway's "
                              "folder holds only its sockets; give it another")
