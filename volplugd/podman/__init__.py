"""Podman integration: keep a containers.conf drop-in listing every usable plugin.

volplugd already knows which plugins are there and healthy, so it writes them into one
drop-in file of its own (``/etc/containers/containers.conf.d/50-volplugd.conf`` by
default), atomically and only when the content changes. ``dropin`` decides what the file
says (rendering, Podman's config search order, the administrator's declarations, name
rules); ``writer`` puts it on disk (atomic write, the ``podman-dropin`` thread). This
module only re-exports their public names and runs no code of its own on any thread.
"""

from __future__ import annotations

from volplugd.podman.dropin import (
    GENERATED_MARK,
    LISTED_STATES,
    SYSTEM_DROPIN,
    AdminFiles,
    DropinPlan,
    config_search_paths,
    declared_plugins,
    default_dropin_path,
    for_user,
    plan_dropin,
    render_dropin,
    socket_path,
    toml_string,
)
from volplugd.podman.writer import DropinWriter, ForeignFileError, write_if_changed

__all__ = [
    "GENERATED_MARK",
    "LISTED_STATES",
    "SYSTEM_DROPIN",
    "AdminFiles",
    "DropinPlan",
    "DropinWriter",
    "ForeignFileError",
    "config_search_paths",
    "declared_plugins",
    "default_dropin_path",
    "for_user",
    "plan_dropin",
    "render_dropin",
    "socket_path",
    "toml_string",
    "write_if_changed",
]
