"""Unix sockets of the test's own, for what the fake plugin cannot be: a socket bound but
not listening, a backlog kept full, a socket file whose socket is closed (what a dead
plugin leaves). The stale-socket tests share them (``sockets`` is a fixture)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["leave_stale", "sockets"]


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    """Bind (and, unless ``listen=None``, listen on) unix sockets; all closed after."""
    made: list[socket.socket] = []

    def bind(path: Path | str, listen: int | None = 8) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        made.append(sock)
        sock.bind(str(path))
        if listen is not None:
            sock.listen(listen)
        return sock

    yield bind
    for sock in made:
        sock.close()


def leave_stale(path: Path | str) -> tuple[int, int]:
    """A socket file whose socket is closed, at ``path``: (device, inode)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(1)
    finally:
        sock.close()
    st = os.lstat(path)
    return st.st_dev, st.st_ino
