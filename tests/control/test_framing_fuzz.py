"""Raw request framing fuzzed (hypothesis) against the live listeners: a real
ControlServer on a unix socket over fake-backed plugins, and the TCP metrics listener.

Every exchange ends with an answer whose status is below 500 (505 for a well-formed but
unsupported version), never internal_error; afterwards no log record is at error level
and the server still answers. ``raw_requests`` lives in ``fuzz.py`` for reuse.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from structlog.testing import capture_logs

from tests.control.conftest import Live
from tests.control.fuzz import raw_requests
from tests.control.helpers import fetch
from tests.control.peer_client import read_all
from tests.waiting import wait_until
from volplugd.control import TcpMetricsServer

EXAMPLES = 300
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def _exchange(connect: Callable[[], socket.socket], data: bytes) -> bytes:
    """Send, half-close (the server sees the end of what we send), read to the close."""
    with connect() as sock:
        sock.settimeout(15)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early (a 431 while we still sent): the answer is there
        return read_all(sock)


def _check(answer: bytes, sent: bytes) -> None:
    if not sent:
        assert answer == b""
        return
    match = _STATUS.match(answer)
    assert match is not None, f"no HTTP answer to {sent[:200]!r}: {answer[:200]!r}"
    status = int(match[1])
    assert status < 500 or status == 505, (sent[:300], answer[:300])
    assert b"internal_error" not in answer, (sent[:300], answer[:300])


def _fuzz(connect: Callable[[], socket.socket]) -> None:
    @given(data=raw_requests())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def one(data: bytes) -> None:
        _check(_exchange(connect, data), data)

    one()


def _errors(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["log_level"] in {"error", "critical", "exception"}]


def test_fuzzed_framing_on_the_control_socket(live: Live) -> None:
    """Raw heads against the control socket: each a sub-500 answer; no error-level log
    record; /v1/health answered and every connection closed afterwards."""
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(live.path)
        return sock

    with capture_logs() as logs:
        _fuzz(connect)
    assert _errors(logs) == []
    assert fetch(live.path, "GET", "/v1/health").status == 200
    wait_until(lambda: live.server.connections == 0, message="every connection to end")


@pytest.fixture
def tcp() -> Iterator[TcpMetricsServer]:
    server = TcpMetricsServer(lambda: (b"volplugd_up 1\n", "text/plain; version=0.0.4"),
                              lambda: b"<html>status</html>", listen="127.0.0.1:0")
    server.start()
    yield server
    server.stop()
    server.join(5.0)
    assert not server.is_alive()


def test_fuzzed_framing_on_the_tcp_listener(tcp: TcpMetricsServer) -> None:
    """The same against the TCP metrics listener (read-only, loopback Host rule)."""
    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", tcp.port))

    with capture_logs() as logs:
        _fuzz(connect)
    assert _errors(logs) == []
    assert _exchange(connect, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").startswith(
        b"HTTP/1.1 200 ")
    wait_until(lambda: tcp.connections == 0, message="every connection to end")
