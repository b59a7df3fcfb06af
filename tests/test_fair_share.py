"""Fair share of volume operations: a per-plugin bound, a bounded wait, 503 plugin_busy.

The supervisor in-process with real fake plugins; calls run on the test's own threads,
as the control API's connection threads run them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.waiting import wait_until
from volplugd.config import DiscoverySettings, PluginSettings, ProbeSettings, Settings
from volplugd.contracts import NullObserver, PluginBusy
from volplugd.model import EventType, PluginState
from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginReportedError, PluginTimeout
from volplugd.plugin.protocol import LIST
from volplugd.registry import Registry
from volplugd.supervisor import Reload, Supervisor

PROBE = ProbeSettings(interval=0.5, timeout=0.3, failure_threshold=3)
TIMEOUTS = {"activate": 0.5, "list": 120.0, "default": 0.5}


class Recorder(NullObserver):
    """Records busy refusals and volume-operation requests (the metrics' inputs)."""

    def __init__(self) -> None:
        self.busy_for: list[str] = []
        self.requests: list[tuple[str, str, str]] = []

    def busy(self, plugin: str) -> None:
        self.busy_for.append(plugin)

    def request(self, plugin: str, endpoint: str, outcome: str, seconds: float) -> None:
        self.requests.append((plugin, endpoint, outcome))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def start(plugins_dir: Path, recorder: Recorder,
          supervisors: Callable[..., Supervisor]) -> Callable[[int], Supervisor]:
    """Start a Supervisor over ``plugins_dir`` with this bound of operations per plugin."""

    def make(max_in_flight: int) -> Supervisor:
        settings = Settings(
            discovery=DiscoverySettings(dirs=(str(plugins_dir),)), probe=PROBE,
            plugin=PluginSettings(timeouts=TIMEOUTS, max_in_flight=max_in_flight))
        return supervisors(settings, observer=recorder, workers=2)

    return make


@pytest.fixture
def sup(start: Callable[[int], Supervisor]) -> Supervisor:
    """The default bound: 4 operations in flight per plugin."""
    return start(4)


def ready(sup: Supervisor, *names: str) -> None:
    def all_ready() -> bool:
        plugins = sup.snapshot().plugins
        return all(n in plugins and plugins[n].state is PluginState.READY for n in names)
    wait_until(all_ready, message=f"{names} ready")


class Callers:
    """``n`` threads, each running one ``sup.call`` of List, with what each ended with."""

    def __init__(self, sup: Supervisor, name: str, n: int):
        self.outcomes: list[object] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(sup, name)) for _ in range(n)]
        for thread in self.threads:
            thread.start()

    def _run(self, sup: Supervisor, name: str) -> None:
        try:
            result: object = sup.call(name, lambda c: c.list())
        except Exception as err:  # the outcome is what the test checks
            result = err
        with self._lock:
            self.outcomes.append(result)

    def count(self, kind: type) -> int:
        with self._lock:
            return sum(isinstance(o, kind) for o in self.outcomes)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)


def lists(fp: FakePlugin) -> int:
    return sum(r.path == LIST for r in fp.requests)


def test_48_hung_calls_on_one_plugin_never_delay_another_plugins_operation(
        sup: Supervisor, fakes: Callable[..., FakePlugin], recorder: Recorder) -> None:
    """4 calls reach the hung plugin, the other 44 get PluginBusy (at once, or after the
    short wait for the 4 that queue), and a healthy plugin's List is served while the 4
    are still hung."""
    stuck, good = fakes("stuck"), fakes("good")
    ready(sup, "stuck", "good")
    stuck.set(LIST, b.Hang())
    callers = Callers(sup, "stuck", 48)
    wait_until(lambda: callers.count(PluginBusy) == 44, message="44 refusals")
    assert sup.call("good", lambda c: c.list()) == []
    assert (lists(stuck), lists(good), len(callers.outcomes)) == (4, 1, 44)
    busy = {str(o) for o in callers.outcomes}
    assert busy == {"plugin stuck is busy (4 operations in flight)"}
    assert {(o.name, o.in_flight, o.retry_after) for o in callers.outcomes
            if isinstance(o, PluginBusy)} == {("stuck", 4, 1)}
    assert recorder.busy_for == ["stuck"] * 44
    # only volume operations are counted as requests (probes, activations: elsewhere),
    # though they now run on the caller's thread rather than a pool of their own
    assert recorder.requests == [("good", LIST, "success")]
    stuck.stop()  # the hung calls end: the plugin went away under them
    callers.join()
    assert len(callers.outcomes) == 48
    assert callers.count(PluginBusy) == 44


def test_hung_calls_on_many_plugins_together_never_starve_a_healthy_one(
        sup: Supervisor, fakes: Callable[..., FakePlugin]) -> None:
    """Six hung plugins hold 24 calls at once (more than the old 16-thread pool had):
    every one of them reaches its plugin, and a healthy plugin is still served."""
    stuck = [fakes(f"stuck{i}") for i in range(6)]
    good = fakes("good")
    ready(sup, "good", *(f"stuck{i}" for i in range(6)))
    for fp in stuck:
        fp.set(LIST, b.Hang())
    callers = [Callers(sup, f"stuck{i}", 4) for i in range(6)]
    wait_until(lambda: [lists(fp) for fp in stuck] == [4] * 6, message="24 calls in flight")
    assert sup.call("good", lambda c: c.list()) == []
    assert lists(good) == 1
    assert [len(c.outcomes) for c in callers] == [0] * 6  # all 24 still hung
    for fp in stuck:
        fp.stop()
    for c in callers:
        c.join()
    assert sum(c.count(PluginBusy) for c in callers) == 0


def test_a_slot_is_released_however_the_call_ends(
        start: Callable[[int], Supervisor], fakes: Callable[..., FakePlugin]) -> None:
    """Success, the plugin's error, a timeout and an exception raised by the operation
    itself each give the slot back: with a bound of 1, a leaked slot would show."""
    sup = start(1)
    fp = fakes("one")
    ready(sup, "one")

    def boom(client: PluginClient) -> Any:
        raise ValueError("the operation's own bug")

    assert sup.call("one", lambda c: c.list()) == []
    fp.set(LIST, b.StatusErr(500, "disk on fire"))
    with pytest.raises(PluginReportedError):
        sup.call("one", lambda c: c.list())
    fp.set(LIST, b.Hang())
    with pytest.raises(PluginTimeout):
        sup.call("one", lambda c: c.list(timeout=0.1))
    with pytest.raises(ValueError, match="the operation's own bug"):
        sup.call("one", boom)
    fp.reset()
    for _ in range(3):  # a leaked slot: each of these would wait 1 s, then be refused
        assert sup.call("one", lambda c: c.list()) == []
    assert sup.snapshot().plugins["one"].state is PluginState.READY


def test_a_reload_with_a_new_bound_applies_to_registered_plugins(
        plugins_dir: Path, recorder: Recorder, fakes: Callable[..., FakePlugin]) -> None:
    """SIGHUP's new plugin.max_in_flight resizes the slots of plugins already known."""
    def settings(bound: int) -> Settings:
        return Settings(discovery=DiscoverySettings(dirs=(str(plugins_dir),)), probe=PROBE,
                        plugin=PluginSettings(timeouts=TIMEOUTS, max_in_flight=bound))

    sup = Supervisor(settings(4), Registry(), observer=recorder, workers=2,
                     reload=lambda: settings(1))
    sup.start()
    fp = fakes("p")
    try:
        ready(sup, "p")
        sup.put(Reload())
        wait_until(lambda: any(e.type is EventType.RESCAN and e.reason == "reload"
                               for e in sup.events(0)), message="reloaded")
        fp.set(LIST, b.Hang())
        callers = Callers(sup, "p", 1)
        wait_until(lambda: lists(fp) == 1, message="1 in flight")
        with pytest.raises(PluginBusy, match=r"^plugin p is busy \(1 operation in flight\)$"):
            sup.call("p", lambda c: c.list())
        fp.stop()
        callers.join()
    finally:
        sup.stop()
        sup.join(5)
