"""The control server on a real unix socket: routes end to end, socket file handling,
limits (slow clients, big bodies, connection and follow bounds), keep-alive, stop."""

from __future__ import annotations

import errno
import gc
import grp
import json
import os
import select
import socket
import stat
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.control.conftest import Live, build_app, serving
from tests.control.helpers import (
    UnixHTTPConnection,
    fetch,
    json_of,
    raw_exchange,
    status_of,
)
from tests.control.memory import MemoryCommands
from tests.waiting import wait_until
from volplugd.control import ControlServer, ControlSocketError
from volplugd.control.routing import Reply, Request
from volplugd.model import EventType
from volplugd.serving import Peer
from volplugd.serving.connection import Client
from volplugd.serving.wire import Body, Wire


def test_every_route_through_the_socket(live: Live) -> None:
    """Each route answers over the unix socket, volume calls reaching the fake plugin."""
    p = live.path
    assert fetch(p, "GET", "/v1/health").json()["status"] == "ok"
    assert len(fetch(p, "GET", "/v1/plugins").json()["plugins"]) == 4
    assert fetch(p, "GET", "/v1/plugins/demo").json()["name"] == "demo"
    assert fetch(p, "POST", "/v1/plugins/demo/probe").status == 200
    assert fetch(p, "POST", "/v1/rescan").json() == {"added": [], "removed": [], "changed": []}
    assert fetch(p, "GET", "/v1/plugins/demo/capabilities").json() == {"scope": "local"}
    created = fetch(p, "POST", "/v1/plugins/demo/volumes", body={"name": "v1"})
    assert created.status == 201
    assert created.json()["name"] == "v1"
    assert created.json()["mountpoint"] == "/fake/volumes/v1"
    assert [v["name"] for v in fetch(p, "GET", "/v1/plugins/demo/volumes").json()["volumes"]
            ] == ["v1"]
    assert fetch(p, "GET", "/v1/plugins/demo/volumes/v1").json()["name"] == "v1"
    assert fetch(p, "GET", "/v1/plugins/demo/volumes/v1/path").status == 200
    mounted = fetch(p, "POST", "/v1/plugins/demo/volumes/v1/mount", body={"id": "c1"})
    assert mounted.json() == {"mountpoint": "/fake/volumes/v1"}
    assert fetch(p, "POST", "/v1/plugins/demo/volumes/v1/unmount", body={"id": "c1"}
                 ).status == 204
    assert fetch(p, "DELETE", "/v1/plugins/demo/volumes/v1").status == 204
    assert live.plugins["demo"].volumes == {}
    assert fetch(p, "GET", "/metrics").body.startswith(b"# HELP")
    assert fetch(p, "GET", "/openapi.json").json()["openapi"] == "3.1.0"


def test_plugin_err_reaches_the_client_verbatim(live: Live) -> None:
    """A plugin's 200+Err becomes 502 plugin_error with that Err as the message."""
    ans = fetch(live.path, "POST", "/v1/plugins/broken/volumes", body={"name": "v"})
    assert ans.status == 502
    assert ans.error == ("plugin_error", "broken on purpose")


def test_not_ready_plugin_is_refused_without_a_request(live: Live) -> None:
    """409 for a plugin that is not ready; nothing reaches any plugin."""
    ans = fetch(live.path, "GET", "/v1/plugins/sick/volumes")
    assert ans.error == ("plugin_not_ready", "plugin sick is unhealthy: timeout after 5.0s")
    assert all(f.requests == [] for f in live.plugins.values())


def test_unknown_route_and_method_over_the_socket(live: Live) -> None:
    """404 not_found and 405 with Allow come back as JSON through the server."""
    assert fetch(live.path, "GET", "/nope").error[0] == "not_found"
    ans = fetch(live.path, "PATCH", "/v1/plugins")
    assert (ans.status, ans.headers["Allow"]) == (405, "GET, HEAD")


def test_head_has_length_and_no_body(live: Live) -> None:
    """HEAD: the GET's Content-Length, no body, connection still usable."""
    conn = UnixHTTPConnection(live.path)
    try:
        conn.request("HEAD", "/v1/plugins")
        head = conn.getresponse()
        assert head.read() == b""
        conn.request("GET", "/v1/plugins")
        full = conn.getresponse().read()
        assert head.getheader("Content-Length") == str(len(full))
    finally:
        conn.close()


def test_keep_alive_serves_many_requests_on_one_connection(live: Live) -> None:
    """HTTP/1.1 keep-alive: three answers on one socket."""
    conn = UnixHTTPConnection(live.path)
    try:
        sockets = []
        for _ in range(3):
            conn.request("GET", "/v1/health")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Connection") is None
            resp.read()
            sockets.append(conn.sock)
        assert sockets[0] is not None
        assert all(s is sockets[0] for s in sockets)
    finally:
        conn.close()


def test_connection_close_is_honoured(live: Live) -> None:
    """A client asking Connection: close gets it, and the server closes."""
    raw = raw_exchange(live.path, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n")
    assert status_of(raw) == 200
    assert b"\r\nConnection: close\r\n" in raw


def test_http10_client_is_answered_and_closed(live: Live) -> None:
    """An HTTP/1.0 request is answered, then the connection ends."""
    raw = raw_exchange(live.path, b"GET /v1/health HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200
    assert json_of(raw)["status"] == "ok"


def test_peer_credentials_reach_the_app(sockdir: str) -> None:
    """SO_PEERCRED: the request carries this process's pid, uid and gid, and its groups."""
    seen: dict[str, Any] = {}

    def app(req: Request) -> Reply:
        seen.update(peer=req.peer, groups=req.groups)
        return Reply(200)

    with serving(app, os.path.join(sockdir, "c.sock")) as server:
        assert server.path is not None
        assert fetch(server.path, "GET", "/").status == 200
    assert seen["peer"] == (os.getpid(), os.getuid(), os.getgid())
    assert seen["peer"].uid == os.getuid()
    assert os.getgid() in seen["groups"]


# --- the socket file ---------------------------------------------------------------------


def test_socket_gets_mode_and_group(sockdir: str, commands: MemoryCommands) -> None:
    """The file is created with the given mode (whatever the umask) and group."""
    path = os.path.join(sockdir, "c.sock")
    old = os.umask(0o077)
    try:
        with serving(build_app(commands), path, mode=0o666, group="nogroup"):
            st = os.stat(path)
    finally:
        os.umask(old)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert st.st_gid == grp.getgrnam("nogroup").gr_gid


def test_socket_removed_on_stop(sockdir: str, commands: MemoryCommands) -> None:
    """stop() removes the socket file it created."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path):
        assert os.path.exists(path)
    assert not os.path.exists(path)


def test_stale_socket_is_replaced(sockdir: str, commands: MemoryCommands) -> None:
    """A socket file nobody listens on (a crashed daemon's) is replaced."""
    path = os.path.join(sockdir, "c.sock")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)
    with serving(build_app(commands), path):
        assert fetch(path, "GET", "/v1/health").status == 200


def test_live_socket_is_not_stolen(sockdir: str, commands: MemoryCommands) -> None:
    """A socket someone listens on is refused (another volplugd is running)."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path):
        server = ControlServer(build_app(commands), path=path, mode=0o660, group=None)
        with pytest.raises(ControlSocketError) as info:
            server.start()
        server.stop()
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == f"[Errno {errno.EADDRINUSE}] another process is " \
                                  f"listening on it: '{path}'"
        assert fetch(path, "GET", "/v1/health").status == 200


def test_path_that_is_not_a_socket_is_refused(sockdir: str, commands: MemoryCommands) -> None:
    """A regular file at the path is never removed."""
    path = os.path.join(sockdir, "c.sock")
    with open(path, "w") as f:
        f.write("precious")
    server = ControlServer(build_app(commands), path=path, mode=0o660, group=None)
    with pytest.raises(ControlSocketError) as info:
        server.start()
    server.stop()
    assert str(info.value) == f"[Errno {errno.EEXIST}] exists and is not a socket; not " \
                              f"replacing it: '{path}'"
    with open(path) as f:
        assert f.read() == "precious"


def test_unknown_group_is_refused(sockdir: str, commands: MemoryCommands) -> None:
    """A group name that does not exist fails start() and leaves no file."""
    path = os.path.join(sockdir, "c.sock")
    server = ControlServer(build_app(commands), path=path, mode=0o660,
                           group="no-such-group-here")
    with pytest.raises(ControlSocketError, match="no group named 'no-such-group-here'"):
        server.start()
    server.stop()
    assert not os.path.exists(path)


def test_too_long_path_is_refused(commands: MemoryCommands) -> None:
    """A path over sun_path's 107 bytes is a clear error."""
    path = "/tmp/" + "x" * 120
    server = ControlServer(build_app(commands), path=path, mode=0o660, group=None)
    with pytest.raises(ControlSocketError, match="longer than 107 bytes"):
        server.start()
    server.stop()


def test_successor_socket_is_not_removed(sockdir: str, commands: MemoryCommands) -> None:
    """stop() removes only its own file, not one another process bound there since."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path), socket.socket(socket.AF_UNIX) as other:
        os.unlink(path)
        other.bind(path)
    assert os.path.exists(path)


def test_inherited_socket_is_served_and_never_unlinked(sockdir: str,
                                                       commands: MemoryCommands) -> None:
    """Socket activation: serve the given listening socket; leave its file alone."""
    path = os.path.join(sockdir, "activated.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(16)
    server = ControlServer(build_app(commands), path=None, mode=0o600, group=None, sock=sock)
    assert server.path == path
    server.start()
    try:
        assert fetch(path, "GET", "/v1/health").status == 200
    finally:
        server.stop()
        server.join(5.0)
        assert not server.is_alive()
    assert os.path.exists(path)
    assert sock.fileno() == -1  # closed: it was handed over


# --- limits ---------------------------------------------------------------------------------


def test_two_mib_body_is_413(live: Live) -> None:
    """A 2 MiB body: 413 request_too_large, read by a plain client that sent it all."""
    ans = fetch(live.path, "POST", "/v1/plugins/demo/volumes", body=b"x" * (2 * 1024 * 1024))
    assert ans.status == 413
    assert ans.error == ("request_too_large",
                         "request body of 2097152 bytes exceeds the limit of 1048576 bytes")
    assert ans.headers["Connection"] == "close"
    assert live.plugins["demo"].requests == []


def test_big_body_with_expect_gets_413_without_100_continue(live: Live) -> None:
    """curl sends Expect: 100-continue for big bodies: it gets the 413 straight away."""
    raw = raw_exchange(live.path, b"POST /v1/plugins/demo/volumes HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 2097152\r\nExpect: 100-continue\r\n\r\n")
    assert status_of(raw) == 413
    assert b"100 Continue" not in raw


def test_expect_continue_is_answered_when_the_body_is_wanted(live: Live) -> None:
    """A small body behind Expect: 100-continue: 100 first, then the real answer."""
    body = b'{"name":"v9"}'
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(live.path)
        sock.sendall(b"POST /v1/plugins/demo/volumes HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    assert status_of(raw) == 201


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request_too_large"),
    (b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n", 431,
     "request_too_large"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 900)
                                      for i in range(80)) + b"\r\n", 431, "request_too_large"),
    (b"POST /v1/rescan HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411,
     "invalid_request"),
    (b"POST /v1/rescan HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400, "invalid_request"),
    (b"POST /v1/rescan HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400,
     "invalid_request"),
    (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "invalid_request"),
])
def test_protocol_errors_are_json(live: Live, request_bytes: bytes, status: int,
                                  code: str) -> None:
    """Malformed or oversized heads get a JSON error and a closed connection."""
    raw = raw_exchange(live.path, request_bytes)
    assert status_of(raw) == status
    assert json_of(raw)["error"]["code"] == code
    assert b"\r\nConnection: close\r\n" in raw


def _dropped(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_silent_client_is_dropped_while_others_are_served(sockdir: str,
                                                          commands: MemoryCommands) -> None:
    """A client that sends half a request line is cut off at read_timeout; meanwhile
    other clients are answered."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path, read_timeout=1.0) as server, \
            socket.socket(socket.AF_UNIX) as slow:
        slow.settimeout(30)
        slow.connect(path)
        slow.sendall(b"GET /v1/hea")
        wait_until(lambda: server.connections == 1, message="slow client accepted")
        for _ in range(5):
            assert fetch(path, "GET", "/v1/health").status == 200
        assert _dropped(slow)
        wait_until(lambda: server.connections == 0, message="slow connection closed")


def test_an_idle_keep_alive_timing_out_is_not_reported_as_a_slow_client(
        sockdir: str, commands: MemoryCommands) -> None:
    """After an answer, a quiet keep-alive connection is closed as idle (debug); a request
    that started and stalled is the one logged as too slow."""
    path = os.path.join(sockdir, "c.sock")
    with capture_logs() as logs, serving(build_app(commands), path, read_timeout=0.5) as server:
        idle = UnixHTTPConnection(path)
        try:
            idle.request("GET", "/v1/health")
            idle.getresponse().read()
            wait_until(lambda: server.connections == 0, message="the idle connection closed")
        finally:
            idle.close()
        with socket.socket(socket.AF_UNIX) as slow:
            slow.connect(path)
            slow.sendall(b"GET /v1/hea")
            assert _dropped(slow)
        wait_until(lambda: server.connections == 0, message="the slow connection closed")
    events = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("control_")]
    assert events == [("control_idle_connection_closed", "debug"),
                      ("control_client_too_slow", "info")]


def test_first_head_deadline_is_apart_from_the_keep_alive_timeout(
        sockdir: str, commands: MemoryCommands) -> None:
    """A connection that says nothing is closed at first_request_timeout (logged at
    debug as silent); a keep-alive connection idle for longer than that still serves."""
    path = os.path.join(sockdir, "c.sock")
    with capture_logs() as logs, serving(build_app(commands), path, read_timeout=30.0,
                                         first_request_timeout=0.3) as server:
        kept = UnixHTTPConnection(path)
        try:
            kept.request("GET", "/v1/health")
            kept.getresponse().read()
            with socket.socket(socket.AF_UNIX) as silent:
                silent.connect(path)
                assert _dropped(silent)  # kept has idled at least as long
            kept.request("GET", "/v1/health")
            assert kept.getresponse().status == 200
        finally:
            kept.close()
        wait_until(lambda: server.connections == 0, message="kept to close")
    assert ("control_connection_silent", "debug") in [(e["event"], e["log_level"])
                                                      for e in logs]


def test_dripping_client_is_dropped_at_the_deadline(sockdir: str,
                                                    commands: MemoryCommands) -> None:
    """A byte every 0.2 s never trips a per-read timeout, but the request as a whole
    must arrive within read_timeout: the client is dropped long before it finishes."""
    path = os.path.join(sockdir, "c.sock")
    request = b"GET /v1/health HTTP/1.1\r\nX-Pad: " + b"a" * 500 + b"\r\n\r\n"
    with serving(build_app(commands), path, read_timeout=1.0), \
            socket.socket(socket.AF_UNIX) as drip:
        drip.connect(path)
        sent = 0
        while sent < len(request):
            try:
                drip.sendall(request[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            readable, _, _ = select.select([drip], [], [], 0.2)  # the drip's pace
            if readable and _dropped(drip):
                break
        assert sent < len(request) // 2, "a dripping client was served to the end"


def test_thirty_two_concurrent_clients(live: Live) -> None:
    """32 clients at once, 5 requests each: every one answered 200."""
    barrier = threading.Barrier(32)
    results: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        barrier.wait()
        for _ in range(5):
            status = fetch(live.path, "GET", "/v1/plugins").status
            with lock:
                results.append(status)

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 160


def test_clients_beyond_the_bound_wait_in_the_backlog(sockdir: str,
                                                      commands: MemoryCommands) -> None:
    """With every slot taken by a request at work, a new client waits (it is not
    refused) and is served as soon as one slot frees."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path, max_connections=2, read_timeout=30.0) as server:
        holders = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for h in holders:  # a create whose body never comes: at work, not waiting
                h.connect(path)
                h.sendall(b"POST /v1/plugins/demo/volumes HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 50\r\n\r\n{")
            wait_until(lambda: server.connections == 2 and server.idle == 0,
                       message="both slots at work")
            answer: list[int] = []
            waiter = threading.Thread(
                target=lambda: answer.append(fetch(path, "GET", "/v1/health").status))
            waiter.start()
            assert server.connections == 2
            assert answer == []
            holders[0].close()
            waiter.join(10)
            assert answer == [200]
        finally:
            for h in holders:
                h.close()


def test_idle_keep_alive_gives_its_slot_to_a_waiting_client(sockdir: str,
                                                            commands: MemoryCommands) -> None:
    """An idle keep-alive connection does not starve others when the server is full:
    having waited longest, it is closed to make room for the waiting client."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path, max_connections=2, read_timeout=30.0) as server, \
            socket.socket(socket.AF_UNIX) as holder:
        idle = UnixHTTPConnection(path)
        try:
            idle.request("GET", "/v1/health")
            resp = idle.getresponse()
            resp.read()
            assert resp.getheader("Connection") is None  # kept alive: there was room
            wait_until(lambda: server.idle == 1, message="idle waits for its next head")
            holder.connect(path)
            wait_until(lambda: server.connections == 2, message="server full")
            assert fetch(path, "GET", "/v1/health").status == 200
            assert idle.sock is not None
            assert _dropped(idle.sock)
        finally:
            idle.close()


def test_full_server_does_not_keep_alive(sockdir: str, commands: MemoryCommands) -> None:
    """At the connection bound the answer says Connection: close."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path, max_connections=1):
        ans = fetch(path, "GET", "/v1/health")
    assert ans.headers["Connection"] == "close"


# --- follow streams ------------------------------------------------------------------------


class _Follower:
    """A raw follow-stream client: reads the head, then NDJSON lines."""

    def __init__(self, path: str, since: int = 0):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.sock.sendall(b"GET /v1/events?follow=1&since=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                          % since)
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.head = head

    @property
    def status(self) -> int:
        return status_of(self.head)

    def line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "stream ended"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)  # type: ignore[no-any-return]

    def ended(self) -> bool:
        return _dropped(self.sock)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def followers() -> Iterator[list[_Follower]]:
    made: list[_Follower] = []
    yield made
    for f in made:
        f.close()


def test_follow_stream_delivers_new_events(live: Live, followers: list[_Follower]) -> None:
    """An open stream gets the backlog after since, then events as they happen."""
    live.commands.emit(EventType.RESCAN, reason="startup")
    live.commands.emit(EventType.DISCOVERED, "a")
    f = _Follower(live.path, since=1)
    followers.append(f)
    assert f.status == 200
    assert b"Content-Type: application/x-ndjson" in f.head
    assert b"Connection: close" in f.head  # a stream has no length: it ends the connection
    assert f.line()["plugin"] == "a"
    live.commands.emit(EventType.EVICTED, "a", "removed")
    assert f.line() == {**live.commands.log[-1].to_json()}


def test_follow_stream_limit(sockdir: str, commands: MemoryCommands,
                             followers: list[_Follower]) -> None:
    """Beyond max_follow streams: 429 too_many_streams; a closed stream frees its slot."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path, max_follow=2) as server:
        followers.extend(_Follower(path) for _ in range(2))
        assert [f.status for f in followers] == [200, 200]
        over = fetch(path, "GET", "/v1/events?follow=1")
        assert over.status == 429
        assert over.error == ("too_many_streams",
                              "too many open follow streams; try again later")
        followers[0].close()
        wait_until(lambda: server.connections == 1, message="first stream to end")
        again = _Follower(path)
        followers.append(again)
        assert again.status == 200


def test_follow_stream_ends_when_the_client_goes_away(live: Live) -> None:
    """A follower that hangs up frees its connection even if no event ever comes."""
    f = _Follower(live.path)
    assert f.status == 200
    assert live.server.connections == 1
    f.close()
    wait_until(lambda: live.server.connections == 0, message="stream thread to notice")


def test_stop_is_prompt_with_streams_and_slow_clients(sockdir: str,
                                                      commands: MemoryCommands,
                                                      followers: list[_Follower]) -> None:
    """stop() ends follow streams, idle and half-sent connections; join() sees all end."""
    path = os.path.join(sockdir, "c.sock")
    server = ControlServer(build_app(commands), path=path, mode=0o660, group=None,
                           read_timeout=60.0)
    server.start()
    followers.extend(_Follower(path) for _ in range(2))
    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(path)
        slow.sendall(b"POST /v1/plugins/demo/volumes HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        wait_until(lambda: server.connections == 3, message="three connections")
        server.stop()
        server.stop()  # idempotent
        server.join(5.0)
        assert not server.is_alive()
        assert _dropped(slow)
    assert all(f.ended() for f in followers)
    assert not os.path.exists(path)


def test_start_twice_is_an_error(sockdir: str, commands: MemoryCommands) -> None:
    """A server starts once."""
    with serving(build_app(commands), os.path.join(sockdir, "c.sock")) as server, \
            pytest.raises(RuntimeError, match="control can be started once"):
        server.start()


def test_body_that_never_arrives_is_408(sockdir: str, commands: MemoryCommands) -> None:
    """A create whose body stops short: 408 request_timeout once read_timeout passes."""
    path = os.path.join(sockdir, "c.sock")
    with serving(build_app(commands), path, read_timeout=1.0):
        raw = raw_exchange(path, b"POST /v1/plugins/demo/volumes HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 50\r\n\r\n{\"name\":")
    assert status_of(raw) == 408
    assert json_of(raw) == {"error": {
        "code": "request_timeout",
        "message": "the request did not arrive within the read timeout"}}
    assert commands.clients["demo"].calls == []


def test_a_finished_connection_leaves_no_cycle_for_the_garbage_collector(
        sockdir: str, commands: MemoryCommands) -> None:
    """A connection's objects are freed when it ends, however it was served (on the loop,
    on a thread with a body read behind 100 Continue, refused, kept alive): a cycle per
    connection would leave its socket, buffers and connection for the collector, whose
    full passes stop every thread of the daemon."""
    path = os.path.join(sockdir, "control.sock")
    body = b'{"name":"v1"}'
    exchanges = [
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /v1/plugins/demo/volumes HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body),
        b"NOT HTTP\r\n\r\n",
        b"GET /v1/plugins HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/rescan HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n",
    ]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
    try:
        with serving(build_app(commands), path, read_timeout=5.0):
            answers = [raw_exchange(path, data) for data in exchanges]
        gc.collect()  # the server is joined: every connection it had is unreferenced now
        left = [type(o).__qualname__ for o in gc.garbage if isinstance(o, PER_CONNECTION)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert [status_of(a) for a in answers] == [200, 100, 400, 200]
    assert left == []  # (the server's own objects, once per server, are not counted)


PER_CONNECTION = (Client, Wire, Body, Request, Peer)  # (its socket goes with them)
