"""The real daemon at scale: CPU and memory at 1000 plugins, probe lateness at 5000.

(a) 1000 plugins (one responder process serves them all) at the default probe interval
    (10 s): the daemon's CPU (% of one core, from utime+stime in /proc/PID/stat) and its
    RSS (VmRSS, sampled each second) over a 60 s window that starts once all are ready.
    Baselines from the same run: the responder's own CPU for answering the same probes
    (what a minimal server spends on that traffic), and the RSS of a process that only
    imports the daemon (the floor) -- so the per-plugin cost is (RSS - floor) / N.
    Goals: <= 2 % of one core, <= 80 MB.
(b) 5000 plugins at a 10 s interval: probe lateness. The responder logs when each probe
    arrives. Due times are jittered and kept in phase (next due = last due + interval),
    so from outside, for the probes k = 0, 1, ... of one plugin, a_k - k * interval =
    first due + lateness_k: lateness relative to that plugin's least-late probe is
    (a_k - k * interval) - min_j (a_j - j * interval). Also shown: each interval between
    consecutive probes minus 10 s. Both are lower bounds of the true lateness (a constant
    delay common to all probes of a plugin is invisible from outside). Baseline: the
    responder's capacity (keep-alive requests/s from one client) beside the probe rate
    the daemon must sustain. Goal: p99 <= 1 s.
Usage: .venv/bin/python bench/scale.py [--quick] [--part a|b|both] [--profile FILE]
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
STOP_ALLOWANCE = 6.0  # stopping the daemon and the responder, reading the request log
MIN_WINDOW = 10.0  # (b)'s shortest window at the 10 s interval, whatever the budget

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


def part_a(count: int, window: float, profile: Path | None) -> bool:
    print(f"(a) {count} plugins at the default interval ({INTERVAL:.0f} s), "
          f"{window:.0f} s window")
    floor = import_floor()
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(c.workdir("vps"))
        plugins = work / "plugins"
        plugins.mkdir()
        responder = c.Responder(plugins, count)
        stack.callback(responder.stop)
        daemon = c.Daemon(work, plugins)
        stack.callback(daemon.stop)
        daemon.wait_serving()
        took = daemon.wait_ready(count, timeout=60)
        print(f"  all {count} ready {took:.1f} s after the control socket answered")
        profiler = None if profile is None else c.Profiler(daemon.pid, profile)
        d_split, r_cpu, served = c.proc_cpu_split(daemon.pid), responder.cpu_seconds(), \
            responder.served()
        start = time.monotonic()
        rss: list[int] = []
        while (elapsed := time.monotonic() - start) < window:
            rss.append(daemon.rss_bytes())
            time.sleep(min(1.0, max(0.0, window - elapsed)))
        elapsed = time.monotonic() - start
        user, system = (b - a for a, b in zip(d_split, c.proc_cpu_split(daemon.pid),
                                                  strict=True))
        d_cpu, d_sys = (user + system) / elapsed, system / elapsed
        threads = c.proc_threads(daemon.pid)
        r_cpu = (responder.cpu_seconds() - r_cpu) / elapsed
        rate = (responder.served() - served) / elapsed
        if profiler is not None:
            profiler.stop()
        peak = max(rss)
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
    print(f"  requests answered: {rate:.0f}/s (probes, one per plugin per {INTERVAL:.0f} s); "
          f"volplugd CPU per probe {d_cpu / rate * 1e3 if rate else 0:.2f} ms, "
          f"responder {r_cpu / rate * 1e3 if rate else 0:.3f} ms")
    return d_cpu <= CPU_GOAL and peak <= RSS_GOAL


def capacity(socket_path: str, seconds: float = 0.5) -> float:
    """Keep-alive requests/s one raw client gets from the responder."""
    client = c.RawClient(socket_path)
    n, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        client.request("POST", "/Plugin.Activate")
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
    phase: list[float] = field(default_factory=list)  # every probe
    # probes from half an interval after all were ready: the start-up backlog is gone
    steady: list[float] = field(default_factory=list)
    deviation: list[float] = field(default_factory=list)  # |interval - configured|
    plugins: int = 0  # plugins probed at least twice


def lateness(requests: dict[str, list[tuple[float, str]]], interval: float,
             all_ready: float) -> Lateness:
    out = Lateness()
    for seen in requests.values():
        arrivals = probes_of(seen)
        if len(arrivals) < 2:
            continue
        out.plugins += 1
        offsets = [a - k * interval for k, a in enumerate(arrivals)]
        least = min(offsets)
        out.phase += [o - least for o in offsets]
        out.steady += [o - least for o, a in zip(offsets, arrivals, strict=True)
                       if a >= all_ready + interval / 2]
        # an early interval is the previous probe's lateness: count both signs
        out.deviation += [abs(b - a - interval) for a, b in itertools.pairwise(arrivals)]
    return out


def part_b(count: int, interval: float, deadline: float, profile: Path | None) -> bool:
    """``deadline``: monotonic time by which the window should end (the script's budget);
    the window is clamped to [MIN_WINDOW, 2.2 intervals]."""
    print(f"(b) {count} plugins at a {interval:g} s interval ({count / interval:.0f} probes/s)")
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(c.workdir("vps"))
        plugins = work / "plugins"
        plugins.mkdir()
        responder = c.Responder(plugins, count)
        stack.callback(responder.stop)
        cap = capacity(str(plugins / f"{responder.names[0]}.sock"))
        config = "" if interval == INTERVAL else \
            f"[probe]\ninterval = {interval}\ntimeout = {interval / 2}\n"
        daemon = c.Daemon(work, plugins, config)
        stack.callback(daemon.stop)
        daemon.wait_serving()
        took = daemon.wait_ready(count, timeout=120)
        all_ready = time.monotonic()
        window = min(2.2 * interval, max(MIN_WINDOW * interval / INTERVAL,
                                         deadline - time.monotonic()))
        print(f"  all {count} ready {took:.1f} s after the control socket answered; "
              f"{window:.0f} s window")
        profiler = None if profile is None else c.Profiler(daemon.pid, profile)
        d_cpu, start = daemon.cpu_seconds(), time.monotonic()
        time.sleep(window)
        d_cpu = (daemon.cpu_seconds() - d_cpu) / (time.monotonic() - start)
        if profiler is not None:
            profiler.stop()
        requests = responder.requests(work)
    found = lateness(requests, interval, all_ready)
    probed, late = found.plugins, c.percentile(found.phase, 99)
    rows = [[label, f"{c.percentile(v, 50):.3f}", f"{c.percentile(v, 99):.3f}",
             f"{max(v, default=float('nan')):.3f}", len(v)] for label, v in (
        ("lateness vs least-late probe, all probes, s", found.phase),
        ("  the same, from interval/2 after all ready, s", found.steady),
        ("|interval - configured|, s", found.deviation))]
    print(c.table(rows, ["", "p50", "p99", "max", "n"]))
    print(f"  {probed} of {count} plugins probed at least twice; volplugd CPU "
          f"{d_cpu * 100:.0f} % of a core; responder capacity {cap:.0f} req/s from one client "
          f"vs {count / interval:.0f} probes/s needed (x{cap * interval / count:.0f})")
    steady = c.percentile(found.steady, 99)
    enough = probed >= count * 0.2
    print(f"  goal p99 lateness <= {LATENESS_GOAL:.0f} s: all probes (start-up included) "
          f"{c.verdict(enough and late <= LATENESS_GOAL)}; steady state "
          f"{c.verdict(enough and steady <= LATENESS_GOAL)}"
          + ("" if enough else " (too few plugins seen probed twice)"))
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
    print(f"scale: {c.machine_line()}")
    results = []
    if args.part in ("a", "both"):
        count = 300 if args.quick else 1000
        c.fd_limit_for(2 * count + 64)
        results.append(part_a(count, args.window or (4 if args.quick else 60), args.profile))
    if args.part in ("b", "both"):
        # --quick: the same probe rate with fewer plugins (a shorter interval)
        count, interval = (500, 1.0) if args.quick else (5000, INTERVAL)
        c.fd_limit_for(2 * count + 64)
        budget = (QUICK_BUDGET if args.quick else BUDGET) - STOP_ALLOWANCE
        results.append(part_b(count, interval, began + budget, args.profile))
    print(f"scale: {c.verdict(all(results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
