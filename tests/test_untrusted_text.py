"""Untrusted text is data: outside text is made safe where it enters (volplugd.plugin.text)
and every output encodes it without failing (JSON, Prometheus, HTML, both log formats,
volplugctl). Property-based: arbitrary bytes as plugin names (real files through
discovery.scan), Errs, Mountpoints and Status values (through the real client against
the fake plugin) and spec files (through address loading), then through every renderer."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import execnet
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import tiers
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.renderers import (
    CONTROL,
    HOSTILE_NAMES,
    Everywhere,
    event_of,
    logging_into,
    view_of,
)
from volplugd import log
from volplugd.ctl import render
from volplugd.discovery.scan import NOT_UTF8, scan, scan_one
from volplugd.model import ProcessView
from volplugd.plugin import PluginAddress, PluginClient, PluginReportedError
from volplugd.plugin.address import load_address
from volplugd.plugin.errors import PluginAddressError, PluginError
from volplugd.plugin.models import decode_object, parse_manifest
from volplugd.plugin.text import (
    MAX_TEXT_BYTES,
    cut,
    from_bytes,
    is_utf8,
    json_printable,
    printable,
    safe_text,
)

MARKER = re.compile(r"…\((\d+) bytes cut\)$")
# Any character (surrogates included), with the hostile ones drawn often.
HOSTILE = st.sampled_from(["\udcff", "\udc80", "\ud800", "\x1b", "\x07", "\n", "\r", "\x9b",
                           "\u202e", "\u2028", "\x00", "\x7f", '"', "\\", "<", "&", "é", "😀"])
ANY_TEXT = st.text(alphabet=st.one_of(st.characters(exclude_categories=[]), HOSTILE))
SLOW = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- the text module: examples --------------------------------------------------------------


@pytest.mark.parametrize(("raw", "safe"), [
    ("plain", "plain"),
    (os.fsdecode(b"bad\xff.sock"), "bad\\xff.sock"),  # os.fsdecode's byte, mapped back
    ("boom \ud800", "boom \\ud800"),  # a lone surrogate from a JSON escape
    ("pair \ud83d\ude00", "pair \\ud83d\\ude00"),  # never joined: each is lone in a str
    ("evil\x1b]0;PWNED\x07", "evil\x1b]0;PWNED\x07"),  # control characters stay data
    ("é" * 10, "é" * 10),
])
def test_safe_text_escapes_surrogates_and_keeps_the_rest(raw: str, safe: str) -> None:
    """Undecodable bytes and lone surrogates become visible escapes; the rest is kept."""
    assert safe_text(raw) == safe
    safe.encode("utf-8")


def test_from_bytes_escapes_undecodable_bytes() -> None:
    """Bytes that are not UTF-8 read as \\xNN; valid UTF-8 is decoded."""
    assert from_bytes(b"a\xffb \xc3\xa9 \xe2\x82") == "a\\xffb é \\xe2\\x82"


def test_a_long_text_is_cut_to_the_limit_with_a_marker_that_counts_the_bytes() -> None:
    """1 MiB becomes exactly 4096 bytes ending "…(N bytes cut)"; N is what was dropped."""
    for unit in ("x", "é", "€", "😀"):  # 1 to 4 bytes a character: never split one
        text = unit * (1024 * 1024 // len(unit.encode()))
        out = cut(text)
        match = MARKER.search(out)
        assert match is not None
        kept = out[: match.start()]
        assert len(out.encode()) <= MAX_TEXT_BYTES
        assert len(out.encode()) > MAX_TEXT_BYTES - 4 - len(match[0].encode())
        assert kept == unit * len(kept)
        assert int(match[1]) == len(text.encode()) - len(kept.encode())
    assert cut("x" * MAX_TEXT_BYTES) == "x" * MAX_TEXT_BYTES  # exactly at the limit: kept


def test_cut_refuses_a_limit_too_small_for_its_marker() -> None:
    """A limit below 64 bytes is a programming error, said at once."""
    with pytest.raises(ValueError, match="limit must be at least 64 bytes, not 10"):
        cut("x" * 100, 10)


@pytest.mark.parametrize(("raw", "shown"), [
    ("evil\x1b]0;PWNED\x07", "evil\\x1b]0;PWNED\\x07"),
    ("line\nforged=1\r\t", "line\\nforged=1\\r\\t"),
    ("csi\x9b31m del\x7f nul\x00", "csi\\x9b31m del\\x7f nul\\x00"),
    ("abc\u202edcba \u2066x\u2069 \u2028", "abc\\u202edcba \\u2066x\\u2069 \\u2028"),
    (os.fsdecode(b"\xff"), "\\xff"),
    ("ok é 😀 \\x1b", "ok é 😀 \\x1b"),
])
def test_printable_escapes_what_a_terminal_would_obey(raw: str, shown: str) -> None:
    """Control characters, separators, bidi overrides and surrogates show as escapes."""
    assert printable(raw) == shown
    if is_utf8(raw):  # volplugctl's own copy of the rule agrees
        assert render.printable(raw) == shown


def test_json_printable_keeps_the_value_and_escapes_c1_and_bidi() -> None:
    """DEL, C1 and bidi characters become \\uXXXX; the JSON value is the same."""
    value = {"k": "a\x7f\x9b\u202e\u2028é"}
    text = json_printable(json.dumps(value, ensure_ascii=False))
    assert text == '{"k": "a\\u007f\\u009b\\u202e\\u2028é"}'
    assert json.loads(text) == value


# --- the text module: properties ------------------------------------------------------------


@given(st.one_of(ANY_TEXT, st.text(max_size=3000), st.text(HOSTILE, min_size=1000)))
def test_safe_text_is_always_encodable_and_bounded(raw: str) -> None:
    """Any str (surrogates included) comes out UTF-8-encodable and at most 4 KiB."""
    out = safe_text(raw)
    assert len(out.encode("utf-8")) <= MAX_TEXT_BYTES
    if is_utf8(raw) and len(raw.encode()) <= MAX_TEXT_BYTES:
        assert out == raw


@given(ANY_TEXT)
def test_printable_leaves_nothing_a_terminal_obeys(raw: str) -> None:
    """No C0/DEL/C1, separator, bidi or surrogate survives printable; it is idempotent."""
    out = printable(raw)
    assert CONTROL.search(out) is None
    assert printable(out) == out
    out.encode("utf-8")


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"])))
def test_volplugctl_and_the_daemon_escape_alike(raw: str) -> None:
    """volplugctl's copy of printable (it may not import the plugin client) agrees."""
    assert render.printable(raw) == printable(raw)


# --- names: real files through discovery ----------------------------------------------------

NAME_BYTES = st.binary(min_size=1, max_size=60).filter(
    lambda n: b"/" not in n and b"\0" not in n and not n.startswith(b"."))


@SLOW
@given(names=st.lists(NAME_BYTES, min_size=1, max_size=4, unique=True))
def test_any_file_name_is_supervised_or_skipped_with_a_warning(
        short_tmp: Path, names: list[bytes]) -> None:
    """A plugin file named with any bytes: UTF-8 names become plugins whose every view
    renders; other names are skipped with one escaped Ignored, never breaking the rest."""
    folder = os.fsencode(short_tmp / "names")
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, n + b".spec") for n in names]
    for path in paths:
        with open(path, "wb") as spec:
            spec.write(b"unix:///run/x.sock\n")
    try:
        result = scan([os.fsdecode(folder)])
        utf8 = {n.decode() for n in names if _is_utf8(n)}
        assert set(result.desired) == utf8
        skipped = [i for i in result.ignored if i.reason == NOT_UTF8]
        assert len(skipped) == len(names) - len(utf8)
        for ignored in result.ignored:
            ignored.path.encode("utf-8")  # shown escaped, never a surrogate
        views = [view_of(d.name, source=d.source, address=d.address.url)
                 for d in result.desired.values()]
        Everywhere().render(views, [event_of(v.name, v.source) for v in views],
                            log_values=[(i.path, i.reason) for i in result.ignored])
    finally:
        for path in paths:
            os.unlink(path)


def test_a_name_that_is_not_utf8_is_skipped_in_a_folder_and_by_name_too(short_tmp: Path) -> None:
    """<name>/<name>.spec and the watcher's scan_one(name) skip it the same way, with the
    path escaped."""
    root = os.fsencode(short_tmp)
    os.mkdir(os.path.join(root, b"n\xff"))
    with open(os.path.join(root, b"n\xff", b"n\xff.spec"), "wb") as spec:
        spec.write(b"tcp://h:1")
    with open(os.path.join(root, b"f\xfe.spec"), "wb") as spec:
        spec.write(b"tcp://h:1")
    result = scan([str(short_tmp)])
    assert result.desired == {}
    assert sorted((i.path, i.reason) for i in result.ignored) == [
        (f"{short_tmp}/f\\xfe.spec", NOT_UTF8), (f"{short_tmp}/n\\xff/n\\xff.spec", NOT_UTF8)]
    one = scan_one(os.fsdecode(b"f\xfe"), [str(short_tmp)])
    assert (dict(one.desired), [i.reason for i in one.ignored]) == ({}, [NOT_UTF8])


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- spec and json files: never quoted ------------------------------------------------------

SECRET = "s3cr3t-MARKER"  # noqa: S105 — a marker to look for, not a password


@SLOW
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".spec", ".json"]))
def test_no_plugin_file_problem_quotes_the_file(short_tmp: Path, content: bytes,
                                                suffix: str) -> None:
    """Whatever a .spec/.json holds, a bad file's problem never contains the secret in
    it, and is safe text; a good one gives an address."""
    path = short_tmp / f"p{suffix}"
    for data in (SECRET.encode() + content, content + SECRET.encode()):
        path.write_bytes(data)
        problem = _problem(path)
        assert SECRET not in problem
        problem.encode("utf-8")


def _problem(path: Path) -> str:
    """The file's PluginAddressError as text ("" when the file is a good one)."""
    try:
        load_address(str(path))
    except PluginAddressError as err:
        return str(err)
    return ""


@pytest.mark.parametrize("content", [
    SECRET, f"{SECRET}://h:1", f"tcp://{SECRET}", f"tcp://h:{SECRET}", f"unix://{SECRET}",
    f"tcp://h:1\n{SECRET}", f'{{"Addr": "{SECRET}"}}', f'{{"Addr": 1, "{SECRET}": 2}}',
    f'{{"Addr": "\\{SECRET}"}}', f"{{{SECRET}", "[" * 60000,
])
def test_known_leaks_are_closed(short_tmp: Path, content: str) -> None:
    """The cases that once quoted the file (URL in every message, JSON escapes) now say
    only what is wrong."""
    for suffix in (".spec", ".json"):
        path = short_tmp / f"leak{suffix}"
        path.write_text(content)
        with pytest.raises(PluginAddressError) as caught:
            load_address(str(path))
        assert SECRET not in str(caught.value)


# --- plugin answers: the real client against the fake plugin --------------------------------


def _json_escaped(raw: bytes) -> bytes:
    """Raw bytes as the inside of a JSON string: quote, backslash, C0 escaped; bytes
    that are not UTF-8 left as they are (a plugin may send them)."""
    out = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return re.sub(rb"[\x00-\x1f]", lambda m: b"\\u%04x" % m[0][0], out)


JSON_PIECES = st.one_of(
    st.binary(max_size=12).map(_json_escaped),
    st.sampled_from([b"\\ud800", b"\\udcff", b"\\u001b]0;PWNED\\u0007", b"\\u202e", b"\xff",
                     b"\\n", b"\xed\xa0\x80"]),
)
JSON_STRING = st.lists(JSON_PIECES, max_size=8).map(b"".join)


@pytest.fixture
def fake_and_client(short_tmp: Path) -> Iterator[tuple[FakePlugin, PluginClient]]:
    sock = str(short_tmp / "fp.sock")
    with FakePlugin(sock) as fp, PluginClient("fp", PluginAddress("unix", sock)) as client:
        yield fp, client


@SLOW
@given(err=JSON_STRING, mountpoint=JSON_STRING, key=JSON_STRING)
def test_any_answer_text_comes_out_safe_and_renders_everywhere(
        fake_and_client: tuple[FakePlugin, PluginClient], err: bytes, mountpoint: bytes,
        key: bytes) -> None:
    """Errs, Mountpoints, volume names and Status keys/values of any bytes: the client
    returns or raises safe text, and every renderer takes it."""
    fp, client = fake_and_client
    fp.set("/VolumeDriver.Remove", b.Status(200, b'{"Err": "x' + err + b'"}'))
    fp.set("/VolumeDriver.Mount", b.Status(200, b'{"Mountpoint": "/m' + mountpoint + b'"}'))
    fp.set("/VolumeDriver.Get", b.Status(200, b'{"Volume": {"Name": "n' + key + b'", '
                                         b'"Status": {"' + key + b'": "' + err + b'"}}}'))
    with pytest.raises(PluginReportedError) as caught:
        client.remove("v")
    mounted = client.mount("v", "id")
    volume = client.get("v")
    status = dict(volume.status or {})
    for text in (caught.value.err, caught.value.message, mounted, volume.name, *status,
                 *status.values()):
        assert len(text.encode("utf-8")) <= MAX_TEXT_BYTES
    view = view_of("fp", last_error=caught.value.message)
    Everywhere().render([view], [event_of("fp", caught.value.message)],
                        log_values=[("error", caught.value.message), ("mountpoint", mounted)],
                        documents=[volume.to_json(), {"mountpoint": mounted}])


def test_a_1_mib_err_is_cut_to_4_kib_with_the_marker(
        fake_and_client: tuple[FakePlugin, PluginClient]) -> None:
    """The plugin's 1 MiB Err is kept as 4 KiB (message too), with the count of the cut."""
    fp, client = fake_and_client
    fp.set("/VolumeDriver.Remove", b.ErrOn200("E" * (1 << 20)))
    with pytest.raises(PluginReportedError) as caught:
        client.remove("v")
    for text in (caught.value.err, caught.value.message, str(caught.value)):
        assert len(text.encode()) <= MAX_TEXT_BYTES
        assert MARKER.search(text) is not None
    assert caught.value.err.startswith("EEEE")


def test_a_huge_manifest_is_kept_bounded() -> None:
    """Implements is kept in the view: at most 32 names, each once, each <= 256 bytes."""
    names = ["VolumeDriver", "VolumeDriver", "x" * (1 << 20)] + [f"n{i}" for i in range(10_000)]
    manifest = parse_manifest(decode_object(json.dumps({"Implements": names}).encode()))
    assert len(manifest.implements) == 32
    assert manifest.implements[:3] == ("VolumeDriver", "x" * 234 + "…(1048342 bytes cut)", "n0")


def test_any_plugin_error_message_is_safe() -> None:
    """Every PluginError (whatever built its message) carries safe, bounded text."""
    err = PluginError("x\ud800" + "y" * 10000, plugin="p")
    assert str(err) == err.message
    assert err.message.startswith("x\\ud800yyy")
    assert MARKER.search(err.message)


# --- defence in depth: views that bypassed the entry checks ---------------------------------


@settings(max_examples=80, deadline=None)
@given(name=ANY_TEXT.filter(bool), error=ANY_TEXT, address=ANY_TEXT)
def test_every_renderer_survives_any_str_even_surrogates(name: str, error: str,
                                                         address: str) -> None:
    """A view with lone surrogates and control characters anywhere still renders in
    JSON, metrics, HTML, both log formats and volplugctl."""
    view = view_of(name, last_error=error, address=address)
    Everywhere().render([view], [event_of(name, error)], log_values=[("error", error)])


@settings(max_examples=60, deadline=None)
@given(command=ANY_TEXT, unit=ANY_TEXT, container=ANY_TEXT)
def test_every_renderer_survives_any_process_command_and_unit(command: str, unit: str,
                                                              container: str) -> None:
    """A plugin process's command line is the process's own text (its argv), and its
    unit comes from a cgroup name: any str in either, and in a container id, renders in
    JSON, the info metric's unit label, HTML and volplugctl."""
    views = [view_of("p", process=ProcessView(7, 0, command, unit)),
             view_of("q", process=ProcessView(8, 0, command, None, ("docker", container))),
             view_of("r", process=None)]
    Everywhere().render(views, [], log_values=[("command", command)])


def test_a_traceback_in_the_console_log_is_escaped_too() -> None:
    """An exception whose message carries a plugin's text prints escaped in console
    format; JSON keeps it as an ASCII JSON string."""
    for fmt in ("console", "json"):
        with logging_into(fmt) as out:
            try:
                raise ValueError("evil\x1b]0;PWNED\x07 \ud800")
            except ValueError:
                log.get_logger("t").exception("control_request_failed")
        text = out.getvalue()
        assert CONTROL.search(text.replace("\n", "")) is None, text
        if fmt == "console":
            assert "ValueError: evil\\x1b]0;PWNED\\x07 \\ud800" in text
        else:
            assert text.isascii()
            assert "evil\x1b]0;PWNED\x07" in json.loads(text)["exception"]


@pytest.mark.peer
def test_promtool_accepts_a_scrape_with_hostile_names(short_tmp: Path) -> None:
    """One scrape with hostile plugin names, checked by the real promtool."""
    views = [view_of(name, last_error=name) for name in HOSTILE_NAMES]
    scrape = Everywhere().render(views, [])
    promtool = tiers.tool("promtool", "prometheus")
    checked = subprocess.run([promtool, "check", "metrics"], input=scrape, check=False,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_a_report_with_surrogates_still_reaches_the_runner(
        request: pytest.FixtureRequest) -> None:
    """The suite's report guard (tests/conftest.py): a test's report whose message and
    captured log carry lone surrogates is serialized as xdist sends it (execnet), with
    visible escapes, instead of ending the whole run in an INTERNALERROR."""
    report = pytest.TestReport("t.py::x", ("t.py", 1, "x"), {}, "failed", "boom \ud800",
                               "call", sections=[("Captured log call", "WARNING a \udcff")])
    data = request.config.hook.pytest_report_to_serializable(config=request.config,
                                                               report=report)
    execnet.dumps(data)  # DumpError: "strings must be utf-8 encodable", without the guard
    assert data["longrepr"] == "boom \\ud800"
    assert data["sections"] == [("Captured log call", "WARNING a \\udcff")]
