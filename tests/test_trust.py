"""The trust rule of plugin folders (discovery/trust.py) on real folders, owners and modes.

The suite runs as root: folders are chown'ed to 65534 ("owned by neither") and chmod'ed.
Every case lives under a fresh 0700 folder on /dev/shm (1777, root's), so the ancestors
above it are trusted and only what a case builds decides.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.trusting import NOBODY, folder, trusted_base
from volplugd.discovery.trust import UNTRUSTED, Trust, untrusted_reason

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    """A 0700 root folder on tmpfs (short paths for sockets; / and /dev/shm are trusted)."""
    with trusted_base() as path:
        yield path


# (case, the folder's mode and owner, the ancestor's mode and owner, expected reason)
# The plugin folder is base/anc/plugins; "{p}" is it, "{a}" its parent.
FOLDER_CASES = [
    ("root 0755", (0o755, 0), (0o755, 0), None),
    ("root 0700", (0o700, 0), (0o755, 0), None),
    ("group-writable", (0o775, 0), (0o755, 0), "{p} is writable by group (mode 0775)"),
    ("others-writable", (0o757, 0), (0o755, 0), "{p} is writable by others (mode 0757)"),
    ("world-writable", (0o777, 0), (0o755, 0),
     "{p} is writable by group and others (mode 0777)"),
    ("sticky does not help the folder itself", (0o1777, 0), (0o755, 0),
     "{p} is writable by group and others (mode 1777)"),
    ("owned by neither", (0o755, NOBODY), (0o755, 0), "{p} is owned by uid 65534, not root"),
    ("ancestor 0777 without sticky", (0o755, 0), (0o777, 0),
     "{a} is writable by group and others without the sticky bit (mode 0777)"),
    ("ancestor 0757 without sticky", (0o755, 0), (0o757, 0),
     "{a} is writable by others without the sticky bit (mode 0757)"),
    ("ancestor group-writable without sticky", (0o755, 0), (0o775, 0),
     "{a} is writable by group without the sticky bit (mode 0775)"),
    ("ancestor 1777 like /tmp", (0o755, 0), (0o1777, 0), None),
    ("ancestor 1775 sticky group", (0o755, 0), (0o1775, 0), None),
    ("ancestor owned by neither", (0o755, 0), (0o755, NOBODY),
     "{a} is owned by uid 65534, not root"),
    ("sticky ancestor owned by neither", (0o755, 0), (0o1777, NOBODY),
     "{a} is owned by uid 65534, not root"),
    ("the folder's problem comes first", (0o757, 0), (0o777, 0),
     "{p} is writable by others (mode 0757)"),
]


@pytest.mark.parametrize(("own", "ancestor", "expected"),
                         [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_plugin_folder_rule(base: Path, own: tuple[int, int], ancestor: tuple[int, int],
                            expected: str | None) -> None:
    """A folder is judged by its owner and modes, then each ancestor's up to /."""
    anc = folder(base / "anc", *ancestor)
    plugins = folder(anc / "plugins", *own)
    want = None if expected is None else expected.format(p=plugins, a=anc)
    assert Trust().folder(str(plugins)) == want


def test_volplugds_own_uid_is_trusted_like_root(base: Path) -> None:
    """A rootless volplugd trusts folders it owns, and names its uid when it refuses."""
    mine = folder(base / "mine", 0o755, 1234)
    theirs = folder(base / "theirs", 0o755, NOBODY)
    trust = Trust(euid=1234)
    assert trust.folder(str(mine)) is None
    assert trust.folder(str(theirs)) == (
        f"{theirs} is owned by uid 65534, neither root nor volplugd's uid 1234")


@pytest.mark.parametrize(("root_mode", "nested_mode", "expected"), [
    (0o755, 0o755, None),
    (0o755, 0o757, "{n} is writable by others (mode 0757)"),
    (0o757, 0o755, "{r} is writable by others (mode 0757)"),
])
def test_nested_folder_and_the_folder_holding_it(base: Path, root_mode: int,
                                                 nested_mode: int, expected: str | None) -> None:
    """A <name>/ folder must be trusted, and so must the plugin folder that holds it."""
    root = folder(base / "plugins", root_mode)
    nested = folder(root / "p", nested_mode)
    want = None if expected is None else expected.format(r=root, n=nested)
    assert Trust().nested(str(nested)) == want


def test_symlinked_folder_is_judged_where_it_leads(base: Path) -> None:
    """plugins -> open/real: the target's untrusted ancestor counts."""
    open_anc = folder(base / "open", 0o777)
    folder(open_anc / "real")
    (base / "plugins").symlink_to(open_anc / "real")
    assert Trust().folder(str(base / "plugins")) == (
        f"{open_anc} is writable by group and others without the sticky bit (mode 0777)")


def test_symlinked_ancestor_is_judged_where_it_leads(base: Path) -> None:
    """link/plugins with link -> open: the ancestor is the real folder 'open'."""
    open_anc = folder(base / "open", 0o757)
    folder(open_anc / "plugins")
    (base / "link").symlink_to(open_anc)
    assert Trust().folder(str(base / "link" / "plugins")) == (
        f"{open_anc} is writable by others without the sticky bit (mode 0757)")


def test_a_missing_folder_cannot_be_trusted(base: Path) -> None:
    """What cannot be looked at is not trusted, and the reason says so."""
    assert Trust().folder(str(base / "gone")) == (
        f"{base}/gone cannot be checked: No such file or directory")


@pytest.mark.parametrize(("overrides", "trusted"), [
    (["{p}"], True),
    (["{p}/"], True),
    (["{base}"], True),
    (["/"], True),
    (["{p}x"], False),  # a name that merely starts the same is not below it
    (["{base}/other"], False),
])
def test_discovery_trust_overrides_modes(base: Path, overrides: list[str],
                                         trusted: bool) -> None:
    """A listed path, and everything below it, is trusted whatever its modes."""
    plugins = folder(base / "plugins", 0o777, NOBODY)
    listed = [o.format(p=plugins, base=base) for o in overrides]
    assert (Trust(listed).folder(str(plugins)) is None) is trusted
    assert (Trust(listed).nested(str(folder(plugins / "n", 0o777))) is None) is trusted


def test_spec_and_json_files_are_judged_but_sockets_are_not(base: Path) -> None:
    """A .spec/.json's content is the address: its owner and modes count; a socket's
    mode only says who may connect."""
    plugins = folder(base / "plugins")
    spec = plugins / "open.spec"
    spec.write_text("unix:///run/x.sock\n")
    spec.chmod(0o666)
    owned = plugins / "theirs.json"
    owned.write_text("{}")
    os.chown(owned, NOBODY, NOBODY)
    fine = plugins / "fine.spec"
    fine.write_text("unix:///run/x.sock\n")
    sock = plugins / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
    sock.chmod(0o777)
    trust = Trust()

    def judge(path: Path) -> str | None:
        return trust.plugin_file(str(path), os.stat(path), nested=False)

    assert judge(spec) == f"{spec} is writable by group and others (mode 0666)"
    assert judge(owned) == f"{owned} is owned by uid 65534, not root"
    assert (judge(fine), judge(sock)) == (None, None)


def counting_stats(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count os.stat/os.lstat calls by path (the real calls still happen)."""
    seen: Counter[str] = Counter()
    for name in ("stat", "lstat"):
        real: Callable[..., os.stat_result] = getattr(os, name)

        def counted(path: object, *a: object, _real: Callable[..., os.stat_result] = real,
                    **kw: object) -> os.stat_result:
            seen[os.fsdecode(path) if isinstance(path, str | bytes) else str(path)] += 1
            return _real(path, *a, **kw)
        monkeypatch.setattr(os, name, counted)
    return seen


def test_one_scan_looks_at_each_folder_and_ancestor_once(base: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """300 sockets in one folder: the folder and its ancestors are stat'ed once, not 300
    times (the scan's own per-socket stat is discovery's, not trust's)."""
    plugins = folder(base / "plugins")
    socks = [plugins / f"p{i}.sock" for i in range(300)]
    for path in socks:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    stats = {str(p): os.stat(p) for p in socks}
    trust = Trust()
    seen = counting_stats(monkeypatch)
    answers = {trust.plugin_file(p, st, nested=False) for p, st in stats.items()}
    assert answers == {None}
    assert max(seen.values()) == 1
    assert set(seen) == {str(plugins), str(base), "/dev/shm", "/dev", "/"}


def test_untrusted_reason_reads_the_view_warning_back() -> None:
    """The drop-in knows an untrusted plugin by its warning's prefix, whatever comes
    before it."""
    assert untrusted_reason(["shadows /x", UNTRUSTED + "/x is writable by others"]) == (
        "/x is writable by others")
    assert untrusted_reason(["shadows /x", "https without certificate verification"]) is None
