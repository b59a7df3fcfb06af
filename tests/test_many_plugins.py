"""Self-tests of tests/fakeplugin/many.py: N plugins from one process answer exactly,
record what came, hang and close on demand, and leave no socket behind.

Plain ``socket`` only, as in test_fakeplugin.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeplugin.many import Responder
from tests.waiting import wait_until

ACTIVATE = b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\r\n"
OTHER = (b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: plugin\r\nContent-Length: 14\r\n\r\n"
         b'{"Name": "v1"}')
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\n"
        b"Content-Length: ")


@pytest.fixture
def responder(short_tmp: Path) -> Iterator[Responder]:
    r = Responder(short_tmp, 3, prefix="m")
    yield r
    r.stop()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def read_answer(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, data
        data += chunk
    return data


def test_each_plugin_answers_exactly_on_one_keep_alive_connection(
        responder: Responder, short_tmp: Path) -> None:
    """Two requests on one connection: the exact Activate answer, then {"Err": ""}."""
    assert responder.names == ["m00000", "m00001", "m00002"]
    assert sorted(p.name for p in short_tmp.iterdir()) == [
        "m00000.sock", "m00001.sock", "m00002.sock"]
    activate = HEAD + b'32\r\n\r\n{"Implements": ["VolumeDriver"]}'
    other = HEAD + b'11\r\n\r\n{"Err": ""}'
    with connect(short_tmp / "m00001.sock") as sock:
        sock.sendall(ACTIVATE + OTHER)
        assert read_answer(sock, len(activate) + len(other)) == activate + other
    seen = responder.requests(short_tmp)
    assert [code for _, code in seen["m00001"]] == ["A", "?"]
    assert seen["m00000"] == seen["m00002"] == []
    assert responder.served() == 2


def test_a_hung_plugin_reads_and_never_answers(responder: Responder, short_tmp: Path) -> None:
    """The request is recorded; nothing comes back (the responder's one thread has
    already decided by the time the record can be read)."""
    responder.hang("m00000")
    with connect(short_tmp / "m00000.sock") as sock:
        sock.sendall(ACTIVATE)
        wait_until(lambda: responder.requests(short_tmp)["m00000"], 10,
                   message="the hung plugin to record its request")
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
    assert responder.served() == 0


def test_close_refuses_more_and_stop_removes_the_sockets(
        responder: Responder, short_tmp: Path) -> None:
    """A closed plugin refuses connections; bind adds plugins; stop unlinks all it bound."""
    responder.close("m00002")

    def refused() -> bool:
        try:
            connect(short_tmp / "m00002.sock").close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, 10, message="m00002 to refuse connections")
    responder.bind("x", 2)
    assert responder.names[-2:] == ["x00000", "x00001"]
    with connect(short_tmp / "x00001.sock") as sock:
        sock.sendall(ACTIVATE)
        assert read_answer(sock, len(HEAD)) == HEAD
    responder.stop()
    assert sorted(p.name for p in short_tmp.iterdir()) == ["m00002.sock"]
