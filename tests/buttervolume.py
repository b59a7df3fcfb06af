"""buttervolume (PyPI) for the real-peer tests: the launcher's path, the preconditions, and
the venv cached in /var/tmp, one path and one lock for every test module that starts it
(installing takes ~15-20 s; each test still gets its own btrfs image)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import tiers
from tests.waiting import wait_until

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


@contextlib.contextmanager
def loop_btrfs(folder: Path, size: str = "256M") -> Iterator[Path]:
    """A new btrfs in ``folder/btrfs.img`` (sparse, ``size``) on a loop device of its own,
    mounted on ``folder/btrfs``, with ``volumes/`` and ``snapshots/`` made; yields the
    mount point. On leaving, even after a failure: unmounted, the loop device detached,
    and no loop device left on the image (waited for, with a deadline). Skips, with the
    reason, where no loop device can be had or the kernel does not mount it."""
    image, mount = folder / "btrfs.img", folder / "btrfs"
    mount.mkdir()
    _run(["truncate", "-s", size, str(image)])
    _run(["mkfs.btrfs", "-q", "-f", str(image)])
    attached = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                              text=True, timeout=60, check=False)
    if attached.returncode != 0:
        pytest.skip(f"no loop device for a btrfs image: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        mounted = subprocess.run(["mount", "-t", "btrfs", device, str(mount)],
                                 capture_output=True, text=True, timeout=60, check=False)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a btrfs on {device}: {mounted.stderr.strip()}")
        try:
            for sub in ("volumes", "snapshots"):
                (mount / sub).mkdir()
            yield mount
        finally:
            _run(["umount", str(mount)])
    finally:
        # A container's copy of the mount may outlive it briefly (its mount namespace is
        # freed after its last process): the device is then detached once it is released.
        _run(["losetup", "--detach", device])
        wait_until(lambda: _run(["losetup", "--associated", str(image)]) == "", timeout=30,
                   interval=0.1, message=f"no loop device left on {image}")


def subvolumes(mount: Path) -> list[str]:
    """The paths of the subvolumes of the btrfs mounted on ``mount`` (``btrfs subvolume
    list``), sorted."""
    listed = _run(["btrfs", "subvolume", "list", str(mount)])
    return sorted(line.split(" path ", 1)[1] for line in listed.splitlines())


def delete_subvolumes(mount: Path, paths: Sequence[str]) -> None:
    """``btrfs subvolume delete`` each of ``paths`` (relative to ``mount``)."""
    if paths:
        _run(["btrfs", "subvolume", "delete", *(os.path.join(mount, p) for p in paths)])


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{list(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()
