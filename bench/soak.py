"""Soak: socket create/delete cycles and hostile plugins, under four readers.

50 steady plugins (one responder process) are ready; the real daemon probes every second
(activate, list and probe timeouts 1 s). Readers poll ``/v1/health``, ``/v1/plugins``,
``/metrics`` and ``/v1/events?since=…`` on keep-alive connections all along.
1. Baseline (``--base`` s): readers only; then the daemon's fds, threads, RSS (/proc).
2. Storm: ``--cycles`` (10,000) sockets bound by the bench at ``--rate``/s, served by the
   responder, removed ``--window`` cycles later (every tenth named with bytes that are
   not UTF-8), while the ``_hostile`` plugins run and one thread sends volume calls to
   them through volplugd.
3. Settle: hostile plugins stopped; wait (deadline) for only the 50 listed, all ready,
   fds and threads at most the baseline's; then RSS.
Prints those figures beside the baseline's, 5xx per reader (and 500s among the volume
calls), p50/p99 per reader and probe lateness (the daemon's histogram), baseline vs storm;
the daemon's CPU in the storm, all threads and the supervisor loop's (its main thread).
Usage: .venv/bin/python bench/soak.py [--cycles N] [--rate R] [--quick]
Runs on: the main thread (cycles), a thread per reader, one for the calls, the Killer's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import _common as c
import _hostile as h

STEADY = 50
CONFIG = """[probe]
interval = 1.0
timeout = 1.0
[plugin]
timeouts = { activate = 1.0, list = 1.0, default = 5.0 }
"""
READERS = ("/v1/health", "/v1/plugins", "/metrics", "/v1/events")
HEALTH_GOAL = 0.020
RSS_GOAL = 10 << 20
SETTLE = 120.0  # seconds the storm may take to settle before we call it a leak


@dataclass
class Reader:
    """One endpoint polled in a loop; latencies by phase, and every 5xx answer."""

    target: str
    times: dict[str, list[float]] = field(default_factory=lambda: {"base": [], "storm": []})
    five_xx: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # no answer at all

    def run(self, control: str, phase: list[str], stop: threading.Event, gap: float) -> None:
        client = c.RawClient(control, timeout=30.0)
        since = 0
        try:
            while not stop.wait(gap):
                target = f"{self.target}?since={since}" if self.target == "/v1/events" \
                    else self.target
                start = time.perf_counter()
                try:
                    status, body = client.get(target)
                except OSError as err:
                    self.failures.append(f"GET {target}: {err!r}")
                    client.close()
                    continue
                self.times.setdefault(phase[0], []).append(time.perf_counter() - start)
                if status >= 500:
                    self.five_xx.append(f"GET {target}: {status} {body[:300]!r}")
                elif self.target == "/v1/events" and body.strip():
                    since = json.loads(body.rstrip(b"\n").rsplit(b"\n", 1)[-1])["seq"]
        finally:
            client.close()


@dataclass
class Report:
    before: c.Usage
    after: c.Usage
    settled: bool
    readers: list[Reader]
    calls: Counter[str]  # "name status" -> count, the volume calls to hostile plugins
    refused: Counter[str]  # "name: message" -> count, their 409 answers (why not ready)
    bad_calls: list[str]  # 500s among them (bodies), and calls that got no answer
    kills: int
    killed: Counter[int]  # volplugd's answers to the calls whose plugin was killed
    discovered: int  # plugins the daemon registered during the storm
    lateness: dict[str, float]  # phase -> p99 upper bound (s), from the histogram
    rss: dict[int, int]  # cycles done -> the daemon's RSS then
    storm_seconds: float
    cpu: tuple[float, ...]  # the daemon's CPU s/s in the storm: all threads, the loop's

    @property
    def five_xx(self) -> int:
        return sum(len(r.five_xx) for r in self.readers) + len(self.bad_calls)


def metric_lines(control: str) -> list[str]:
    client = c.RawClient(control)
    try:
        status, body = client.get("/metrics")
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}: {body[:300]!r}")
    return body.decode().splitlines()


def lateness_buckets(lines: list[str]) -> dict[float, float]:
    prefix = 'volplugd_probe_lateness_seconds_bucket{le="'
    return {float(line[len(prefix):].split('"', 1)[0]): float(line.rsplit(" ", 1)[1])
            for line in lines if line.startswith(prefix)}


def counter(lines: list[str], sample: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(sample))


def cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the daemon, and of its main thread (the supervisor loop)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return c.proc_cpu_seconds(pid), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p99_bound(before: dict[float, float], after: dict[float, float]) -> float:
    """The smallest bucket bound holding 99 % of the probes between two scrapes."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    for le in sorted(after):
        if after[le] - before.get(le, 0.0) >= 0.99 * total:
            return le if total else float("nan")
    return float("nan")


def cycles(s: c.Setup, count: int, rate: float, window: int) -> dict[int, int]:
    """``count`` sockets bound, served, and removed ``window`` cycles later; the
    daemon's RSS after each fifth of them."""
    live: deque[tuple[str, bytes]] = deque()
    samples = {}
    start = time.monotonic()

    def drop() -> None:
        name, path = live.popleft()
        s.responder.close(name)
        os.unlink(path)

    for i in range(count):
        name = f"c{i:05d}"
        raw = (b"bad\xff" if i % 10 == 9 else b"") + name.encode()  # not UTF-8: skipped
        path = os.path.join(os.fsencode(s.plugins), raw + b".sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(16)
        s.responder.adopt(name, sock)
        sock.close()
        live.append((name, path))
        if len(live) > window:
            drop()
        if (i + 1) % max(1, count // 5) == 0:
            samples[i + 1] = s.daemon.rss_bytes()
        ahead = start + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    while live:
        drop()
    return samples


def call_hostile(control: str, stop: threading.Event, calls: Counter[str],
                 refused: Counter[str], bad: list[str]) -> None:
    """Volume calls through volplugd to the hostile plugins, one after another; each 409's
    message counted in ``refused`` ("name: message")."""
    client = c.RawClient(control, timeout=30.0)
    try:
        while not stop.is_set():
            for name in h.BEHAVIOURS:
                try:
                    status, body = client.get(f"/v1/plugins/{name}/volumes")
                except OSError as err:
                    bad.append(f"{name}: no answer: {err!r}")
                    client.close()
                    continue
                calls[f"{name} {status}"] += 1
                if status == 409:
                    refused[f"{name}: {json.loads(body)['error']['message']}"] += 1
                if status == 500:
                    bad.append(f"GET /v1/plugins/{name}/volumes: 500 {body[:300]!r}")
    finally:
        client.close()


def storm(s: c.Setup, count: int, rate: float, window: int
          ) -> tuple[Counter[str], Counter[str], list[str], h.Killer, dict[int, int]]:
    """The cycles, with the hostile plugins and the volume calls to them; all stopped
    when it returns."""
    calls: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    bad_calls: list[str] = []
    hostile = h.Hostile(s.plugins)
    killer = h.Killer(s.plugins, s.daemon.socket)
    stop = threading.Event()
    caller = threading.Thread(target=call_hostile, name="soak calls",
                              args=(s.daemon.socket, stop, calls, refused, bad_calls))
    try:
        listed(s.daemon, set(h.BEHAVIOURS), h.ACTIVATED)
        killer.start()
        caller.start()
        rss = cycles(s, count, rate, window)
        deadline = time.monotonic() + 60
        while killer.kills < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # at least one plugin killed mid-call, even in a short run
    finally:
        stop.set()
        if caller.is_alive():
            caller.join()
        if killer.is_alive():
            killer.stop()
        hostile.stop()
    return calls, refused, bad_calls, killer, rss


def listed(daemon: c.Daemon, names: set[str], ready: set[str], timeout: float = 60.0) -> None:
    """Wait until volplugd lists every one of ``names``, and those of ``ready`` are ready
    (a call to a plugin still activating is refused, 409, whatever the plugin would do)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            status, body = daemon.client.get("/v1/plugins")
            states = {p["name"]: p["state"] for p in json.loads(body)["plugins"]} \
                if status == 200 else {}
            missing = names - set(states) | {n for n in ready if states.get(n) != "ready"}
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not listed or not ready after {timeout} s: "
                                   f"{sorted(missing)}: {states}")
            time.sleep(0.05)
    finally:
        daemon.client.close()  # the storm's connections are its own threads' only


def settle(daemon: c.Daemon, before: c.Usage) -> tuple[bool, c.Usage]:
    """Wait until only the steady plugins are listed, all ready, and the daemon holds no
    more fds and threads than at the baseline; False at the deadline. With the usage
    then (a probe's connection may come and go a moment later)."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        client = c.RawClient(daemon.socket)  # closed before the count: as at the baseline
        try:
            counts = json.loads(client.get("/v1/health")[1])["plugins"]
        finally:
            client.close()
        now = c.Usage.of(daemon.pid)
        if (sum(counts.values()), counts["ready"]) == (STEADY, STEADY) and \
                now.fds <= before.fds and now.threads <= before.threads:
            return True, now
        time.sleep(0.1)
    return False, now


def soak(count: int, *, rate: float = 200.0, window: int = 100, base: float = 10.0,
         gap: float = 0.01, quiet: bool = False) -> Report:
    """The whole run (also used, short, by tests/test_soak.py)."""
    with contextlib.ExitStack() as stack:
        s = c.Setup.start(stack, STEADY, CONFIG, prefix="vpsoak")
        s.daemon.wait_plugins_ready(STEADY, timeout=60)
        control, pid = s.daemon.socket, s.daemon.pid
        phase, stop = ["base"], threading.Event()
        readers = [Reader(t) for t in READERS]
        threads = [threading.Thread(target=r.run, args=(control, phase, stop, gap),
                                    name=f"soak reader {r.target}") for r in readers]
        stack.callback(lambda: [t.join() for t in threads])
        stack.callback(stop.set)
        for t in threads:
            t.start()
        first = metric_lines(control)
        s.daemon.client.close()  # only the readers stay connected
        time.sleep(base)  # the baseline phase: readers only
        before, at_storm = c.Usage.of(pid), metric_lines(control)
        if not quiet:
            print(f"baseline: {STEADY} plugins ready, {base:.0f} s of readers; storm: "
                  f"{count} cycles at {rate:.0f}/s")
        phase[0] = "storm"
        started, cpu_before = time.monotonic(), cpu(pid)
        calls, refused, bad_calls, killer, rss = storm(s, count, rate, window)
        storm_seconds = time.monotonic() - started
        used = tuple((b - a) / storm_seconds for a, b in zip(cpu_before, cpu(pid), strict=True))
        at_end = metric_lines(control)
        phase[0] = "settle"
        settled, after = settle(s.daemon, before)
    added = 'volplugd_discovery_events_total{event="added"}'
    return Report(before, after, settled, readers, calls, refused, bad_calls + killer.bad,
                  killer.kills, killer.statuses,
                  int(counter(at_end, added) - counter(at_storm, added)),
                  {"base": p99_bound(lateness_buckets(first), lateness_buckets(at_storm)),
                   "storm": p99_bound(lateness_buckets(at_storm), lateness_buckets(at_end))},
                  rss, storm_seconds, used)


def show(r: Report, count: int) -> bool:
    print(f"storm: {count} cycles in {r.storm_seconds:.0f} s; the daemon registered "
          f"{r.discovered} plugins in it; {r.kills} plugins killed mid-call")
    mb = 1 << 20
    b, a = r.before, r.after
    print(c.table([["fds", b.fds, a.fds, a.fds - b.fds],
                   ["threads", b.threads, a.threads, a.threads - b.threads],
                   ["RSS MB", f"{b.rss / mb:.1f}", f"{a.rss / mb:.1f}",
                    f"{(a.rss - b.rss) / mb:+.1f}"]], ["daemon", "before", "after", "change"]))
    rows = []
    for rd in r.readers:
        rows.append([f"GET {rd.target}", *(x for t in (rd.times["base"], rd.times["storm"])
                     for x in (len(t), c.ms(c.percentile(t, 50)), c.ms(c.percentile(t, 99)))),
                     len(rd.five_xx), len(rd.failures)])
    print(c.table(rows, ["ms", "n base", "p50", "p99", "n storm", "p50", "p99", "5xx",
                         "no answer"]))
    print("volume calls to hostile plugins (name status: count): "
          + ", ".join(f"{k}: {v}" for k, v in sorted(r.calls.items())))
    print("why not ready (name: message: count): "
          + "; ".join(f"{k}: {v}" for k, v in r.refused.most_common(8)))
    print(f"calls whose plugin was killed mid-call: {r.kills}, answered "
          + ", ".join(f"{k}: {v}" for k, v in sorted(r.killed.items())))
    for line in [x for rd in r.readers for x in rd.five_xx + rd.failures][:5] + r.bad_calls[:5]:
        print(f"  !! {line}")
    print("RSS MB during the storm (cycles: MB): " + ", ".join(
        f"{n}: {v / mb:.1f}" for n, v in r.rss.items()))
    print(f"probe lateness p99 (histogram bound): baseline <= {r.lateness['base']} s, "
          f"storm <= {r.lateness['storm']} s")
    print(f"daemon CPU in the storm: {r.cpu[0]:.2f} s/s, the loop's {r.cpu[1]:.2f} s/s")
    health = c.percentile(r.readers[0].times["storm"], 99)
    goals = [("0 5xx", r.five_xx == 0), ("fds and threads back to baseline", r.settled),
             ("RSS growth <= 10 MB", r.after.rss - r.before.rss <= RSS_GOAL),
             ("/v1/health p99 <= 20 ms in the storm", health <= HEALTH_GOAL)]
    for goal, ok in goals:
        print(f"  goal {goal}: {c.verdict(ok)}")
    return all(ok for _, ok in goals)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--cycles", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=200.0, help="cycles a second")
    p.add_argument("--window", type=int, default=100, help="sockets alive at once")
    p.add_argument("--base", type=float, default=10.0, help="baseline seconds")
    p.add_argument("--quick", action="store_true", help="500 cycles, 3 s baseline")
    args = p.parse_args()
    if args.quick:
        args.cycles, args.base = 500, 3.0
    c.exit_cleanly_on_sigterm()
    print(c.machine_line())
    report = soak(args.cycles, rate=args.rate, window=args.window, base=args.base)
    return 0 if show(report, args.cycles) else 1


if __name__ == "__main__":
    raise SystemExit(main())
