"""A listening unix socket whose file has its mode and group before anyone can connect
(leaf module: the control socket and the gateway's sockets both bind through it).

Runs on: the thread that creates the socket.
"""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["GroupRefused", "listen_unix"]


class GroupRefused(OSError):
    """The socket file could not be given to the group (``errno``/``strerror`` say why)."""


def listen_unix(path: str, mode: int, gid: int | None, backlog: int) -> socket.socket:
    """Bind ``path``, set its mode (and group), and only then listen: until ``listen()``
    a bound socket refuses every connection, so nobody connects while the file still has
    the umask's permissions. On failure the socket is closed and its file removed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if gid is not None and os.stat(path).st_gid != gid:
            try:
                os.chown(path, -1, gid)
            except OSError as err:
                raise GroupRefused(err.errno, err.strerror) from err
        sock.listen(backlog)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return sock
