"""The one request-head parser, strict, and the loopback ``Host`` rule: pure functions
(they never touch a socket; ``wire.Wire.read_head`` finds the lines and bounds them).

``parse_head`` accepts what RFC 9112 calls a well-formed head and nothing else: one
request line ``METHOD SP /path SP HTTP/1.x``, then ``name: value`` fields of printable
ASCII. Everything else raises ``BadHead`` with the 4xx to answer (505 for a well-formed
but unsupported version, as RFC 9110 asks): non-ASCII or control bytes (NUL included),
header folding, space before the colon, a version that is not ``HTTP/<digit>.<digit>``,
``Content-Length`` repeated, not a plain decimal, or too long to be a length at all, and
``Transfer-Encoding`` (bodies are framed by ``Content-Length`` only, so a request that
sends both can never be read two ways). A repeated ``Host`` is refused too.
Runs on: any connection thread (pure).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["MAX_FIELDS", "MAX_LENGTH_DIGITS", "READ_METHODS", "BadHead", "Head",
           "loopback_host", "parse_common_head", "parse_head"]

MAX_FIELDS = 100  # header fields in one head (http.client's limit)
MAX_LENGTH_DIGITS = 18  # a longer Content-Length is over any limit (and int() may refuse it)
READ_METHODS = frozenset({"GET", "HEAD"})  # what a read-only listener or read access allows

_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_VALUE = re.compile(rb"[\x20-\x7e\t]*")
_PORT = re.compile(r"[0-9]{1,5}")
# The common, valid shapes in one match each; anything else takes the step-by-step checks
# below, which name what is wrong. Each accepts a subset of what those accept.
_GOOD_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}) (/[\x21-\x7e]*) "
                                rb"HTTP/1\.([0-9])")
_GOOD_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*")
# A whole head of those shapes with CRLF line ends, as text (latin-1), in one match; then
# its fields, each as _GOOD_FIELD takes it.
_GOOD_HEAD = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}) (/[\x21-\x7e]*) HTTP/1\.([0-9])"
                        r"\r\n((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\x20-\x7e\t]*\r\n)*)\r\n")
_GOOD_FIELD_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*\r\n")
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")


class BadHead(Exception):
    """The head cannot be served: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed, validated request head. Field names keep their spelling; lookups
    ignore case."""

    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1" (a later 1.x is served as 1.1)
    fields: tuple[tuple[str, str], ...]
    content_length: int  # 0 when absent
    by_name: Mapping[str, list[str]] = field(default_factory=dict, repr=False,
                                             compare=False)  # lower-case name -> values

    def get(self, name: str) -> str | None:
        values = self.by_name.get(name.lower())
        return values[0] if values else None

    @property
    def keep_alive(self) -> bool:
        """Whether the client asks to keep the connection (RFC 9112 section 9.3)."""
        values = self.by_name.get("connection")
        if not values:
            return self.version == "HTTP/1.1"
        tokens = {t.strip().lower() for v in values for t in v.split(",")}
        if "close" in tokens:
            return False
        return self.version == "HTTP/1.1" or "keep-alive" in tokens

    @property
    def expects_continue(self) -> bool:
        expect = self.get("Expect")
        return self.version == "HTTP/1.1" and (expect or "").lower() == "100-continue"


def parse_head(request_line: bytes, field_lines: Sequence[bytes]) -> Head:
    """Validate a head given as its lines (each with or without its CRLF/LF)."""
    method, target, version = _request_line(_strip_eol(request_line))
    if len(field_lines) > MAX_FIELDS:
        raise BadHead(431, f"more than {MAX_FIELDS} header fields")
    fields = tuple(_field(_strip_eol(line)) for line in field_lines)
    return _assembled(method, target, version, fields)


def parse_common_head(text: str) -> Head | None:
    """``text``, a whole head through its blank line (its bytes as latin-1), in one match
    when it has the common shape: CRLF line ends, a request line and at most
    ``MAX_FIELDS`` fields as the shortcuts below take them. Then it is the Head
    ``parse_head`` makes of its lines (or raises its BadHead: a framing or ``Host``
    error); None for any other shape, which ``parse_head`` checks line by line."""
    good = _GOOD_HEAD.fullmatch(text)
    if good is None:
        return None
    fields: tuple[tuple[str, str], ...] = tuple(_GOOD_FIELD_LINE.findall(good[4]))
    if len(fields) > MAX_FIELDS:
        return None
    return _assembled(good[1], good[2], "HTTP/1.0" if good[3] == "0" else "HTTP/1.1", fields)


def _assembled(method: str, target: str, version: str,
               fields: tuple[tuple[str, str], ...]) -> Head:
    """The Head of well-formed lines, once its framing and ``Host`` are checked."""
    by_name: dict[str, list[str]] = {}
    for name, value in fields:
        by_name.setdefault(name.lower(), []).append(value)
    length = _framing(by_name)
    if len(by_name.get("host", ())) > 1:
        raise BadHead(400, "Host given more than once")
    return Head(method, target, version, fields, length, by_name)


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def _request_line(line: bytes) -> tuple[str, str, str]:
    good = _GOOD_REQUEST_LINE.fullmatch(line)
    if good is None:
        return _checked_request_line(line)
    served = "HTTP/1.0" if good[3] == b"0" else "HTTP/1.1"
    return good[1].decode("ascii"), good[2].decode("ascii"), served


def _checked_request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadHead(400, "the request line must be METHOD SP /path SP HTTP/1.1")
    method, target, version = parts
    if not _METHOD.fullmatch(method):
        raise BadHead(400, "the method must be a token")
    if not _TARGET.fullmatch(target):
        raise BadHead(400, "the request target must be a path of printable ASCII")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise BadHead(400, "malformed HTTP version")
    if match[1] != b"1":
        raise BadHead(505, "only HTTP/1.0 and HTTP/1.1 are served")
    served = "HTTP/1.0" if match[2] == b"0" else "HTTP/1.1"
    return method.decode("ascii"), target.decode("ascii"), served


def _field(line: bytes) -> tuple[str, str]:
    good = _GOOD_FIELD.fullmatch(line)
    if good is None:
        return _checked_field(line)
    return good[1].decode("ascii"), good[2].decode("ascii")


def _checked_field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise BadHead(400, "header folding is not accepted")
    name, colon, value = line.partition(b":")
    if not colon or not _NAME.fullmatch(name):
        raise BadHead(400, "a header field must be NAME: VALUE, the name a token")
    value = value.strip(b" \t")
    if not _VALUE.fullmatch(value):
        raise BadHead(400, "header values must be printable ASCII")
    return name.decode("ascii"), value.decode("ascii")


def _framing(by_name: Mapping[str, list[str]]) -> int:
    lengths = by_name.get("content-length", [])
    if by_name.get("transfer-encoding"):
        if lengths:
            raise BadHead(400, "Content-Length and Transfer-Encoding together")
        raise BadHead(411, "send the body with a Content-Length")
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise BadHead(400, "Content-Length given more than once")
    value = lengths[0]
    if not value.isascii() or not value.isdigit():
        raise BadHead(400, "Content-Length must be a non-negative integer")
    if len(value) > MAX_LENGTH_DIGITS:
        raise BadHead(413, f"Content-Length has more than {MAX_LENGTH_DIGITS} digits")
    return int(value)


def loopback_host(host: str | None) -> bool:
    """True if a ``Host`` value names this machine's loopback: ``localhost``,
    127.0.0.0/8 or ``[::1]``, each with an optional port.

    No ``Host`` at all is allowed: every browser sends one, and a web page reaching a
    loopback port through DNS rebinding sends its own site's name, which this refuses.
    """
    if not host:
        return True
    if host.startswith("["):
        literal, bracket, rest = host[1:].partition("]")
        return bool(bracket) and _port_ok(rest) and _address_is(literal, _ipv6_loopback)
    name, colon, port = host.partition(":")
    if colon and not _port_ok(":" + port):
        return False
    return name.lower().rstrip(".") == "localhost" or _address_is(name, _ipv4_loopback)


def _ipv6_loopback(text: str) -> bool:
    return ipaddress.IPv6Address(text) == _IPV6_LOOPBACK


def _ipv4_loopback(text: str) -> bool:
    return ipaddress.IPv4Address(text).is_loopback


def _address_is(text: str, test: Callable[[str], bool]) -> bool:
    try:
        return test(text)
    except ValueError:  # not an address at all
        return False


def _port_ok(rest: str) -> bool:
    return not rest or (rest.startswith(":") and bool(_PORT.fullmatch(rest[1:])))
