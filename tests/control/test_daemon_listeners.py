"""The real daemon wires the listeners' refusals: metrics.status_page, the loopback Host
rule on its TCP listener, and the per-uid bound on its control socket."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.control.otheruser import CAN_SWITCH_USER, NOBODY, Peer
from tests.harness import Daemon, call

pytestmark = pytest.mark.system


def _tcp(port: int, target: str, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                     .encode())
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_status_page_off_and_foreign_host_refused(daemon: Callable[..., Daemon]) -> None:
    """metrics.status_page = false: / is 404, /metrics served; Host evil.example: 421."""
    d = daemon(args=["--metrics-listen", "127.0.0.1:0"],
               config="[metrics]\nstatus_page = false\n").start()
    port = d.wait_log("metrics_listening")["port"]
    assert _tcp(port, "/", "localhost").startswith(b"HTTP/1.1 404 ")
    assert _tcp(port, "/metrics", f"127.0.0.1:{port}").startswith(b"HTTP/1.1 200 ")
    assert _tcp(port, "/metrics", "evil.example").startswith(b"HTTP/1.1 421 ")
    assert d.stop() == 0


@pytest.mark.skipif(not CAN_SWITCH_USER, reason="needs root and setpriv to act as another user")
def test_daemon_bounds_connections_per_uid(daemon: Callable[..., Daemon], short_tmp: Path,
                                           peer_script: Path, peers: list[Peer]) -> None:
    """20 silent connections of uid 65534 to the daemon's socket: 4 get 503
    too_many_connections at once; root is served meanwhile, and /metrics counts the 4."""
    short_tmp.chmod(0o755)
    d = daemon(config='[control]\nmode = "0666"\n').start()
    hog = Peer(peer_script, NOBODY, d.socket, "hold", "20")
    peers.append(hog)
    assert hog.line() == "connected"
    assert call(d.socket, "GET", "/v1/health")[0] == 200
    hog.tell()
    states = hog.report()
    assert states.count({"status": 503, "code": "too_many_connections"}) == 4
    assert d.wait_log("control_connection_refused")["reason"] == "uid_limit"
    status, body = call(d.socket, "GET", "/metrics")
    refused = {s.labels["reason"]: s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples if s.name == "volplugd_control_connections_refused_total"}
    assert (status, refused) == (200, {"uid_limit": 4.0, "full": 0.0})
    assert d.stop() == 0
