"""Trust in discovery: scans of real folders with real owners and modes, the .json TLS-file
gate, the https warning, the discovery.trust key and the Podman drop-in's exclusion."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from structlog.testing import capture_logs

from tests.trusting import NOBODY, folder, trusted_base
from tests.waiting import wait_until
from volplugd.config import ConfigError, PodmanSettings, load_settings
from volplugd.discovery import ScanResult, scan, scan_one
from volplugd.model import Kind, PluginState, PluginView, Snapshot
from volplugd.plugin.address import TLSConfig, load_address
from volplugd.plugin.errors import PluginAddressError
from volplugd.podman import DropinWriter, plan_dropin, render_dropin

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")

TLS_REFUSED = ("TLSConfig names CAFile, CertFile, KeyFile: key and certificate files named "
               "by this file are not read")
SPEC_UNVERIFIED = ("https without certificate verification (a .spec file's https address "
                   "is never verified, as in Docker)")
JSON_UNVERIFIED = ("https without certificate verification (TLSConfig has no CAFile, or "
                   "InsecureSkipVerify)")


@pytest.fixture
def base() -> Iterator[Path]:
    """A 0700 root folder on tmpfs, under trusted ancestors (/, /dev, sticky /dev/shm)."""
    with trusted_base() as path:
        yield path


def bind(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


def tls_json(path: Path, files: Path, addr: str = "https://127.0.0.1:9") -> dict[str, Path]:
    """A .json whose TLSConfig names three FIFOs: opening any of them to read would block
    until a writer comes, which never does."""
    fifos = {key: files / f"{key}.pem" for key in ("CAFile", "CertFile", "KeyFile")}
    for fifo in fifos.values():
        os.mkfifo(fifo)
    path.write_text(json.dumps({"Addr": addr,
                                "TLSConfig": {k: str(v) for k, v in fifos.items()}}))
    return fifos


def has_reader(fifo: Path) -> bool:
    """True if anyone holds ``fifo`` open for reading, or waits in open() to read it
    (Linux counts a reader blocked in open()): a non-blocking open for writing fails with
    ENXIO only when there is none."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


# --- scans -------------------------------------------------------------------------


def test_plugins_in_an_untrusted_folder_are_found_with_the_reason_first(base: Path) -> None:
    """Untrusted plugins are still desired; each carries 'untrusted: <why>', trusted
    ones carry nothing."""
    good = folder(base / "good")
    shady = folder(base / "shady", 0o757)
    bind(good / "a.sock")
    bind(shady / "b.sock")
    folder(good / "c", 0o777)
    bind(good / "c" / "c.sock")
    result = scan([str(good), str(shady)])
    assert {n: p.warnings for n, p in result.desired.items()} == {
        "a": (),
        "b": (f"untrusted: {shady} is writable by others (mode 0757)",),
        "c": (f"untrusted: {good}/c is writable by group and others (mode 0777)",),
    }
    assert result.ignored == ()
    for name in ("a", "b", "c"):
        assert scan_one(name, [str(good), str(shady)]).desired[name] == result.desired[name]


def test_an_untrusted_folder_owned_by_neither_and_an_open_ancestor(base: Path) -> None:
    """Owner and ancestor problems reach the warning as the rule words them."""
    theirs = folder(base / "theirs", 0o755, NOBODY)
    bind(theirs / "t.sock")
    open_anc = folder(base / "open", 0o777)
    below = folder(open_anc / "plugins")
    bind(below / "o.sock")
    sticky = folder(base / "tmp", 0o1777)
    fine = folder(sticky / "plugins", 0o700)
    bind(fine / "f.sock")
    result = scan([str(theirs), str(below), str(fine)])
    assert {n: p.warnings for n, p in result.desired.items()} == {
        "t": (f"untrusted: {theirs} is owned by uid 65534, not root",),
        "o": (f"untrusted: {open_anc} is writable by group and others without the sticky "
              "bit (mode 0777)",),
        "f": (),
    }


def test_discovery_trust_lifts_the_warning(base: Path) -> None:
    """A folder listed in discovery.trust is trusted whatever its modes and owner."""
    shady = folder(base / "shady", 0o777, NOBODY)
    bind(shady / "b.sock")
    assert scan([str(shady)], trusted=[str(shady)]).desired["b"].warnings == ()
    assert scan_one("b", [str(shady)], trusted=[str(base)]).desired["b"].warnings == ()


def test_untrusted_warning_comes_before_shadowing(base: Path) -> None:
    """The untrusted reason leads; 'shadows' warnings keep following it."""
    shady = folder(base / "shady", 0o757)
    later = folder(base / "later")
    bind(shady / "x.sock")
    bind(later / "x.sock")
    desired = scan([str(shady), str(later)]).desired["x"]
    assert desired.warnings == (f"untrusted: {shady} is writable by others (mode 0757)",
                                f"shadows {later}/x.sock")


def test_a_group_writable_spec_file_is_untrusted(base: Path) -> None:
    """A .spec file others may rewrite is untrusted even in a trusted folder."""
    good = folder(base / "good")
    spec = good / "s.spec"
    spec.write_text("tcp://127.0.0.1:9\n")
    spec.chmod(0o664)
    assert scan([str(good)]).desired["s"].warnings == (
        f"untrusted: {spec} is writable by group (mode 0664)",)


def test_json_in_an_untrusted_folder_may_not_name_tls_files(base: Path) -> None:
    """The .json is ignored with the reason, no TLS file is ever opened (the FIFOs never
    get a reader), and the same name from a later trusted folder wins."""
    files = folder(base / "files")
    shady = folder(base / "shady", 0o757)
    later = folder(base / "later")
    fifos = tls_json(shady / "s3.json", files)
    (later / "s3.spec").write_text("tcp://127.0.0.1:9\n")
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(scan([str(shady), str(later)])))
    worker.start()
    try:
        wait_until(lambda: done, 10, message="the scan to end without opening a FIFO")
    finally:
        if not done:  # unblock a reader stuck on a FIFO, so the thread can end
            for fifo in fifos.values():
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
    result = done[0]
    assert isinstance(result, ScanResult)
    assert not any(has_reader(f) for f in fifos.values())
    probe = os.open(fifos["CAFile"], os.O_RDONLY | os.O_NONBLOCK)  # the probe's control:
    try:
        assert has_reader(fifos["CAFile"])  # a reader is seen
    finally:
        os.close(probe)
    assert [(i.path, i.reason) for i in result.ignored] == [(
        f"{shady}/s3.json",
        f"{TLS_REFUSED}; untrusted: {shady} is writable by others (mode 0757)")]
    assert result.desired["s3"].source == f"{later}/s3.spec"
    assert result.desired["s3"].warnings == ()


def test_json_in_a_trusted_folder_keeps_its_tls_files(base: Path) -> None:
    """Trusted: the address names the files (the client reads them when it connects)."""
    good = folder(base / "good")
    (good / "s3.json").write_text(json.dumps({"Addr": "https://h:1", "TLSConfig": {
        "CAFile": "/etc/ca.pem", "CertFile": "/etc/c.pem", "KeyFile": "/etc/k.pem"}}))
    desired = scan([str(good)]).desired["s3"]
    assert desired.address.tls == TLSConfig("/etc/ca.pem", "/etc/c.pem", "/etc/k.pem", False)
    assert desired.warnings == ()


def test_json_without_tls_files_is_used_untrusted_and_warned_unverified(base: Path) -> None:
    """No files named: nothing to refuse; the plugin is untrusted and unverified."""
    shady = folder(base / "shady", 0o757)
    (shady / "w.json").write_text(
        json.dumps({"Addr": "https://h:1", "TLSConfig": {"InsecureSkipVerify": True}}))
    assert scan([str(shady)]).desired["w"].warnings == (
        f"untrusted: {shady} is writable by others (mode 0757)", JSON_UNVERIFIED)


@pytest.mark.parametrize(("name", "content", "warnings"), [
    ("a.spec", "https://h:1\n", (SPEC_UNVERIFIED,)),
    ("b.json", '{"Addr": "https://h:1", "TLSConfig": {}}', (JSON_UNVERIFIED,)),
    ("c.json", '{"Addr": "https://h:1", "TLSConfig": {"CAFile": "/ca", '
               '"InsecureSkipVerify": true}}', (JSON_UNVERIFIED,)),
    ("d.json", '{"Addr": "https://h:1", "TLSConfig": {"CAFile": "/ca"}}', ()),
    ("e.json", '{"Addr": "https://h:1"}', ()),  # no TLSConfig: the system's CAs verify
    ("f.spec", "http://h:1\n", ()),
])
def test_https_without_verification_is_a_warning(base: Path, name: str, content: str,
                                                 warnings: tuple[str, ...]) -> None:
    """Every https plugin that is not verified says so in its warnings."""
    good = folder(base / "good")
    (good / name).write_text(content)
    assert scan([str(good)]).desired[name[0]].warnings == warnings


# --- load_address's gate ------------------------------------------------------------


@pytest.mark.parametrize(("tls", "problem"), [
    ({"CAFile": "/a"}, "TLSConfig names CAFile: key and certificate files named by this "
                       "file are not read"),
    ({"CertFile": "/c", "KeyFile": "/k", "InsecureSkipVerify": True},
     "TLSConfig names CertFile, KeyFile: key and certificate files named by this file "
     "are not read"),
    ({"cafile": "/a"}, "TLSConfig names CAFile: key and certificate files named by this "
                       "file are not read"),  # Go's case-insensitive keys
])
def test_load_address_can_refuse_tls_files(tmp_path: Path, tls: dict[str, object],
                                           problem: str) -> None:
    """tls_files=False: a .json naming any TLS file gives no address at all."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"Addr": "https://h:1", "TLSConfig": tls}))
    with pytest.raises(PluginAddressError) as caught:
        load_address(str(path), tls_files=False)
    assert (caught.value.path, caught.value.problem) == (str(path), problem)
    assert load_address(str(path)).tls is not None  # the default still reads the key


def test_load_address_without_tls_files_is_unaffected_by_the_gate(tmp_path: Path) -> None:
    """Nothing named, or not a .json: tls_files=False changes nothing."""
    (tmp_path / "p.json").write_text('{"Addr": "https://h:1", "TLSConfig": {}}')
    (tmp_path / "q.spec").write_text("https://h:1\n")
    for name in ("p.json", "q.spec"):
        path = str(tmp_path / name)
        assert load_address(path, tls_files=False) == load_address(path)


# --- config -------------------------------------------------------------------------


def test_discovery_trust_is_a_list_of_absolute_paths() -> None:
    """Relative paths and repeats are refused with the key; absolute paths are kept."""
    ok = load_settings(None, {"discovery.trust": ["/srv/plugins", "/opt/p"]})
    assert ok.discovery.trust == ("/srv/plugins", "/opt/p")
    assert load_settings(None).discovery.trust == ()
    for value, message in [
        (["plugins"], 'discovery.trust[0]: must be an absolute path, got "plugins"'),
        (["/a", "/a"], 'discovery.trust[1]: repeats discovery.trust[0] "/a"'),
        ("/a", 'discovery.trust: must be an array of strings, got "/a"'),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(None, {"discovery.trust": value})
        assert str(caught.value) == message


# --- the Podman drop-in --------------------------------------------------------------


def view(name: str, *warnings: str) -> PluginView:
    path = f"/run/docker/plugins/{name}.sock"
    return PluginView(name=name, address=path, source=path, kind=Kind.SOCK,
                      state=PluginState.READY, registered_at=1.0, warnings=warnings)


def snapshot(*views: PluginView, generation: int = 1) -> Snapshot:
    return Snapshot(MappingProxyType({v.name: v for v in views}), MappingProxyType({}),
                    generation=generation)


def test_untrusted_plugins_never_reach_the_dropin() -> None:
    """Only trusted plugins are listed; the untrusted ones are named in a comment with
    the reason, escaped so no line break can end the comment."""
    snap = snapshot(view("good", "shadows /x"),
                    view("shady", "untrusted: /srv/p is writable by others (mode 0757)"),
                    view("evil", "untrusted: /srv/a\n[engine.volume_plugins]\nx = \"/y\""))
    plan = plan_dropin(snap, {})
    assert dict(plan.entries) == {"good": "/run/docker/plugins/good.sock"}
    assert dict(plan.untrusted) == {
        "evil": '/srv/a\n[engine.volume_plugins]\nx = "/y"',
        "shady": "/srv/p is writable by others (mode 0757)"}
    text = render_dropin(snap, PodmanSettings(enabled=True), declared={})
    assert tomllib.loads(text)["engine"]["volume_plugins"] == {
        "good": "/run/docker/plugins/good.sock"}
    assert text.endswith(
        "\n# Left out, untrusted: others may write their plugin folder or file\n"
        "# (see \"Trust of plugin folders\" in volplugd's docs/config.md):\n"
        '#   "evil": /srv/a\\x0a[engine.volume_plugins]\\x0ax = "/y"\n'
        '#   "shady": /srv/p is writable by others (mode 0757)\n')


def test_the_writer_logs_each_untrusted_plugin_once(tmp_path: Path) -> None:
    """podman_plugin_untrusted once per plugin, not once per snapshot."""
    dropin = str(tmp_path / "50-volplugd.conf")
    writer = DropinWriter(PodmanSettings(enabled=True, dropin=dropin),
                          lambda after, timeout: snapshot(), search_paths=lambda: [])
    shady = view("shady", "untrusted: /srv/p is writable by others (mode 0757)")
    with capture_logs() as logs:
        for generation in (1, 2, 3):
            writer.update(snapshot(view("good"), shady, generation=generation))
    assert [(e["plugin"], e["reason"]) for e in logs
            if e["event"] == "podman_plugin_untrusted"] == [
        ("shady", "/srv/p is writable by others (mode 0757)")]
    written = [e for e in logs if e["event"] == "podman_dropin_written"]
    assert [(e["plugins"], e["untrusted"]) for e in written] == [(["good"], ["shady"])]
    assert "shady =" not in Path(dropin).read_text()


def test_no_symlink_is_followed_in_an_untrusted_folder(base: Path) -> None:
    """A .spec symlink in an untrusted folder is ignored with its reason (root opens
    nothing it names: a device could act on the open); in a trusted folder the same
    symlink gives the plugin."""
    target = base / "target.spec"
    target.write_text("tcp://127.0.0.1:9\n")
    shady = folder(base / "shady", 0o757)
    fine = folder(base / "fine")
    (shady / "a.spec").symlink_to(target)
    (fine / "b.spec").symlink_to(target)
    result = scan([str(shady), str(fine)])
    assert list(result.desired) == ["b"]
    (ignored,) = [i for i in result.ignored if i.path == str(shady / "a.spec")]
    assert ignored.reason == ("a symlink (not followed here); untrusted: "
                              f"{shady} is writable by others (mode 0757)")
