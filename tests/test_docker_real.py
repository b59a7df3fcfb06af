"""The real Docker (dockerd 20.10, Debian docker.io) and the real volplugd watch the same
/run/docker/plugins, in a private mount namespace (tests/docker_peer.py, docs/docker.md).

While a plugin is ready, ``docker volume create/ls/inspect/rm -d NAME`` works and volplugd
sees the same volumes; once the plugin dies or hangs, volplugd refuses a volume call at
once with ``409 plugin_not_ready`` naming the state and the last error, while Docker
would retry for 30 s (dead) or wait 120 s (hung): those figures are in docs/docker.md
and are never waited for here. One dockerd and one volplugd serve the whole module;
each test's plugin keeps running until the module ends, because dockerd remembers every
plugin it used and would retry a dead one on each later ``docker volume ls``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_peer import PLUGINS, DockerPeer, start_buttervolume
from tests.harness import Daemon
from tests.waiting import wait_until

pytestmark = [pytest.mark.peer, pytest.mark.system]

CONFIG = "[probe]\ninterval = 1.0\ntimeout = 0.5\nfailure_threshold = 1\n"


@pytest.fixture(scope="module")
def peer() -> Iterator[DockerPeer]:
    made = DockerPeer(CONFIG)
    try:
        yield made
    finally:
        made.close()


def volplugd(peer: DockerPeer) -> Daemon:
    assert peer.volplugd is not None
    return peer.volplugd


def docker_ok(peer: DockerPeer, *args: str) -> str:
    done = peer.docker(*args)
    assert done.returncode == 0, (args, done.stderr, peer.log("dockerd")[-2000:])
    return done.stdout


def listed(peer: DockerPeer) -> list[str]:
    return docker_ok(peer, "volume", "ls", "--format", "{{.Driver}} {{.Name}}").splitlines()


def inspect(peer: DockerPeer, volume: str) -> dict[str, Any]:
    found = json.loads(docker_ok(peer, "volume", "inspect", volume))
    assert len(found) == 1
    return found[0]  # type: ignore[no-any-return]


def assert_refused_fast(daemon: Daemon, name: str, state: str, last_error: str) -> None:
    """A volume call is refused with 409, naming the state and last error; volplugd
    keeps serving."""
    view = daemon.plugins()[name]
    assert (view["state"], view["last_error"]) == (state, last_error)
    expected = {"error": {"code": "plugin_not_ready",
                          "message": f"plugin {name} is {state}: {last_error}"}}
    assert daemon.call("POST", f"/v1/plugins/{name}/volumes", {"name": "late"}) == (409,
                                                                                 expected)
    assert daemon.call("GET", f"/v1/plugins/{name}/volumes") == (409, expected)
    assert daemon.call("GET", "/v1/health")[0] == 200


def test_fake_plugin_with_docker_then_dead_then_back(peer: DockerPeer) -> None:
    """The fake plugin: Docker uses it while volplugd shows it ready; SIGKILLed (its
    socket left behind) it is refused with 409, its exit named; started again, both use
    it again."""
    name, daemon = "fakevol", volplugd(peer)
    plugin = peer.fake_plugin(name)
    daemon.wait_state(name, "ready")
    assert not os.path.exists(f"{PLUGINS}/{name}.sock")  # the host never sees it

    assert docker_ok(peer, "volume", "create", "-d", name, "v1") == "v1\n"
    assert f"{name} v1" in listed(peer)
    volume = inspect(peer, "v1")
    assert (volume["Name"], volume["Driver"], volume["Mountpoint"], volume["Scope"]) == (
        "v1", name, "/fake/volumes/v1", "local")
    status, seen = daemon.call("GET", f"/v1/plugins/{name}/volumes")
    assert (status, [v["name"] for v in seen["volumes"]]) == (200, ["v1"])
    assert daemon.plugins()[name]["state"] == "ready"
    assert docker_ok(peer, "volume", "rm", "v1") == "v1\n"
    assert daemon.call("GET", f"/v1/plugins/{name}/volumes") == (200, {"volumes": []})

    plugin.send_signal(signal.SIGKILL)
    plugin.wait()
    assert os.path.exists(peer.seen(f"{PLUGINS}/{name}.sock"))  # stale: connection refused
    daemon.wait_state(name, "unhealthy")  # at once: its pidfd fired, the probe was refused
    assert_refused_fast(daemon, name, "unhealthy", (
        f"process {plugin.pid} ({sys.executable} -m tests.fakeplugin {PLUGINS}/{name}.sock) "
        "exited"))

    peer.fake_plugin(name)  # removes the stale socket and binds a new one
    daemon.wait_state(name, "ready")
    assert docker_ok(peer, "volume", "create", "-d", name, "v2") == "v2\n"
    assert docker_ok(peer, "volume", "rm", "v2") == "v2\n"
    assert daemon.plugins()[name]["state"] == "ready"


def test_buttervolume_with_docker_then_hung_then_back(peer: DockerPeer) -> None:
    """buttervolume (PyPI, on a btrfs mounted in the namespace): a real subvolume made
    through Docker, seen by volplugd; SIGSTOPped (hung) it is refused with 409; SIGCONT
    brings it back and Docker removes the volume."""
    name, daemon = "btrfs", volplugd(peer)
    plugin, workdir = start_buttervolume(peer, name)
    daemon.wait_state(name, "ready", timeout=60)

    assert docker_ok(peer, "volume", "create", "-d", name, "bv1") == "bv1\n"
    assert f"{name} bv1" in listed(peer)
    where = f"{workdir}/btrfs/volumes/bv1"
    volume = inspect(peer, "bv1")
    assert (volume["Name"], volume["Driver"], volume["Mountpoint"]) == ("bv1", name, where)
    assert os.path.isdir(peer.seen(where))  # a subvolume on the namespace's btrfs
    assert daemon.call("GET", f"/v1/plugins/{name}/volumes/bv1/path") == (
        200, {"mountpoint": where})
    assert daemon.plugins()[name]["state"] == "ready"

    plugin.send_signal(signal.SIGSTOP)
    try:
        daemon.wait_state(name, "unhealthy")
        assert_refused_fast(daemon, name, "unhealthy", (
            f"sending request to plugin {name} activation endpoint: "
            "timed out: no complete answer within 0.5 s"))
    finally:
        plugin.send_signal(signal.SIGCONT)
    daemon.wait_state(name, "ready")
    assert docker_ok(peer, "volume", "rm", "bv1") == "bv1\n"
    assert not os.path.exists(peer.seen(where))
    log = peer.log(name)
    assert "Request: /VolumeDriver.Create {'Name': 'bv1', 'Opts': {}}" in log, log[-2000:]
    assert "Request: /VolumeDriver.Remove {'Name': 'bv1'}" in log


def test_teardown_leaves_nothing_running() -> None:
    """close() stops dockerd (and the containerd it started), volplugd and the plugins,
    and the namespace, its tmpfs and the temp folder are gone."""
    peer = DockerPeer(CONFIG)
    try:
        plugin = peer.fake_plugin("gone")
        daemon = volplugd(peer)
        daemon.wait_state("gone", "ready")
        running = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in peer.members()}
    except BaseException:
        peer.close()
        raise
    assert {"dockerd", "containerd"} <= set(running.values()), running
    assert daemon.proc is not None
    assert {plugin.pid, daemon.proc.pid} <= set(running), running
    ns, root = peer.ns, peer.root
    # Held open, the namespace cannot be freed and its inode number given to a namespace
    # another test makes meanwhile (containers, unshare): the check below stays sound.
    held = os.open(f"/proc/{peer.holder.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer.close()  # raises if it had to kill anything
        assert not [pid for pid in running if os.path.exists(f"/proc/{pid}")]
        assert ns not in {_ns(pid) for pid in os.listdir("/proc") if pid.isdigit()}
    finally:
        os.close(held)
    assert not root.exists()


def _ns(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def test_teardown_kills_and_names_a_stray_process() -> None:
    """A process in the namespace that close() did not start is killed, and close() fails
    naming it: nothing outlives the peer unnoticed."""
    peer = DockerPeer(CONFIG)
    stray = subprocess.Popen(peer.inside(["sleep", "600"]))
    try:
        wait_until(lambda: stray.pid in peer.members(), 10, message="the stray in the namespace")
    except BaseException:
        stray.kill()
        stray.wait()
        peer.close()
        raise
    with pytest.raises(AssertionError) as caught:
        peer.close()
    assert str(caught.value) == f"left in the namespace: {stray.pid} sleep"
    assert stray.wait(10) == -signal.SIGKILL
    assert not peer.root.exists()
