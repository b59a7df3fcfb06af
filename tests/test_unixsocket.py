"""``listen_unix``: the socket file appears only once it accepts, with its mode, made
through its folder's descriptor; ``replaceable``: only a socket nobody listens on."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from volplugd import safefs, unixsocket
from volplugd.safefs import Folder
from volplugd.unixsocket import AddressKept, listen_unix, replaceable, staging_name


@pytest.fixture
def folder(short_tmp: Path) -> Iterator[Folder]:
    opened = Folder.open(str(short_tmp))
    yield opened
    opened.close()


def test_the_file_appears_only_once_the_socket_listens(short_tmp: Path, folder: Folder,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the socket is bound but not listening yet (its mode being set), nothing is
    at the path a client would connect to; afterwards the path accepts at once, has the
    mode, and no staging file is left."""
    path = str(short_tmp / "p.sock")
    seen: list[bool] = []
    chmod = os.chmod

    def watching(target: str, mode: int) -> None:
        seen.append(os.path.exists(path))
        chmod(target, mode)

    monkeypatch.setattr(unixsocket.os, "chmod", watching)
    with listen_unix(folder, "p.sock", 0o640, None, 8), \
            socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        assert seen == [False]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert sorted(os.listdir(short_tmp)) == ["p.sock"]


def test_a_staging_socket_left_by_a_crash_is_replaced(short_tmp: Path, folder: Folder) -> None:
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(short_tmp / staging_name("p.sock")))
    with listen_unix(folder, "p.sock", 0o600, None, 8):
        assert sorted(os.listdir(short_tmp)) == ["p.sock"]


def test_a_symlink_at_the_staging_name_is_removed_never_followed(short_tmp: Path,
                                                                  folder: Folder) -> None:
    """The mode goes on the socket just bound, not on what a planted link names."""
    target = short_tmp / "secret"
    target.write_bytes(b"root only")
    target.chmod(0o600)
    (short_tmp / staging_name("p.sock")).symlink_to(target)
    with listen_unix(folder, "p.sock", 0o666, None, 8):
        assert sorted(os.listdir(short_tmp)) == ["p.sock", "secret"]
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert target.read_bytes() == b"root only"
        assert stat.S_IMODE(os.stat(short_tmp / "p.sock").st_mode) == 0o666


def test_on_failure_no_file_is_left(short_tmp: Path, folder: Folder,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(target: str, mode: int) -> None:
        raise PermissionError(1, "no")

    monkeypatch.setattr(unixsocket.os, "chmod", refuse)
    with pytest.raises(PermissionError):
        listen_unix(folder, "p.sock", 0o600, None, 8)
    assert os.listdir(short_tmp) == []


def test_a_name_of_any_length_binds_through_the_descriptor(short_tmp: Path,
                                                           folder: Folder) -> None:
    """The staging path is short whatever the name: a path at the limit binds too."""
    name = "x" * (safefs.MAX_UNIX_PATH - len(str(short_tmp)) - 1)
    path = str(short_tmp / name)
    with listen_unix(folder, name, 0o600, None, 8), socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        assert os.listdir(short_tmp) == [name]


def test_only_a_socket_nobody_listens_on_is_replaceable(short_tmp: Path,
                                                        folder: Folder) -> None:
    assert replaceable(folder, "none.sock") is False
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(short_tmp / "stale.sock"))  # bound, never listening: refuses
    assert replaceable(folder, "stale.sock") is True
    with listen_unix(folder, "live.sock", 0o600, None, 8), \
            pytest.raises(AddressKept) as live:
        replaceable(folder, "live.sock")
    (short_tmp / "link.sock").symlink_to(short_tmp / "stale.sock")
    with pytest.raises(AddressKept) as link:
        replaceable(folder, "link.sock")
    assert (live.value.errno, live.value.strerror) == (errno.EADDRINUSE,
                                                       "another process is listening on it")
    assert (link.value.errno, link.value.strerror) == (
        errno.EEXIST, "exists and is not a socket; not replacing it")
    assert os.path.lexists(short_tmp / "link.sock")
