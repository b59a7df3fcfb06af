"""The Multiplexer: the blocking client's results over non-blocking sockets, many at once."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.fakeplugin.exchange import Exchange
from tests.waiting import wait_until
from volplugd.plugin import (
    ACTIVATE,
    CAPABILITIES,
    LIST,
    Capabilities,
    Manifest,
    NotAPlugin,
    PluginAddress,
    PluginBadResponse,
    PluginClient,
    PluginError,
    PluginRemoved,
    PluginTimeout,
    PluginUnreachable,
)
from volplugd.plugin.multiplex import Multiplexer
from volplugd.plugin.protocol import KEYS

ENDPOINTS = [ACTIVATE, CAPABILITIES, LIST]
VOLUME_DRIVER = Manifest(("VolumeDriver",))
MANIFEST = b'{"Implements": ["VolumeDriver"]}'
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\n" + MANIFEST[:5] + b"\r\n1b\r\n" + MANIFEST[5:] + b"\r\n0\r\n\r\n")
EOF_ENDED = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + MANIFEST
CLOSE_ENDED = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + MANIFEST
TWO_ANSWERS = (b"HTTP/1.1 200 OK\r\nContent-Length: 32\r\n\r\n" + MANIFEST
               + b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
Results = dict[Hashable, object]
Make = Callable[..., PluginClient]
Conns = list[socket.socket]


class EndlessHead(b.Behaviour):
    """A status line, then 1 KiB headers until the client goes away (the write fails)."""

    def respond(self, ex: Exchange) -> None:
        ex.write(b"HTTP/1.1 200 OK\r\n")
        while not ex.stopping.is_set():
            ex.write(b"X-Pad: " + b"x" * 1024 + b"\r\n")


def collect(results: Results, key: Hashable) -> Callable[[object, float], None]:
    """A ``done`` that stores the result under ``key`` and fails on a second call."""
    def done(result: object, seconds: float) -> None:
        assert key not in results, f"done called twice for {key!r}"
        assert seconds >= 0
        results[key] = result
    return done


def drive(mux: Multiplexer, results: Results, keys: set[Hashable], limit: float = 15.0) -> None:
    """Poll until every key in ``keys`` has a result; AssertionError after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not keys <= results.keys():
        assert time.monotonic() < deadline, f"no result for {keys - results.keys()}"
        mux.poll(0.05)


def run(mux: Multiplexer, client: PluginClient, endpoint: str, timeout: float | None = None,
        key: Hashable = "k") -> object:
    """One multiplexed call, polled to completion: its result or its PluginError."""
    results: Results = {}
    mux.call(key, client, endpoint, collect(results, key), timeout)
    drive(mux, results, {key})
    return results[key]


def blocking(client: PluginClient, endpoint: str, timeout: float | None = None) -> object:
    """The blocking client's result for ``endpoint``, or the PluginError it raised."""
    try:
        result: object = getattr(client, KEYS[endpoint])(timeout=timeout)
    except PluginError as err:
        return err
    return result


def summary(result: object) -> object:
    """What must match between the two paths: a value, or an error's class, words, fields."""
    if isinstance(result, PluginError):
        return type(result), str(result), result.outcome, vars(result)
    return result


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _bound(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    return sock


@pytest.fixture
def mux() -> Iterator[Multiplexer]:
    with contextlib.closing(Multiplexer()) as m:
        yield m


@pytest.fixture
def accepted(fake: FakePlugin) -> Conns:
    """The fake's server-side connections, in the order it accepted them."""
    conns: Conns = []
    accept = fake._server.get_request

    def counting() -> tuple[socket.socket, object]:
        conns.append((pair := accept())[0])
        return pair
    fake._server.get_request = counting  # type: ignore[method-assign]
    return conns


@pytest.fixture
def silent(short_tmp: Path) -> Iterator[PluginClient]:
    """A client for a socket that listens but never accepts: connects, sends, hears nothing."""
    path = str(short_tmp / "silent.sock")
    with _bound(path) as listener, PluginClient("silent", PluginAddress("unix", path)) as client:
        listener.listen(8)
        yield client


@contextlib.contextmanager
def full_backlog(path: str) -> Iterator[None]:
    """A listener at ``path`` (listen(0), never accepting) whose backlog is full."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_bound(path)).listen(0)
        for _ in range(64):
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            if stack.enter_context(filler).connect_ex(path) == errno.EAGAIN:
                break
        else:
            raise AssertionError("the backlog never filled")
        yield


# -- the central promise: the same result as the blocking client ---------------------------

CASES: dict[str, tuple[b.Behaviour, float | None, bool]] = {
    "normal": (b.Normal(), None, False),
    "hang": (b.Hang(), 0.3, False),
    "slow": (b.Slow(0.05), None, False),
    "drip": (b.Drip(bytes_per_second=20, total_bytes=1000), 0.3, False),
    "huge": (b.HugeBody(100_000), None, False),
    "garbage": (b.Garbage(), None, False),
    "html": (b.HtmlError(500), None, False),
    "err200": (b.ErrOn200("boom: it failed"), None, False),
    "status-err": (b.StatusErr(500, "no space left"), None, False),
    "network-driver": (b.Implements(["NetworkDriver"]), None, False),
    "http10": (b.Normal(), None, True),
    "http10-status-err": (b.StatusErr(400, "bad"), None, True),
    "close-mid": (b.CloseMidAnswer(), None, False),
    "disconnect": (b.Disconnect(), None, False),
    "ssh-banner": (b.Raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), None, False),
    "chunked": (b.Raw(CHUNKED), None, False),
    "eof-ended": (b.Raw(EOF_ENDED), None, False),
    "continue-first": (b.Raw(b"HTTP/1.1 100 Continue\r\n\r\n" + CLOSE_ENDED), None, False),
    "switching-protocols": (b.Raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                                  b"Connection: Upgrade\r\n\r\n\x00"), None, False),
    "two-answers": (b.Raw(TWO_ANSWERS), None, False),
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", list(CASES))
def test_the_result_is_the_blocking_clients(sock_path: str, mux: Multiplexer, make_client: Make,
                                            case: str, endpoint: str) -> None:
    """Every plugin behaviour gives the blocking call's value, or its error class and words."""
    behaviour, timeout, http10 = CASES[case]
    with FakePlugin(sock_path, http10=http10) as fake:
        fake.set(endpoint, behaviour)
        client = make_client(max_response_bytes=4096)
        expected = blocking(client, endpoint, timeout)
        assert summary(run(mux, client, endpoint, timeout)) == summary(expected)
        assert len(fake.requests) == 2


def test_a_second_answer_in_one_read_leaves_the_first_whole(fake: FakePlugin, mux: Multiplexer,
                                                            client: PluginClient) -> None:
    """Two answers in one read: the first is the result (the second never mixed into it)."""
    fake.set(ACTIVATE, b.Raw(TWO_ANSWERS))
    assert run(mux, client, ACTIVATE) == VOLUME_DRIVER


@pytest.mark.parametrize("raw", [CHUNKED, EOF_ENDED, CLOSE_ENDED],
                         ids=["chunked", "http10-eof", "connection-close"])
def test_answers_without_a_length_are_read_whole(fake: FakePlugin, mux: Multiplexer,
                                                 client: PluginClient, raw: bytes) -> None:
    """A chunked answer, and one without Content-Length that ends at EOF, parse completely."""
    fake.set(ACTIVATE, b.Raw(raw))
    assert run(mux, client, ACTIVATE) == VOLUME_DRIVER


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_request_bytes_are_the_blocking_clients(fake: FakePlugin, mux: Multiplexer,
                                                    client: PluginClient, endpoint: str) -> None:
    """The Multiplexer sends byte for byte the request the blocking client sends."""
    blocking(client, endpoint)
    run(mux, client, endpoint)
    first, second = fake.requests
    assert second.raw == first.raw
    assert second.raw.startswith(f"POST {endpoint} HTTP/1.1\r\nHost: plugin\r\n".encode())


# -- connections: kept alive, replaced, never a request sent twice -------------------------

def test_calls_for_one_key_share_one_connection(fake: FakePlugin, accepted: Conns,
                                                mux: Multiplexer, client: PluginClient) -> None:
    """Five calls in a row for one key travel over one kept-alive connection."""
    endpoints = [ACTIVATE, CAPABILITIES, LIST, ACTIVATE, LIST]
    results = [run(mux, client, endpoint) for endpoint in endpoints]
    assert results == [VOLUME_DRIVER, Capabilities("local"), [], VOLUME_DRIVER, []]
    assert len(accepted) == 1
    assert [r.path for r in fake.requests] == endpoints


def test_fifty_keys_at_once_over_fifty_kept_connections(
        fake: FakePlugin, accepted: Conns, mux: Multiplexer, client: PluginClient) -> None:
    """50 calls started together end in one poll loop; each key keeps its own connection."""
    keys: set[Hashable] = set(range(50))
    for _ in range(2):
        results: Results = {}
        for key in keys:
            mux.call(key, client, ACTIVATE, collect(results, key))
        drive(mux, results, keys)
        assert results == dict.fromkeys(keys, VOLUME_DRIVER)
    assert len(accepted) == 50
    assert len(fake.requests) == 100


@pytest.mark.parametrize("polled", [False, True], ids=["reused-at-once", "noticed-by-poll"])
def test_a_connection_closed_while_idle_is_replaced(
        fake: FakePlugin, accepted: Conns, mux: Multiplexer, client: PluginClient,
        polled: bool) -> None:
    """The plugin closing a kept-alive connection between calls costs no error: a new one."""
    before = fds()
    assert run(mux, client, ACTIVATE) == VOLUME_DRIVER
    accepted[0].shutdown(socket.SHUT_RDWR)
    wait_until(lambda: accepted[0].fileno() == -1, message="the fake to close the connection")

    def our_end_closed() -> bool:
        mux.poll(0.01)
        return fds() == before
    if polled:  # poll sees the idle socket's EOF and closes our end too
        wait_until(our_end_closed, message="our end to close")
    assert run(mux, client, LIST) == []
    assert len(accepted) == 2
    assert [r.path for r in fake.requests] == [ACTIVATE, LIST]


def test_a_request_the_plugin_read_is_not_sent_again(fake: FakePlugin, mux: Multiplexer,
                                                     client: PluginClient) -> None:
    """A kept-alive connection that takes the request and closes unanswered: no retry."""
    assert run(mux, client, ACTIVATE) == VOLUME_DRIVER
    fake.set(LIST, b.Disconnect())
    result = run(mux, client, LIST)
    assert (type(result), str(result)) == (PluginUnreachable, (
        f"sending request to volume plugin foo endpoint {LIST}: EOF: the plugin closed the "
        "connection before a complete answer"))
    assert [r.path for r in fake.requests] == [ACTIVATE, LIST]


def test_a_hung_plugin_does_not_delay_the_others(fake: FakePlugin, mux: Multiplexer,
                                                 client: PluginClient) -> None:
    """Other keys' results arrive while a call the plugin never answers is pending."""
    fake.set(ACTIVATE, b.Hang())
    results: Results = {}
    mux.call("hung", client, ACTIVATE, collect(results, "hung"), timeout=60)
    keys: set[Hashable] = set(range(10))
    for key in keys:
        mux.call(key, client, LIST, collect(results, key))
    drive(mux, results, keys)
    assert results == {key: [] for key in keys}
    assert "hung" not in results  # still in flight: done() has not run


def test_one_call_per_key_until_forget(mux: Multiplexer, silent: PluginClient) -> None:
    """A busy key refuses a second call; ``forget`` closes its socket and drops ``done``."""
    before, results = fds(), Results()
    mux.call("k", silent, ACTIVATE, collect(results, "k"), timeout=0.1)
    with pytest.raises(RuntimeError) as caught:
        mux.call("k", silent, LIST, collect(results, "k"))
    assert str(caught.value) == "a call for 'k' is already in flight"
    assert fds() == before + 1
    mux.forget("k")
    assert fds() == before
    past = time.monotonic() + 0.3
    while time.monotonic() < past:
        mux.poll(0.05)
    assert results == {}


def test_forget_drops_a_result_not_yet_handed_over(fake: FakePlugin, mux: Multiplexer,
                                                  make_client: Make) -> None:
    """A result waiting for the next poll is dropped by ``forget``, also when an earlier
    ``done`` in the same poll forgets it."""
    closed, results = make_client(), Results()
    closed.close()
    mux.call("early", closed, ACTIVATE, collect(results, "early"))  # fails at once
    mux.forget("early")

    def forget_late(result: object, seconds: float) -> None:
        mux.forget("late")
        collect(results, "first")(result, seconds)

    mux.call("first", closed, ACTIVATE, forget_late)
    mux.call("late", closed, ACTIVATE, collect(results, "late"))
    mux.poll(0.0)
    assert list(results) == ["first"]


# -- failures before any answer: delivered through done, never raised --------------------

REFUSED = "{}: dial unix {}: connect: connection refused"


@pytest.mark.parametrize(("spoil", "kind", "text"), [
    (lambda path, client: None, PluginRemoved, "foo: plugin is no longer available (shut down?)"),
    (lambda path, client: _bound(path), PluginUnreachable, REFUSED),
    (lambda path, client: FakePlugin(path).stop(unlink=False), PluginUnreachable, REFUSED),
    (lambda path, client: Path(path).write_text("x"), NotAPlugin,
     'volume foo path "{1}" is not a unix socket: target does not appear to be a valid plugin'),
    (lambda path, client: client.close(), PluginError, "client for plugin foo is closed"),
], ids=["gone", "bound-not-listening", "server-closed", "regular-file", "closed-client"])
def test_an_unusable_plugin_is_reported_through_done(
        sock_path: str, mux: Multiplexer, make_client: Make, *,
        spoil: Callable[[str, PluginClient], object], kind: type[PluginError],
        text: str) -> None:
    """A missing, stale or non-socket path, or a closed client: the blocking error, via done."""
    client = make_client()
    spoiled = spoil(sock_path, client)
    with spoiled if isinstance(spoiled, socket.socket) else contextlib.nullcontext():
        results: Results = {}
        mux.call("k", client, ACTIVATE, collect(results, "k"))  # never raises
        assert results == {}
        drive(mux, results, {"k"})
        assert type(results["k"]) is kind
        assert str(results["k"]) == text.format(
            "sending request to plugin foo activation endpoint", sock_path)
        assert summary(results["k"]) == summary(blocking(client, ACTIVATE))


def test_a_full_backlog_is_retried_until_room_or_the_deadline(
        sock_path: str, mux: Multiplexer, make_client: Make) -> None:
    """A connect refused by a full backlog is retried until the call's deadline or room."""
    results: Results = {}
    with full_backlog(sock_path):
        mux.call("short", make_client(), ACTIVATE, collect(results, "short"), timeout=0.3)
        mux.call("long", make_client(), ACTIVATE, collect(results, "long"), timeout=30)
        drive(mux, results, {"short"})
        assert (type(results["short"]), str(results["short"])) == (PluginTimeout, (
            "sending request to plugin foo activation endpoint: timed out: "
            "no complete answer within 0.3 s"))
        assert "long" not in results  # no connect happens outside call and poll: none until...
    with FakePlugin(sock_path) as fake:  # ...this plugin listens at the same path
        drive(mux, results, {"long"})
        assert [r.path for r in fake.requests] == [ACTIVATE]
    assert results["long"] == VOLUME_DRIVER


def test_the_blocking_client_fails_at_once_on_a_full_backlog(sock_path: str,
                                                             make_client: Make) -> None:
    """The one difference (docs/client.md): a blocking call does not wait for room."""
    with full_backlog(sock_path):
        result = blocking(make_client(), ACTIVATE, timeout=30)
    assert (type(result), str(result)) == (PluginUnreachable, (
        "sending request to plugin foo activation endpoint: resource temporarily unavailable"))


def test_a_head_over_64_kib_is_a_bad_response(fake: FakePlugin, mux: Multiplexer,
                                              client: PluginClient) -> None:
    """Headers that never end are cut off after 64 KiB as a bad response."""
    fake.set(ACTIVATE, EndlessHead())
    result = run(mux, client, ACTIVATE)
    assert (type(result), str(result)) == (PluginBadResponse, (
        "sending request to plugin foo activation endpoint: not an HTTP answer (LineTooLong: "
        "got more than 65536 bytes when reading header section)"))


# -- the rest of the interface ----------------------------------------------------------------

@pytest.mark.parametrize(("behaviour", "outcome"), [
    (b.Normal(), "success"), (b.ErrOn200("boom"), "plugin_error"), (None, "refused"),
], ids=["success", "plugin-error", "socket-gone"])
def test_on_request_is_called_once_per_call(fake: FakePlugin, mux: Multiplexer,
                                            make_client: Make,
                                            behaviour: b.Behaviour | None, outcome: str) -> None:
    """The client's on_request hook runs once per call, before ``done``, with its outcome."""
    seen: list[tuple[str, str, float]] = []
    client = make_client(on_request=lambda *args: seen.append(args))
    if behaviour is None:
        fake.stop()
    else:
        fake.set(LIST, behaviour)
    hooked: Results = {}  # how many hook calls ``done`` saw

    def done(result: object, seconds: float) -> None:
        hooked["k"] = len(seen)
    mux.call("k", client, LIST, done)
    drive(mux, hooked, {"k"})
    assert hooked == {"k": 1}
    assert [(endpoint, label) for endpoint, label, _ in seen] == [(LIST, outcome)]
    assert seen[0][2] >= 0


def test_a_watched_descriptor_ends_a_poll_and_is_left_to_its_owner(mux: Multiplexer) -> None:
    """A watched descriptor that becomes readable (here from another thread) ends a
    ``poll(30)`` and gets its ``on_ready``; after ``unwatch`` it is no longer waited
    for, and it is never closed by the multiplexer."""
    read_end, write_end = os.pipe()
    seen: list[str] = []
    try:
        mux.watch(read_end, lambda: seen.append("ready"))
        poller = threading.Thread(target=mux.poll, args=(30,), name="poller")
        poller.start()
        os.write(write_end, b"x")
        poller.join(timeout=10)
        assert (poller.is_alive(), seen) == (False, ["ready"])
        mux.unwatch(read_end)
        mux.poll(0.0)  # still readable, no longer watched
        assert seen == ["ready"]
        assert os.read(read_end, 1) == b"x"  # still open: the owner's
    finally:
        os.close(read_end)
        os.close(write_end)


def test_close_closes_every_connection(fake: FakePlugin, client: PluginClient,
                                       silent: PluginClient) -> None:
    """``close`` closes idle and busy connections and the selector."""
    before = fds()
    mux = Multiplexer()
    assert run(mux, client, ACTIVATE, key="idle") == VOLUME_DRIVER
    mux.call("busy", silent, ACTIVATE, collect({}, "busy"))
    # epoll, the two sockets, and the fake's end of "idle"
    assert fds() == before + 4
    mux.close()
    wait_until(lambda: fds() == before, message="every fd to close")
