"""buttervolume 3.13 (PyPI, a real third-party plugin) restarted by the installed volplugd
under the real systemd 252 as PID 1 (nspawn, tests/realsystemd.py), with its volumes on
a real btrfs.

buttervolume runs as the service ``vp-butter.service`` (``Restart=no``: systemd never
restarts it by itself) on ``/run/docker/plugins/btrfs.sock``; volplugd (its shipped
sandboxed unit, restarts and the gateway on) shows it ``ready`` with that unit. ``kill
-9`` of its main process → volplugd restarts the unit over the system bus → ``ready``
again → a volume created through volplugd's gateway socket, as Docker would, is a btrfs
subvolume.

What it took, found here (docs/supervision.md, "buttervolume under the real systemd"):

* **btrfs.** The container may open no block device (nspawn's device policy: inside,
  ``losetup -f`` says "cannot find an unused loop device: No such device"), and its
  overlay of ``/`` does not show what is mounted below the host's ``/``. So the image is
  loop-mounted on the host (``tests.buttervolume.loop_btrfs``) and shown inside at
  ``/srv/vp-btrfs`` with ``boot(binds=...)`` (nspawn ``--bind=``). That is simpler than
  allowing the device (a ``DeviceAllow=`` for nspawn's scope needs a systemd on the host,
  and the node would have to be made inside), and the host sees the very file system:
  the subvolumes are listed there, and it is unmounted and its loop device detached
  after the container is gone.
* **The venv.** ``/var/tmp/volplugd-test-buttervolume-3.13`` is on the host's root file
  system, so the overlay shows it (it is made before the boot); its ``python3`` links to
  the host's pyenv interpreter under ``/root``, which the overlay shows too. The plugin's
  unit has no sandbox (no ``ProtectHome=``), so it runs as it is.
* **Docker at import.** When its socket does not exist yet (its first start, and each
  start after a clean stop), buttervolume runs ``docker plugin inspect``. The container
  has the host's docker CLI and ``docker.socket`` listening (``basic.target`` pulls in
  ``sockets.target``): that first start socket-activated a whole dockerd inside. The
  unit points ``DOCKER_HOST`` at a socket nobody listens on, and the tests check that
  ``docker.service`` stays inactive.
* **Its socket after ``kill -9``.** The file stays; volplugd's first activation after
  the restart job is refused and tried again. The restarted buttervolume removes the
  stale file itself (it logs ``Removed stale socket: PATH``) and binds again: nothing of
  volplugd's stale-socket removal is needed. The removal and the new bind are about 1 ms
  apart. A ``restarting`` plugin whose file goes is kept (not evicted), so the new
  socket replaces it whether or not the watcher saw the file gone in between; its
  gateway socket stays all along (``assert_moves``).
* **An admin's restart.** systemd's SIGTERM makes buttervolume remove its socket and
  exit 0; the new one binds ~0.35 s later. Before volplugd kept a ``restarting`` plugin
  whose file goes, the plugin left the registry meanwhile and its gateway socket with
  it (57 of 85 connects, 5 ms apart, failed with ENOENT); the last test proves that
  every connect now succeeds.

One container and one btrfs for the module; each test stops the units and volplugd and
deletes the subvolumes first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import buttervolume
from tests.installed import (
    CONF,
    GATEWAY,
    PLUGINS,
    SERVICE,
    config,
    ctl,
    events,
    gateway_answers,
    gateway_post,
    logged,
    plugin,
    ready_as,
    restart_ended,
    restart_events,
    restart_samples,
    start_volplugd,
)
from tests.realsystemd import PYTHON, Container, boot

pytestmark = [pytest.mark.system, pytest.mark.peer, pytest.mark.timeout(600),
              pytest.mark.xdist_group("realsystemd-buttervolume")]  # one container

NAME = "btrfs"
UNIT = "vp-butter.service"
SOCK = f"{PLUGINS}/{NAME}.sock"
BTRFS = "/srv/vp-btrfs"  # the host's loop-mounted btrfs, inside
VENV = buttervolume.VENV
COMMAND = f"{VENV}/bin/python3 {VENV}/bin/buttervolume run"  # its /proc/PID/cmdline
REFUSED = (f"sending request to plugin {NAME} activation endpoint: dial unix {SOCK}: "
           "connect: connection refused")
SERVICE_TEXT = f"""\
[Unit]
Description=buttervolume {buttervolume.VERSION}, volumes on the btrfs at {BTRFS}

[Service]
Restart=no
RuntimeDirectory=vp-butter
Environment=BUTTERVOLUME_SOCKET={SOCK}
Environment=BUTTERVOLUME_VOLUMES_PATH={BTRFS}/volumes/
Environment=BUTTERVOLUME_SNAPSHOTS_PATH={BTRFS}/snapshots/
Environment=BUTTERVOLUME_SCHEDULE=/run/vp-butter/schedule.csv
Environment=BUTTERVOLUME_TIMER=3600
Environment=BUTTERVOLUME_LOGLEVEL=DEBUG
Environment=PYTHONUNBUFFERED=1
Environment=DOCKER_HOST=unix:///run/vp-butter/no-docker.sock
ExecStart={VENV}/bin/buttervolume run
"""

# Connects to a unix socket every 5 ms (and closes at once), the last time after STOP
# exists; then writes each attempt's outcome to OUT, in order: "ok" or the errno's name.
KNOCK = """\
import errno, json, os, socket, sys, time
path, out, stop = sys.argv[1:4]
seen = []
while True:
    last = os.path.exists(stop)
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            seen.append("ok")
        except OSError as err:
            seen.append(errno.errorcode.get(err.errno, str(err.errno)))
    if last:
        break
    time.sleep(0.005)
with open(out + ".new", "w") as f:
    json.dump(seen, f)
os.rename(out + ".new", out)
"""


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The host's mount point of the module's btrfs (venv made first: the overlay must
    show it)."""
    buttervolume.preconditions()
    buttervolume.venv()
    with buttervolume.loop_btrfs(tmp_path_factory.mktemp("btrfs")) as mount:
        yield mount


@pytest.fixture(scope="module")
def box(wheelhouse: Path, btrfs: Path) -> Iterator[Container]:
    with boot("butter", binds=[(btrfs, BTRFS)]) as container:
        container.install_volplugd(wheelhouse)
        container.add_unit(UNIT, SERVICE_TEXT)
        container.write("/usr/local/lib/vp-knock.py", KNOCK)
        yield container


@pytest.fixture(autouse=True)
def fresh(box: Container, btrfs: Path) -> Container:
    """volplugd and buttervolume stopped, no plugin sockets, no subvolumes."""
    box.systemctl("stop", SERVICE, UNIT, "vp-knock.service", check=False)
    box.systemctl("reset-failed", check=False)
    box.remove(PLUGINS, "/run/vp-knock.json", "/run/vp-knock.stop")
    box.run(["mkdir", "-p", PLUGINS])
    box.write(CONF, config([UNIT]))
    buttervolume.delete_subvolumes(btrfs, buttervolume.subvolumes(btrfs))
    return box


def test_killed_buttervolume_is_restarted_by_volplugd_and_makes_a_subvolume(
        box: Container, btrfs: Path) -> None:
    """kill -9 of buttervolume's main process: volplugd restarts vp-butter.service over
    the bus (NRestarts stays 0: not systemd's own restart; a new ExecMainPID and
    invocation), buttervolume removes its stale socket and binds again, the plugin is
    ready with its new process, and a volume created through the gateway is a new btrfs
    subvolume beside the one made before the kill."""
    box.systemctl("start", UNIT)
    start_volplugd(box)
    before = ready_as(box, NAME, UNIT)
    old = box.main_pid(UNIT)
    assert (before["process"]["pid"], before["process"]["command"]) == (old, COMMAND)
    assert box.show("docker.service", "ActiveState") == "inactive"  # DOCKER_HOST held
    assert gateway_post(box, NAME, "VolumeDriver.Create",
                        {"Name": "before-kill", "Opts": {}}) == {"Err": ""}
    invocation = box.show(UNIT, "InvocationID")
    seen = max(e["seq"] for e in events(box, NAME))
    cursor = box.cursor()
    box.run(["kill", "-9", str(old)])

    view = restart_ended(box, NAME)
    new = box.main_pid(UNIT)
    assert new not in (0, old)
    assert (box.show(UNIT, "NRestarts"), box.show(UNIT, "ExecMainPID")) == ("0", str(new))
    assert box.show(UNIT, "InvocationID") not in ("", invocation)
    assert (view["restart"]["target"], view["restart"]["error"], view["restart"]["recent"],
            view["restart"]["given_up"]) == (f"unit {UNIT}", None, 1, False)
    assert restart_events(box, NAME) == [("restart_started", f"unit {UNIT}"),
                                         ("restart_done", "done: ready again")]
    # restarting keeps the last error: that the process exited or, when a regular probe
    # of the stale socket came first, that it refused
    exited = f"process {old} ({COMMAND}) exited"
    after = [e for e in events(box, NAME) if e["seq"] > seen]
    last = after[1]["reason"] if len(after) > 1 else None
    assert last in (exited, REFUSED), after
    assert_moves(box, after, [("state_changed", "ready", "unhealthy", exited),
                              ("state_changed", "unhealthy", "restarting", last)], cursor)
    started = logged(box, "plugin_restart_started", cursor)
    assert [(e["plugin"], e["target"], e["reason"], e["recent"]) for e in started] == [
        (NAME, f"unit {UNIT}", last, 1)]
    jobs = logged(box, "plugin_restart_job_ended", cursor)
    assert [(j["plugin"], j["outcome"]) for j in jobs] == [(NAME, "done")]
    assert jobs[0]["detail"].startswith(f"restart {UNIT}: job /org/freedesktop/systemd1/job/")
    journal = box.journal(UNIT, cursor=cursor)
    assert journal.count(f"{UNIT}: Main process exited, code=killed, status=9/KILL") == 1
    assert journal.count(f"INFO:root:Removed stale socket: {SOCK}") == 1
    assert journal.count(f"INFO:waitress:Serving on http://unix:{SOCK}") == 1
    assert box.show("docker.service", "ActiveState") == "inactive"

    box.wait_for(lambda: ((plugin(box, NAME) or {}).get("process") or {}).get("pid") == new,
                 message="the new process identified")
    gateway_answers(box, NAME)
    assert gateway_post(box, NAME, "VolumeDriver.Create",
                        {"Name": "after-restart", "Opts": {}}) == {"Err": ""}
    assert gateway_post(box, NAME, "VolumeDriver.Get", {"Name": "after-restart"}) == {
        "Volume": {"Name": "after-restart", "Mountpoint": f"{BTRFS}/volumes/after-restart"},
        "Err": ""}
    listed = gateway_post(box, NAME, "VolumeDriver.List", {})
    assert (sorted(v["Name"] for v in listed["Volumes"]), listed["Err"]) == (
        ["after-restart", "before-kill"], "")
    assert buttervolume.subvolumes(btrfs) == ["volumes/after-restart", "volumes/before-kill"]
    samples = restart_samples(box)
    assert {s: v for s, v in samples.items() if v != "0"} == {
        f'volplugd_plugin_restarts_total{{plugin="{NAME}",outcome="done"}}': "1"}
    assert samples[f'volplugd_plugin_restart_given_up{{plugin="{NAME}"}}'] == "0"


def test_an_admins_restart_stops_buttervolume_cleanly_and_it_comes_back(
        box: Container, btrfs: Path) -> None:
    """``volplugctl restart``: systemd stops buttervolume with SIGTERM, which removes its
    socket and exits 0, and starts it again; it is ready again with its volumes, and the
    restarted buttervolume (its socket absent at import) asked no dockerd."""
    box.systemctl("start", UNIT)
    start_volplugd(box)
    ready_as(box, NAME, UNIT)
    old = box.main_pid(UNIT)
    assert gateway_post(box, NAME, "VolumeDriver.Create",
                        {"Name": "kept", "Opts": {}}) == {"Err": ""}
    seen = max(e["seq"] for e in events(box, NAME))
    cursor = box.cursor()
    assert ctl(box, "restart", NAME)["state"] == "restarting"

    view = restart_ended(box, NAME)
    assert (view["restart"]["target"], view["restart"]["error"], view["restart"]["recent"]) \
        == (f"unit {UNIT}", None, 1)
    assert_moves(box, [e for e in events(box, NAME) if e["seq"] > seen],
                 [("state_changed", "ready", "restarting", "ok")], cursor)
    assert [(e["plugin"], e["target"]) for e in logged(box, "plugin_restart_requested",
                                                       cursor)] == [(NAME, f"unit {UNIT}")]
    journal = box.journal(UNIT, cursor=cursor)
    for line in ("INFO:root:Shutting down buttervolume...",
                 f"INFO:root:Cleaned up socket: {SOCK}", f"{UNIT}: Deactivated successfully.",
                 f"INFO:waitress:Serving on http://unix:{SOCK}"):
        assert journal.count(line) == 1, (line, journal)
    assert "Removed stale socket" not in journal
    assert box.main_pid(UNIT) not in (0, old)
    assert box.show("docker.service", "ActiveState") == "inactive"
    gateway_answers(box, NAME)
    assert gateway_post(box, NAME, "VolumeDriver.Create",
                        {"Name": "new", "Opts": {}}) == {"Err": ""}
    listed = gateway_post(box, NAME, "VolumeDriver.List", {})
    assert sorted(v["Name"] for v in listed["Volumes"]) == ["kept", "new"]
    assert buttervolume.subvolumes(btrfs) == ["volumes/kept", "volumes/new"]


def test_the_gateway_socket_stays_while_buttervolume_restarts(box: Container) -> None:
    """docs/gateway.md's promise for a ``restarting`` plugin: Docker and Podman never see
    it vanish. Connects to its gateway socket every 5 ms, from before an admin's restart
    until after it is done (buttervolume removes its socket as it stops and binds a new
    one ~0.35 s later): every one succeeds."""
    box.systemctl("start", UNIT)
    start_volplugd(box)
    ready_as(box, NAME, UNIT)
    box.run(["systemd-run", "--unit=vp-knock", PYTHON, "/usr/local/lib/vp-knock.py",
             f"{GATEWAY}/{NAME}.sock", "/run/vp-knock.json", "/run/vp-knock.stop"])
    assert ctl(box, "restart", NAME)["state"] == "restarting"
    restart_ended(box, NAME)
    gateway_answers(box, NAME)
    box.write("/run/vp-knock.stop", "")
    box.wait_for(lambda: box.run(["test", "-e", "/run/vp-knock.json"], check=False)
                 .returncode == 0, message="the knocks written")
    knocks = json.loads(box.run(["cat", "/run/vp-knock.json"]).stdout)
    assert len(knocks) > 1
    assert [k for k in knocks if k != "ok"] == []


def assert_moves(box: Container, after: list[dict[str, Any]],
                 before: list[tuple[str, str | None, str | None, str]], cursor: str) -> None:
    """The plugin's events ``after`` the restart was caused, exactly: ``before`` (its way
    to ``restarting``, whose reason the plugin keeps until it is ready), the restart,
    then ready again. Between the two, the new registration the restarted process's
    socket makes, still restarting: ``replaced`` (evicted and registered in one step),
    whether or not volplugd's watcher saw the file gone before the new bind (a
    ``restarting`` plugin whose file goes is kept); or none, when it saw neither. Never
    ``removed``: the gateway keeps its socket all along."""
    last = before[-1][3]
    moves = [(e["type"], e["from"], e["to"], e["reason"]) for e in after]
    head = [*before, ("restart_started", None, None, f"unit {UNIT}")]
    tail = [("state_changed", "restarting", "ready", "ok"),
            ("restart_done", None, None, "done: ready again")]
    again = {why: [("evicted", "restarting", None, why), ("discovered", None, "activating", SOCK),
                   ("state_changed", "activating", "restarting", last)]
             for why in ("replaced",)}
    allowed = {None: head + tail, **{why: head + a + tail for why, a in again.items()}}
    how = next((why for why, seq in allowed.items() if moves == seq), "none of them")
    assert how != "none of them", "\n".join(map(repr, moves))
    gateway = [(e["event"], e["plugin"]) for e in logged(box, "gateway_socket_removed", cursor)
               + logged(box, "gateway_socket_created", cursor)]
    assert gateway == [], (how, gateway)
