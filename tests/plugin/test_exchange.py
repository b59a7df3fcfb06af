"""The Exchange on its own, without a socket: bytes in, a value or a typed error out."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from volplugd.plugin import (
    ACTIVATE,
    LIST,
    PluginAddress,
    PluginBadResponse,
    PluginError,
    PluginRemoved,
    PluginTimeout,
    PluginUnreachable,
)
from volplugd.plugin.exchange import MAX_HEAD, Exchange, request_bytes
from volplugd.plugin.protocol import ACCEPT, CONTENT_TYPE, user_agent

UNIX = PluginAddress("unix", "/run/docker/plugins/foo.sock")
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\n{}"
SEND = f"sending request to volume plugin foo endpoint {LIST}"
READ = "reading response body from volume plugin foo"


def _raw(answer: Exchange[Any]) -> tuple[int, str | None, bytes]:
    return answer.status, answer.content_type, answer.body


def make(endpoint: str = LIST, *, limit: int = 1024, seconds: float = 2.0,
         address: PluginAddress = UNIX) -> Exchange[tuple[int, str | None, bytes]]:
    return Exchange("foo", address, endpoint, "", b"", seconds=seconds, started=100.0,
                    limit=limit, interpret=_raw)


def error_of(exchange: Exchange[Any]) -> tuple[type[PluginError], str]:
    """The finished exchange's error: (class, message)."""
    assert exchange.finished
    result = exchange.result()
    assert isinstance(result, PluginError), result
    return type(result), str(result)


def _error(exchange: Exchange[Any]) -> PluginError:
    result = exchange.result()
    assert isinstance(result, PluginError)
    return result


# -- the request --------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "host"), [
    (UNIX, "plugin"),
    (PluginAddress("tcp", "10.0.0.1:8080"), "10.0.0.1:8080"),
    (PluginAddress("http", "example.org:80"), "example.org"),
    (PluginAddress("https", "example.org:443"), "example.org"),
    (PluginAddress("https", "[::1]:8443"), "[::1]:8443"),
], ids=["unix", "tcp", "http-default-port", "https-default-port", "ipv6"])
def test_request_bytes_name_the_host_as_go_does(address: PluginAddress, host: str) -> None:
    """Host is "plugin" on a unix socket, else host[:port] without a default port."""
    assert request_bytes("/VolumeDriver.Get", address, b'{"Name":"v"}') == (
        f"POST /VolumeDriver.Get HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent()}\r\n"
        f"Content-Length: 12\r\nContent-Type: {CONTENT_TYPE}\r\nAccept: {ACCEPT}\r\n\r\n"
        '{"Name":"v"}').encode()


# -- whole answers ----------------------------------------------------------------------------

def test_an_answer_fed_byte_by_byte_is_whole_and_keeps_the_connection() -> None:
    exchange = make()
    for i in range(len(OK)):
        assert not exchange.finished
        exchange.receive(OK[i:i + 1])
    assert (exchange.finished, exchange.keep, exchange.result()) == (
        True, True, (200, "text/html", b"{}"))


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
], ids=["connection-close", "http-1.0"])
def test_an_answer_that_closes_does_not_keep_the_connection(raw: bytes) -> None:
    exchange = make()
    exchange.receive(raw)
    assert (exchange.finished, exchange.keep, exchange.result()) == (
        True, False, (200, None, b"{}"))


def test_a_body_without_length_ends_at_eof() -> None:
    exchange = make()
    exchange.receive(b"HTTP/1.0 404 Not Found\r\n\r\nno such")
    assert not exchange.finished
    exchange.closed()
    assert (exchange.keep, exchange.result()) == (False, (404, None, b"no such"))


def test_stray_bytes_after_an_answer_keep_the_answer_not_the_connection() -> None:
    exchange = make()
    exchange.receive(OK + b"\x00garbage")
    assert (exchange.keep, exchange.result()) == (False, (200, "text/html", b"{}"))


def test_a_second_answer_in_the_same_read_is_not_taken_for_the_first() -> None:
    exchange = make()
    exchange.receive(OK + b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nlate")
    assert (exchange.keep, exchange.result()) == (False, (200, "text/html", b"{}"))


def test_an_interim_answer_is_skipped() -> None:
    """A 100 Continue before the answer is not the answer (http.client skips it too)."""
    exchange = make()
    exchange.receive(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert not exchange.finished
    exchange.receive(OK)
    assert (exchange.keep, exchange.result()) == (True, (200, "text/html", b"{}"))


def test_a_switching_protocols_answer_ends_the_call_and_the_connection() -> None:
    exchange = make()
    exchange.receive(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                     b"Connection: Upgrade\r\n\r\n\x00\x01")
    assert (exchange.finished, exchange.keep, exchange.result()) == (True, False,
                                                                    (101, None, b""))


# -- failures, worded as the blocking client words them ---------------------------------------

@pytest.mark.parametrize(("fed", "words"), [(b"", SEND), (b"HTTP/1.1 200 OK\r\nContent-Length: 9"
                                                         b"\r\n\r\n{", READ)],
                         ids=["before-the-head", "mid-body"])
def test_eof_before_a_whole_answer_is_unreachable(fed: bytes, words: str) -> None:
    exchange = make()
    if fed:
        exchange.receive(fed)
    exchange.closed()
    assert error_of(exchange) == (PluginUnreachable, f"{words}: EOF: the plugin closed the "
                                                     "connection before a complete answer")
    assert not exchange.keep


def test_a_declared_body_over_the_cap_fails_with_the_head() -> None:
    exchange = make(limit=10)
    exchange.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
    assert error_of(exchange) == (PluginBadResponse, f"{READ}: answer of 11 bytes is larger "
                                                     "than the limit of 10 bytes")


def test_a_chunked_body_over_the_cap_fails_as_it_passes_it() -> None:
    exchange = make(limit=10)
    exchange.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
    assert not exchange.finished
    exchange.receive(b"3\r\n9ab\r\n")
    assert error_of(exchange) == (PluginBadResponse, f"{READ}: answer is larger than the "
                                                     "limit of 10 bytes")


def test_a_head_over_64_kib_is_not_http() -> None:
    exchange = make(ACTIVATE)
    exchange.receive(b"HTTP/1.1 200 OK\r\n")
    while not exchange.finished:
        exchange.receive(b"X-Pad: " + b"x" * 1024 + b"\r\n")
    assert error_of(exchange) == (PluginBadResponse, (
        "sending request to plugin foo activation endpoint: not an HTTP answer (LineTooLong: "
        f"got more than {MAX_HEAD} bytes when reading header section)"))


def test_bytes_that_are_not_http_name_their_first_line() -> None:
    exchange = make()
    exchange.receive(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    assert error_of(exchange) == (PluginBadResponse, f"{SEND}: not an HTTP answer "
                                                     "(BadStatusLine: SSH-2.0-OpenSSH_9.2\r\n)")


def test_a_broken_head_later_on_gives_the_parsers_words() -> None:
    exchange = make()
    exchange.receive(b"HTTP/1.1 200 OK\r\n")
    exchange.receive(b"Bad Header\r\n\r\n")
    kind, text = error_of(exchange)
    assert (kind, text.startswith(f"{SEND}: not an HTTP answer (HTTPException: ")) == (
        PluginBadResponse, True)


@pytest.mark.parametrize(("error", "kind", "text"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), PluginUnreachable,
     f"{SEND}: dial unix {UNIX.target}: connect: connection refused"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), PluginRemoved,
     "foo: plugin is no longer available (shut down?)"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), PluginUnreachable,
     f"{SEND}: EOF: the plugin closed the connection before a complete answer"),
    (PermissionError(errno.EACCES, "Permission denied"), PluginUnreachable,
     f"{SEND}: permission denied"),
    (TimeoutError("timed out"), PluginTimeout,
     f"{SEND}: timed out: no complete answer within 2 s"),
    (ValueError("odd"), PluginError, f"{SEND}: odd"),
], ids=["refused", "gone", "broken", "os", "timeout", "other"])
def test_socket_errors_become_typed_errors_with_their_cause(
        error: BaseException, kind: type[PluginError], text: str) -> None:
    exchange = make()
    exchange.fail(error, now=100.5)
    assert error_of(exchange) == (kind, text)
    assert _error(exchange).__cause__ is error


def test_any_error_after_the_deadline_is_a_timeout() -> None:
    exchange = make(seconds=0.25)
    exchange.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    exchange.fail(ConnectionResetError(errno.ECONNRESET, "reset"), now=100.25)
    assert error_of(exchange) == (PluginTimeout, f"{READ}: timed out: no complete answer "
                                                 "within 0.25 s")


def test_time_out_names_the_phase_and_the_seconds() -> None:
    exchange = make(ACTIVATE, seconds=5)
    assert exchange.left(101.0) == 4.0
    exchange.time_out()
    assert error_of(exchange) == (PluginTimeout, "sending request to plugin foo activation "
                                                 "endpoint: timed out: no complete answer "
                                                 "within 5 s")
    assert isinstance(_error(exchange).__cause__, TimeoutError)
    assert isinstance(exchange.result(), PluginTimeout)
