"""A plugin in a real Podman container (Debian podman 4.3, runc, cgroupfs, all state in
a temp folder): identify() names its container from /proc, and restart_container()
restarts it through the real engine API (``podman system service``), with the exact
outcomes for 204, 404 (gone), 500 (the restart fails) and an unreachable or mute engine.

The container's root is an empty folder with the host's /usr mounted read-only and this
checkout at /src, so it runs ``/usr/bin/python3 -m tests.fakeplugin /s/p.sock`` without
an image. Docker's API is the same call on another socket; its container is not run here
(the Docker peer of this suite has no image to run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tiers
from tests.waiting import wait_until
from volplugd.supervision.cgroup import Container
from volplugd.supervision.engine import (
    ContainerGone,
    EngineError,
    EngineTimeout,
    EngineUnreachable,
    restart_container,
)
from volplugd.supervision.identity import ProcessUnknown, identify

pytestmark = pytest.mark.peer

REPO = Path(__file__).resolve().parents[1]
GONE = "0" * 64


class PodmanEngine:
    """Podman with all state under ``root``, its API at ``root/podman.sock``."""

    def __init__(self, root: Path) -> None:
        self.podman = tiers.tool("podman", "podman")
        if os.geteuid() != 0:
            pytest.skip("needs root: rootful podman with cgroupfs")
        self.root = root
        for sub in ("run", "store", "tmp", "rootfs/usr", "rootfs/src", "rootfs/s", "s"):
            (root / sub).mkdir(parents=True)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            (root / "rootfs" / link).symlink_to(target)
        (root / "containers.conf").write_text(
            f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{root}/events.log"\ntmp_dir = "{root}/tmp"\n'
            f'static_dir = "{root}/store/libpod"\nvolume_path = "{root}/store/volumes"\n'
            f'runtime = "runc"\n[containers]\nnetns = "host"\n')
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{root}/run"\ngraphroot = "{root}/store"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(root / "storage.conf")}
        self.api = str(root / "podman.sock")
        with (root / "service.log").open("wb") as log:
            self.service = subprocess.Popen(
                [self.podman, "system", "service", "--time=0", f"unix://{self.api}"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        wait_until(lambda: os.path.exists(self.api), timeout=30, message="the podman API")

    def run(self, *args: str) -> str:
        done = subprocess.run([self.podman, *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.skip(f"podman {args[0]} cannot run a container here: {done.stderr.strip()}")
        return done.stdout.strip()

    def plugin(self, name: str) -> str:
        """A container serving the fake plugin at ``root/s/p.sock``; its full id."""
        return self.run(
            "run", "-d", "--name", name, "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=4096:4096", "-v", "/usr:/usr:ro", "-v", f"{REPO}:/src:ro",
            "-v", f"{self.root}/s:/s", "-w", "/src", "--rootfs", str(self.root / "rootfs"),
            "/usr/bin/python3", "-m", "tests.fakeplugin", "/s/p.sock")

    def pid(self, container: str) -> int:
        return int(self.run("inspect", "-f", "{{.State.Pid}}", container))

    def close(self) -> None:
        subprocess.run([self.podman, "rm", "-a", "-f", "-t", "0"], env=self.env,
                       capture_output=True, timeout=120, check=False)
        self.service.terminate()
        self.service.wait(30)


@pytest.fixture(scope="module")
def engine() -> Iterator[PodmanEngine]:
    root = Path(tempfile.mkdtemp(prefix="vpe-", dir="/tmp"))
    made = None
    try:
        made = PodmanEngine(root)
        yield made
    finally:
        if made is not None:
            made.close()
        shutil.rmtree(root, ignore_errors=True)


def listener(sock: str) -> int | None:
    """The pid listening on ``sock`` now, or None."""
    try:
        info, pidfd = identify(sock)
    except ProcessUnknown:
        return None
    pidfd.close()
    return info.pid


def test_a_plugin_in_a_podman_container_is_identified_and_restarted(
        engine: PodmanEngine) -> None:
    """identify() gives the container's process (the host's pid for it) and the Podman
    container; the engine API's restart (204) gives the socket a new listener, whose
    pidfd tells the old one exited."""
    container = engine.plugin("plug")
    sock = str(engine.root / "s" / "p.sock")
    wait_until(lambda: listener(sock), timeout=60, message="the plugin in the container")
    info, pidfd = identify(sock)
    with pidfd:
        assert (info.pid, info.container, info.unit) == (
            engine.pid("plug"), Container("podman", container), None)
        assert info.command == "/usr/bin/python3 -m tests.fakeplugin /s/p.sock"
        restart_container("podman", container, engine.api, stop_timeout=1)
        assert pidfd.exited()
    new = wait_until(lambda: listener(sock) not in (None, info.pid) and listener(sock),
                     timeout=60, message="the restarted plugin")
    assert new == engine.pid("plug")


def test_restarting_a_container_the_engine_does_not_know_is_container_gone(
        engine: PodmanEngine) -> None:
    """404: ContainerGone with Podman's own message."""
    with pytest.raises(ContainerGone) as caught:
        restart_container("podman", GONE, engine.api)
    assert (caught.value.status, str(caught.value)) == (
        404, f'podman container {GONE}: no such container: no container with name or ID '
             f'"{GONE}" found: no such container')


def test_a_restart_the_engine_cannot_do_is_an_engine_error_with_its_message(
        engine: PodmanEngine) -> None:
    """500: the container's bind-mount source removed, so it cannot start again."""
    source = engine.root / "gone"
    source.mkdir()
    container = engine.run(
        "create", "--name", "broken", "--ulimit", "nofile=1024:1024", "--ulimit",
        "nproc=4096:4096", "-v", "/usr:/usr:ro", "-v", f"{source}:/s", "--rootfs",
        str(engine.root / "rootfs"), "/usr/bin/python3", "-c", "pass")
    source.rmdir()
    with pytest.raises(EngineError) as caught:
        restart_container("podman", container, engine.api, stop_timeout=0)
    assert type(caught.value) is EngineError
    assert caught.value.status == 500
    assert str(caught.value).startswith(f"podman container {container}: restart failed (500): ")
    assert f"{source}: no such file or directory" in str(caught.value)


def test_an_engine_socket_that_does_not_exist_is_unreachable(short_tmp: Path) -> None:
    """No socket: EngineUnreachable naming the path and ENOENT."""
    path = str(short_tmp / "docker.sock")
    with pytest.raises(EngineUnreachable) as caught:
        restart_container("docker", GONE, path)
    assert str(caught.value) == (f"docker container {GONE}: {path}: No such file or directory")


def test_an_engine_that_never_answers_is_engine_timeout(short_tmp: Path) -> None:
    """A socket that accepts and stays mute: EngineTimeout after stop_timeout + margin."""
    path = str(short_tmp / "mute.sock")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        server.listen(8)
        with pytest.raises(EngineTimeout) as caught:
            restart_container("docker", GONE, path, stop_timeout=0, margin=0.2)
    finally:
        server.close()
    assert str(caught.value) == f"docker container {GONE}: no answer from {path} in time"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x?t=0", "\x1b[2J"])
def test_a_container_id_with_anything_to_escape_is_refused(bad: str) -> None:
    """An id that is not [0-9a-zA-Z_.-] never reaches a URL."""
    with pytest.raises(EngineError, match=r": not a container id$"):
        restart_container("docker", bad, "/nonexistent")
