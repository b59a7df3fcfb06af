"""Order at boot (issue 23, section 6): the shipped drop-in ``systemd/volplugd-wait.conf``
under the real systemd 252 (``tests/realsystemd.py``), with the real dockerd (Debian
``docker.io``) and Podman's real ``podman-restart.service``.

One container for the module: volplugd is installed with ``make install`` and, before
each test, the drop-in is copied from where ``make install`` puts it into
``/etc/systemd/system/<engine>.d/``, as docs/install.md tells the operator to; every unit
is stopped and every file a test changes is put back. dockerd gets a runtime drop-in of
its own for the container (no iptables, no bridge, vfs, its own data root): a
``--private-network`` container has only ``lo``, and the host's ``/var/lib/docker`` shows
through the overlay.

The slow plugin: its socket file is there when volplugd starts, but nothing listens on it
(a plugin that restarts slowly, its old socket left behind), so volplugd's activations are
refused, it backs off and sends READY=1 with the plugin still activating: ``After=
volplugd.service`` alone would let the engine start then. The plugin listens only once the
test has seen the engine's ``ExecStartPre=`` waiting, so nothing depends on timing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realsystemd import SOURCE, Container, boot

pytestmark = [pytest.mark.system, pytest.mark.timeout(600),
              pytest.mark.xdist_group("realsystemd-boot")]  # one container for the module

REPO = Path(__file__).resolve().parent.parent
SERVICE = "volplugd.service"
SOCKET = "volplugd.socket"
ENGINES = ("docker.service", "podman-restart.service")
SHIPPED = "/opt/volplugd/share/volplugd/systemd/volplugd-wait.conf"
VOLPLUGCTL = "/opt/volplugd/bin/volplugctl"
# What "uninstalled" takes away here (moved aside to <path>.away, and back before each test).
INSTALLED = (VOLPLUGCTL, f"/etc/systemd/system/{SERVICE}", f"/etc/systemd/system/{SOCKET}")
PLUGIN = "/run/docker/plugins/slow.sock"
REFUSED = ("sending request to plugin slow activation endpoint: dial unix "
           "/run/docker/plugins/slow.sock: connect: connection refused")
UNREACHABLE = ("volplugctl: cannot reach volplugd at /run/volplugd/control.sock: No such file "
               "or directory (is volplugd running? set --socket or VOLPLUGD_SOCKET)")
DOCKERD = ("[Service]\nExecStart=\nExecStart=/usr/sbin/dockerd -H fd:// "
           "--containerd=/run/containerd/containerd.sock --iptables=false --bridge=none "
           "--storage-driver=vfs --data-root=/var/lib/docker-nspawn\n")
READY_ACTIVATING = '"event": "volplugd_ready", "activating": 1, "ready": 0,'
FAKE_UNITS = "vp-fake-*.service"
LINE = re.compile(r"^\[\s*[0-9.]+\] \S+ ([^\[:]+)(?:\[\d+\])?: (.*)$")


@pytest.fixture(scope="module")
def box(wheelhouse: Path) -> Iterator[Container]:
    with boot("boot") as container:
        container.install_volplugd(wheelhouse)
        container.add_dropin("docker.service", "nspawn", DOCKERD)
        yield container


@pytest.fixture(autouse=True)
def fresh(box: Container) -> Container:
    """Every unit stopped, volplugd installed with the shipped drop-in, no plugin files."""
    for path in INSTALLED:
        box.sh(f'if [ -e {path}.away ]; then mv {path}.away {path}; fi')
    box.systemctl("daemon-reload")
    box.systemctl("stop", *ENGINES, SERVICE, SOCKET, FAKE_UNITS)
    box.remove("/run/docker/plugins", f"/run/systemd/system/{SERVICE}.d")
    box.run(["mkdir", "-p", "/run/docker/plugins"])
    for engine in ENGINES:
        box.run(["install", "-D", "-m", "0644", SHIPPED,
                 f"/etc/systemd/system/{engine}.d/volplugd-wait.conf"])
    box.systemctl("daemon-reload")
    box.systemctl("reset-failed", check=False)
    return box


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, box: Container) -> str:
    unit: str = request.param
    if not box.path(f"/lib/systemd/system/{unit}").exists():
        package = "docker.io" if unit == "docker.service" else "podman"
        pytest.skip(f"{unit} is not installed (Debian package {package}; make system-deps)")
    return unit


def stale_socket(box: Container) -> None:
    """A socket file nobody listens on: connect() is refused."""
    box.run(["/usr/bin/python3", "-c", "import socket, sys; "
             "socket.socket(socket.AF_UNIX).bind(sys.argv[1])", PLUGIN])


def start_plugin(box: Container) -> None:
    """tests/fakeplugin on the slow plugin's socket (it removes the stale file first)."""
    box.run(["systemd-run", "--unit=vp-fake-slow", f"--property=WorkingDirectory={SOURCE}",
             "/usr/bin/python3", "-m", "tests.fakeplugin", PLUGIN])


def ctl(box: Container, *args: str) -> str:
    return box.run([VOLPLUGCTL, *args]).stdout


def state(box: Container, name: str) -> str | None:
    plugins = {p["name"]: p for p in json.loads(ctl(box, "--json", "ls"))["plugins"]}
    return plugins[name]["state"] if name in plugins else None


def start_pre(box: Container, unit: str) -> str:
    """``code=exited ; status=N`` of the unit's (one) ExecStartPre= that last ran."""
    found = re.search(r"code=\w+ ; status=\d+", box.show(unit, "ExecStartPre"))
    assert found is not None, box.show(unit, "ExecStartPre")
    return found.group(0)


def realtime(box: Container, unit: str, prop: str) -> dt.datetime:
    """A timestamp property of ``unit`` (systemd's realtime clock, microseconds)."""
    text = box.systemctl("show", "--timestamp=us+utc", "-P", prop, unit).stdout.strip()
    return dt.datetime.strptime(text, "%a %Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=dt.UTC)


def messages(box: Container, cursor: str, *units: str) -> list[str]:
    """``identifier: message`` of each journal line (of ``units``) after ``cursor``, in order."""
    box.run(["journalctl", "--sync"], check=False)
    argv = ["journalctl", "--no-pager", "-o", "short-monotonic", "--after-cursor", cursor]
    text = box.run([*argv, *(f"--unit={u}" for u in units)]).stdout
    return [f"{m.group(1)}: {m.group(2)}" for m in map(LINE.match, text.splitlines()) if m]


def engine_answers(box: Container, unit: str) -> None:
    """The engine did its job: dockerd answers its API, podman-restart's ExecStart= ran."""
    if unit == "docker.service":
        assert box.run(["/usr/bin/docker", "version", "--format", "{{.Server.Version}}"]).stdout
    else:
        assert box.show(unit, "ExecMainStatus") == "0"
        assert box.show(unit, "SubState") == "exited"


def test_make_install_ships_the_drop_in(box: Container) -> None:
    """``make install`` (default PREFIX) puts the drop-in where docs/install.md copies it from."""
    assert box.run(["stat", "-c", "%a %U", SHIPPED]).stdout == "644 root\n"
    assert box.run(["cat", SHIPPED]).stdout == (REPO / "systemd/volplugd-wait.conf").read_text()


def test_engine_starts_only_after_a_slow_plugin_is_ready(box: Container, engine: str) -> None:
    """The engine's start (pulling volplugd in by Wants=) holds in ExecStartPre= while the
    plugin is activating, and its main process starts after volplugd's ready event."""
    stale_socket(box)
    box.systemctl("start", SOCKET)
    cursor = box.cursor()
    box.systemctl("start", "--no-block", engine)
    box.wait_for(lambda: box.show(engine, "SubState") == "start-pre",
                 message=f"{engine} in ExecStartPre=")
    # After=: volplugd was up (READY=1) before the engine's start began.
    assert box.show(SERVICE, "ActiveState") == "active"
    assert int(box.show(SERVICE, "ActiveEnterTimestampMonotonic")) <= \
        int(box.show(engine, "InactiveExitTimestampMonotonic"))
    # READY=1 went out with the plugin activating (refused, backing off); volplugd's log
    # line for it may reach the journal a moment after systemd's.
    box.wait_for(lambda: any(READY_ACTIVATING in line for line in messages(box, cursor, SERVICE)),
                 message="volplugd_ready with the plugin activating")
    assert state(box, "slow") == "activating"
    assert box.show(engine, "SubState") == "start-pre"
    assert box.main_pid(engine) == 0
    start_plugin(box)
    box.wait_for(lambda: box.show(engine, "ActiveState") == "active", timeout=90.0,
                 message=f"{engine} active")
    assert start_pre(box, engine) == "code=exited ; status=0"
    ready = [e for e in map(json.loads, ctl(box, "--json", "events").splitlines())
             if e["plugin"] == "slow" and e["to"] == "ready"]
    assert len(ready) == 1, ready
    ready_at = dt.datetime.fromisoformat(ready[0]["time"])  # milliseconds, rounded down
    assert ready_at <= realtime(box, engine, "ExecMainStartTimestamp")
    assert "volplugctl: slow: ready" in messages(box, cursor, engine)
    engine_answers(box, engine)


def edit_copy(box: Container, engine: str, tail: str) -> None:
    """The engine's copy of the drop-in, its ``--timeout 60s`` replaced by ``tail``, as an
    operator edits it (docs/install.md)."""
    text = box.run(["cat", SHIPPED]).stdout
    shipped = f"ExecStartPre=-{VOLPLUGCTL} wait --timeout 60s\n"
    assert text.count(shipped) == 1
    box.write(f"/etc/systemd/system/{engine}.d/volplugd-wait.conf",
              text.replace(shipped, shipped.replace("--timeout 60s", tail)))
    box.systemctl("daemon-reload")


def short_timeout(box: Container, engine: str) -> None:
    edit_copy(box, engine, "--timeout 2s")


def test_a_named_plugin_is_waited_for_before_it_appears(box: Container, engine: str) -> None:
    """With the plugin's name added, the engine waits for a plugin that volplugd does not
    know yet (no socket file at all), and starts once it has appeared and is ready."""
    edit_copy(box, engine, "--timeout 60s slow")
    cursor = box.cursor()
    box.systemctl("start", "--no-block", engine)
    box.wait_for(lambda: box.show(engine, "SubState") == "start-pre",
                 message=f"{engine} in ExecStartPre=")
    assert box.show(SERVICE, "ActiveState") == "active"
    assert state(box, "slow") is None
    assert box.show(engine, "SubState") == "start-pre"
    start_plugin(box)
    box.wait_for(lambda: box.show(engine, "ActiveState") == "active", timeout=90.0,
                 message=f"{engine} active")
    assert start_pre(box, engine) == "code=exited ; status=0"
    assert "volplugctl: slow: ready" in messages(box, cursor, engine)
    engine_answers(box, engine)


def test_timeout_starts_the_engine_anyway(box: Container, engine: str) -> None:
    """A plugin not ready within --timeout: volplugctl exits 1 with the plugin's state on
    stderr, in the engine's journal, and the engine starts all the same ("-")."""
    short_timeout(box, engine)
    stale_socket(box)
    box.systemctl("start", SOCKET)
    cursor = box.cursor()
    box.systemctl("start", engine)
    assert box.show(engine, "ActiveState") == "active"
    assert start_pre(box, engine) == "code=exited ; status=1"
    assert f"volplugctl: volplugctl: timeout: after 2s, plugin slow is activating: {REFUSED}" \
        in messages(box, cursor, engine)
    engine_answers(box, engine)
    # volplugd goes on supervising: the plugin turns ready once it listens.
    start_plugin(box)
    box.wait_for(lambda: state(box, "slow") == "ready", message="slow ready")


def test_unreachable_volplugd_starts_the_engine_at_once(box: Container, engine: str) -> None:
    """volplugd fails to start and no socket unit listens: the engine is started once
    volplugd's start has failed, volplugctl exits 3 at once and the engine starts."""
    box.add_dropin(SERVICE, "broken", "[Service]\nExecStart=\nExecStart=/bin/false\n")
    cursor = box.cursor()
    box.systemctl("start", engine)
    assert box.show(engine, "ActiveState") == "active"
    assert start_pre(box, engine) == "code=exited ; status=3"
    log = messages(box, cursor, engine, SERVICE)
    failed = log.index("systemd: Failed to start volplugd.service - volplugd - supervisor "
                       "for Docker/Podman volume plugins.")
    starting = [n for n, line in enumerate(log) if line.startswith(f"systemd: Starting {engine} ")]
    assert len(starting) == 1, log
    assert failed < starting[0], log
    assert f"volplugctl: {UNREACHABLE}" in log
    engine_answers(box, engine)


def test_mute_volplugd_starts_the_engine_after_the_timeout(box: Container, engine: str) -> None:
    """volplugd fails to start while its socket unit listens (systemd restarts it every
    2 s): the connection waits in the backlog, volplugctl exits 1 after --timeout, and
    the engine starts. (The seconds in the line are what was left of the wait when the
    request was sent, printed with 6 digits: 2, or a hair less.)"""
    short_timeout(box, engine)
    box.add_dropin(SERVICE, "broken", "[Service]\nExecStart=\nExecStart=/bin/false\n")
    box.systemctl("start", SOCKET)
    cursor = box.cursor()
    box.systemctl("start", engine)
    assert box.show(engine, "ActiveState") == "active"
    assert start_pre(box, engine) == "code=exited ; status=1"
    mute = "volplugctl: volplugctl: timeout: volplugd did not answer within 2s"
    assert mute in messages(box, cursor, engine)
    assert box.show(SOCKET, "ActiveState") == "active"
    engine_answers(box, engine)


def test_drop_in_left_after_uninstall(box: Container, engine: str) -> None:
    """volplugd gone (units and volplugctl), the operator's copy of the drop-in left: the
    engine starts, systemd skips the missing volplugctl and says so."""
    for path in INSTALLED:
        box.run(["mv", path, f"{path}.away"])
    box.systemctl("daemon-reload")
    cursor = box.cursor()
    box.systemctl("start", engine)
    assert box.show(engine, "ActiveState") == "active"
    assert start_pre(box, engine) == "code=exited ; status=0"
    missing = f"{engine}: Executable {VOLPLUGCTL} missing, skipping: No such file or directory"
    # Not by unit: systemd logs it from the child, which may be gone before journald
    # looks up its cgroup (then the line has no _SYSTEMD_UNIT=); the line names the unit.
    assert [line for line in messages(box, cursor) if line.endswith(missing)] != []
    engine_answers(box, engine)
