"""Limits: one total deadline per call (connect, send, headers, body) and a body size cap."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.fakeplugin.exchange import Exchange
from volplugd.plugin import DEFAULT_TIMEOUTS, PluginBadResponse, PluginClient, PluginTimeout
from volplugd.plugin.protocol import resolve_timeouts

MIB = 1024 * 1024


class HeaderDrip(b.Behaviour):
    """A status line, then one header byte every 50 ms, forever: headers never end."""

    def respond(self, ex: Exchange) -> None:
        ex.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        while not ex.stopping.wait(0.05):
            ex.write(b"x")
        ex.close()


class Flood(b.Behaviour):
    """``size`` bytes of body without a Content-Length: chunked, or (HTTP/1.0) until close."""

    def __init__(self, size: int, chunked: bool) -> None:
        self.size = size
        self.chunked = chunked

    def respond(self, ex: Exchange) -> None:
        if self.chunked:
            ex.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            ex.write(b"HTTP/1.0 200 OK\r\n\r\n")
        piece = b" " * (64 * 1024)
        for _ in range(self.size // len(piece)):
            if ex.stopping.is_set():
                break
            ex.write(b"%x\r\n%s\r\n" % (len(piece), piece) if self.chunked else piece)
        ex.close()


class Gate(b.Behaviour):
    """Answers normally once ``open`` is set."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def respond(self, ex: Exchange) -> None:
        while not (self.gate.wait(0.05) or ex.stopping.is_set()):
            pass
        b.Normal().respond(ex)


@pytest.fixture
def timed() -> Callable[[Callable[[], object]], tuple[BaseException | None, float]]:
    """Run a call; return (the exception it raised or None, seconds it took)."""
    def run(call: Callable[[], object]) -> tuple[BaseException | None, float]:
        start = time.monotonic()
        try:
            call()
        except Exception as err:
            return err, time.monotonic() - start
        return None, time.monotonic() - start
    return run


def test_a_drip_faster_than_any_read_timeout_ends_at_the_deadline(
        fake: FakePlugin, client: PluginClient, timed: Callable[..., tuple[object, float]]
        ) -> None:
    """A body dripping a byte every 50 ms (50 s in all) fails at the 0.5 s deadline."""
    fake.set("/VolumeDriver.Create", b.Drip(bytes_per_second=20, total_bytes=1000))
    err, took = timed(lambda: client.create("v1", timeout=0.5))
    assert isinstance(err, PluginTimeout)
    assert str(err) == ("reading response body from volume plugin foo: "
                        "timed out: no complete answer within 0.5 s")
    assert err.outcome == "timeout"
    assert 0.5 <= took < 50


def test_dripping_headers_end_at_the_deadline(fake: FakePlugin, client: PluginClient,
                                              timed: Callable[..., tuple[object, float]]) -> None:
    """Headers that never end (a byte every 50 ms) fail at the deadline too."""
    fake.set("/VolumeDriver.List", HeaderDrip())
    err, took = timed(lambda: client.list(timeout=0.4))
    assert isinstance(err, PluginTimeout)
    assert str(err) == ("sending request to volume plugin foo endpoint /VolumeDriver.List: "
                        "timed out: no complete answer within 0.4 s")
    assert took >= 0.4


@pytest.mark.parametrize("behaviour", [b.Hang(), b.Slow(30)], ids=["hang", "slow"])
def test_no_answer_ends_at_the_deadline(fake: FakePlugin, client: PluginClient,
                                        timed: Callable[..., tuple[object, float]],
                                        behaviour: b.Behaviour) -> None:
    """A plugin that never answers, or answers after 30 s, fails at the 0.3 s deadline."""
    fake.set("/Plugin.Activate", behaviour)
    err, took = timed(lambda: client.activate(timeout=0.3))
    assert isinstance(err, PluginTimeout)
    assert str(err) == ("sending request to plugin foo activation endpoint: "
                        "timed out: no complete answer within 0.3 s")
    assert 0.3 <= took < 30


def test_an_answer_within_the_deadline_succeeds(fake: FakePlugin, client: PluginClient) -> None:
    """A slow but finite drip that ends before the deadline is a success."""
    fake.set("/VolumeDriver.Create", b.Drip(bytes_per_second=4000, total_bytes=400))
    client.create("v1", timeout=30)


def test_configured_timeouts_apply_per_endpoint(fake: FakePlugin,
                                                make_client: Callable[..., PluginClient]) -> None:
    """timeouts={"get": 0.3} bounds Get; a missing key falls back to "default"."""
    client = make_client(timeouts={"get": 0.3, "default": 0.2})
    fake.set("*", b.Hang())
    with pytest.raises(PluginTimeout, match=r"within 0\.3 s$"):
        client.get("v1")
    with pytest.raises(PluginTimeout, match=r"within 0\.2 s$"):
        client.list()
    with pytest.raises(PluginTimeout, match=r"within 0\.25 s$"):
        client.get("v1", timeout=0.25)  # a call's timeout= beats the configuration


def test_a_timed_out_connection_is_not_reused(fake: FakePlugin, client: PluginClient) -> None:
    """After a timeout the half-read connection is dropped; the next call works."""
    fake.set("/VolumeDriver.List", b.Drip(bytes_per_second=20, total_bytes=1000))
    with pytest.raises(PluginTimeout):
        client.list(timeout=0.3)
    fake.reset()
    assert client.list() == []


def test_default_timeouts_follow_docker() -> None:
    """Create and Mount 120 s, Activate 5 s, everything else 60 s."""
    assert resolve_timeouts(None) == dict(DEFAULT_TIMEOUTS) == {
        "activate": 5.0, "capabilities": 60.0, "create": 120.0, "remove": 60.0, "get": 60.0,
        "list": 60.0, "path": 60.0, "mount": 120.0, "unmount": 60.0, "default": 60.0}
    assert resolve_timeouts({"mount": 3})["mount"] == 3.0
    assert set(resolve_timeouts({"default": 7}).values()) == {7.0}


@pytest.mark.parametrize(("timeouts", "error", "message"), [
    ({"creat": 1.0}, ValueError, r"unknown timeout keys \['creat'\]"),
    ({"get": 0}, ValueError, r"timeouts\['get'\] must be a positive number of seconds, not 0"),
    ({"get": float("inf")}, ValueError, r"not inf"),
    ({"get": True}, TypeError, r"timeouts\['get'\] must be a number of seconds, not True"),
    ({"get": "5"}, TypeError, r"not '5'"),
])
def test_bad_timeouts_are_refused(timeouts: dict[str, object], error: type[Exception],
                                  message: str) -> None:
    """A typo or a nonsense value in the timeouts is an error, not silently ignored."""
    with pytest.raises(error, match=message):
        resolve_timeouts(timeouts)  # type: ignore[arg-type]


def test_a_bad_call_timeout_is_refused(fake: FakePlugin, client: PluginClient) -> None:
    """timeout=-1 on a call is a ValueError, and nothing is sent."""
    with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds, not -1"):
        client.list(timeout=-1)
    assert fake.requests == []


# -- the size cap ---------------------------------------------------------------------

def test_a_declared_huge_body_is_refused_unread(fake: FakePlugin,
                                                make_client: Callable[..., PluginClient]) -> None:
    """A Content-Length over the cap fails at once, reading none of the 64 MiB."""
    client = make_client(max_response_bytes=MIB)
    fake.set("/VolumeDriver.Get", b.HugeBody(64 * MIB))
    with pytest.raises(PluginBadResponse) as caught, _peak_memory() as peak:
        client.get("v1")
    assert str(caught.value) == ("reading response body from volume plugin foo: answer of "
                                 "67108864 bytes is larger than the limit of 1048576 bytes")
    assert peak[0] < MIB


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "until-close"])
def test_an_undeclared_huge_body_is_cut_at_the_cap(fake: FakePlugin, chunked: bool,
                                                   make_client: Callable[..., PluginClient]
                                                   ) -> None:
    """64 MiB without a Content-Length fails past 1 MiB; memory never holds much more."""
    client = make_client(max_response_bytes=MIB)
    fake.set("/VolumeDriver.List", Flood(64 * MIB, chunked))
    with pytest.raises(PluginBadResponse) as caught, _peak_memory() as peak:
        client.list()
    assert str(caught.value) == ("reading response body from volume plugin foo: answer is "
                                 "larger than the limit of 1048576 bytes")
    assert peak[0] < 2 * MIB  # the cap plus read buffers; not 64 MiB


def test_a_body_exactly_at_the_cap_is_read(fake: FakePlugin,
                                           make_client: Callable[..., PluginClient]) -> None:
    """The cap is inclusive: a body of max_response_bytes is fine, one more byte is not."""
    client = make_client(max_response_bytes=100)
    fake.set("/VolumeDriver.Create", b.Status(200, b'{"Err": ""}'.ljust(100)))
    client.create("v1")
    fake.set("/VolumeDriver.Create", b.Status(200, b'{"Err": ""}'.ljust(101)))
    with pytest.raises(PluginBadResponse, match=r"answer of 101 bytes is larger than the limit "):
        client.create("v1")


# -- concurrency ---------------------------------------------------------------------------

def test_calls_on_one_client_run_concurrently(fake: FakePlugin, client: PluginClient) -> None:
    """A call waiting on the plugin does not block another call through the same client."""
    gate = threading.Event()
    fake.set("/VolumeDriver.Get", Gate(gate))
    client.create("v1")
    results: list[object] = []
    waiting = threading.Thread(target=lambda: results.append(client.get("v1")))
    waiting.start()
    fake.wait_requests(2)
    assert client.list()[0].name == "v1"  # answered while Get is still held
    assert waiting.is_alive()
    gate.set()
    waiting.join()
    assert [v.name for v in results] == ["v1"]  # type: ignore[attr-defined]


class _Peak:
    """Context manager: ``[peak bytes]`` allocated by Python inside the block (any thread)."""

    def __enter__(self) -> list[int]:
        tracemalloc.start()
        tracemalloc.reset_peak()
        self.peak = [0]
        return self.peak

    def __exit__(self, *exc: object) -> None:
        self.peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _peak_memory() -> _Peak:
    return _Peak()
