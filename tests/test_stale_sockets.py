"""Stale sockets, the parts: the decision (which registrations are watched, a socket's
silence over looks), the kernel's two facts (connect, /proc/net/unix) on real sockets,
and removing exactly the socket judged — on real files, a swap between the check and
the unlink included."""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.rawsockets import leave_stale
from volplugd import safefs
from volplugd.calls import Calls
from volplugd.config import DiscoverySettings, Settings
from volplugd.contracts import NullObserver
from volplugd.discovery import scan
from volplugd.discovery.trust import UNTRUSTED
from volplugd.lifecycle import Lifecycle
from volplugd.model import DesiredPlugin, EventType, FileIdentity, Kind, PluginState
from volplugd.plugin.address import address_from_socket
from volplugd.registrations import Book
from volplugd.registry import Registry
from volplugd.stalesockets import Silence, StaleSockets, silence, watched_path
from volplugd.supervision import stale
from volplugd.supervision.stale import (
    Bound,
    Removal,
    aside_name,
    connect_code,
    read_proc_net_unix,
    remove_socket,
)

F, G = (1, 10), (1, 11)  # two socket files (device, inode)


def desired(source: str, kind: Kind = Kind.SOCK, warnings: tuple[str, ...] = ()
            ) -> DesiredPlugin:
    return DesiredPlugin("p", address_from_socket(source), source, kind,
                         FileIdentity(1, 10, 0), warnings)


# --- the decision ------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "watched"), [
    (PluginState.ACTIVATING, True), (PluginState.UNHEALTHY, True),
    (PluginState.READY, False), (PluginState.RESTARTING, False), (PluginState.REJECTED, False)])
def test_only_failing_plugins_are_watched_never_a_restarting_one(
        state: PluginState, watched: bool) -> None:
    """activating and unhealthy sockets are watched; ready, restarting, rejected never."""
    path = "/run/docker/plugins/p.sock"
    assert watched_path(desired(path), state) == (path if watched else None)


@pytest.mark.parametrize("plugin", [
    desired("/run/docker/plugins/p.spec", kind=Kind.SPEC),
    desired("/run/docker/plugins/p.json", kind=Kind.JSON),
    desired("/run/open/p.sock", warnings=(f"{UNTRUSTED}/run/open is writable by others",)),
    desired("/run/docker/plugins/a\nb/p.sock"),
])
def test_spec_files_untrusted_folders_and_unshowable_names_are_never_watched(
        plugin: DesiredPlugin) -> None:
    """Only .sock files in trusted folders, whose path /proc/net/unix can show."""
    assert watched_path(plugin, PluginState.UNHEALTHY) is None


@pytest.mark.parametrize(("previous", "file", "silent", "now", "expected"), [
    (None, F, False, 5.0, None),                       # heard: no silence
    (None, F, True, 5.0, Silence(F, 5.0)),             # first silent look starts it
    (Silence(F, 1.0), F, True, 9.0, Silence(F, 1.0)),  # silent again: since the first
    (Silence(F, 1.0), F, False, 9.0, None),            # heard once: starts over
    (Silence(F, 1.0), G, True, 9.0, Silence(G, 9.0)),  # another file: starts over
])
def test_silence_lasts_only_while_the_same_file_is_silent_at_every_look(
        previous: Silence | None, file: tuple[int, int], silent: bool, now: float,
        expected: Silence | None) -> None:
    """A silence counts from the first of an unbroken run of silent looks at one file."""
    assert silence(previous, file, silent, now) == expected


# --- the kernel's answers ----------------------------------------------------------------

PROC_TEXT = (
    b"Num       RefCount Protocol Flags    Type St Inode Path\n"
    b"0000000000000000: 00000002 00000000 00010000 0001 01 101 /run/plugins/live.sock\n"
    b"0000000000000000: 00000002 00000000 00010000 0001 01 102 /run/plugins/with space.sock\n"
    b"0000000000000000: 00000002 00000000 00010000 0001 01 103 @abstract.sock\n"
    b"0000000000000000: 00000003 00000000 00000000 0001 03 104\n"
    b"0000000000000000: 00000002 00000000 00000000 0001 01 105 /run/plugins/bound.sock\n"
    b"0000000000000000: 00000002 00000000 00010000 0001 01 106 /run/plugins/a\n"
    b"b.sock\n"
    b"0000000000000000: 00000002 00000000 00010000 0001 01 107 relative.sock\n"
    b"0000000000000000: 00000002 00000000 00010000 0001 01 108 /proc/self/fd/5/fd.sock\n"
)


@pytest.mark.parametrize(("path", "held"), [
    ("/run/plugins/live.sock", True),           # listening
    ("/run/plugins/bound.sock", True),          # bound, not listening yet: held too
    ("/run/plugins/with space.sock", True),     # a name with a space
    ("/run/plugins/abstract.sock", False),      # an abstract name is no file
    ("/run/plugins/b.sock", False),             # the tail of a name with a newline
    ("/run/plugins/relative.sock", True),       # bound by a relative name: a doubt
    ("/run/plugins/fd.sock", True),             # bound through /proc/self/fd: a doubt
    ("/run/plugins/dead.sock", False),          # nobody
])
def test_proc_net_unix_holds_a_name_when_it_is_or_may_be_bound(path: str, held: bool) -> None:
    """Bound names from /proc/net/unix's text; a name that may be another's path holds."""
    assert Bound(PROC_TEXT).holds(path) is held


def test_the_same_name_in_another_folder_does_not_hold_but_one_through_a_link_does(
        short_tmp: Path) -> None:
    """A socket of the same file name elsewhere is another file; the same folder spelt
    through a symlink, or a folder that cannot be looked at, is a doubt: held."""
    (short_tmp / "plugins").mkdir()
    (short_tmp / "other").mkdir()
    (short_tmp / "link").symlink_to(short_tmp / "plugins")
    wanted = str(short_tmp / "plugins" / "p.sock")
    for where, held in (("other", False), ("link", True), ("missing", True)):
        text = f"0: 00000002 00000000 00010000 0001 01 1 {short_tmp / where / 'p.sock'}\n"
        assert Bound(text.encode()).holds(wanted) is held, where


def test_the_real_proc_net_unix_shows_bound_sockets_until_they_close(
        short_tmp: Path, sockets: Callable[..., socket.socket]) -> None:
    """Listening, bound-only and closed sockets, as this kernel shows them."""
    listening, bound_only = short_tmp / "l.sock", short_tmp / "b.sock"
    sockets(listening)
    quiet = sockets(bound_only, listen=None)
    gone = leave_stale(short_tmp / "gone.sock")
    assert gone
    now = Bound(read_proc_net_unix())
    assert (now.holds(str(listening)), now.holds(str(bound_only)),
            now.holds(str(short_tmp / "gone.sock"))) == (True, True, False)
    quiet.close()
    assert Bound(read_proc_net_unix()).holds(str(bound_only)) is False


def test_connect_is_refused_only_where_nobody_listens(
        short_tmp: Path, sockets: Callable[..., socket.socket]) -> None:
    """Refused: a closed socket's file, one bound but not listening, a regular file and a
    FIFO (so the file type is checked apart); a full backlog is EAGAIN, a listener 0."""
    leave_stale(short_tmp / "dead.sock")
    sockets(short_tmp / "bound.sock", listen=None)
    sockets(short_tmp / "live.sock")
    sockets(short_tmp / "full.sock", listen=0)
    fillers = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(str(short_tmp / "full.sock"))
    (short_tmp / "file.sock").write_bytes(b"")
    os.mkfifo(short_tmp / "fifo.sock")
    codes = {name: connect_code(str(short_tmp / name)) for name in (
        "dead.sock", "bound.sock", "live.sock", "full.sock", "file.sock", "fifo.sock",
        "none.sock")}
    for filler in fillers:
        filler.close()
    assert codes == {"dead.sock": errno.ECONNREFUSED, "bound.sock": errno.ECONNREFUSED,
                     "live.sock": 0, "full.sock": errno.EAGAIN,
                     "file.sock": errno.ECONNREFUSED, "fifo.sock": errno.ECONNREFUSED,
                     "none.sock": errno.ENOENT}


def test_a_path_too_long_for_sun_path_is_reached_through_its_folder(
        short_tmp: Path, sockets: Callable[..., socket.socket]) -> None:
    """A socket whose path is over 107 bytes: connect still answers (refused, here)."""
    deep = short_tmp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    os.chdir(deep)
    try:
        sockets("p.sock").close()  # bound by a relative name: the path is too long
    finally:
        os.chdir("/")
    assert len(os.fsencode(str(deep / "p.sock"))) > safefs.MAX_UNIX_PATH
    assert connect_code(str(deep / "p.sock")) == errno.ECONNREFUSED


# --- removing exactly that socket ---------------------------------------------------------

def test_the_stale_socket_judged_is_removed_and_nothing_is_left(short_tmp: Path) -> None:
    """REMOVED: the file is gone, no aside name left."""
    dev, ino = leave_stale(short_tmp / "p.sock")
    assert remove_socket(str(short_tmp), "p.sock", dev, ino) is Removal.REMOVED
    assert sorted(os.listdir(short_tmp)) == []


@pytest.mark.parametrize("kind", ["file", "fifo", "folder", "symlink"])
def test_what_is_not_a_socket_is_never_removed(short_tmp: Path, kind: str) -> None:
    """A regular file, a FIFO, a folder, a symlink to the very socket: kept, as they are
    (the symlink's target too)."""
    dev, ino = leave_stale(short_tmp / "target.sock")
    path = short_tmp / "p.sock"
    if kind == "file":
        path.write_bytes(b"keep")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(short_tmp / "target.sock")
    before = os.lstat(path)
    assert remove_socket(str(short_tmp), "p.sock", dev, ino) is Removal.NOT_A_SOCKET
    after = os.lstat(path)
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino,
                                                          stat.S_IFMT(before.st_mode))
    assert sorted(os.listdir(short_tmp)) == ["p.sock", "target.sock"]


def test_a_crash_leftover_at_the_aside_name_is_replaced_anything_else_there_kept(
        short_tmp: Path) -> None:
    """A socket left at the aside name by a crash goes with the next removal; a regular
    file there is never replaced: ASIDE_TAKEN, the stale socket and the file both kept."""
    dev, ino = leave_stale(short_tmp / "p.sock")
    leave_stale(short_tmp / aside_name("p.sock"))
    assert remove_socket(str(short_tmp), "p.sock", dev, ino) is Removal.REMOVED
    assert sorted(os.listdir(short_tmp)) == []
    dev, ino = leave_stale(short_tmp / "p.sock")
    (short_tmp / aside_name("p.sock")).write_bytes(b"keep")
    assert remove_socket(str(short_tmp), "p.sock", dev, ino) is Removal.ASIDE_TAKEN
    assert (short_tmp / aside_name("p.sock")).read_bytes() == b"keep"
    assert os.lstat(short_tmp / "p.sock").st_ino == ino


@pytest.mark.parametrize("listen", [8, None])
def test_a_socket_that_replaced_the_judged_one_is_kept(
        short_tmp: Path, sockets: Callable[..., socket.socket], listen: int | None) -> None:
    """Another socket at the name (a plugin that came back, listening or bound only):
    REPLACED and kept, even where it got the old one's inode number (ext4 gives it)."""
    path = short_tmp / "p.sock"
    dev, ino = leave_stale(path)
    path.unlink()
    sockets(path, listen=listen)
    new = os.lstat(path).st_ino
    assert remove_socket(str(short_tmp), "p.sock", dev, ino) is Removal.REPLACED
    assert (os.lstat(path).st_ino, sorted(os.listdir(short_tmp))) == (new, ["p.sock"])
    assert connect_code(str(path)) == (0 if listen else errno.ECONNREFUSED)


def test_a_socket_swapped_in_between_the_check_and_the_unlink_is_put_back(
        short_tmp: Path, sockets: Callable[..., socket.socket],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap lands after the check, just before the file is moved aside: what was
    moved is the new socket, so it gets its name back, same inode, still listening."""
    path = short_tmp / "p.sock"
    dev, ino = leave_stale(path)
    real_rename = os.rename
    swapped: list[int] = []

    def swap_then_rename(*args: object, **kw: object) -> None:
        path.unlink()
        sockets(path)  # a plugin that comes back binds its socket again
        swapped.append(os.lstat(path).st_ino)
        real_rename(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(stale.os, "rename", swap_then_rename)
    assert remove_socket(str(short_tmp), "p.sock", dev, ino) is Removal.REPLACED
    monkeypatch.undo()
    assert (os.lstat(path).st_ino, connect_code(str(path))) == (swapped[0], 0)
    assert sorted(os.listdir(short_tmp)) == ["p.sock"]


def test_a_replacement_that_cannot_get_its_name_back_keeps_the_aside_name(
        short_tmp: Path, sockets: Callable[..., socket.socket],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Swapped, moved aside, and a third file at the name before the link back: nothing
    is overwritten nor removed (MISPLACED; the replacement is at the aside name)."""
    path = short_tmp / "p.sock"
    dev, ino = leave_stale(path)
    real_rename = os.rename

    def swap_rename_and_take_the_name(*args: object, **kw: object) -> None:
        path.unlink()
        sockets(path)
        real_rename(*args, **kw)  # type: ignore[arg-type]
        path.write_bytes(b"third")

    monkeypatch.setattr(stale.os, "rename", swap_rename_and_take_the_name)
    assert remove_socket(str(short_tmp), "p.sock", dev, ino) is Removal.MISPLACED
    monkeypatch.undo()
    assert path.read_bytes() == b"third"
    assert connect_code(str(short_tmp / aside_name("p.sock"))) == 0


def test_gone_and_a_folder_that_is_a_symlink(short_tmp: Path) -> None:
    """Nothing at the name: GONE. A folder reached through a symlink is not opened."""
    assert remove_socket(str(short_tmp), "none.sock", 1, 1) is Removal.GONE
    (short_tmp / "real").mkdir()
    dev, ino = leave_stale(short_tmp / "real" / "p.sock")
    (short_tmp / "link").symlink_to(short_tmp / "real")
    with pytest.raises(NotADirectoryError):
        remove_socket(str(short_tmp / "link"), "p.sock", dev, ino)
    assert (short_tmp / "real" / "p.sock").exists()


# --- the loop's room, over a real book and a real stale socket ---------------------------

class Counting(NullObserver):
    def __init__(self) -> None:
        self.removed = 0

    def stale_socket_removed(self) -> None:
        self.removed += 1


@dataclass
class Room:
    stale: StaleSockets
    plugins: Lifecycle
    book: Book
    registry: Registry
    observer: Counting
    calls: Calls
    path: Path

    def set_state(self, state: PluginState) -> None:
        record = self.book.records["p"]
        view = dataclasses.replace(record.tracked.view, state=state)
        self.book.update(record, dataclasses.replace(record.tracked, view=view))

    def stale_events(self) -> list[tuple[str | None, str | None, str]]:
        self.book.publish()
        return [(e.plugin, e.from_state, e.reason) for e in self.registry.events(0)
                if e.type is EventType.STALE_SOCKET_REMOVED]


def make_room(folder: Path, after: float | None,
              read_bound: Callable[[], bytes] = read_proc_net_unix) -> Room:
    settings = Settings(discovery=DiscoverySettings(dirs=(str(folder),),
                                                    remove_stale_after=after))
    registry = Registry()
    book = Book(registry, clock=lambda: 0.0)
    observer = Counting()
    calls = Calls(workers=1)
    plugins = Lifecycle(settings, book, calls, observer, wall=lambda: 1.0)
    plugins.reconcile(scan([str(folder)]), 0.0)
    return Room(StaleSockets(plugins, book, observer, read_bound), plugins, book, registry,
                observer, calls, folder / "p.sock")


@pytest.fixture
def rooms(short_tmp: Path) -> Iterator[Callable[..., Room]]:
    """A room over ``short_tmp`` holding one stale socket, p.sock, registered."""
    made: list[Room] = []

    def make(after: float | None, **kw: Any) -> Room:
        leave_stale(short_tmp / "p.sock")
        made.append(make_room(short_tmp, after, **kw))
        return made[-1]

    yield make
    for room in made:
        room.plugins.close()
        room.calls.close()


def test_a_restarting_plugins_socket_is_never_removed_and_counts_from_zero_after(
        rooms: Callable[..., Room]) -> None:
    """Restarting through 40 looks and 10 times the delay: kept. Unhealthy from t=10: its
    first silent look is at 10.25 (the next one due), and it is removed at the look a
    whole delay after that, with its event and count."""
    room = rooms(1.0)
    room.set_state(PluginState.RESTARTING)
    assert [room.stale.remove_stale(t / 4) for t in range(41)] == [[]] * 41
    assert room.path.exists()
    room.set_state(PluginState.UNHEALTHY)
    assert [room.stale.remove_stale(10.0 + t / 4) for t in range(5)] == [[]] * 5
    assert room.stale.remove_stale(11.25) == [str(room.path)]
    assert not room.path.exists()
    assert (room.stale_events(), room.observer.removed) == (
        [("p", PluginState.UNHEALTHY,
          f"{room.path} refused connections and no process had it bound for 1 s")], 1)


def test_off_never_looks_and_wants_no_wake_up(rooms: Callable[..., Room]) -> None:
    """remove_stale_after unset: no wake-up asked for, no look, the socket kept."""
    looked: list[int] = []
    room = rooms(None, read_bound=lambda: looked.append(1) or b"")
    assert room.stale.wake_at() is None
    assert [room.stale.remove_stale(float(t)) for t in (0, 100, 10_000)] == [[], [], []]
    assert (room.path.exists(), looked, room.stale.wake_at()) == (True, [], None)


def test_an_unreadable_proc_net_unix_removes_nothing_and_is_logged_once(
        rooms: Callable[..., Room]) -> None:
    """Without the kernel's second opinion every socket counts as held: nothing removed,
    one stale_sockets_unknown line however many looks."""
    def unreadable() -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied")

    room = rooms(1.0, read_bound=unreadable)
    room.set_state(PluginState.UNHEALTHY)
    with capture_logs() as logs:
        assert [room.stale.remove_stale(t / 4) for t in range(20)] == [[]] * 20
    assert [(e["event"], e["error"]) for e in logs] == [
        ("stale_sockets_unknown", "Permission denied")]
    assert (room.path.exists(), room.stale_events(), room.observer.removed) == (True, [], 0)
