"""The TCP metrics listener: /metrics and the status page, GET/HEAD only, port 0."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from volplugd.control import TcpMetricsServer, make_metrics_app


def _metrics() -> tuple[bytes, str]:
    return b"volplugd_up 1\n", "text/plain; version=0.0.4"


def _page() -> bytes:
    return b"<html>status</html>"


@pytest.fixture
def metrics_server() -> Iterator[TcpMetricsServer]:
    seen: list[tuple[str, int]] = []
    server = TcpMetricsServer(_metrics, _page, listen="127.0.0.1:0",
                              on_request=lambda r, s: seen.append((r, s)))
    server.start()
    server.seen = seen  # type: ignore[attr-defined]
    yield server
    server.stop()
    server.join(5.0)
    assert not server.is_alive()


def _get(server: TcpMetricsServer, method: str, target: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, target)
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def test_port_zero_binds_a_free_port(metrics_server: TcpMetricsServer) -> None:
    """port 0 picks a port; .port tells which."""
    assert metrics_server.port > 0


def test_metrics_and_status_page(metrics_server: TcpMetricsServer) -> None:
    """GET /metrics: the exposition; GET /: the HTML status page."""
    resp = _get(metrics_server, "GET", "/metrics")
    assert (resp.status, resp.body) == (200, b"volplugd_up 1\n")  # type: ignore[attr-defined]
    assert resp.getheader("Content-Type") == "text/plain; version=0.0.4"
    page = _get(metrics_server, "GET", "/")
    assert page.body == b"<html>status</html>"  # type: ignore[attr-defined]
    assert page.getheader("Content-Type") == "text/html; charset=utf-8"
    assert page.getheader("Content-Security-Policy") == (
        "default-src 'none'; style-src 'unsafe-inline'")
    assert page.getheader("X-Content-Type-Options") == "nosniff"
    assert metrics_server.seen == [("/metrics", 200), ("/", 200)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_nothing_but_reads_on_tcp(metrics_server: TcpMetricsServer, method: str) -> None:
    """Any method but GET/HEAD is 405 on TCP, before any app code runs."""
    resp = _get(metrics_server, method, "/v1/rescan")
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET, HEAD"
    assert json.loads(resp.body)["error"]["code"] == "method_not_allowed"  # type: ignore[attr-defined]
    assert metrics_server.seen == []  # type: ignore[attr-defined]


def test_control_routes_are_not_on_tcp(metrics_server: TcpMetricsServer) -> None:
    """The control API is not served on TCP: 404 not_found."""
    resp = _get(metrics_server, "GET", "/v1/plugins")
    assert resp.status == 404
    assert json.loads(resp.body)["error"]["code"] == "not_found"  # type: ignore[attr-defined]


def test_head_on_metrics(metrics_server: TcpMetricsServer) -> None:
    """HEAD /metrics: length, no body."""
    resp = _get(metrics_server, "HEAD", "/metrics")
    assert resp.status == 200
    assert resp.getheader("Content-Length") == "14"


def test_a_wsgi_app_with_host_and_port() -> None:
    """The other form: any WSGI app, host and port given apart; still read-only."""
    server = TcpMetricsServer(make_metrics_app(_metrics, _page), host="127.0.0.1", port=0)
    server.start()
    try:
        assert _get(server, "GET", "/metrics").status == 200
        assert _get(server, "POST", "/metrics").status == 405
    finally:
        server.stop()
        server.join(5.0)
        assert not server.is_alive()


def test_inherited_listening_socket_is_served() -> None:
    """Socket activation: a listening TCP socket handed over is served and then closed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = TcpMetricsServer(_metrics, _page, sock=sock)
    server.start()
    try:
        assert server.port == sock.getsockname()[1]
        assert _get(server, "GET", "/").status == 200
    finally:
        server.stop()
        server.join(5.0)
        assert not server.is_alive()
    assert sock.fileno() == -1
