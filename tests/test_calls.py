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
from volplugd.calls import Activated, Calls, Done, _activate_job
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
    """Both calls on the multiplexer, one Done with Activated(implements, scope), on the
    poller."""
    (fake, client), (subject, done, put) = plugin, calls
    subject.activate("u", 7, client, 2.0)
    result = poll_until_done(subject, done)
    assert (result.kind, result.name, result.token) == ("activate", "u", 7)
    assert result.result == Activated(("VolumeDriver",), "local")
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
        assert (result.kind, result.token, result.result) == (
            "activate", 9, Activated(("VolumeDriver",), "global"))
        assert done == []
    finally:
        plugin.stop()


TIMED_OUT = ("Capabilities failed (sending request to volume plugin u endpoint "
             "/VolumeDriver.Capabilities: timed out: no complete answer within 0.3 s); "
             "treated as local")
ODD_CAPABILITIES = [
    (b.Json({"Capabilities": {"Scope": "weird"}}),
     Activated(("VolumeDriver",), "local",
               "Capabilities: unknown scope 'weird'; treated as local")),
    (b.Json({"Capabilities": {"Scope": "GLOBAL"}}), Activated(("VolumeDriver",), "global")),
    (b.StatusErr(500, "not implemented"), Activated(("VolumeDriver",), "local")),
    (b.Status(404, b"404 page not found\n"), Activated(("VolumeDriver",), "local")),
    (b.Garbage(), Activated(
        ("VolumeDriver",), "local",
        "Capabilities failed (unmarshalling volume plugin u capabilities response: not "
        "JSON: Expecting value: line 1 column 1 (char 0)); treated as local")),
    (b.Json({"Capabilities": "local"}), Activated(
        ("VolumeDriver",), "local",
        "Capabilities failed (unmarshalling volume plugin u capabilities response: "
        "Capabilities is a string, not an object); treated as local")),
    (b.Hang(), Activated(("VolumeDriver",), "local", TIMED_OUT)),
]


@pytest.mark.parametrize(("behaviour", "expected"), ODD_CAPABILITIES,
                         ids=lambda v: repr(v)[:40])
def test_capabilities_never_fail_an_activation_on_either_path(
        plugin: tuple[FakePlugin, PluginClient],
        calls: tuple[Calls, list[Done], queue.SimpleQueue[object]],
        behaviour: b.Behaviour, expected: Activated) -> None:
    """An odd Capabilities answer (unknown scope, error, garbage, wrong type, timeout)
    activates the plugin as "local" with a warning for odd ones, none for an error
    answer (the endpoint is optional); the multiplexer and the pool's blocking job
    give exactly the same Activated."""
    (fake, client), (subject, done, _) = plugin, calls
    fake.set(CAPABILITIES, behaviour)
    subject.activate("u", 5, client, 0.3)
    assert poll_until_done(subject, done).result == expected
    assert _activate_job(client, 0.3) == expected
    assert [r.path for r in fake.requests] == [ACTIVATE, CAPABILITIES] * 2


def test_a_tcp_activation_whose_capabilities_time_out_is_local_with_a_warning(
        calls: tuple[Calls, list[Done], queue.SimpleQueue[object]]) -> None:
    """On the pool path too, a Capabilities timeout activates the plugin as "local"."""
    subject, _, put = calls
    plugin = TCPPlugin()
    plugin.drip.add(CAPABILITIES)
    try:
        with PluginClient("t", PluginAddress("tcp", f"127.0.0.1:{plugin.port}")) as client:
            subject.activate("t", 4, client, 0.2)
            result = put.get(timeout=10)
        assert isinstance(result, Done)
        assert result.result == Activated(
            ("VolumeDriver",), "local",
            "Capabilities failed (reading response body from volume plugin t: timed out: "
            "no complete answer within 0.2 s); treated as local")
    finally:
        plugin.stop()


@pytest.mark.parametrize(("behaviour", "healthy"), [
    (b.Json({"Capabilities": {"Scope": "weird"}}), True),
    (b.StatusErr(500, "not implemented"), True),
    (b.Garbage(), False),
])
def test_a_capabilities_probe_takes_an_unknown_scope_as_an_answer(
        plugin: tuple[FakePlugin, PluginClient],
        calls: tuple[Calls, list[Done], queue.SimpleQueue[object]],
        behaviour: b.Behaviour, healthy: bool) -> None:
    """Probing Capabilities, an unknown scope is a live plugin (no flapping to
    unhealthy), garbage is not; the pool's blocking job agrees."""
    from volplugd.calls import _probe_job
    from volplugd.plugin import PluginBadResponse

    (fake, client), (subject, done, _) = plugin, calls
    fake.set(CAPABILITIES, behaviour)
    settings = ProbeSettings(interval=1.0, timeout=0.5, endpoint=CAPABILITIES)
    subject.probe("u", 6, client, settings)
    result = poll_until_done(subject, done).result
    if healthy:
        assert result is True
        assert _probe_job(client, settings) is True
    else:
        assert isinstance(result, PluginBadResponse)
        with pytest.raises(PluginBadResponse, match="not JSON"):
            _probe_job(client, settings)
