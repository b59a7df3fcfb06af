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
* **Docker at import.** When its socket does not exist yet (its first start),
  buttervolume runs ``docker plugin inspect``. The container has the host's docker CLI
  and ``docker.socket`` listening (``basic.target`` pulls in ``sockets.target``): that
  first start socket-activated a whole dockerd inside. The unit points ``DOCKER_HOST``
  at a socket nobody listens on, and the test checks that ``docker.service`` stays
  inactive.
* **Its socket after ``kill -9``.** The file stays; volplugd's first activation after
  the restart job is refused and tried again. The restarted buttervolume removes the
  stale file itself (it logs ``Removed stale socket: PATH``) and binds again: nothing of
  volplugd's stale-socket removal is needed. The removal and the new bind are about 1 ms
  apart; when volplugd's watcher sees the file gone in between, the plugin is evicted
  and found again at once, still ``restarting`` (its restart goes on), and its gateway
  socket is removed and made again (a connect in that gap fails). Whether it sees it
  depends on when the watcher looks, so both sequences are accepted, each exactly.

One container and one btrfs for the module; each test stops the units and volplugd and
deletes the subvolumes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import buttervolume
from tests.installed import (
    CONF,
    PLUGINS,
    SERVICE,
    config,
    events,
    gateway_post,
    logged,
    plugin,
    ready_as,
    restart_ended,
    restart_events,
    restart_samples,
    start_volplugd,
)
from tests.realsystemd import Container, boot

pytestmark = [pytest.mark.system, pytest.mark.peer, pytest.mark.timeout(600),
              pytest.mark.xdist_group("realsystemd-buttervolume")]  # one container

NAME = "btrfs"
UNIT = "vp-butter.service"
SOCK = f"{PLUGINS}/{NAME}.sock"
BTRFS = "/srv/vp-btrfs"  # the host's loop-mounted btrfs, inside
VENV = buttervolume.VENV
COMMAND = f"{VENV}/bin/python3 {VENV}/bin/buttervolume run"  # its /proc/PID/cmdline
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
        yield container


@pytest.fixture(autouse=True)
def fresh(box: Container, btrfs: Path) -> Container:
    """volplugd and buttervolume stopped, no plugin sockets, no subvolumes."""
    box.systemctl("stop", SERVICE, UNIT, check=False)
    box.systemctl("reset-failed", check=False)
    box.remove(PLUGINS)
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
    assert_moves(box, [e for e in events(box, NAME) if e["seq"] > seen], old, cursor)
    started = logged(box, "plugin_restart_started", cursor)
    assert [(e["plugin"], e["target"], e["reason"], e["recent"]) for e in started] == [
        (NAME, f"unit {UNIT}", f"process {old} ({COMMAND}) exited", 1)]
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


def assert_moves(box: Container, after_kill: list[dict[str, Any]], old: int,
                 cursor: str) -> None:
    """The plugin's events after the kill, exactly: unhealthy at once (its process
    exited), restarting, then ready again. ``restarting`` carries the plugin's last error
    when the restart began: that its process exited or, when a regular probe of the stale
    socket came first, that the socket refused. Between the two, when volplugd's watcher
    saw buttervolume's stale socket removed before its new bind: evicted, discovered at
    once, restarting again; its gateway socket removed and made again, and only then."""
    exited = f"process {old} ({COMMAND}) exited"
    refused = (f"sending request to plugin {NAME} activation endpoint: dial unix {SOCK}: "
               "connect: connection refused")
    moves = [(e["type"], e["from"], e["to"], e["reason"]) for e in after_kill]
    last = moves[1][3] if len(moves) > 1 else None
    assert last in (exited, refused), moves
    head = [("state_changed", "ready", "unhealthy", exited),
            ("state_changed", "unhealthy", "restarting", last),
            ("restart_started", None, None, f"unit {UNIT}")]
    again = [("evicted", "restarting", None, "removed"),
             ("discovered", None, "activating", SOCK),
             ("state_changed", "activating", "restarting", last)]
    tail = [("state_changed", "restarting", "ready", "ok"),
            ("restart_done", None, None, "done: ready again")]
    assert moves in (head + tail, head + again + tail), moves
    gateway = [(e["event"], e["plugin"]) for e in logged(box, "gateway_socket_removed", cursor)
               + logged(box, "gateway_socket_created", cursor)]
    evicted = moves == head + again + tail
    assert gateway == ([("gateway_socket_removed", NAME), ("gateway_socket_created", NAME)]
                       if evicted else []), gateway
