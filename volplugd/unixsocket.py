"""A listening unix socket whose file has its mode and group before anyone can connect,
made in a folder volplugd checked (``volplugd.safefs``), through that folder's
descriptor (the control socket and the gateway's sockets both bind through it).

A socket has no descriptor a mode can be set on (``open()`` of one fails with ENXIO, an
``O_PATH`` descriptor refuses ``fchmod``), so: bind under a staging name inside the
verified folder (reached as ``/proc/self/fd/N/NAME``: no path outside it is resolved),
open that name ``O_PATH | O_NOFOLLOW``, check it is a socket of ours, set mode and group
through ``/proc/self/fd/M`` (the inode itself, never a link), listen, and rename it into
place relative to the folder's descriptor.

Runs on: the thread that creates the socket.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import socket
import stat

from volplugd.safefs import MAX_UNIX_PATH, Folder

__all__ = ["MAX_UNIX_PATH", "AddressKept", "GroupRefused", "group_id", "listen_unix",
           "replaceable", "staging_name"]



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


class AddressKept(OSError):
    """Something is at a socket's name that must not be replaced (``strerror`` says what)."""


def staging_name(name: str) -> str:
    """Where the socket for ``name`` is bound before it listens: hidden, short whatever
    ``name`` is, and the same each time (a crash's leftover is found and removed)."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".volplugd-{digest}.new"


def listen_unix(folder: Folder, name: str, mode: int, gid: int | None,
                backlog: int) -> socket.socket:
    """A socket listening at ``folder``/``name`` with ``mode`` (and group ``gid``), whose
    file appears only once it accepts: nobody connects while the file has the umask's
    permissions, and a client that connects as soon as it sees the file (Docker, Podman)
    is never refused. Whatever is at ``name`` is replaced (check ``replaceable`` first);
    whatever is at the staging name is removed, never followed. On failure the socket is
    closed and no file is left."""
    staging = staging_name(name)
    folder.remove(staging)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(folder.proc_path(staging))
        _set_mode(folder, staging, mode, gid)
        sock.listen(backlog)
        os.rename(staging, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
    except BaseException:
        sock.close()
        folder.remove(staging)
        raise
    return sock


def replaceable(folder: Folder, name: str) -> bool:
    """True if a stale socket (nobody listens on it) is at ``name``, False if nothing is;
    raises AddressKept if something there must be kept: not a socket (a symlink, a
    file...), or a socket someone listens on. Asks with a non-blocking connect."""
    st = folder.lstat(name)
    if st is None:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressKept(errno.EEXIST, "exists and is not a socket; not replacing it",
                          folder.join(name))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        code = probe.connect_ex(_reachable(folder, name))
    finally:
        probe.close()
    if code == errno.ECONNREFUSED:
        return True
    if code == errno.ENOENT:
        return False
    if code in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise AddressKept(errno.EADDRINUSE, "another process is listening on it",
                          folder.join(name))
    raise AddressKept(code, f"cannot tell whether it is in use: {os.strerror(code)}",
                      folder.join(name))


def _reachable(folder: Folder, name: str) -> str:
    """A path for connect(): through the descriptor, or (too long for sun_path) the path."""
    through = folder.proc_path(name)
    return through if len(os.fsencode(through)) <= MAX_UNIX_PATH else folder.join(name)


def _set_mode(folder: Folder, staging: str, mode: int, gid: int | None) -> None:
    fd = os.open(staging, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder.fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(errno.EEXIST, "is not the socket just bound", folder.join(staging))
        inode = f"/proc/self/fd/{fd}"
        os.chmod(inode, mode)
        if gid is not None and st.st_gid != gid:
            try:
                os.chown(inode, -1, gid)
            except OSError as err:
                raise GroupRefused(err.errno, err.strerror) from err
    finally:
        os.close(fd)
