"""The gateway in the real daemon: sockets, the Podman drop-in and Docker spec files
through the gateway while it runs, back to the plugins' own sockets at a clean stop, and
"connection refused" (not a hang) after a crash."""

from __future__ import annotations

import json
import signal
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import Daemon, call
from tests.test_gateway import Client
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def _config(tmp: Path) -> str:
    return f"""
[probe]
interval = 0.2
timeout = 0.2
failure_threshold = 1
[gateway]
enabled = true
dir = "{tmp}/gw"
mode = "0600"
docker_specs = true
docker_spec_dir = "{tmp}/docker-specs"
[podman]
enabled = true
dropin = "{tmp}/containers.conf.d/50-volplugd.conf"
via_gateway = true
"""


def _listed(tmp: Path) -> dict[str, str]:
    """The drop-in's plugins ({} until its writer thread first wrote it)."""
    path = tmp / "containers.conf.d" / "50-volplugd.conf"
    if not path.exists():
        return {}
    text = path.read_text()
    plugins: dict[str, str] = tomllib.loads(text)["engine"]["volume_plugins"]
    return plugins


def _spec(tmp: Path, name: str) -> str:
    """The spec file's address ("" until it is written)."""
    path = tmp / "docker-specs" / f"{name}.json"
    if not path.exists():
        return ""
    address: str = json.loads(path.read_text())["Addr"]
    return address


@pytest.fixture
def fake(short_tmp: Path) -> FakePlugin:
    (short_tmp / "plugins").mkdir()
    return FakePlugin(str(short_tmp / "plugins" / "p.sock"))


def test_the_daemon_serves_the_gateway_and_fails_open_at_a_clean_stop(
        daemon: Callable[..., Daemon], short_tmp: Path, fake: FakePlugin) -> None:
    d = daemon(config=_config(short_tmp)).start()
    gw, own = str(short_tmp / "gw" / "p.sock"), str(short_tmp / "plugins" / "p.sock")
    try:
        d.wait_state("p", "ready")
        wait_until((short_tmp / "gw" / "p.sock").exists, message="gateway socket")
        client = Client(gw)
        assert client.post("/VolumeDriver.Create", b'{"Name":"v1"}')[0] == 200
        assert [r.body for r in fake.requests if r.path == "/VolumeDriver.Create"] == [
            b'{"Name":"v1"}']
        wait_until(lambda: _listed(short_tmp) == {"p": gw}, message="drop-in via gateway")
        wait_until(lambda: _spec(short_tmp, "p") == f"unix://{gw}", message="spec file")
        _, metrics = call(d.socket, "GET", "/metrics")
        text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
        assert ('volplugd_gateway_requests_total{plugin="p",endpoint="create",'
                'outcome="answered"} 1') in text

        fake.set("/Plugin.Activate", b.Hang())  # probes time out: unhealthy
        d.wait_state("p", "unhealthy")
        status, _, answer = client.post("/VolumeDriver.Create", b'{"Name":"v2"}')
        assert status == 500
        last_error = d.plugins()["p"]["last_error"]  # every probe fails the same way
        assert last_error == ("sending request to plugin p activation endpoint: timed out: "
                              "no complete answer within 0.2 s")
        assert json.loads(answer) == {"Err": f"volplugd: plugin p is unhealthy: {last_error}"}
        assert client.post("/Plugin.Activate")[2] == b'{"Implements":["VolumeDriver"]}'
        assert [r.body for r in fake.requests if r.path == "/VolumeDriver.Create"] == [
            b'{"Name":"v1"}']
        client.close()
        assert d.stop() == 0
        assert _listed(short_tmp) == {"p": own}
        assert _spec(short_tmp, "p") == f"unix://{own}"
        assert not (short_tmp / "gw" / "p.sock").exists()
    finally:
        fake.stop()


def test_after_a_crash_clients_see_connection_refused_not_a_hang(
        daemon: Callable[..., Daemon], short_tmp: Path, fake: FakePlugin) -> None:
    d = daemon(config=_config(short_tmp)).start()
    gw = str(short_tmp / "gw" / "p.sock")
    try:
        d.wait_state("p", "ready")
        wait_until((short_tmp / "gw" / "p.sock").exists, message="gateway socket")
        d.signal(signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait(10)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            sock.connect(gw)
        sock.close()
        # A new daemon replaces the stale socket and serves it again.
        again = daemon(config=_config(short_tmp)).start()
        again.wait_state("p", "ready")
        client = wait_until(lambda: _connects(gw), message="gateway socket back")
        assert client.post("/VolumeDriver.List")[0] == 200
        client.close()
        assert again.stop() == 0
    finally:
        fake.stop()


def _connects(path: str) -> Client | None:
    try:
        return Client(path)
    except OSError:
        return None


def test_an_unknown_gateway_group_stops_the_start_with_one_line(
        daemon: Callable[..., Daemon], short_tmp: Path) -> None:
    d = daemon(config=f'[gateway]\nenabled = true\ndir = "{short_tmp}/gw"\n'
                      'group = "no-such-group"\n').start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1
    failed = [e for e in d.log_events() if e.get("event") == "startup_failed"]
    assert [e["error"] for e in failed] == ["gateway.group: no group named 'no-such-group'"]
