"""Follow streams on a real control socket: a follower that does not read what it was
sent is dropped after the write timeout and its slot serves the next one."""

from __future__ import annotations

import json
import os
import select
import socket
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from tests.control.conftest import build_app, serving
from tests.control.helpers import fetch, status_of
from tests.control.memory import MemoryCommands
from tests.waiting import wait_until
from volplugd.model import EventType

FOLLOW = b"GET /v1/events?follow=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture
def socks() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _connect(path: str, socks: list[socket.socket]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.append(sock)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def _head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # nothing after the head is taken out of the kernel's queue
        assert chunk, "closed before the answer's head"
        data += chunk
    return data


def test_a_follower_that_does_not_read_is_dropped_and_its_slot_freed(
        sockdir: str, commands: MemoryCommands, socks: list[socket.socket]) -> None:
    """One follow slot; a client asks for a stream and never reads even its head: while
    it holds the slot root gets 429, after the write timeout the stream is dropped
    (logged: control_stream_dropped reason=not_reading), and root's next stream is
    served and gets its events; a follower that reads is never dropped."""
    path = os.path.join(sockdir, "c.sock")
    with capture_logs() as logs, \
            serving(build_app(commands), path, max_follow=1, read_timeout=3.0) as server:
        silent = _connect(path, socks)
        silent.sendall(FOLLOW)
        # its head has come (seen by poll, not read): the stream holds the slot
        assert select.select([silent], [], [], 30)[0] == [silent]
        refused = fetch(path, "GET", "/v1/events?follow=1")
        assert (refused.status, refused.json()) == (429, {"error": {
            "code": "too_many_streams",
            "message": "too many open follow streams; try again later"}})
        wait_until(lambda: [e for e in logs if e["event"] == "control_stream_dropped"],
                   timeout=30, message="the silent follower to be dropped")
        wait_until(lambda: server.connections == 0, timeout=30,
                   message="the silent follower's connection to end")
        reader = _connect(path, socks)
        reader.sendall(FOLLOW)
        assert status_of(_head(reader)) == 200  # the freed slot serves root
        event = commands.emit(EventType.RESCAN, None, "manual")
        line = b""
        while not line.endswith(b"\n"):
            line += reader.recv(1)
        assert json.loads(line) == event.to_json()
        assert fetch(path, "GET", "/v1/health").status == 200  # serving everyone else
    dropped = [e for e in logs if e["event"] == "control_stream_dropped"]
    assert [(e["reason"], e["uid"], e["suppressed"]) for e in dropped] == [
        ("not_reading", os.getuid(), 0)]
