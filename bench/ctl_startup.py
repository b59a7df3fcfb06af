"""How long ``volplugctl`` takes to start and answer, beside ``python -c pass`` in the same run.

Runs, interleaved so that machine load hits all of them alike, N times each (default 30):
  * ``python -c pass`` (the interpreter's own start-up: the baseline),
  * ``volplugctl --version`` (imports + parser),
  * ``volplugctl ls`` against a missing socket (the whole path to exit 3), and
  * ``volplugctl ls`` against a tiny real HTTP server on a unix socket (one full request).
Prints median and p90 wall time per case and its ratio to the baseline's median.
Goal: ``volplugctl ls`` in < 150 ms. Usage: python bench/ctl_startup.py [N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

GOAL_SECONDS = 0.150
PLUGINS = json.dumps({"plugins": [{
    "name": f"p{i}", "state": "ready", "kind": "sock", "address": f"unix:///run/p{i}.sock",
    "last_probe_at": "2026-01-01T00:00:00.000Z", "last_error": None} for i in range(20)]}).encode()


class _Canned(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(PLUGINS)))
        self.end_headers()
        self.wfile.write(PLUGINS)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


# Byte-code is written on the warm-up run, as an installed volplugd has it
# (pip and `make install` compile); this sandbox sets PYTHONDONTWRITEBYTECODE.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                   env=ENV)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="?", type=int, default=30, help="runs per case (30)")
    runs = parser.parse_args().runs
    ctl = str(Path(sys.executable).with_name("volplugctl"))
    workdir = tempfile.mkdtemp(prefix="vp-bench-", dir="/tmp")
    sock = f"{workdir}/control.sock"
    server = _Server(sock, _Canned)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "volplugctl --version": [ctl, "--version"],
        "volplugctl ls (no daemon, exit 3)": [ctl, "--socket", f"{workdir}/missing", "ls"],
        "volplugctl ls (20 plugins)": [ctl, "--socket", sock, "ls"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for argv in cases.values():  # warm the page cache; write the .pyc files
            run_once(argv)
        for _ in range(runs):
            for name, argv in cases.items():
                times[name].append(run_once(argv))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        shutil.rmtree(workdir, ignore_errors=True)
    report(times, runs)


def report(times: dict[str, list[float]], runs: int) -> None:
    base = statistics.median(times["python -c pass"])
    print(f"{runs} runs each, interleaved; wall time per process")
    print(f"{'case':<36} {'median':>9} {'p90':>9} {'ratio':>7}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{name:<36} {median * 1000:>7.1f}ms {p90 * 1000:>7.1f}ms {median / base:>6.2f}x")
    full = statistics.median(times["volplugctl ls (20 plugins)"])
    verdict = "OK" if full < GOAL_SECONDS else "OVER"
    print(f"goal: volplugctl ls < {GOAL_SECONDS * 1000:.0f} ms -> {full * 1000:.1f} ms {verdict}; "
          f"cost over the bare interpreter: {(full - base) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
