"""PluginAddress: where a plugin listens, parsed from .sock / .spec / .json files (pure).

Follows Docker's ``pkg/plugins/discovery.go``: a ``.spec`` file holds one URL (trimmed)
that must have a scheme; a ``.json`` file is ``{"Name", "Addr", "TLSConfig"}`` where the
name is ignored (the file name is the plugin's name) and a TLSConfig without a CAFile
means "skip verification". Docker would accept some addresses it can never dial (a
relative unix path, a tcp URL without a port); these are rejected here with the reason.
Every bad file raises ``PluginAddressError(path, problem)``, where ``problem`` says what
is wrong (size, encoding, JSON error position, missing key, not a URL) and never quotes
the file: a ``.spec`` symlink to a secret must not print the secret into a log.

Runs on: whichever thread calls it (discovery's scan); no state, no network.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from volplugd.plugin.errors import PluginAddressError
from volplugd.plugin.text import is_utf8

__all__ = [
    "EXHAUSTED",
    "MAX_FILE_BYTES",
    "PLUGIN_FILE_SUFFIXES",
    "PluginAddress",
    "TLSConfig",
    "address_from_json",
    "address_from_socket",
    "address_from_spec",
    "load_address",
    "parse_url",
    "read_plugin_file",
]

Scheme = Literal["unix", "tcp", "http", "https"]

MAX_FILE_BYTES = 64 * 1024
PLUGIN_FILE_SUFFIXES = (".sock", ".spec", ".json")
_WANT = "(want unix://, tcp://, http:// or https://)"
_NETWORK_SCHEMES: dict[str, Scheme] = {"tcp": "tcp", "http": "http", "https": "https"}
_DEFAULT_PORTS = {"http": 80, "https": 443}  # tcp has none: Docker could not dial it


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Docker's TLSConfig of a .json plugin file. No CA file means: skip verification."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class PluginAddress:
    """``scheme`` "unix" has a socket path as ``target``; the others "host:port".

    ``tls`` matters only for https: None means verify against the system's CAs.
    """

    scheme: Scheme
    target: str
    tls: TLSConfig | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.target}"

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"


def address_from_socket(path: str) -> PluginAddress:
    """A ``.sock`` file is its own address."""
    return PluginAddress("unix", path)


def address_from_spec(path: str, *, follow_symlinks: bool = True) -> PluginAddress:
    """A ``.spec`` file: one URL. Like Docker, https skips certificate verification.
    ``follow_symlinks=False``: a symlink at ``path`` is refused (see ``read_plugin_file``)."""
    url = _read_text(path, follow_symlinks).strip()
    if not url:
        raise PluginAddressError(path, f"file is empty; want one URL {_WANT}")
    try:
        address = _parse_url(url)
    except _BadURL as err:
        raise PluginAddressError(path, str(err)) from None
    if address.scheme == "https":  # Docker's NewLocalPlugin sets InsecureSkipVerify
        return PluginAddress("https", address.target, TLSConfig(insecure_skip_verify=True))
    return address


def address_from_json(path: str, *, tls_files: bool = True, follow_symlinks: bool = True
                      ) -> PluginAddress:
    """A ``.json`` file: Docker's ``{"Name", "Addr", "TLSConfig"}`` (Name is ignored).

    With ``tls_files=False`` a TLSConfig that names a CAFile, CertFile or KeyFile is
    refused (PluginAddressError): the caller does not trust the file to choose which
    key and certificate files the process reads, so no address naming them is made.
    ``follow_symlinks=False``: a symlink at ``path`` is refused (see ``read_plugin_file``).
    """
    text = _read_text(path, follow_symlinks)
    if not text.strip():
        raise PluginAddressError(path, 'file is empty; want a JSON object with "Addr"')
    try:
        spec = _decode_json(text)
        addr = _field(spec, "Addr", str, "")
        if not addr:
            raise ValueError('missing "Addr"')
        try:
            address = _parse_url(addr)
        except _BadURL as err:
            raise ValueError(f'"Addr": {err}') from None
        tls = _tls_config(spec)
        if not tls_files and tls is not None:
            _refuse_tls_files(tls)
        return PluginAddress(address.scheme, address.target, tls)
    except ValueError as err:
        raise PluginAddressError(path, str(err)) from None


def load_address(path: str, *, tls_files: bool = True, follow_symlinks: bool = True
                 ) -> PluginAddress:
    """Parse a plugin file by its suffix: ``.sock``, ``.spec`` or ``.json``.

    ``tls_files=False``: a ``.json`` may not name key or certificate files (see
    ``address_from_json``). ``follow_symlinks=False``: a ``.spec`` or ``.json`` that is
    a symlink is refused.
    """
    suffix = os.path.splitext(path)[1]
    if suffix == ".json":
        return address_from_json(path, tls_files=tls_files, follow_symlinks=follow_symlinks)
    if suffix == ".spec":
        return address_from_spec(path, follow_symlinks=follow_symlinks)
    if suffix == ".sock":
        return address_from_socket(path)
    raise PluginAddressError(path, "unknown plugin file type (want .sock, .spec or .json)")


def parse_url(url: str) -> PluginAddress:
    """``unix:///abs/path``, ``tcp://host:port``, ``http(s)://host[:port]`` -> address.

    Raises ValueError with the reason and the URL. A path, query or fragment after
    host:port is ignored, as Docker ignores it.
    """
    try:
        return _parse_url(url)
    except _BadURL as err:
        raise ValueError(f"{err}: {url!r}") from None


class _BadURL(ValueError):
    """What is wrong with a URL, worded without quoting any of it (it may be a file's
    secret content)."""


def _parse_url(url: str) -> PluginAddress:
    if re.search(r"[\x00-\x1f\x7f]", url):
        raise _BadURL("URL contains a control character (want one URL on one line)")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise _BadURL(f"URL has no scheme {_WANT}")
    scheme = scheme.lower()  # as Go's url.Parse does
    if scheme == "unix":
        return PluginAddress("unix", _unix_path(rest))
    network = _NETWORK_SCHEMES.get(scheme)
    if network is not None:
        return PluginAddress(network, _host_port(network, rest))
    raise _BadURL(f"unknown URL scheme {_WANT}")


def _unix_path(rest: str) -> str:
    path = unquote(re.split(r"[?#]", rest, maxsplit=1)[0])
    if not path.startswith("/"):  # "unix://x.sock" would make Go dial host "x.sock"
        raise _BadURL("unix:// needs an absolute socket path (unix:///path)")
    return path


def _host_port(scheme: str, rest: str) -> str:
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    # host, or an IPv6 literal in brackets, then an optional ":port"
    match = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?::(.*))?", authority)
    if match is None or match[1] in ("", "[]") or re.search(r"\s", match[1]):
        raise _BadURL(f"{scheme}:// URL has no valid host")
    return f"{match[1]}:{_port(scheme, match[2])}"


def _port(scheme: str, text: str | None) -> int:
    if not text:
        if scheme not in _DEFAULT_PORTS:
            raise _BadURL(f"{scheme}:// URL needs a port (tcp://host:port)")
        return _DEFAULT_PORTS[scheme]
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _BadURL("invalid port (want 1-65535)")
    return int(text)


# Nothing at a plugin file's path may block the reader or choose what it opens: a FIFO or
# a device swapped in after a stat opens at once (O_NONBLOCK) and is refused by the fstat
# of the descriptor; a terminal never becomes the daemon's (O_NOCTTY).
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def read_plugin_file(path: str, *, follow_symlinks: bool = True) -> bytes:
    """The content of the regular file at ``path``, at most MAX_FILE_BYTES; never blocks.

    Opened non-blocking, then judged by an fstat of the descriptor (what was opened, not
    what a stat saw before): anything but a regular file of at most MAX_FILE_BYTES is
    refused before a byte is read. ``follow_symlinks=False`` adds O_NOFOLLOW: a symlink
    at ``path`` is refused. Raises ``PluginAddressError(path, problem)`` for what the file
    is; OSError when the process itself is out of descriptors or memory (``EXHAUSTED``):
    that says nothing about the file.
    """
    flags = _OPEN_FLAGS | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno in EXHAUSTED:
            raise
        if err.errno == errno.ELOOP and not follow_symlinks:
            raise PluginAddressError(path, "a symlink (not followed here)") from None
        raise PluginAddressError(path, err.strerror or str(err)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PluginAddressError(path, "not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise PluginAddressError(path, _TOO_LARGE)
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as err:
        raise PluginAddressError(path, err.strerror or str(err)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # it grew since the fstat
        raise PluginAddressError(path, _TOO_LARGE)
    return data


_TOO_LARGE = f"file is larger than {MAX_FILE_BYTES} bytes"
# Errors about the process, not the file: no descriptor or memory left.
EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))


def _read_text(path: str, follow_symlinks: bool) -> str:
    """The file's text (see ``read_plugin_file``), which must be UTF-8."""
    data = read_plugin_file(path, follow_symlinks=follow_symlinks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PluginAddressError(path, f"not UTF-8 text (byte {err.start})") from None


def _decode_json(text: str) -> dict[str, Any]:
    """The first JSON value, which must be an object; trailing text is ignored like Go's
    json.Decoder does, so a file Docker accepts is accepted here."""
    start = len(text) - len(text.lstrip())  # raw_decode refuses leading whitespace
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"invalid JSON: {_json_problem(err.msg)} (line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:  # 64 KiB of "[[[[": still only a bad file
        raise ValueError("invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"want a JSON object, got {_json_type(value)}")
    return value


# The decoder's messages, without the character some of them quote (the pure-Python
# decoder writes "Invalid \\escape: 'x'"): position yes, content no.
_JSON_PROBLEMS = ("Expecting value", "Expecting property name enclosed in double quotes",
                  "Expecting ':' delimiter", "Expecting ',' delimiter",
                  "Invalid control character", "Invalid \\uXXXX escape", "Invalid \\escape",
                  "Unterminated string")


def _json_problem(message: str) -> str:
    return next((known for known in _JSON_PROBLEMS if message.startswith(known)), "syntax error")


def _tls_config(spec: dict[str, Any]) -> TLSConfig | None:
    tls = _field(spec, "TLSConfig", dict, None)
    if tls is None:
        return None
    ca_file = _field(tls, "CAFile", str, "", "TLSConfig.")
    return TLSConfig(
        ca_file=ca_file or None,
        cert_file=_field(tls, "CertFile", str, "", "TLSConfig.") or None,
        key_file=_field(tls, "KeyFile", str, "", "TLSConfig.") or None,
        # Docker's rule: without a CA file there is nothing to verify against.
        insecure_skip_verify=_field(tls, "InsecureSkipVerify", bool, False, "TLSConfig.")
        or not ca_file,
    )


def _refuse_tls_files(tls: TLSConfig) -> None:
    named = [key for key, value in (("CAFile", tls.ca_file), ("CertFile", tls.cert_file),
                                    ("KeyFile", tls.key_file)) if value]
    if named:
        raise ValueError(f"TLSConfig names {', '.join(named)}: key and certificate files "
                         "named by this file are not read")


def _field(obj: dict[str, Any], key: str, kind: type, default: Any, prefix: str = "") -> Any:
    """``obj[key]`` checked against ``kind``; missing or null gives ``default``.

    Keys match case-insensitively when there is no exact match, as Go's encoding/json does.
    """
    if key in obj:
        value = obj[key]
    else:
        value = next((v for k, v in obj.items() if k.casefold() == key.casefold()), None)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f'"{prefix}{key}" must be {_TYPE_NAMES[kind]}, got {_json_type(value)}')
    if isinstance(value, str) and not is_utf8(value):  # a "\ud800" escape: no real path
        raise ValueError(f'"{prefix}{key}" must be valid Unicode (it has a lone surrogate)')
    return value


_TYPE_NAMES: dict[type, str] = {str: "a string", bool: "a boolean", dict: "an object"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
