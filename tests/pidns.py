"""Python code run as the first process (pid 1) of a new pid namespace, for tests that
need pids the kernel hands out in a known order: a reused pid, a socket-activated
listener (pid 1), a peer the namespace cannot name (pid 0).

``run(code)`` runs ``code`` under ``unshare --pid --fork --mount-proc`` (root only; the
mount namespace keeps the new /proc private) and returns the JSON object it printed on
its last line. The namespace ends with its pid 1, so nothing started there outlives it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests import tiers

REPO = Path(__file__).resolve().parents[1]

#: Defined for every script: make the next process forked in the namespace get ``pid``.
_PRELUDE = textwrap.dedent("""
    def next_pid(pid):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
""")


def run(code: str, timeout: float = 60) -> dict[str, Any]:
    """The JSON object that ``code`` printed last, run as pid 1 of a new pid namespace
    (``next_pid(pid)`` is defined for it)."""
    unshare = tiers.tool("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.skip("needs root: a new pid namespace and ns_last_pid")
    done = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c",
         _PRELUDE + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def child_of(pid: int) -> int:
    """The one child of process ``pid`` (``unshare --fork``'s: the first process of the
    new pid namespace), as this namespace numbers it."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        return int(f.read().split()[0])
