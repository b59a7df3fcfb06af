"""The daemon under measurement: ``tests.harness.Daemon`` with the bench's readers.

* ``Daemon`` -- the real ``python -m volplugd`` as a child, started at once (the tests'
  runner: same argv, config file, log and SIGTERM stop), with a keep-alive ``RawClient``,
  the plugin counts from ``/v1/health``, and its CPU and RSS.
* ``proc_*``, ``Usage`` -- /proc readers for any pid (the responder's too).

Runs on: the bench's main thread.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _client import RawClient

from tests.harness import Daemon as HarnessDaemon

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, in seconds (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    return sum(proc_cpu_split(pid))


def proc_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Usage:
    """What a process holds: open fds, threads, resident memory (bytes)."""

    fds: int
    threads: int
    rss: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        return cls(len(os.listdir(f"/proc/{pid}/fd")), proc_threads(pid), proc_rss_bytes(pid))


class Daemon(HarnessDaemon):
    """``python -m volplugd`` as a child: its own config, plugin dir, control socket, log."""

    def __init__(self, work: Path, plugin_dir: Path, config: str = "",
                 log_level: str = "info", cprofile: Path | None = None):
        """``cprofile``: run under ``python -m cProfile -o FILE`` (it sees the main
        thread only: the supervisor loop); the file is written when the daemon stops."""
        wrap = [] if cprofile is None else ["-m", "cProfile", "-o", str(cprofile)]
        # The tree under test is REPO; a PYTHONPATH you set comes first (to try a patch).
        env = {"PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)}
        super().__init__(work, plugin_dirs=[plugin_dir], config=config, env=env,
                         log_level=log_level, python_args=wrap)
        self.client = RawClient(self.socket)
        self.start(wait=False)  # wait_ready() (the harness's) waits for /v1/health

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def counts(self) -> dict[str, int]:
        status, body = self.client.get("/v1/health")
        if status != 200:
            raise RuntimeError(f"/v1/health answered {status}: {body[:200]!r}")
        counts: dict[str, int] = json.loads(body)["plugins"]
        return counts

    def wait_plugins_ready(self, count: int, timeout: float) -> float:
        """Wait until ``count`` plugins are ready; returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        while (counts := self.counts()).get("ready", 0) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {counts} after {timeout} s (want {count} ready)")
            time.sleep(0.05)
        return time.monotonic() - start

    def wait_ready_by(self, count: int, deadline: float) -> float | None:
        """Seconds until ``count`` plugins were ready, or None at ``deadline``."""
        start = time.monotonic()
        while self.counts().get("ready", 0) < count:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return time.monotonic() - start

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)

    def tail(self, lines: int = 5) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (the harness's stop); a daemon that ignores it is killed
        and said on stderr, so the bench's other clean-ups still run."""
        self.client.close()
        try:
            return super().stop(timeout)
        except AssertionError:
            print(f"volplugd ignored SIGTERM and was killed: {self.tail()}", file=sys.stderr)
            assert self.proc is not None
            return self.proc.returncode
