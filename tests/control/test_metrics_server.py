"""The TCP metrics listener: /metrics and the status page, GET/HEAD only, port 0; the
loopback Host rule (421), silent connections that cannot block a scrape, the page switch."""

from __future__ import annotations

import http.client
import json
import select
import socket
from collections.abc import Iterator

import pytest

from tests.waiting import wait_until
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


def test_an_app_with_host_and_port() -> None:
    """The other form: an app, host and port given apart; still read-only."""
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


# --- refusing before serving: idle connections, Host, the status page switch ------------


def _raw(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_silent_connections_do_not_block_metrics() -> None:
    """16 connections that never send a request fill every slot; a scrape still gets
    its answer, because the longest-waiting silent connection is shut down for it."""
    server = TcpMetricsServer(_metrics, _page, listen="127.0.0.1:0",
                              first_request_timeout=60.0)
    server.start()
    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
              for _ in range(16)]
    try:
        wait_until(lambda: server.connections == 16, message="every slot taken")
        assert _get(server, "GET", "/metrics").status == 200
        assert _closed_by_server(silent[0])
        wait_until(lambda: server.connections == 15, message="the scrape's connection ends")
        silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        wait_until(lambda: server.connections == 16, message="every slot taken again")
        assert _get(server, "GET", "/metrics").status == 200
        assert _closed_by_server(silent[1])  # the next-longest waiting
        assert not any(_closed_by_server(s) for s in select.select(silent[2:], [], [], 0)[0])
    finally:
        for sock in silent:
            sock.close()
        server.stop()
        server.join(5.0)
        assert not server.is_alive()


def test_first_request_deadline_is_apart_from_the_keep_alive_timeout() -> None:
    """A connection that sends nothing is closed at first_request_timeout; a keep-alive
    connection idle for longer than that is still served (read_timeout is its bound)."""
    server = TcpMetricsServer(_metrics, _page, listen="127.0.0.1:0",
                              first_request_timeout=0.3, read_timeout=30.0)
    server.start()
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        kept.request("GET", "/metrics")
        kept.getresponse().read()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
            assert _closed_by_server(silent)  # idle from after kept's answer until now
        kept.request("GET", "/metrics")
        resp = kept.getresponse()
        resp.read()
        assert resp.status == 200
    finally:
        kept.close()
        server.stop()
        server.join(5.0)


@pytest.mark.parametrize("host", ["localhost", "localhost:9612", "127.0.0.1", "127.1.2.3:80",
                                  "[::1]:9612"])
def test_loopback_listener_serves_loopback_hosts(metrics_server: TcpMetricsServer,
                                                 host: str) -> None:
    """Bound to 127.0.0.1: a loopback Host is served."""
    raw = _raw(metrics_server.port, b"GET /metrics HTTP/1.1\r\nHost: %s\r\n"
                                    b"Connection: close\r\n\r\n" % host.encode())
    assert raw.startswith(b"HTTP/1.1 200 ")


def test_loopback_listener_serves_a_request_without_host(metrics_server: TcpMetricsServer
                                                         ) -> None:
    """No Host at all (an HTTP/1.0 tool, never a browser) is served."""
    assert _raw(metrics_server.port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(
        b"HTTP/1.1 200 ")


@pytest.mark.parametrize("target", ["/", "/metrics"])
def test_loopback_listener_refuses_a_foreign_host_with_421(metrics_server: TcpMetricsServer,
                                                           target: str) -> None:
    """DNS rebinding: a page of evil.example reaching 127.0.0.1 sends its own Host and
    gets 421 misdirected_request, not the page or the metrics; HEAD gets no body."""
    raw = _raw(metrics_server.port, b"GET %s HTTP/1.1\r\nHost: evil.example:9612\r\n\r\n"
               % target.encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
    assert b"\r\nConnection: close" in head
    assert json.loads(body) == {"error": {
        "code": "misdirected_request",
        "message": "this listener answers only requests for localhost, 127.0.0.0/8 or [::1]"}}
    raw = _raw(metrics_server.port, b"HEAD / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 421 ")
    assert raw.endswith(b"\r\n\r\n")
    assert metrics_server.seen == []  # type: ignore[attr-defined]
    assert _get(metrics_server, "GET", "/metrics").status == 200  # still serving


def test_listener_bound_elsewhere_serves_any_host() -> None:
    """Bound to 0.0.0.0 the operator chose to expose it: any Host is served."""
    server = TcpMetricsServer(_metrics, _page, listen="0.0.0.0:0")
    server.start()
    try:
        raw = _raw(server.port, b"GET / HTTP/1.1\r\nHost: metrics.example.com\r\n"
                                b"Connection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 ")
    finally:
        server.stop()
        server.join(5.0)


def test_status_page_can_be_turned_off() -> None:
    """show_status_page=False: / is 404 not_found, /metrics is still served."""
    server = TcpMetricsServer(_metrics, _page, listen="127.0.0.1:0", show_status_page=False)
    server.start()
    try:
        page = _get(server, "GET", "/")
        assert page.status == 404
        assert json.loads(page.body)["error"]["code"] == "not_found"  # type: ignore[attr-defined]
        assert _get(server, "GET", "/metrics").status == 200
    finally:
        server.stop()
        server.join(5.0)
