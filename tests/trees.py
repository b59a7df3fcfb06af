"""Folder trees deeper than Python's recursion limit, made and removed without recursing
(``shutil.rmtree`` recurses, and fails on them)."""

from __future__ import annotations

import os
from pathlib import Path

DEPTH = 1100  # past sys.getrecursionlimit() (1000)


def make_chain(top: Path, depth: int = DEPTH) -> None:
    """``top/d/d/.../d``, ``depth`` folders, made through folder descriptors."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def remove_chain(top: Path) -> None:
    """Remove what ``make_chain`` made, iteratively (shutil.rmtree recurses)."""
    path = top
    depth = 0
    while (path / "d").is_dir():
        path, depth = path / "d", depth + 1
    for _ in range(depth):
        os.rmdir(path)
        path = path.parent


def remove_tree(top: Path) -> None:
    """``shutil.rmtree`` without recursion: symlinks are removed, never followed."""
    stack = [(str(top), False)]
    while stack:
        path, emptied = stack.pop()
        if emptied:
            os.rmdir(path)
            continue
        stack.append((path, True))
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)
