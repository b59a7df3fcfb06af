"""Discovery against random hostile trees on a real filesystem (hypothesis): folder chains
deeper than the recursion limit, FIFOs, symlinks (loops, to FIFOs, to /dev/zero, to
folders, dangling), huge sparse files, stale sockets, and renames and rename-exchanges
while the scan runs. ``scan``, ``scan_one`` and the ``Watcher`` never raise, and each
returns within a generous bound: a hang check (a blocking open would never return), not
a speed test."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import queue
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.trees import make_chain, remove_tree
from volplugd.discovery import Watcher, scan, scan_one

HANG = 10.0  # seconds: far beyond any scan of these trees; only a blocked call gets here
NAMES = ("a", "b", "c")
SUFFIXES = ("", ".sock", ".spec", ".json")
KINDS = ("file", "huge", "fifo", "socket", "folder", "chain", "link_self", "link_fifo",
         "link_zero", "link_dangling", "link_folder", "link_sibling")

entry = st.tuples(st.sampled_from(KINDS), st.sampled_from(NAMES), st.sampled_from(SUFFIXES),
                  st.booleans())  # the last: inside a <name>/ folder rather than the dir
tree = st.lists(entry, max_size=12)
swaps = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(SUFFIXES),
                           st.sampled_from(NAMES), st.sampled_from(SUFFIXES)), max_size=6)


def _renameat2() -> Callable[[bytes, bytes], int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return lambda a, b: int(fn(-100, a, -100, b, 2))  # AT_FDCWD, RENAME_EXCHANGE


EXCHANGE = _renameat2()


def build(root: Path, entries: list[tuple[str, str, str, bool]]) -> None:
    """Make each entry (skipping ones whose place is taken)."""
    for kind, name, suffix, nested in entries:
        folder = root / name if nested else root
        if nested and not folder.is_dir():
            if os.path.lexists(folder):
                continue
            folder.mkdir()
        path = folder / (name + suffix)
        if os.path.lexists(path):
            continue
        if kind == "file":
            path.write_text('{"Addr": "tcp://127.0.0.1:1"}' if suffix == ".json"
                            else "tcp://127.0.0.1:1\n")
        elif kind == "huge":
            with path.open("wb") as f:
                f.truncate(1 << 30)  # sparse: 1 GiB that costs no disk
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(path))  # closed at once: a stale socket file
        elif kind in ("folder", "chain"):
            path.mkdir()
            if kind == "chain":
                make_chain(path)
        else:
            path.symlink_to({"link_self": path, "link_fifo": root / ".fifo",
                             "link_zero": Path("/dev/zero"), "link_dangling": root / "nowhere",
                             "link_folder": root, "link_sibling": folder / name}[kind])


def within(call: Callable[[], object]) -> None:
    """Run ``call`` on a thread; fail if it raises or has not returned after HANG s."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, name="fuzzed discovery", daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"{call} still runs after {HANG} s: it blocks"
    assert not errors, errors


@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(entries=tree, exchanges=swaps)
def test_scan_and_watcher_never_raise_nor_block(entries: list[tuple[str, str, str, bool]],
                                                exchanges: list[tuple[str, str, str, str]]
                                                ) -> None:
    """Whatever the tree holds and however it changes during the scan, scan, scan_one
    and the watcher's start/refresh/stop return, without an exception, within HANG s."""
    base = Path(tempfile.mkdtemp(prefix="vp-fuzz-", dir="/dev/shm"))
    root = base / "plugins"
    root.mkdir()
    os.mkfifo(root / ".fifo")
    (root / "z.json").write_text('{"Addr": "tcp://127.0.0.1:1"}')  # swapped with .fifo below
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    watcher = Watcher([str(root)], inbox.put)
    try:
        build(root, entries)
        within(watcher.start)
        stop = threading.Event()

        def churn() -> None:  # renames and exchanges while the scans run
            fifo, json = bytes(root / ".fifo"), bytes(root / "z.json")
            while not stop.is_set():
                EXCHANGE(json, fifo)  # a FIFO where a stat saw a regular file
                for a, sa, b, sb in exchanges:
                    EXCHANGE(bytes(root / (a + sa)), bytes(root / (b + sb)))
                    EXCHANGE(bytes(root / (a + sa)), fifo)

        churner = threading.Thread(target=churn, name="fuzz churn")
        churner.start()
        try:
            for _ in range(10):
                within(functools.partial(scan, [str(root)]))
                for name in (*NAMES, "z"):
                    within(functools.partial(scan_one, name, [str(root)]))
                within(watcher.refresh)
        finally:
            stop.set()
            churner.join()
        assert watcher.up
    finally:
        within(watcher.stop)
        watcher.join(5.0)
        remove_tree(base)  # chains may have been renamed anywhere in it
