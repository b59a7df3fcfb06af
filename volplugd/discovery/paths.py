"""Discovery's paths: which plugin a path concerns, by Docker's layout
(``<dir>/<name>.sock|.spec|.json`` and ``<dir>/<name>/<name>.sock|.spec|.json``), and what
a changed path means to the watcher. Pure: strings in, answers out, no filesystem.
Runs on: any thread (the supervisor's scans, watchdog's dispatcher thread).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from volplugd.contracts import FsHint, Rescan

__all__ = ["classify", "is_inside", "is_plugin_folder", "is_plugin_name", "normalized_dirs",
           "plugin_path_of"]

SUFFIXES = (".sock", ".spec", ".json")
_MANAGED = re.compile(r"[0-9a-f]{64}")  # Docker's managed (v2) plugin folders


def plugin_path_of(path: str, dirs: Sequence[str]) -> str | None:
    """The plugin name whose files a changed ``path`` may concern, or None."""
    path = os.path.abspath(path)
    for root in normalized_dirs(dirs):
        if not is_inside(path, root):
            continue
        first, _, rest = path[len(root):].lstrip("/").partition("/")
        stem, suffix = os.path.splitext(first)
        if not rest and suffix in SUFFIXES:
            return stem if is_plugin_name(stem) else None
        # A plugin's folder, or something in it (Docker's managed folders are not ours).
        return first if is_plugin_folder(first) else None
    return None


def is_plugin_name(name: str) -> bool:
    """A name Docker would take for a plugin's: not empty, no dot first, no slash."""
    return bool(name) and not name.startswith(".") and "/" not in name


def is_plugin_folder(name: str) -> bool:
    """Whether an entry of a plugin dir named ``name`` may be a ``<name>/`` folder that
    holds a plugin (not a dot-name, not one of Docker's managed-plugin folders)."""
    return is_plugin_name(name) and not _MANAGED.fullmatch(name)


def normalized_dirs(dirs: Sequence[str]) -> tuple[str, ...]:
    """The dirs as absolute paths, each once, in their configured order."""
    return tuple(dict.fromkeys(os.path.abspath(d) for d in dirs))


def is_inside(path: str, root: str) -> bool:
    """True if ``path`` lies strictly below ``root`` (both absolute)."""
    return path.startswith(root if root.endswith("/") else root + "/")


def classify(path: str, dirs: tuple[str, ...]) -> FsHint | Rescan | None:
    """A path inside a plugin dir is a hint; a plugin dir (or its parent) coming or going
    means the watches must be re-armed; anything else next to a parent is noise."""
    if any(path == root or is_inside(root, path) for root in dirs):
        return Rescan("watcher_restart")  # first: a plugin dir may lie inside another
    return FsHint(path) if plugin_path_of(path, dirs) else None
