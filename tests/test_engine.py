"""A plugin in a real container of each engine — Podman (Debian podman 4.3, runc,
cgroupfs) and Docker (Debian docker.io 20.10's dockerd in a private mount namespace,
vfs) — with all state in a temp folder: identify() names the container from /proc, and
restart_container() restarts it through the engine's real API, with the exact outcomes
for 204, 404 (gone), 500 (the restart fails) and an unreachable or mute engine.

The container's root is empty but for links to /usr, which is the host's (read-only),
and this checkout is at /src, so it runs ``/usr/bin/python3 -m tests.fakeplugin
/s/p.sock`` without a registry image (Docker imports the empty root as one).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
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


def empty_root(root: Path) -> Path:
    """``root/rootfs``: folders for the mounts, links into /usr."""
    for sub in ("rootfs/usr", "rootfs/src", "rootfs/s", "s"):
        (root / sub).mkdir(parents=True)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        (root / "rootfs" / link).symlink_to(target)
    return root / "rootfs"


#: ``run`` options of every container here: limits under this machine's hard ones, the
#: host's /usr; then the fake plugin from the checkout.
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "-v", "/usr:/usr:ro")
PLUGIN = ("/usr/bin/python3", "-m", "tests.fakeplugin", "/s/p.sock")


class PodmanEngine:
    """Podman with all state under ``root``, its API at ``root/podman.sock``."""

    name = "podman"

    def __init__(self, root: Path) -> None:
        self.podman = tiers.tool("podman", "podman")
        if os.geteuid() != 0:
            pytest.skip("needs root: rootful podman with cgroupfs")
        self.root = root
        self.rootfs = empty_root(root)
        for sub in ("run", "store", "tmp"):
            (root / sub).mkdir()
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
        try:
            wait_until(lambda: os.path.exists(self.api), timeout=30, message="the podman API")
        except BaseException:
            self.service.kill()
            self.service.wait(30)
            raise

    def run(self, *args: str) -> str:
        done = subprocess.run([self.podman, *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.skip(f"podman {args[0]} cannot run a container here: {done.stderr.strip()}")
        return done.stdout.strip()

    def container(self, name: str, options: Sequence[str], command: Sequence[str],
                  verb: str = "run") -> str:
        """``podman run -d`` (or ``create``) of ``command`` on the empty root; its id."""
        detach = ("-d",) if verb == "run" else ()
        return self.run(verb, *detach, "--name", name, *LIMITS, *options, "--rootfs",
                        str(self.rootfs), *command)

    def pid(self, container: str) -> int:
        return int(self.run("inspect", "-f", "{{.State.Pid}}", container))

    def close(self) -> None:
        subprocess.run([self.podman, "rm", "-a", "-f", "-t", "0"], env=self.env,
                       capture_output=True, timeout=120, check=False)
        self.service.terminate()
        self.service.wait(30)


class DockerEngine:
    """dockerd with all state under ``root`` (its API at ``root/docker.sock``), in a
    private mount namespace with its own /run/docker; the empty root imported as an
    image. dockerd gets SIGKILL if pytest dies (``setpriv --pdeathsig``)."""

    name = "docker"

    def __init__(self, root: Path) -> None:
        dockerd = tiers.tool("dockerd", "docker.io")
        self.docker = tiers.tool("docker", "docker.io")
        if os.geteuid() != 0:
            pytest.skip("needs root: dockerd")
        self.root = root
        rootfs = empty_root(root)
        self.api = str(root / "docker.sock")
        script = ("mkdir -p /run/docker && mount -t tmpfs -o size=16m tmpfs /run/docker && "
                  'exec "$@"')
        with (root / "dockerd.log").open("wb") as log:
            self.daemon = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "unshare", "--mount", "--propagation",
                 "private", "sh", "-c", script, "sh", dockerd, "--data-root",
                 f"{root}/data", "--exec-root", f"{root}/exec", "-H", f"unix://{self.api}",
                 "--pidfile", f"{root}/docker.pid", "--iptables=false", "--bridge=none",
                 "--storage-driver=vfs"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_until(self._answers, timeout=60, message="dockerd's API")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(root / "root.tar"), "."],
                           check=True)
            self.run("import", str(root / "root.tar"), "vp-empty")
        except BaseException:  # a skip or a failure: dockerd must not outlive the test
            self.daemon.kill()
            self.daemon.wait(60)
            raise

    def _answers(self) -> bool:
        return subprocess.run([self.docker, "-H", f"unix://{self.api}", "version"],
                              capture_output=True, timeout=30, check=False).returncode == 0

    def run(self, *args: str) -> str:
        done = subprocess.run([self.docker, "-H", f"unix://{self.api}", *args],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.skip(f"docker {args[0]} cannot run a container here: {done.stderr.strip()}")
        return done.stdout.strip()

    def container(self, name: str, options: Sequence[str], command: Sequence[str],
                  verb: str = "run") -> str:
        """``docker run -d`` (or ``create``) of ``command`` on the empty image; its id."""
        detach = ("-d",) if verb == "run" else ()
        return self.run(verb, *detach, "--name", name, "--network", "none", *LIMITS,
                        *options, "vp-empty", *command)

    def pid(self, container: str) -> int:
        return int(self.run("inspect", "-f", "{{.State.Pid}}", container))

    def close(self) -> None:
        subprocess.run([self.docker, "-H", f"unix://{self.api}", "rm", "-f", "plug", "broken"],
                       capture_output=True, timeout=120, check=False)
        self.daemon.terminate()  # the sh exec'd into dockerd: it stops its containerd
        self.daemon.wait(60)


Engine = PodmanEngine | DockerEngine


@pytest.fixture(scope="module", params=["podman", "docker"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    root = Path(tempfile.mkdtemp(prefix="vpe-", dir="/tmp"))
    made: Engine | None = None
    try:
        made = PodmanEngine(root) if request.param == "podman" else DockerEngine(root)
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


def test_a_plugin_in_a_container_is_identified_and_restarted(engine: Engine) -> None:
    """identify() gives the container's process (the host's pid for it) and its
    container; the engine API's restart (204) gives the socket a new listener, and the
    old one's pidfd tells it exited."""
    container = engine.container(
        "plug", ["-v", f"{REPO}:/src:ro", "-v", f"{engine.root}/s:/s", "-w", "/src"], PLUGIN)
    sock = str(engine.root / "s" / "p.sock")
    wait_until(lambda: listener(sock), timeout=60, message="the plugin in the container")
    info, pidfd = identify(sock)
    with pidfd:
        assert (info.pid, info.container, info.unit) == (
            engine.pid("plug"), Container(engine.name, container), None)
        assert info.command == "/usr/bin/python3 -m tests.fakeplugin /s/p.sock"
        assert info.view()["container"] == {"engine": engine.name, "id": container}
        restart_container(engine.name, container, engine.api, stop_timeout=1)
        assert pidfd.exited()
    new = wait_until(lambda: listener(sock) not in (None, info.pid) and listener(sock),
                     timeout=60, message="the restarted plugin")
    assert new == engine.pid("plug")


GONE_MESSAGES = {
    "podman": f'no container with name or ID "{GONE}" found: no such container',
    "docker": f"No such container: {GONE}",
}


def test_restarting_a_container_the_engine_does_not_know_is_container_gone(
        engine: Engine) -> None:
    """404: ContainerGone with the engine's own message."""
    with pytest.raises(ContainerGone) as caught:
        restart_container(engine.name, GONE, engine.api)
    assert (caught.value.status, str(caught.value)) == (
        404, f"{engine.name} container {GONE}: no such container: {GONE_MESSAGES[engine.name]}")


def test_a_restart_the_engine_cannot_do_is_an_engine_error_with_its_message(
        engine: Engine) -> None:
    """500: the container's bind-mount source removed, so it cannot start again."""
    source = engine.root / "gone"
    source.mkdir()
    container = engine.container(
        "broken", ["--mount", f"type=bind,source={source},target=/s"],
        ["/usr/bin/python3", "-c", "pass"], verb="create")
    source.rmdir()
    with pytest.raises(EngineError) as caught:
        restart_container(engine.name, container, engine.api, stop_timeout=0)
    assert type(caught.value) is EngineError
    assert caught.value.status == 500
    assert str(caught.value).startswith(
        f"{engine.name} container {container}: restart failed (500): ")
    assert str(source) in str(caught.value)


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
