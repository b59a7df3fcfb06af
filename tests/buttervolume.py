"""buttervolume (PyPI) for the real-peer tests: the launcher's path, the preconditions, and
the venv cached in /var/tmp, one path and one lock for every test module that starts it
(installing takes ~15-20 s; each test still gets its own btrfs image)."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import tiers

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO.parent / "shared" / "peers" / "start-buttervolume.sh"
VERSION = "3.13"  # the launcher's default
VENV = Path(f"/var/tmp/volplugd-test-buttervolume-{VERSION}")


def preconditions() -> None:
    """Skip the test unless the launcher, btrfs-progs and the kernel's btrfs are there."""
    tiers.require("peer", "starts buttervolume")
    if not LAUNCHER.exists():
        pytest.skip(f"{LAUNCHER} is missing (shared/ must sit beside the repository)")
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("btrfs-progs is not installed (apt-get install btrfs-progs)")
    with open("/proc/filesystems") as table:
        if "btrfs" not in table.read().split():
            pytest.skip("the kernel has no btrfs support (/proc/filesystems)")


def venv(*, skip_on_failure: bool = True) -> Path:
    """The cached venv with buttervolume, marked the way the launcher checks; a lock keeps
    parallel workers from installing at once. A failed install skips the test, or with
    skip_on_failure=False raises CalledProcessError."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    marker = VENV / f".ok-buttervolume-{VERSION}"
    with open(f"{VENV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            for argv in (["python3", "-m", "venv", "--clear", str(VENV)],
                         [str(VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                          f"buttervolume=={VERSION}"]):
                done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                      check=False)
                if done.returncode != 0 and skip_on_failure:
                    pytest.skip(f"cannot install buttervolume: {done.stderr.strip()[-300:]}")
                done.check_returncode()
            marker.touch()
    return VENV
