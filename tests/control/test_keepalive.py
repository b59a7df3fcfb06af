"""Keep-alive connections on a real unix socket: answers in order whatever each request
does (a read from memory, a plugin call, a fail-fast refusal, pipelined requests), the
same request answered afresh, and no client held up by another (one blocked in the app,
one slow to take its answer); a head cut short, a malformed head after a good one."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.control.conftest import build_app, fake_backed, serving
from tests.control.helpers import json_of, raw_exchange, status_of
from tests.control.memory import MemoryCommands, view
from tests.waiting import wait_until
from volplugd.control import make_app
from volplugd.control.access import AccessPolicy
from volplugd.model import PluginState

HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"


def _answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read ``count`` whole answers (status, body) from a keep-alive connection."""
    buf, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(out)} answers"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(buf) < length:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed in the middle of a body"
            buf += chunk
        out.append((int(head.split(b" ")[1]), buf[:length]))
        buf = buf[length:]
    return out


@pytest.fixture
def threads_seen(sockdir: str) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """A live server whose app notes, per answer, (route, status)."""
    seen: list[tuple[str, int]] = []

    def note(route: str, status: int) -> None:
        seen.append((route, status))

    path = os.path.join(sockdir, "control.sock")
    with fake_backed(sockdir) as (cmds, _fakes):
        app = make_app(cmds, metrics=lambda: (b"x 1\n", "text/plain"), on_request=note,
                       version="9.9.9", started_at=time.time(), access=AccessPolicy())
        with serving(app, path, read_timeout=5.0):
            yield path, seen


def test_reads_and_plugin_calls_share_one_keep_alive_connection(
        threads_seen: tuple[str, list[tuple[str, int]]]) -> None:
    """One keep-alive connection: reads from memory, a plugin call, a read again; every
    answer in order."""
    path, seen = threads_seen
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        for target in ("/v1/health", "/v1/plugins/demo", "/v1/events?since=0",
                       "/v1/plugins/demo/volumes", "/v1/health"):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
            assert _answers(sock, 1)[0][0] == 200
    assert seen == [("/v1/health", 200), ("/v1/plugins/{name}", 200), ("/v1/events", 200),
                    ("/v1/plugins/{name}/volumes", 200), ("/v1/health", 200)]


def test_the_fail_fast_refusals_keep_the_connection(
        threads_seen: tuple[str, list[tuple[str, int]]]) -> None:
    """A volume read of a plugin that is not ready (409) or unknown (404) is answered at
    once, and the connection serves the next request."""
    path, seen = threads_seen
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        for target in (b"/v1/plugins/sick/volumes", b"/v1/plugins/fresh/volumes/v1/path",
                       b"/v1/plugins/nope/capabilities", b"/v1/health"):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        (sick, body), (fresh, _), (nope, _), (health, _) = _answers(sock, 4)
    assert (sick, fresh, nope, health) == (409, 409, 404, 200)
    assert json_of(b"\r\n\r\n" + body)["error"]["code"] == "plugin_not_ready"
    assert seen == [("/v1/plugins/{name}/volumes", 409),
                    ("/v1/plugins/{name}/volumes/{volume}/path", 409),
                    ("/v1/plugins/{name}/capabilities", 404), ("/v1/health", 200)]


def test_a_follow_stream_and_a_body_are_served_and_counted(
        threads_seen: tuple[str, list[tuple[str, int]]]) -> None:
    """A request with a body, then a follow stream whose head comes at once."""
    path, seen = threads_seen
    raw = raw_exchange(path, b"POST /v1/rescan HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
    assert status_of(raw) == 200
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"GET /v1/events?since=0&follow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        wait_until(lambda: ("/v1/events", 200) in seen, timeout=10,
                   message="the follow stream was not counted")
    assert seen[0] == ("/v1/rescan", 200)


def test_pipelined_requests_are_all_answered_in_order(
        threads_seen: tuple[str, list[tuple[str, int]]]) -> None:
    """Many requests in one write: each answered, in order, and the connection stays."""
    path, seen = threads_seen
    count = 49
    targets = [b"/v1/plugins/demo" if i % 2 else b"/v1/plugins/nope" for i in range(count)]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % t for t in targets))
        answers = _answers(sock, count)
        assert [status for status, _ in answers] == [200 if i % 2 else 404
                                                     for i in range(count)]
        assert all(json_of(b"\r\n\r\n" + body)["name"] == "demo"
                   for status, body in answers if status == 200)
        sock.sendall(HEALTH)
        assert _answers(sock, 1)[0][0] == 200
    assert len(seen) == count + 1


def test_the_same_request_sent_again_is_answered_afresh(sockdir: str) -> None:
    """A poller sends the same bytes again and again on its connection: each time the
    app is asked and counted, and sees the daemon as it is now; a different request in
    between is its own."""
    seen: list[tuple[str, int]] = []

    def note(route: str, status: int) -> None:
        seen.append((route, status))

    path = os.path.join(sockdir, "control.sock")
    demo = b"GET /v1/plugins/demo HTTP/1.1\r\nHost: x\r\n\r\n"
    sick = b"GET /v1/plugins/sick/volumes HTTP/1.1\r\nHost: x\r\n\r\n"
    with fake_backed(sockdir) as (cmds, _fakes):
        app = make_app(cmds, metrics=None, on_request=note, version="9.9.9",
                       started_at=time.time(), access=AccessPolicy())
        with serving(app, path, read_timeout=5.0), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            statuses = []
            for change in (lambda: None, lambda: setattr(cmds, "loop_age_seconds", 60.0),
                           lambda: None):
                change()
                sock.sendall(HEALTH)
                (status, body), = _answers(sock, 1)
                statuses.append((status, json_of(b"\r\n\r\n" + body)["status"]))
            sock.sendall(demo)
            first = json_of(b"\r\n\r\n" + _answers(sock, 1)[0][1])["state"]
            cmds.views["demo"] = view("demo", PluginState.UNHEALTHY, last_error="gone")
            sock.sendall(demo)
            again = json_of(b"\r\n\r\n" + _answers(sock, 1)[0][1])["state"]
            sock.sendall(sick)
            refused = _answers(sock, 1)[0][0]
            cmds.views["sick"] = view("sick")  # ready now: its volumes come from its client
            sock.sendall(sick)
            listed = _answers(sock, 1)[0]
    assert statuses == [(200, "ok"), (200, "stalled"), (200, "stalled")]
    assert (first, again) == ("ready", "unhealthy")
    assert (refused, listed) == (409, (200, b'{"volumes":[]}'))
    assert seen == [("/v1/health", 200)] * 3 + [("/v1/plugins/{name}", 200)] * 2 + [
        ("/v1/plugins/{name}/volumes", 409), ("/v1/plugins/{name}/volumes", 200)]


def test_a_connection_held_in_the_app_holds_up_no_other(sockdir: str) -> None:
    """While one request is held in the app (its metrics hook waits), another client
    pipelines 40 requests and a third sends one: both are answered meanwhile."""
    seen: list[str] = []
    held, gate = threading.Event(), threading.Event()

    def note(route: str, status: int) -> None:
        if route == "/v1/events":
            held.set()
            gate.wait(10)  # this connection's thread stops here until the others are served
        seen.append(route)

    path = os.path.join(sockdir, "control.sock")
    with fake_backed(sockdir) as (cmds, _fakes):
        app = make_app(cmds, metrics=lambda: (b"x 1\n", "text/plain"), on_request=note,
                       version="9.9.9", started_at=time.time(), access=AccessPolicy())
        with serving(app, path, read_timeout=10.0), \
                socket.socket(socket.AF_UNIX) as first, \
                socket.socket(socket.AF_UNIX) as greedy, socket.socket(socket.AF_UNIX) as lone:
            for sock in (first, greedy, lone):
                sock.settimeout(10)
                sock.connect(path)
            first.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.wait(10), "the first request never reached the app"
            greedy.sendall(40 * b"GET /v1/plugins/demo HTTP/1.1\r\nHost: x\r\n\r\n")
            lone.sendall(HEALTH)
            try:
                assert _answers(lone, 1)[0][0] == 200
                assert len(_answers(greedy, 40)) == 40
            finally:
                gate.set()
            assert _answers(first, 1)[0][0] == 200
    assert seen[-1] == "/v1/events"
    assert seen.count("/v1/plugins/{name}") == 40


def test_an_answer_the_client_does_not_read_holds_up_no_other(
        sockdir: str, commands: MemoryCommands) -> None:
    """A plugin list bigger than the socket buffers, to a client that does not read:
    other clients are answered meanwhile, and the list then arrives whole."""
    for i in range(6000):
        commands.add(view(f"plugin-with-a-long-name-{i:05d}"))
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path) as server, \
            socket.socket(socket.AF_UNIX) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(30)
        slow.connect(path)
        slow.sendall(b"GET /v1/plugins HTTP/1.1\r\nHost: x\r\n\r\n" + HEALTH)
        wait_until(lambda: server.connections == 1 and server.idle == 0, timeout=10,
                   message="the list was never taken up")
        for _ in range(3):
            raw = raw_exchange(path, HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close"
                                                                 b"\r\n\r\n"))
            assert status_of(raw) == 200
        (status, body), (health, _) = _answers(slow, 2)
        assert (status, health) == (200, 200)
        assert len(json_of(b"\r\n\r\n" + body)["plugins"]) == 6000 + 3


def test_a_head_cut_short_by_the_client_gets_400(sockdir: str,
                                                 commands: MemoryCommands) -> None:
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path):
        raw = raw_exchange(path, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n", half_close=True)
        assert status_of(raw) == 400
        assert json_of(raw)["error"] == {"code": "invalid_request",
                                         "message": "the request head ended early"}
        assert status_of(raw_exchange(path, HEALTH, half_close=True)) == 200


def test_a_malformed_head_after_a_good_one_gets_its_4xx_after_the_good_answer(
        sockdir: str, commands: MemoryCommands) -> None:
    """Pipelined: the first answer, then the 400, then the close; the server serves
    others after."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path):
        raw = raw_exchange(path, HEALTH + b"G\x00T / HTTP/1.1\r\n\r\n")
        first, _, rest = raw.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"HTTP/1.1 400 Bad Request\r\n" in rest
        assert rest.endswith(b'{"error":{"code":"invalid_request",'
                             b'"message":"the method must be a token"}}')
        assert status_of(raw_exchange(path, HEALTH, half_close=True)) == 200
