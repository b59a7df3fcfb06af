"""Root's own folders (``volplugd.safefs``, ``config.check_folders``): a folder volplugd
writes in is created with its mode or refused, with the exact reason, in ``check-config``
and at start; folders are compared by what they are, not by how they are spelt; files in
them are written through the folder's descriptor, never through a symlink."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import NOBODY, run_as
from volplugd.config import ConfigError, check_folders, load_settings
from volplugd.podman import write_if_changed
from volplugd.safefs import Folder, NotAFile, UnsafeFolder, folder_problem, temp_name

REFUSED = "volplugd writes only in a folder that no one but root (or its own user) may change"


def _secret(root: Path) -> Path:
    """A root-only file a planted symlink points at: it must never change."""
    target = root / "secret"
    target.write_bytes(b"root only\n")
    target.chmod(0o600)
    return target


def _untouched(target: Path) -> bool:
    st = target.stat()
    return target.read_bytes() == b"root only\n" and stat.S_IMODE(st.st_mode) == 0o600


def _nobodys_folder(root: Path) -> Path:
    """A folder made by uid 65534 itself (in a sticky 1777 folder, as /tmp is); ``root``
    is a short_tmp, made 0755 for that uid to reach."""
    root.chmod(0o755)
    public = root / "public"
    public.mkdir()
    public.chmod(0o1777)
    done = run_as(NOBODY, ["mkdir", "-m", "0755", str(public / "theirs")])
    assert (done.returncode, done.stderr) == (0, "")
    assert (public / "theirs").stat().st_uid == NOBODY
    return public / "theirs"


def check_config(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "volplugd", "check-config", *flags],
                          capture_output=True, text=True, timeout=60, check=False)


# --- created or refused ------------------------------------------------------------------


def test_a_missing_folder_is_created_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o077)  # the shipped unit's UMask
    try:
        folder = Folder.open(str(tmp_path / "a" / "gw"), 0o755)
    finally:
        os.umask(umask)
    folder.close()
    assert stat.S_IMODE((tmp_path / "a" / "gw").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755  # others reach below
    narrow = Folder.open(str(tmp_path / "b"), 0o700)
    narrow.close()
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o700


@pytest.mark.parametrize(("mode", "who"), [(0o777, "group and others"), (0o757, "others"),
                                           (0o775, "group"), (0o1777, "group and others")])
def test_a_folder_writable_by_group_or_others_is_refused_sticky_or_not(
        tmp_path: Path, mode: int, who: str) -> None:
    gw = tmp_path / "gw"
    gw.mkdir()
    gw.chmod(mode)
    problem = f"{gw} is writable by {who} (mode {mode:04o})"
    assert folder_problem(str(gw)) == problem
    with pytest.raises(UnsafeFolder, match=f"^{re.escape(problem)}$"):
        Folder.open(str(gw))
    assert stat.S_IMODE(gw.stat().st_mode) == mode  # an existing folder is left as it is


def test_a_symlinked_folder_and_a_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    assert folder_problem(str(tmp_path / "link")) == (
        f"{tmp_path}/link is a symlink, not a real folder")
    assert folder_problem(str(tmp_path / "file")) == f"{tmp_path}/file is not a folder"
    with pytest.raises(UnsafeFolder):
        Folder.open(str(tmp_path / "link"))
    assert os.listdir(tmp_path / "real") == []


def test_an_ancestor_open_to_others_without_the_sticky_bit_is_refused(tmp_path: Path) -> None:
    """Whoever may rename the folder's parent could swap the folder for their own."""
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    assert folder_problem(str(parent / "gw")) == (  # not there yet: judged as it would be made
        f"{parent} is writable by group and others without the sticky bit (mode 0777)")
    with pytest.raises(UnsafeFolder):
        Folder.open(str(parent / "gw"))


def test_a_folder_another_user_owns_is_refused(short_tmp: Path) -> None:
    theirs = _nobodys_folder(short_tmp)
    problem = f"{theirs} is owned by uid {NOBODY}, not root"
    assert folder_problem(str(theirs)) == problem
    with pytest.raises(UnsafeFolder, match=f"^{re.escape(problem)}$"):
        Folder.open(str(theirs))
    # ... and for a volplugd that runs as another uid: neither root nor that uid
    assert folder_problem(str(theirs), euid=1234) == (
        f"{theirs} is owned by uid {NOBODY}, neither root nor volplugd's uid 1234")
    assert folder_problem(str(theirs), euid=NOBODY) is None


# --- check-config (the real command) -------------------------------------------------------


def test_check_config_refuses_each_folder_with_its_key_and_reason(short_tmp: Path) -> None:
    tmp_path = short_tmp
    theirs = _nobodys_folder(tmp_path)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (tmp_path / "link").symlink_to(tmp_path)
    (tmp_path / "conf.d").mkdir()
    gateway = ["--gateway", "--plugin-dir", str(tmp_path / "plugins")]
    cases = {
        ("--control-socket", f"{open_dir}/c.sock"):
            f"control.socket: {open_dir} is writable by group and others (mode 0777)",
        ("--control-socket", f"{theirs}/c.sock"):
            f"control.socket: {theirs} is owned by uid {NOBODY}, not root",
        ("--podman-dropin", f"{tmp_path}/link/conf.d/50-volplugd.conf"): None,  # an ancestor link
        ("--podman-dropin", f"{tmp_path}/link/50-volplugd.conf"):
            f"podman.dropin: {tmp_path}/link is a symlink, not a real folder",
        ("--podman-dropin", f"{open_dir}/50-volplugd.conf"):
            f"podman.dropin: {open_dir} is writable by group and others (mode 0777)",
    }
    for flags, error in cases.items():
        done = check_config("--control-socket", f"{tmp_path}/c.sock", *flags)
        if error is None:
            assert done.returncode == 0, done.stderr
        else:
            assert (done.returncode, done.stdout) == (2, "")
            assert done.stderr == f"volplugd: config error: {error}: {REFUSED}\n"
    config = tmp_path / "v.toml"
    config.write_text(f'[gateway]\ndir = "{theirs}"\n')
    done = check_config("--config", str(config), "--control-socket", f"{tmp_path}/c.sock",
                        *gateway)
    assert (done.returncode, done.stderr) == (2, f"volplugd: config error: gateway.dir: "
                                                 f"{theirs} is owned by uid {NOBODY}, not "
                                                 f"root: {REFUSED}\n")
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw-link").symlink_to(tmp_path / "gw")
    config.write_text(f'[gateway]\ndir = "{tmp_path}/gw-link"\n')
    done = check_config("--config", str(config), "--control-socket", f"{tmp_path}/c.sock",
                        *gateway)
    assert done.stderr == (f"volplugd: config error: gateway.dir: {tmp_path}/gw-link is a "
                           f"symlink, not a real folder: {REFUSED}\n")


# --- folders compared by what they are ------------------------------------------------------


def _gateway_settings(tmp: Path, gateway_dir: str, **more: object) -> ConfigError:
    settings = load_settings(None, {"discovery.dirs": [f"{tmp}/plugins"],
                                    "control.socket": f"{tmp}/run/c.sock",
                                    "gateway.enabled": True, "gateway.dir": gateway_dir,
                                    **more})
    with pytest.raises(ConfigError) as err:
        check_folders(settings)
    return err.value


@pytest.mark.parametrize("spelling", ["{t}/plugins/", "{t}/plugins/.", "{t}/plugins/../plugins",
                                      "{t}/to-plugins", "{t}//plugins"])
def test_the_gateway_folder_is_no_plugin_folder_however_it_is_spelt(
        tmp_path: Path, spelling: str) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "to-plugins").symlink_to(tmp_path / "plugins")
    err = _gateway_settings(tmp_path, spelling.format(t=tmp_path))
    assert str(err) == (f'gateway.dir: is discovery.dirs[0] "{tmp_path}/plugins": the '
                        "plugins there would be hidden (discovery skips the gateway's "
                        "folder); give it its own")


@pytest.mark.parametrize("inner", ["plugins/gw", "plugins/p/gw", "to-plugins/gw"])
def test_the_gateway_folder_lies_in_no_plugin_folder(tmp_path: Path, inner: str) -> None:
    (tmp_path / "plugins" / "p").mkdir(parents=True)
    (tmp_path / "to-plugins").symlink_to(tmp_path / "plugins")
    err = _gateway_settings(tmp_path, f"{tmp_path}/{inner}")
    assert str(err) == (f'gateway.dir: lies inside discovery.dirs[0] "{tmp_path}/plugins": '
                        "a plugin folder is no place for the gateway's sockets; give it its "
                        "own")


def test_no_other_file_of_volplugd_shares_the_gateway_folder(tmp_path: Path) -> None:
    (tmp_path / "gw").mkdir()
    (tmp_path / "to-gw").symlink_to(tmp_path / "gw")
    gw = f"{tmp_path}/gw"
    err = _gateway_settings(tmp_path, gw, **{"gateway.docker_specs": True,
                                             "gateway.docker_spec_dir": f"{tmp_path}/to-gw"})
    assert str(err) == (f'gateway.docker_spec_dir: is gateway.dir "{gw}": the gateway\'s '
                        "folder holds only its sockets; give it another")
    err = _gateway_settings(tmp_path, gw, **{"podman.enabled": True,
                                             "podman.dropin": f"{gw}/./50-volplugd.conf"})
    assert str(err) == (f'podman.dropin: lies in gateway.dir "{gw}": the gateway\'s folder '
                        "holds only its sockets; give it another")
    err = _gateway_settings(tmp_path, f"{tmp_path}/run/")
    assert str(err) == (f'control.socket: lies in gateway.dir "{tmp_path}/run/": the '
                        "gateway's folder holds only its sockets; give it another")


# --- writes through the descriptor ------------------------------------------------------------


def test_writes_replace_a_symlink_and_never_follow_one(tmp_path: Path) -> None:
    """A link at the temp name is removed, a link at the name is replaced by the rename;
    a read of a link is refused; the file they point at never changes."""
    target = _secret(tmp_path)
    folder = Folder.open(str(tmp_path / "d"))
    try:
        (tmp_path / "d" / temp_name("a")).symlink_to(target)
        (tmp_path / "d" / "a").symlink_to(target)
        with pytest.raises(NotAFile, match=f"^{tmp_path}/d/a is not a regular file$"):
            folder.read("a", 100)
        folder.write("a", b"new\n", 0o644)
        assert folder.read("a", 100) == b"new\n"
    finally:
        folder.close()
    assert sorted(os.listdir(tmp_path / "d")) == ["a"]
    assert not (tmp_path / "d" / "a").is_symlink()
    assert _untouched(target)


def test_the_dropin_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = _secret(tmp_path)
    dropin = tmp_path / "conf.d" / "50-volplugd.conf"
    dropin.parent.mkdir()
    (dropin.parent / temp_name(dropin.name)).symlink_to(target)
    assert write_if_changed(str(dropin), "# Generated by volplugd\n") is True
    assert sorted(os.listdir(dropin.parent)) == ["50-volplugd.conf"]
    assert _untouched(target)
