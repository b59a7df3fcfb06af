"""Shared parts of the daemon benchmarks, one import for the scripts (``import _common as c``).

The bench runs from the repository root as ``python bench/X.py``: Python puts ``bench/``
on ``sys.path``, not the root, so this module adds the root first; then the bench uses
the tests' own parts rather than copies:

* ``Daemon`` (``_daemon.py``) -- ``tests.harness.Daemon`` plus CPU, RSS and plugin counts.
* ``Responder`` (``tests/fakeplugin/many.py``) -- one process serving N fake plugins.
* ``RawClient`` (``_client.py``) -- a keep-alive control-socket client of little cost.
* ``Inotify`` (``_inotify.py``), ``Profiler`` (``_profile.py``).
* ``Setup``, ``workdir``, ``percentile``, ``machine_line``, ``cpu_ticks`` and
  ``steal_share``, ``verdict`` ... (here).

Runs on: the bench's main thread (and its client threads for RawClient).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.*, and volplugd when not installed

# Re-exported for the scripts (c.Daemon, c.Responder, ...).
from _client import RawClient  # noqa: E402
from _daemon import (  # noqa: E402
    Daemon,
    Usage,
    proc_cpu_seconds,
    proc_cpu_split,
    proc_rss_bytes,
    proc_threads,
)
from _inotify import IN_CREATE, IN_DELETE, Inotify  # noqa: E402
from _profile import Profiler, summarize_collapsed  # noqa: E402

from tests.fakeplugin.many import Responder  # noqa: E402

__all__ = ["IN_CREATE", "IN_DELETE", "REPO", "TMPFS", "Daemon", "Inotify", "Profiler",
           "RawClient", "Responder", "Setup", "Usage", "exit_cleanly_on_sigterm", "fd_limit_for",
           "machine_line", "ms", "percentile", "proc_cpu_seconds", "proc_cpu_split",
           "proc_rss_bytes", "proc_threads", "summarize_collapsed", "table", "verdict",
           "workdir"]

TMPFS = "/dev/shm"  # /tmp and /run are ext4 on these machines: bind() there is slow and noisy


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``finally``/ExitStack stops what it
    started (the daemon, the responder) and removes the scratch folder."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A short-named scratch folder on tmpfs, removed afterwards whatever happened."""
    path = Path(tempfile.mkdtemp(dir=TMPFS, prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.2f}"


def machine_line() -> str:
    """CPU, cores, load, Python: what the figures depend on."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}  {model}  {os.cpu_count()} vCPU  "
            f"load {load}  Python {platform.python_version()}")


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, from /proc/stat: user, nice, system, idle, iowait,
    irq, softirq, steal (ticks; guest time is inside user)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def steal_share(before: Sequence[int], after: Sequence[int]) -> float:
    """The share of the vCPUs' time the hypervisor gave elsewhere between two
    ``cpu_ticks`` readings: on a shared VM, a minute with much of it has a higher floor
    under every latency, whatever the server."""
    diff = [b - a for a, b in zip(before, after, strict=True)]
    return diff[7] / sum(diff) if sum(diff) else 0.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fd_limit_for(sockets: int) -> None:
    """Raise our soft RLIMIT_NOFILE so we (and children) can hold ``sockets`` fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, sockets + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < sockets:
        raise OSError(errno.EMFILE, f"need {sockets} fds, hard limit is {hard}")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Left-aligned first column, right-aligned others."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


@dataclass
class Setup:
    """A work dir, one responder serving ``count`` plugin sockets in ``work/plugins``, and
    a daemon watching them; the exit stack stops both and removes the dir."""

    work: Path
    responder: Responder
    daemon: Daemon

    @property
    def plugins(self) -> Path:
        return self.work / "plugins"

    @classmethod
    def start(cls, stack: contextlib.ExitStack, count: int, config: str = "",
              prefix: str = "vps") -> Setup:
        work = stack.enter_context(workdir(prefix))
        (work / "plugins").mkdir()
        responder = Responder(work / "plugins", count)
        stack.callback(responder.stop)
        daemon = Daemon(work, work / "plugins", config)
        stack.callback(daemon.stop)
        daemon.wait_ready()
        return cls(work, responder, daemon)
