"""The registry publishes immutable snapshots and keeps a bounded, numbered event log."""

from __future__ import annotations

import json
import threading

from volplugd.model import EventType, Kind, PluginState, PluginView
from volplugd.registry import PendingEvent, Registry


def view(name: str, state: PluginState = PluginState.READY) -> PluginView:
    return PluginView(name=name, address=f"unix:///p/{name}.sock", source=f"/p/{name}.sock",
                      kind=Kind.SOCK, state=state, registered_at=0.0)


def views(*items: PluginView) -> dict[str, PluginView]:
    return {v.name: v for v in items}


def test_publish_encodes_each_view_once_and_counts_states() -> None:
    """Unchanged views keep their encoded bytes (same object); counts cover every state."""
    reg = Registry(clock=lambda: 1.0)
    a, b = view("a"), view("b", PluginState.UNHEALTHY)
    first = reg.publish(views(a, b))
    second = reg.publish(views(a, view("b")), changed={"b"})
    assert second.encoded["a"] is first.encoded["a"]
    assert second.encoded["b"] != first.encoded["b"]
    assert dict(second.counts) == {"activating": 0, "ready": 2, "unhealthy": 0,
                                   "restarting": 0, "rejected": 0}
    assert second.generation == first.generation + 1


def test_views_is_a_copy_of_the_current_snapshots_to_edit_into_the_next() -> None:
    """``views()`` equals the snapshot's plugins; editing it changes no snapshot."""
    reg = Registry()
    assert reg.views() == {}
    snap = reg.publish(views(view("a"), view("b")))
    mine = reg.views()
    assert mine == dict(snap.plugins)
    mine.pop("a")
    mine["c"] = view("c")
    assert sorted(snap.plugins) == ["a", "b"]
    assert sorted(reg.views()) == ["a", "b"]
    after = reg.publish(mine, changed={"a", "c"})
    assert sorted(after.plugins) == sorted(reg.views()) == ["b", "c"]


def test_plugins_json_is_the_contract_shape_with_a_state_filter() -> None:
    """plugins_json() joins pre-encoded records into {"plugins": [...]}, sorted by name."""
    reg = Registry()
    snap = reg.publish(views(view("b", PluginState.REJECTED), view("a")))
    assert [p["name"] for p in json.loads(snap.plugins_json())["plugins"]] == ["a", "b"]
    only = json.loads(snap.plugins_json(PluginState.REJECTED))["plugins"]
    assert [(p["name"], p["state"], p["capabilities"]) for p in only] == [("b", "rejected", None)]
    assert json.loads(snap.plugins_json(PluginState.ACTIVATING)) == {"plugins": []}


def test_events_are_numbered_bounded_and_filtered_by_since() -> None:
    """Sequence numbers increase by one; only the newest max_events are kept."""
    reg = Registry(max_events=3, clock=lambda: 0.0)
    for i in range(5):
        reg.record(EventType.DISCOVERED, f"p{i}", None, PluginState.ACTIVATING, "found")
    assert [e.seq for e in reg.events(0)] == [3, 4, 5]
    assert [e.seq for e in reg.events(2)] == [3, 4, 5]
    assert [e.seq for e in reg.events(3)] == [4, 5]
    assert [e.seq for e in reg.events(4)] == [5]
    assert reg.events(5) == ()
    assert reg.events(0)[-1].to_json() == {
        "seq": 5, "time": "1970-01-01T00:00:00.000Z", "type": "discovered", "plugin": "p4",
        "from": None, "to": "activating", "reason": "found"}


def test_events_wait_returns_when_an_event_arrives() -> None:
    """A follower blocked in events(wait=...) wakes for the next event."""
    reg = Registry()
    got: list[int] = []
    started = threading.Event()

    def follow() -> None:
        started.set()
        got.extend(e.seq for e in reg.events(0, wait=30.0))

    thread = threading.Thread(target=follow)
    thread.start()
    started.wait(5)
    reg.record(EventType.RESCAN, reason="manual")
    thread.join(10)
    assert got == [1]


def test_events_published_with_a_snapshot_appear_with_it() -> None:
    """publish(events=...) numbers them after earlier events, wakes followers, and a
    reader who sees one of them sees that snapshot (it is swapped in first, under the
    same lock)."""
    seen: list[object] = []
    reg = Registry(clock=lambda: seen.append(reg.snapshot()) or 0.0)
    reg.record(EventType.RESCAN, reason="startup")
    got: list[tuple[int, str | None]] = []
    waiting = threading.Event()

    def follow() -> None:
        waiting.set()
        got.extend((e.seq, e.plugin) for e in reg.events(1, wait=30.0))

    thread = threading.Thread(target=follow)
    thread.start()
    waiting.wait(5)
    seen.clear()
    snap = reg.publish(views(view("a", PluginState.ACTIVATING)), events=[
        PendingEvent(EventType.DISCOVERED, "a", None, PluginState.ACTIVATING, "/p/a.sock")])
    thread.join(10)
    assert seen[1:] == [snap]  # [0] is the snapshot's own time, taken before the swap
    assert [(e.seq, e.type, e.plugin, e.to_state) for e in reg.events(0)] == [
        (1, EventType.RESCAN, None, None), (2, EventType.DISCOVERED, "a", PluginState.ACTIVATING)]
    assert got == [(2, "a")]


def test_wait_returns_newer_snapshot_or_current_at_timeout() -> None:
    """wait(after) hands out a newer generation, or the current one when time is up."""
    reg = Registry()
    snap = reg.publish(views(view("a")))
    assert reg.wait(snap.generation - 1, timeout=0.0) is snap
    assert reg.wait(snap.generation, timeout=0.01) is snap


def test_incremental_publish_recounts_and_reencodes_only_changed_names() -> None:
    """Removals and additions among ``changed`` keep counts and encodings exact."""
    reg = Registry()
    a, b, c = view("a"), view("b", PluginState.UNHEALTHY), view("c", PluginState.ACTIVATING)
    first = reg.publish(views(a, b, c))
    b2 = view("b")
    second = reg.publish(views(a, b2, view("d", PluginState.REJECTED)), changed={"b", "c", "d"})
    full = Registry().publish(views(a, b2, view("d", PluginState.REJECTED)))
    assert dict(second.counts) == dict(full.counts) == {
        "activating": 0, "ready": 2, "unhealthy": 0, "restarting": 0, "rejected": 1}
    assert dict(second.encoded) == dict(full.encoded)
    assert second.encoded["a"] is first.encoded["a"]
    assert second.plugins_json() == full.plugins_json()


def test_a_plugin_added_later_is_listed_in_name_order() -> None:
    """Views come in discovery order; every list, filtered or not, is sorted by name."""
    reg = Registry()
    reg.publish(views(view("c"), view("a")))
    snap = reg.publish(views(view("c"), view("a"), view("b")), changed={"b"})
    assert snap.names == ("a", "b", "c")
    assert [p["name"] for p in json.loads(snap.plugins_json())["plugins"]] == ["a", "b", "c"]
    ready = json.loads(snap.plugins_json(PluginState.READY))["plugins"]
    assert [p["name"] for p in ready] == ["a", "b", "c"]


class CountedView(PluginView):
    """A view that counts its encodings."""

    __slots__ = ()
    encoded: list[str] = []  # reset by the test that uses it

    def to_json(self) -> dict[str, object]:
        CountedView.encoded.append(self.name)
        return super().to_json()


def counted(name: str) -> PluginView:
    return CountedView(name=name, address=f"unix:///p/{name}.sock", source=f"/p/{name}.sock",
                       kind=Kind.SOCK, state=PluginState.READY, registered_at=0.0)


def test_a_record_is_encoded_when_first_read_and_once_per_view() -> None:
    """Publishing encodes nothing; a read encodes a view once, and later snapshots reuse
    the bytes of every view that did not change."""
    CountedView.encoded = []
    reg = Registry()
    a, b = counted("a"), counted("b")
    first = reg.publish(views(a, b))
    second = reg.publish(views(a, counted("b")), changed={"b"})
    assert CountedView.encoded == []
    assert first.encoded["a"] is second.encoded["a"]
    assert CountedView.encoded == ["a"]
    json.loads(second.plugins_json())
    assert CountedView.encoded == ["a", "b"]
    assert json.loads(first.encoded["b"])["name"] == "b"  # the old snapshot, its own view
    assert CountedView.encoded == ["a", "b", "b"]
