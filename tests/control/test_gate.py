"""Accepted sockets before they have a slot: their peer's groups asked for off the loop
(``Lookups``), bounded like the slots; the 503 of one that gets none (``Refusals``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from tests.waiting import wait_until
from volplugd.admission import Refusal
from volplugd.control import gate
from volplugd.control.access import Peer
from volplugd.control.gate import Lookups, Refusals

ANN, BOB = Peer(pid=10, uid=1000, gid=1000), Peer(pid=20, uid=1001, gid=1001)


class SlowDirectory:
    """Stands in for ``groups_of``: each lookup waits until the test lets it answer."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []
        self.answer = threading.Event()
        self.fail = False

    def __call__(self, uid: int, gid: int) -> frozenset[int]:
        self.asked.append((uid, gid))
        self.answer.wait(30)
        if self.fail:
            raise OSError("the directory is down")
        return frozenset({gid, 4242})


@pytest.fixture
def directory(monkeypatch: pytest.MonkeyPatch) -> SlowDirectory:
    slow = SlowDirectory()
    monkeypatch.setattr(gate, "groups_of", slow)
    return slow


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for ours, theirs in made:
        ours.close()
        theirs.close()


def _socket(pairs: list[tuple[socket.socket, socket.socket]]) -> socket.socket:
    pair = socket.socketpair()
    pairs.append(pair)
    return pair[0]


def test_one_lookup_per_peer_and_every_socket_comes_back_with_its_groups(
        directory: SlowDirectory, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    woken = threading.Event()
    lookups = Lookups(woken.set, name="t", per_uid=4, total=8)
    first, second, other = _socket(pairs), _socket(pairs), _socket(pairs)
    second_ann = ANN._replace(pid=11)
    assert [lookups.ask(first, ANN), lookups.ask(second, second_ann),
            lookups.ask(other, BOB)] == [None, None, None]
    wait_until(lambda: len(directory.asked) == 2, message="two lookups")
    assert lookups.done() == []  # nothing came yet
    directory.answer.set()
    wait_until(woken.is_set, message="the loop woken up")
    done: list[gate.Looked] = []
    wait_until(lambda: done.extend(lookups.done()) or len(done) == 3, message="all back")
    assert sorted(directory.asked) == [(1000, 1000), (1001, 1001)]
    assert {(looked.sock, looked.peer, looked.groups) for looked in done} == {
        (first, ANN, frozenset({1000, 4242})), (second, second_ann, frozenset({1000, 4242})),
        (other, BOB, frozenset({1001, 4242}))}


def test_what_may_wait_is_bounded_per_uid_and_in_all(
        directory: SlowDirectory, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    lookups = Lookups(lambda: None, name="t", per_uid=2, total=3)
    assert [lookups.ask(_socket(pairs), ANN) for _ in range(3)] == [
        None, None, Refusal.UID_LIMIT]
    assert [lookups.ask(_socket(pairs), BOB) for _ in range(2)] == [None, Refusal.FULL]
    directory.answer.set()
    back: list[gate.Looked] = []
    wait_until(lambda: back.extend(lookups.done()) or len(back) == 3, message="all back")
    directory.answer.clear()
    assert [lookups.ask(_socket(pairs), ANN) for _ in range(3)] == [
        None, None, Refusal.UID_LIMIT]  # room again
    directory.answer.set()


def test_a_failed_lookup_gives_the_primary_group_only_and_is_logged(
        directory: SlowDirectory, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    lookups = Lookups(lambda: None, name="t", per_uid=2, total=2)
    sock = _socket(pairs)
    directory.fail = True
    directory.answer.set()
    with capture_logs() as logs:
        assert lookups.ask(sock, ANN) is None
        done = wait_until(lookups.done, message="the socket back")
    assert [(looked.sock, looked.groups) for looked in done] == [(sock, frozenset({1000}))]
    assert [(e["event"], e["log_level"], e["uid"]) for e in logs] == [
        ("control_group_lookup_failed", "error", 1000)]


def test_close_ends_the_sockets_that_wait_and_those_a_late_lookup_brings(
        directory: SlowDirectory) -> None:
    """The listener stops: a socket waiting for its groups is closed at once, and one
    whose lookup answers after that is closed then, never handed to a loop."""
    lookups = Lookups(lambda: None, name="t-close", per_uid=2, total=4)
    waiting, theirs = socket.socketpair()
    late, late_theirs = socket.socketpair()
    with theirs, late_theirs:
        assert lookups.ask(waiting, ANN) is None
        wait_until(lambda: directory.asked, message="the lookup started")
        lookups.close()
        assert theirs.recv(10) == b""  # closed: its client sees the end
        assert lookups.ask(late, BOB) is None
        directory.answer.set()
        late_theirs.settimeout(30)
        assert late_theirs.recv(10) == b""  # closed by its lookup's thread
    assert lookups.done() == []


def test_a_refusal_is_an_exact_503_and_logged_once_per_ten_seconds(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    refusals = Refusals("control", per_uid=16)
    answers = []
    with capture_logs() as logs:
        for why in (Refusal.UID_LIMIT, Refusal.FULL, Refusal.UID_LIMIT):
            ours, theirs = socket.socketpair()
            with theirs:
                refusals.refuse(ours, ANN, why)
                answers.append(b"".join(iter(lambda: theirs.recv(65536), b"")))  # noqa: B023
    assert [a.split(b"\r\n")[0] for a in answers] == [b"HTTP/1.1 503 Service Unavailable"] * 3
    assert answers[0].endswith(b'"message":"this user has 16 connections open, the most one '
                               b'user may; close one and try again"}}')
    assert answers[1].endswith(b'"message":"every connection slot is taken; try again"}}')
    # once per 10 s per uid and reason: the second uid_limit is counted, not logged
    assert [(e["event"], e["reason"], e["uid"], e["refused"]) for e in logs] == [
        ("control_connection_refused", "uid_limit", 1000, 1),
        ("control_connection_refused", "full", 1000, 1)]
