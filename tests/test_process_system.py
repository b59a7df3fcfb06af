"""Supervision in the real daemon: who serves each plugin (its process, from the kernel),
its death seen at once through a pidfd, and a hang found by suspect probes. Plugins are
real processes (the fake plugin, tests/handoff.py) or the in-process fake plugin."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import pidns, tiers
from tests.configs import fast
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import Daemon
from tests.waiting import wait_until
from volplugd.plugin.text import from_bytes
from volplugd.supervision.cgroup import placement

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[1]
VOLPLUGCTL = str(Path(sys.executable).with_name("volplugctl"))
#: Regular probes never come during a test (the first lands 6 min to an hour in): only
#: the pidfd and suspicion can make a plugin unhealthy within the test's waits.
RARE_PROBES = fast(interval=3600.0, timeout=0.5, failure_threshold=3, default=30.0)
CREATE = {"name": "v1", "options": {}}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Plugin processes a test started; killed and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def fake_plugin(started: list[subprocess.Popen[bytes]], sock: Path,
                *extra_argv: bytes) -> subprocess.Popen[bytes]:
    """``python -m tests.fakeplugin SOCK`` in its own process, listening when returned.
    ``extra_argv`` are arguments only its command line shows (the plugin ignores them)."""
    code = ("import runpy, sys; sys.argv = sys.argv[:2]; "
            "runpy.run_module('tests.fakeplugin', run_name='__main__')")
    argv = [sys.executable.encode(), b"-c", code.encode(), str(sock).encode(), *extra_argv]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE)
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"fakeplugin listening on ")
    return proc


def command_of(pid: int) -> str:
    """What the daemon must show as the command of ``pid``: its argv, read here."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return from_bytes(f.read().rstrip(b"\0").replace(b"\0", b" "), 1024)


def unit_of(pid: int) -> str | None:
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        where = placement(f.read())
    return None if where is None else where.unit


def process_of(d: Daemon, name: str, pid: int) -> dict[str, Any]:
    """Wait until plugin ``name`` shows process ``pid``; its ``process`` object."""
    def shown() -> dict[str, Any] | None:
        process = (d.plugins().get(name) or {}).get("process")
        return process if process is not None and process["pid"] == pid else None
    process = wait_until(shown, 15.0, message=f"{name} served by pid {pid}")
    assert process is not None
    return process


def events(d: Daemon, plugin: str) -> list[tuple[str, str | None, str]]:
    lines = [json.loads(line) for line in d.get("/v1/events?since=0").decode().splitlines()]
    return [(e["type"], e["to"], e["reason"]) for e in lines if e["plugin"] == plugin]


def test_a_killed_plugin_is_unhealthy_at_once_and_others_are_served(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin],
        processes: list[subprocess.Popen[bytes]]) -> None:
    """kill -9 of a plugin's process: its pidfd fires, the probe right after is refused,
    and the plugin is unhealthy with "process PID (COMMAND) exited" after ONE failure
    (failure_threshold is 3, and no regular probe comes), while another plugin serves."""
    d = daemon(config=RARE_PROBES).start()
    fakes_at(d.plugin_dirs[0] / "other.sock")
    proc = fake_plugin(processes, d.plugin_dirs[0] / "victim.sock")
    d.wait_state("victim", "ready")
    command = command_of(proc.pid)
    assert process_of(d, "victim", proc.pid) == {
        "pid": proc.pid, "uid": os.getuid(), "command": command,
        "unit": unit_of(proc.pid), "container": None}
    proc.kill()
    plugin = d.wait_state("victim", "unhealthy")
    reason = f"process {proc.pid} ({command}) exited"
    assert (plugin["last_error"], plugin["consecutive_failures"]) == (reason, 1)
    assert events(d, "victim")[-1] == ("state_changed", "unhealthy", reason)
    assert plugin["process"]["pid"] == proc.pid  # the last process known to serve it
    exited = d.wait_log("plugin_process_exited")
    assert (exited["plugin"], exited["pid"]) == ("victim", proc.pid)
    assert d.plugins()["other"]["state"] == "ready"
    status, body = d.call("POST", "/v1/plugins/other/volumes", CREATE)
    assert (status, body["name"]) == (201, "v1")


@pytest.mark.parametrize("relisten", [True, False], ids=["child-relistens", "child-keeps"])
def test_a_socket_handed_to_a_child_keeps_the_plugin_ready(
        daemon: Callable[..., Daemon], processes: list[subprocess.Popen[bytes]],
        relisten: bool) -> None:
    """The listener forks and exits; its child keeps serving the socket. The probe after
    the exit succeeds, so the plugin stays ready and is identified again: the child if it
    called listen() itself, else nobody the kernel can name (exact warning)."""
    d = daemon(config=RARE_PROBES).start()
    sock = d.plugin_dirs[0] / "relay.sock"
    argv = [sys.executable, "-m", "tests.handoff", str(sock)] + (
        ["--relisten"] if relisten else [])
    parent = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    processes.append(parent)
    assert parent.stdin is not None
    assert parent.stdout is not None
    assert parent.stdout.readline() == f"listening {parent.pid}\n".encode()
    d.wait_state("relay", "ready")
    process_of(d, "relay", parent.pid)
    parent.stdin.write(b"go\n")
    parent.stdin.flush()
    child = int(parent.stdout.readline().split()[1])
    try:
        parent.wait(10)
        if relisten:
            assert process_of(d, "relay", child)["command"] == command_of(child)
        else:
            gone = (f"process: the process that listened on it (pid {parent.pid}) has "
                    "exited; another process still holds the socket")
            wait_until(lambda: gone in d.plugins()["relay"]["warnings"], 15.0,
                       message="the warning that nobody can be named")
            assert d.plugins()["relay"]["process"] is None
        plugin = d.plugins()["relay"]
        assert (plugin["state"], plugin["last_error"]) == ("ready", None)
        assert d.wait_log("plugin_process_exited")["pid"] == parent.pid
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_replaced_plugin_shows_its_new_process(
        daemon: Callable[..., Daemon], processes: list[subprocess.Popen[bytes]]) -> None:
    """A new plugin process at the same path is a new registration with a new process."""
    d = daemon(config=RARE_PROBES).start()
    sock = d.plugin_dirs[0] / "swap.sock"
    old = fake_plugin(processes, sock)
    d.wait_state("swap", "ready")
    process_of(d, "swap", old.pid)
    old.terminate()  # the fake plugin removes its socket on SIGTERM
    old.wait(10)
    new = fake_plugin(processes, sock)
    assert process_of(d, "swap", new.pid)["command"] == command_of(new.pid)
    assert d.plugins()["swap"]["state"] == "ready"
    assert ("evicted", None, "removed") in events(d, "swap") or (
        "evicted", None, "replaced") in events(d, "swap")


@contextlib.contextmanager
def a_create_left_hanging(d: Daemon, fp: FakePlugin, name: str,
                          endpoint: str = "*") -> Iterator[None]:
    """``fp`` hangs on ``endpoint`` and a volume Create to plugin ``name`` waits on a
    thread while the body runs; then ``fp`` answers again and stops, and the Create must
    have ended with the plugin's failure (502 or 504)."""
    fp.set(endpoint, b.Hang())
    answer: list[Any] = []
    thread = threading.Thread(
        target=lambda: answer.append(d.call("POST", f"/v1/plugins/{name}/volumes", CREATE)))
    thread.start()
    try:
        yield
    finally:
        fp.reset()
        fp.stop()
        thread.join(30)
    assert [status for status, _ in answer] in ([502], [504])


def probes_since(fp: FakePlugin, endpoint: str, after: str) -> int:
    """Requests to ``endpoint`` the plugin received after the first one to ``after``."""
    paths = [r.path for r in fp.requests]
    return paths[paths.index(after) + 1:].count(endpoint)


def test_a_plugin_hanging_on_everything_is_unhealthy_after_threshold_suspect_probes(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A Create still waiting after probe.timeout makes the plugin suspect: probed at once
    and every second, each within a second at most; failure_threshold (3) of them time out
    and it is unhealthy, though no regular probe came. Others keep being served."""
    d = daemon(config=RARE_PROBES).start()
    fp = fakes_at(d.plugin_dirs[0] / "stuck.sock")
    fakes_at(d.plugin_dirs[0] / "other.sock")
    d.wait_state("stuck", "ready")
    with a_create_left_hanging(d, fp, "stuck"):
        plugin = d.wait_state("stuck", "unhealthy", timeout=20.0)
        assert (plugin["consecutive_failures"], plugin["last_error"]) == (
            3, "sending request to plugin stuck activation endpoint: timed out: no complete "
               "answer within 0.5 s")
        assert probes_since(fp, "/Plugin.Activate", "/VolumeDriver.Create") == 3
        suspect = d.wait_log("plugin_suspect")
        assert (suspect["plugin"], suspect["reason"]) == (
            "stuck", "a volume operation has waited more than 0.5s")
        ended = d.wait_log("plugin_suspect_ended")
        assert (ended["plugin"], ended["state"]) == ("stuck", "unhealthy")
        status, body = d.call("POST", "/v1/plugins/other/volumes", CREATE)
        assert (status, body["name"]) == (201, "v1")


def test_a_suspects_probe_replaces_a_slower_regular_probe_in_flight(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A probe asked for (POST .../probe) more than a second after a Create began hangs
    with its 5 s deadline; when the Create turns the plugin suspect, that probe is dropped
    for a suspect's (1 s): four probes reach the plugin, three count, and the one asked
    for is answered with the first suspect probe's result."""
    d = daemon(config=fast(interval=3600.0, timeout=5.0, failure_threshold=3,
                           default=30.0)).start()
    fp = fakes_at(d.plugin_dirs[0] / "late.sock")
    d.wait_state("late", "ready")
    asked: list[Any] = []
    prober = threading.Thread(target=lambda: asked.append(
        d.call("POST", "/v1/plugins/late/probe")), daemon=True)
    with a_create_left_hanging(d, fp, "late"):
        fp.wait_requests(len(fp.requests) + 1)  # the Create is in the plugin
        began = time.monotonic()
        # The regular probe must start over a second after the Create (and well before
        # the 5 s suspicion) for the suspect's probe to end sooner than it.
        wait_until(lambda: time.monotonic() > began + 1.2, 5.0, message="a second to pass")
        prober.start()
        plugin = d.wait_state("late", "unhealthy", timeout=30.0)
        assert plugin["consecutive_failures"] == 3
        assert probes_since(fp, "/Plugin.Activate", "/VolumeDriver.Create") == 4
        prober.join(30)
        assert asked[0][0] == 200
        assert (asked[0][1]["state"], asked[0][1]["consecutive_failures"]) == ("ready", 1)


def test_a_slow_operation_with_probes_answered_ends_the_suspicion(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A plugin slow on a Create but answering probes is probed once, stays ready, and
    is no longer suspect."""
    d = daemon(config=RARE_PROBES).start()
    fp = fakes_at(d.plugin_dirs[0] / "slowcreate.sock")
    d.wait_state("slowcreate", "ready")
    with a_create_left_hanging(d, fp, "slowcreate", "/VolumeDriver.Create"):
        ended = d.wait_log("plugin_suspect_ended")
        assert (ended["plugin"], ended["state"]) == ("slowcreate", "ready")
        assert probes_since(fp, "/Plugin.Activate", "/VolumeDriver.Create") == 1
        assert d.plugins()["slowcreate"]["state"] == "ready"


HOSTILE_ARGV = (b"\x1b]0;PWNED\x07", b"<script>alert(1)</script>", b'"q"\\b', b"\xff\xfe",
                "bidi\u202eflip".encode(), b"line\nbreak", b"x" * 1500)


def test_the_process_shows_safely_in_json_inspect_status_page_and_metrics(
        daemon: Callable[..., Daemon], processes: list[subprocess.Popen[bytes]]) -> None:
    """A plugin process whose argv is hostile (escapes, markup, bad UTF-8, 1.5 KB): its
    command is safe text of at most 1 KiB in the JSON; volplugctl inspect, the status
    page and the metrics carry no raw control character and no markup of it."""
    d = daemon(config=RARE_PROBES, args=["--metrics-listen", "127.0.0.1:0"]).start()
    port = int(d.wait_log("metrics_listening")["port"])
    proc = fake_plugin(processes, d.plugin_dirs[0] / "argv.sock", *HOSTILE_ARGV)
    d.wait_state("argv", "ready")
    process = process_of(d, "argv", proc.pid)
    command = process["command"]
    assert command == command_of(proc.pid)
    assert len(command.encode()) <= 1024
    assert command.endswith("bytes cut)")
    assert "\\xff\\xfe" in command
    assert "\x1b]0;PWNED\x07" in command
    raw = subprocess.run(["curl", "-sS", "--unix-socket", d.socket, "http://localhost/v1/plugins"],
                         capture_output=True, timeout=60, check=True).stdout
    assert b"\x1b" not in raw
    assert "\u202e".encode() not in raw
    assert b"\\u001b]0;PWNED\\u0007" in raw
    assert b"\\u202e" in raw
    shown = subprocess.run([VOLPLUGCTL, "--socket", d.socket, "inspect", "argv"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(ln for ln in shown.splitlines() if ln.startswith("process:"))
    assert re.match(f"process: +pid {proc.pid}, uid {os.getuid()}: ", line), line
    assert "\\x1b]0;PWNED\\x07" in line
    assert "\\u202e" in line
    assert "\x1b" not in shown
    page = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/"], capture_output=True,
                          timeout=60, check=True).stdout.decode()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\x1b" not in page
    assert f"pid {proc.pid}" in page
    status, scrape = d.call("GET", "/metrics")
    unit = unit_of(proc.pid) or ""
    assert status == 200
    assert f'volplugd_plugin_info{{plugin="argv",unit="{unit}"}} 1' in scrape.decode()


@pytest.mark.peer  # unshare (util-linux)
def test_a_daemon_that_cannot_name_the_listener_shows_why_and_probes_still_work(
        daemon: Callable[..., Daemon], processes: list[subprocess.Popen[bytes]]) -> None:
    """volplugd in a new pid namespace: the kernel gives a host plugin's pid as 0, so
    there is no process to show or watch (the exact warning); the plugin is ready, and
    its kill -9 is still found by the probes (failure_threshold of them)."""
    unshare = tiers.tool("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.skip("needs root: a new pid namespace")
    d = daemon(config=fast(failure_threshold=2),
               wrapper=[unshare, "--pid", "--fork", "--mount-proc", "--kill-child", "--"])
    d.start()
    try:
        proc = fake_plugin(processes, d.plugin_dirs[0] / "far.sock")
        d.wait_state("far", "ready")
        warning = ("process: the listener is in another pid namespace (the kernel gives "
                   "its pid as 0)")
        wait_until(lambda: warning in d.plugins()["far"]["warnings"], 15.0,
                   message="the warning")
        assert d.plugins()["far"]["process"] is None
        assert d.wait_log("plugin_process_unknown")["reason"] == warning.removeprefix(
            "process: ")
        proc.kill()
        d.wait_state("far", "unhealthy")
        assert events(d, "far")[-1] == (
            "state_changed", "unhealthy", f"sending request to plugin far activation "
            f"endpoint: dial unix {d.plugin_dirs[0]}/far.sock: connect: connection refused")
        assert d.wait_log("plugin_unhealthy")["reason"] == events(d, "far")[-1][2]
    finally:
        assert d.proc is not None
        os.kill(pidns.child_of(d.proc.pid), signal.SIGTERM)  # unshare passes none on
        assert d.proc.wait(10) == 0

