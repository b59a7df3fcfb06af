"""The server core's own HTTP/1.1 paths (serving/connection.py, wire.py, messages.py), with
apps that do what the control app never does: crash, crash mid-stream, answer without a
length, answer a HEAD with a stream, and answer big enough to fill a unix socket's default
send buffer; the kernel's waits under a Wire's reads and writes; the Date of an answer."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.control.conftest import serving
from tests.control.helpers import json_of, raw_exchange, status_of
from tests.waiting import wait_until
from volplugd.control.routing import NDJSON, Reply, Request
from volplugd.serving.messages import http_date
from volplugd.serving.wire import Wire

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


# --- the kernel's waits under a Wire, and the Date --------------------------------


def _read_wait(sock: socket.socket) -> float:
    """The socket's SO_RCVTIMEO, in seconds (0: none)."""
    whole, micros = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                                        struct.calcsize("@ll")))
    return whole + micros / 1e6


def test_a_read_never_waits_past_its_deadline_and_outlasts_a_shorter_kernel_wait() -> None:
    """The kernel's read wait is at most what is left of the deadline; once a read has
    had a short wait, a read under a later deadline waits on past it (the wait is set
    again to what is left) and takes bytes that come after the short wait ran out."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire = Wire(ours, 5.0)
        theirs.sendall(b"a")
        wire.deadline = time.monotonic() + 0.2
        assert wire.fill()
        assert 0 < _read_wait(ours) <= 0.2
        wire.deadline = time.monotonic() + 30
        got: list[bool] = []
        reader = threading.Thread(target=lambda: got.append(wire.fill()))
        reader.start()
        wait_until(lambda: _read_wait(ours) > 1.0, message="the short wait to run out")
        theirs.sendall(b"b")
        reader.join(30)
        assert (got, bytes(wire.buf)) == ([True], b"ab")
        assert _read_wait(ours) <= 30


def test_a_write_the_client_does_not_take_gives_up_after_the_write_timeout() -> None:
    """Bytes that no one reads: the write ends with TimeoutError("timed out") (what the
    connection logs as ``*_client_write_failed``), not a wait without end."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with pytest.raises(TimeoutError, match=r"^timed out$"):
            Wire(ours, 0.2).send(BIG, BIG)


def test_a_client_that_stops_reading_its_answer_is_dropped_and_others_are_served(
        sockdir: str) -> None:
    """An 8 MB answer (over the server's send buffer) to a client that reads nothing:
    after the write timeout its connection ends, logged once as
    control_client_write_failed ("timed out"), and another client is answered meanwhile
    and after."""
    huge = b"0" * (8 << 20)

    def app(req: Request) -> Reply:
        return Reply(200, huge if req.path == "/big" else b"small")

    path = os.path.join(sockdir, "w.sock")
    with capture_logs() as logs, serving(app, path, read_timeout=0.5) as server, \
            socket.socket(socket.AF_UNIX) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(path)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw_exchange(path, b"GET /small HTTP/1.0\r\n\r\n").endswith(b"small")
        wait_until(lambda: server.connections == 0, message="the reader that reads not dropped")
        assert raw_exchange(path, b"GET /small HTTP/1.0\r\n\r\n").endswith(b"small")
    failed = [e for e in logs if e["event"] == "control_client_write_failed"]
    assert [(e["log_level"], e["error"]) for e in failed] == [("info", "timed out")]


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 253402300799), st.sampled_from([0.0, 0.25, 0.5, 0.999]))
def test_the_date_is_the_http_date_of_the_standard_library(second: int, part: float) -> None:
    """From 1970 to the year 9999, whole seconds or not: the text of
    ``email.utils.formatdate``."""
    assert http_date(second + part) == formatdate(second + part, usegmt=True)
