"""The real ``volplugctl`` script against the real volplugd with fake (and real) plugins.

Every command end to end: the console script as a subprocess, the daemon as a process
(``tests.harness``), plugins as real servers on real sockets in ``<tmp>/plugins``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import NOBODY, SYSTEM_PYTHON, Daemon, readable_package, run_as
from tests.plugin import test_buttervolume as bv
from tests.waiting import wait_until

pytestmark = pytest.mark.system
butter = bv.buttervolume  # that module's fixture (module scope), reused as is under this name

VOLPLUGCTL = str(Path(sys.executable).with_name("volplugctl"))
HINT = "(is volplugd running? set --socket or VOLPLUGD_SOCKET)"
# Fast probes so that a hung plugin turns unhealthy within about a second (used only
# where a plugin is meant to fail: elsewhere a loaded machine must not flip states).
FAST_PROBES = ["--probe-interval", "0.5", "--probe-timeout", "0.4", "--failure-threshold", "1"]


def volplugctl(d: Daemon, *argv: str, use_env: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the console script; the socket comes from --socket, or $VOLPLUGD_SOCKET."""
    env = {k: v for k, v in os.environ.items() if k not in ("VOLPLUGD_SOCKET", "COLUMNS")}
    if use_env:
        env["VOLPLUGD_SOCKET"] = d.socket
    else:
        argv = ("--socket", d.socket, *argv)
    return subprocess.run([VOLPLUGCTL, *argv], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def ok(d: Daemon, *argv: str) -> str:
    done = volplugctl(d, *argv)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def as_json(d: Daemon, *argv: str) -> Any:
    return json.loads(ok(d, "--json", *argv))


@pytest.fixture
def plugins(short_tmp: Path) -> Iterator[Callable[..., FakePlugin]]:
    """Factory of fake plugins bound in ``<tmp>/plugins``; each is stopped after the test."""
    made: list[FakePlugin] = []
    (short_tmp / "plugins").mkdir(exist_ok=True)

    def make(name: str, **kw: Any) -> FakePlugin:
        plugin = FakePlugin(str(short_tmp / "plugins" / f"{name}.sock"), **kw)
        made.append(plugin)
        return plugin

    yield make
    for plugin in made:
        plugin.stop()


@pytest.fixture
def running(daemon: Callable[..., Daemon],
            plugins: Callable[..., FakePlugin]) -> tuple[Daemon, FakePlugin]:
    """volplugd with one ready fake plugin, "fake"."""
    fake = plugins("fake", mount_root="/srv/fake")
    d = daemon().start()
    d.wait_state("fake", "ready")
    return d, fake


def test_ls_inspect_health_and_capabilities(running: tuple[Daemon, FakePlugin]) -> None:
    """Reads: a table row per plugin, key: value documents, and JSON that parses."""
    d, _ = running
    lines = ok(d, "ls").splitlines()
    assert lines[0].split() == ["NAME", "STATE", "KIND", "ADDRESS", "LAST", "PROBE", "LAST",
                                "ERROR"]
    assert lines[1].split()[:4] == ["fake", "ready", "sock", f"unix://{d.workdir}/plugins/fake.sock"]
    assert "\x1b" not in "".join(lines)  # not a terminal: no colour
    listed = as_json(d, "ls")["plugins"]
    assert [(p["name"], p["state"]) for p in listed] == [("fake", "ready")]
    assert as_json(d, "ls", "--state", "unhealthy") == {"plugins": []}
    shown = ok(d, "inspect", "fake").splitlines()
    assert "state:                 ready" in shown
    assert "capabilities:          scope=local" in shown
    assert as_json(d, "inspect", "fake")["address"] == f"unix://{d.workdir}/plugins/fake.sock"
    health = as_json(d, "health")
    assert (health["status"], health["plugins"]["ready"]) == ("ok", 1)
    assert ok(d, "health").splitlines()[0].split() == ["status:", "ok"]
    assert ok(d, "capabilities", "fake") == "scope: local\n"
    assert as_json(d, "capabilities", "fake") == {"scope": "local"}


def test_socket_from_the_environment(running: tuple[Daemon, FakePlugin]) -> None:
    """$VOLPLUGD_SOCKET alone finds the daemon."""
    d, _ = running
    done = volplugctl(d, "--json", "health", use_env=True)
    assert (done.returncode, json.loads(done.stdout)["status"]) == (0, "ok")


def test_probe_and_rescan(running: tuple[Daemon, FakePlugin]) -> None:
    """probe answers the plugin after a fresh probe; rescan reports and logs a manual scan."""
    d, fake = running
    before = len(fake.requests)
    probed = as_json(d, "probe", "fake")
    assert probed["state"] == "ready"
    assert len(fake.requests) > before
    assert "state:                 ready" in ok(d, "probe", "fake").splitlines()
    rescan = as_json(d, "rescan")
    assert set(rescan) == {"added", "removed", "changed"}
    assert ok(d, "rescan").splitlines()[0].startswith("added:")
    reasons = [e["reason"] for e in map(json.loads, ok(d, "--json", "events").splitlines())
               if e["type"] == "rescan"]
    assert reasons.count("manual") == 2


def test_whole_volume_lifecycle(running: tuple[Daemon, FakePlugin]) -> None:
    """create -> ls -> inspect -> path -> mount -> unmount -> rm, human and JSON."""
    d, fake = running
    assert ok(d, "volume", "create", "fake", "v1", "-o", "size=1G", "-o", "x=a=b") == "v1\n"
    assert fake.volumes["v1"]["Opts"] == {"size": "1G", "x": "a=b"}
    created = as_json(d, "volume", "create", "fake", "v2")
    assert (created["name"], created["mountpoint"]) == ("v2", "/srv/fake/v2")
    table = ok(d, "volume", "ls", "fake").splitlines()
    assert table[0].split() == ["NAME", "MOUNTPOINT", "CREATED"]
    assert [row.split()[:2] for row in table[1:]] == [["v1", "/srv/fake/v1"],
                                                      ["v2", "/srv/fake/v2"]]
    assert sorted(v["name"] for v in as_json(d, "volume", "ls", "fake")["volumes"]) == ["v1", "v2"]
    assert ok(d, "volume", "inspect", "fake", "v1").splitlines()[:2] == [
        "name:       v1", "mountpoint: /srv/fake/v1"]
    assert as_json(d, "volume", "inspect", "fake", "v1")["mountpoint"] == "/srv/fake/v1"
    assert ok(d, "volume", "path", "fake", "v1") == "/srv/fake/v1\n"
    assert as_json(d, "volume", "path", "fake", "v1") == {"mountpoint": "/srv/fake/v1"}
    assert ok(d, "volume", "mount", "fake", "v1", "--id", "c1") == "/srv/fake/v1\n"
    assert ok(d, "volume", "unmount", "fake", "v1", "--id", "c1") == ""
    mounts = [json.loads(r.body) for r in fake.requests
              if r.path in ("/VolumeDriver.Mount", "/VolumeDriver.Unmount")]
    assert mounts == [{"Name": "v1", "ID": "c1"}, {"Name": "v1", "ID": "c1"}]
    assert ok(d, "volume", "rm", "fake", "v1") == "v1\n"
    assert ok(d, "--json", "volume", "rm", "fake", "v2") == ""
    assert as_json(d, "volume", "ls", "fake") == {"volumes": []}


def test_plugin_errors_exit_1_with_the_plugins_words(running: tuple[Daemon, FakePlugin]) -> None:
    """A plugin's Err comes through verbatim as `plugin_error`; a missing volume too."""
    d, fake = running
    fake.set("/VolumeDriver.Create", b.ErrOn200("disk full"))
    done = volplugctl(d, "volume", "create", "fake", "v")
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "volplugctl: plugin_error: disk full\n")
    done = volplugctl(d, "volume", "inspect", "fake", "nope")
    assert (done.returncode, done.stderr) == (1, "volplugctl: plugin_error: nope: no such volume\n")


def test_unknown_plugin_exits_1_plugin_not_found(running: tuple[Daemon, FakePlugin]) -> None:
    """Every command naming a plugin volplugd does not know: exit 1, plugin_not_found."""
    d, _ = running
    for argv in (["inspect", "nope"], ["probe", "nope"], ["capabilities", "nope"],
                 ["volume", "ls", "nope"], ["volume", "rm", "nope", "v"]):
        done = volplugctl(d, *argv)
        assert (done.returncode, done.stdout, done.stderr) == (
            1, "", "volplugctl: plugin_not_found: no plugin named 'nope'\n"), argv


def test_not_ready_plugins_fail_fast_with_plugin_not_ready(
        daemon: Callable[..., Daemon], plugins: Callable[..., FakePlugin]) -> None:
    """A rejected plugin and a hung (unhealthy) one: exit 1, plugin_not_ready, their state."""
    net = plugins("net", implements=["NetworkDriver"])
    hung = plugins("hung")
    d = daemon(args=FAST_PROBES).start()
    rejected = d.wait_state("net", "rejected")
    d.wait_state("hung", "ready")
    hung.set("*", b.Hang())
    unhealthy = d.wait_state("hung", "unhealthy")
    for name, view in (("net", rejected), ("hung", unhealthy)):
        detail = f": {view['last_error']}" if view["last_error"] else ""
        done = volplugctl(d, "volume", "ls", name)
        assert (done.returncode, done.stdout, done.stderr) == (
            1, "", f"volplugctl: plugin_not_ready: plugin {name} is {view['state']}{detail}\n")
    assert "\x1b" not in volplugctl(d, "ls").stdout
    assert [p["state"] for p in as_json(d, "ls", "--state", "unhealthy")["plugins"]] == [
        "unhealthy"]
    sent = {r.path for r in hung.requests + net.requests}
    assert "/VolumeDriver.List" not in sent  # failed fast: only probes reached the plugins


SIGINT_DEFAULT_THEN_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                            "os.execv(sys.argv[1], sys.argv[1:])")


def test_events_list_and_follow(running: tuple[Daemon, FakePlugin],
                                plugins: Callable[..., FakePlugin]) -> None:
    """events prints the log; --follow streams new events until Ctrl-C, which exits 0."""
    d, _ = running
    events = [json.loads(line) for line in ok(d, "--json", "events").splitlines()]
    assert ("discovered", "fake") in [(e["type"], e["plugin"]) for e in events]
    last = events[-1]["seq"]
    human = ok(d, "events").splitlines()
    assert any(" state_changed  fake  activating -> ready" in line for line in human)
    assert ok(d, "events", "--since", str(last)) == ""
    # As from a terminal: SIGINT at its default. A test run started in the background
    # (CI, `make test &`) has it ignored, and an ignored SIGINT is inherited.
    follow = subprocess.Popen([sys.executable, "-c", SIGINT_DEFAULT_THEN_EXEC, VOLPLUGCTL,
                               "--socket", d.socket, "--json", "events", "--follow",
                               "--since", str(last)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        plugins("late")
        first = json.loads(follow.stdout.readline())
        assert (first["seq"], first["plugin"]) == (last + 1, "late")
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert (follow.returncode, err) == (0, "")


def test_follow_ends_with_exit_3_when_volplugd_stops(
        running: tuple[Daemon, FakePlugin]) -> None:
    """A follower is told when volplugd stops: the stream ends, exit 3, one line."""
    d, _ = running
    follow = subprocess.Popen([VOLPLUGCTL, "--socket", d.socket, "--json", "events",
                               "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert follow.stdout is not None
        assert json.loads(follow.stdout.readline())["seq"] == 1  # the stream is open
        assert d.stop() == 0
        _, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert (follow.returncode, err) == (
        3, f"volplugctl: cannot reach volplugd at {d.socket}: the event stream ended {HINT}\n")


def _plugin_lists_served(d: Daemon) -> float:
    """How many ``GET /v1/plugins`` volplugd has answered 200 (from its own metrics)."""
    scrape = d.get("/metrics").decode()
    for family in text_string_to_metric_families(scrape):
        for s in family.samples:
            if (s.name == "volplugd_control_requests_total"
                    and s.labels == {"route": "/v1/plugins", "code": "200"}):
                return s.value
    return 0.0


def test_wait_returns_once_a_plugin_that_came_later_is_ready(
        daemon: Callable[..., Daemon], plugins: Callable[..., FakePlugin]) -> None:
    """`wait late` keeps asking while volplugd does not know "late", then exits 0."""
    d = daemon().start()
    waiter = subprocess.Popen([VOLPLUGCTL, "--socket", d.socket, "wait", "--timeout", "60s",
                               "late"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_until(lambda: _plugin_lists_served(d) >= 2, timeout=30,
                   message="volplugctl wait to ask twice")
        assert waiter.poll() is None  # "late" is unknown: it is still waiting
        plugins("late").start()
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert (waiter.returncode, out, err) == (0, "late: ready\n", "")


def test_wait_times_out_on_a_socket_nobody_listens_on(
        daemon: Callable[..., Daemon], short_tmp: Path) -> None:
    """A stale socket stays activating: exit 1 naming its state and the daemon's error."""
    (short_tmp / "plugins").mkdir(exist_ok=True)
    stale = short_tmp / "plugins" / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # and never listens
        d = daemon().start()
        d.wait_state("stale", "activating")
        done = volplugctl(d, "wait", "--timeout", "1s")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("volplugctl: timeout: after 1s, plugin stale is activating: "
                           "sending request to plugin stale activation endpoint: dial unix "
                           f"{stale}: connect: connection refused\n")


def test_stopped_daemon_exits_3_with_the_hint(running: tuple[Daemon, FakePlugin]) -> None:
    """Once volplugd is gone: exit 3 naming the socket, the reason and the hint."""
    d, _ = running
    d.stop()
    done = volplugctl(d, "ls")
    assert done.returncode == 3
    reasons = ("No such file or directory", "Connection refused")
    assert done.stderr in [f"volplugctl: cannot reach volplugd at {d.socket}: {r} {HINT}\n"
                           for r in reasons]


def _as_nobody(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    # The checkout and the venv's interpreter may sit in a 0700 folder (root's home):
    # the system Python runs a world-readable copy of the package (volplugctl is stdlib).
    code = "import sys; from volplugd.ctl import main; sys.exit(main())"
    with readable_package() as copy:
        return run_as(NOBODY, [SYSTEM_PYTHON, "-P", "-B", "-c", code, "--socket", d.socket,
                               *argv], pythonpath=copy)


def test_other_users_get_permission_denied_or_forbidden(
        daemon: Callable[..., Daemon], short_tmp: Path) -> None:
    """uid 65534: a 0660 socket refuses the connect (exit 3); a 0666 one answers 403 (exit 1)."""
    os.chmod(short_tmp, 0o755)  # noqa: S103 - the other uid must reach the socket file
    d = daemon().start()
    done = _as_nobody(d, "ls")
    assert (done.returncode, done.stderr) == (
        3, f"volplugctl: cannot reach volplugd at {d.socket}: Permission denied {HINT}\n")
    os.chmod(d.socket, 0o666)  # noqa: S103 - now the peer-credential check must refuse
    done = _as_nobody(d, "ls")
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "volplugctl: forbidden: this user may not do that on the control socket\n")


# --- A real third-party plugin -------------------------------------------------------------



@pytest.mark.peer
def test_buttervolume_through_volplugctl(daemon: Callable[..., Daemon], short_tmp: Path,
                                         butter: bv.Buttervolume) -> None:
    """buttervolume via a .spec file: ready, the volume lifecycle, its 200-Err errors."""
    (short_tmp / "plugins").mkdir(exist_ok=True)
    (short_tmp / "plugins" / "btrfs.spec").write_text(f"unix://{butter.sock}\n")
    d = daemon().start()
    wait_until(lambda: d.plugins().get("btrfs", {}).get("state") == "ready", 30,
               message="buttervolume ready through volplugd")
    assert ok(d, "ls").splitlines()[1].split()[:3] == ["btrfs", "ready", "spec"]
    assert ok(d, "capabilities", "btrfs") == "scope: local\n"
    where = f"{butter.volumes}/ctl-v1"
    assert ok(d, "volume", "create", "btrfs", "ctl-v1") == "ctl-v1\n"
    assert "ctl-v1" in [v["name"] for v in as_json(d, "volume", "ls", "btrfs")["volumes"]]
    assert ok(d, "volume", "path", "btrfs", "ctl-v1") == f"{where}\n"
    assert ok(d, "volume", "mount", "btrfs", "ctl-v1", "--id", "c1") == f"{where}\n"
    assert os.path.isdir(where)
    assert ok(d, "volume", "unmount", "btrfs", "ctl-v1", "--id", "c1") == ""
    assert ok(d, "volume", "rm", "btrfs", "ctl-v1") == "ctl-v1\n"
    assert not os.path.exists(where)
    done = volplugctl(d, "volume", "create", "btrfs", "bad@name")
    assert (done.returncode, done.stderr) == (
        1, 'volplugctl: plugin_error: "@" is illegal in a volume name\n')
    done = volplugctl(d, "volume", "create", "btrfs", "v4", "-o", "copyonwrite=maybe")
    assert (done.returncode, done.stderr) == (1, (
        'volplugctl: plugin_error: Invalid option for copyonwrite: maybe. '
        'Set to "true" or "false".\n'))
