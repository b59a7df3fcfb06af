"""Discovery latency of the real daemon: socket bind() → ``ready``, unlink() → 404.

With BACKGROUND (1000) plugin sockets present and ready (served by one responder
process, probed at the default 10 s interval), SAMPLES (200) new sockets are created
one at a time, in the plugin dir on tmpfs:

* t0 just before ``bind()``; the bench binds and listens, hands the listening socket
  to the responder (SCM_RIGHTS), and polls ``GET /v1/plugins/{name}`` on the control
  socket over one keep-alive connection until it answers ``"state": "ready"``;
* then t0 just before ``unlink()``, polling until the same GET answers 404.

Two clients, each for SAMPLES sockets: one that polls tightly (a client hammering the
API: its own requests take most of the daemon's CPU, and each hand-off inside the
daemon waits for the GIL behind them), and one that waits on the event stream
(``GET /v1/events?follow=1``) for the plugin's ``ready`` (or ``evicted``) event before
it polls (a client that leaves the daemon alone). Both end with the same GET.

Beside each, the baseline from the same run: a raw inotify watch on the same folder,
read by this process (no watchdog), seeing the same bind/unlink: the latency floor of
any inotify-driven discovery. Goal: p99 ≤ 5 ms for bind→ready and for unlink→404.
Usage: .venv/bin/python bench/discovery.py [--quick] [--samples N] [--background N]
Runs on: the main thread only (inotify is read with select, not a thread).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import _common as c

GOAL = 0.005
WAIT = 5.0  # seconds one sample may take before it counts as a timeout
POLL_GAP = [0.0]  # seconds between polls (--poll-gap); 0: poll tightly


@dataclass
class Samples:
    t0_wall: dict[tuple[str, str], float] = field(default_factory=dict)  # (name, add|del)
    inotify_add: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)
    inotify_del: list[float] = field(default_factory=list)
    gone: list[float] = field(default_factory=list)
    polls: int = 0
    timeouts: int = 0


def poll_until(client: c.RawClient, target: str, done: bytes | int, t0: float,
               samples: Samples) -> float:
    """Seconds from t0 until GET target satisfies ``done`` (a body fragment or a status);
    inf after WAIT."""
    while True:
        status, body = client.get(target)
        now = time.monotonic()
        samples.polls += 1
        if (status == done) if isinstance(done, int) else (status == 200 and done in body):
            return now - t0
        if now - t0 > WAIT:
            samples.timeouts += 1
            return float("inf")
        if POLL_GAP[0]:
            time.sleep(POLL_GAP[0])


class Events:
    """The daemon's event stream, followed on its own connection (close-delimited NDJSON)."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.sock.sendall(b"GET /v1/events?since=0&follow=1 HTTP/1.1\r\nHost: volplugd\r\n\r\n")
        self.pending = b""
        head, _, self.pending = self._until(b"\r\n\r\n").partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"event stream refused: {head[:80]!r}")

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("event stream ended")
            self.pending += data
        return self.pending

    def wait_for(self, plugin: str, kind: str, to: str | None = None) -> None:
        """Read events until ``plugin``'s event of type ``kind`` (and state ``to``)."""
        while True:
            line, _, self.pending = self._until(b"\n").partition(b"\n")
            event = json.loads(line)
            if event["plugin"] == plugin and event["type"] == kind and event["to"] == to:
                return

    def close(self) -> None:
        self.sock.close()


@dataclass
class Setup:
    plugins: Path
    responder: c.Responder
    daemon: c.Daemon
    ino: c.Inotify
    events: Events | None = None  # None: poll tightly


def one(name: str, setup: Setup, samples: Samples) -> None:
    """One socket appears, becomes ready, disappears, is gone."""
    plugins, responder, daemon, ino = setup.plugins, setup.responder, setup.daemon, setup.ino
    path = str(plugins / f"{name}.sock")
    target = f"/v1/plugins/{name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    t0 = time.monotonic()
    samples.t0_wall[name, "add"] = time.time()
    sock.bind(path)
    sock.listen(128)
    responder.adopt(name, sock)
    sock.close()  # the responder holds its own copy now
    seen = ino.wait_for(f"{name}.sock", c.IN_CREATE, WAIT)
    samples.inotify_add.append(float("inf") if seen is None else seen - t0)
    if setup.events is not None:
        setup.events.wait_for(name, "state_changed", "ready")
    samples.ready.append(poll_until(daemon.client, target, b'"state":"ready"', t0, samples))

    t0 = time.monotonic()
    samples.t0_wall[name, "del"] = time.time()
    os.unlink(path)
    seen = ino.wait_for(f"{name}.sock", c.IN_DELETE, WAIT)
    samples.inotify_del.append(float("inf") if seen is None else seen - t0)
    if setup.events is not None:
        setup.events.wait_for(name, "evicted")
    samples.gone.append(poll_until(daemon.client, target, 404, t0, samples))
    responder.close(name)


def row(label: str, values: list[float], base: list[float]) -> list[str]:
    p50, p99 = c.percentile(values, 50), c.percentile(values, 99)
    ratio = p99 / c.percentile(base, 99) if base is not values else 1.0
    return [label, c.ms(p50), c.ms(p99), c.ms(max(values)), f"x{ratio:.0f}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 20 s)")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--background", type=int)
    parser.add_argument("--poll-gap", type=float, default=0.0, metavar="SECONDS",
                        help="sleep between control-socket polls (default 0: tight); "
                             "shows how much the polling itself costs the daemon")
    parser.add_argument("--client", choices=sorted(CLIENTS), action="append",
                        help="which client(s) to run (default: poll, then events)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="py-spy the daemon while sampling; raw stacks to FILE")
    args = parser.parse_args()
    args.client = args.client or ["poll", "events"]
    c.exit_cleanly_on_sigterm()
    POLL_GAP[0] = args.poll_gap
    count = args.samples or (50 if args.quick else 200)
    background = args.background if args.background is not None else \
        (300 if args.quick else 1000)
    c.fd_limit_for(2 * (background + count) + 64)
    print(f"discovery: {count} new sockets, {background} others present; {c.machine_line()}")
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(c.workdir("vpd"))
        plugins = work / "plugins"
        plugins.mkdir()
        responder = c.Responder(plugins, background, prefix="bg")
        stack.callback(responder.stop)
        daemon = c.Daemon(work, plugins)
        stack.callback(daemon.stop)
        started = time.monotonic()
        daemon.wait_ready()
        took = daemon.wait_plugins_ready(background, timeout=60)
        print(f"  daemon serving with {background} ready after "
              f"{time.monotonic() - started:.1f} s ({took:.1f} s after the control socket)")
        ino = c.Inotify(plugins)
        stack.callback(ino.close)
        verdicts = []
        for client in args.client:
            events = None
            if client == "events":
                events = Events(str(daemon.socket))
                stack.callback(events.close)
            print(f"\nclient: {CLIENTS[client]}")
            samples = Samples()
            profiler = None if args.profile is None else c.Profiler(daemon.pid, args.profile)
            cpu0, wall0 = daemon.cpu_seconds(), time.monotonic()
            setup = Setup(plugins, responder, daemon, ino, events)
            # Not measured: the stream's first answer replays every past event (thousands).
            one(f"{client}-warm-up", setup, Samples())
            for i in range(count):
                one(f"{client}{i:03d}", setup, samples)
            cpu = (daemon.cpu_seconds() - cpu0) / (time.monotonic() - wall0)
            if profiler is not None:
                profiler.stop()
                args.profile = None  # one profile: of the first client
            report(samples, cpu)
            stages(daemon, samples, client)
            ok = samples.timeouts == 0 and max(c.percentile(samples.ready, 99),
                                               c.percentile(samples.gone, 99)) <= GOAL
            verdicts.append(f"{client} {c.verdict(ok)}")
        print(f"\ngoal: p99 bind→ready and unlink→404 <= {GOAL * 1e3:.0f} ms: "
              f"{', '.join(verdicts)}")
    return 0


CLIENTS = {"poll": "polls GET /v1/plugins/{name} tightly from t0",
           "events": "waits for the plugin's event on /v1/events?follow=1, then GETs"}


def report(samples: Samples, cpu: float) -> None:
    rows = [
        row("inotify: bind → IN_CREATE read", samples.inotify_add, samples.inotify_add),
        row("volplugd: bind → ready in GET", samples.ready, samples.inotify_add),
        row("inotify: unlink → IN_DELETE read", samples.inotify_del, samples.inotify_del),
        row("volplugd: unlink → 404 in GET", samples.gone, samples.inotify_del),
    ]
    print(c.table(rows, ["ms", "p50", "p99", "max", "p99/inotify"]))
    n = len(samples.ready)
    print(f"  {samples.polls} control-socket polls ({samples.polls / (2 * n):.0f} per sample); "
          f"daemon CPU while sampling {cpu * 100:.0f} % of a core; timeouts: {samples.timeouts}")


STAGES = {"plugin_discovered": "add", "plugin_ready": "add", "plugin_evicted": "del"}


def stages(daemon: c.Daemon, samples: Samples, prefix: str) -> None:
    """Where the time goes, from the daemon's own log lines (wall-clock timestamps):
    bind → plugin_discovered (watcher + loop) → plugin_ready (activation) and
    unlink → plugin_evicted. Activation retries would show up here too."""
    logged: dict[tuple[str, str], float] = {}
    failed: list[str] = []
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            event, plugin = record.get("event"), record.get("plugin", "")
            if event == "plugin_activation_failed":
                failed.append(f"{plugin}: {record.get('error')}")
            if event in STAGES and plugin.startswith(prefix):
                when = datetime.fromisoformat(record["timestamp"]).timestamp()
                logged.setdefault((plugin, event), when)
    spans: dict[str, list[float]] = {"bind → plugin_discovered logged": [],
                                     "plugin_discovered → plugin_ready logged": [],
                                     "unlink → plugin_evicted logged": []}
    for (name, kind), t0 in samples.t0_wall.items():
        if kind == "add" and (name, "plugin_ready") in logged:
            found = logged.get((name, "plugin_discovered"), t0)
            spans["bind → plugin_discovered logged"].append(found - t0)
            spans["plugin_discovered → plugin_ready logged"].append(
                logged[name, "plugin_ready"] - found)
        elif kind == "del" and (name, "plugin_evicted") in logged:
            spans["unlink → plugin_evicted logged"].append(logged[name, "plugin_evicted"] - t0)
    rows = [[label, c.ms(c.percentile(v, 50)), c.ms(c.percentile(v, 99)),
             c.ms(max(v, default=float("nan")))] for label, v in spans.items()]
    print("where the time goes (the daemon's log timestamps, wall clock):")
    print(c.table(rows, ["ms", "p50", "p99", "max"]))
    if failed:
        print(f"  note: {len(failed)} activation failure(s) in the daemon log, e.g. {failed[0]}")


if __name__ == "__main__":
    sys.exit(main())
