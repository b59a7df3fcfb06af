"""Watcher with real watchdog and inotify on tmpfs folders: hints, re-arming, restarts,
and inotify queue overflow provoked by really stalling a watching process."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.observers.inotify_c import InotifyEvent, Mask, WatchDescriptor

from tests.trees import make_chain, remove_chain
from tests.waiting import wait_until
from volplugd.contracts import Flooded, FsHint, Rescan
from volplugd.discovery import Watcher
from volplugd.discovery.inotify import Reader
from volplugd.discovery.watcher import FLOOD_EVENTS, FLOOD_WINDOW, MAX_BACKLOG, MAX_FOLDERS

RESTART = Rescan("watcher_restart")


@pytest.fixture
def base() -> Iterator[Path]:
    """A short dir on tmpfs (like /run): socket paths stay short and bind() is cheap."""
    path = Path(tempfile.mkdtemp(prefix="vp-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Inbox:
    """The supervisor's queue, as the watcher sees it."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.seen: list[object] = []

    def put(self, message: object) -> None:
        self.queue.put(message)

    def _drain(self) -> list[object]:
        while True:
            try:
                self.seen.append(self.queue.get_nowait())
            except queue.Empty:
                return self.seen

    def wait_for(self, message: object) -> list[object]:
        """Wait until ``message`` arrives; return what came before it and forget both."""
        wait_until(lambda: message in self._drain(), timeout=10.0, message=repr(message))
        index = self.seen.index(message)
        before, self.seen = self.seen[:index], self.seen[index + 1:]
        return before


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def watching(inbox: Inbox) -> Iterator[Callable[..., Watcher]]:
    """Start watchers on the inbox; each is stopped and joined after the test."""
    made: list[Watcher] = []

    def make(*dirs: Path, put: Callable[[object], None] | None = None) -> Watcher:
        watcher = Watcher([str(d) for d in dirs], put or inbox.put)
        made.append(watcher)
        watcher.start()
        return watcher

    yield make
    for watcher in made:
        watcher.stop()
        watcher.join(5.0)


def bind(path: Path) -> None:
    """Leave a real socket file at ``path``, as a plugin starting up does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))


def hint(path: Path) -> FsHint:
    return FsHint(str(path))


def up(watcher: Watcher) -> bool:
    """``watcher.up`` read afresh (a plain read would be narrowed by mypy across calls)."""
    return watcher.up


def thread_named(name: str) -> threading.Thread:
    (thread,) = [t for t in threading.enumerate() if t.name == name]
    return thread


def test_socket_created_and_removed_are_hinted(base: Path, inbox: Inbox,
                                                watching: Callable[..., Watcher]) -> None:
    """bind() of a plugin socket and its unlink() each put an FsHint for its path."""
    watcher = watching(base)
    assert up(watcher)
    bind(base / "foo.sock")
    inbox.wait_for(hint(base / "foo.sock"))
    (base / "foo.sock").unlink()
    inbox.wait_for(hint(base / "foo.sock"))


def test_plugin_folder_and_spec_file_are_hinted(base: Path, inbox: Inbox,
                                                watching: Callable[..., Watcher]) -> None:
    """A new folder is hinted once it is watched (its scan_one sees what it already
    holds), then <name>/<name>.sock in it; a written .spec file is hinted."""
    watching(base)
    (base / "foo").mkdir()
    inbox.wait_for(hint(base / "foo"))
    bind(base / "foo/foo.sock")
    inbox.wait_for(hint(base / "foo/foo.sock"))
    (base / "bar.spec").write_text("tcp://127.0.0.1:1\n")
    inbox.wait_for(hint(base / "bar.spec"))


def test_rename_into_place_hints_the_new_name(base: Path, inbox: Inbox,
                                             watching: Callable[..., Watcher]) -> None:
    """A socket bound under a dot-name and renamed into place is hinted under its name."""
    watching(base)
    bind(base / ".foo.tmp")
    (base / ".foo.tmp").rename(base / "foo.sock")
    inbox.wait_for(hint(base / "foo.sock"))


def test_noise_is_not_hinted(base: Path, inbox: Inbox,
                             watching: Callable[..., Watcher]) -> None:
    """Dot-files, managed-plugin folders and reading a spec file give no hint."""
    (base / "foo.spec").write_text("tcp://127.0.0.1:1\n")
    watching(base)
    bind(base / ".hidden.sock")
    managed = base / ("ab" * 32)
    managed.mkdir()
    bind(managed / "x.sock")
    (base / "foo.spec").read_text()
    bind(base / "sentinel.sock")  # inotify keeps order: all of the above came first
    assert inbox.wait_for(hint(base / "sentinel.sock")) == []


def test_dir_created_late_is_watched_after_refresh(base: Path, inbox: Inbox,
                                                   watching: Callable[..., Watcher]) -> None:
    """A missing dir is awaited on its parent; once it appears, refresh() watches it (a
    new watch is no restart: the scan that follows refresh() covers what came before)."""
    plugins = base / "run/docker/plugins"
    watcher = watching(plugins)
    assert watcher.up  # waiting on the nearest parent is the normal state
    assert watcher.refresh() is False
    plugins.mkdir(parents=True)
    inbox.wait_for(RESTART)
    assert watcher.refresh() is False
    bind(plugins / "foo.sock")
    inbox.wait_for(hint(plugins / "foo.sock"))


def test_dir_created_inside_another_watched_dir(base: Path, inbox: Inbox,
                                                watching: Callable[..., Watcher]) -> None:
    """A missing plugin dir inside another plugin dir asks for re-arming, not a hint."""
    inner = base / "inner"
    watcher = watching(base, inner)
    inner.mkdir()
    assert inbox.wait_for(RESTART) == []
    assert watcher.refresh() is False
    bind(inner / "foo.sock")
    inbox.wait_for(hint(inner / "foo.sock"))


def test_dir_deleted_and_recreated_is_watched_again(base: Path, inbox: Inbox,
                                                    watching: Callable[..., Watcher]) -> None:
    """Deleting a watched dir asks for a rescan; after refresh() its return is seen too."""
    plugins = base / "plugins"
    plugins.mkdir()
    watcher = watching(plugins)
    bind(plugins / "foo.sock")
    inbox.wait_for(hint(plugins / "foo.sock"))
    shutil.rmtree(plugins)
    inbox.wait_for(RESTART)
    assert watcher.refresh() is False
    plugins.mkdir()
    inbox.wait_for(RESTART)
    assert watcher.refresh() is False
    bind(plugins / "bar.sock")
    inbox.wait_for(hint(plugins / "bar.sock"))
    assert up(watcher)


def test_dir_swapped_behind_our_back_is_watched_again(base: Path, inbox: Inbox,
                                                      watching: Callable[..., Watcher]) -> None:
    """A dir renamed away and replaced (no event reaches us) is re-watched by refresh()."""
    plugins = base / "plugins"
    plugins.mkdir()
    watcher = watching(plugins)
    plugins.rename(base / "old")
    plugins.mkdir()
    assert watcher.refresh() is False  # its identity changed: watched anew
    bind(plugins / "foo.sock")
    inbox.wait_for(hint(plugins / "foo.sock"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_crashed_dispatcher_is_restarted_by_refresh(base: Path, inbox: Inbox,
                                                    watching: Callable[..., Watcher]) -> None:
    """refresh() replaces an inotify reader whose dispatcher died of an exception."""
    watcher = watching(base)
    assert watcher.refresh() is False
    dead = thread_named("volplugd-inotify")
    dead._raw_queue.put(object())  # type: ignore[attr-defined]
    dead.join(5.0)
    assert not dead.is_alive()
    assert not up(watcher)
    assert watcher.refresh() is True
    assert up(watcher)
    assert thread_named("volplugd-inotify") is not dead
    bind(base / "foo.sock")
    inbox.wait_for(hint(base / "foo.sock"))


def test_dead_inotify_reader_is_restarted_by_refresh(base: Path, inbox: Inbox,
                                                     watching: Callable[..., Watcher]) -> None:
    """If watchdog's inotify reader thread dies, refresh() rebuilds the observer."""
    watcher = watching(base)
    dead = thread_named("volplugd-inotify")
    dead.stop()  # type: ignore[attr-defined]
    dead.join(5.0)
    assert not up(watcher)
    assert watcher.refresh() is True
    bind(base / "foo.sock")
    inbox.wait_for(hint(base / "foo.sock"))


def test_a_failing_put_neither_raises_nor_kills_the_observer(
        base: Path, inbox: Inbox, watching: Callable[..., Watcher]) -> None:
    """put() raising is swallowed; the lost hint makes refresh() ask for a rescan."""
    failures: list[object] = []

    def flaky_put(message: object) -> None:
        if not failures:
            failures.append(message)
            raise RuntimeError("queue closed")
        inbox.put(message)

    watcher = watching(base, put=flaky_put)
    bind(base / "lost.sock")
    wait_until(lambda: failures, message="the failing put")
    bind(base / "kept.sock")
    inbox.wait_for(hint(base / "kept.sock"))
    assert failures == [hint(base / "lost.sock")]
    assert up(watcher)
    assert watcher.refresh() is True
    assert watcher.refresh() is False


def test_set_dirs_moves_the_watches(base: Path, inbox: Inbox,
                                    watching: Callable[..., Watcher]) -> None:
    """After set_dirs() hints come from the new dirs and not from the old one."""
    old, new = base / "old", base / "new"
    old.mkdir()
    new.mkdir()
    watcher = watching(old)
    watcher.set_dirs([str(new)])
    bind(old / "gone.sock")
    bind(new / "foo.sock")
    inbox.wait_for(hint(new / "foo.sock"))
    assert hint(old / "gone.sock") not in inbox.seen
    assert watcher.refresh() is False


def test_symlinked_dir_hints_use_the_configured_path(base: Path, inbox: Inbox,
                                                     watching: Callable[..., Watcher]) -> None:
    """A configured dir that is a symlink is watched at its target; hints name the link."""
    (base / "real").mkdir()
    (base / "link").symlink_to(base / "real")
    watching(base / "link")
    bind(base / "real/foo.sock")
    inbox.wait_for(hint(base / "link/foo.sock"))


def test_stop_is_idempotent(base: Path, watching: Callable[..., Watcher]) -> None:
    """stop() twice is fine; a stopped watcher is down and refresh() does nothing."""
    watcher = watching(base)
    watcher.stop()
    watcher.stop()
    watcher.join(5.0)
    assert not up(watcher)
    assert watcher.refresh() is False


CHILD = """
import sys
from volplugd.discovery import Watcher
watcher = Watcher([sys.argv[1]], lambda m: print(repr(m), flush=True))
watcher.start()
print("ready", flush=True)
sys.stdin.read()
watcher.stop()
watcher.join(5.0)
"""


def test_overflow_of_a_stalled_process_asks_for_a_rescan(base: Path) -> None:
    """A watcher process stalled through a burst that overflows inotify puts Rescan("overflow")."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    plugins = base / "plugins"
    plugins.mkdir()
    out_path = base / "out.txt"
    with out_path.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(plugins)],
                                 stdin=subprocess.PIPE, stdout=out,
                                 cwd=Path(__file__).parent.parent)
    try:
        wait_until(lambda: "ready" in out_path.read_text(), timeout=30.0, message="child ready")
        os.kill(child.pid, signal.SIGSTOP)
        try:
            _burst(plugins, events=limit + 4096)
        finally:
            os.kill(child.pid, signal.SIGCONT)
        wait_until(lambda: "Rescan(trigger='overflow'" in out_path.read_text(), timeout=30.0,
                   message="Rescan('overflow') from the child")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10.0)
    assert child.returncode == 0


def _burst(folder: Path, events: int) -> None:
    """Create and remove dot-files (no hints, so little output): 3 events per file."""
    for i in range((events + 2) // 3):
        path = folder / f".f{i}"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY))  # IN_CREATE, IN_CLOSE_WRITE
        os.unlink(path)  # IN_DELETE


class Clock:
    """The watcher's clock, moved by the test: a mute ends when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flooding_dir_is_muted_while_another_is_still_hinted(
        base: Path, inbox: Inbox) -> None:
    """Past FLOOD_EVENTS events in a window, a dir is muted (one Flooded, no more hints
    from it) while hints from another dir keep coming; refresh() after the mute re-arms it."""
    noisy, quiet = base / "noisy", base / "quiet"
    noisy.mkdir()
    quiet.mkdir()
    clock = Clock()
    watcher = Watcher([str(noisy), str(quiet)], inbox.put, clock=clock)
    watcher.start()
    try:
        _burst(noisy, events=FLOOD_EVENTS + 30)
        inbox.wait_for(Flooded(str(noisy), clock.now + FLOOD_WINDOW))
        bind(noisy / "muted.sock")
        bind(quiet / "foo.sock")
        assert hint(noisy / "muted.sock") not in inbox.wait_for(hint(quiet / "foo.sock"))
        assert watcher.up
        assert watcher.refresh() is False  # still muted: nothing to re-arm yet
        bind(noisy / "still.sock")
        bind(quiet / "bar.sock")
        assert hint(noisy / "still.sock") not in inbox.wait_for(hint(quiet / "bar.sock"))
        clock.now += FLOOD_WINDOW
        assert watcher.refresh() is False  # re-armed on purpose: not a restart
        bind(noisy / "back.sock")
        inbox.wait_for(hint(noisy / "back.sock"))
    finally:
        watcher.stop()
        watcher.join(5.0)


def test_at_most_max_folders_name_folders_are_watched(
        base: Path, inbox: Inbox, watching: Callable[..., Watcher]) -> None:
    """A dir with more <name>/ folders than MAX_FOLDERS gets exactly MAX_FOLDERS watched:
    a socket in each is hinted for that many folders only (the scan finds the rest)."""
    for i in range(MAX_FOLDERS + 5):
        (base / f"p{i}").mkdir()
    watching(base)
    for i in range(MAX_FOLDERS + 5):
        bind(base / f"p{i}/p{i}.sock")
    bind(base / "sentinel.sock")
    before = inbox.wait_for(hint(base / "sentinel.sock"))
    depth = str(base).count("/") + 2  # base/pN/pN.sock
    nested = [m for m in before if isinstance(m, FsHint) and m.path.count("/") == depth]
    assert len(nested) == MAX_FOLDERS


def test_a_chain_deeper_than_the_recursion_limit_costs_one_watch(
        base: Path, inbox: Inbox, watching: Callable[..., Watcher]) -> None:
    """A 1,100-deep chain in a <name>/ folder, there before the start and made while it
    runs: the watcher stays up, refresh() is quiet, and hints still come."""
    (base / "deep").mkdir()
    make_chain(base / "deep")
    watcher = watching(base)
    (base / "late").mkdir()
    inbox.wait_for(hint(base / "late"))
    make_chain(base / "late")
    assert watcher.refresh() is False
    assert up(watcher)
    bind(base / "late/late.sock")
    inbox.wait_for(hint(base / "late/late.sock"))
    for chain in ("deep", "late"):
        remove_chain(base / chain)


def test_read_ahead_past_its_bound_is_dropped_and_asks_for_a_rescan() -> None:
    """More than MAX_BACKLOG buffers read ahead of the dispatcher are dropped, once,
    with one overflow report (the rescan it asks for finds what they said)."""
    overflows: list[bool] = []
    reader = Reader(lambda: overflows.append(True))  # not started: the test dispatches
    try:
        for _ in range(MAX_BACKLOG + 10):
            reader._raw_queue.put(b"buffer")
        for _ in range(256):  # the bound is looked at every 256 events
            reader.handle_event(InotifyEvent(WatchDescriptor(1), Mask(0x100), 0, b"x"))
        assert overflows == [True]
        assert reader._raw_queue.qsize() == 0
        for _ in range(256):  # under the bound now: nothing more to say
            reader.handle_event(InotifyEvent(WatchDescriptor(1), Mask(0x100), 0, b"x"))
        assert overflows == [True]
    finally:
        reader.stop()
        with reader._lock:
            reader._close_resources()
