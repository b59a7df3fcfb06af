"""The supervisor's book: one record per registration, due times with lazy deletion,
eviction as one pop, and a publish that shows exactly the records."""

from __future__ import annotations

import threading

import pytest

from tests.waiting import wait_until
from volplugd import policy
from volplugd.config import ProbeSettings
from volplugd.model import DesiredPlugin, EventType, FileIdentity, Kind, PluginState
from volplugd.plugin.address import PluginAddress
from volplugd.plugin.client import PluginClient
from volplugd.registrations import Book, Registration, Slots
from volplugd.registry import PendingEvent, Registry


def record(name: str, token: int) -> Registration:
    path = f"/run/docker/plugins/{name}.sock"
    want = DesiredPlugin(name, PluginAddress("unix", path), path, Kind.SOCK,
                         FileIdentity(1, token, 100), ())
    return Registration(policy.register(want, token, 0.0),
                        PluginClient(name, want.address), Slots(4))


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
    assert book.next_due() == book.wake_at() == 3.0  # nothing waits to be published
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
    subject.publish()
    assert set(registry.snapshot().plugins) == {"a", "b"}
    subject.pop("a")
    assert subject.current("a", 1) is None
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
    assert book.wake_at() == 1.0 + policy.LAZY_PUBLISH  # nothing else is due
    book.at(a, 1.2)
    assert book.wake_at() == 1.2  # the earlier of a due time and the lazy publish
    book.event(PendingEvent(EventType.RESCAN, reason="manual"))
    assert not book.urgent  # no plugin event waits before it: recorded at once
    assert [e.type for e in registry.events(0)] == [EventType.RESCAN]
    book.publish()
    assert registry.snapshot().plugins["a"].last_error == "boom"
    a.client.close()


def _waiter(slots: Slots, wait: float, results: list[bool]) -> threading.Thread:
    """A thread that asks ``slots`` for a slot (waiting up to ``wait``) and records it."""
    thread = threading.Thread(target=lambda: results.append(slots.acquire(wait)))
    thread.start()
    return thread


def test_slots_bound_the_holders_and_refuse_without_waiting() -> None:
    """At most ``limit`` holders; with wait=0 a further caller is refused at once."""
    slots = Slots(2)
    assert [slots.acquire(0), slots.acquire(0), slots.acquire(0)] == [True, True, False]
    assert (slots.in_flight, slots.waiting) == (2, 0)
    slots.release()
    assert slots.acquire(0)
    assert slots.in_flight == 2


def test_a_waiter_gets_the_slot_a_holder_releases() -> None:
    """A caller waiting for a slot takes the one released while it waits."""
    slots = Slots(1)
    assert slots.acquire(0)
    results: list[bool] = []
    thread = _waiter(slots, 3600.0, results)
    wait_until(lambda: slots.waiting == 1, message="one waiter")
    slots.release()
    thread.join(10)
    assert (results, slots.in_flight, slots.waiting) == ([True], 1, 0)


def test_the_queue_is_bounded_too_past_it_a_caller_is_refused_at_once() -> None:
    """``limit`` callers may wait; one more is refused without waiting (a wait of an
    hour would hang this test), and the queued ones still get their slots."""
    slots = Slots(2)
    assert slots.acquire(0)
    assert slots.acquire(0)
    results: list[bool] = []
    threads = [_waiter(slots, 3600.0, results) for _ in range(2)]
    wait_until(lambda: slots.waiting == 2, message="two waiters")
    assert slots.acquire(3600.0) is False
    slots.release()
    slots.release()
    for thread in threads:
        thread.join(10)
    assert (results, slots.in_flight, slots.waiting) == ([True, True], 2, 0)


def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue() -> None:
    """No slot within the wait: False, and the caller no longer counts as waiting."""
    slots = Slots(1)
    assert slots.acquire(0)
    assert slots.acquire(0.05) is False
    assert (slots.in_flight, slots.waiting) == (1, 0)


def test_release_without_a_slot_is_a_bug_and_says_so() -> None:
    """Releasing more often than acquiring raises instead of raising the bound."""
    slots = Slots(1)
    with pytest.raises(RuntimeError, match=r"^Slots.release\(\) without a slot held$"):
        slots.release()
    with pytest.raises(ValueError, match=r"^limit must be >= 1, not 0$"):
        Slots(0)


def test_resize_keeps_the_holders_and_gives_a_waiter_the_new_room() -> None:
    """A reload's new bound: holders keep their slots, a waiter gets the new room."""
    slots = Slots(1)
    assert slots.acquire(0)
    results: list[bool] = []
    thread = _waiter(slots, 3600.0, results)
    wait_until(lambda: slots.waiting == 1, message="one waiter")
    slots.resize(2)
    thread.join(10)
    assert (results, slots.in_flight) == ([True], 2)
    slots.resize(1)
    assert slots.acquire(0) is False
