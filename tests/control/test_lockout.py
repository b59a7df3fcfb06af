"""Unprivileged users cannot lock root out of the control socket: connections are
bounded per uid (read at accept, before any request), root and admins keep reserved
slots, a connection that has not sent its head gives its slot up to a newcomer, and
whoever is over a bound gets 503 too_many_connections at once.

The other users are real: a client process run with ``setpriv`` as uid 65534 (and
65533), from a world-readable copy of ``peer_client.py`` under the system python3.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.control.conftest import build_app, serving
from tests.control.helpers import fetch
from tests.control.memory import MemoryCommands
from tests.control.otheruser import CAN_SWITCH_USER, NOBODY, Peer
from volplugd.control import AccessPolicy

OTHER = 65533  # a second unprivileged uid (and gid), a member of the read group below
POLICY = AccessPolicy(read_gids=frozenset({OTHER}))

pytestmark = pytest.mark.skipif(not CAN_SWITCH_USER,
                                reason="needs root and setpriv to act as other users")


@pytest.fixture
def open_dir(sockdir: str) -> str:
    os.chmod(sockdir, 0o755)  # noqa: S103 — other uids must reach the socket (mode 0666)
    return sockdir


def _refused(entry: Any, message_code: str = "too_many_connections") -> bool:
    return isinstance(entry, dict) and entry == {"status": 503, "code": message_code}


def test_three_hundred_idle_connections_of_one_user_never_lock_root_out(
        open_dir: str, commands: MemoryCommands, peer_script: Path, peers: list[Peer]) -> None:
    """uid 65534 opens 300 connections and sends nothing: 16 are admitted, 284 get 503
    too_many_connections at once; while all 300 are open root's /v1/health is answered,
    and so is another user's; the refusals are logged as one warning."""
    path = os.path.join(open_dir, "c.sock")
    with capture_logs() as logs, \
            serving(build_app(commands, POLICY), path, mode=0o666, access=POLICY):
        hog = Peer(peer_script, NOBODY, path, "hold", "300")
        peers.append(hog)
        assert hog.line() == "connected"
        # root, connecting as volplugctl does (with a timeout: EAGAIN if the backlog
        # were full), behind all 300
        assert fetch(path, "GET", "/v1/health").status == 200
        other = Peer(peer_script, OTHER, path, "get")
        peers.append(other)
        assert other.report() == [{"status": 200, "code": None}]
        assert hog.proc.poll() is None  # still holding every connection
        hog.tell()
        states = hog.report()
    assert len(states) == 300
    assert sum(_refused(s) for s in states) == 284
    assert all(s in ("open", "closed") for s in states if not _refused(s))
    refusals = [e for e in logs if e["event"] == "control_connection_refused"]
    assert [(e["log_level"], e["reason"], e["uid"]) for e in refusals] == [
        ("warning", "uid_limit", NOBODY)]


def test_a_connection_that_said_nothing_gives_its_slot_to_a_newcomer(
        open_dir: str, commands: MemoryCommands, peer_script: Path, peers: list[Peer]) -> None:
    """4 shared slots (6 minus 2 reserved): the 5th and 6th connection each shut the
    longest-waiting silent one down instead of being refused."""
    path = os.path.join(open_dir, "c.sock")
    with serving(build_app(commands), path, mode=0o666, max_connections=6, reserved=2,
                 first_request_timeout=60.0):
        hog = Peer(peer_script, NOBODY, path, "hold", "6")
        peers.append(hog)
        assert hog.line() == "connected"
        assert fetch(path, "GET", "/v1/health").status == 200
        hog.tell()
        assert hog.report() == ["closed", "closed", "open", "open", "open", "open"]


def test_when_every_shared_slot_is_at_work_newcomers_get_503_and_root_its_reserve(
        open_dir: str, commands: MemoryCommands, peer_script: Path, peers: list[Peer]) -> None:
    """4 requests of uid 65534 hold the 4 shared slots at work (their bodies never
    come): its next connection gets 503 at once, root is still served from the
    reserved slots."""
    path = os.path.join(open_dir, "c.sock")
    with serving(build_app(commands), path, mode=0o666, max_connections=6, reserved=2,
                 read_timeout=60.0):
        hog = Peer(peer_script, NOBODY, path, "busy", "4")
        peers.append(hog)
        assert hog.line() == "busy"
        assert hog.report() == [{"status": 503, "code": "too_many_connections"}]
        assert fetch(path, "GET", "/v1/health").status == 200
        assert fetch(path, "GET", "/v1/plugins").status == 200


def test_the_refusal_is_an_exact_json_answer(open_dir: str, commands: MemoryCommands,
                                             peer_script: Path, peers: list[Peer]) -> None:
    """Over its bound a uid reads 503, Retry-After: 1, Connection: close and the JSON
    error naming the bound."""
    path = os.path.join(open_dir, "c.sock")
    with serving(build_app(commands), path, mode=0o666, max_per_uid=1,
                 first_request_timeout=60.0):
        hog = Peer(peer_script, NOBODY, path, "hold", "1")
        peers.append(hog)
        assert hog.line() == "connected"
        probe = Peer(peer_script, NOBODY, path, "raw")
        peers.append(probe)
        (raw,) = probe.report()
    head, _, body = raw.partition("\r\n\r\n")
    status, server, date, *fields = head.split("\r\n")
    assert (status, server, date[:6]) == ("HTTP/1.1 503 Service Unavailable",
                                          "Server: volplugd", "Date: ")
    assert fields == ["Retry-After: 1", "Content-Type: application/json",
                      f"Content-Length: {len(body)}", "Connection: close"]
    assert json.loads(body) == {"error": {
        "code": "too_many_connections",
        "message": "this user has 1 connections open, the most one user may; close one and "
                   "try again"}}
