"""Whether a plugin's socket file is stale (nobody listens on it, nobody holds it), and
removing one without ever removing anything else.

Two facts from the kernel, both needed (``StaleSockets`` in the loop decides when):

* ``connect_code(path)``: a non-blocking ``connect()``. ``ECONNREFUSED`` is the kernel's
  own answer that no socket listens on that file (its socket is closed, or bound but not
  listening). A listener whose backlog is full answers ``EAGAIN``, one that does not
  accept still takes the connection (0): neither is refused. This is the answer that
  counts for a listener in another network namespace too: ``connect()`` goes by the file.
* ``Bound(text)`` over ``/proc/net/unix``: the names every socket of this network
  namespace is bound to, listening or not (a process that has bound but not yet
  listened holds the file it is about to serve). ``Bound.holds(path)`` is a doubt in
  favour of keeping: the kernel prints the name the socket was *bound* under, which may
  be relative, reached through ``/proc/self/fd/N``, or spelt through a symlinked folder,
  so an entry with the same file name in a folder that is, or may be, the socket's
  folder holds it. A path with a newline cannot be told from that text (the kernel
  prints it raw): such a socket is never stale (``readable_path``).

``remove_socket(folder, name, dev, ino)`` removes only the socket that was judged: it
opens the folder (``O_DIRECTORY | O_NOFOLLOW``), checks ``name`` there without following
a link (a socket, with that device and inode), then *moves it aside* (``rename`` to a
hidden name in the same folder, one atomic step that takes whatever is at ``name`` at
that instant), and checks what it moved: the same device and inode, a connect to it
still refused, and no socket bound to ``name`` in a fresh ``/proc/net/unix`` (a plugin
that came back binds a new socket, and the file system may give it the inode number the
old one freed: the numbers alone cannot tell them apart). Only then is it unlinked. A
file that replaced the socket between the check and the move is linked back to
``name`` (``link``: never over anything that appeared there since) and kept.

Runs on: the supervisor thread (every call is non-blocking or a read of procfs).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
from collections.abc import Callable, Iterator
from enum import StrEnum

from volplugd.safefs import MAX_UNIX_PATH

__all__ = ["PROC_NET_UNIX", "Bound", "Removal", "aside_name", "connect_code",
           "read_proc_net_unix", "readable_path", "remove_socket"]

PROC_NET_UNIX = "/proc/net/unix"
_FIELDS = 7  # Num RefCount Protocol Flags Type St Inode, then the path (may hold spaces)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Removal(StrEnum):
    """What ``remove_socket`` did."""

    REMOVED = "removed"
    GONE = "gone"  # nothing at the name any more
    REPLACED = "replaced"  # something else is at the name now: kept
    NOT_A_SOCKET = "not a socket"  # kept (a symlink, a file, a FIFO, a folder)
    MISPLACED = "moved aside, could not be put back"  # the replacement keeps its hidden name
    ASIDE_TAKEN = "its aside name holds something that is not a socket"  # kept, both


def readable_path(path: str) -> bool:
    """Whether ``/proc/net/unix`` can show a socket bound at ``path`` faithfully."""
    return "\n" not in path


def connect_code(path: str) -> int:
    """The errno of a non-blocking ``connect()`` to ``path`` (0: accepted). A path too
    long for ``sun_path`` is reached through its folder's descriptor."""
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as err:
        return err.errno or errno.EIO
    probe.setblocking(False)
    try:
        if len(os.fsencode(path)) <= MAX_UNIX_PATH:
            return probe.connect_ex(path)
        folder, name = os.path.split(path)
        fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return probe.connect_ex(f"/proc/self/fd/{fd}/{name}")
        finally:
            os.close(fd)
    except OSError as err:
        return err.errno or errno.EIO
    finally:
        probe.close()


def read_proc_net_unix(path: str = PROC_NET_UNIX) -> bytes:
    """The whole of ``/proc/net/unix`` (raises OSError if it cannot be read)."""
    chunks = []
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


class Bound:
    """The file names the sockets of this network namespace are bound to, listening or
    not, from the text of ``/proc/net/unix``; abstract names (``@...``) and unbound
    sockets never hold a path, nor does a line that is not an entry (the header, the
    rest of a name with a newline in it). Only the lines that hold the file name asked
    about are parsed: a host has thousands of entries, a look asks about a few."""

    def __init__(self, text: bytes) -> None:
        self._text = text

    def holds(self, path: str) -> bool:
        """Whether a socket bound under some name may be the one at ``path``: the same
        path, or the same file name where the folder is the same one or cannot be told
        apart (a relative name, one through ``/proc``, a folder that cannot be looked
        at). A doubt keeps the file."""
        wanted = os.fsencode(path)
        return any(_same_file(entry, wanted) for entry in self._named(os.path.basename(wanted)))

    def _named(self, name: bytes) -> Iterator[bytes]:
        """The bound names whose file name is ``name``."""
        text, at = self._text, self._text.find(name)
        while at >= 0:
            start = text.rfind(b"\n", 0, at) + 1
            end = text.find(b"\n", at)
            end = len(text) if end < 0 else end
            fields = text[start:end].split(None, _FIELDS)
            if len(fields) == _FIELDS + 1 and fields[0].endswith(b":") \
                    and not fields[_FIELDS].startswith(b"@") \
                    and os.path.basename(fields[_FIELDS]) == name:
                yield fields[_FIELDS]
            at = text.find(name, end)


def _same_file(entry: bytes, wanted: bytes) -> bool:
    if entry == wanted:
        return True
    where = os.path.dirname(entry)
    if not where.startswith(b"/") or where == b"/proc" or where.startswith(b"/proc/"):
        return True
    try:
        here, there = os.stat(where), os.stat(os.path.dirname(wanted))
    except OSError:
        return True
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def aside_name(name: str) -> str:
    """Where ``remove_socket`` moves ``name`` before it unlinks it: hidden, not a plugin
    file name, the same each time (a crash's leftover socket is replaced by the next
    one; anything else found there is left, and so is the socket)."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".volplugd-{digest}.stale"


def remove_socket(folder: str, name: str, dev: int, ino: int,
                  read_bound: Callable[[], bytes] = read_proc_net_unix) -> Removal:
    """Remove ``folder``/``name`` if, and only if, it is the socket ``(dev, ino)`` and,
    once moved aside, it still refuses connections and no socket is bound to ``name``
    (``read_bound``: the text of ``/proc/net/unix``). The second look is what tells a
    plugin that came back: its new socket may well get the freed inode number. Raises
    OSError when the folder cannot be opened or the file cannot be moved or unlinked (a
    read-only mount, permissions): then nothing was changed."""
    fd = os.open(folder, _DIR_FLAGS)
    try:
        found = _judge(fd, name, dev, ino)
        if found is not Removal.REMOVED:
            return found
        aside = aside_name(name)
        if _judge(fd, aside, -1, -1) is Removal.NOT_A_SOCKET:  # not a crash's leftover
            return Removal.ASIDE_TAKEN
        os.rename(name, aside, src_dir_fd=fd, dst_dir_fd=fd)
        if _judge(fd, aside, dev, ino) is Removal.REMOVED \
                and connect_code(os.path.join(folder, aside)) == errno.ECONNREFUSED \
                and not _bound_or_unknown(read_bound, os.path.join(folder, name)):
            os.unlink(aside, dir_fd=fd)
            return Removal.REMOVED
        return _put_back(fd, aside, name)
    finally:
        os.close(fd)


def _bound_or_unknown(read_bound: Callable[[], bytes], path: str) -> bool:
    try:
        return Bound(read_bound()).holds(path)
    except OSError:
        return True


def _judge(fd: int, name: str, dev: int, ino: int) -> Removal:
    """REMOVED if ``name`` in folder ``fd`` is the socket ``(dev, ino)``, else why not."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return Removal.GONE
    if not stat.S_ISSOCK(st.st_mode):
        return Removal.NOT_A_SOCKET
    if (st.st_dev, st.st_ino) != (dev, ino):
        return Removal.REPLACED
    return Removal.REMOVED


def _put_back(fd: int, aside: str, name: str) -> Removal:
    """What was moved aside was not the stale socket: give it its name back, unless
    something took the name meanwhile (``link`` never replaces)."""
    try:
        os.link(aside, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    except OSError:
        if os.path.lexists(f"/proc/self/fd/{fd}/{name}"):
            return Removal.MISPLACED
        os.rename(aside, name, src_dir_fd=fd, dst_dir_fd=fd)  # a folder cannot be linked
        return Removal.REPLACED
    os.unlink(aside, dir_fd=fd)
    return Removal.REPLACED
