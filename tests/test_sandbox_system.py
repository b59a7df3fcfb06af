"""The installed units under a real systemd 252 as PID 1 (issue 21, section 5).

One container (``tests/realsystemd.py``) is booted for the module, volplugd is installed
in it with ``make install`` and ``volplugd.socket`` is enabled and started. Before each
test the service is stopped and every drop-in, the configuration, plugins and files the
tests made are put back, so no test depends on another.

What is proven here, each by the real systemd: socket activation on the first request,
``READY=1`` (and ``STATUS=``), reload (``RELOADING=1`` ... ``READY=1``), the watchdog
killing a stopped daemon and the restart keeping the listening socket, the descriptor
limit, and the sandbox: what may be written from inside the service's own mount
namespace (``nsenter -t MainPID -m``: a root shell with every capability, so only the
mounts say no), that discovery (inotify) and ``connect()`` to a plugin still work in it,
and the documented drop-in for ``gateway.docker_specs``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realsystemd import SOURCE, Container, boot

pytestmark = [pytest.mark.system, pytest.mark.timeout(600),
              pytest.mark.xdist_group("realsystemd")]  # one container for the module

REPO = Path(__file__).resolve().parent.parent
SERVICE = "volplugd.service"
SOCKET = "volplugd.socket"
CONF = "/etc/volplugd/volplugd.toml"
SHIPPED_CONF = "/opt/volplugd/share/volplugd/volplugd.toml"
DROPINS = ("/run/systemd/system/volplugd.service.d", "/etc/systemd/system/volplugd.service.d")
EROFS = "touch: cannot touch '{}': Read-only file system\n"
LIMIT_NOFILE = 65536
# Folders the tests make in the container (so that each path below exists).
FOLDERS = ("/run/docker/plugins", "/etc/docker/plugins", "/usr/lib/docker/plugins")
FAKE_UNITS = "vp-fake-*.service"
PODMAN_DROPIN = "/etc/containers/containers.conf.d/50-volplugd.conf"


@pytest.fixture(scope="module")
def box(wheelhouse: Path) -> Iterator[Container]:
    with boot("sandbox") as container:
        container.install_volplugd(wheelhouse)
        container.systemctl("enable", "--now", SOCKET)
        yield container


@pytest.fixture(autouse=True)
def fresh(box: Container) -> Container:
    """The service stopped, the shipped unit and configuration, no test plugins."""
    box.systemctl("stop", SERVICE, FAKE_UNITS)
    box.remove(*DROPINS, "/etc/docker/plugins", "/usr/lib/docker/plugins",
               "/run/docker/plugins", "/run/volplugd/gateway", PODMAN_DROPIN)
    box.run(["mkdir", "-p", *FOLDERS])
    box.run(["cp", SHIPPED_CONF, CONF])
    box.systemctl("daemon-reload")
    box.systemctl("reset-failed", check=False)
    box.systemctl("start", SOCKET)
    return box


def ctl(box: Container, *args: str) -> Any:
    """The installed volplugctl's --json answer (it must exit 0)."""
    return json.loads(box.run(["volplugctl", "--json", *args]).stdout)


def start(box: Container) -> int:
    """Start the service (systemctl returns once READY=1 came) and return its MainPID."""
    box.systemctl("start", SERVICE)
    pid = box.main_pid(SERVICE)
    assert pid > 0
    return pid


def touch_inside(box: Container, pid: int, path: str) -> tuple[int, str]:
    """Create and remove ``path`` in the mount namespace of ``pid``: (rc, stderr)."""
    out = box.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c",
                   'touch "$1" && rm "$1"', "sh", path], check=False)
    return out.returncode, out.stderr.replace("sh: 1: ", "")


def fake_plugin(box: Container, name: str, socket_path: str) -> None:
    """tests/fakeplugin (stdlib only) from the source copy, as a transient unit."""
    box.run(["systemd-run", f"--unit=vp-fake-{name}", f"--property=WorkingDirectory={SOURCE}",
             "/usr/bin/python3", "-m", "tests.fakeplugin", socket_path])


def plugin_state(box: Container, name: str) -> str | None:
    plugins = {p["name"]: p for p in ctl(box, "ls")["plugins"]}
    return plugins[name]["state"] if name in plugins else None


# --- systemd's protocols --------------------------------------------------------------

def test_first_request_starts_the_service(box: Container) -> None:
    """With only the socket unit up, a volplugctl request starts volplugd, which answers it."""
    assert box.show(SERVICE, "ActiveState") == "inactive"
    assert box.show(SOCKET, "SubState") == "listening"
    health = ctl(box, "health")
    assert health["status"] == "ok"
    # volplugd may answer a moment before its READY=1 is handled: wait for that, too.
    box.wait_for(lambda: box.show(SERVICE, "ActiveState") == "active",
                 message="the socket-activated service active")
    assert box.show(SERVICE, "SubState") == "running"
    assert box.show(SERVICE, "NRestarts") == "0"
    assert '"event": "volplugd_ready"' in box.journal(SERVICE)


def test_start_returns_once_ready(box: Container) -> None:
    """Type=notify: `systemctl start` returns after READY=1, and STATUS= reached systemd."""
    start(box)
    assert box.show(SERVICE, "ActiveState") == "active"
    box.wait_for(lambda: box.show(SERVICE, "StatusText")
                 == "0 activating, 0 ready, 0 unhealthy, 0 restarting, 0 rejected",
                 message="STATUS=")


def test_reload_rereads_and_keeps_serving(box: Container) -> None:
    """`systemctl reload`: SIGHUP re-reads the configuration (a broken one is reported and
    the old one kept), RELOADING=1 is followed by READY=1 (the unit is active again, not
    left "reloading"), and the same process goes on answering."""
    pid = start(box)
    cursor = box.cursor()
    box.write(CONF, "[discovery\n")
    box.systemctl("reload", SERVICE)
    box.wait_for(lambda: '"event": "config_reload_failed"' in box.journal(SERVICE, cursor=cursor),
                 message="volplugd to report the broken configuration")
    box.wait_for(lambda: box.show(SERVICE, "ActiveState") == "active",
                 message="the service active again after RELOADING=1")
    assert box.main_pid(SERVICE) == pid
    assert ctl(box, "health")["status"] == "ok"
    box.run(["cp", SHIPPED_CONF, CONF])
    cursor = box.cursor()
    box.systemctl("reload", SERVICE)
    box.wait_for(lambda: "Reloaded volplugd.service" in box.journal(SERVICE, cursor=cursor),
                 message="systemd to finish the reload")
    box.wait_for(lambda: box.show(SERVICE, "ActiveState") == "active",
                 message="the service active again after the second reload")
    assert "config_reload_failed" not in box.journal(SERVICE, cursor=cursor)
    assert box.main_pid(SERVICE) == pid
    assert ctl(box, "health")["status"] == "ok"


def test_watchdog_restarts_a_stopped_daemon(box: Container) -> None:
    """A SIGSTOPped volplugd misses its pings: systemd logs the watchdog timeout, kills
    it and restarts it, and the socket unit kept the very listening socket meanwhile."""
    box.add_dropin(SERVICE, "watchdog", "[Service]\nWatchdogSec=3s\n")
    pid = start(box)
    inode = box.run(["stat", "-c", "%i", "/run/volplugd/control.sock"]).stdout
    cursor = box.cursor()
    box.run(["kill", "-STOP", str(pid)])
    box.wait_for(lambda: box.main_pid(SERVICE) not in (0, pid)
                 and box.show(SERVICE, "ActiveState") == "active",
                 message="systemd to restart volplugd")
    log = box.journal(SERVICE, cursor=cursor)
    assert "volplugd.service: Watchdog timeout (limit 3s)!" in log
    assert "volplugd.service: Killing process " in log
    assert box.show(SERVICE, "NRestarts") == "1"
    assert box.show(SOCKET, "SubState") in ("running", "listening")
    assert box.run(["stat", "-c", "%i", "/run/volplugd/control.sock"]).stdout == inode
    assert ctl(box, "health")["status"] == "ok"


def test_without_the_socket_unit_volplugd_binds_its_own(box: Container) -> None:
    """With volplugd.socket stopped, volplugd binds /run/volplugd/control.sock itself in
    the sandbox (the writable RuntimeDirectory= under the read-only /run) and serves it."""
    box.systemctl("stop", SOCKET)
    assert box.run(["test", "-e", "/run/volplugd/control.sock"], check=False).returncode == 1
    start(box)
    assert box.show(SOCKET, "ActiveState") == "inactive"
    assert ctl(box, "health")["status"] == "ok"
    assert box.run(["stat", "-c", "%F %U", "/run/volplugd/control.sock"]).stdout == \
        "socket root\n"
    box.systemctl("stop", SERVICE)
    assert box.run(["test", "-e", "/run/volplugd/control.sock"], check=False).returncode == 1


def test_descriptor_limit(box: Container) -> None:
    """LimitNOFILE=65536 (soft = hard) reaches the running service. systemd clamps it to
    its own hard limit where it may not raise that (no CAP_SYS_RESOURCE: this machine's
    20000): soft = hard still holds, not systemd's default soft 1024."""
    assert box.show(SERVICE, "LimitNOFILE") == str(LIMIT_NOFILE)
    pid = start(box)
    ceiling = _open_files(box.run(["cat", "/proc/1/limits"]).stdout)[1]
    soft, hard = _open_files(box.run(["cat", f"/proc/{pid}/limits"]).stdout)
    assert (soft, hard) == (min(LIMIT_NOFILE, ceiling),) * 2


def _open_files(limits: str) -> tuple[int, int]:
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert match is not None, limits
    return int(match.group(1)), int(match.group(2))


# --- the sandbox ------------------------------------------------------------------------

WRITABLE = ("/run/volplugd/probe", "/etc/containers/containers.conf.d/probe",
            "/tmp/probe", "/var/tmp/probe")  # the last two: PrivateTmp=, private
READ_ONLY = ("/run/probe", "/run/docker/plugins/probe", "/run/systemd/probe",
             "/run/user/probe", "/etc/probe", "/etc/volplugd/probe",
             "/etc/docker/plugins/probe", "/etc/systemd/system/probe",
             "/usr/probe", "/usr/lib/docker/plugins/probe", "/opt/volplugd/probe",
             "/var/probe", "/home/probe", "/root/probe")


@pytest.mark.parametrize("path", WRITABLE)
def test_service_may_write(box: Container, path: str) -> None:
    """In the service's mount namespace these paths are writable."""
    assert touch_inside(box, start(box), path) == (0, "")


@pytest.mark.parametrize("path", READ_ONLY)
def test_service_may_not_write(box: Container, path: str) -> None:
    """In the service's mount namespace these are read-only mounts (root with every
    capability gets EROFS), /run and the plugin folders included."""
    assert touch_inside(box, start(box), path) == (1, EROFS.format(path))


def test_every_writable_mount_is_known(box: Container) -> None:
    """Every mount the service sees writable is one of these, so nothing else in its
    namespace can be written. (/run/host is nspawn's own, absent on a real host; which
    /dev mounts exist depends on the machine.)"""
    pid = start(box)
    mounts = box.run(["nsenter", "-t", str(pid), "-m", "--", "findmnt", "-rn", "-o",
                      "TARGET,OPTIONS"]).stdout.splitlines()
    writable = {m.split(" ")[0] for m in mounts if m.split(" ")[1].split(",")[0] == "rw"}
    writable = {m for m in writable if not m.startswith("/run/host/")}
    assert {"/run/volplugd", "/etc/containers/containers.conf.d"} <= writable
    assert writable - {"/run/volplugd", "/etc/containers/containers.conf.d", "/tmp",
                       "/var/tmp", "/proc", "/dev/pts", "/dev/shm", "/dev/mqueue",
                       "/dev/hugepages"} == set()


def test_inotify_and_connect_work_in_the_sandbox(box: Container) -> None:
    """A plugin that appears in /run/docker/plugins after the start is discovered (by
    inotify: the periodic rescan is an hour away) and probed ready (connect() and HTTP
    through the read-only mount)."""
    box.run(["sed", "-i", "s/^rescan_interval = .*/rescan_interval = 3600.0/", CONF])
    start(box)
    assert ctl(box, "ls")["plugins"] == []
    fake_plugin(box, "inotify", "/run/docker/plugins/sbx.sock")
    box.wait_for(lambda: plugin_state(box, "sbx") == "ready", message="sbx ready")
    assert box.run(["volplugctl", "probe", "sbx"]).returncode == 0


def _docs_dropin(heading: str, doc: str = "docs/install.md") -> str:
    """The first ```ini block after ``heading`` in ``doc``."""
    text = (REPO / doc).read_text()
    after = text[text.index(heading):]
    match = re.search(r"```ini\n(.*?)```", after, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_enabled_features_write_their_folders(box: Container) -> None:
    """With the gateway, Docker spec files and the Podman drop-in enabled, and the drop-in
    from docs/install.md: /etc/docker/plugins is created and writable, volplugd writes a
    spec file there and the Podman drop-in, serves the gateway socket in
    /run/volplugd/gateway, and /run, /run/docker/plugins and /etc stay read-only."""
    box.remove("/etc/docker/plugins")
    box.add_dropin(SERVICE, "docker-specs", _docs_dropin("### Docker spec files"),
                   runtime=False)
    box.run(["sed", "-i", "-e", "/^\\[gateway\\]/,$ s/^enabled = false/enabled = true/",
             "-e", "s/^docker_specs = false/docker_specs = true/",
             "-e", "/^\\[podman\\]/,/^\\[/ s/^enabled = false/enabled = true/", CONF])
    fake_plugin(box, "specs", "/usr/lib/docker/plugins/sbx.sock")
    box.wait_for(lambda: box.run(["test", "-S", "/usr/lib/docker/plugins/sbx.sock"],
                                 check=False).returncode == 0, message="the fake plugin")
    cursor = box.cursor()
    pid = start(box)
    for path in ("/etc/docker/plugins/probe", "/run/volplugd/gateway/probe"):
        assert touch_inside(box, pid, path) == (0, ""), path
    for path in ("/run/probe", "/run/docker/plugins/probe", "/etc/probe"):
        assert touch_inside(box, pid, path) == (1, EROFS.format(path)), path
    box.wait_for(lambda: box.run(["test", "-f", "/etc/docker/plugins/sbx.json"],
                                 check=False).returncode == 0, message="sbx.json written")
    assert "/run/volplugd/gateway/sbx.sock" in box.run(
        ["cat", "/etc/docker/plugins/sbx.json"]).stdout
    assert box.run(["test", "-S", "/run/volplugd/gateway/sbx.sock"], check=False).returncode == 0
    box.wait_for(lambda: "sbx" in box.run(
        ["cat", PODMAN_DROPIN], check=False).stdout,
        message="the Podman drop-in naming sbx")
    assert "Read-only file system" not in box.journal(SERVICE, cursor=cursor)


def test_stale_sockets_need_the_documented_dropin(box: Container) -> None:
    """``discovery.remove_stale_after`` under the shipped unit: /run is read-only, so a
    dead plugin's socket is kept with one exact line; with the drop-in from
    docs/supervision.md it is removed (event, log line) and /run stays read-only."""
    path = "/run/docker/plugins/gone.sock"
    box.run(["sed", "-i", 's/^# remove_stale_after = "2m"/remove_stale_after = 1/', CONF])

    def killed_plugin() -> None:
        box.systemctl("reset-failed", "vp-fake-gone.service", check=False)  # killed before
        fake_plugin(box, "gone", path)
        box.wait_for(lambda: plugin_state(box, "gone") == "ready", message="gone ready")
        box.systemctl("kill", "--signal=SIGKILL", "vp-fake-gone.service")
        box.wait_for(lambda: plugin_state(box, "gone") == "unhealthy",
                     message="gone unhealthy")

    cursor = box.cursor()
    start(box)
    killed_plugin()
    kept = '"event": "stale_socket_kept"'
    box.wait_for(lambda: kept in box.journal(SERVICE, cursor=cursor),
                 message="the socket kept on a read-only /run")
    line = next(x for x in box.journal(SERVICE, cursor=cursor).splitlines() if kept in x)
    assert '"reason": "Read-only file system"' in line
    assert box.run(["test", "-S", path], check=False).returncode == 0
    assert plugin_state(box, "gone") == "unhealthy"

    box.systemctl("stop", SERVICE)
    box.remove(path)
    box.add_dropin(SERVICE, "stale-sockets",
                   _docs_dropin("**Under volplugd.service.**", "docs/supervision.md"),
                   runtime=False)
    cursor = box.cursor()
    pid = start(box)
    killed_plugin()
    box.wait_for(lambda: plugin_state(box, "gone") is None, message="the stale socket gone")
    assert box.run(["test", "-e", path], check=False).returncode == 1
    log = box.journal(SERVICE, cursor=cursor)
    assert '"event": "stale_socket_removed"' in log
    assert kept not in log
    events = [e["type"] for e in map(json.loads, box.run(
        ["volplugctl", "--json", "events"]).stdout.splitlines()) if e["plugin"] == "gone"]
    assert events[-2:] == ["stale_socket_removed", "evicted"]
    assert touch_inside(box, pid, "/run/probe") == (1, EROFS.format("/run/probe"))
    assert ctl(box, "health")["status"] == "ok"
