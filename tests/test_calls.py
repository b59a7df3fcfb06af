"""Calls: activations and probes end as one Result, multiplexed (unix) or pooled (TCP),
and ``poll`` returns both kinds."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.plugin.test_client_tcp import TCPPlugin
from tests.waiting import wait_until
from volplugd.calls import (
    Activated,
    Activation,
    Calls,
    Failed,
    Probed,
    Result,
    WorkerPool,
    _activate_job,
)
from volplugd.config import ProbeSettings
from volplugd.plugin import PluginAddress, PluginClient, PluginTimeout
from volplugd.plugin.protocol import ACTIVATE, CAPABILITIES


@pytest.fixture
def calls() -> Iterator[Calls]:
    subject = Calls(workers=2)
    yield subject
    subject.close()


@pytest.fixture
def plugin(short_tmp: Path) -> Iterator[tuple[FakePlugin, PluginClient]]:
    """A fake unix-socket plugin "u" and a client for it."""
    path = str(short_tmp / "u.sock")
    with FakePlugin(path) as fake, PluginClient("u", PluginAddress("unix", path)) as client:
        yield fake, client


def poll_until_done(calls: Calls) -> Result:
    """Poll until one result comes back (from the multiplexer or the pool alike)."""
    results: list[Result] = []

    def finished() -> bool:
        results.extend(calls.poll(0.05))
        return bool(results)
    wait_until(finished, message="a result")
    assert len(results) == 1
    return results[0]


def test_a_unix_activation_is_activate_then_capabilities(
        plugin: tuple[FakePlugin, PluginClient], calls: Calls) -> None:
    """Both calls on the multiplexer, one Activated(implements, scope) returned by the
    poll."""
    fake, client = plugin
    calls.activate("u", 7, client, 2.0)
    result = poll_until_done(calls)
    assert isinstance(result, Activated)
    assert (result.name, result.token) == ("u", 7)
    assert result.found == Activation(("VolumeDriver",), "local")
    assert [r.path for r in fake.requests] == [ACTIVATE, CAPABILITIES]


def test_a_unix_probe_that_times_out_is_failed_with_the_error(
        plugin: tuple[FakePlugin, PluginClient], calls: Calls) -> None:
    """A hung plugin's probe ends at its timeout as Failed(probe, PluginTimeout)."""
    fake, client = plugin
    fake.set(ACTIVATE, b.Hang())
    calls.probe("u", 3, client, ProbeSettings(interval=1.0, timeout=0.2))
    result = poll_until_done(calls)
    assert isinstance(result, Failed)
    assert (result.kind, result.token) == ("probe", 3)
    assert isinstance(result.error, PluginTimeout)
    assert str(result.error) == ("sending request to plugin u activation endpoint: "
                                 "timed out: no complete answer within 0.2 s")


def test_a_unix_probe_answered_is_probed(
        plugin: tuple[FakePlugin, PluginClient], calls: Calls) -> None:
    _, client = plugin
    calls.probe("u", 8, client, ProbeSettings(interval=1.0, timeout=2.0))
    result = poll_until_done(calls)
    assert isinstance(result, Probed)
    assert (result.name, result.token) == ("u", 8)


def test_a_tcp_activation_runs_on_the_pool_and_comes_back_from_poll(calls: Calls) -> None:
    """TCP plugins are called by pool threads; their result is returned by ``poll`` like
    a multiplexed one (the pool wakes the poll)."""
    plugin = TCPPlugin()
    try:
        with PluginClient("t", PluginAddress("tcp", f"127.0.0.1:{plugin.port}")) as client:
            calls.activate("t", 9, client, 2.0)
            assert any(t.name.startswith("volplugd-tcp") for t in threading.enumerate())
            result = poll_until_done(calls)
        assert isinstance(result, Activated)
        assert (result.token, result.found) == (9, Activation(("VolumeDriver",), "global"))
    finally:
        plugin.stop()


TIMED_OUT = ("Capabilities failed (sending request to volume plugin u endpoint "
             "/VolumeDriver.Capabilities: timed out: no complete answer within 0.3 s); "
             "treated as local")
ODD_CAPABILITIES = [
    (b.Json({"Capabilities": {"Scope": "weird"}}),
     Activation(("VolumeDriver",), "local",
               "Capabilities: unknown scope 'weird'; treated as local")),
    (b.Json({"Capabilities": {"Scope": "GLOBAL"}}), Activation(("VolumeDriver",), "global")),
    (b.StatusErr(500, "not implemented"), Activation(("VolumeDriver",), "local")),
    (b.Status(404, b"404 page not found\n"), Activation(("VolumeDriver",), "local")),
    (b.Garbage(), Activation(
        ("VolumeDriver",), "local",
        "Capabilities failed (unmarshalling volume plugin u capabilities response: not "
        "JSON: Expecting value: line 1 column 1 (char 0)); treated as local")),
    (b.Json({"Capabilities": "local"}), Activation(
        ("VolumeDriver",), "local",
        "Capabilities failed (unmarshalling volume plugin u capabilities response: "
        "Capabilities is a string, not an object); treated as local")),
    (b.Hang(), Activation(("VolumeDriver",), "local", TIMED_OUT)),
]


@pytest.mark.parametrize(("behaviour", "expected"), ODD_CAPABILITIES,
                         ids=lambda v: repr(v)[:40])
def test_capabilities_never_fail_an_activation_on_either_path(
        plugin: tuple[FakePlugin, PluginClient],
        calls: Calls, behaviour: b.Behaviour, expected: Activation) -> None:
    """An odd Capabilities answer (unknown scope, error, garbage, wrong type, timeout)
    activates the plugin as "local" with a warning for odd ones, none for an error
    answer (the endpoint is optional); the multiplexer and the pool's blocking job
    give exactly the same Activation."""
    fake, client = plugin
    fake.set(CAPABILITIES, behaviour)
    calls.activate("u", 5, client, 0.3)
    result = poll_until_done(calls)
    assert isinstance(result, Activated)
    assert result.found == expected
    assert _activate_job(client, 0.3) == expected
    assert [r.path for r in fake.requests] == [ACTIVATE, CAPABILITIES] * 2


def test_a_tcp_activation_whose_capabilities_time_out_is_local_with_a_warning(
        calls: Calls) -> None:
    """On the pool path too, a Capabilities timeout activates the plugin as "local"."""
    plugin = TCPPlugin()
    plugin.drip.add(CAPABILITIES)
    try:
        with PluginClient("t", PluginAddress("tcp", f"127.0.0.1:{plugin.port}")) as client:
            calls.activate("t", 4, client, 0.2)
            result = poll_until_done(calls)
        assert isinstance(result, Activated)
        assert result.found == Activation(
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
        calls: Calls, behaviour: b.Behaviour, healthy: bool) -> None:
    """Probing Capabilities, an unknown scope is a live plugin (no flapping to
    unhealthy), garbage is not; the pool's blocking job agrees."""
    from volplugd.calls import _probe_job
    from volplugd.plugin import PluginBadResponse

    fake, client = plugin
    fake.set(CAPABILITIES, behaviour)
    settings = ProbeSettings(interval=1.0, timeout=0.5, endpoint=CAPABILITIES)
    calls.probe("u", 6, client, settings)
    result = poll_until_done(calls)
    if healthy:
        assert isinstance(result, Probed)
        assert _probe_job(client, settings) is True
    else:
        assert isinstance(result, Failed)
        assert isinstance(result.error, PluginBadResponse)
        with pytest.raises(PluginBadResponse, match="not JSON"):
            _probe_job(client, settings)


def test_pool_runs_jobs_on_its_own_daemon_threads() -> None:
    """Jobs run on the pool's named threads, which are daemon threads: a job hung in a
    plugin must never keep the interpreter from exiting."""
    pool = WorkerPool(2, "test-pool")
    seen: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
    try:
        pool.submit(lambda: seen.put((threading.current_thread().name,
                                      threading.current_thread().daemon)))
        name, daemon = seen.get(timeout=10)
        assert (name in {"test-pool-0", "test-pool-1"}, daemon) == (True, True)
    finally:
        pool.stop()
        pool.join(10)
