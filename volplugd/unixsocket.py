"""A listening unix socket whose file has its mode and group before anyone can connect
(leaf module: the control socket and the gateway's sockets both bind through it).

Runs on: the thread that creates the socket.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat

__all__ = ["MAX_UNIX_PATH", "STAGING_SUFFIX", "GroupRefused", "group_id", "listen_unix"]

MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL
STAGING_SUFFIX = ".new"


def group_id(group: str) -> int:
    """The gid of ``group`` (a name, or digits); raises LookupError naming it."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LookupError(f"no group named {group!r}") from None


class GroupRefused(OSError):
    """The socket file could not be given to the group (``errno``/``strerror`` say why)."""


def listen_unix(path: str, mode: int, gid: int | None, backlog: int) -> socket.socket:
    """A socket listening at ``path`` with ``mode`` (and group ``gid``), whose file
    appears only once it accepts: it is bound under a staging name beside ``path``
    (``path`` + ".new"), given its mode and group, made to listen, then renamed into
    place. Nobody connects while the file has the umask's permissions, and a client
    that connects as soon as it sees the file (Docker, Podman) is never refused. A path
    too long for a staging name is bound in place (until ``listen()`` a bound socket
    refuses every connection). On failure the socket is closed and no file is left."""
    staging = path + STAGING_SUFFIX
    if len(os.fsencode(staging)) > MAX_UNIX_PATH:
        staging = path
    else:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(staging).st_mode):
                os.unlink(staging)  # left by a crash between bind and rename
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staging)
        os.chmod(staging, mode)
        if gid is not None and os.stat(staging).st_gid != gid:
            try:
                os.chown(staging, -1, gid)
            except OSError as err:
                raise GroupRefused(err.errno, err.strerror) from err
        sock.listen(backlog)
        if staging != path:
            os.rename(staging, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    return sock
