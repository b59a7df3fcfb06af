"""volplugctl's client and a control socket whose listen backlog is full (a flood of
connections): it waits for room within its timeout instead of failing at once."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from volplugd.ctl.client import Client, DaemonError

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


@pytest.fixture
def full_backlog(short_tmp: Path) -> Iterator[tuple[str, socket.socket, list[socket.socket]]]:
    """A listening unix socket nobody accepts on, filled until connect() says EAGAIN."""
    path = str(short_tmp / "control.sock")
    with ExitStack() as stack:
        server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        server.bind(path)
        server.listen(0)
        fillers: list[socket.socket] = []
        while True:
            probe = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            probe.setblocking(False)
            try:
                probe.connect(path)
            except BlockingIOError:
                break
            fillers.append(probe)
        yield path, server, fillers


def test_a_full_backlog_is_a_timeout_not_unreachable(
        full_backlog: tuple[str, socket.socket, list[socket.socket]]) -> None:
    """Nobody makes room: the call ends as a timeout (exit 1), not 'Resource temporarily
    unavailable' (exit 3, as if volplugd were down)."""
    path, _, _ = full_backlog
    with pytest.raises(DaemonError) as caught:
        Client(path, timeout=0.3).call("GET", "/v1/health")
    assert caught.value.code == "timeout"
    assert caught.value.message == "volplugd did not answer within 0.3s"


def test_the_call_goes_through_once_the_backlog_has_room(
        full_backlog: tuple[str, socket.socket, list[socket.socket]]) -> None:
    """Room appears while the client waits: it connects and gets its answer."""
    path, server, fillers = full_backlog
    result: list[bytes] = []
    client = threading.Thread(
        target=lambda: result.append(Client(path, timeout=30).call("GET", "/v1/health")))
    client.start()
    server.settimeout(10)
    for _ in fillers:  # accepted in order: the fillers first, making room for the client
        server.accept()[0].close()
    conn, _ = server.accept()
    with conn:
        conn.settimeout(10)
        assert conn.recv(65536).startswith(b"GET /v1/health HTTP/1.1\r\n")
        conn.sendall(ANSWER)
    client.join(10)
    assert result == [b"{}"]
