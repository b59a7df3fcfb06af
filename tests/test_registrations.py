"""The supervisor's book: one record per registration, due times with lazy deletion,
eviction as one pop, and a publish that shows exactly the records."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from volplugd import policy
from volplugd.config import ProbeSettings
from volplugd.model import DesiredPlugin, EventType, FileIdentity, Kind, PluginState
from volplugd.plugin.address import PluginAddress
from volplugd.plugin.client import PluginClient
from volplugd.registrations import Book, Registration
from volplugd.registry import PendingEvent, Registry
from volplugd.scheduling import Slots


def record(name: str, token: int) -> Registration:
    path = f"/run/docker/plugins/{name}.sock"
    want = DesiredPlugin(name, PluginAddress("unix", path), path, Kind.SOCK,
                         FileIdentity(1, token, 100), ())
    return Registration(policy.register(want, token, 0.0),
                        PluginClient(name, want.address), Slots(4))


@pytest.fixture
def book() -> Iterator[Book]:
    subject = Book(Registry(), clock=lambda: 1.0)
    yield subject
    for r in subject:
        r.client.close()


def test_due_records_pop_in_time_order_and_replaced_times_are_skipped(book: Book) -> None:
    """Rescheduling a record replaces its old due time; unscheduling (due = None) and
    eviction drop it."""
    a, b, c, d = record("a", 1), record("b", 2), record("c", 3), record("d", 4)
    for r in (a, b, c, d):
        book.add(r)
    book.at(a, 5.0)
    book.at(b, 3.0)
    book.at(a, 4.0)  # replaces 5.0
    book.at(c, 1.0)
    c.due = None
    book.at(d, 2.0)
    book.pop("d")
    assert book.next_due() == 3.0
    assert book.pop_due(4.5) == [(3.0, b), (4.0, a)]
    assert (a.due, b.due) == (None, None)
    assert book.pop_due(100.0) == []
    assert book.next_due() is None


def test_a_replaced_registration_does_not_inherit_the_old_ones_due_time(book: Book) -> None:
    old, new = record("a", 1), record("a", 2)
    book.add(old)
    book.at(old, 1.0)
    book.pop("a")
    book.add(new)
    assert book.current("a", 1) is None
    assert book.current("a", 2) is new
    assert book.pop_due(10.0) == []


def test_eviction_is_one_pop_and_the_publish_shows_exactly_the_records() -> None:
    registry = Registry()
    subject = Book(registry, clock=lambda: 1.0)
    a, b = record("a", 1), record("b", 2)
    subject.add(a)
    subject.add(b)
    subject.start_all()
    assert subject.starting == 2
    subject.publish()
    assert set(registry.snapshot().plugins) == {"a", "b"}
    subject.pop("a")
    assert subject.starting == 1  # the startup scan no longer waits for it
    subject.update(b, policy.rejected(b.tracked, ("Other",), "not a volume driver", 2.0))
    assert subject.urgent  # a state change publishes at once, with its event
    subject.publish()
    snap = registry.snapshot()
    assert set(snap.plugins) == {"b"}
    assert snap.plugins["b"].state is PluginState.REJECTED
    assert snap.counts["rejected"] == 1
    assert [(e.type, e.plugin) for e in registry.events(0)] == [
        (EventType.STATE_CHANGED, "b")]
    a.client.close()
    b.client.close()


def test_a_timestamp_only_change_waits_and_a_rescan_event_goes_out_at_once() -> None:
    registry = Registry()
    book = Book(registry, clock=lambda: 1.0)
    a = record("a", 1)
    book.add(a)
    book.publish()
    book.update(a, policy.probe_failed(a.tracked, ProbeSettings(), "boom", 2.0))
    assert not book.urgent
    assert book.lazy_since == 1.0
    assert not book.publish_due(1.4)
    assert book.publish_due(1.5)
    book.event(PendingEvent(EventType.RESCAN, reason="manual"))
    assert not book.urgent  # no plugin event waits before it: recorded at once
    assert [e.type for e in registry.events(0)] == [EventType.RESCAN]
    book.publish()
    assert registry.snapshot().plugins["a"].last_error == "boom"
    a.client.close()
