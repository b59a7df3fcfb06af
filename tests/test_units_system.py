"""systemd's Manager client (supervision.units) and identify() against the REAL systemd
252, booted as PID 1 in systemd-nspawn (tests/realsystemd.py): a fake plugin as a real
service, found from the kernel and restarted over D-Bus; a socket-activated one whose
listener is PID 1; NoSuchUnit; jobs that end failed, timeout or dependency; our own
deadline.

The client runs on the host and reaches the container's system bus through
``/proc/LEADER/root/run/dbus/system_bus_socket``; plugin sockets are reached the same
way. Pids seen from the host are the host's: the container's own number of a process is
the last field of its ``NSpid``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
from collections.abc import Iterator

import pytest

from tests.realsystemd import REPO, Container, boot
from volplugd.supervision.identity import ProcessUnknown, identify
from volplugd.supervision.units import (
    JobDone,
    NoSuchUnit,
    SystemdManager,
    UnitsTimeout,
)

pytestmark = [pytest.mark.system, pytest.mark.peer, pytest.mark.timeout(600),
              pytest.mark.xdist_group("realsystemd")]  # one container for the module

FAKE = "/usr/src/vp-fake"  # tests/fakeplugin (stdlib only), copied into the container
UNITS = {
    "vp-plug.service": f"""[Service]
ExecStartPre=/bin/mkdir -p /run/vp
ExecStart=/usr/bin/python3 -m tests.fakeplugin /run/vp/plug.sock
WorkingDirectory={FAKE}
""",
    "vp-act.socket": "[Socket]\nListenStream=/run/vp/act.sock\n",
    "vp-act.service": "[Service]\nExecStart=/bin/sleep infinity\n",
    "vp-fail.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    "vp-dep.service": "[Unit]\nRequires=vp-fail.service\nAfter=vp-fail.service\n"
                      "[Service]\nExecStart=/bin/sleep infinity\n",
    "vp-tmo.service": "[Service]\nType=oneshot\nExecStart=/bin/sleep 300\nTimeoutStartSec=1\n",
    "vp-job.service": "[Unit]\nJobTimeoutSec=1\n[Service]\nType=oneshot\n"
                      "ExecStart=/bin/sleep 300\nTimeoutStartSec=infinity\n",
    "vp-slow.service": "[Service]\nType=oneshot\nExecStart=/bin/sleep 300\n"
                       "TimeoutStartSec=infinity\n",
}


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    with boot("units") as container:
        shutil.copytree(REPO / "tests" / "fakeplugin",
                        container.path(f"{FAKE}/tests/fakeplugin"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "tests" / "__init__.py", container.path(f"{FAKE}/tests/"))
        for name, text in UNITS.items():
            container.write(f"/etc/systemd/system/{name}", text)
        container.systemctl("daemon-reload")
        yield container


@pytest.fixture(autouse=True)
def fresh(box: Container) -> Container:
    """The test units stopped and their failures forgotten."""
    box.systemctl("stop", *UNITS, check=False)
    box.systemctl("reset-failed", check=False)
    return box


def manager(box: Container) -> SystemdManager:
    return SystemdManager(f"/proc/{box.leader}/root/run/dbus/system_bus_socket")


def seen(box: Container, path: str) -> str:
    """A path of the container's, as the host reaches it."""
    return f"/proc/{box.leader}/root{path}"


def inner_pid(pid: int) -> int:
    """The container's number for host pid ``pid`` (the last NSpid field)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {pid}")


def test_a_plugin_service_is_found_from_the_kernel_and_restarted_over_d_bus(
        box: Container) -> None:
    """The fake plugin as vp-plug.service: identify() names the unit and the process
    systemd started; RestartUnit's job ends "done", the old process's pidfd fires and a
    new MainPID serves the socket; kill -9 of it fires its pidfd too."""
    box.systemctl("start", "vp-plug.service")
    sock = seen(box, "/run/vp/plug.sock")
    box.wait_for(lambda: os.path.exists(sock), message="the plugin's socket")
    info, pidfd = identify(sock)
    with pidfd:
        assert (info.unit, info.manager, inner_pid(info.pid)) == (
            "vp-plug.service", "system", box.main_pid("vp-plug.service"))
        assert info.command == "/usr/bin/python3 -m tests.fakeplugin /run/vp/plug.sock"
        done = manager(box).restart_unit("vp-plug.service", 60)
        assert (done.unit, done.result, done.job.startswith("/org/freedesktop/systemd1/job/")
                ) == ("vp-plug.service", "done", True)
        assert select.select([pidfd], [], [], 30)[0] == [pidfd]
    again = box.wait_for(lambda: _listener(sock, info.pid), message="the restarted plugin")
    assert inner_pid(again) == box.main_pid("vp-plug.service")
    info, pidfd = identify(sock)
    with pidfd:
        os.kill(info.pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], 30)[0] == [pidfd]


def _listener(sock: str, old: int) -> int | None:
    try:
        info, pidfd = identify(sock)
    except ProcessUnknown:  # not listening yet
        return None
    pidfd.close()
    return info.pid if info.pid != old else None


def test_a_socket_activated_plugin_is_pid_1_and_its_unit_is_the_sockets_service(
        box: Container) -> None:
    """The listener of vp-act.socket's path is the container's PID 1 (systemd); the
    unit, from the Manager's socket units and their Listen=, is vp-act.service, whose
    MainPID (the process to watch) is there once a connection (identify's) started it."""
    box.systemctl("start", "vp-act.socket")
    systemd = manager(box)
    info, pidfd = identify(seen(box, "/run/vp/act.sock"),
                           lambda _path: systemd.socket_service("/run/vp/act.sock"))
    pidfd.close()
    assert (info.pid, inner_pid(info.pid), info.unit, info.socket_unit, info.problems) == (
        box.leader, 1, "vp-act.service", "vp-act.socket", ())
    box.wait_for(lambda: box.show("vp-act.service", "ActiveState") == "active",
                 message="vp-act.service started by identify()'s connection")
    assert systemd.main_pid("vp-act.service") == box.main_pid("vp-act.service") > 0
    assert systemd.socket_service("/run/vp/none.sock") is None
    assert systemd.socket_service("/var/run/vp/act.sock") == "vp-act.service"  # one folder


def test_restarting_a_unit_that_does_not_exist_is_no_such_unit(box: Container) -> None:
    """systemd's own NoSuchUnit error, its name and text kept (restart, main process)."""
    with pytest.raises(NoSuchUnit) as caught:
        manager(box).restart_unit("vp-nope.service", 30)
    assert (caught.value.error, str(caught.value)) == (
        "org.freedesktop.systemd1.NoSuchUnit",
        "restart vp-nope.service: Unit vp-nope.service not found.")
    with pytest.raises(NoSuchUnit) as caught:
        manager(box).main_pid("vp-nope.service")
    assert str(caught.value) == (
        "the main process of vp-nope.service: Unit vp-nope.service not loaded.")


@pytest.mark.parametrize(("unit", "result"), [
    ("vp-fail.service", "failed"),  # ExecStart=/bin/false
    ("vp-dep.service", "dependency"),  # Requires= a unit that fails
    ("vp-tmo.service", "failed"),  # TimeoutStartSec=1: the unit fails, so does the job
    ("vp-job.service", "timeout"),  # JobTimeoutSec=1: the job itself times out
])
def test_a_restart_job_ends_with_systemds_result(box: Container, unit: str,
                                                 result: str) -> None:
    """The job's result word, as JobRemoved carries it."""
    done = manager(box).restart_unit(unit, 60)
    assert (done.unit, done.result) == (unit, result)
    assert isinstance(done, JobDone)


def test_a_job_that_outlasts_our_deadline_is_units_timeout(box: Container) -> None:
    """A start that never ends: UnitsTimeout naming the job; systemd goes on with it."""
    with pytest.raises(UnitsTimeout) as caught:
        manager(box).restart_unit("vp-slow.service", 1.0)
    text = str(caught.value)
    assert text.startswith("restart vp-slow.service: the end of job /org/freedesktop/systemd1/job/")
    assert text.endswith(" (vp-slow.service): no answer by the deadline")
    assert box.show("vp-slow.service", "ActiveState") == "activating"
