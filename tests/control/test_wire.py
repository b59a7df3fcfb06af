"""The server core's own HTTP/1.1 paths (serving/connection.py, wire.py), with apps that do
what the control app never does: crash, crash mid-stream, answer without a length, answer
a HEAD with a stream, and answer big enough to fill a unix socket's default send buffer."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

from structlog.testing import capture_logs

from tests.control.conftest import serving
from tests.control.helpers import json_of, raw_exchange, status_of
from tests.waiting import wait_until
from volplugd.control.routing import NDJSON, Reply, Request

BIG = b"[" + b"0," * 300_000 + b"0]"  # 600 KB: over the ~200 KiB default send buffer
GET = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _read_answer(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One whole answer (Content-Length framed) off ``sock``; leftovers stay in ``buf``."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-head: {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(buf) < end + length:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed mid-body"
        buf += chunk
    body = bytes(buf[end:end + length])
    del buf[:end + length]
    return int(head[9:12]), body


def test_a_crashing_app_gets_a_json_500_and_the_connection_serves_on(sockdir: str) -> None:
    """An exception escaping the app: 500 internal_error (no traceback to the client),
    the crash logged once, and the next request on the same connection is served."""
    calls = []

    def app(req: Request) -> Reply:
        calls.append(req.path)
        if req.path == "/crash":
            raise RuntimeError("boom")
        return Reply(200, b"ok")

    path = os.path.join(sockdir, "c.sock")
    with capture_logs() as logs, serving(app, path), \
            socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        buf = bytearray()
        sock.sendall(b"GET /crash HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = _read_answer(sock, buf)
        assert (status, json_of(b"\r\n\r\n" + body)["error"]) == (500, {
            "code": "internal_error", "message": "internal error; the daemon logged it"})
        assert b"boom" not in body
        sock.sendall(GET)
        assert _read_answer(sock, buf) == (200, b"ok")
    assert calls == ["/crash", "/x"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "control_request_crashed"]


def test_a_crash_mid_stream_ends_the_connection(sockdir: str) -> None:
    """Once the head is out the status cannot change: the connection just ends, after
    what was sent (a stream has no length; its end is the connection's)."""

    def stream() -> Iterator[bytes]:
        yield b"first\n"
        raise RuntimeError("mid-stream")

    def app(req: Request) -> Reply:
        return Reply(200, stream(), NDJSON)

    path = os.path.join(sockdir, "s.sock")
    with capture_logs() as logs, serving(app, path):
        raw = raw_exchange(path, GET)  # reads to EOF
    assert status_of(raw) == 200
    assert raw.endswith(b"\r\n\r\nfirst\n")
    assert b"\r\nConnection: close\r\n" in raw
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "control_request_crashed"]


def test_a_big_answer_leaves_at_once_and_pipelined_requests_keep_their_order(
        sockdir: str) -> None:
    """A 600 KB answer goes into the socket in one write: the connection's thread
    reads the next (pipelined) request before the client has read a byte; both answers
    then arrive whole, in order."""
    served: list[str] = []
    both = threading.Event()

    def app(req: Request) -> Reply:
        served.append(req.path)
        if len(served) == 2:
            both.set()
        return Reply(200, BIG if req.path == "/big" else b"small")

    path = os.path.join(sockdir, "b.sock")
    with serving(app, path), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(both.is_set, message="the second request served before any read")
        buf = bytearray()
        assert _read_answer(sock, buf) == (200, BIG)
        assert _read_answer(sock, buf) == (200, b"small")
    assert served == ["/big", "/small"]


def test_an_answer_without_length_is_sent_whole_then_closed(sockdir: str) -> None:
    """A 200 whose body is a stream (not bytes) has no Content-Length: its end is the
    connection's end, so the server says Connection: close and closes."""

    def app(req: Request) -> Reply:
        return Reply(200, iter([b"a", b"", b"b"]), "text/plain")

    path = os.path.join(sockdir, "n.sock")
    with serving(app, path):
        raw = raw_exchange(path, GET)
    assert raw.endswith(b"\r\n\r\nab")
    assert b"\r\nConnection: close\r\n" in raw
    assert b"Content-Length" not in raw


def test_head_of_a_stream_sends_the_head_alone_and_keeps_the_connection(
        sockdir: str) -> None:
    """HEAD of a route whose GET streams: the head without a length (a HEAD answer never
    has a body, so the connection stays), nothing of the stream, and the stream closed
    without being read; the next request on the connection is served."""
    closed: list[bool] = []

    class Stream:
        def __iter__(self) -> Iterator[bytes]:
            raise AssertionError("a HEAD must not read the stream")

        def close(self) -> None:
            closed.append(True)

    def app(req: Request) -> Reply:
        return Reply(200, Stream() if req.method == "HEAD" else b"small", "text/plain")

    path = os.path.join(sockdir, "h.sock")
    with serving(app, path), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
        buf = bytearray()
        while buf.count(b"\r\n\r\n") < 2 or not buf.endswith(b"small"):
            chunk = sock.recv(65536)
            assert chunk, f"closed early: {bytes(buf)!r}"
            buf += chunk
    head, rest = bytes(buf).split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length" not in head
    assert b"Connection: close" not in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"\r\n\r\nsmall")
    assert closed == [True]
