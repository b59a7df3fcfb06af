"""Real folders for the trust tests: a fresh base under trusted ancestors, and folders
with a given mode and owner in it (the suite runs as root, so it may chown)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534


@contextmanager
def trusted_base() -> Iterator[Path]:
    """A 0700 root folder on tmpfs (short paths for sockets), under trusted ancestors
    (/, /dev, sticky /dev/shm); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="vt-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def folder(path: Path, mode: int = 0o755, uid: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, 0)
    os.chmod(path, mode)  # after chown: chown clears the set-id bits, not the sticky bit
    return path
