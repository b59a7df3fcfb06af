"""Root's own folders in the real daemon: a symlink planted at every path volplugd writes
changes nothing it points at and gets its exact outcome; folders volplugd may not write in
stop the start with one line; untrusted plugins and sockets nobody listens on get no
gateway socket and no spec file. The daemon keeps serving everyone else throughout."""

from __future__ import annotations

import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import configs
from tests.fakeplugin import FakePlugin
from tests.harness import Daemon
from tests.test_gateway import Client
from tests.test_safe_folders import REFUSED, _nobodys_folder
from tests.waiting import wait_until
from volplugd.discovery.scan import GATEWAY_MARK
from volplugd.gateway.server import MARK_TEXT
from volplugd.safefs import temp_name
from volplugd.unixsocket import staging_name

pytestmark = pytest.mark.system

DROPIN = "50-volplugd.conf"


def _config(tmp: Path, *, podman: bool = True) -> str:
    return configs.gateway(tmp, specs="specs", dropin=f"conf.d/{DROPIN}" if podman else None)


class Secret:
    """A root-only file that planted symlinks point at: it must never change."""

    def __init__(self, root: Path) -> None:
        self.path = root / "secret"
        self.path.write_bytes(b"root only\n")
        self.path.chmod(0o600)
        self.before = self.path.stat()

    def plant(self, at: Path) -> Path:
        at.symlink_to(self.path)
        return at

    def untouched(self) -> bool:
        st = self.path.stat()
        return (self.path.read_bytes() == b"root only\n" and stat.S_IMODE(st.st_mode) == 0o600
                and (st.st_ino, st.st_mtime_ns) == (self.before.st_ino, self.before.st_mtime_ns))


def _events(d: Daemon, event: str) -> list[dict[str, object]]:
    return [e for e in d.log_events() if e.get("event") == event]


def _probed_twice_more(d: Daemon, name: str) -> None:
    """Wait until ``name`` was probed twice more: new snapshots reached the gateway."""
    seen = {d.plugins()[name]["last_probe_at"]}
    wait_until(lambda: (seen.add(d.plugins()[name]["last_probe_at"]), len(seen) >= 3)[1],
               message=f"two more probes of {name}")


def test_symlinks_at_every_path_volplugd_writes_change_nothing_they_point_at(
        daemon: Callable[..., Daemon], short_tmp: Path,
        fakes_at: Callable[[Path], FakePlugin]) -> None:
    """The mark and its temp name, a gateway socket and a staging name, a spec file and a
    spec temp name, the drop-in's temp name, the control socket's staging name: each holds
    a symlink to a root-only file at start. Names volplugd replaces (the mark, temp and
    staging names) end as its own files; a gateway socket or spec file that is a link is
    left alone with one log line; the secret never changes and everyone else is served."""
    secret = Secret(short_tmp)
    for folder in ("gw", "specs", "conf.d", "plugins"):
        (short_tmp / folder).mkdir(mode=0o755)
    gw, specs = short_tmp / "gw", short_tmp / "specs"
    planted = [secret.plant(at) for at in (
        gw / GATEWAY_MARK, gw / temp_name(GATEWAY_MARK), gw / "a.sock",
        gw / staging_name("b.sock"), specs / "b.json", specs / temp_name("c.json"),
        short_tmp / "conf.d" / temp_name(DROPIN), short_tmp / staging_name("control.sock"))]
    for name in ("a", "b", "c"):
        fakes_at(short_tmp / "plugins" / f"{name}.sock")
    d = daemon(config=_config(short_tmp)).start()
    for name in ("a", "b", "c"):
        d.wait_state(name, "ready")
    wait_until(lambda: (gw / "b.sock").exists() and (gw / "c.sock").exists(),
               message="the gateway sockets of b and c")
    wait_until(lambda: (specs / "c.json").is_file() and not (specs / "c.json").is_symlink(),
               message="c's spec file")
    wait_until((short_tmp / "conf.d" / DROPIN).is_file, message="the drop-in")
    _probed_twice_more(d, "b")

    assert secret.untouched()
    assert (gw / GATEWAY_MARK).read_bytes() == MARK_TEXT
    assert not (gw / GATEWAY_MARK).is_symlink()
    assert (gw / "a.sock").is_symlink()
    assert (specs / "b.json").is_symlink()
    assert sorted(p.name for p in gw.iterdir()) == [GATEWAY_MARK, "a.sock", "b.sock", "c.sock"]
    assert sorted(p.name for p in specs.iterdir()) == ["b.json", "c.json"]
    assert sorted(p.name for p in (short_tmp / "conf.d").iterdir()) == [DROPIN]
    assert [p for p in planted if p.is_symlink()] == [gw / "a.sock", specs / "b.json"]
    assert [(e["plugin"], e["error"]) for e in _events(d, "gateway_socket_failed")] == [
        ("a", f"[Errno 17] exists and is not a socket; not replacing it: '{gw}/a.sock'")]
    assert [(e["plugin"], e["reason"]) for e in _events(d, "docker_spec_left")] == [
        ("b", f"{specs}/b.json was not written by volplugd; not overwriting it")]
    client = Client(str(gw / "b.sock"))
    assert client.post("/Plugin.Activate")[0] == 200
    client.close()
    assert d.get("/v1/health")["status"] == "ok"
    assert d.stop() == 0
    assert secret.untouched()


def test_a_symlink_at_the_control_socket_stops_the_start_with_one_line(
        daemon: Callable[..., Daemon], short_tmp: Path) -> None:
    secret = Secret(short_tmp)
    secret.plant(short_tmp / "control.sock")
    d = daemon().start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1
    assert [e["error"] for e in _events(d, "startup_failed")] == [
        f"[Errno 17] exists and is not a socket; not replacing it: '{short_tmp}/control.sock'"]
    assert secret.untouched()


def test_a_symlink_at_the_dropin_is_left_and_logged_once_and_the_daemon_serves(
        daemon: Callable[..., Daemon], short_tmp: Path,
        fakes_at: Callable[[Path], FakePlugin]) -> None:
    secret = Secret(short_tmp)
    (short_tmp / "conf.d").mkdir(mode=0o755)
    dropin = secret.plant(short_tmp / "conf.d" / DROPIN)
    (short_tmp / "plugins").mkdir()
    fakes_at(short_tmp / "plugins" / "p.sock")
    d = daemon(args=["--podman-dropin", str(dropin)],
               config="[probe]\ninterval = 0.2\ntimeout = 0.2\n").start()
    d.wait_state("p", "ready")
    _probed_twice_more(d, "p")
    assert [e["error"] for e in _events(d, "podman_dropin_failed")] == [
        f"ForeignFileError: {dropin} was not generated by volplugd; not overwriting it"]
    assert dropin.is_symlink()
    assert secret.untouched()
    assert d.get("/v1/health")["status"] == "ok"


@pytest.mark.parametrize("case", ["others", "other user", "control others", "symlink"])
def test_the_daemon_refuses_to_start_in_a_folder_it_may_not_write_in(
        daemon: Callable[..., Daemon], short_tmp: Path, case: str) -> None:
    """The same one line and status as any config error, before anything is written."""
    folder = short_tmp / "open"
    folder.mkdir()
    folder.chmod(0o777)
    if case == "other user":
        folder = _nobodys_folder(short_tmp)
        why = f"{folder} is owned by uid 65534, not root"
    elif case == "symlink":
        (short_tmp / "real").mkdir(mode=0o755)
        folder = short_tmp / "link"
        folder.symlink_to(short_tmp / "real")
        why = f"{folder} is a symlink, not a real folder"
    else:
        why = f"{folder} is writable by group and others (mode 0777)"
    if case == "control others":
        d = daemon()
        d.socket = str(folder / "control.sock")
        key = "control.socket"
    else:
        d = daemon(config=f'[gateway]\nenabled = true\ndir = "{folder}"\n')
        key = "gateway.dir"
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 2
    assert d.log() == f"volplugd: config error: {key}: {why}: {REFUSED}\n"
    assert sorted(p.name for p in folder.iterdir()) == []


def test_untrusted_plugins_get_no_gateway_socket_and_no_spec_file(
        daemon: Callable[..., Daemon], short_tmp: Path,
        fakes_at: Callable[[Path], FakePlugin]) -> None:
    trusted, shady = short_tmp / "plugins", short_tmp / "shady"
    trusted.mkdir(mode=0o755)
    shady.mkdir(mode=0o755)
    shady.chmod(0o757)
    fakes_at(trusted / "good.sock")
    fakes_at(shady / "bad.sock")
    d = daemon(config=_config(short_tmp, podman=False), plugin_dirs=[trusted, shady]).start()
    d.wait_state("good", "ready")
    assert d.wait_state("bad", "ready")["warnings"] == [
        f"untrusted: {shady} is writable by others (mode 0757)"]
    wait_until((short_tmp / "specs" / "good.json").exists, message="good's spec file")
    left = wait_until(lambda: _events(d, "gateway_plugin_left_out"), message="bad left out")
    _probed_twice_more(d, "bad")
    assert [(e["plugin"], e["reason"]) for e in left] == [
        ("bad", f"untrusted: {shady} is writable by others (mode 0757)")]
    assert sorted(p.name for p in (short_tmp / "gw").iterdir()) == [GATEWAY_MARK, "good.sock"]
    assert sorted(p.name for p in (short_tmp / "specs").iterdir()) == ["good.json"]
    assert d.get("/v1/health")["status"] == "ok"


def test_sockets_nobody_listens_on_get_no_gateway_socket(
        daemon: Callable[..., Daemon], short_tmp: Path,
        fakes_at: Callable[[Path], FakePlugin]) -> None:
    """300 stale socket files (bound once, nobody listening) cost no gateway socket and
    one log line each; the plugin that listens is served through the gateway."""
    plugins = short_tmp / "plugins"
    plugins.mkdir(mode=0o755)
    for i in range(300):
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(str(plugins / f"stale{i}.sock"))
    fakes_at(plugins / "live.sock")
    d = daemon(config=_config(short_tmp, podman=False)).start()
    d.wait_state("live", "ready")
    wait_until((short_tmp / "gw" / "live.sock").exists, message="live's gateway socket")
    wait_until(lambda: len(_events(d, "gateway_plugin_left_out")) >= 300,
               message="300 stale sockets left out")
    _probed_twice_more(d, "live")
    left = _events(d, "gateway_plugin_left_out")
    assert sorted(str(e["plugin"]) for e in left) == sorted(f"stale{i}" for i in range(300))
    assert {e["reason"] for e in left} == {"nobody listens on its socket"}
    assert sorted(p.name for p in (short_tmp / "gw").iterdir()) == [GATEWAY_MARK, "live.sock"]
    assert {p["state"] for n, p in d.plugins().items() if n != "live"} == {"activating"}
    client = Client(str(short_tmp / "gw" / "live.sock"))
    assert client.post("/Plugin.Activate")[0] == 200
    client.close()
