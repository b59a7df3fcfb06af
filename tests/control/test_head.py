"""The strict head parser and the loopback Host rule as pure functions, then every kind
of malformed head through a live control server: a 4xx, a closed connection, no
error-level log record, and the server still answers."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.control.conftest import build_app, serving
from tests.control.helpers import fetch, json_of, raw_exchange, status_of
from tests.control.memory import MemoryCommands
from volplugd.control import ControlServer
from volplugd.serving import head
from volplugd.serving.head import MAX_FIELDS, BadHead, loopback_host, parse_head
from volplugd.serving.wire import MAX_HEAD_BYTES, MAX_REQUEST_LINE, HeadTooLarge, Wire


def _parse(raw: bytes):  # type: ignore[no-untyped-def]
    line, *fields = raw.split(b"\r\n")
    return parse_head(line + b"\r\n", [f + b"\r\n" for f in fields])


def test_a_well_formed_head_is_parsed() -> None:
    """Method, target, version, fields in order, Content-Length and keep-alive."""
    head = _parse(b"POST /v1/rescan?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n"
                  b"X-A: 1\r\nx-a:  2 ")
    assert (head.method, head.target, head.version) == ("POST", "/v1/rescan?x=1", "HTTP/1.1")
    assert head.fields == (("Host", "x"), ("Content-Length", "12"), ("X-A", "1"), ("x-a", "2"))
    assert head.by_name["x-a"] == ["1", "2"]
    assert head.content_length == 12
    assert head.keep_alive
    assert not head.expects_continue


@pytest.mark.parametrize(("raw", "keep"), [
    (b"GET / HTTP/1.0", False),
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive", True),
    (b"GET / HTTP/1.1\r\nConnection: foo, close", False),
    (b"GET / HTTP/1.5", True),  # a later 1.x is served as 1.1
])
def test_keep_alive_follows_version_and_connection(raw: bytes, keep: bool) -> None:
    """HTTP/1.1 keeps the connection unless told close; HTTP/1.0 only if asked."""
    assert _parse(raw).keep_alive is keep


@pytest.mark.parametrize(("raw", "status", "message"), [
    (b"GARBAGE", 400, "the request line must be METHOD SP /path SP HTTP/1.1"),
    (b"GET  / HTTP/1.1", 400, "the request line must be METHOD SP /path SP HTTP/1.1"),
    (b"GET /", 400, "the request line must be METHOD SP /path SP HTTP/1.1"),
    (b"G\x00T / HTTP/1.1", 400, "the method must be a token"),
    (b"GET http://evil/ HTTP/1.1", 400, "the request target must be a path of printable ASCII"),
    (b"GET /caf\xc3\xa9 HTTP/1.1", 400, "the request target must be a path of printable ASCII"),
    (b"GET /\xff HTTP/1.1", 400, "the request target must be a path of printable ASCII"),
    (b"GET / HTTP/1.1111", 400, "malformed HTTP version"),
    (b"GET / HTTP/" + b"9" * 5000 + b".0", 400, "malformed HTTP version"),
    (b"GET / http/1.1", 400, "malformed HTTP version"),
    (b"GET / HTTP/2.0", 505, "only HTTP/1.0 and HTTP/1.1 are served"),
    (b"GET / HTTP/0.9", 505, "only HTTP/1.0 and HTTP/1.1 are served"),
    (b"GET / HTTP/1.1\r\nX: a\r\n b", 400, "header folding is not accepted"),
    (b"GET / HTTP/1.1\r\nX : a", 400, "a header field must be NAME: VALUE, the name a token"),
    (b"GET / HTTP/1.1\r\nno colon", 400, "a header field must be NAME: VALUE, the name a token"),
    (b"GET / HTTP/1.1\r\n: empty", 400, "a header field must be NAME: VALUE, the name a token"),
    (b"GET / HTTP/1.1\r\nX: a\x00b", 400, "header values must be printable ASCII"),
    (b"GET / HTTP/1.1\r\nX: \xff\xfe", 400, "header values must be printable ASCII"),
    (b"GET / HTTP/1.1\r\nX: caf\xc3\xa9", 400, "header values must be printable ASCII"),
    (b"GET / HTTP/1.1\r\nX: a\rb", 400, "header values must be printable ASCII"),
    (b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 5000, 413,
     "Content-Length has more than 18 digits"),
    (b"GET / HTTP/1.1\r\nContent-Length: -3", 400,
     "Content-Length must be a non-negative integer"),
    (b"GET / HTTP/1.1\r\nContent-Length: 1e3", 400,
     "Content-Length must be a non-negative integer"),
    (b"GET / HTTP/1.1\r\nContent-Length: 5, 5", 400,
     "Content-Length must be a non-negative integer"),
    (b"GET / HTTP/1.1\r\nContent-Length: \xd9\xa3", 400, "header values must be printable ASCII"),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1", 400,
     "Content-Length given more than once"),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked", 411, "send the body with a Content-Length"),
    (b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", 400,
     "Content-Length and Transfer-Encoding together"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400, "Host given more than once"),
    (b"GET / HTTP/1.1" + b"\r\nX: y" * 101, 431, "more than 100 header fields"),
])
def test_malformed_heads_are_refused_with_the_right_status(raw: bytes, status: int,
                                                           message: str) -> None:
    """Each malformed head raises BadHead with its exact status and message."""
    with pytest.raises(BadHead) as info:
        _parse(raw)
    assert (info.value.status, info.value.message) == (status, message)


@pytest.mark.parametrize(("host", "allowed"), [
    (None, True), ("", True), ("localhost", True), ("LocalHost:9612", True),
    ("localhost.", True), ("127.0.0.1", True), ("127.0.0.1:9612", True),
    ("127.200.3.4:1", True), ("[::1]", True), ("[::1]:9612", True),
    ("[0:0:0:0:0:0:0:1]:80", True),
    ("evil.example", False), ("evil.example:9612", False), ("localhost.evil.example", False),
    ("127.0.0.1.nip.io", False), ("10.0.0.1", False), ("0.0.0.0", False),
    ("[::2]", False), ("[::1", False), ("::1", False), ("[::1]x", False),
    ("localhost:", False), ("localhost:abc", False), ("localhost:123456", False),
    ("127.0.0.1:80:80", False), ("[::ffff:127.0.0.1]", False), ("0127.0.0.1", False),
])
def test_loopback_host_rule(host: str | None, allowed: bool) -> None:
    """Only loopback names and addresses (any port) pass; a missing Host passes."""
    assert loopback_host(host) is allowed


# --- through a live server ------------------------------------------------------------

MALFORMED = [
    (b"POST /v1/rescan HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
    (b"POST /v1/rescan HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /v1/rescan HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST /v1/rescan HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"ab", 400),
    (b"POST /v1/rescan HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000, 431),  # and the client closes
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n", 400),
    (b"GET /\xff\xfe HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: \xc3\x28\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
    (b"GET /v1/health\x00 HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n", 400),
    (b"GET / HTTP/99999999999999999999.0\r\n\r\n", 400),
    (b"GET / HTTP/1.1.1\r\n\r\n", 400),
    (b"GET / HTTP/3.0\r\n\r\n", 505),
    (b"\r\n\r\n", 400),
    (b"GET /v1/health HTTP/1.1\r\nHost: a", 400),  # the head ends early (client closed)
    (b"GET /v1/health HT", 400),
]


@pytest.fixture
def control(sockdir: str, commands: MemoryCommands) -> Iterator[ControlServer]:
    with serving(build_app(commands), os.path.join(sockdir, "c.sock")) as server:
        yield server


@pytest.mark.parametrize(("raw", "status"), MALFORMED)
def test_malformed_heads_get_a_4xx_and_no_traceback(control: ControlServer, raw: bytes,
                                                    status: int) -> None:
    """Through the socket: the exact status as JSON, the connection closed, no log
    record at error level, and the next client is served."""
    assert control.path is not None
    with capture_logs() as logs:
        answer = raw_exchange(control.path, raw, half_close=True)
        assert status_of(answer) == status
        assert json_of(answer)["error"]["code"] in {"invalid_request", "request_too_large"}
        assert b"\r\nConnection: close\r\n" in answer
        assert fetch(control.path, "GET", "/v1/health").status == 200
    assert [e for e in logs if e["log_level"] in {"error", "critical"}] == []



# --- the one-match shortcuts agree with the step-by-step checks ---------------------

_TOKEN = st.sampled_from([b"GET", b"HEAD", b"POST", b"Host", b"X-A", b"content-length",
                          b"G\x00T", b"", b"\xc3\xa9", b"a b"])
_ANY = st.binary(max_size=40)
# Mostly what a field or path may hold, and now and then a byte that it may not.
_ODD = st.lists(st.sampled_from([b"a", b"Z", b"/", b"~", b" ", b"\t", b":", b"\x21", b"\x7e",
                                 b"\x7f", b"\x1f", b"\x00", b"\xff", b"\r", b"\n"]),
                max_size=12).map(b"".join)


def _outcome(parse: Callable[[bytes], tuple[str, ...]], line: bytes) -> object:
    try:
        return parse(line)
    except BadHead as bad:
        return (bad.status, bad.message)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_ANY, st.builds(lambda m, t, v: m + b" " + t + b" " + v, _TOKEN,
                                 st.one_of(_ANY, _ODD.map(lambda t: b"/" + t)),
                                 st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                                                  b"HTTP/1.9", b"http/1.1", b"HTTP/1.1 "]))))
def test_the_request_line_shortcut_agrees_with_the_checks(line: bytes) -> None:
    assert _outcome(head._request_line, line) == _outcome(head._checked_request_line, line)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_ANY, st.builds(lambda n, sep, v, tail: n + b":" + sep + v + tail, _TOKEN,
                                 st.sampled_from([b"", b" ", b"\t", b"  "]), st.one_of(_ANY, _ODD),
                                 st.sampled_from([b"", b" ", b"\t ", b"\r"]))))
def test_the_field_shortcut_agrees_with_the_checks(line: bytes) -> None:
    assert _outcome(head._field, line) == _outcome(head._checked_field, line)


def _read(buffer: bytes, by_lines: bool = False) -> object:
    """What a Wire reads from ``buffer`` (the client then hung up), and what is left;
    ``by_lines``: without the whole-head shortcut."""
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        wire = Wire(ours, 5.0)
        wire.deadline = time.monotonic() + 5
        wire.buf += buffer
        try:
            got: object = wire.read_head_by_lines() if by_lines else wire.read_head()
        except BadHead as bad:
            got = (bad.status, bad.message)
        except HeadTooLarge:
            got = "too large"
        return got, bytes(wire.buf)


_LINE = st.one_of(
    st.sampled_from([b"GET /v1/health HTTP/1.1", b"POST /v1/rescan HTTP/1.0", b"GET / HTTP/1.9",
                     b"Host: localhost", b"Content-Length: 0", b"Content-Length: 12",
                     b"content-length: 1", b"Transfer-Encoding: chunked", b"Host: b",
                     b"X-A:\t 1 \t", b"x:", b"Connection: close", b"Expect: 100-continue",
                     b"", b" folded", b"X : a", b"GET  / HTTP/1.1", b"GET / HTTP/2.0"]),
    _ODD, _ANY)
_EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_LINE, _EOL), max_size=8).map(
    lambda lines: b"".join(line + eol for line, eol in lines)), st.sampled_from([b"", b"\r\n"]))
def test_the_whole_head_shortcut_agrees_with_reading_line_by_line(buffer: bytes,
                                                                   end: bytes) -> None:
    """``read_head`` (one match for a common head whole in the buffer) gives what
    ``read_head_by_lines`` gives: the same Head or error, the same bytes left over."""
    assert _read(buffer + end) == _read(buffer + end, by_lines=True)


def test_the_whole_head_shortcut_keeps_the_bounds() -> None:
    """At MAX_FIELDS fields the shortcut reads the head; one more, and the lines are
    read one by one, to their exact 431."""
    fields = b"".join(b"X-%d: a\r\n" % i for i in range(MAX_FIELDS))
    common = head.parse_common_head((b"GET / HTTP/1.1\r\n" + fields + b"\r\n").decode())
    assert common is not None
    assert len(common.fields) == MAX_FIELDS
    over = b"GET / HTTP/1.1\r\n" + fields + b"X-last: a\r\n\r\n"
    assert head.parse_common_head(over.decode()) is None
    assert _read(over) == ((431, f"more than {MAX_FIELDS} header fields"), over)


def test_a_head_is_taken_from_the_buffer_and_what_follows_is_kept() -> None:
    """LF or CRLF line ends; the bytes after the blank line (a body, the next request)
    stay in the buffer; a client that closes before a byte is no head at all."""
    got, left = _read(b"GET /v1/health HTTP/1.1\nHost: x\r\n\r\nbody")
    assert isinstance(got, head.Head)
    assert (got.target, got.fields, left) == ("/v1/health", (("Host", "x"),), b"body")
    assert _read(b"") == (None, b"")
    assert _read(b"GET / HTTP/1.1\r\nHost: x") == ((400, "the request head ended early"),
                                                      b"GET / HTTP/1.1\r\nHost: x")


@pytest.mark.parametrize(("buffer", "outcome"), [
    (b"GET /" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.1\r\n\r\n",
     (414, "request line is over the limit")),
    (b"GET /" + b"a" * (MAX_REQUEST_LINE + 10), (414, "request line is over the limit")),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(MAX_FIELDS + 1))
     + b"\r\n", (431, f"more than {MAX_FIELDS} header fields")),
    (b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", "too large"),
])
def test_heads_over_a_bound_are_refused_with_their_status(buffer: bytes,
                                                          outcome: object) -> None:
    """The request line, the number of fields and the head's bytes are each bounded."""
    assert _read(buffer)[0] == outcome


def test_a_head_at_every_bound_is_read() -> None:
    """MAX_FIELDS fields are accepted."""
    buffer = (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(MAX_FIELDS))
              + b"\r\n")
    got, left = _read(buffer)
    assert isinstance(got, head.Head)
    assert (len(got.fields), left) == (MAX_FIELDS, b"")
