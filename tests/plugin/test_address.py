"""Plugin files (.sock / .spec / .json) become addresses, or errors naming the problem."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from pathlib import Path

import pytest

from volplugd.plugin.address import (
    MAX_FILE_BYTES,
    PluginAddress,
    TLSConfig,
    address_from_json,
    address_from_socket,
    address_from_spec,
    load_address,
    read_plugin_file,
)
from volplugd.plugin.errors import PluginAddressError

WANT = "(want unix://, tcp://, http:// or https://)"
SKIP_VERIFY = TLSConfig(insecure_skip_verify=True)


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


@pytest.mark.parametrize(("content", "expected"), [
    ("unix:///run/docker/plugins/x.sock\n", PluginAddress("unix", "/run/docker/plugins/x.sock")),
    ("unix:///run/my%20plugin.sock", PluginAddress("unix", "/run/my plugin.sock")),
    ("  tcp://localhost:8080  \n", PluginAddress("tcp", "localhost:8080")),
    ("TCP://10.0.0.1:2375", PluginAddress("tcp", "10.0.0.1:2375")),
    ("tcp://[::1]:9000", PluginAddress("tcp", "[::1]:9000")),
    ("http://plugin.local:81/ignored/path?q=1", PluginAddress("http", "plugin.local:81")),
    ("http://user@plugin.local", PluginAddress("http", "plugin.local:80")),
    ("https://example.com/docker/plugin", PluginAddress("https", "example.com:443", SKIP_VERIFY)),
])
def test_spec_file_gives_the_address(tmp_path: Path, content: str,
                                     expected: PluginAddress) -> None:
    """A .spec URL is trimmed and parsed; https skips verification as in Docker."""
    assert address_from_spec(write(tmp_path, "p.spec", content)) == expected


@pytest.mark.parametrize(("content", "problem"), [
    ("", f"file is empty; want one URL {WANT}"),
    (" \n\t\n", f"file is empty; want one URL {WANT}"),
    ("localhost:8080", f"URL has no scheme {WANT}"),
    ("://h:1", f"URL has no scheme {WANT}"),
    ("udp://h:1", f"unknown URL scheme {WANT}"),
    ("unix://var/lib/docker/plugins/echo.sock",
     "unix:// needs an absolute socket path (unix:///path)"),
    ("unix://", "unix:// needs an absolute socket path (unix:///path)"),
    ("tcp://localhost", "tcp:// URL needs a port (tcp://host:port)"),
    ("tcp://:8080", "tcp:// URL has no valid host"),
    ("http://[::1", "http:// URL has no valid host"),
    ("tcp://h:0", "invalid port (want 1-65535)"),
    ("tcp://h:65536", "invalid port (want 1-65535)"),
    ("https://h:x", "invalid port (want 1-65535)"),
    ("unix:///a.sock\nunix:///b.sock",
     "URL contains a control character (want one URL on one line)"),
    (b"\xfftcp://h:1", "not UTF-8 text (byte 0)"),
    ("tcp://h:1" + " " * MAX_FILE_BYTES, "file is larger than 65536 bytes"),
])
def test_bad_spec_file_names_the_problem(tmp_path: Path, content: str | bytes,
                                         problem: str) -> None:
    """Each kind of bad .spec file raises PluginAddressError with a precise problem that
    never quotes the file (it may be a symlink to a secret)."""
    path = write(tmp_path, "p.spec", content)
    with pytest.raises(PluginAddressError) as caught:
        address_from_spec(path)
    assert (caught.value.path, caught.value.problem) == (path, problem)
    assert str(caught.value) == f"{path}: {problem}"


def test_unreadable_files_report_the_os_error(tmp_path: Path) -> None:
    """A missing file gives strerror; a directory or FIFO is "not a regular file"."""
    os.mkfifo(tmp_path / "fifo.spec")  # opening must not block
    (tmp_path / "dir.spec").mkdir()
    cases = {"missing.spec": "No such file or directory", "fifo.spec": "not a regular file",
             "dir.spec": "not a regular file"}
    for name, problem in cases.items():
        with pytest.raises(PluginAddressError) as caught:
            load_address(str(tmp_path / name))
        assert caught.value.problem == problem


@pytest.mark.parametrize(("content", "expected"), [
    ('{"Name": "other", "Addr": "https://example.com/docker/plugin", "TLSConfig": '
     '{"CAFile": "/ca.pem", "CertFile": "/cert.pem", "KeyFile": "/key.pem"}}',
     PluginAddress("https", "example.com:443", TLSConfig("/ca.pem", "/cert.pem", "/key.pem"))),
    ('{"Addr": "https://h:8443", "TLSConfig": {}}', PluginAddress("https", "h:8443", SKIP_VERIFY)),
    ('{"Addr": "https://h:8443", "TLSConfig": {"CAFile": "/ca", "InsecureSkipVerify": true}}',
     PluginAddress("https", "h:8443", TLSConfig(ca_file="/ca", insecure_skip_verify=True))),
    ('{"Addr": "https://h:8443"}', PluginAddress("https", "h:8443")),
    ('{"Addr": "unix:///x.sock", "TLSConfig": null}', PluginAddress("unix", "/x.sock")),
    ('{"addr": "tcp://h:1", "tlsconfig": {"cafile": "/ca"}}',
     PluginAddress("tcp", "h:1", TLSConfig(ca_file="/ca"))),
    ('\n  {"Name": 5, "Addr": "tcp://h:1"} trailing text', PluginAddress("tcp", "h:1")),
])
def test_json_file_gives_the_address_and_tls(tmp_path: Path, content: str,
                                             expected: PluginAddress) -> None:
    """Docker's JSON spec: Name ignored, keys case-insensitive, no CAFile = skip verify."""
    assert address_from_json(write(tmp_path, "p.json", content)) == expected


@pytest.mark.parametrize(("content", "problem"), [
    ("", 'file is empty; want a JSON object with "Addr"'),
    ("{", "invalid JSON: Expecting property name enclosed in double quotes (line 1 column 2)"),
    ("\n\n  nope", "invalid JSON: Expecting value (line 3 column 3)"),
    ("[]", "want a JSON object, got array"),
    ("{}", 'missing "Addr"'),
    ('{"Addr": ""}', 'missing "Addr"'),
    ('{"Addr": 5}', '"Addr" must be a string, got number'),
    ('{"Addr": true}', '"Addr" must be a string, got boolean'),
    ('{"Addr": "localhost:8080"}', f"\"Addr\": URL has no scheme {WANT}"),
    ('{"Addr": "tcp://h:1", "TLSConfig": "yes"}', '"TLSConfig" must be an object, got string'),
    ('{"Addr": "tcp://h:1", "TLSConfig": {"InsecureSkipVerify": "true"}}',
     '"TLSConfig.InsecureSkipVerify" must be a boolean, got string'),
    ('{"Addr": "tcp://h:1", "TLSConfig": {"CAFile": 1}}',
     '"TLSConfig.CAFile" must be a string, got number'),
    ('{"Addr": "tcp://h\\ud800:1"}', '"Addr" must be valid Unicode (it has a lone surrogate)'),
    ('{"Addr": "tcp://h:1", "TLSConfig": {"CAFile": "/\\udcff"}}',
     '"TLSConfig.CAFile" must be valid Unicode (it has a lone surrogate)'),
    ('{"Addr": "tcp://h:1", "x": "\\q secret"}',
     "invalid JSON: Invalid \\escape (line 1 column 29)"),
])
def test_bad_json_file_names_the_problem(tmp_path: Path, content: str, problem: str) -> None:
    """Each kind of bad .json file raises PluginAddressError with a precise problem."""
    path = write(tmp_path, "p.json", content)
    with pytest.raises(PluginAddressError) as caught:
        address_from_json(path)
    assert (caught.value.path, caught.value.problem) == (path, problem)


def test_load_address_dispatches_on_the_suffix(tmp_path: Path) -> None:
    """.sock is its own path, .spec and .json are read; another suffix is an error."""
    sock = str(tmp_path / "a.sock")
    assert load_address(sock) == address_from_socket(sock) == PluginAddress("unix", sock)
    assert load_address(sock).url == f"unix://{sock}"
    assert load_address(write(tmp_path, "b.spec", "tcp://h:1")).url == "tcp://h:1"
    assert load_address(write(tmp_path, "c.json", '{"Addr": "http://h"}')).url == "http://h:80"
    with pytest.raises(PluginAddressError) as caught:
        load_address(str(tmp_path / "d.txt"))
    assert caught.value.problem == "unknown plugin file type (want .sock, .spec or .json)"


def test_read_plugin_file_judges_what_it_opened(tmp_path: Path) -> None:
    """read_plugin_file refuses, without blocking or reading, a FIFO and /dev/zero (also
    behind a symlink), a sparse file past MAX_FILE_BYTES, and with follow_symlinks=False
    any symlink; a regular file gives its bytes."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    with (tmp_path / "huge").open("wb") as f:
        f.truncate(1 << 30)
    (tmp_path / "ok").write_bytes(b"tcp://h:1\n")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    cases = {("fifo", True): "not a regular file", ("to-fifo", True): "not a regular file",
             ("zero", True): "not a regular file",
             ("huge", True): f"file is larger than {MAX_FILE_BYTES} bytes",
             ("link", False): "a symlink (not followed here)"}
    for (name, follow), problem in cases.items():
        with pytest.raises(PluginAddressError) as caught:
            read_plugin_file(str(tmp_path / name), follow_symlinks=follow)
        assert caught.value.problem == problem, name
    assert read_plugin_file(str(tmp_path / "link")) == b"tcp://h:1\n"
    assert read_plugin_file(str(tmp_path / "ok"), follow_symlinks=False) == b"tcp://h:1\n"


def test_running_out_of_descriptors_is_not_the_files_fault(tmp_path: Path) -> None:
    """EMFILE at the open is raised as OSError (the process's trouble), not a problem of
    the file that a scan would report and evict it for."""
    path = write(tmp_path, "x.spec", "tcp://h:1\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        with pytest.raises(OSError, match="Too many open files") as caught:
            read_plugin_file(path)
        assert caught.value.errno == errno.EMFILE
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
