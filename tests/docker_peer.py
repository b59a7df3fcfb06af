"""The real Docker (``dockerd`` 20.10, Debian ``docker.io``) as a peer, without touching the host.

Docker reads legacy plugin sockets only from the fixed folder ``/run/docker/plugins``, so
everything that must see that folder runs in one private mount namespace (see
docs/docker.md): a *holder* process (``unshare -m --propagation private``) mounts a tmpfs
over ``/run/docker`` (so ``/run/docker/plugins`` is private and empty) and one over
``/etc/docker`` (where dockerd writes ``key.json`` and looks for ``.spec`` files), then
waits on its stdin. dockerd, volplugd and the plugins are started in its namespace with
``nsenter --mount``; their sockets, logs and state live in a temp folder outside the
tmpfs, which pytest reaches directly. A file inside the namespace is reached as
``/proc/HOLDER/root/PATH``.

Teardown is certain: every process is stopped by its PID, then any process still in the
namespace (dockerd's own containerd, say) is killed and reported, then the holder ends
and the namespace with its mounts goes. If pytest itself dies, the holder reads EOF and
ends, and every other process gets SIGKILL from ``setpriv --pdeathsig``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests import buttervolume, tiers
from tests.harness import Daemon, call
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
PLUGINS = "/run/docker/plugins"  # inside the namespace only
HOLDER_SCRIPT = (
    "mkdir -p /run/docker /etc/docker"
    " && mount -t tmpfs -o mode=0755,size=16m tmpfs /run/docker"
    " && mount -t tmpfs -o mode=0755,size=16m tmpfs /etc/docker"
    f" && mkdir {PLUGINS} && echo ready && exec cat >/dev/null")


def preconditions() -> tuple[str, str]:
    """(dockerd, docker CLI) paths, or skip saying what is missing."""
    tiers.require("peer", "starts dockerd")
    if os.geteuid() != 0:
        pytest.skip("needs root: dockerd and mount namespaces")
    for tool in ("unshare", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    # The CLI of the same package: another docker on PATH may be a newer client.
    beside = Path(dockerd).parent.parent / "bin" / "docker"
    cli = str(beside) if beside.exists() else shutil.which("docker")
    if cli is None:
        pytest.skip("the docker CLI is not installed (apt-get install docker.io)")
    return dockerd, cli


class DockerPeer:
    """dockerd and volplugd in one private mount namespace; plugins are added by tests."""

    def __init__(self, volplugd_config: str = "") -> None:
        self.dockerd_path, self.cli = preconditions()
        self.root = Path(tempfile.mkdtemp(prefix="vpdk-", dir="/tmp")).resolve()
        self.sock = str(self.root / "docker.sock")
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.unmounts: list[str] = []
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", HOLDER_SCRIPT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.holder.stdout is not None
        assert self.holder.stderr is not None
        if self.holder.stdout.readline() != b"ready\n":
            reason = self.holder.stderr.read().decode(errors="replace").strip()
            self._end_holder()
            shutil.rmtree(self.root, ignore_errors=True)
            pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {reason}")
        self.ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.volplugd: Daemon | None = None
        try:
            self._start_dockerd()
            self.volplugd = NamespacedDaemon(self, volplugd_config).start()
        except BaseException:
            self.close()
            raise

    # -- inside the namespace -------------------------------------------------------------

    def inside(self, argv: Sequence[str], cwd: Path | None = None) -> list[str]:
        """argv run in the namespace, killed if the process that starts it dies."""
        return ["setpriv", "--pdeathsig", "KILL", "nsenter",
                f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--wd={cwd or self.root}",
                "--", *argv]

    def spawn(self, name: str, argv: Sequence[str],
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the namespace (log: ROOT/NAME.log); stopped at close()."""
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self.inside(argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, env={**os.environ, **(env or {})})
        self.procs.append((name, proc))
        return proc

    def fake_plugin(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``python -m tests.fakeplugin /run/docker/plugins/NAME.sock ARGS`` in the namespace."""
        return self.spawn(name, [sys.executable, "-m", "tests.fakeplugin",
                                 f"{PLUGINS}/{name}.sock", *args],
                          env={"PYTHONPATH": str(REPO)})

    def seen(self, path: str) -> str:
        """Where pytest reaches ``path`` as the namespace sees it."""
        return f"/proc/{self.holder.pid}/root{path}"

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def docker(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The docker CLI (outside the namespace) against this dockerd."""
        env = {**os.environ, "DOCKER_CONFIG": str(self.root / "cli")}
        env.pop("DOCKER_HOST", None)
        return subprocess.run([self.cli, "-H", f"unix://{self.sock}", *args], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def _start_dockerd(self) -> None:
        argv = [self.dockerd_path, "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
                "-H", f"unix://{self.sock}", "--iptables=false", "--bridge=none",
                "--storage-driver=vfs"]
        self.dockerd = self.spawn("dockerd", argv)
        self.procs.pop()  # stopped first, on its own
        wait_until(self._dockerd_answers, 60, message=f"dockerd; log:\n{self.log('dockerd')}")

    def _dockerd_answers(self) -> bool:
        assert self.dockerd is not None
        if self.dockerd.poll() is not None:
            raise AssertionError(f"dockerd exited {self.dockerd.returncode}:\n"
                                 f"{self.log('dockerd')}")
        try:
            return call(self.sock, "GET", "/_ping", timeout=2.0) == (200, b"OK")
        except OSError:
            return False

    # -- teardown -------------------------------------------------------------------------

    def members(self) -> list[int]:
        """PIDs of the processes in the namespace, the holder excepted."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") == self.ns:
                        pids.append(int(entry))
        return pids

    def close(self) -> None:
        """Stop everything by PID; fail if anything had to be killed in the namespace."""
        problems = []
        try:
            if self.dockerd is not None:  # first: it must not call plugins that are going
                problems += _stop(self.dockerd, "dockerd", 30.0)
            for name, proc in reversed(self.procs):
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)  # a test may have stopped it
                problems += _stop(proc, name, 30.0)
            if self.volplugd is not None and self.volplugd.proc is not None:
                try:
                    if (code := self.volplugd.stop()) != 0:
                        problems.append(f"volplugd exited {code}")
                except AssertionError as err:  # it ignored SIGTERM and was killed
                    problems.append(str(err)[:500])
            for mount in self.unmounts:
                subprocess.run(self.inside(["umount", mount]), capture_output=True,
                               check=False)
            if self.holder.poll() is None:
                for pid in self.members():
                    problems.append(f"left in the namespace: {pid} {_comm(pid)}")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not self.members(), 30, message="the namespace to empty")
        finally:
            self._end_holder()
            shutil.rmtree(self.root, ignore_errors=True)
        if problems:
            raise AssertionError("; ".join(problems))

    def _end_holder(self) -> None:
        for pipe in (self.holder.stdin, self.holder.stdout, self.holder.stderr):
            if pipe is not None:
                pipe.close()
        self.holder.wait(30)


class NamespacedDaemon(Daemon):
    """The tests' volplugd, run in the peer's namespace and watching /run/docker/plugins."""

    def __init__(self, peer: DockerPeer, config: str) -> None:
        workdir = peer.root / "volplugd"
        workdir.mkdir()
        # No plugin_dirs: Daemon.start would create them on the host. The flag is enough.
        super().__init__(workdir, plugin_dirs=[], config=config,
                         args=["--plugin-dir", PLUGINS])
        self.peer = peer

    def argv(self) -> list[str]:
        return self.peer.inside(super().argv(), cwd=self.workdir)


def _stop(proc: subprocess.Popen[bytes], what: str, timeout: float) -> list[str]:
    """SIGTERM and wait; a process that ignores it is killed and named."""
    if proc.poll() is not None:
        return []
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return [f"{what} ignored SIGTERM for {timeout} s"]
    return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def start_buttervolume(peer: DockerPeer, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """buttervolume serving /run/docker/plugins/NAME.sock in the namespace, on its own
    loop-mounted btrfs (mounted in the namespace only). Returns (process, workdir)."""
    buttervolume.preconditions()
    workdir = peer.root / name
    workdir.mkdir()
    (workdir / "venv").symlink_to(buttervolume.venv())
    # At import buttervolume may run `docker plugin inspect`: point it at our dockerd.
    proc = peer.spawn(name, ["bash", str(buttervolume.LAUNCHER), f"{PLUGINS}/{name}.sock",
                             str(workdir)], env={"DOCKER_HOST": f"unix://{peer.sock}"})
    peer.unmounts.append(str(workdir / "btrfs"))
    sock = peer.seen(f"{PLUGINS}/{name}.sock")
    wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, 120,
               message=f"buttervolume's socket; log:\n{peer.log(name)}")
    assert proc.poll() is None, f"buttervolume exited:\n{peer.log(name)}"
    mounts = Path(f"/proc/{peer.holder.pid}/mountinfo").read_text().split()
    if str(workdir / "btrfs") not in mounts:
        pytest.skip("no loop-mounted btrfs here (the launcher fell back to a plain dir, "
                    "where every Create fails): " + peer.log(name).strip()[-200:])
    return proc, workdir
