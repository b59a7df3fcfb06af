"""discovery.remove_stale_after in the real daemon: the socket a SIGKILLed fake plugin
leaves is removed after the (short) delay, with its event, log line and counter; nothing
else is ever removed, and the daemon keeps serving its other plugins.

Each "not removed" case has a control beside it: a stale socket in a trusted folder that
appears *after* the kept files. Its removal proves the daemon looked at everything at
least as long as it looked at the control (a removal needs ``remove_stale_after`` of
silence), so a kept file is kept by the rule, not by a slow clock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import tiers
from tests.configs import FAST
from tests.fakeplugin import FakePlugin
from tests.harness import Daemon
from tests.rawsockets import leave_stale
from tests.waiting import wait_until

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]
AFTER = 0.4  # remove_stale_after in these tests
STALE = FAST + f"[discovery]\nremove_stale_after = {AFTER}\n"


def events(d: Daemon) -> list[dict[str, Any]]:
    body = d.get("/v1/events?since=0")
    return [json.loads(line) for line in body.decode().splitlines()]


def stale_events(d: Daemon) -> list[tuple[str, str | None, str]]:
    return [(e["plugin"], e["from"], e["reason"]) for e in events(d)
            if e["type"] == "stale_socket_removed"]


def reason(path: Path) -> str:
    return f"{path} refused connections and no process had it bound for {AFTER:g} s"


def removed_count(d: Daemon) -> int:
    for line in d.get("/metrics").decode().splitlines():
        if line.startswith("volplugd_stale_sockets_removed_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no volplugd_stale_sockets_removed_total in /metrics")


def wait_removed(d: Daemon, name: str, timeout: float = 15.0) -> None:
    wait_until(lambda: any(p == name for p, _, _ in stale_events(d)), timeout,
               message=f"stale_socket_removed for {name}; log:\n{d.log()[-3000:]}")


def test_a_killed_plugins_socket_is_removed_with_its_event_log_line_and_count(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin],
        plugin_process: Callable[[Path], subprocess.Popen[str]]) -> None:
    """kill -9 leaves the socket file; after remove_stale_after it is gone: one event
    (from unhealthy, then evicted), one log line, the counter at 1; the other plugin
    stays ready and the daemon answers."""
    d = daemon(config=STALE).start()
    folder = d.plugin_dirs[0]
    fakes_at(folder / "alive.sock")
    path = folder / "dead.sock"
    proc = plugin_process(path)
    d.wait_state("dead", "ready")
    d.wait_state("alive", "ready")
    assert removed_count(d) == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.exists()  # what kill -9 leaves
    wait_removed(d, "dead")
    d.wait_state("dead", None)
    assert not path.exists()
    assert [(e["type"], e["from"], e["to"], e["reason"]) for e in events(d)
            if e["plugin"] == "dead"][-2:] == [
        ("stale_socket_removed", "unhealthy", None, reason(path)),
        ("evicted", "unhealthy", None, "removed")]
    line = d.wait_log("stale_socket_removed")
    assert {k: line[k] for k in ("plugin", "path", "state", "after", "level")} == {
        "plugin": "dead", "path": str(path), "state": "unhealthy", "after": AFTER,
        "level": "warning"}
    assert removed_count(d) == 1
    assert d.plugins()["alive"]["state"] == "ready"
    assert d.get("/v1/health")["status"] == "ok"


def test_nothing_but_a_stale_socket_of_a_trusted_folder_is_removed(
        daemon: Callable[..., Daemon], short_tmp: Path,
        sockets: Callable[..., socket.socket]) -> None:
    """Kept, beside a control that is removed: a stale socket in an untrusted folder, a
    regular file and a FIFO named .sock, a listener whose backlog is full, one that
    never accepts, and a socket bound but not listening yet (refused, but /proc/net/unix
    shows it held)."""
    trusted, untrusted = short_tmp / "plugins", short_tmp / "open"
    trusted.mkdir()
    untrusted.mkdir()
    untrusted.chmod(0o777)
    leave_stale(untrusted / "foreign.sock")
    (trusted / "file.sock").write_bytes(b"not a socket")
    os.mkfifo(trusted / "fifo.sock")
    sockets(trusted / "full.sock", listen=0)
    fillers = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(str(trusted / "full.sock"))
    sockets(trusted / "mute.sock")
    sockets(trusted / "starting.sock", listen=None)
    kept = {p: os.lstat(p).st_ino for p in (
        untrusted / "foreign.sock", trusted / "file.sock", trusted / "fifo.sock",
        trusted / "full.sock", trusted / "mute.sock", trusted / "starting.sock")}
    try:
        d = daemon(config=STALE, plugin_dirs=[trusted, untrusted]).start()
        d.wait_state("foreign", "activating")
        leave_stale(trusted / "control.sock")
        wait_removed(d, "control")
        assert stale_events(d) == [("control", "activating", reason(trusted / "control.sock"))]
        assert {p: os.lstat(p).st_ino for p in kept} == kept
        assert set(d.plugins()) == {"foreign", "full", "mute", "starting"}
        assert d.plugins()["foreign"]["warnings"][0].startswith("untrusted: ")
        assert removed_count(d) == 1
    finally:
        for filler in fillers:
            filler.close()


def test_a_plugin_that_comes_back_at_the_same_path_is_never_removed(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin],
        plugin_process: Callable[[Path], subprocess.Popen[str]]) -> None:
    """Killed, then started again at its path (a new socket, maybe the old inode number):
    ready again and kept, while a later stale socket beside it is removed."""
    d = daemon(config=STALE).start()
    folder = d.plugin_dirs[0]
    path = folder / "phoenix.sock"
    first = plugin_process(path)
    d.wait_state("phoenix", "ready")
    first.send_signal(signal.SIGKILL)
    first.wait()
    d.wait_state("phoenix", "unhealthy")
    plugin_process(path)  # removes the stale file and binds anew
    d.wait_state("phoenix", "ready")
    leave_stale(folder / "control.sock")
    wait_removed(d, "control")
    assert [p for p, _, _ in stale_events(d)] == ["control"]
    assert d.plugins()["phoenix"]["state"] == "ready"
    assert path.exists()


def test_off_keeps_a_stale_socket_and_a_reload_that_sets_it_removes_it(
        daemon: Callable[..., Daemon]) -> None:
    """Unset: the socket stays through many failed activations; SIGHUP with the setting
    removes it."""
    d = daemon(config=FAST).start()
    path = d.plugin_dirs[0] / "dead.sock"
    leave_stale(path)
    wait_until(lambda: d.plugins().get("dead", {}).get("consecutive_failures", 0) >= 4
               or d.log().count('"plugin_activation_failed"') >= 4,
               message="several failed activations")
    assert path.exists()
    assert stale_events(d) == []
    d.config_path.write_text(STALE)
    d.signal(signal.SIGHUP)
    wait_removed(d, "dead")
    assert not path.exists()
    assert stale_events(d) == [("dead", "activating", reason(path))]


@pytest.mark.peer  # unshare (util-linux)
def test_a_read_only_plugin_folder_keeps_the_socket_logged_once_and_serving(
        daemon: Callable[..., Daemon], short_tmp: Path,
        fakes_at: Callable[..., FakePlugin]) -> None:
    """volplugd.service mounts /run read-only: the move aside fails with EROFS. One
    stale_socket_kept line per file (never tried again), nothing removed, no event, the
    counter at 0, and the ready plugin beside it served all along."""
    unshare = tiers.tool("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.skip("needs root: a mount namespace with a read-only bind mount")
    folder = short_tmp / "plugins"
    folder.mkdir()
    read_only = ['mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"']
    d = daemon(config=STALE, plugin_dirs=[folder], wrapper=[
        unshare, "--mount", "--propagation", "private", "sh", "-c", *read_only, str(folder)])
    fakes_at(folder / "alive.sock")
    d.start()
    d.wait_state("alive", "ready")
    leave_stale(folder / "first.sock")
    first = d.wait_log("stale_socket_kept")
    leave_stale(folder / "second.sock")
    second = d.wait_log("stale_socket_kept", nth=2)
    assert [(line["plugin"], line["path"], line["reason"]) for line in (first, second)] == [
        ("first", str(folder / "first.sock"), "Read-only file system"),
        ("second", str(folder / "second.sock"), "Read-only file system")]
    assert [e["plugin"] for e in d.log_events() if e["event"] == "stale_socket_kept"] == [
        "first", "second"]
    assert sorted(p.name for p in folder.iterdir()) == ["alive.sock", "first.sock",
                                                        "second.sock"]
    assert (stale_events(d), removed_count(d)) == ([], 0)
    assert d.plugins()["alive"]["state"] == "ready"
