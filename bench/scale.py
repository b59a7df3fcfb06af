"""The real daemon at scale: CPU and memory at 1000 plugins, probe lateness at 5000.

(a) 1000 plugins (one responder process serves them all) at the default probe interval
    (10 s): the daemon's CPU (% of one core, from utime+stime in /proc/PID/stat) and its
    RSS (VmRSS, sampled each second) over a 60 s window that starts once all are ready.
    Baselines from the same run: the responder's own CPU for answering the same probes
    (what a minimal server spends on that traffic), and the RSS of a process that only
    imports the daemon (the floor) -- so the per-plugin cost is (RSS - floor) / N.
    Goals: <= 2 % of one core, <= 80 MB.
(b) 5000 plugins at the same 10 s interval: probe lateness. By default the same daemon
    grows from (a): 4000 more sockets appear at once (one burst of inotify events);
    ``--part b`` alone starts a fresh daemon on 5000. The responder logs when each probe
    arrives. Due times are jittered but kept in phase (next due = last due + interval),
    so for the probes k = 0, 1, ... of one plugin a_k - k * interval = first due +
    lateness_k, and lateness relative to that plugin's least-late probe is
    (a_k - k * interval) - min_j (a_j - j * interval). The 1000 plugins of (a) bring a
    calm minute of history, so their reference is close to an on-time probe; for new
    plugins it is a lower bound (a delay common to all their probes is invisible from
    outside). Shown for every probe since (b) began (start-up burst included), for the
    steady state (from half an interval after all were ready), and as |interval - 10 s|.
    Baseline: the responder's capacity (keep-alive requests/s from one client) beside
    the probe rate the daemon must sustain. Goal: p99 <= 1 s.
Budget: (a) + (b) by default in <= 90 s; ``--part b`` takes ~50 s and shows the steady
state over 2.5 intervals. Usage:
    .venv/bin/python bench/scale.py [--quick] [--part a|b|both] [--profile FILE]
Runs on: the main thread only.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as c

CPU_GOAL = 0.02
RSS_GOAL = 80e6
LATENESS_GOAL = 1.0
INTERVAL = 10.0
BUDGET, QUICK_BUDGET = 90.0, 20.0  # seconds the whole script may take
STOP_ALLOWANCE = 5.0  # stopping the daemon and the responder, reading the request log

IMPORT_RSS = """
import volplugd.cli, volplugd.daemon
print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
"""


def import_floor() -> int:
    """RSS of a process that has imported everything the daemon imports."""
    out = subprocess.run([sys.executable, "-c", IMPORT_RSS], capture_output=True, text=True,
                         check=True, cwd=c.TMPFS,
                         env={"PYTHONPATH": str(c.REPO), "PATH": "/usr/bin:/bin"})
    return int(out.stdout) * 1024


def part_a(setup: c.Setup, count: int, window: float, profile: Path | None) -> bool:
    print(f"(a) {count} plugins at the default interval ({INTERVAL:.0f} s), "
          f"{window:.0f} s window")
    daemon, responder = setup.daemon, setup.responder
    took = daemon.wait_plugins_ready(count, timeout=60)
    print(f"  all {count} ready {took:.1f} s after the control socket answered")
    profiler = None if profile is None else c.Profiler(daemon.pid, profile)
    d_split, r_cpu, served = (c.proc_cpu_split(daemon.pid), c.proc_cpu_seconds(responder.pid),
                              responder.served())
    start = time.monotonic()
    rss: list[int] = []
    while (elapsed := time.monotonic() - start) < window:
        rss.append(daemon.rss_bytes())
        time.sleep(min(1.0, max(0.0, window - elapsed)))
    elapsed = time.monotonic() - start
    user, system = (b - a for a, b in zip(d_split, c.proc_cpu_split(daemon.pid), strict=True))
    d_cpu, d_sys = (user + system) / elapsed, system / elapsed
    r_cpu = (c.proc_cpu_seconds(responder.pid) - r_cpu) / elapsed
    rate = (responder.served() - served) / elapsed
    threads = c.proc_threads(daemon.pid)
    if profiler is not None:
        profiler.stop()
    peak, floor = max(rss), import_floor()
    rows = [
        ["volplugd CPU, % of one core", f"{d_cpu * 100:.2f}", f"<= {CPU_GOAL * 100:.0f}",
         c.verdict(d_cpu <= CPU_GOAL)],
        ["  of which in the kernel (stime)", f"{d_sys * 100:.2f}", f"{threads} threads", ""],
        ["responder CPU for the same probes (baseline)", f"{r_cpu * 100:.2f}",
         f"x{d_cpu / r_cpu:.1f}" if r_cpu else "-", ""],
        ["volplugd RSS peak, MB", f"{peak / 1e6:.1f}", f"<= {RSS_GOAL / 1e6:.0f}",
         c.verdict(peak <= RSS_GOAL)],
        ["import-only RSS (baseline), MB", f"{floor / 1e6:.1f}",
         f"+{(peak - floor) / count / 1e3:.1f} KB/plugin", ""],
    ]
    print(c.table(rows, ["", "value", "goal / ratio", ""]))
    per_probe = (d_cpu / rate * 1e3, r_cpu / rate * 1e3) if rate else (0.0, 0.0)
    print(f"  requests answered: {rate:.0f}/s (probes, one per plugin per {INTERVAL:.0f} s); "
          f"CPU per probe: volplugd {per_probe[0]:.2f} ms, responder {per_probe[1]:.3f} ms")
    return d_cpu <= CPU_GOAL and peak <= RSS_GOAL


def capacity(socket_path: str, seconds: float = 0.5) -> float:
    """Keep-alive requests/s one raw client gets from the responder (List calls: they
    do not count as probes in the request log)."""
    client = c.RawClient(socket_path)
    n, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        client.request("POST", "/VolumeDriver.List")
        n += 1
    client.close()
    return n / (time.monotonic() - start)


def probes_of(seen: list[tuple[float, str]]) -> list[float]:
    """Probe arrival times: the Activate calls after activation's Capabilities call."""
    codes = [code for _, code in seen]
    if "C" not in codes:
        return []
    first = codes.index("C")
    return [t for t, code in seen[first + 1:] if code == "A"]


@dataclass
class Lateness:
    phase: list[float] = field(default_factory=list)  # probes since (b) began
    steady: list[float] = field(default_factory=list)  # from interval/2 after all ready
    deviation: list[float] = field(default_factory=list)  # |interval - configured|
    plugins: int = 0  # plugins probed at least twice


def lateness(requests: dict[str, list[tuple[float, str]]], interval: float, since: float,
             all_ready: float | None) -> Lateness:
    """Per probe arriving after ``since``: lateness relative to the plugin's least-late
    probe (over all its probes, so (a)'s calm history is the reference when there)."""
    out = Lateness()
    cutoff = None if all_ready is None else all_ready + interval / 2
    for seen in requests.values():
        arrivals = probes_of(seen)
        if len(arrivals) < 2:
            continue
        out.plugins += 1
        offsets = [a - k * interval for k, a in enumerate(arrivals)]
        least = min(offsets)
        for offset, arrival in zip(offsets, arrivals, strict=True):
            if arrival >= since:
                out.phase.append(offset - least)
            if cutoff is not None and arrival >= cutoff:
                out.steady.append(offset - least)
        # an early interval is the previous probe's lateness: count both signs
        out.deviation += [abs(b - a - interval) for a, b in itertools.pairwise(arrivals)
                          if b >= since]
    return out


def part_b(setup: c.Setup, count: int, interval: float, deadline: float,
           profile: Path | None) -> bool:
    """Grow ``setup`` to ``count`` plugins (a no-op when it has them) and watch the probes
    until ``deadline``, or 2.5 intervals after all are ready if that comes first."""
    daemon, responder = setup.daemon, setup.responder
    grow = count - len(responder.names)
    print(f"(b) {count} plugins at a {interval:g} s interval ({count / interval:.0f} probes/s)"
          + (f": {grow} more sockets appear at once" if grow > 0 else ""))
    cap = capacity(str(setup.work / "plugins" / f"{responder.names[0]}.sock"))
    profiler = None if profile is None else c.Profiler(daemon.pid, profile)
    d_cpu, start = daemon.cpu_seconds(), time.monotonic()
    if grow > 0:
        responder.bind("q", grow)
    took = daemon.wait_ready_by(count, deadline)
    all_ready = None if took is None else time.monotonic()
    end = max(deadline, time.monotonic() + 2.0)
    if all_ready is not None:
        end = min(end, all_ready + 2.5 * interval)
    time.sleep(max(0.0, end - time.monotonic()))
    d_cpu = (daemon.cpu_seconds() - d_cpu) / (time.monotonic() - start)
    ready = daemon.counts().get("ready", 0)
    if profiler is not None:
        profiler.stop()
    requests = setup.responder.requests(setup.work)
    after = "after they appeared" if grow > 0 else "after the control socket answered"
    when = f"all {count} ready {took:.1f} s {after}" if took is not None \
        else f"only {ready} ready when the budget ran out"
    print(f"  {when}; watched {end - start:.0f} s")
    found = lateness(requests, interval, start, all_ready)
    rows = [[label, f"{c.percentile(v, 50):.3f}", f"{c.percentile(v, 99):.3f}",
             f"{max(v, default=float('nan')):.3f}", len(v)] for label, v in (
        ("lateness, s: every probe since (b) began", found.phase),
        ("  steady state (from interval/2 after all ready)", found.steady),
        ("|interval - configured|, s", found.deviation))]
    print(c.table(rows, ["", "p50", "p99", "max", "n"]))
    print(f"  {found.plugins} of {count} plugins seen probed at least twice; volplugd CPU "
          f"{d_cpu * 100:.0f} % of a core; responder capacity {cap:.0f} req/s from one "
          f"client vs {count / interval:.0f} probes/s needed (x{cap * interval / count:.0f})")
    late = c.percentile(found.phase, 99)
    enough = len(found.phase) >= count * 0.2
    steady = ("n/a (too short after all were ready: run --part b)" if len(found.steady) < 100
              else c.verdict(c.percentile(found.steady, 99) <= LATENESS_GOAL))
    print(f"  goal p99 lateness <= {LATENESS_GOAL:.0f} s: every probe "
          f"{c.verdict(enough and late <= LATENESS_GOAL)}; steady state {steady}"
          + ("" if enough else " (too few probes seen)"))
    return enough and late <= LATENESS_GOAL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 20 s)")
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--window", type=float, help="seconds of (a)'s window")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="py-spy the daemon during the window(s); raw stacks to FILE")
    args = parser.parse_args()
    c.exit_cleanly_on_sigterm()
    began = time.monotonic()
    deadline = began + (QUICK_BUDGET if args.quick else BUDGET) - STOP_ALLOWANCE
    # --quick: fewer plugins; (b) keeps the probe rate with a shorter interval
    count_a, count_b, interval_b = (300, 500, 1.0) if args.quick else (1000, 5000, INTERVAL)
    print(f"scale: {c.machine_line()}")
    c.fd_limit_for(2 * count_b + 256)
    results = []
    with contextlib.ExitStack() as stack:
        if args.part in ("a", "both"):
            setup = c.Setup.start(stack, count_a)
            window = args.window or (4.0 if args.quick else 60.0)
            results.append(part_a(setup, count_a, window, args.profile))
        if args.part in ("b", "both"):
            if args.part == "b" or interval_b != INTERVAL:
                config = "" if interval_b == INTERVAL else \
                    f"[probe]\ninterval = {interval_b}\ntimeout = {interval_b / 2}\n"
                stack.close()  # (a)'s daemon, if any, is not the one (b) needs
                setup = c.Setup.start(stack, count_b, config)
            results.append(part_b(setup, count_b, interval_b, deadline, args.profile))
    print(f"scale: {c.verdict(all(results))} ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
