"""``listen_unix``: the socket file appears only once it accepts, with its mode."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from volplugd import unixsocket
from volplugd.unixsocket import STAGING_SUFFIX, listen_unix


def test_the_file_appears_only_once_the_socket_listens(short_tmp: Path,
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
    with listen_unix(path, 0o640, None, 8), socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        assert seen == [False]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert sorted(os.listdir(short_tmp)) == ["p.sock"]


def test_a_staging_socket_left_by_a_crash_is_replaced(short_tmp: Path) -> None:
    path = str(short_tmp / "p.sock")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path + STAGING_SUFFIX)
    with listen_unix(path, 0o600, None, 8):
        assert sorted(os.listdir(short_tmp)) == ["p.sock"]


def test_on_failure_no_file_is_left(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(target: str, mode: int) -> None:
        raise PermissionError(1, "no")

    monkeypatch.setattr(unixsocket.os, "chmod", refuse)
    with pytest.raises(PermissionError):
        listen_unix(str(short_tmp / "p.sock"), 0o600, None, 8)
    assert os.listdir(short_tmp) == []


def test_a_path_too_long_for_a_staging_name_is_bound_in_place(short_tmp: Path) -> None:
    name = "x" * (unixsocket.MAX_UNIX_PATH - len(str(short_tmp)) - 1)
    path = str(short_tmp / name)  # exactly the limit: path + ".new" would not fit
    with listen_unix(path, 0o600, None, 8), socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        assert os.listdir(short_tmp) == [name]
