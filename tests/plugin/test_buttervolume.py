"""The client against a real third-party plugin: buttervolume 3.13 from PyPI on btrfs.

Started with ``shared/peers/start-buttervolume.sh`` (``shared/`` sits beside the
repository, in CI too) on its own loop-mounted btrfs image. The venv is cached across
runs in ``/var/tmp`` (installing takes ~15 s); everything else is per run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import buttervolume as bv
from tests.waiting import wait_until
from volplugd.plugin import PluginAddress, PluginClient, PluginReportedError

pytestmark = pytest.mark.peer



@dataclass(frozen=True)
class Buttervolume:
    sock: str
    volumes: str  # where buttervolume keeps its subvolumes
    log: Path


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:  # not there yet, or bound and not listening yet
            return False
    return True


def _preconditions() -> None:
    if os.geteuid() != 0:
        pytest.skip("buttervolume needs root to loop-mount a btrfs image")
    bv.preconditions()


@pytest.fixture(scope="module")
def buttervolume() -> Iterator[Buttervolume]:
    """buttervolume running on a fresh loop-mounted btrfs; stopped and unmounted after."""
    _preconditions()
    workdir = Path(tempfile.mkdtemp(dir="/tmp", prefix="vpbv"))
    (workdir / "venv").symlink_to(bv.venv(skip_on_failure=False))
    sock, log = str(workdir / "bv.sock"), workdir / "launcher.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(bv.LAUNCHER), sock, str(workdir)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        # Its socket file appears at bind(), a moment before listen(): wait for a connect.
        wait_until(lambda: _accepts(sock) or proc.poll() is not None, timeout=120,
                   message="buttervolume's socket to accept a connection")
        assert proc.poll() is None, f"buttervolume exited:\n{log.read_text()}"
        if not os.path.ismount(workdir / "btrfs"):
            pytest.skip("no loop-mounted btrfs here (the launcher fell back to a plain dir, "
                        "where every Create fails): " + log.read_text().strip()[-200:])
        yield Buttervolume(sock, str(workdir / "btrfs" / "volumes"), log)
    finally:
        proc.terminate()  # buttervolume unlinks its socket and exits
        proc.wait(30)
        subprocess.run(["umount", str(workdir / "btrfs")], check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def client(buttervolume: Buttervolume) -> Iterator[PluginClient]:
    with PluginClient("buttervolume", PluginAddress("unix", buttervolume.sock)) as made:
        yield made


def test_whole_volume_lifecycle(buttervolume: Buttervolume, client: PluginClient) -> None:
    """activate, create, list, get, path, mount, unmount, remove: a real btrfs subvolume."""
    assert client.activate().implements == ("VolumeDriver",)
    assert client.capabilities().scope == "local"
    client.create("lifecycle")
    where = f"{buttervolume.volumes}/lifecycle"
    assert "lifecycle" in [v.name for v in client.list()]
    volume = client.get("lifecycle")
    assert (volume.name, volume.mountpoint) == ("lifecycle", where)
    assert client.path("lifecycle") == where
    assert client.mount("lifecycle", "c1") == where
    assert os.path.isdir(where)
    client.unmount("lifecycle", "c1")
    client.remove("lifecycle")
    assert not os.path.exists(where)
    assert "lifecycle" not in [v.name for v in client.list()]


@pytest.mark.parametrize(("call", "message"), [
    (lambda c: c.create("bad@name"), 'on /VolumeDriver.Create on volume bad@name in volume '
     'plugin buttervolume: "@" is illegal in a volume name'),
    (lambda c: c.create("v4", {"copyonwrite": "maybe"}), 'on /VolumeDriver.Create on volume v4 '
     'in volume plugin buttervolume: Invalid option for copyonwrite: maybe. Set to "true" or '
     '"false".'),
    (lambda c: c.get("nope"), "on /VolumeDriver.Get on volume nope in volume plugin "
     "buttervolume: nope: no such volume"),
    (lambda c: c.mount("nope", "c1"), "on /VolumeDriver.Mount on volume nope in volume plugin "
     "buttervolume: nope: no such volume"),
    (lambda c: c.remove("nope"), "on /VolumeDriver.Remove on volume nope in volume plugin "
     "buttervolume: nope: no such volume"),
], ids=["illegal-name", "bad-option", "get-missing", "mount-missing", "remove-missing"])
def test_errors_sent_with_200_are_errors(client: PluginClient, call: object,
                                         message: str) -> None:
    """buttervolume answers every failure with 200 {"Err": ...}: each one is raised."""
    with pytest.raises(PluginReportedError) as caught:
        call(client)  # type: ignore[operator]
    assert str(caught.value) == message
    assert caught.value.err == message.split("buttervolume: ", 1)[1]
