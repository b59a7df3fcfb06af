"""Cost of one ``PluginClient.activate()`` over keep-alive, against a raw-socket HTTP
request to the same fake plugin, measured side by side in the same run.

    .venv/bin/python bench/client_roundtrip.py [--calls N] [--rounds R] [--check]

The fake plugin runs in a child process, so this process's CPU time is the client's
alone. Raw and client send the same bytes over one keep-alive connection; rounds
alternate (raw, client, and requests-unixsocket as shipped, for context) so drift on a
shared machine hits all of them. Prints µs per call (wall and CPU) and the client/raw
ratios; the goal is a wall-time ratio within 3x (1.55-1.71x measured with the exchange
core, 2.9-3.9x through urllib3 before it). ``--check`` exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import requests_unixsocket  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fakeplugin, and volplugd when not installed

from volplugd.plugin import PluginAddress, PluginClient  # noqa: E402
from volplugd.plugin.protocol import ACCEPT, CONTENT_TYPE, user_agent  # noqa: E402

GOAL = 3.0
REQUEST = (
    "POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\n"
    f"User-Agent: {user_agent()}\r\nContent-Length: 0\r\n"
    f"Content-Type: {CONTENT_TYPE}\r\nAccept: {ACCEPT}\r\n\r\n"
).encode()


class RawClient:
    """The least an HTTP/1.1 keep-alive client can do: send bytes, read one answer."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""

    def activate(self) -> bytes:
        self.sock.sendall(REQUEST)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buffer = rest[length:]
        return rest[:length]

    def close(self) -> None:
        self.sock.close()


def measure(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return ((time.perf_counter() - wall) / calls * 1e6,
            (time.process_time() - cpu) / calls * 1e6)


def start_fake(path: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakeplugin", path], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"fake plugin did not start: {line!r}")
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="calls per round (500)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the goal is missed")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(dir="/tmp", prefix="vpbench")
    path = os.path.join(workdir, "bench.sock")
    fake = start_fake(path)
    raw, client = RawClient(path), PluginClient("bench", PluginAddress("unix", path))
    shipped = requests_unixsocket.Session()  # for context: the library as shipped
    url = "http+unix://" + quote(path, safe="") + "/Plugin.Activate"
    calls: dict[str, Callable[[], object]] = {
        "raw": raw.activate, "client": client.activate,
        "shipped": lambda: shipped.post(url, headers={"Host": "plugin"}).content}
    try:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
        for call in calls.values():
            call()  # warm: connected, imports and caches done
        for _ in range(args.rounds):
            for name, call in calls.items():
                results[name].append(measure(call, args.calls))
    finally:
        raw.close()
        client.close()
        shipped.close()
        fake.terminate()
        fake.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return report(results, args.check)


def report(results: dict[str, list[tuple[float, float]]], check: bool) -> int:
    median = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
              for name, runs in results.items()}
    for name, (wall, cpu) in median.items():
        print(f"{name:>7}: {wall:8.1f} µs wall/call  {cpu:8.1f} µs CPU/call (this process)")
    print("  (shipped: requests-unixsocket's own Session with default settings, for context)")
    wall_ratio = median["client"][0] / median["raw"][0]
    cpu_ratio = median["client"][1] / median["raw"][1]
    met = wall_ratio <= GOAL
    print(f"  ratio: {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x CPU "
          f"(goal: wall within {GOAL:g}x: {'met' if met else 'NOT met'})")
    return 1 if check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
