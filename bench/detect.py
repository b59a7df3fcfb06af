"""How soon the real daemon, with its default settings, says a plugin died or hangs.

Every plugin here is a real process on a real unix socket (``tests/handoff.py``: it
answers the v1 protocol itself), or, for the hang, the fake plugin in this process told
to hang on everything. Times run from the bench's act to the arrival of the plugin's
``state_changed`` → ``unhealthy`` line on a ``GET /v1/events?follow=1`` stream (what a
client following volplugd sees), on the one monotonic clock.

1. **kill -9 → unhealthy, pidfd path** (N samples, one plugin at a time): the bench opens
   its own pidfd of the plugin's process before the kill and waits on it right after:
   **the raw pidfd** on the same kill is the floor. Goal p99 ≤ 5 ms.
2. **kill -9 → unhealthy, probe-only path**: a second daemon, run in a new pid namespace
   (``unshare --pid``), where the kernel cannot name a host process to it (pid 0): no
   pidfd, only the regular probes (every 10 s, 3 failures), as before supervision. P
   plugins killed at once, so each lands at its own phase. ``--quick`` (or no root)
   prints the estimate instead (the kill lands uniformly in an interval:
   (failure_threshold - U) * interval).
3. **hang → unhealthy**: H plugins hang on everything while a volume operation (List) is
   in flight to each: suspect after ``probe.timeout`` (5 s), then probes of at most 1 s.
   Goal ≤ 10 s. Beside it (full run only), H plugins that hang with no operation in
   flight: regular probes only, each waiting out the 5 s timeout.

Usage: .venv/bin/python bench/detect.py [--quick] [--samples N]
Runs on: the main thread; one thread follows the events; one per operation in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import Daemon as HarnessDaemon
from tests.harness import call
from tests.pidns import child_of

KILL_GOAL = 0.005
HANG_GOAL = 10.0
WAIT = 90.0  # the longest any one wait may take (a probe-only kill takes ~30 s)
INTERVAL, THRESHOLD, TIMEOUT = 10.0, 3, 5.0  # the defaults (config.md)


class Arrivals:
    """The daemon's event stream on its own connection; when each plugin's
    ``state_changed`` to a state first arrived (monotonic seconds)."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._sock.sendall(b"GET /v1/events?since=0&follow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        self._seen: dict[tuple[str, str], float] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True, name="events")
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # closed at the end
            self._follow()

    def _follow(self) -> None:
        pending = b""
        head_done = False
        while data := self._sock.recv(65536):
            now = time.monotonic()
            pending += data
            if not head_done:
                if b"\r\n\r\n" not in pending:
                    continue
                pending = pending.partition(b"\r\n\r\n")[2]
                head_done = True
            *lines, pending = pending.split(b"\n")
            with self._cond:
                for line in lines:
                    event = json.loads(line)
                    if event["type"] == "state_changed":
                        self._seen.setdefault((event["plugin"], event["to"]), now)
                self._cond.notify_all()

    def wait(self, plugin: str, state: str, timeout: float = WAIT) -> float:
        """When ``plugin``'s change to ``state`` arrived (waits for it)."""
        with self._cond:
            if not self._cond.wait_for(lambda: (plugin, state) in self._seen, timeout):
                raise SystemExit(f"no state_changed {plugin} -> {state} in {timeout} s")
            return self._seen[plugin, state]

    def close(self) -> None:
        self._sock.close()


class Plugins:
    """``tests/handoff.py`` plugin processes (optionally in a new pid namespace)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> int:
        """A plugin listening at ``folder/name.sock``; its pid."""
        argv = [sys.executable, "-m", "tests.handoff", str(self.folder / f"{name}.sock")]
        proc = subprocess.Popen(argv, cwd=c.REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        self._procs.append(proc)
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith(b"listening "):
            raise SystemExit(f"plugin {name} did not start")
        return proc.pid

    def stop(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def plugin(daemon: HarnessDaemon, name: str) -> dict[str, Any]:
    status, body = call(daemon.socket, "GET", f"/v1/plugins/{name}")
    return body if status == 200 and isinstance(body, dict) else {}


def watched(daemon: HarnessDaemon, name: str, pid: int) -> bool:
    process = plugin(daemon, name).get("process")
    return isinstance(process, dict) and process.get("pid") == pid


def kill_samples(daemon: c.Daemon, plugins: Plugins, events: Arrivals,
                 count: int) -> tuple[list[float], list[float]]:
    """(daemon, raw pidfd) seconds from kill -9 to unhealthy, one plugin at a time."""
    seen, floor = [], []
    for i in range(count):
        name = f"k{i}"
        pid = plugins.start(name)
        wait_for(lambda n=name, p=pid: watched(daemon, n, p), f"{name}'s process watched")
        pidfd = os.pidfd_open(pid)
        try:
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], WAIT)
            floor.append(time.monotonic() - t0)
        finally:
            os.close(pidfd)
        seen.append(events.wait(name, "unhealthy") - t0)
        os.unlink(plugins.folder / f"{name}.sock")  # evicted: the next one starts alone
    return seen, floor


def blind_daemon(stack: contextlib.ExitStack, work: Path) -> tuple[HarnessDaemon, Arrivals]:
    """A daemon with the default settings in a new pid namespace: it cannot name (nor
    watch) the host's plugin processes. Its plugin folder is ``work/blind``."""
    (work / "blind").mkdir()
    daemon = HarnessDaemon(work / "blind", plugin_dirs=[work / "blind" / "plugins"],
                           env={"PYTHONPATH": str(c.REPO)}, log_level="info",
                           wrapper=["unshare", "--pid", "--fork", "--mount-proc",
                                    "--kill-child", "--"])
    daemon.start()
    stack.callback(_stop_inside, daemon)
    events = Arrivals(daemon.socket)
    stack.callback(events.close)
    return daemon, events


def _stop_inside(daemon: HarnessDaemon) -> None:
    """SIGTERM to the daemon itself (``unshare`` passes no signal on), then reap both."""
    assert daemon.proc is not None
    with contextlib.suppress(OSError, IndexError, ValueError):
        os.kill(child_of(daemon.proc.pid), signal.SIGTERM)
    try:
        daemon.proc.wait(10)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()  # --kill-child takes the daemon along
        daemon.proc.wait()


def probe_only_samples(daemon: HarnessDaemon, plugins: Plugins, events: Arrivals,
                       count: int) -> list[float]:
    """kill -9 → unhealthy for plugins volplugd cannot name (no pidfd), killed at once."""
    pids = {f"n{i}": plugins.start(f"n{i}") for i in range(count)}
    for name in pids:
        wait_for(lambda n=name: plugin(daemon, n).get("state") == "ready", f"{name} ready")
        wait_for(lambda n=name: any("another pid namespace" in w
                                    for w in plugin(daemon, n).get("warnings", ())),
                 f"{name} not watchable")
    t0 = time.monotonic()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    return [events.wait(name, "unhealthy") - t0 for name in pids]


def hang_samples(daemon: c.Daemon, folder: Path, events: Arrivals, count: int,
                 with_operation: bool) -> list[float]:
    """Plugins that hang on everything, at once: op/hang start → unhealthy."""
    tag = "h" if with_operation else "q"
    fakes = {f"{tag}{i}": FakePlugin(str(folder / f"{tag}{i}.sock")) for i in range(count)}
    threads = []
    try:
        for name in fakes:
            wait_for(lambda n=name: plugin(daemon, n).get("state") == "ready", f"{name} ready")
        t0 = time.monotonic()
        for name, fake in fakes.items():
            fake.set("*", b.Hang())
            if with_operation:
                client = c.RawClient(daemon.socket, timeout=WAIT)
                thread = threading.Thread(target=_list, args=(client, name), daemon=True)
                thread.start()
                threads.append(thread)
        return [events.wait(name, "unhealthy") - t0 for name in fakes]
    finally:
        for fake in fakes.values():
            fake.stop()
        for thread in threads:
            thread.join(WAIT)


def _list(client: c.RawClient, name: str) -> None:
    with contextlib.suppress(OSError):
        client.get(f"/v1/plugins/{name}/volumes")
    client.close()


def row(label: str, values: list[float], floor: float | None = None) -> list[str]:
    p50, p99 = c.percentile(values, 50), c.percentile(values, 99)
    ratio = "-" if not floor else f"{p99 / floor:,.1f}x"
    return [label, str(len(values)), c.ms(p50), c.ms(p99), c.ms(max(values)), ratio]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    parser.add_argument("--samples", type=int, default=0, help="kill -9 samples (default 50)")
    args = parser.parse_args()
    kills = args.samples or (10 if args.quick else 50)
    parallel = 3 if args.quick else 8
    c.exit_cleanly_on_sigterm()
    print(c.machine_line())
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(c.workdir("vpd"))
        folder = work / "plugins"
        folder.mkdir()
        daemon = c.Daemon(work, folder)  # the default settings
        stack.callback(daemon.stop)
        daemon.wait_ready()
        events = Arrivals(daemon.socket)
        stack.callback(events.close)
        plugins = Plugins(folder)
        stack.callback(plugins.stop)
        seen, floor = kill_samples(daemon, plugins, events, kills)
        floor_p99 = c.percentile(floor, 99)
        rows = [row("raw pidfd (the floor)", floor), row("kill -9, pidfd path", seen, floor_p99)]
        if args.quick or shutil.which("unshare") is None or os.geteuid() != 0:
            estimate = [(THRESHOLD - u / 100) * INTERVAL for u in range(100)]
            rows.append(row("kill -9, probe-only (estimate)", estimate, floor_p99))
        else:
            blind, blind_events = blind_daemon(stack, work)
            outside = Plugins(blind.plugin_dirs[0])
            stack.callback(outside.stop)
            rows.append(row("kill -9, probe-only path", probe_only_samples(
                blind, outside, blind_events, parallel), floor_p99))
        hung = hang_samples(daemon, folder, events, parallel, with_operation=True)
        rows.append(row("hang + operation → unhealthy", hung))
        if not args.quick:
            rows.append(row("hang, no operation (probes)", hang_samples(
                daemon, folder, events, parallel, with_operation=False)))
    print(c.table(rows, ["path", "n", "p50 ms", "p99 ms", "max ms", "p99/floor"]))
    kill_ok, hang_ok = c.percentile(seen, 99) <= KILL_GOAL, max(hung) <= HANG_GOAL
    print(f"kill -9 → unhealthy p99 {c.ms(c.percentile(seen, 99))} ms "
          f"(goal ≤ {KILL_GOAL * 1e3:g} ms): {c.verdict(kill_ok)}")
    print(f"hang → unhealthy max {max(hung):.2f} s (goal ≤ {HANG_GOAL:g} s): "
          f"{c.verdict(hang_ok)}")
    return 0 if kill_ok and hang_ok else 1


if __name__ == "__main__":
    sys.exit(main())
