"""Supervision under the real systemd 252 as PID 1 (tests/realsystemd.py): the installed
volplugd.service (its sandbox and all) names each plugin's unit and main process from the
kernel, and sees a kill -9 through the pidfd: a plugin service is unhealthy at once; a
socket-activated one is started again by systemd on the probe's connection, and its new
main process is looked up and shown.

One container is booted for the module with volplugd installed (``make install``);
before each test the service and the test units are stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realsystemd import SOURCE, Container, boot

pytestmark = [pytest.mark.system, pytest.mark.timeout(600),
              pytest.mark.xdist_group("realsystemd")]  # one container for the module

SERVICE = "volplugd.service"
CONF = "/etc/volplugd/volplugd.toml"
PLUGINS = "/run/docker/plugins"
# Regular probes never come during a test: only the pidfd can tell of a death this soon.
CONFIG = "[probe]\ninterval = 3600.0\n"
UNITS = {
    "vp-act.socket": f"[Socket]\nListenStream={PLUGINS}/act.sock\n",
    "vp-act.service": f"[Service]\nExecStart=/usr/bin/python3 -m tests.handoff --activated\n"
                      f"WorkingDirectory={SOURCE}\n",
}


@pytest.fixture(scope="module")
def box(wheelhouse: Path) -> Iterator[Container]:
    with boot("supervision") as container:
        container.install_volplugd(wheelhouse)
        for name, text in UNITS.items():
            container.write(f"/etc/systemd/system/{name}", text)
        container.systemctl("daemon-reload")
        yield container


@pytest.fixture(autouse=True)
def fresh(box: Container) -> Container:
    box.systemctl("stop", SERVICE, "vp-fake-*.service", *UNITS, check=False)
    box.systemctl("reset-failed", check=False)
    box.remove(PLUGINS)
    box.run(["mkdir", "-p", PLUGINS])
    box.write(CONF, CONFIG)
    return box


def inspect(box: Container, name: str) -> dict[str, Any] | None:
    done = box.run(["volplugctl", "--json", "inspect", name], check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def shown(box: Container, name: str, pid: int) -> dict[str, Any]:
    """Wait until plugin ``name`` is shown served by ``pid``; its view."""
    def check() -> dict[str, Any] | None:
        plugin = inspect(box, name)
        process = None if plugin is None else plugin["process"]
        return plugin if process is not None and process["pid"] == pid else None
    found = box.wait_for(check, message=f"{name} served by pid {pid}")
    assert found is not None
    return found


def test_a_plugin_service_is_named_and_its_kill_is_unhealthy_at_once(box: Container) -> None:
    """The fake plugin as a service: its unit and MainPID in the view; kill -9 →
    unhealthy after one failed probe, with the exact last_error."""
    box.run(["systemd-run", "--unit=vp-fake-sup", f"--property=WorkingDirectory={SOURCE}",
             "/usr/bin/python3", "-m", "tests.fakeplugin", f"{PLUGINS}/sup.sock"])
    box.systemctl("start", SERVICE)
    pid = box.main_pid("vp-fake-sup.service")
    plugin = shown(box, "sup", pid)
    command = f"/usr/bin/python3 -m tests.fakeplugin {PLUGINS}/sup.sock"
    assert (plugin["state"], plugin["process"]) == ("ready", {
        "pid": pid, "uid": 0, "command": command, "unit": "vp-fake-sup.service",
        "container": None})
    box.run(["kill", "-9", str(pid)])
    def unhealthy() -> dict[str, Any] | None:
        plugin = inspect(box, "sup")
        return plugin if plugin is not None and plugin["state"] == "unhealthy" else None
    after = box.wait_for(unhealthy, message="sup unhealthy")
    assert after is not None
    assert (after["last_error"], after["consecutive_failures"]) == (
        f"process {pid} ({command}) exited", 1)


def test_a_socket_activated_plugin_is_its_services_main_process_and_comes_back(
        box: Container) -> None:
    """Listened for by systemd (pid 1): shown as vp-act.service's main process. Its
    kill -9 fires the pidfd; the probe right after makes systemd start the service
    again, so the plugin stays ready and its new main process is shown."""
    box.systemctl("start", "vp-act.socket")
    box.systemctl("start", SERVICE)
    box.wait_for(lambda: box.main_pid("vp-act.service") > 0,
                 message="vp-act.service started by the activation's connection")
    first = box.main_pid("vp-act.service")
    plugin = shown(box, "act", first)
    assert (plugin["process"]["unit"], plugin["process"]["command"], plugin["warnings"]) == (
        "vp-act.service", "/usr/bin/python3 -m tests.handoff --activated", [])
    box.run(["kill", "-9", str(first)])
    second = box.wait_for(lambda: (p := box.main_pid("vp-act.service")) != first and p,
                          message="vp-act.service started again")
    again = shown(box, "act", second)
    assert (again["state"], again["last_error"]) == ("ready", None)
    assert f'"pid": {first}' in box.journal(SERVICE).split("plugin_process_exited", 1)[1]
