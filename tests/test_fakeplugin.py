"""Self-tests of tests/fakeplugin: it records exactly, misbehaves on demand, stops cleanly.

Plain ``socket`` and ``http.client`` only: the project's plugin client is tested with
this fake, so the fake must not be tested with that client.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import UnixHTTPConnection
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
# Exactly what podman 4.3.1 sends (shared/peers/README.md 5.1): one keep-alive connection.
PODMAN_ACTIVATE = (b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\n"
                   b"User-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n"
                   b"Content-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n")
PODMAN_CREATE = (b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: plugin\r\n"
                 b"User-Agent: Go-http-client/1.1\r\nContent-Length: 15\r\n"
                 b"Content-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n"
                 b'{"Name":"vol1"}')


def post(path: str, endpoint: str, body: Any = None) -> tuple[int, str, bytes]:
    """One POST on a fresh connection: (status, Content-Type, body)."""
    conn = UnixHTTPConnection(path, timeout=30, host="plugin")
    try:
        data = b"" if body is None else json.dumps(body).encode()
        conn.request("POST", endpoint, body=data)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A short socket path (pytest's tmp_path can exceed the 108-byte sun_path limit)."""
    folder = tempfile.mkdtemp(dir="/tmp", prefix="vpfake")
    yield os.path.join(folder, "fake.sock")
    shutil.rmtree(folder)


@pytest.fixture
def fake(sock_path: str) -> Iterator[FakePlugin]:
    with FakePlugin(sock_path) as fp:
        yield fp


def test_records_the_exact_bytes_of_each_request_on_a_keepalive_connection(
        fake: FakePlugin) -> None:
    """Two requests on one connection are recorded separately, byte for byte."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(fake.socket_path)
        s.sendall(PODMAN_ACTIVATE + PODMAN_CREATE)
        first, second = fake.wait_requests(2)
    assert (first.raw, second.raw) == (PODMAN_ACTIVATE, PODMAN_CREATE)
    assert (second.method, second.path, second.body) == ("POST", "/VolumeDriver.Create",
                                                         b'{"Name":"vol1"}')
    assert second.headers["content-type"] == "application/vnd.docker.plugins.v1.1+json"
    assert fake.volumes["vol1"]["Opts"] == {}


def test_normal_answers_are_an_in_memory_volume_driver(sock_path: str) -> None:
    """Activate, Capabilities, Create..Remove answer with Docker's shapes and Content-Type."""
    with FakePlugin(sock_path, scope="global", content_type="text/html; charset=UTF-8",
                    mount_root="/mnt") as fp:
        def call(endpoint: str, body: Any = None) -> tuple[int, Any]:
            status, ctype, data = post(fp.socket_path, endpoint, body)
            assert ctype == "text/html; charset=UTF-8"
            return status, json.loads(data)
        assert call("/Plugin.Activate") == (200, {"Implements": ["VolumeDriver"]})
        assert call("/VolumeDriver.Capabilities") == (200, {"Capabilities": {"Scope": "global"}})
        assert call("/VolumeDriver.Create", {"Name": "v", "Opts": {"size": "1M"}}) == (
            200, {"Err": ""})
        assert call("/VolumeDriver.Create", {"Name": "v"}) == (200, {"Err": ""})
        created = fp.volumes["v"]["CreatedAt"]
        assert fp.volumes["v"] == {"Mountpoint": "/mnt/v", "CreatedAt": created,
                                   "Opts": {"size": "1M"}}
        assert call("/VolumeDriver.Get", {"Name": "v"}) == (200, {"Volume": {
            "Name": "v", "Mountpoint": "/mnt/v", "CreatedAt": created, "Status": {}}, "Err": ""})
        assert call("/VolumeDriver.List") == (200, {"Volumes": [
            {"Name": "v", "Mountpoint": "/mnt/v", "CreatedAt": created}], "Err": ""})
        for endpoint in ("/VolumeDriver.Path", "/VolumeDriver.Mount"):
            assert call(endpoint, {"Name": "v", "ID": "c1"}) == (
                200, {"Mountpoint": "/mnt/v", "Err": ""})
        assert call("/VolumeDriver.Unmount", {"Name": "v", "ID": "c1"}) == (200, {"Err": ""})
        assert call("/VolumeDriver.Remove", {"Name": "v"}) == (200, {"Err": ""})
        assert call("/VolumeDriver.Get", {"Name": "v"}) == (500, {"Err": "v: no such volume"})
        assert call("/VolumeDriver.Create", {}) == (
            400, {"Err": "request body needs a string Name"})
        assert post(fp.socket_path, "/VolumeDriver.Bogus") == (
            404, "text/plain; charset=utf-8", b"404 page not found\n")


def test_a_behaviour_applies_to_its_endpoint_until_reset(fake: FakePlugin) -> None:
    """set() changes one endpoint ("*" all others); reset() restores the driver."""
    fake.set("/VolumeDriver.Create", b.ErrOn200("boom"))
    fake.set("*", b.StatusErr(400, "everything fails"))
    assert post(fake.socket_path, "/VolumeDriver.Create", {"Name": "v"})[::2] == (
        200, b'{"Err": "boom"}')
    assert post(fake.socket_path, "/VolumeDriver.List")[::2] == (
        400, b'{"Err": "everything fails"}')
    fake.reset("*")
    fake.reset("/VolumeDriver.Create")
    assert post(fake.socket_path, "/VolumeDriver.Create", {"Name": "v"})[::2] == (
        200, b'{"Err": ""}')
    assert list(fake.volumes) == ["v"]


@pytest.mark.parametrize(("behaviour", "status", "ctype", "body"), [
    (b.Garbage(b"not json"), 200, "application/vnd.docker.plugins.v1+json", b"not json"),
    (b.Implements(["NetworkDriver"]), 200, "application/vnd.docker.plugins.v1+json",
     b'{"Implements": ["NetworkDriver"]}'),
    (b.Json({"Implements": []}, 202), 202, "application/vnd.docker.plugins.v1+json",
     b'{"Implements": []}'),
    (b.Status(503, b"down", "text/plain"), 503, "text/plain", b"down"),
    (b.Slow(0.01), 200, "application/vnd.docker.plugins.v1+json",
     b'{"Implements": ["VolumeDriver"]}'),
    (b.Drip(10_000, 30), 200, "application/vnd.docker.plugins.v1+json",
     b'{"Err": "", "Pad": "xxxxxxxx"}'),
])
def test_canned_behaviours_answer_exactly(fake: FakePlugin, behaviour: b.Behaviour,
                                          status: int, ctype: str, body: bytes) -> None:
    """Each canned behaviour sends its documented status, Content-Type and body."""
    fake.set("/Plugin.Activate", behaviour)
    assert post(fake.socket_path, "/Plugin.Activate") == (status, ctype, body)


def test_html_error_is_a_bottle_style_page(fake: FakePlugin) -> None:
    """HtmlError answers an HTML page with text/html, as buttervolume's bottle does."""
    fake.set("*", b.HtmlError(500))
    status, ctype, body = post(fake.socket_path, "/VolumeDriver.Create", {"Name": "v"})
    assert (status, ctype) == (500, "text/html; charset=UTF-8")
    assert b"<title>Error: 500 Internal Server Error</title>" in body


def test_huge_body_is_valid_json_of_the_requested_size(fake: FakePlugin) -> None:
    """HugeBody streams exactly size_bytes of parseable JSON."""
    fake.set("/VolumeDriver.List", b.HugeBody(3 * 1024 * 1024 + 7))
    status, _, body = post(fake.socket_path, "/VolumeDriver.List")
    assert (status, len(body)) == (200, 3 * 1024 * 1024 + 7)
    assert json.loads(body)["Err"] == ""


def test_close_mid_answer_breaks_the_body(fake: FakePlugin) -> None:
    """CloseMidAnswer announces the full Content-Length and sends only half of it."""
    fake.set("/Plugin.Activate", b.CloseMidAnswer())
    with pytest.raises(http.client.IncompleteRead) as caught:
        post(fake.socket_path, "/Plugin.Activate")
    assert (caught.value.partial, caught.value.expected) == (b'{"Implements": [', 16)


def test_disconnect_closes_without_an_answer(fake: FakePlugin) -> None:
    """Disconnect gives the client an EOF instead of a status line."""
    fake.set("/Plugin.Activate", b.Disconnect())
    with pytest.raises(http.client.RemoteDisconnected):
        post(fake.socket_path, "/Plugin.Activate")


def test_http10_answers_as_1_0_and_closes(sock_path: str) -> None:
    """http10=True answers "HTTP/1.0" and closes the connection after the response."""
    with FakePlugin(sock_path, http10=True) as fp, socket.socket(socket.AF_UNIX) as s:
        s.connect(fp.socket_path)
        s.sendall(PODMAN_ACTIVATE)
        answer = recv_all(s)  # returns only because the server closed
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert answer.endswith(b'\r\n\r\n{"Implements": ["VolumeDriver"]}')


@pytest.mark.parametrize("behaviour", [b.Hang(), b.Slow(3600), b.Drip(1, 10_000)])
def test_stop_ends_a_request_in_flight_and_joins_its_thread(
        fake: FakePlugin, behaviour: b.Behaviour) -> None:
    """stop() with a hung, slow or dripping answer in flight returns and drops the client."""
    fake.set("/Plugin.Activate", behaviour)
    got: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(fake.socket_path)
        s.sendall(PODMAN_ACTIVATE)
        reader = threading.Thread(target=lambda: got.append(recv_all(s)))
        reader.start()
        fake.wait_requests(1)
        fake.stop()
        reader.join()
    assert not os.path.exists(fake.socket_path)
    assert got[0] == b"" or got[0].startswith(b"HTTP/1.1 200 OK\r\n")  # Drip sent headers


def test_stop_closes_idle_keepalive_connections(fake: FakePlugin) -> None:
    """A client holding an idle keep-alive connection (its answer read, the connection
    kept open) does not keep stop() waiting: stop() returns and the client reads the end.
    (The answer is read first: a request merely recorded may still be unanswered.)"""
    conn = UnixHTTPConnection(fake.socket_path, host="plugin")
    try:
        conn.request("POST", "/Plugin.Activate", body=b"")
        resp = conn.getresponse()
        assert (resp.status, resp.will_close) == (200, False)
        assert json.loads(resp.read()) == {"Implements": ["VolumeDriver"]}
        fake.stop()
        assert conn.sock is not None
        assert recv_all(conn.sock) == b""
    finally:
        conn.close()


def test_stale_socket_refuses_then_a_new_plugin_replaces_it(sock_path: str) -> None:
    """stop(unlink=False) leaves a socket file that refuses; a new FakePlugin rebinds it."""
    FakePlugin(sock_path).stop(unlink=False)
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(ConnectionRefusedError):
        s.connect(sock_path)
    with FakePlugin(sock_path) as fp:
        assert post(fp.socket_path, "/Plugin.Activate")[0] == 200


@pytest.mark.parametrize(("spec", "expected"), [
    ("hang", "Hang()"),
    ("slow:2.5", "Slow(seconds=2.5)"),
    ("drip:10:1000", "Drip(bytes_per_second=10.0, total_bytes=1000)"),
    ("err200:a: b", "ErrOn200(err='a: b')"),
    ("status-err:500:boom", "StatusErr(status=500, err='boom')"),
    ("implements:NetworkDriver,IpamDriver", "Implements(implements=['NetworkDriver', "
                                            "'IpamDriver'])"),
    ("json:{\"Err\": \"x\"}", "Json(obj={'Err': 'x'}, status=200)"),
])
def test_parse_builds_behaviours_from_script_specs(spec: str, expected: str) -> None:
    """Script-mode specs become the matching behaviour."""
    assert repr(b.parse(spec)) == expected


def test_parse_rejects_unknown_and_malformed_specs() -> None:
    """A bad spec names the problem."""
    with pytest.raises(ValueError, match=r"^unknown behaviour 'nap' \(known: close-mid, "):
        b.parse("nap")
    with pytest.raises(ValueError, match=r"^bad behaviour 'slow:soon': could not convert"):
        b.parse("slow:soon")


def test_script_mode_serves_until_sigterm(sock_path: str) -> None:
    """`python -m tests.fakeplugin` prints a line when listening, serves, exits 0 on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakeplugin", sock_path,
         "--implements", "VolumeDriver", "--behave", "/VolumeDriver.Create=err200:boom"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == (
            f"fakeplugin listening on {sock_path} implements=VolumeDriver\n")
        assert post(sock_path, "/Plugin.Activate")[::2] == (
            200, b'{"Implements": ["VolumeDriver"]}')
        assert post(sock_path, "/VolumeDriver.Create", {"Name": "v"})[::2] == (
            200, b'{"Err": "boom"}')
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert (proc.returncode, out) == (0, "fakeplugin stopped by SIGTERM\n")
    assert not os.path.exists(sock_path)


def test_behaviours_given_at_construction_answer_a_client_that_connects_at_once(
        sock_path: str) -> None:
    """A client that connects the moment the socket file exists (as volplugd does) gets
    the behaviour given to the constructor, never a normal answer first."""
    answers: list[tuple[int, str, bytes]] = []

    def first_answer() -> tuple[int, str, bytes] | None:
        try:
            return post(sock_path, "/Plugin.Activate")
        except (FileNotFoundError, ConnectionRefusedError):  # not bound, or not listening
            return None

    def connect_at_once() -> None:
        answers.append(wait_until(first_answer, 10, interval=0.0001,
                                  message="a first answer"))

    racer = threading.Thread(target=connect_at_once)
    racer.start()
    with FakePlugin(sock_path, behaviours={"*": b.Implements(["NetworkDriver"])}):
        racer.join(30)
    assert answers[0][::2] == (200, b'{"Implements": ["NetworkDriver"]}')


def test_stopping_a_replaced_plugin_leaves_the_new_socket(sock_path: str) -> None:
    """A plugin replaced at the same path does not unlink its successor's socket on stop()."""
    old = FakePlugin(sock_path)
    try:
        with FakePlugin(sock_path, implements=("NetworkDriver",)) as new:
            old.stop()
            assert post(new.socket_path, "/Plugin.Activate")[::2] == (
                200, b'{"Implements": ["NetworkDriver"]}')
    finally:
        old.stop()
    assert not os.path.exists(sock_path)
