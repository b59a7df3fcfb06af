"""The real Podman (Debian 4.3.1) as a client of plugins listed only by our drop-in.

Podman runs as root with all its state in a temp folder (vfs storage, cgroupfs, file
events, as in shared/peers/podman-client.sh). With ``CONTAINERS_CONF`` set Podman reads
only that one file and no drop-in folder, so instead each podman command runs in a
private mount namespace where ``<tmp>/etc`` is bind-mounted over ``/etc/containers``:
Podman then reads ``/etc/containers/containers.conf`` and
``/etc/containers/containers.conf.d/*.conf`` from our temp folder, exactly as on a host,
and the host's /etc is never touched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from tests import buttervolume as bv
from tests import tiers
from tests.fakeplugin.behaviours import Hang
from tests.fakeplugin.server import FakePlugin
from tests.harness import Daemon
from tests.waiting import wait_until
from volplugd.config import PodmanSettings
from volplugd.model import EMPTY_SNAPSHOT, Kind, PluginState, PluginView, Snapshot
from volplugd.podman import DropinWriter

pytestmark = pytest.mark.peer

NAME = "fakevol"
INSIDE_DROPIN = "/etc/containers/containers.conf.d/50-volplugd.conf"


class PodmanSandbox:
    """Podman with its config folder and all its state under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.etc = root / "etc"
        self.dropin = str(self.etc / "containers.conf.d" / "50-volplugd.conf")
        (self.etc / "containers.conf.d").mkdir(parents=True)
        for sub in ("store", "run", "tmp"):
            (root / sub).mkdir()
        # The administrator's file: engine settings for a sandbox, and no volume plugin.
        (self.etc / "containers.conf").write_text(
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root}/events.log"\n'
            f'tmp_dir = "{root}/tmp"\n'
            f'static_dir = "{root}/store/libpod"\n'
            f'volume_path = "{root}/store/volumes"\n')
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{root}/run"\ngraphroot = "{root}/store"\n')

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
        env["CONTAINERS_STORAGE_CONF"] = str(self.root / "storage.conf")
        script = 'mount --bind "$0" /etc/containers && exec podman "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(self.etc), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120,
                              check=False)


@pytest.fixture
def podman(short_tmp: Path) -> PodmanSandbox:
    tiers.tool("podman", "podman")
    if os.geteuid() != 0:
        pytest.skip("needs root: rootless podman needs subuid/subgid setup")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    sandbox = PodmanSandbox(short_tmp / "podman")
    probe = sandbox.run("--version")
    if probe.stderr.startswith(("unshare:", "mount:")):
        pytest.skip(f"cannot bind-mount in a private mount namespace: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    return sandbox


def plugin_view(sock: str, state: PluginState = PluginState.READY) -> PluginView:
    return PluginView(name=NAME, address=sock, source=sock, kind=Kind.SOCK, state=state,
                      registered_at=1.0)


def snapshot(*views: PluginView) -> Snapshot:
    return Snapshot(MappingProxyType({v.name: v for v in views}), MappingProxyType({}),
                    generation=1)


def writer_for(sandbox: PodmanSandbox, timeout: int | None = None) -> DropinWriter:
    settings = PodmanSettings(enabled=True, dropin=sandbox.dropin,
                              volume_plugin_timeout=timeout)
    return DropinWriter(settings, lambda after, wait: EMPTY_SNAPSHOT,
                        search_paths=lambda: [str(sandbox.etc / "containers.conf")])


def test_podman_reaches_a_plugin_listed_only_by_our_dropin(podman: PodmanSandbox,
                                                          short_tmp: Path) -> None:
    """create, inspect and rm through Podman reach the plugin with no hand-written entry."""
    sock = str(short_tmp / "fakevol.sock")
    with FakePlugin(sock) as plugin:
        assert writer_for(podman, timeout=2).update(snapshot(plugin_view(sock)))
        assert "volume_plugins" not in (podman.etc / "containers.conf").read_text()

        created = podman.run("--log-level=debug", "volume", "create", "--driver", NAME, "v1")
        assert created.returncode == 0, created.stderr
        assert created.stdout == "v1\n"
        assert f'Merged system config \\"{INSIDE_DROPIN}\\"' in created.stderr
        inspected = podman.run("volume", "inspect", "v1")
        assert inspected.returncode == 0, inspected.stderr
        volume = json.loads(inspected.stdout)[0]
        assert (volume["Name"], volume["Driver"], volume["Timeout"]) == ("v1", NAME, 2)
        removed = podman.run("volume", "rm", "v1")
        assert (removed.returncode, removed.stdout) == (0, "v1\n"), removed.stderr

        assert plugin.volumes == {}
        seen = [(r.path, r.body) for r in plugin.requests if r.path != "/Plugin.Activate"]
        assert seen == [("/VolumeDriver.Get", b'{"Name":"v1"}'),
                        ("/VolumeDriver.Create", b'{"Name":"v1"}'),
                        ("/VolumeDriver.Get", b'{"Name":"v1"}'),
                        ("/VolumeDriver.Get", b'{"Name":"v1"}'),
                        ("/VolumeDriver.Remove", b'{"Name":"v1"}')]


def test_stopped_plugin_before_and_after_the_dropin_update(podman: PodmanSandbox,
                                                          short_tmp: Path) -> None:
    """A plugin whose socket is gone: Podman names the missing socket while it is
    listed, and says "no volume plugin with name" once the drop-in drops it."""
    sock = str(short_tmp / "fakevol.sock")
    writer = writer_for(podman)
    with FakePlugin(sock):
        writer.update(snapshot(plugin_view(sock)))
        assert podman.run("volume", "create", "--driver", NAME, "v1").returncode == 0

    before = podman.run("volume", "create", "--driver", NAME, "v2")
    assert (before.returncode, before.stderr) == (125, (
        f"Error: volume v2 uses volume plugin {NAME} but it could not be retrieved: "
        f'cannot access plugin {NAME} socket "{sock}": stat {sock}: '
        "no such file or directory\n"))

    assert writer.update(snapshot()) is True  # volplugd evicted it
    after = podman.run("volume", "create", "--driver", NAME, "v2")
    assert (after.returncode, after.stderr) == (125, (
        f"Error: volume v2 uses volume plugin {NAME} but it could not be retrieved: "
        f"no volume plugin with name {NAME} available: required plugin missing\n"))
    inspect = podman.run("volume", "inspect", "v1")
    assert (inspect.returncode, inspect.stderr.splitlines()[-1]) == (
        125, f"Error: volume v1 uses volume plugin {NAME} but it is not available, "
             "cannot inspect: required plugin missing")


def test_unhealthy_plugin_stays_listed_and_podman_names_the_failure(
        podman: PodmanSandbox, short_tmp: Path) -> None:
    """ready -> unhealthy leaves the drop-in unchanged; Podman reports the real cause
    (a stale socket: connection refused) instead of "no volume plugin with name"."""
    sock = str(short_tmp / "fakevol.sock")
    writer = writer_for(podman)
    plugin = FakePlugin(sock)
    try:
        writer.update(snapshot(plugin_view(sock)))
    finally:
        plugin.stop(unlink=False)  # dies, leaving its socket file behind
    assert writer.update(snapshot(plugin_view(sock, PluginState.UNHEALTHY))) is False
    out = podman.run("volume", "create", "--driver", NAME, "v2")
    assert (out.returncode, out.stderr) == (125, (
        f"Error: volume v2 uses volume plugin {NAME} but it could not be retrieved: "
        f"sending request to plugin {NAME} activation endpoint: "
        f'Post "http://plugin/Plugin.Activate": dial unix {sock}: connect: '
        "connection refused\n"))


def test_hanging_plugin_is_cut_off_by_the_timeout_from_our_dropin(
        podman: PodmanSandbox, short_tmp: Path) -> None:
    """volume_plugin_timeout from volplugd's settings reaches Podman: a hung plugin
    fails after it with "context deadline exceeded"."""
    sock = str(short_tmp / "fakevol.sock")
    with FakePlugin(sock) as plugin:
        plugin.set("/Plugin.Activate", Hang())
        writer_for(podman, timeout=1).update(snapshot(plugin_view(sock, PluginState.UNHEALTHY)))
        out = podman.run("volume", "create", "--driver", NAME, "v1")
    assert (out.returncode, out.stderr) == (125, (
        f"Error: volume v1 uses volume plugin {NAME} but it could not be retrieved: "
        f"sending request to plugin {NAME} activation endpoint: "
        'Post "http://plugin/Plugin.Activate": context deadline exceeded '
        "(Client.Timeout exceeded while awaiting headers)\n"))


def daemon_landed() -> None:
    for module in ("volplugd.daemon", "volplugd.control.server"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} has not landed yet: the daemon cannot start")


def daemon_config(sandbox: PodmanSandbox) -> str:
    return ("[probe]\ninterval = 1.0\ntimeout = 0.5\nfailure_threshold = 1\n"
            f'[podman]\nenabled = true\ndropin = "{sandbox.dropin}"\n'
            "volume_plugin_timeout = 2\n")


def lists(sandbox: PodmanSandbox, name: str, sock: str | None) -> bool:
    """The drop-in lists ``name`` at ``sock`` (None: does not list ``name`` at all)."""
    try:
        text = Path(sandbox.dropin).read_text()
    except FileNotFoundError:
        return False
    return f'\n{name} = "{sock}"\n' in text if sock else f"\n{name} = " not in text


def create_inspect_remove(sandbox: PodmanSandbox, driver: str) -> None:
    """``podman volume create`` (v1, with this driver), ``inspect`` and ``rm``: each succeeds."""
    for args in (("create", "--driver", driver, "v1"), ("inspect", "v1"), ("rm", "v1")):
        done = sandbox.run("volume", *args)
        assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def paused(proc: Daemon) -> Iterator[None]:
    """SIGSTOP the daemon: what Podman says before volplugd reacts, deterministically."""
    proc.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.signal(signal.SIGCONT)


@pytest.mark.system
def test_real_daemon_keeps_podman_in_step(podman: PodmanSandbox, short_tmp: Path,
                                          daemon: Callable[..., Daemon]) -> None:
    """The volplugd process lists a discovered plugin for Podman, which uses it; when the
    plugin dies it stays listed while unhealthy, and is dropped once its socket is gone."""
    daemon_landed()
    plugins = short_tmp / "plugins"
    proc = daemon(plugin_dirs=[plugins], config=daemon_config(podman)).start()
    sock = str(plugins / f"{NAME}.sock")
    with FakePlugin(sock) as plugin:
        proc.wait_state(NAME, "ready")
        wait_until(lambda: lists(podman, NAME, sock), 15, message="the drop-in lists it")
        create_inspect_remove(podman, NAME)
        paths = [r.path for r in plugin.requests]
        assert {"/VolumeDriver.Create", "/VolumeDriver.Remove"} <= set(paths)
        plugin.stop(unlink=False)  # dies, leaving its socket: volplugd marks it unhealthy
        proc.wait_state(NAME, "unhealthy")
        assert lists(podman, NAME, sock)
        refused = podman.run("volume", "create", "--driver", NAME, "v2")
        assert refused.stderr.endswith(f"dial unix {sock}: connect: connection refused\n")
    os.unlink(sock)  # the stale socket goes: evicted, and dropped from the drop-in
    # (waited for, so that "listed again" below can only be the new plugin's write)
    wait_until(lambda: lists(podman, NAME, None), 15, message="the stale one dropped")

    with FakePlugin(sock) as plugin:  # a new socket at the path: a new plugin to volplugd
        proc.wait_state(NAME, "ready")
        wait_until(lambda: lists(podman, NAME, sock), 15, message="listed again")
        with paused(proc):
            plugin.stop()  # the socket file goes too
            before = podman.run("volume", "create", "--driver", NAME, "v2")
    assert before.stderr.endswith(f"stat {sock}: no such file or directory\n")
    wait_until(lambda: lists(podman, NAME, None), 15, message="the drop-in drops it")
    after = podman.run("volume", "create", "--driver", NAME, "v2")
    assert after.stderr.endswith(
        f"no volume plugin with name {NAME} available: required plugin missing\n")
    assert proc.stop() == 0
    assert Path(podman.dropin).exists()  # remove_on_stop is off by default


@pytest.fixture
def buttervolume(short_tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """buttervolume (PyPI), a real third-party plugin, on its own loop-mounted btrfs."""
    bv.preconditions()
    workdir = short_tmp / "bv"
    workdir.mkdir()
    (workdir / "venv").symlink_to(bv.venv())
    sock = str(short_tmp / "plugins" / "btrfs.sock")
    with open(short_tmp / "buttervolume.log", "wb") as log_file:
        proc = subprocess.Popen(["bash", str(bv.LAUNCHER), sock, str(workdir)],
                                stdout=log_file, stderr=log_file)
    try:
        yield sock, proc  # the launcher execs buttervolume: proc is the plugin itself
    finally:
        proc.terminate()  # buttervolume unlinks its socket and exits
        proc.wait(30)
        subprocess.run(["umount", str(workdir / "btrfs")], check=False, capture_output=True)


@pytest.mark.system
def test_real_daemon_with_buttervolume(podman: PodmanSandbox, short_tmp: Path,
                                       daemon: Callable[..., Daemon],
                                       buttervolume: tuple[str, subprocess.Popen[bytes]]
                                       ) -> None:
    """buttervolume shows up in Podman through volplugd alone; when it stops, Podman
    names its missing socket until volplugd drops it, then says the plugin is missing."""
    daemon_landed()
    sock, plugin = buttervolume
    proc = daemon(plugin_dirs=[short_tmp / "plugins"], config=daemon_config(podman)).start()
    wait_until(lambda: lists(podman, "btrfs", sock), 60,
               message=f"buttervolume listed; its log:\n{_read(short_tmp / 'buttervolume.log')}")
    create_inspect_remove(podman, "btrfs")
    log = (short_tmp / "buttervolume.log").read_text()
    assert "Request: /VolumeDriver.Create {'Name': 'v1'}" in log
    assert "Request: /VolumeDriver.Remove {'Name': 'v1'}" in log
    assert podman.run("volume", "create", "--driver", "btrfs", "v2").returncode == 0

    with paused(proc):
        plugin.terminate()  # buttervolume unlinks its socket and exits
        plugin.wait(30)
        before = podman.run("volume", "inspect", "v2")
    assert before.returncode == 125
    assert (f'cannot access plugin btrfs socket \\"{sock}\\": stat {sock}: '
            "no such file or directory") in before.stderr
    wait_until(lambda: lists(podman, "btrfs", None), 15, message="the drop-in drops it")
    after = podman.run("volume", "inspect", "v2")
    assert (after.returncode, after.stderr.splitlines()[-1]) == (
        125, "Error: volume v2 uses volume plugin btrfs but it is not available, cannot "
             "inspect: required plugin missing")
    assert "no volume plugin with name btrfs available: required plugin missing" in after.stderr
    assert proc.stop() == 0


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
