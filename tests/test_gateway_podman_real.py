"""The real Podman (Debian 4.3.1) through the gateway: volplugd's drop-in lists the
gateway sockets (``podman.via_gateway``); a healthy plugin works end to end, a hung one
fails at once with its state and last error, and a clean stop lists the plugin's own
socket again. Same sandbox as tests/test_podman_real.py (private mount namespace)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakeplugin.behaviours import Hang
from tests.fakeplugin.server import FakePlugin
from tests.harness import Daemon
from tests.test_podman_real import (  # noqa: F401 - podman: the fixture
    NAME,
    PodmanSandbox,
    create_inspect_remove,
    lists,
    podman,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.peer, pytest.mark.system]


def config(sandbox: PodmanSandbox, gateway: Path) -> str:
    return ("[probe]\ninterval = 0.5\ntimeout = 0.3\nfailure_threshold = 1\n"
            f'[gateway]\nenabled = true\ndir = "{gateway}"\n'
            f'[podman]\nenabled = true\ndropin = "{sandbox.dropin}"\nvia_gateway = true\n')


def test_podman_fails_fast_on_a_hung_plugin_through_the_gateway(
        podman: PodmanSandbox, short_tmp: Path,  # noqa: F811 - the fixture
        daemon: Callable[..., Daemon]) -> None:
    plugins, gateway = short_tmp / "plugins", short_tmp / "gw"
    own, through = str(plugins / f"{NAME}.sock"), str(gateway / f"{NAME}.sock")
    proc = daemon(plugin_dirs=[plugins], config=config(podman, gateway)).start()
    with FakePlugin(own) as plugin:
        proc.wait_state(NAME, "ready")
        wait_until(lambda: lists(podman, NAME, through), 15, message="listed via gateway")
        create_inspect_remove(podman, NAME)
        assert [r.path for r in plugin.requests if r.path.endswith(("Create", "Remove"))] == [
            "/VolumeDriver.Create", "/VolumeDriver.Remove"]

        for endpoint in ("/Plugin.Activate", "/VolumeDriver.Get", "/VolumeDriver.Create"):
            plugin.set(endpoint, Hang())
        proc.wait_state(NAME, "unhealthy")
        plugin.clear_requests()
        started = time.monotonic()
        out = podman.run("volume", "create", "--driver", NAME, "v2")
        seconds = time.monotonic() - started
        last_error = proc.plugins()[NAME]["last_error"]
        assert last_error == (f"sending request to plugin {NAME} activation endpoint: timed "
                              "out: no complete answer within 0.3 s")
        assert (out.returncode, out.stderr) == (125, (
            f'Error: creating volume "v2" in plugin {NAME}: on /VolumeDriver.Create on '
            f"volume v2 in volume plugin {NAME}: volplugd: plugin {NAME} is unhealthy: "
            f"{last_error}\n"))
        gets_or_creates = [r for r in plugin.requests if r.path != "/Plugin.Activate"]
        assert gets_or_creates == []  # the gateway never touched the hung plugin
        print(f"\npodman volume create on a hung plugin through the gateway: {seconds:.3f} s")
        assert proc.stop() == 0  # while the plugin's socket is still there to be listed
    assert lists(podman, NAME, own)  # fail open: the plugin's own socket again
