"""Root's own folders: the places volplugd writes in, checked and opened so that nothing
in them can turn a write of root's into a write somewhere else (leaf module: the control
socket, the gateway, the Docker spec files and the Podman drop-in all write through it).

A folder volplugd writes in is either created by it (with the mode it asks for), or it
must be, as it is on disk:

* a real folder, not a symlink (its ancestors may be symlinks, ``/var/run -> /run``:
  they are judged where they lead);
* owned by root or volplugd's effective uid;
* writable by neither group nor others, sticky bit or not: whoever may create a name in
  it could put a symlink, a file or a socket of their own where volplugd's goes, and
  group members are as many people as the group has (discovery's trust rule, the same);
* under ancestors owned by root or volplugd's uid and writable by group or others only
  with the sticky bit (their owner could move the folder away and put their own there).

``Folder.open`` makes that check on the descriptor it opened (``O_DIRECTORY |
O_NOFOLLOW``, then ``fstat``; and the path, resolved, must still lead to that folder), so
what was checked is what is written in. Every file operation is then relative to that
descriptor and never follows a symlink: reads open with ``O_NOFOLLOW | O_NONBLOCK`` and
take regular files only; writes make ``.NAME.tmp`` with ``O_CREAT | O_EXCL | O_NOFOLLOW``,
set its mode on the descriptor, and rename it over ``NAME`` (a rename replaces a symlink,
it never writes through it). Unix sockets are ``volplugd.unixsocket``'s.

Folders are compared by what they are (``realpath``, then device and inode), never by
how their path is spelt: ``same_folder``, ``inside``.

Runs on: any thread; a ``Folder`` belongs to the one part that opened it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from volplugd.plugin.text import safe_text

__all__ = ["MAX_UNIX_PATH", "Folder", "NotAFile", "UnsafeFolder", "folder_problem", "inside",
           "mode_text", "same_folder", "temp_name", "writers"]

MAX_UNIX_PATH = 107  # sun_path is 108 bytes with the terminating NUL: the one limit
_WRITABLE = stat.S_IWGRP | stat.S_IWOTH
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFolder(OSError):
    """A folder volplugd must not write in. ``str()`` is the one-line ``problem``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(errno.EPERM, problem, path)
        self.problem = problem

    def __str__(self) -> str:
        return self.problem


class NotAFile(OSError):
    """A name in a folder is there, but not as a regular file (a symlink, a FIFO...)."""

    def __str__(self) -> str:
        return f"{self.filename} is not a regular file"


def temp_name(name: str) -> str:
    """The temp file ``Folder.write`` makes before renaming it to ``name`` (hidden: no
    glob of Podman's or Docker's, nor discovery, ever reads it)."""
    return f".{name}.tmp"


class Folder:
    """An open folder volplugd may write in; every name is relative to its descriptor."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: str, mode: int = 0o755, *, create: bool = True,
             euid: int | None = None) -> Folder:
        """The folder at ``path``, created with ``mode`` (whatever the umask) if it is
        missing and ``create``. Raises UnsafeFolder if it may not be written in,
        FileNotFoundError if it is missing and not ``create``d, OSError otherwise."""
        path = os.path.abspath(path)
        euid = os.geteuid() if euid is None else euid
        created = create and _make(path)
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as err:
            raise _open_failed(path, err) from err
        try:
            if created:
                os.fchmod(fd, mode)
            st = os.fstat(fd)
            problem = (_own_problem(path, st, euid)
                       or _ancestors_problem(os.path.dirname(path), euid)
                       or _moved_problem(path, st))
            if problem is not None:
                raise UnsafeFolder(path, problem)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def join(self, name: str) -> str:
        """The path of ``name``, for messages and for clients (never opened by it)."""
        return os.path.join(self.path, name)

    def proc_path(self, name: str) -> str:
        """``name`` reached through this descriptor (``/proc/self/fd/N/name``): for the
        calls that take only a path, such as ``bind``; short, whatever the folder's path."""
        return f"/proc/self/fd/{self.fd}/{name}"

    def lstat(self, name: str) -> os.stat_result | None:
        """``name``'s own status (a symlink's, not its target's); None if missing."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def read(self, name: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes of the regular file ``name``; None if there is nothing
        by that name. Anything else there (a symlink, a FIFO, a folder) raises NotAFile
        and is never read: nothing here can block or read through a link."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise NotAFile(errno.ELOOP, "a symlink", self.join(name)) from err
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotAFile(errno.EINVAL, "not a regular file", self.join(name))
            chunks: list[bytes] = []
            left = limit
            while left > 0 and (chunk := os.read(fd, left)):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes, mode: int) -> None:
        """Make ``name`` hold ``data`` with ``mode``, atomically: a reader sees the old
        file or the new one. A leftover temp name (a crash's, or anything planted there)
        is removed, never opened; a symlink at ``name`` is replaced, never followed."""
        tmp = temp_name(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=self.fd)
        except FileExistsError:
            os.unlink(tmp, dir_fd=self.fd)
            fd = os.open(tmp, flags, 0o600, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(fd, mode)
                os.fsync(fd)
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.remove(tmp)
            raise
        os.fsync(self.fd)

    def remove(self, name: str) -> bool:
        """Unlink ``name`` (a symlink itself, never its target); False if it was missing."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True


def folder_problem(path: str, *, euid: int | None = None) -> str | None:
    """Why volplugd may not write in ``path`` (None: it may). A folder that does not exist
    yet is judged as it would be created: by the ancestors that exist."""
    euid = os.geteuid() if euid is None else euid
    try:
        Folder.open(path, create=False, euid=euid).close()
    except FileNotFoundError:
        return _ancestors_problem(os.path.dirname(os.path.abspath(path)), euid)
    except UnsafeFolder as err:
        return err.problem
    except OSError as err:
        return f"{_shown(path)} cannot be checked: {err.strerror or err}"
    return None


def same_folder(a: str, b: str) -> bool:
    """Whether two paths name one folder (or, not existing yet, would)."""
    return _identity(a) == _identity(b)


def inside(path: str, root: str) -> bool:
    """Whether the folder ``path`` lies (at any depth) inside the folder ``root``."""
    wanted = _identity(root)
    parent = os.path.realpath(path)
    while parent != "/":
        parent = os.path.dirname(parent)
        if _identity(parent) == wanted:
            return True
    return False


def _identity(path: str) -> tuple[object, ...]:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return ("path", real)
    return ("inode", st.st_dev, st.st_ino)


def _make(path: str) -> bool:
    """Create ``path`` (its mode is set on the descriptor by ``Folder.open``) and its
    missing ancestors, those ``0755`` whatever the umask (others must reach the files
    below: Docker, rootless Podman); False if ``path`` was there already."""
    missing = []
    here = path
    while not os.path.lexists(here):
        missing.append(here)
        here = os.path.dirname(here)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)  # nobody else's until its mode is set
        except FileExistsError:
            if folder == path:
                return False
            continue
        if folder != path:
            fd = os.open(folder, _DIR_FLAGS)
            try:
                os.fchmod(fd, 0o755)
            finally:
                os.close(fd)
    return bool(missing)


def _open_failed(path: str, err: OSError) -> OSError:
    """What opening a folder with O_NOFOLLOW told: a symlink, not a folder, or the error."""
    try:
        st = os.lstat(path)
    except OSError:
        return err
    if stat.S_ISLNK(st.st_mode):
        return UnsafeFolder(path, f"{_shown(path)} is a symlink, not a real folder")
    if not stat.S_ISDIR(st.st_mode):
        return UnsafeFolder(path, f"{_shown(path)} is not a folder")
    return err


def _own_problem(path: str, st: os.stat_result, euid: int) -> str | None:
    problem = _owner_problem(path, st, euid)
    if problem is None and st.st_mode & _WRITABLE:
        problem = f"{_shown(path)} is writable by {writers(st.st_mode)} (mode {mode_text(st)})"
    return problem


def _ancestors_problem(path: str, euid: int) -> str | None:
    """Each ancestor up to ``/`` (where it leads; missing ones are skipped: they would be
    created): owned by root or ``euid``, open to others only with the sticky bit."""
    real = os.path.realpath(path)
    while True:
        try:
            st = os.stat(real)
        except FileNotFoundError:
            st = None
        except OSError as err:
            return f"{_shown(real)} cannot be checked: {err.strerror or err}"
        if st is not None:
            problem = _owner_problem(real, st, euid)
            if problem is None and st.st_mode & _WRITABLE and not st.st_mode & stat.S_ISVTX:
                problem = (f"{_shown(real)} is writable by {writers(st.st_mode)} without the "
                           f"sticky bit (mode {mode_text(st)})")
            if problem is not None:
                return problem
        if real == "/":
            return None
        real = os.path.dirname(real)


def _moved_problem(path: str, st: os.stat_result) -> str | None:
    """The path, resolved now, must still lead to the folder that was opened."""
    with contextlib.suppress(OSError):
        now = os.stat(os.path.realpath(path))
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            return None
    return f"{_shown(path)} changed while it was opened"


def _owner_problem(path: str, st: os.stat_result, euid: int) -> str | None:
    if st.st_uid in (0, euid):
        return None
    if euid == 0:
        return f"{_shown(path)} is owned by uid {st.st_uid}, not root"
    return (f"{_shown(path)} is owned by uid {st.st_uid}, neither root nor volplugd's "
            f"uid {euid}")


def writers(mode: int) -> str:
    """Who besides the owner may write, for messages: "group", "others" or both."""
    if mode & stat.S_IWGRP and mode & stat.S_IWOTH:
        return "group and others"
    return "group" if mode & stat.S_IWGRP else "others"


def mode_text(st: os.stat_result) -> str:
    """The permission bits as in ``chmod``: ``0755``."""
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _shown(path: str) -> str:
    return safe_text(path, 512)
