"""The gateway in-process: a real Supervisor over real fake plugins, real gateway sockets,
requests written as Podman writes them (tests/fakeplugin records what reaches a plugin)."""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from structlog.testing import capture_logs

from tests.control.otheruser import CAN_SWITCH_USER, NOBODY, Peer
from tests.fakeplugin import DEFAULT_CONTENT_TYPE, FakePlugin
from tests.fakeplugin import behaviours as b
from tests.waiting import wait_until
from volplugd.config import (
    DiscoverySettings,
    GatewaySettings,
    PluginSettings,
    ProbeSettings,
    RestartSettings,
    Settings,
)
from volplugd.discovery.scan import GATEWAY_MARK
from volplugd.gateway import Gateway
from volplugd.gateway.answer import MAX_BODY
from volplugd.model import PluginState, PluginView
from volplugd.registry import Registry
from volplugd.supervision.identity import ProcessInfo
from volplugd.supervision.restart import Restarter, Target
from volplugd.supervisor import Supervisor

# Probes on List, so an Activate reaching a plugin after its activation came from elsewhere.
PROBE = ProbeSettings(interval=0.3, timeout=0.3, failure_threshold=2,
                      endpoint="/VolumeDriver.List")
QUIET = ProbeSettings(interval=3600.0, timeout=0.3, failure_threshold=3,
                      endpoint="/VolumeDriver.List")
TIMEOUTS = {"activate": 0.5, "create": 0.5, "default": 30.0}
PODMAN_HEAD = ("POST {} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n"
               "Content-Length: {}\r\nContent-Type: application/vnd.docker.plugins.v1.1+json"
               "\r\n\r\n")


class Client:
    """One keep-alive connection to a gateway socket, speaking as Podman does."""

    opened: list[Client] = []

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self._file: BinaryIO | None = None
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        Client.opened.append(self)

    def post(self, endpoint: str, body: bytes = b"") -> tuple[int, str | None, bytes]:
        self.sock.sendall(PODMAN_HEAD.format(endpoint, len(body)).encode() + body)
        return self.read()

    def read(self) -> tuple[int, str | None, bytes]:
        """The next answer, from one buffered reader kept for the connection's life (a
        reader per answer could swallow the bytes of the answer behind it)."""
        if self._file is None:
            self._file = self.sock.makefile("rb")
        line = self._file.readline()
        if not line:
            raise ConnectionResetError("the gateway closed the connection without an answer")
        version, status, _ = line.decode("latin-1").split(" ", 2)
        assert version == "HTTP/1.1"
        headers = http.client.parse_headers(self._file)
        length = int(headers.get("Content-Length") or 0)
        return int(status), headers.get("Content-Type"), self._file.read(length)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self.sock.close()


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, plugin: str, endpoint: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append((plugin, endpoint, outcome))


class World:
    """Plugins folder, gateway folder, supervisor, gateway."""

    def __init__(self, root: Path) -> None:
        self.plugins = root / "plugins"
        self.plugins.mkdir()
        self.gw_dir = root / "gw"
        self.recorder = Recorder()
        self.refused: list[str] = []
        self.fakes: list[FakePlugin] = []
        self.sup: Supervisor | None = None
        self.gateway: Gateway | None = None

    def start(self, *, probe: ProbeSettings = PROBE, max_in_flight: int = 4,
              dirs: tuple[str, ...] | None = None, group: str | None = None,
              max_connections: int = 512, max_per_uid: int = 64, reserved: int = 64,
              mode: int = 0o600, read_timeout: float = 10.0,
              restart: RestartSettings | None = None,
              restarter: Restarter | None = None) -> tuple[Supervisor, Gateway]:
        settings = Settings(
            discovery=DiscoverySettings(dirs=dirs or (str(self.plugins),)), probe=probe,
            plugin=PluginSettings(timeouts=TIMEOUTS, max_in_flight=max_in_flight),
            gateway=GatewaySettings(enabled=True, dir=str(self.gw_dir), mode=mode,
                                    group=group),
            restart=restart or RestartSettings())
        registry = Registry()
        self.sup = Supervisor(settings, registry, workers=2,
                              **({} if restarter is None else {"restarter": restarter}))
        self.gateway = Gateway(settings.gateway, self.sup, registry.wait,
                               on_request=self.recorder, tick=0.05,
                               max_connections=max_connections, max_per_uid=max_per_uid,
                               reserved=reserved, on_refused=self.refused.append,
                               read_timeout=read_timeout)
        self.gateway.start()
        self.sup.start()
        return self.sup, self.gateway

    def plugin(self, name: str, **kwargs: object) -> FakePlugin:
        fake = FakePlugin(str(self.plugins / f"{name}.sock"), **kwargs)  # type: ignore[arg-type]
        self.fakes.append(fake)
        return fake

    def sock(self, name: str) -> str:
        return str(self.gw_dir / f"{name}.sock")

    def view(self, name: str) -> PluginView:
        assert self.sup is not None
        return self.sup.snapshot().plugins[name]

    def wait_state(self, name: str, state: PluginState) -> PluginView:
        """``name`` in ``state``; unless rejected, also its gateway socket listening (made
        by the gateway's thread after the snapshot that shows the plugin), when its path
        fits."""
        assert self.sup is not None
        sup = self.sup
        view = wait_until(lambda: (v := sup.snapshot().plugins.get(name)) is not None
                          and v.state is state and v, message=f"{name} {state}")
        gateway = self.gateway
        if (gateway is not None and state is not PluginState.REJECTED
                and len(os.fsencode(self.sock(name))) < 108):
            wait_until(lambda: name in gateway.names, message=f"{name}'s gateway socket")
        return view

    def stop(self) -> None:
        for client in Client.opened:
            client.close()
        Client.opened.clear()
        for fake in self.fakes:
            fake.stop()
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway.join(5)
        if self.sup is not None:
            self.sup.stop()
            self.sup.join(5)


@pytest.fixture
def world(short_tmp: Path) -> Iterator[World]:
    umask = os.umask(0o077)  # the shipped unit's UMask
    w = World(short_tmp)
    try:
        yield w
    finally:
        w.stop()
        os.umask(umask)


def _requests_to(fake: FakePlugin, endpoint: str) -> list[bytes]:
    return [r.body for r in fake.requests if r.path == endpoint]


def test_ready_plugin_gets_the_same_bytes_and_its_answer_comes_back_unchanged(
        world: World) -> None:
    fake = world.plugin("p")
    world.start()
    world.wait_state("p", PluginState.READY)
    client = Client(wait_until(lambda: os.path.exists(world.sock("p")) and world.sock("p")))
    body = b'{"Name":"v1","Opts":{"size":"10M"}}'
    assert client.post("/VolumeDriver.Create", body) == (200, DEFAULT_CONTENT_TYPE,
                                                         b'{"Err": ""}')
    assert _requests_to(fake, "/VolumeDriver.Create") == [body]
    # The same connection (keep-alive): the plugin's own error answer passes unchanged.
    fake.set("/VolumeDriver.Get", b.StatusErr(500, "no such volume"))
    status, ctype, answer = client.post("/VolumeDriver.Get", b'{"Name":"nope"}')
    assert (status, ctype, answer) == (500, DEFAULT_CONTENT_TYPE,
                                       b'{"Err": "no such volume"}')
    fake.set("/VolumeDriver.List", b.HtmlError(404))
    status, ctype, answer = client.post("/VolumeDriver.List")
    assert (status, ctype) == (404, "text/html; charset=UTF-8")
    assert answer.startswith(b"\n    <!DOCTYPE HTML")
    client.close()
    assert ("p", "create", "answered") in world.recorder.seen
    assert ("p", "get", "answered") in world.recorder.seen


def test_not_ready_plugin_is_answered_at_once_and_never_touched(world: World) -> None:
    fake = world.plugin("p")
    world.start()
    world.wait_state("p", PluginState.READY)
    fake.set("/VolumeDriver.List", b.Hang())  # the probes now time out
    view = world.wait_state("p", PluginState.UNHEALTHY)
    fake.clear_requests()
    client = Client(world.sock("p"))
    status, ctype, answer = client.post("/VolumeDriver.Create", b'{"Name":"v1"}')
    view = world.view("p")
    assert view.last_error == ("sending request to volume plugin p endpoint "
                               "/VolumeDriver.List: timed out: no complete answer "
                               "within 0.3 s")
    assert (status, ctype) == (500, "application/vnd.docker.plugins.v1+json")
    assert answer == (b'{"Err":"volplugd: plugin p is unhealthy: sending request to volume '
                      b'plugin p endpoint /VolumeDriver.List: timed out: no complete answer '
                      b'within 0.3 s"}')
    assert _requests_to(fake, "/VolumeDriver.Create") == []
    # Activate is answered from the manifest of the last activation, not sent.
    assert client.post("/Plugin.Activate") == (
        200, "application/vnd.docker.plugins.v1+json", b'{"Implements":["VolumeDriver"]}')
    assert _requests_to(fake, "/Plugin.Activate") == []
    assert ("p", "create", "not_ready") in world.recorder.seen
    assert ("p", "activate", "manifest") in world.recorder.seen


def test_activate_of_a_ready_plugin_comes_from_its_manifest(world: World) -> None:
    fake = world.plugin("p", implements=("VolumeDriver", "Authz"))
    world.start()
    world.wait_state("p", PluginState.READY)
    activations = len(_requests_to(fake, "/Plugin.Activate"))
    client = Client(world.sock("p"))
    assert client.post("/Plugin.Activate")[2] == b'{"Implements":["VolumeDriver","Authz"]}'
    assert len(_requests_to(fake, "/Plugin.Activate")) == activations


def test_a_plugin_never_activated_gets_500_on_activate(world: World) -> None:
    fake = world.plugin("p")
    fake.set("/Plugin.Activate", b.StatusErr(500, "warming up"))
    world.start()
    view = wait_until(lambda: (world.sup is not None and (v := world.sup.snapshot().plugins
                               .get("p")) is not None and v.last_error and v),
                      message="a failed activation")
    assert view.state is PluginState.ACTIVATING
    client = wait_until(lambda: os.path.exists(world.sock("p")) and Client(world.sock("p")))
    status, _, answer = client.post("/Plugin.Activate")
    assert status == 500
    assert answer == (b'{"Err":"volplugd: plugin p is activating: got status code 500 from '
                      b'activation endpoint for plugin p: target does not appear to be a '
                      b'valid plugin"}')
    status, _, answer = client.post("/VolumeDriver.Get", b'{"Name":"v"}')
    assert status == 500
    assert answer.startswith(b'{"Err":"volplugd: plugin p is activating: got status code')


def test_a_timeout_becomes_500_and_counts_toward_health(world: World) -> None:
    fake = world.plugin("p")
    world.start(probe=QUIET)
    world.wait_state("p", PluginState.READY)
    fake.set("/VolumeDriver.Create", b.Hang())
    client = Client(world.sock("p"))
    status, _, answer = client.post("/VolumeDriver.Create", b'{"Name":"v1"}')
    assert status == 500
    assert answer == (b'{"Err":"volplugd: sending request to volume plugin p endpoint '
                      b'/VolumeDriver.Create: timed out: no complete answer within 0.5 s"}')
    view = wait_until(lambda: world.view("p").consecutive_failures == 1 and world.view("p"),
                      message="the failure counted")
    assert view.last_error == ("sending request to volume plugin p endpoint "
                               "/VolumeDriver.Create: timed out: no complete answer within "
                               "0.5 s")
    assert ("p", "create", "timeout") in world.recorder.seen
    # The gateway keeps serving on the same connection.
    fake.reset("/VolumeDriver.Create")
    assert client.post("/VolumeDriver.Create", b'{"Name":"v2"}')[0] == 200


def test_the_per_plugin_bound_applies(world: World) -> None:
    fake = world.plugin("p")
    world.start(probe=QUIET, max_in_flight=1)
    world.wait_state("p", PluginState.READY)
    fake.set("/VolumeDriver.Mount", b.Hang())  # "default" deadline: 30 s
    first = Client(world.sock("p"))
    first.sock.sendall(PODMAN_HEAD.format("/VolumeDriver.Mount", 13).encode() +
                       b'{"Name":"v1"}')
    fake.wait_requests(1 + len(fake.requests))
    wait_until(lambda: _requests_to(fake, "/VolumeDriver.Mount"), message="mount in flight")
    status, _, answer = Client(world.sock("p")).post("/VolumeDriver.Get", b'{"Name":"v1"}')
    assert status == 500
    assert answer == (b'{"Err":"volplugd: plugin p is busy (1 operation in flight); try '
                      b'again in 1 s"}')
    assert _requests_to(fake, "/VolumeDriver.Get") == []
    assert ("p", "get", "busy") in world.recorder.seen
    fake.stop()  # the hung Mount ends: the plugin dropped the connection
    status, _, answer = first.read()
    assert status == 500
    assert answer.startswith(b'{"Err":"volplugd: ')


def test_sockets_follow_the_registry(world: World) -> None:
    keep = world.plugin("keep")
    world.plugin("other", implements=("NetworkDriver",))  # rejected: no socket
    world.start()
    world.wait_state("keep", PluginState.READY)
    world.wait_state("other", PluginState.REJECTED)
    assert world.gateway is not None
    gateway = world.gateway
    wait_until(lambda: gateway.names == ["keep"], message="one socket")
    mode = os.stat(world.sock("keep")).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(world.gw_dir).st_mode) == 0o755  # whatever the umask
    assert not os.path.exists(world.sock("other"))
    late = world.plugin("late")
    wait_until(lambda: os.path.exists(world.sock("late")), message="late's socket")
    late.stop()  # its socket file goes: evicted
    wait_until(lambda: not os.path.exists(world.sock("late")), message="late's socket gone")
    assert sorted(os.listdir(world.gw_dir)) == [GATEWAY_MARK, "keep.sock"]
    gateway.stop()
    gateway.join(5)
    assert sorted(os.listdir(world.gw_dir)) == []
    with pytest.raises(FileNotFoundError):
        Client(world.sock("keep"))
    assert keep.requests  # it was served all along


def test_a_name_that_cannot_be_a_socket_file_is_skipped_with_one_warning(
        world: World) -> None:
    long = "x" * 70  # fits the plugins folder's path, not the gateway's
    world.plugins = world.plugins  # (the short_tmp root keeps plugin paths short)
    world.gw_dir = world.gw_dir.parent / ("g" * 40)
    world.plugin("ok")
    with capture_logs() as logs:
        world.plugin(long)
        world.start()
        world.wait_state(long, PluginState.READY)
        wait_until(lambda: os.path.exists(world.sock("ok")), message="ok's socket")
        assert world.sup is not None
        world.sup.rescan(5)
        world.sup.rescan(5)
    skipped = [e for e in logs if e["event"] == "gateway_plugin_skipped"]
    assert skipped == [{"event": "gateway_plugin_skipped", "log_level": "warning",
                        "logger_name": "volplugd.gateway.server",
                        "plugin": long, "reason": "the socket path would be longer than "
                        "107 bytes"}]
    assert world.gateway is not None
    assert world.gateway.names == ["ok"]


@pytest.mark.parametrize("first", [True, False])
def test_discovery_never_takes_gateway_sockets_for_plugins(world: World, first: bool) -> None:
    world.gw_dir = world.plugins / "p"  # nested like Docker's NAME/NAME.sock, too
    world.plugin("p")
    dirs = (str(world.gw_dir), str(world.plugins)) if first else (str(world.plugins),)
    sup, _ = world.start(dirs=dirs)
    world.wait_state("p", PluginState.READY)
    wait_until(lambda: os.path.exists(world.sock("p")), message="gateway socket")
    sup.rescan(5)
    view = world.view("p")
    assert view.source == str(world.plugins / "p.sock")
    assert view.warnings == ()
    assert list(sup.snapshot().plugins) == ["p"]


def test_malformed_and_foreign_requests_get_an_exact_error(world: World) -> None:
    world.plugin("p")
    world.start()
    world.wait_state("p", PluginState.READY)
    client = Client(world.sock("p"))
    client.sock.sendall(b"GET /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\n\r\n")
    assert client.read() == (405, "application/vnd.docker.plugins.v1+json",
                             b'{"Err":"volplugd: GET is not allowed here: the plugin '
                             b'protocol is POST only"}')
    assert client.post("/Other.Thing")[2] == (
        b'{"Err":"volplugd: \\"/Other.Thing\\" is not a volume plugin endpoint"}')
    client.sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    status, _, answer = client.read()
    assert status == 400
    assert answer.startswith(b'{"Err":"volplugd: malformed request: ')
    assert client.sock.recv(1) == b""  # closed after a request it could not parse
    # and the gateway keeps serving
    assert Client(world.sock("p")).post("/VolumeDriver.List")[0] == 200


def test_concurrent_keep_alive_connections(world: World) -> None:
    world.plugin("p")
    world.start()
    world.wait_state("p", PluginState.READY)
    results: list[tuple[int, bytes]] = []

    def call() -> None:
        client = Client(world.sock("p"))
        for _ in range(5):
            status, _, answer = client.post("/VolumeDriver.List")
            results.append((status, answer if status != 200 else b""))
        client.close()

    threads = [threading.Thread(target=call) for _ in range(4)]  # plugin.max_in_flight
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [(200, b"")] * 20


def test_sockets_get_the_configured_group(world: World) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a socket to another group")
    group = grp.getgrnam("nogroup")
    world.plugin("p")
    world.start(group="nogroup")
    world.wait_state("p", PluginState.READY)
    wait_until(lambda: os.path.exists(world.sock("p")), message="gateway socket")
    assert os.stat(world.sock("p")).st_gid == group.gr_gid


def test_an_unknown_group_is_an_error_at_start(short_tmp: Path) -> None:
    settings = GatewaySettings(enabled=True, dir=str(short_tmp / "gw"), group="no-such-group")
    with pytest.raises(ValueError, match=r"^gateway\.group: no group named 'no-such-group'$"):
        Gateway(settings, None, Registry().wait)  # type: ignore[arg-type]


def test_deadlines_and_size_per_connection(world: World) -> None:
    fake = world.plugin("p")
    world.start(read_timeout=0.3)
    world.wait_state("p", PluginState.READY)
    slow = Client(world.sock("p"))
    slow.sock.sendall(b"POST /VolumeDriver.Create HTTP/1.1\r\nContent-Length: 20\r\n\r\n{")
    assert slow.read() == (408, "application/vnd.docker.plugins.v1+json",
                           b'{"Err":"volplugd: the request did not arrive within 0.3 s"}')
    big = Client(world.sock("p"))
    size = MAX_BODY + 1
    big.sock.sendall(f"POST /VolumeDriver.Create HTTP/1.1\r\nContent-Length: {size}\r\n"
                     "\r\n".encode() + b"x" * size)
    assert big.read() == (413, "application/vnd.docker.plugins.v1+json",
                          b'{"Err":"volplugd: request body larger than 1048576 bytes"}')
    assert _requests_to(fake, "/VolumeDriver.Create") == []
    assert Client(world.sock("p")).post("/VolumeDriver.List")[0] == 200


def test_at_the_bound_the_longest_idle_connection_gives_its_slot(world: World) -> None:
    """One slot: a connection that has sent nothing yet is closed to let a newcomer in,
    which is served; the gateway goes on serving (root is never refused at the total
    bound: it waits in the backlog or displaces an idle connection)."""
    world.plugin("p")
    world.start(max_connections=1, reserved=0)
    world.wait_state("p", PluginState.READY)
    first = Client(world.sock("p"))
    wait_until(lambda: world.gateway is not None and world.gateway.idle == 1,
               message="the first connection idle")
    second = Client(world.sock("p"))
    assert second.post("/VolumeDriver.List")[0] == 200
    assert first.sock.recv(1) == b""  # closed to make room
    second.close()
    assert wait_until(lambda: _answers(world.sock("p")), message="a slot again") == 200


def _sent_in_a_thread(path: str, data: bytes) -> tuple[Client, threading.Thread]:
    """A client sending ``data`` on its own thread (the gateway may answer and close
    before all of it is in: the send then fails, the answer is there to read)."""
    client = Client(path)

    def send() -> None:
        with contextlib.suppress(OSError):
            client.sock.sendall(data)

    thread = threading.Thread(target=send)
    thread.start()
    return client, thread


def test_a_16_mib_request_line_gets_414_and_the_gateway_keeps_serving(world: World) -> None:
    """A 16 MiB path: 414 with an Err as soon as 8 KiB of it are in, the connection
    closed, nothing sent to the plugin; the next client is served."""
    fake = world.plugin("p")
    world.start()
    world.wait_state("p", PluginState.READY)
    line = b"POST /VolumeDriver." + b"a" * (16 * 1024 * 1024) + b" HTTP/1.1\r\n\r\n"
    client, sender = _sent_in_a_thread(world.sock("p"), line)
    assert client.read() == (414, "application/vnd.docker.plugins.v1+json",
                             b'{"Err":"volplugd: request line longer than 8192 bytes"}')
    client.close()
    sender.join(30)
    assert [r.path for r in fake.requests if r.path.startswith("/VolumeDriver.a")] == []
    assert Client(world.sock("p")).post("/VolumeDriver.List")[0] == 200


def test_a_head_over_64_kib_gets_431_and_one_within_it_is_served(world: World) -> None:
    """Headers of 70 KiB: 431 with an Err; 50 KiB of headers (within the bound) and a
    request line of 8 KiB less a little are served as any other request."""
    world.plugin("p")
    world.start()
    world.wait_state("p", PluginState.READY)
    big = (PODMAN_HEAD.format("/VolumeDriver.List", 0)[:-2] + "X-Pad: " + "a" * 70_000 +
           "\r\n\r\n").encode()
    client, sender = _sent_in_a_thread(world.sock("p"), big)
    assert client.read() == (431, "application/vnd.docker.plugins.v1+json",
                             b'{"Err":"volplugd: request head larger than 65536 bytes"}')
    sender.join(30)
    fits = (PODMAN_HEAD.format("/VolumeDriver.List?" + "q" * 8000, 0)[:-2] + "X-Pad: " +
            "a" * 50_000 + "\r\n\r\n").encode()
    ok = Client(world.sock("p"))
    ok.sock.sendall(fits)
    assert ok.read()[0] == 200


@pytest.mark.skipif(not CAN_SWITCH_USER, reason="needs root and setpriv to act as another user")
def test_another_user_cannot_keep_root_out_of_the_gateway(
        world: World, short_tmp: Path, peer_script: Path, peers: list[Peer]) -> None:
    """uid 65534 holds the 3 connections one user may (of 8, 2 kept for root); its next
    one gets an exact 503 Err at once, logged and counted; root is served meanwhile."""
    short_tmp.chmod(0o755)
    world.plugin("p")
    world.start(max_connections=8, max_per_uid=3, reserved=2, mode=0o666)
    world.wait_state("p", PluginState.READY)
    gateway = world.gateway
    assert gateway is not None
    hog = Peer(peer_script, NOBODY, world.sock("p"), "hold", "3")
    peers.append(hog)
    assert hog.line() == "connected"
    wait_until(lambda: gateway.connections == 3, message="the hog's connections admitted")
    with capture_logs() as logs:
        extra = Peer(peer_script, NOBODY, world.sock("p"), "get")
        peers.append(extra)
        assert extra.report() == [{"status": 503, "err": (
            "volplugd: this user has as many gateway connections open as one user may; "
            "close one and try again")}]
    assert [(e["event"], e["uid"], e["reason"]) for e in logs] == [
        ("gateway_connection_refused", NOBODY, "uid_limit")]
    assert world.refused == ["uid_limit"]
    assert Client(world.sock("p")).post("/VolumeDriver.List")[0] == 200  # root, meanwhile
    hog.tell()
    assert hog.report() == ["open"] * 3


def _answers(path: str) -> int | None:
    client = Client(path)
    try:
        return client.post("/VolumeDriver.List")[0]
    except (OSError, http.client.HTTPException):
        return None
    finally:
        client.close()


def test_pipelined_requests_are_answered_in_order(world: World) -> None:
    fake = world.plugin("p")
    world.start()
    world.wait_state("p", PluginState.READY)
    client = Client(world.sock("p"))
    one = two = b'{"Name":"a"}'
    client.sock.sendall(PODMAN_HEAD.format("/VolumeDriver.Create", len(one)).encode() + one +
                        PODMAN_HEAD.format("/VolumeDriver.Get", len(two)).encode() + two)
    assert client.read() == (200, DEFAULT_CONTENT_TYPE, b'{"Err": ""}')
    status, ctype, answer = client.read()
    assert (status, ctype) == (200, DEFAULT_CONTENT_TYPE)
    assert json.loads(answer)["Volume"]["Name"] == "a"  # the Get came after the Create
    operations = [(r.path, r.body) for r in fake.requests
                  if r.path in ("/VolumeDriver.Create", "/VolumeDriver.Get")]
    assert operations == [("/VolumeDriver.Create", one), ("/VolumeDriver.Get", two)]


def test_a_forward_is_held_while_the_plugin_restarts(world: World) -> None:
    """restarting: the gateway's forward waits (restart.hold) until the restarted plugin
    is ready, then goes to it; nothing answers the caller meanwhile."""
    released = threading.Event()

    def restart(target: Target, timeout: float) -> tuple[str, str]:
        released.wait(10)
        world.plugin("p")  # the restarted process, with its new socket
        return "done", "restarted"

    world.plugin("p")
    sup, _ = world.start(restart=RestartSettings(enabled=True, hold=30.0),
                         restarter=restart)
    world.wait_state("p", PluginState.READY)
    wait_until(lambda: sup.snapshot().plugins["p"].process is not None,
               message="p's process identified")
    sup._book.records["p"].process = ProcessInfo(1, 0, 0, "p", "p.service", "system", None)
    client = Client(world.sock("p"))
    assert sup.restart("p", 5).state is PluginState.RESTARTING
    answers: list[tuple[int, str | None, bytes]] = []
    caller = threading.Thread(target=lambda: answers.append(
        client.post("/VolumeDriver.Create", b'{"Name":"held","Opts":{}}')))
    caller.start()
    world.wait_state("p", PluginState.RESTARTING)
    assert answers == []
    released.set()
    caller.join(15)
    assert answers == [(200, DEFAULT_CONTENT_TYPE, b'{"Err": ""}')]
    assert "held" in world.fakes[-1].volumes
