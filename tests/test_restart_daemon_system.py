"""``POST /v1/plugins/{name}/restart`` and ``volplugctl restart`` against the real daemon
process: each refusal with its exact status, code and text (and exit status), and the
daemon serving everyone meanwhile. The restarts themselves, of real units under a real
systemd, are in tests/test_restart_system.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakeplugin import FakePlugin
from tests.harness import NOBODY, SYSTEM_PYTHON, Daemon, readable_package, run_as
from tests.plugin.test_client_tcp import TCPPlugin
from tests.test_ctl_system import volplugctl

pytestmark = pytest.mark.system

RESTART_ON = "[restart]\nenabled = true\nafter = 60.0\n"


def started(daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin],
            short_tmp: Path, config: str) -> Daemon:
    (short_tmp / "plugins").mkdir(exist_ok=True)
    fakes_at(short_tmp / "plugins" / "fake.sock")
    d = daemon(config=config).start()
    d.wait_state("fake", "ready")
    return d


@pytest.fixture
def over_tcp(short_tmp: Path) -> Iterator[TCPPlugin]:
    """Plugin "fake" over TCP (a .spec file): no process volplugd could know."""
    plugin = TCPPlugin()
    (short_tmp / "plugins").mkdir(exist_ok=True)
    (short_tmp / "plugins" / "fake.spec").write_text(f"tcp://127.0.0.1:{plugin.port}\n")
    yield plugin
    plugin.stop()


@pytest.mark.parametrize(("config", "why"), [
    (RESTART_ON, "no unit or container known for it (its process was not identified)"),
    ("", "restarts are turned off (restart.enabled = false)"),
])
def test_nothing_to_restart_is_409_with_the_reason(
        daemon: Callable[..., Daemon], over_tcp: TCPPlugin, config: str, why: str) -> None:
    """409 not_restartable saying why; volplugctl exits 1 with it; the plugin stays ready."""
    d = daemon(config=config).start()
    d.wait_state("fake", "ready")
    status, body = d.call("POST", "/v1/plugins/fake/restart")
    message = f"plugin fake cannot be restarted: {why}"
    assert (status, body) == (409, {"error": {"code": "not_restartable", "message": message}})
    done = volplugctl(d, "restart", "fake")
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", f"volplugctl: not_restartable: {message}\n")
    assert d.plugins()["fake"]["state"] == "ready"
    assert d.plugins()["fake"]["restart"] is None


def test_an_unknown_plugin_is_404(daemon: Callable[..., Daemon],
                                  fakes_at: Callable[..., FakePlugin],
                                  short_tmp: Path) -> None:
    d = started(daemon, fakes_at, short_tmp, RESTART_ON)
    assert d.call("POST", "/v1/plugins/nobody/restart") == (
        404, {"error": {"code": "plugin_not_found", "message": "no plugin named 'nobody'"}})
    done = volplugctl(d, "restart", "nobody")
    assert (done.returncode, done.stderr) == (
        1, "volplugctl: plugin_not_found: no plugin named 'nobody'\n")
    assert volplugctl(d, "restart").returncode == 2  # usage: NAME is required
    assert d.call("GET", "/v1/plugins/fake/restart")[0] == 405


def _as_nobody(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from volplugd.ctl import main; sys.exit(main())"
    with readable_package() as copy:
        return run_as(NOBODY, [SYSTEM_PYTHON, "-P", "-B", "-c", code, "--socket", d.socket,
                               *argv], pythonpath=copy)


def test_a_reader_may_not_restart(daemon: Callable[..., Daemon],
                                  fakes_at: Callable[..., FakePlugin],
                                  short_tmp: Path) -> None:
    """A member of control.read_groups lists plugins but gets 403 for a restart."""
    os.chmod(short_tmp, 0o755)  # noqa: S103 - the other uid must reach the socket file
    d = started(daemon, fakes_at, short_tmp,
                RESTART_ON + '[control]\nmode = "0666"\nread_groups = ["nogroup"]\n')
    listed = _as_nobody(d, "ls")
    assert (listed.returncode, listed.stderr) == (0, "")
    done = _as_nobody(d, "restart", "fake")
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "volplugctl: forbidden: this user may not do that on the control socket\n")
    assert d.plugins()["fake"]["state"] == "ready"
