"""The listener's event loop on a real unix socket: which requests it answers itself,
which move their connection to a thread, and that nothing is lost or reordered when a
connection moves (pipelined requests, an answer the client is slow to take, a head cut
short, a malformed head)."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.control.conftest import build_app, fake_backed, serving
from tests.control.helpers import ROOT, json_of, raw_exchange, status_of
from tests.control.memory import MemoryCommands, view
from tests.waiting import wait_until
from volplugd.admission import Refusal
from volplugd.control import make_app
from volplugd.control.access import AccessPolicy
from volplugd.control.head import MEMO_HEADS, parse_head, parse_whole
from volplugd.control.site import Site
from volplugd.control.sockio import Body, Wire
from volplugd.model import PluginState

HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
LOOP, CONN = "control-loop", "control-conn"


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
def threads_seen(sockdir: str) -> Iterator[tuple[str, list[tuple[str, int, str]]]]:
    """A live server whose app notes, per answer, (route, status, thread name)."""
    seen: list[tuple[str, int, str]] = []

    def note(route: str, status: int) -> None:
        seen.append((route, status, threading.current_thread().name))

    path = os.path.join(sockdir, "control.sock")
    with fake_backed(sockdir) as (cmds, _fakes):
        app = make_app(cmds, metrics=lambda: (b"x 1\n", "text/plain"), on_request=note,
                       version="9.9.9", started_at=time.time(), access=AccessPolicy())
        with serving(app, path, read_timeout=5.0):
            yield path, seen


def test_reads_from_memory_are_answered_on_the_loop_and_plugin_calls_on_a_thread(
        threads_seen: tuple[str, list[tuple[str, int, str]]]) -> None:
    """One keep-alive connection: reads on the loop until a plugin call moves it to a
    thread, where it stays; every answer in order."""
    path, seen = threads_seen
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        for target in ("/v1/health", "/v1/plugins/demo", "/v1/events?since=0",
                       "/v1/plugins/demo/volumes", "/v1/health"):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
            assert _answers(sock, 1)[0][0] == 200
    assert seen == [("/v1/health", 200, LOOP), ("/v1/plugins/{name}", 200, LOOP),
                    ("/v1/events", 200, LOOP), ("/v1/plugins/{name}/volumes", 200, CONN),
                    ("/v1/health", 200, CONN)]


def test_the_fail_fast_refusals_are_answered_on_the_loop(
        threads_seen: tuple[str, list[tuple[str, int, str]]]) -> None:
    """A volume read of a plugin that is not ready (409) or unknown (404) never waits,
    so the loop answers it, and the connection stays on the loop."""
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
    assert seen == [("/v1/plugins/{name}/volumes", 409, LOOP),
                    ("/v1/plugins/{name}/volumes/{volume}/path", 409, LOOP),
                    ("/v1/plugins/{name}/capabilities", 404, LOOP), ("/v1/health", 200, LOOP)]


def test_a_follow_stream_and_a_body_are_served_on_a_thread(
        threads_seen: tuple[str, list[tuple[str, int, str]]]) -> None:
    path, seen = threads_seen
    raw = raw_exchange(path, b"POST /v1/rescan HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
    assert status_of(raw) == 200
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"GET /v1/events?since=0&follow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        wait_until(lambda: ("/v1/events", 200, CONN) in seen, timeout=10,
                   message="the follow stream was not counted")
    assert seen[0] == ("/v1/rescan", 200, CONN)


def test_pipelined_requests_are_all_answered_in_order_on_the_loop(
        threads_seen: tuple[str, list[tuple[str, int, str]]]) -> None:
    """Many requests in one write: each answered, in order, by the loop (one per turn),
    and the connection stays."""
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
    assert {thread for _, _, thread in seen} == {LOOP}
    assert len(seen) == count + 1


def test_the_same_request_sent_again_is_answered_afresh(sockdir: str) -> None:
    """A poller sends the same bytes again and again on its connection: the loop reuses
    what it made of them (head, request), never the answer. Each time the app is asked
    and counted, and sees the daemon as it is now; a request that must now wait moves
    to a thread; a different request in between is its own."""
    seen: list[tuple[str, int, str]] = []

    def note(route: str, status: int) -> None:
        seen.append((route, status, threading.current_thread().name))

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
    assert seen == [("/v1/health", 200, LOOP)] * 3 + [("/v1/plugins/{name}", 200, LOOP)] * 2 + [
        ("/v1/plugins/{name}/volumes", 409, LOOP), ("/v1/plugins/{name}/volumes", 200, CONN)]


def test_a_client_that_pipelines_waits_its_turn(sockdir: str) -> None:
    """While the loop is held up (in the first request's metrics hook), one client
    pipelines 40 requests and another sends one: the loop answers one request of each
    ready connection per turn, so the lone request is not served after the 40."""
    seen: list[str] = []
    held, gate = threading.Event(), threading.Event()

    def note(route: str, status: int) -> None:
        if not seen:
            held.set()
            gate.wait(10)  # the loop thread stops here until both clients have sent
        seen.append(route)

    path = os.path.join(sockdir, "control.sock")
    with fake_backed(sockdir) as (cmds, _fakes):
        app = make_app(cmds, metrics=lambda: (b"x 1\n", "text/plain"), on_request=note,
                       version="9.9.9", started_at=time.time(), access=AccessPolicy())
        with serving(app, path, read_timeout=10.0) as server, \
                socket.socket(socket.AF_UNIX) as first, \
                socket.socket(socket.AF_UNIX) as greedy, socket.socket(socket.AF_UNIX) as lone:
            for sock in (first, greedy, lone):
                sock.settimeout(10)
                sock.connect(path)
            wait_until(lambda: server.connections == 3, timeout=10,
                       message="the three connections were not accepted")
            first.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.wait(10), "the first request never reached the app"
            greedy.sendall(40 * b"GET /v1/plugins/demo HTTP/1.1\r\nHost: x\r\n\r\n")
            lone.sendall(HEALTH)
            gate.set()
            assert _answers(lone, 1)[0][0] == 200
            assert len(_answers(greedy, 40)) == 40
    assert seen[0] == "/v1/events"
    assert seen.index("/v1/health") <= 2  # after at most one of the greedy client's
    assert seen.count("/v1/plugins/{name}") == 40


def test_an_answer_the_client_does_not_read_never_holds_the_loop(
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
        wait_until(lambda: server.connections == 1 and server.waiting == 0, timeout=10,
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
    """Read on the loop, refused by a thread: the first answer, then the 400, then the
    close; the server serves others after."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path):
        raw = raw_exchange(path, HEALTH + b"G\x00T / HTTP/1.1\r\n\r\n")
        first, _, rest = raw.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"HTTP/1.1 400 Bad Request\r\n" in rest
        assert rest.endswith(b'{"error":{"code":"invalid_request",'
                             b'"message":"the method must be a token"}}')
        assert status_of(raw_exchange(path, HEALTH, half_close=True)) == 200


@pytest.mark.parametrize(("method", "target", "inline"), [
    ("GET", "/v1/health", True),
    ("HEAD", "/v1/plugins", True),
    ("GET", "/v1/plugins/demo", True),
    ("GET", "/v1/events?since=4", True),
    ("GET", "/v1/events?since=4&follow=1", False),
    ("GET", "/metrics", False),  # a render takes milliseconds: never on the loop
    ("GET", "/openapi.json", True),
    ("GET", "/v1/plugins/demo/volumes", True),  # its fail-fast answer; else MustWait
    ("GET", "/v1/plugins/demo/capabilities", True),
    ("GET", "/v1/plugins/demo/volumes/v/path", True),
    ("GET", "/v1/plugins/demo/volumes/v/mount", False),
    ("GET", "/v1/%70lugins", False),  # matches once decoded: served on a thread
    ("GET", "/nowhere", False),
])
def test_which_routes_the_app_answers_from_memory(commands: MemoryCommands, method: str,
                                                  target: str, inline: bool) -> None:
    app = build_app(commands)
    assert app.runs_inline(method, target) is inline


def test_what_the_site_works_out_once_per_head_is_given_to_each_request(
        commands: MemoryCommands) -> None:
    """``Site`` remembers, per head object, whether the loop may answer it and what its
    request line says; each request still gets a ``Request`` of its own, with its own
    body, peer and hooks (its params read-only), and a head that merely looks alike is
    worked out on its own."""
    app = build_app(commands)
    site = Site(app=app, read_timeout=5.0, read_only=False, stopping=threading.Event(),
                follow_slot=lambda peer, groups: Refusal.FULL, may_keep_alive=lambda: True,
                set_idle=lambda sock, idle: True, app_inline=app.runs_inline)
    get = parse_whole(b"get /v1/plugins/demo?x=1 HTTP/1.1\r\nHost: a")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        body = Body(Wire(ours, 5.0), 0, lambda: None)
        first = site.request(get, body, ROOT, frozenset({0}), inline=True,
                             disconnected=lambda: None)
        with pytest.raises(TypeError):  # read-only: the app's route memo hands them out
            first.params["name"] = "changed"  # type: ignore[index]
        second = site.request(get, io.BytesIO(), None, frozenset(), inline=False,
                              disconnected=lambda: "hung_up")
    assert (first.body, first.peer, first.inline, first.disconnected()) == (
        body, ROOT, True, None)
    assert (second.peer, second.groups, second.inline, second.disconnected()) == (
        None, frozenset(), False, "hung_up")
    assert (second.method, second.path, second.query_string) == ("GET", "/v1/plugins/demo", "x=1")
    assert (second.params, second.content_length, second.stopping) == ({}, 0, site.stopping)
    assert not site.inline(get)  # "get" is not a read method to the server
    get = parse_whole(b"GET /v1/plugins/demo?x=1 HTTP/1.1\r\nHost: a")
    assert site.inline(get)
    posted = parse_head(b"GET /v1/plugins/demo HTTP/1.1", [b"Content-Length: 3"])
    assert not site.inline(posted)  # a body is read on a thread
    for i in range(MEMO_HEADS + 5):
        site.inline(parse_head(b"GET /v1/plugins/p%d HTTP/1.1" % i, []))
    assert len(site._prepared) <= MEMO_HEADS
