"""``Profiler``: ``py-spy`` on the daemon during a phase (optional: py-spy installed in
the venv by hand), and ``summarize_collapsed``, where the GIL time went.

Runs on: the bench's main thread.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


class Profiler:
    """``py-spy record`` on a pid while a phase runs (GIL holders only, non-blocking so
    the daemon is not paused), then a summary of where the GIL time went."""

    def __init__(self, pid: int, out: Path):
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            raise SystemExit(f"--profile needs py-spy: {spy.parent}/pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--format", "raw", "--gil", "--nolineno",
             "--nonblocking", "--rate", "200", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, top: int = 22) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists():
            print("  profile: py-spy wrote nothing")
            return
        print(summarize_collapsed(self.out.read_text(), top))


_GENERIC_FRAMES = ("<module>", "_run_code", "_run_module_as_main", "Thread._bootstrap",
                   "Thread.run", "main (volplugd/cli.py)", "_run (volplugd/cli.py)",
                   "run (volplugd/daemon.py)", "Supervisor.run ", "WorkerPool._work")


def summarize_collapsed(text: str, top: int) -> str:
    """Inclusive and self share of samples per function from py-spy's raw format."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return "  profile: no samples"
    lines = [f"profile: {total} GIL-holding samples (py-spy --gil)",
             "  self %  function"]
    lines += [f"  {n * 100 / total:6.1f}  {f}" for f, n in
              sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  incl %  function (entry points and thread bootstrap left out)")
    lines += [f"  {n * 100 / total:6.1f}  {f}" for f, n in
              sorted(inclusive.items(), key=lambda kv: -kv[1])
              if not any(g in f for g in _GENERIC_FRAMES)][:top]
    return "\n".join(lines)
