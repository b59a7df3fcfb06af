"""The real Docker (dockerd 20.10) through the gateway, in the private mount namespace of
tests/docker_peer.py. The plugins bind in /run/docker/vp (not Docker's socket folder);
volplugd discovers them there and, with ``gateway.docker_specs``, writes
/etc/docker/plugins/NAME.json (the namespace's tmpfs) pointing Docker at the gateway.
A healthy plugin works end to end through the gateway; a hung one makes
``docker volume create -d NAME`` fail at once with its state and last error, where Docker
alone waits 120 s (docs/docker.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.docker_peer import PLUGINS, REPO, DockerPeer, NamespacedDaemon
from tests.harness import Daemon, call
from tests.waiting import wait_until

pytestmark = [pytest.mark.peer, pytest.mark.system]

OWN = "/run/docker/vp"  # where the plugins bind: outside Docker's socket folder
GATEWAY = "/run/docker/gateway"
CONFIG = f"""
[probe]
interval = 0.5
timeout = 0.3
failure_threshold = 1
endpoint = "/VolumeDriver.List"
[gateway]
enabled = true
dir = "{GATEWAY}"
docker_specs = true
"""


class GatewayDaemon(NamespacedDaemon):
    """volplugd in the namespace, watching Docker's folder and ours."""

    def __init__(self, peer: DockerPeer) -> None:
        workdir = peer.root / "volplugd-gateway"
        workdir.mkdir()
        Daemon.__init__(self, workdir, plugin_dirs=[], config=CONFIG,
                        args=["--plugin-dir", PLUGINS, "--plugin-dir", "/etc/docker/plugins",
                              "--plugin-dir", OWN])
        self.peer = peer


@pytest.fixture(scope="module")
def peer() -> Iterator[DockerPeer]:
    made = DockerPeer("")
    try:
        assert made.volplugd is not None
        assert made.volplugd.stop() == 0  # the peer's default volplugd: replaced by ours
        subprocess.run(made.inside(["mkdir", "-p", OWN]), check=True)
        made.volplugd = GatewayDaemon(made).start()
        yield made
    finally:
        made.close()


def plugin(peer: DockerPeer, name: str, *args: str) -> None:
    peer.spawn(name, [sys.executable, "-m", "tests.fakeplugin", f"{OWN}/{name}.sock", *args],
               env={"PYTHONPATH": str(REPO)})


def daemon(peer: DockerPeer) -> Daemon:
    assert peer.volplugd is not None
    return peer.volplugd


def spec_address(peer: DockerPeer, name: str) -> str | None:
    try:
        with open(peer.seen(f"/etc/docker/plugins/{name}.json")) as f:
            address: str = json.load(f)["Addr"]
            return address
    except (OSError, ValueError):
        return None


def test_a_healthy_plugin_works_through_the_gateway(peer: DockerPeer) -> None:
    name, d = "gwvol", daemon(peer)
    plugin(peer, name)
    d.wait_state(name, "ready")
    wait_until(lambda: spec_address(peer, name) == f"unix://{GATEWAY}/{name}.sock",
               message="the spec file")
    for args, out in ((("volume", "create", "-d", name, "v1"), "v1\n"),
                      (("volume", "ls", "--format", "{{.Driver}} {{.Name}}"), None),
                      (("volume", "inspect", "v1"), None),
                      (("volume", "rm", "v1"), "v1\n")):
        done = peer.docker(*args)
        assert done.returncode == 0, (args, done.stderr, peer.log("dockerd")[-2000:])
        if out is not None:
            assert done.stdout == out
        if args[1] == "ls":
            assert f"{name} v1" in done.stdout.splitlines()
        if args[1] == "inspect":
            volume = json.loads(done.stdout)[0]
            assert (volume["Driver"], volume["Mountpoint"]) == (name, "/fake/volumes/v1")
    d.call("POST", "/v1/rescan")
    view = d.plugins()[name]  # its spec file, in a watched folder, is not a plugin
    assert (view["source"], view["warnings"]) == (f"{OWN}/{name}.sock", [])
    _, metrics = call(d.socket, "GET", "/metrics")
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    for endpoint in ("create", "remove"):
        assert (f'volplugd_gateway_requests_total{{plugin="{name}",endpoint="{endpoint}",'
                'outcome="answered"}') in text


def test_a_hung_plugin_fails_docker_at_once(peer: DockerPeer) -> None:
    name, d = "gwhang", daemon(peer)
    plugin(peer, name, "--behave", "/VolumeDriver.List=hang",
           "--behave", "/VolumeDriver.Create=hang", "--behave", "/VolumeDriver.Get=hang")
    d.wait_state(name, "unhealthy")  # its List probes time out
    wait_until(lambda: spec_address(peer, name) == f"unix://{GATEWAY}/{name}.sock",
               message="the spec file")
    started = time.monotonic()
    done = peer.docker("volume", "create", "-d", name, "v1")
    seconds = time.monotonic() - started
    last_error = d.plugins()[name]["last_error"]
    assert last_error == (f"sending request to volume plugin {name} endpoint "
                          "/VolumeDriver.List: timed out: no complete answer within 0.3 s")
    assert (done.returncode, done.stderr) == (1, (
        f"Error response from daemon: create v1: VolumeDriver.Create: volplugd: plugin "
        f"{name} is unhealthy: {last_error}\n"))
    print(f"\ndocker volume create on a hung plugin through the gateway: {seconds:.3f} s; "
          f"stderr: {done.stderr.strip()}")
