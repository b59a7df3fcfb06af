"""scan(), scan_one() and plugin_path_of() on real files and real AF_UNIX sockets."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from volplugd.discovery import Ignored, plugin_path_of, scan, scan_one
from volplugd.model import FileIdentity, Kind
from volplugd.plugin.address import address_from_socket, load_address

HEX = "0123456789abcdef" * 4  # a Docker managed-plugin id
SPEC = "tcp://127.0.0.1:8080\n"
JSON = '{"Name": "foo", "Addr": "http://127.0.0.1:9000"}'
BAD_SPEC = "not a url at all\n"


@pytest.fixture
def base() -> Iterator[Path]:
    """A short dir on tmpfs: socket paths stay under 108 bytes and bind() is cheap."""
    path = Path(tempfile.mkdtemp(prefix="vp-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def bind(path: Path) -> None:
    """Leave a real socket file at ``path`` (the listener itself is closed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    short = path.parent / ".b.sock" if len(str(path)) > 100 else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(short))
    short.rename(path)  # a socket file may be renamed: reaches paths bind() cannot


def build(base: Path, layout: Mapping[str, str]) -> None:
    """``layout``: relative path -> "sock" | "dir" | "fifo" | "text:<content>" | "link:<rel>"."""
    for rel, what in layout.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if what == "sock":
            bind(path)
        elif what == "dir":
            path.mkdir()
        elif what == "fifo":
            os.mkfifo(path)
        elif what.startswith("text:"):
            path.write_text(what[5:])
        elif what.startswith("link:"):
            path.symlink_to(base / what[5:])
        else:
            raise AssertionError(f"unknown layout kind {what!r}")


DIRS = ("d0", "d1", "d2")

# (id, layout, expected desired {name: (source, kind, warnings)}, expected ignored)
CASES: list[tuple[str, dict[str, str], dict[str, tuple[str, Kind, tuple[str, ...]]],
                  list[tuple[str, str]]]] = [
    ("flat socket", {"d0/foo.sock": "sock"},
     {"foo": ("d0/foo.sock", Kind.SOCK, ())}, []),
    ("nested socket", {"d0/foo/foo.sock": "sock"},
     {"foo": ("d0/foo/foo.sock", Kind.SOCK, ())}, []),
    ("flat spec", {"d1/foo.spec": "text:" + SPEC},
     {"foo": ("d1/foo.spec", Kind.SPEC, ())}, []),
    ("nested json", {"d2/foo/foo.json": "text:" + JSON},
     {"foo": ("d2/foo/foo.json", Kind.JSON, ())}, []),
    ("any dir may hold sockets", {"d2/foo.sock": "sock"},
     {"foo": ("d2/foo.sock", Kind.SOCK, ())}, []),
    ("a socket in a later dir beats a spec in an earlier one",
     {"d0/foo.spec": "text:" + SPEC, "d2/foo.sock": "sock"},
     {"foo": ("d2/foo.sock", Kind.SOCK, ("shadows d0/foo.spec",))},
     [("d0/foo.spec", "shadowed by d2/foo.sock")]),
    ("the earlier dir wins", {"d0/foo.sock": "sock", "d1/foo.sock": "sock"},
     {"foo": ("d0/foo.sock", Kind.SOCK, ("shadows d1/foo.sock",))},
     [("d1/foo.sock", "shadowed by d0/foo.sock")]),
    ("flat beats nested in one dir", {"d0/foo.sock": "sock", "d0/foo/foo.sock": "sock"},
     {"foo": ("d0/foo.sock", Kind.SOCK, ("shadows d0/foo/foo.sock",))},
     [("d0/foo/foo.sock", "shadowed by d0/foo.sock")]),
    ("spec beats json, nested spec too (Docker's order)",
     {"d1/foo.json": "text:" + JSON, "d1/foo/foo.spec": "text:" + SPEC},
     {"foo": ("d1/foo/foo.spec", Kind.SPEC, ("shadows d1/foo.json",))},
     [("d1/foo.json", "shadowed by d1/foo/foo.spec")]),
    ("three-way duplicate warns twice",
     {"d0/foo.spec": "text:" + SPEC, "d1/foo.sock": "sock", "d2/foo/foo.sock": "sock"},
     {"foo": ("d1/foo.sock", Kind.SOCK, ("shadows d2/foo/foo.sock", "shadows d0/foo.spec"))},
     [("d2/foo/foo.sock", "shadowed by d1/foo.sock"),
      ("d0/foo.spec", "shadowed by d1/foo.sock")]),
    ("dot-files are ignored silently",
     {"d0/.foo.sock": "sock", "d0/.bar/.bar.sock": "sock", "d0/.baz.spec": "text:" + SPEC},
     {}, []),
    ("a .sock that is not a socket", {"d0/foo.sock": "text:hello"},
     {}, [("d0/foo.sock", "not a socket")]),
    ("a directory named .sock is not a socket", {"d0/foo.sock": "dir"},
     {}, [("d0/foo.sock", "not a socket")]),
    ("a non-socket .sock does not hide a later socket",
     {"d0/foo.sock": "text:", "d1/foo.sock": "sock"},
     {"foo": ("d1/foo.sock", Kind.SOCK, ())}, [("d0/foo.sock", "not a socket")]),
    ("a spec that is not a regular file", {"d1/foo.spec": "fifo", "d1/bar.json": "dir"},
     {}, [("d1/foo.spec", "not a regular file"), ("d1/bar.json", "not a regular file")]),
    ("managed (v2) plugin folders are not ours",
     {f"d0/{HEX}/{HEX}.sock": "sock", f"d0/{HEX}/foo.sock": "sock"}, {}, []),
    ("a flat socket named like an id is still a plugin", {f"d0/{HEX}.sock": "sock"},
     {HEX: (f"d0/{HEX}.sock", Kind.SOCK, ())}, []),
    ("anything else is not looked at",
     {"d0/README": "text:hi", "d0/foo.txt": "text:", "d0/bar/other.sock": "sock",
      "d0/bar/bar.txt": "text:", "d0/empty": "dir"}, {}, []),
    ("a symlink to a socket is followed",
     {"real/x.sock": "sock", "d0/foo.sock": "link:real/x.sock"},
     {"foo": ("d0/foo.sock", Kind.SOCK, ())}, []),
    ("a symlinked plugin folder is followed",
     {"real/foo/foo.sock": "sock", "d0/foo": "link:real/foo"},
     {"foo": ("d0/foo/foo.sock", Kind.SOCK, ())}, []),
    ("a dangling symlink", {"d0/foo.sock": "link:nowhere.sock"},
     {}, [("d0/foo.sock", "dangling symlink")]),
    ("two links to one socket are one plugin, not a duplicate",
     {"d0/foo/foo.sock": "sock", "d0/foo.sock": "link:d0/foo/foo.sock"},
     {"foo": ("d0/foo.sock", Kind.SOCK, ())}, []),
    ("a file where a plugin folder could be", {"d0/foo": "text:", "d1/foo.sock": "sock"},
     {"foo": ("d1/foo.sock", Kind.SOCK, ())}, []),
    ("several plugins", {"d0/a.sock": "sock", "d0/b/b.sock": "sock", "d1/c.spec": "text:" + SPEC},
     {"a": ("d0/a.sock", Kind.SOCK, ()), "b": ("d0/b/b.sock", Kind.SOCK, ()),
      "c": ("d1/c.spec", Kind.SPEC, ())}, []),
]


@pytest.mark.parametrize(("layout", "want", "want_ignored"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_scan_table(base: Path, layout: dict[str, str],
                    want: dict[str, tuple[str, Kind, tuple[str, ...]]],
                    want_ignored: list[tuple[str, str]]) -> None:
    """scan() applies Docker's precedence, warns on shadowed duplicates, ignores noise."""
    build(base, layout)
    dirs = [str(base / d) for d in DIRS]
    result = scan(dirs)
    got = {n: (os.path.relpath(p.source, base), p.kind,
               tuple(w.replace(f"{base}/", "") for w in p.warnings))
           for n, p in result.desired.items()}
    assert got == want
    assert sorted((os.path.relpath(i.path, base), i.reason.replace(f"{base}/", ""))
                  for i in result.ignored) == sorted(want_ignored)
    for name, plugin in result.desired.items():
        assert plugin.name == name
        assert plugin.identity == FileIdentity.of(os.stat(plugin.source))
        expected = (address_from_socket(plugin.source) if plugin.kind is Kind.SOCK
                    else load_address(plugin.source))
        assert plugin.address == expected
    assert list(result.desired) == sorted(result.desired)


@pytest.mark.parametrize(("layout", "want"), [c[1:3] for c in CASES], ids=[c[0] for c in CASES])
def test_scan_one_agrees_with_scan(base: Path, layout: dict[str, str],
                                   want: dict[str, object]) -> None:
    """scan_one(name) finds what the full scan finds for that name, and no other complaint."""
    build(base, layout)
    dirs = [str(base / d) for d in DIRS]
    full = scan(dirs)
    for name in {*want, "foo", "bar", "nothing"}:
        one = scan_one(name, dirs)
        assert dict(one.desired) == ({name: full.desired[name]} if name in full.desired else {})
        assert one.dirs_present == full.dirs_present
        assert set(one.ignored) <= set(full.ignored)


def test_bad_spec_is_ignored_with_its_problem_and_the_next_candidate_wins(base: Path) -> None:
    """An unparsable spec is Ignored with the parser's problem; a valid later one wins."""
    build(base, {"d1/foo.spec": "text:" + BAD_SPEC, "d2/foo.spec": "text:" + SPEC,
                 "d1/bar.json": "text:{"})
    result = scan([str(base / d) for d in DIRS])
    assert set(result.desired) == {"foo"}
    assert result.desired["foo"].source == str(base / "d2/foo.spec")
    assert result.desired["foo"].warnings == ()
    assert sorted((os.path.relpath(i.path, base), i.reason) for i in result.ignored) == [
        ("d1/bar.json",
         "invalid JSON: Expecting property name enclosed in double quotes (line 1 column 2)"),
        ("d1/foo.spec", "URL has no scheme (want unix://, tcp://, http:// or https://)"),
    ]


def test_missing_dirs_are_fine_and_not_present(base: Path) -> None:
    """Missing directories yield nothing and no complaint; present ones are listed in order."""
    build(base, {"d1/foo.sock": "sock", "d0": "dir"})
    dirs = [str(base / "d0"), str(base / "nope"), str(base / "d1"), str(base / "a/b/c")]
    result = scan(dirs)
    assert result.dirs_present == (str(base / "d0"), str(base / "d1"))
    assert set(result.desired) == {"foo"}
    assert result.ignored == ()


def test_a_dir_that_is_a_file_is_reported(base: Path) -> None:
    """A configured directory that is a regular file is Ignored as "not a directory"."""
    build(base, {"d0": "text:oops"})
    result = scan([str(base / "d0")])
    assert result.ignored == (Ignored(str(base / "d0"), "not a directory"),)
    assert result.dirs_present == ()


def test_the_same_dir_twice_does_not_shadow_itself(base: Path) -> None:
    """A dir listed twice, or again through a symlink or a trailing slash, is scanned once."""
    build(base, {"d0/foo.sock": "sock", "alias": "link:d0"})
    dirs = [str(base / "d0"), f"{base}/d0/", str(base / "alias")]
    result = scan(dirs)
    assert result.desired["foo"].warnings == ()
    assert result.ignored == ()
    assert result.dirs_present == (str(base / "d0"),)


def test_a_dir_that_cannot_be_looked_at_is_reported(base: Path) -> None:
    """A configured directory stat() fails on (a symlink loop) is Ignored with the reason."""
    (base / "loop").symlink_to(base / "loop")
    result = scan([str(base / "loop")])
    assert result.ignored == (
        Ignored(str(base / "loop"), "cannot stat: Too many levels of symbolic links"),)
    assert result.desired == {}


def test_replaced_socket_has_a_new_identity(base: Path) -> None:
    """A socket unlinked and bound again at the same path scans with a different identity."""
    build(base, {"d0/foo.sock": "sock"})
    before = scan([str(base / "d0")]).desired["foo"]
    (base / "d0/foo.sock").unlink()
    bind(base / "d0/foo.sock")
    after = scan([str(base / "d0")]).desired["foo"]
    assert after.identity != before.identity
    assert after.source == before.source


def test_relative_dirs_give_absolute_sources(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative configured dirs are resolved against the working directory."""
    build(base, {"d0/foo.sock": "sock"})
    monkeypatch.chdir(base)
    result = scan(["d0"])
    assert result.desired["foo"].source == str(base / "d0/foo.sock")
    assert result.dirs_present == (str(base / "d0"),)


def test_scan_of_many_sockets(base: Path) -> None:
    """1000 sockets are all found, sorted by name."""
    for i in range(1000):
        bind(base / "d0" / f"p{i:04d}.sock")
    result = scan([str(base / "d0")])
    assert list(result.desired) == [f"p{i:04d}" for i in range(1000)]


@pytest.mark.parametrize(("rel", "name"), [
    ("d0/foo.sock", "foo"),
    ("d0/foo.spec", "foo"),
    ("d1/foo.json", "foo"),
    ("d0/foo", "foo"),
    ("d0/foo/foo.sock", "foo"),
    ("d0/foo/anything", "foo"),
    ("d0/foo.bar.sock", "foo.bar"),
    ("d0/README", "README"),
    ("d0/.foo.sock", None),
    ("d0/.foo.sock.tmp", None),
    ("d0/.hidden/x.sock", None),
    (f"d0/{HEX}", None),
    (f"d0/{HEX}/{HEX}.sock", None),
    (f"d0/{HEX}.sock", HEX),
    ("d0", None),
    ("elsewhere/foo.sock", None),
    ("d0x/foo.sock", None),
])
def test_plugin_path_of(rel: str, name: str | None) -> None:
    """A changed path maps to the plugin name whose files it may concern."""
    dirs = ["/x/d0", "/x/d1/"]
    assert plugin_path_of(f"/x/{rel}", dirs) == name
