"""Discovery's trust rule: may whoever controls a plugin folder speak for volplugd?

volplugd runs as root and turns plugin files into a root-level Podman setting (the
drop-in) and, for ``.json`` files, into key and certificate files it would read. So a
plugin file counts only as much as the folders it lies in. Like sshd's ``StrictModes``:

* the plugin folder (a configured dir, or a nested ``<name>/`` folder and the dir that
  holds it) must be owned by root or volplugd's effective uid and writable by neither
  group nor others (sticky or not: anyone who may create a file there may add a plugin);
* every ancestor of the folder's real path, up to ``/``, must be owned by root or
  volplugd's uid (its owner could move the folder away and put its own in its place),
  and may be writable by group or others only with the sticky bit (a 1777 ``/tmp`` is
  fine: nobody can rename a folder there that they do not own);
* a ``.spec`` or ``.json`` file itself must be owned by root or volplugd's uid and
  writable by neither group nor others (its content is the plugin's address). A socket's
  own mode says who may connect, not who may replace it: it is not checked.

A path listed in ``discovery.trust`` (and everything below it) is trusted whatever the
modes. Symlinked folders are judged where they lead (``realpath``); a symlinked plugin
*file* or a ``.spec`` naming a socket elsewhere is the folder owner's own choice.

``Trust`` holds one scan's answers: each folder and ancestor is stat'ed at most once per
scan, so a thousand sockets in one folder cost one walk up to ``/``.
Runs on: the supervisor thread (one ``Trust`` per scan); ``untrusted_reason`` anywhere.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence

from volplugd.safefs import mode_text, writers

__all__ = ["UNTRUSTED", "Trust", "untrusted_reason"]

# The prefix of the view warning an untrusted plugin carries. The Podman drop-in reads
# it back (``untrusted_reason``): the warning is the one fact both sides share.
UNTRUSTED = "untrusted: "

_WRITABLE = stat.S_IWGRP | stat.S_IWOTH


def untrusted_reason(warnings: Iterable[str]) -> str | None:
    """Why a plugin with these view warnings is untrusted, or None if it is trusted."""
    for warning in warnings:
        if warning.startswith(UNTRUSTED):
            return warning[len(UNTRUSTED):]
    return None


class Trust:
    """One scan's trust decisions. Methods answer the reason a place is untrusted
    ("/run/x is writable by others (mode 0777)"), or None when it is trusted."""

    def __init__(self, overrides: Sequence[str] = (), *, euid: int | None = None) -> None:
        self._overrides = tuple(os.path.abspath(p) for p in overrides)
        self._euid = os.geteuid() if euid is None else euid
        self._folders: dict[str, str | None] = {}
        self._ancestors: dict[str, str | None] = {}

    def plugin_file(self, path: str, st: os.stat_result, *, nested: bool) -> str | None:
        """A plugin file found by the scan at ``path`` (absolute, normalized; ``st`` is
        its stat, symlinks followed): its folder, the folder's ancestors, the file."""
        if self._overrides and self._overridden(path):
            return None
        folder = path[:path.rindex("/")] or "/"
        if folder in self._folders:  # the hot path: a thousand files, one folder
            problem = self._folders[folder]
        else:
            problem = self.nested(folder) if nested else self.folder(folder)
        if problem is None and not stat.S_ISSOCK(st.st_mode):
            problem = self._own(path, st)
        return problem

    def folder(self, path: str) -> str | None:
        """A configured plugin folder: itself, then each ancestor up to ``/``."""
        return self._cached(os.path.abspath(path), self._ancestor)

    def nested(self, path: str) -> str | None:
        """A ``<name>/`` folder: itself, then the plugin folder that holds it."""
        return self._cached(os.path.abspath(path), self.folder)

    def _cached(self, path: str, parent_rule: Callable[[str], str | None]) -> str | None:
        if path in self._folders:
            return self._folders[path]
        problem = None if self._overridden(path) else self._judge(path, parent_rule)
        self._folders[path] = problem
        return problem

    def _judge(self, path: str, parent_rule: Callable[[str], str | None]) -> str | None:
        """A folder by the plugin-folder rule, its parent by ``parent_rule``. A symlinked
        folder: where it leads and that place's ancestors, and the folder holding the link."""
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
                st = os.stat(real)
                return (self._own(real, st) or self._ancestor(os.path.dirname(real))
                        or parent_rule(os.path.dirname(path)))
        except OSError as err:
            return _unstattable(path, err)
        return self._own(path, st) or parent_rule(os.path.dirname(path))

    def _ancestor(self, path: str) -> str | None:
        """An ancestor and its own ancestors up to ``/``, each looked at once per scan.
        lstat, not realpath: only an ancestor that is a symlink costs a resolution.
        Iterative, from the top down: a path may be thousands of folders deep."""
        chain = []
        while path not in self._ancestors:
            chain.append(path)
            if path == "/":
                break
            path = os.path.dirname(path)
        above = self._ancestors.get(path) if path in self._ancestors else None
        for step in reversed(chain):
            above = self._one_ancestor(step) or above
            self._ancestors[step] = above
        return above

    def _one_ancestor(self, path: str) -> str | None:
        """What is wrong with one ancestor itself (not the ones above it)."""
        try:
            st = os.lstat(path)
        except OSError as err:
            return _unstattable(path, err)
        if stat.S_ISLNK(st.st_mode):  # e.g. /var/run -> /run: judge where it leads
            return self._ancestor(os.path.realpath(path))  # no symlinks: one level deeper
        return self._owner(path, st) or _open_without_sticky(path, st)

    def _own(self, path: str, st: os.stat_result) -> str | None:
        """A folder or file whose owner speaks for the plugin: the owner, and no one else
        may write it."""
        problem = self._owner(path, st)
        if problem is None and st.st_mode & _WRITABLE:
            problem = f"{path} is writable by {writers(st.st_mode)} (mode {mode_text(st)})"
        return problem

    def _owner(self, path: str, st: os.stat_result) -> str | None:
        if st.st_uid in (0, self._euid):
            return None
        if self._euid == 0:
            return f"{path} is owned by uid {st.st_uid}, not root"
        return f"{path} is owned by uid {st.st_uid}, neither root nor volplugd's uid {self._euid}"

    def _overridden(self, path: str) -> bool:
        return any(path == o or path.startswith(o.rstrip("/") + "/") for o in self._overrides)


def _open_without_sticky(path: str, st: os.stat_result) -> str | None:
    if st.st_mode & _WRITABLE and not st.st_mode & stat.S_ISVTX:
        return (f"{path} is writable by {writers(st.st_mode)} without the sticky bit "
                f"(mode {mode_text(st)})")
    return None


def _unstattable(path: str, err: OSError) -> str:
    return f"{path} cannot be checked: {err.strerror or err}"
