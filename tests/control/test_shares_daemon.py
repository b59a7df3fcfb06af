"""Fair shares on the real daemon, against another uid (uid 65534 through ``setpriv``):
its follow streams cannot keep root's out, and its refusals cost one log line per 10 s
while the metrics count every one."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.control.otheruser import CAN_SWITCH_USER, NOBODY, Peer
from tests.fakeplugin import FakePlugin
from tests.harness import Daemon, call
from tests.test_gateway import Client
from tests.waiting import wait_until

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(not CAN_SWITCH_USER,
                                 reason="needs root and setpriv to act as another user")]

STREAM = {"status": 200, "code": None, "message": None}


def _requests_total(d: Daemon, route: str, code: str) -> float:
    status, body = call(d.socket, "GET", "/metrics")
    assert status == 200
    return sum(s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples if s.name == "volplugd_control_requests_total"
               and s.labels == {"route": route, "code": code})


def _forbidden_lines(d: Daemon) -> list[dict[str, object]]:
    return [e for e in d.log_events() if e.get("event") == "control_request_forbidden"]


def test_another_user_holding_its_follow_streams_never_keeps_root_out(
        daemon: Callable[..., Daemon], short_tmp: Path, peer_script: Path,
        peers: list[Peer]) -> None:
    """uid 65534 (a read group's member) opens follow streams and reads nothing but their
    heads: 4 are served, the 5th gets the exact 429 (logged, counted); root still gets
    its own stream, which carries the next event, and every other request is served."""
    short_tmp.chmod(0o755)
    d = daemon(config='[control]\nmode = "0666"\nread_groups = ["nogroup"]\n').start()
    hog = Peer(peer_script, NOBODY, d.socket, "follow", "5")
    peers.append(hog)
    assert hog.report() == [STREAM] * 4 + [{
        "status": 429, "code": "too_many_streams",
        "message": "this user has as many follow streams open as one user may; close one "
                   "and try again"}]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as root:
        root.settimeout(30)
        root.connect(d.socket)
        root.sendall(b"GET /v1/events?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += root.recv(4096)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert d.call("POST", "/v1/rescan")[0] == 200
        events: list[dict[str, object]] = []
        while ("rescan", "manual") not in [(e["type"], e["reason"]) for e in events]:
            chunk = root.recv(65536)
            assert chunk, "root's stream ended"
            data += chunk
            body = data.partition(b"\r\n\r\n")[2]
            events = [json.loads(line) for line in body.split(b"\n")[:-1]]
    assert d.call("GET", "/v1/health")[0] == 200
    refused = d.wait_log("control_stream_refused")
    assert (refused["uid"], refused["reason"], refused["suppressed"]) == (
        NOBODY, "uid_limit", 0)
    assert _requests_total(d, "/v1/events", "429") == 1
    assert d.stop() == 0


def test_a_burst_of_403s_is_one_log_line_and_every_one_is_counted(
        daemon: Callable[..., Daemon], short_tmp: Path, peer_script: Path,
        peers: list[Peer]) -> None:
    """80 refused requests of uid 65534 in a burst: 80 exact 403s, one log line, 80 in
    volplugd_control_requests_total; the first refusal after the 10 s window is logged
    again and says how many were left out. Root is served all along."""
    short_tmp.chmod(0o755)
    d = daemon(config='[control]\nmode = "0666"\n').start()
    nobody = Peer(peer_script, NOBODY, d.socket, "repeat")
    peers.append(nobody)
    nobody.tell("80")
    assert nobody.report() == [{"status": 403, "code": "forbidden"}] * 80
    lines = _forbidden_lines(d)
    assert [(e["uid"], e["reason"], e["suppressed"], e["refused"]) for e in lines] == [
        (NOBODY, "forbidden", 0, 1)]
    assert _requests_total(d, "/v1/plugins", "403") == 80
    assert d.call("GET", "/v1/health")[0] == 200
    sent = 80

    def one_more() -> list[dict[str, object]] | None:
        nonlocal sent
        nobody.tell("1")
        assert nobody.report() == [{"status": 403, "code": "forbidden"}]
        sent += 1
        found = _forbidden_lines(d)
        return found if len(found) > 1 else None

    lines = wait_until(one_more, timeout=60, interval=0.2, message="the next window's line")
    # logged before its answer was sent: the line is the last refusal's
    assert [(e["suppressed"], e["refused"]) for e in lines] == [(0, 1), (sent - 2, sent - 1)]
    assert _requests_total(d, "/v1/plugins", "403") == sent
    assert d.stop() == 0


def test_the_daemons_gateway_keeps_a_user_to_its_share_and_counts_the_refusal(
        daemon: Callable[..., Daemon], short_tmp: Path, peer_script: Path,
        peers: list[Peer]) -> None:
    """uid 65534 holds 64 connections to a gateway socket (the most one user other than
    root may); its 65th gets the exact 503 Err at once, logged and counted in
    volplugd_gateway_connections_refused_total; root is served meanwhile."""
    short_tmp.chmod(0o755)
    (short_tmp / "plugins").mkdir()
    fake = FakePlugin(str(short_tmp / "plugins" / "p.sock"))
    try:
        d = daemon(config=f'[gateway]\nenabled = true\ndir = "{short_tmp}/gw"\n'
                          'mode = "0666"\n').start()
        d.wait_state("p", "ready")
        gw = short_tmp / "gw" / "p.sock"
        wait_until(gw.exists, message="the gateway socket")
        hog = Peer(peer_script, NOBODY, str(gw), "hold", "64")
        peers.append(hog)
        assert hog.line() == "connected"
        extra = Peer(peer_script, NOBODY, str(gw), "get")  # accepted after the 64
        peers.append(extra)
        assert extra.report() == [{"status": 503, "err": (
            "volplugd: this user has as many gateway connections open as one user may; "
            "close one and try again")}]
        root = Client(str(gw))
        assert root.post("/VolumeDriver.List")[0] == 200  # root, meanwhile
        root.close()
        refused = d.wait_log("gateway_connection_refused")
        assert (refused["uid"], refused["reason"], refused["plugin"]) == (
            NOBODY, "uid_limit", "p")
        status, body = call(d.socket, "GET", "/metrics")
        counted = {s.labels["reason"]: s.value
                   for f in text_string_to_metric_families(body.decode()) for s in f.samples
                   if s.name == "volplugd_gateway_connections_refused_total"}
        assert (status, counted) == (200, {"uid_limit": 1.0, "full": 0.0})
        hog.tell()
        assert hog.report() == ["open"] * 64
        assert d.stop() == 0
    finally:
        fake.stop()
