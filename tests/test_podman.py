"""Unit tests of the Podman drop-in: rendering, admin declarations, atomic writes, writer."""

from __future__ import annotations

import os
import stat
import threading
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.waiting import wait_until
from volplugd import __version__
from volplugd.config import PodmanSettings
from volplugd.model import EMPTY_SNAPSHOT, Kind, PluginState, PluginView, Snapshot
from volplugd.podman import (
    GENERATED_MARK,
    SYSTEM_DROPIN,
    AdminFiles,
    DropinWriter,
    ForeignFileError,
    config_search_paths,
    declared_plugins,
    default_dropin_path,
    for_user,
    plan_dropin,
    render_dropin,
    toml_string,
    write_if_changed,
)
from volplugd.safefs import NotAFile

NO_TIMEOUT = PodmanSettings(enabled=True)


def view(name: str, address: str | None = None, *, kind: Kind = Kind.SOCK,
         state: PluginState = PluginState.READY, probe_at: float | None = None) -> PluginView:
    address = f"/run/docker/plugins/{name}.sock" if address is None else address
    return PluginView(name=name, address=address, source=address, kind=kind, state=state,
                      registered_at=1.0, last_probe_at=probe_at)


def snapshot(*views: PluginView, generation: int = 1) -> Snapshot:
    return Snapshot(MappingProxyType({v.name: v for v in views}), MappingProxyType({}),
                    generation=generation)


def listed(text: str) -> dict[str, Any]:
    """The [engine.volume_plugins] table as Podman's TOML reader would see it."""
    plugins: dict[str, Any] = tomllib.loads(text)["engine"]["volume_plugins"]
    return plugins


# --- rendering ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "state", "address", "expected"), [
    (Kind.SOCK, PluginState.READY, "/run/docker/plugins/p.sock", "/run/docker/plugins/p.sock"),
    (Kind.SOCK, PluginState.READY, "unix:///run/docker/plugins/p.sock",
     "/run/docker/plugins/p.sock"),
    (Kind.SOCK, PluginState.UNHEALTHY, "/run/docker/plugins/p.sock",
     "/run/docker/plugins/p.sock"),
    (Kind.SOCK, PluginState.RESTARTING, "/run/docker/plugins/p.sock",
     "/run/docker/plugins/p.sock"),
    (Kind.SOCK, PluginState.ACTIVATING, "/run/docker/plugins/p.sock", None),
    (Kind.SOCK, PluginState.REJECTED, "/run/docker/plugins/p.sock", None),
    (Kind.SPEC, PluginState.READY, "unix:///run/p/p.sock", "/run/p/p.sock"),
    (Kind.SPEC, PluginState.UNHEALTHY, "unix:///run/p/p.sock", "/run/p/p.sock"),
    (Kind.SPEC, PluginState.RESTARTING, "unix:///run/p/p.sock", "/run/p/p.sock"),
    (Kind.SPEC, PluginState.ACTIVATING, "unix:///run/p/p.sock", None),
    (Kind.JSON, PluginState.READY, "unix:///run/p/p.sock", "/run/p/p.sock"),
    (Kind.JSON, PluginState.REJECTED, "unix:///run/p/p.sock", None),
    (Kind.SPEC, PluginState.READY, "tcp://127.0.0.1:8080", None),
    (Kind.SPEC, PluginState.READY, "http://127.0.0.1:8080", None),
    (Kind.JSON, PluginState.READY, "https://plugins.example:443", None),
    (Kind.SPEC, PluginState.READY, "unix://relative/p.sock", None),
    (Kind.SOCK, PluginState.READY, "relative/p.sock", None),
])
def test_lists_unix_plugins_that_are_ready_unhealthy_or_restarting(
        kind: Kind, state: PluginState, address: str, expected: str | None) -> None:
    """Only unix-socket plugins in state ready, unhealthy or restarting reach Podman, by
    socket path."""
    text = render_dropin(snapshot(view("p", address, kind=kind, state=state)), NO_TIMEOUT,
                         declared={})
    assert listed(text) == ({} if expected is None else {"p": expected})


def test_header_says_generated_by_whom_and_how_to_turn_it_off() -> None:
    """The file starts with our mark, the version, "Do not edit" and the config key."""
    text = render_dropin(snapshot(view("a")), NO_TIMEOUT, declared={})
    header = text.split("\n\n")[0]
    assert header.startswith(f"{GENERATED_MARK} {__version__}. Do not edit")
    assert "`enabled = false` in the [podman] table of volplugd.toml" in header
    assert all(line.startswith("#") for line in header.splitlines())


def test_timeout_goes_into_the_engine_table_only_when_configured() -> None:
    """volume_plugin_timeout is written under [engine] when set, and absent otherwise."""
    snap = snapshot(view("a"))
    with_timeout = render_dropin(snap, PodmanSettings(volume_plugin_timeout=9), declared={})
    assert tomllib.loads(with_timeout)["engine"]["volume_plugin_timeout"] == 9
    without = tomllib.loads(render_dropin(snap, NO_TIMEOUT, declared={}))
    assert "volume_plugin_timeout" not in without["engine"]


def test_output_is_sorted_and_stable_whatever_the_snapshot_order() -> None:
    """Same plugins in another order, or with other probe times, give the same bytes."""
    views = [view(n) for n in ("zeta", "alpha", "mid")]
    one = render_dropin(snapshot(*views), NO_TIMEOUT, declared={})
    other = render_dropin(snapshot(*reversed([view(v.name, probe_at=5.0) for v in views]),
                                   generation=7), NO_TIMEOUT, declared={})
    assert one == other
    assert list(listed(one)) == ["alpha", "mid", "zeta"]


def test_empty_snapshot_gives_an_empty_but_valid_table() -> None:
    """With no plugin the drop-in still parses and declares an empty table."""
    assert listed(render_dropin(EMPTY_SNAPSHOT, NO_TIMEOUT, declared={})) == {}


def test_names_needing_quotes_round_trip_through_toml() -> None:
    """Dots, spaces, quotes, backslashes, non-ASCII and control characters are quoted."""
    names = ["my.plug", "with space", 'q"uote', "back\\slash", "ünï", "😀", "tab\tx",
             "nl\nx", "del\x7f", "x=y", "#hash", "plain-name_1"]
    text = render_dropin(snapshot(*(view(n, f"/s/{i}.sock") for i, n in enumerate(names))),
                         NO_TIMEOUT, declared={})
    assert listed(text) == {n: f"/s/{i}.sock" for i, n in enumerate(names)}
    assert "\nplain-name_1 = " in text  # bare keys stay bare, for people reading it


def test_socket_paths_needing_escapes_round_trip() -> None:
    """A socket path with quotes or backslashes comes back unchanged."""
    path = '/run/we"ird\\dir/p.sock'
    assert listed(render_dropin(snapshot(view("p", path)), NO_TIMEOUT, declared={})) == {
        "p": path}


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_toml_string_round_trips_any_text(text: str) -> None:
    """Any UTF-8 text survives toml_string then Python's TOML reader."""
    assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


def test_toml_string_refuses_undecodable_names() -> None:
    """A lone surrogate (an undecodable file name) has no TOML spelling."""
    with pytest.raises(UnicodeEncodeError):
        toml_string("bad\udcff")


@pytest.mark.parametrize(("name", "reason"), [
    ("local", "reserved for Podman's built-in local driver"),
    ("image", "reserved for Podman's built-in image driver"),
    ("", "empty or contains NUL: no command line can name it"),
    ("bad\udcff", "not valid UTF-8: containers.conf cannot spell it"),
])
def test_names_podman_cannot_use_are_skipped_with_the_reason(name: str, reason: str) -> None:
    """Reserved, empty and undecodable names are left out and said why, in a comment."""
    snap = snapshot(view(name, "/run/x.sock"), view("good"))
    plan = plan_dropin(snap, {})
    assert dict(plan.skipped) == {name: reason}
    text = render_dropin(snap, NO_TIMEOUT, declared={})
    assert listed(text) == {"good": "/run/docker/plugins/good.sock"}
    assert f"{reason}\n" in text


def test_undecodable_socket_path_is_skipped() -> None:
    """A plugin whose socket path is not UTF-8 is skipped, not written half-right."""
    plan = plan_dropin(snapshot(view("p", "/run/bad\udcff.sock")), {})
    assert dict(plan.skipped) == {
        "p": "socket path is not valid UTF-8: containers.conf cannot spell it"}
    assert dict(plan.entries) == {}


def test_plugins_declared_by_the_administrator_are_left_out() -> None:
    """A name the administrator declared elsewhere is not listed, even at another path."""
    snap = snapshot(view("mine"), view("theirs"))
    text = render_dropin(snap, NO_TIMEOUT, declared={"theirs": "/somewhere/else.sock"})
    assert listed(text) == {"mine": "/run/docker/plugins/mine.sock"}
    assert '# Declared by the administrator in another containers.conf file:\n#   "theirs"' \
        in text


# --- the administrator's files --------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_declared_plugins_merges_files_in_order_later_wins(tmp_path: Path) -> None:
    """Like Podman, later files add names and override earlier ones."""
    first = write(tmp_path / "a.conf", '[engine.volume_plugins]\nx = "/1"\ny = "/2"\n')
    second = write(tmp_path / "b.conf", '[engine.volume_plugins]\n"y" = "/3"\n"z.z" = "/4"\n')
    assert declared_plugins([first, second]) == {"x": "/1", "y": "/3", "z.z": "/4"}


def test_declared_plugins_ignores_our_own_and_missing_files(tmp_path: Path) -> None:
    """Files volplugd generated, missing files and folders declare nothing."""
    ours = write(tmp_path / "50-volplugd.conf",
                 render_dropin(snapshot(view("p")), NO_TIMEOUT, declared={}))
    admin = write(tmp_path / "admin.conf", '[engine.volume_plugins]\nq = "/q"\n')
    paths = [ours, str(tmp_path / "missing.conf"), str(tmp_path), admin]
    assert declared_plugins(paths) == {"q": "/q"}


def test_declared_plugins_survives_broken_files_and_logs_them(tmp_path: Path) -> None:
    """An unparsable file is logged and skipped; odd shapes are ignored."""
    broken = write(tmp_path / "broken.conf", "[engine\nnot toml")
    odd = write(tmp_path / "odd.conf", '[engine]\nvolume_plugins = "nope"\n')
    mixed = write(tmp_path / "mixed.conf", '[engine.volume_plugins]\nn = 3\nok = "/ok"\n')
    with capture_logs() as logs:
        assert declared_plugins([broken, odd, mixed]) == {"ok": "/ok"}
    assert [(e["event"], e["path"]) for e in logs] == [("podman_config_unparsable", broken)]


def test_admin_files_are_reparsed_and_logged_only_when_they_change(tmp_path: Path) -> None:
    """A broken file is logged once, not per snapshot; an edit is picked up at once."""
    admin = tmp_path / "admin.conf"
    write(admin, "[engine\n")
    files = AdminFiles()
    with capture_logs() as logs:
        assert files.declared([str(admin)]) == {}
        assert files.declared([str(admin)]) == {}
    assert [e["event"] for e in logs] == ["podman_config_unparsable"]
    write(admin, '[engine.volume_plugins]\nfixed = "/f"\n')
    assert files.declared([str(admin), str(tmp_path / "missing.conf")]) == {"fixed": "/f"}


def test_rootless_search_order_adds_the_user_files(tmp_path: Path) -> None:
    """Rootless: $XDG_CONFIG_HOME's containers.conf then its .d/*.conf, sorted, hidden too."""
    conf_d = tmp_path / "containers" / "containers.conf.d"
    for name in ("20-b.conf", "10-a.conf", ".hidden.conf", "notes.txt"):
        write(conf_d / name, "")
    (conf_d / "sub.conf").mkdir()
    paths = config_search_paths(1000, {"XDG_CONFIG_HOME": str(tmp_path),
                                       "CONTAINERS_CONF": "/custom.conf"})
    assert paths[:2] == ["/usr/share/containers/containers.conf",
                         "/etc/containers/containers.conf"]
    assert paths[-5:] == ["/custom.conf", str(tmp_path / "containers" / "containers.conf"),
                          str(conf_d / ".hidden.conf"), str(conf_d / "10-a.conf"),
                          str(conf_d / "20-b.conf")]


def test_root_search_order_has_no_user_files() -> None:
    """As root Podman reads no per-user file, and neither do we."""
    paths = config_search_paths(0, {"XDG_CONFIG_HOME": "/home/u/.config"})
    assert not any(p.startswith("/home/u") for p in paths)


@pytest.mark.parametrize(("uid", "env", "expected"), [
    (0, {"XDG_CONFIG_HOME": "/x"}, SYSTEM_DROPIN),
    (1000, {"XDG_CONFIG_HOME": "/x", "HOME": "/home/u"},
     "/x/containers/containers.conf.d/50-volplugd.conf"),
    (1000, {"HOME": "/home/u"}, "/home/u/.config/containers/containers.conf.d/50-volplugd.conf"),
])
def test_default_dropin_path_for_root_and_rootless(uid: int, env: dict[str, str],
                                                   expected: str) -> None:
    """Root writes the system drop-in; a user writes under $XDG_CONFIG_HOME or ~/.config."""
    assert default_dropin_path(uid, env) == expected
    assert SYSTEM_DROPIN == "/etc/containers/containers.conf.d/50-volplugd.conf"


# --- atomic writes ----------------------------------------------------------------------


def test_write_creates_folder_and_readable_file_without_leftovers(tmp_path: Path) -> None:
    """First write creates the folder, a 0644 file with the content, and no temp files."""
    path = tmp_path / "containers.conf.d" / "50-volplugd.conf"
    assert write_if_changed(str(path), "a = 1\n") is True
    assert path.read_text() == "a = 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["50-volplugd.conf"]


def test_unchanged_content_is_not_written_again(tmp_path: Path) -> None:
    """Same content: no write at all, so inode and mtime stay the same."""
    path = tmp_path / "d.conf"
    write_if_changed(str(path), "a = 1\n")
    before = path.stat()
    assert write_if_changed(str(path), "a = 1\n") is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_content_replaces_the_file_by_rename(tmp_path: Path) -> None:
    """New content arrives as a new inode (rename over), never a half-written file."""
    path = tmp_path / "d.conf"
    write_if_changed(str(path), "a = 1\n")
    before = path.stat().st_ino
    assert write_if_changed(str(path), "a = 2\n") is True
    assert path.read_text() == "a = 2\n"
    assert path.stat().st_ino != before
    assert os.listdir(tmp_path) == ["d.conf"]


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """When the target is not a regular file (a folder), the error is raised, nothing
    is replaced and no temp file is left behind."""
    target = tmp_path / "d.conf"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(NotAFile, match=f"^{target} is not a regular file$"):
        write_if_changed(str(target), "a = 1\n")
    assert sorted(os.listdir(tmp_path)) == ["d.conf"]


# --- the writer -------------------------------------------------------------------------


class Snapshots:
    """A tiny registry: publish snapshots, wait for a newer generation (Registry.wait)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._published: list[Snapshot] = [EMPTY_SNAPSHOT]
        self.asked_after = -1
        self.fail_next: Exception | None = None

    def publish(self, *views: PluginView) -> int:
        with self._cond:
            generation = self._published[-1].generation + 1
            self._published.append(snapshot(*views, generation=generation))
            self._cond.notify_all()
        return generation

    def wait(self, after: int, timeout: float) -> Snapshot:
        with self._cond:
            self.asked_after = max(self.asked_after, after)
            if self.fail_next is not None:
                err, self.fail_next = self.fail_next, None
                raise err
            self._cond.wait_for(lambda: self._published[-1].generation > after, timeout)
            return self._published[-1]

    def handled(self, generation: int) -> bool:
        """The writer finished with ``generation``: it now waits for a newer one."""
        return self.asked_after >= generation


@pytest.fixture
def dropin(tmp_path: Path) -> str:
    return str(tmp_path / "containers.conf.d" / "50-volplugd.conf")


@pytest.fixture
def snapshots() -> Snapshots:
    return Snapshots()


def make_writer(dropin: str, snapshots: Snapshots, *, remove_on_stop: bool = False,
                search: Sequence[str] = (), refresh: float = 30.0) -> DropinWriter:
    settings = PodmanSettings(enabled=True, dropin=dropin, remove_on_stop=remove_on_stop)
    return DropinWriter(settings, snapshots.wait, refresh=refresh, tick=0.05,
                        search_paths=lambda: list(search))


@pytest.fixture
def running(dropin: str, snapshots: Snapshots) -> Iterator[DropinWriter]:
    writer = make_writer(dropin, snapshots)
    writer.start()
    yield writer
    writer.stop()
    writer.join(5)


def contents(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None


def test_update_writes_then_reports_no_change(dropin: str, snapshots: Snapshots) -> None:
    """update() writes the rendering of a snapshot once, then says nothing changed."""
    writer = make_writer(dropin, snapshots)
    snap = snapshot(view("btrfs"))
    with capture_logs() as logs:
        assert writer.update(snap) is True
        assert writer.update(snap) is False
    assert listed(Path(dropin).read_text()) == {"btrfs": "/run/docker/plugins/btrfs.sock"}
    assert [e["event"] for e in logs] == ["podman_dropin_written"]
    assert logs[0]["plugins"] == ["btrfs"]


def test_a_restart_cycle_never_rewrites_the_dropin(dropin: str, snapshots: Snapshots) -> None:
    """ready -> unhealthy -> restarting -> ready: written once, the plugin listed all along."""
    writer = make_writer(dropin, snapshots)
    states = (PluginState.READY, PluginState.UNHEALTHY, PluginState.RESTARTING,
              PluginState.READY)
    written = [writer.update(snapshot(view("btrfs", state=state), generation=generation))
               for generation, state in enumerate(states, 1)]
    assert written == [True, False, False, False]
    assert listed(Path(dropin).read_text()) == {"btrfs": "/run/docker/plugins/btrfs.sock"}


def test_update_excludes_what_the_admin_files_declare(tmp_path: Path, dropin: str,
                                                     snapshots: Snapshots) -> None:
    """The writer reads the search paths (never its own file) and leaves admin names out."""
    admin = write(tmp_path / "containers.conf", '[engine.volume_plugins]\ntheirs = "/t"\n')
    writer = make_writer(dropin, snapshots, search=[admin, dropin])
    writer.update(snapshot(view("mine"), view("theirs")))
    assert listed(Path(dropin).read_text()) == {"mine": "/run/docker/plugins/mine.sock"}


def test_update_refuses_to_overwrite_a_file_it_did_not_write(dropin: str,
                                                            snapshots: Snapshots) -> None:
    """A foreign file at the drop-in path is never overwritten; an empty one is claimed."""
    write(Path(dropin), "[engine]\n# the admin's own\n")
    writer = make_writer(dropin, snapshots)
    with pytest.raises(ForeignFileError) as caught:
        writer.update(snapshot(view("p")))
    assert str(caught.value) == f"{dropin} was not generated by volplugd; not overwriting it"
    assert Path(dropin).read_text() == "[engine]\n# the admin's own\n"
    write(Path(dropin), "")
    assert writer.update(snapshot(view("p"))) is True


def test_skipped_names_are_logged_once_not_per_snapshot(dropin: str,
                                                       snapshots: Snapshots) -> None:
    """A bad name gives one log line, not one per new snapshot generation."""
    writer = make_writer(dropin, snapshots)
    with capture_logs() as logs:
        for generation in (1, 2, 3):
            writer.update(snapshot(view("local"), generation=generation))
    skipped = [e for e in logs if e["event"] == "podman_plugin_skipped"]
    assert [(e["plugin"], e["reason"]) for e in skipped] == [
        ("local", "reserved for Podman's built-in local driver")]


def test_thread_follows_snapshots(dropin: str, snapshots: Snapshots,
                                  running: DropinWriter) -> None:
    """Plugins appear in the drop-in when published and vanish when evicted."""
    snapshots.publish(view("a"), view("b"))
    wait_until(lambda: "\nb = " in (contents(dropin) or ""), 5, message="b listed")
    snapshots.publish(view("a"))
    wait_until(lambda: "\nb = " not in (contents(dropin) or "b"), 5, message="b removed")
    assert listed(Path(dropin).read_text()) == {"a": "/run/docker/plugins/a.sock"}


def test_thread_writes_only_when_the_content_changes(dropin: str, snapshots: Snapshots,
                                                     running: DropinWriter) -> None:
    """A new generation that changes nothing Podman sees leaves the file untouched."""
    first = snapshots.publish(view("a", probe_at=1.0))
    wait_until(lambda: snapshots.handled(first), 5, message="first snapshot handled")
    before = os.stat(dropin)
    second = snapshots.publish(view("a", probe_at=2.0), view("new", state=PluginState.ACTIVATING))
    wait_until(lambda: snapshots.handled(second), 5, message="second snapshot handled")
    after = os.stat(dropin)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_thread_survives_errors_and_logs_them_once(dropin: str, snapshots: Snapshots) -> None:
    """A failing wait or write is logged once; the thread keeps going and recovers."""
    write(Path(dropin), "# someone else's file\n")
    snapshots.fail_next = RuntimeError("registry hiccup")
    first = snapshots.publish(view("a"))
    writer = make_writer(dropin, snapshots)
    try:
        with capture_logs() as logs:
            writer.start()
            wait_until(lambda: snapshots.handled(first), 5, message="first snapshot handled")
            second = snapshots.publish(view("a"), view("b"))
            wait_until(lambda: snapshots.handled(second), 5, message="second snapshot handled")
        errors = [e["error"] for e in logs if e["event"] == "podman_dropin_failed"]
        assert errors == ["RuntimeError: registry hiccup",
                          f"ForeignFileError: {dropin} was not generated by volplugd; "
                          "not overwriting it"]
        os.unlink(dropin)
        snapshots.publish(view("a"))
        wait_until(lambda: contents(dropin) is not None, 5, message="drop-in written again")
    finally:
        writer.stop()
        writer.join(5)


def test_thread_rereads_admin_files_on_refresh(tmp_path: Path, dropin: str,
                                               snapshots: Snapshots) -> None:
    """A declaration the admin adds later is honoured without any new snapshot."""
    admin = tmp_path / "admin.conf"
    writer = make_writer(dropin, snapshots, search=[str(admin)], refresh=0.0)
    snapshots.publish(view("p"))
    writer.start()
    try:
        wait_until(lambda: "\np = " in (contents(dropin) or ""), 5, message="p listed")
        write(admin, '[engine.volume_plugins]\np = "/elsewhere"\n')
        wait_until(lambda: "\np = " not in (contents(dropin) or "p"), 5,
                   message="p left to the admin")
    finally:
        writer.stop()
        writer.join(5)


@pytest.mark.parametrize("remove_on_stop", [True, False])
def test_stop_removes_the_dropin_only_if_configured(dropin: str, snapshots: Snapshots,
                                                     remove_on_stop: bool) -> None:
    """A clean stop ends the thread and removes the file only with remove_on_stop."""
    writer = make_writer(dropin, snapshots, remove_on_stop=remove_on_stop)
    writer.start()
    snapshots.publish(view("a"))
    wait_until(lambda: contents(dropin) is not None, 5, message="drop-in written")
    writer.stop()
    writer.stop()  # idempotent
    writer.join(5)
    assert not any(t.name == "podman-dropin" for t in threading.enumerate())
    assert os.path.exists(dropin) is not remove_on_stop


def test_stop_never_removes_a_foreign_file(dropin: str, snapshots: Snapshots) -> None:
    """remove_on_stop removes only a file volplugd wrote."""
    write(Path(dropin), "# the admin's\n")
    writer = make_writer(dropin, snapshots, remove_on_stop=True)
    writer.start()
    writer.stop()
    writer.join(5)
    assert Path(dropin).read_text() == "# the admin's\n"


def test_stop_before_start_and_join_without_start_are_harmless(dropin: str,
                                                              snapshots: Snapshots) -> None:
    """stop() then start() starts nothing; join() on a never-started writer returns."""
    writer = make_writer(dropin, snapshots)
    writer.join(1)
    writer.stop()
    writer.start()
    writer.join(1)
    assert contents(dropin) is None


def test_a_rootless_volplugd_at_the_default_path_writes_the_users_dropin() -> None:
    """Non-root with the default path: the user's containers.conf.d; otherwise unchanged."""
    default = PodmanSettings(enabled=True)
    env = {"XDG_CONFIG_HOME": "/home/u/.config"}
    assert for_user(default, 1000, env).dropin == (
        "/home/u/.config/containers/containers.conf.d/50-volplugd.conf")
    assert for_user(default, 0, env) == default
    chosen = PodmanSettings(enabled=True, dropin="/srv/podman/50-volplugd.conf")
    assert for_user(chosen, 1000, env) == chosen
