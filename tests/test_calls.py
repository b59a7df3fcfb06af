"""Calls: activations and probes end as one Done, multiplexed (unix) or pooled (TCP)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.plugin.test_client_tcp import TCPPlugin
from tests.waiting import wait_until
from volplugd.calls import Calls, Done
from volplugd.config import ProbeSettings
from volplugd.plugin import PluginAddress, PluginClient, PluginTimeout
from volplugd.plugin.protocol import ACTIVATE, CAPABILITIES


@pytest.fixture
def calls() -> Iterator[tuple[Calls, list[Done], queue.SimpleQueue[object]]]:
    done: list[Done] = []
    put: queue.SimpleQueue[object] = queue.SimpleQueue()
    subject = Calls(done.append, put.put, workers=2)
    yield subject, done, put
    subject.close()


@pytest.fixture
def plugin(short_tmp: Path) -> Iterator[tuple[FakePlugin, PluginClient]]:
    """A fake unix-socket plugin "u" and a client for it."""
    path = str(short_tmp / "u.sock")
    with FakePlugin(path) as fake, PluginClient("u", PluginAddress("unix", path)) as client:
        yield fake, client


def poll_until_done(calls: Calls, done: list[Done]) -> Done:
    def finished() -> bool:
        calls.poll(0.05)
        return bool(done)
    wait_until(finished, message="a Done")
    return done.pop()


def test_a_unix_activation_is_activate_then_capabilities(
        plugin: tuple[FakePlugin, PluginClient],
        calls: tuple[Calls, list[Done], queue.SimpleQueue[object]]) -> None:
    """Both calls on the multiplexer, one Done with (implements, scope), on the poller."""
    (fake, client), (subject, done, put) = plugin, calls
    subject.activate("u", 7, client, 2.0)
    result = poll_until_done(subject, done)
    assert (result.kind, result.name, result.token) == ("activate", "u", 7)
    assert result.result == (("VolumeDriver",), "local")
    assert [r.path for r in fake.requests] == [ACTIVATE, CAPABILITIES]
    assert put.empty()


def test_a_unix_probe_that_times_out_is_a_done_with_the_error(
        plugin: tuple[FakePlugin, PluginClient],
        calls: tuple[Calls, list[Done], queue.SimpleQueue[object]]) -> None:
    """A hung plugin's probe ends at its timeout as Done(probe, PluginTimeout)."""
    (fake, client), (subject, done, _) = plugin, calls
    fake.set(ACTIVATE, b.Hang())
    subject.probe("u", 3, client, ProbeSettings(interval=1.0, timeout=0.2))
    result = poll_until_done(subject, done)
    assert (result.kind, result.token) == ("probe", 3)
    assert isinstance(result.result, PluginTimeout)
    assert str(result.result) == ("sending request to plugin u activation endpoint: "
                                  "timed out: no complete answer within 0.2 s")


def test_a_tcp_activation_runs_on_the_pool_and_is_put(
        calls: tuple[Calls, list[Done], queue.SimpleQueue[object]]) -> None:
    """TCP plugins are called by pool threads; their Done arrives through ``put``."""
    subject, done, put = calls
    plugin = TCPPlugin()
    try:
        with PluginClient("t", PluginAddress("tcp", f"127.0.0.1:{plugin.port}")) as client:
            subject.activate("t", 9, client, 2.0)
            result = put.get(timeout=10)
        assert isinstance(result, Done)
        assert (result.kind, result.token, result.result) == ("activate", 9,
                                                              (("VolumeDriver",), "global"))
        assert done == []
    finally:
        plugin.stop()
