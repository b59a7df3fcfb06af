"""When the daemon counts as started (READY=1): every registration the startup scan
found has been tried or is gone; once, with the snapshot published first."""

from __future__ import annotations

from tests.test_registrations import record
from volplugd.registrations import Book, Registration
from volplugd.registry import Registry
from volplugd.startup import Startup


def _added(book: Book, *records: Registration) -> tuple[Registration, ...]:
    for r in records:
        book.add(r)
    return records


def test_started_once_every_plugin_found_was_tried_or_is_gone() -> None:
    """Tried (a) and evicted (b) both end the wait; the start is published and said once."""
    registry = Registry()
    book = Book(registry, clock=lambda: 1.0)
    a, _ = _added(book, record("a", 1), record("b", 2))
    said: list[set[str]] = []
    startup = Startup(lambda: said.append(set(registry.snapshot().plugins)))
    startup.expect(book)
    startup.check(book)
    startup.tried("a", 1)
    startup.check(book)
    assert (said, startup.wait(0)) == ([], False)
    book.pop("b").client.close()
    startup.check(book)
    assert (said, startup.wait(0)) == ([{"a"}], True)
    startup.check(book)
    assert said == [{"a"}]  # exactly once
    a.client.close()


def test_a_replaced_registration_is_no_longer_waited_for(book: Book) -> None:
    """Only the registration the scan found counts: its token, not the name."""
    _added(book, record("a", 1))
    startup = Startup()
    startup.expect(book)
    book.pop("a").client.close()
    _added(book, record("a", 2))
    startup.tried("a", 2)  # a result of the new registration: not the one waited for
    startup.check(book)
    assert startup.wait(0)


def test_a_result_of_another_token_does_not_end_the_wait(book: Book) -> None:
    """A stale result (an older token of the same name) leaves the wait as it was."""
    _added(book, record("a", 2))
    startup = Startup()
    startup.expect(book)
    startup.tried("a", 1)
    startup.check(book)
    assert not startup.wait(0)


def test_nothing_found_or_a_failed_scan_starts_at_once_and_stop_ends_every_wait(
        book: Book) -> None:
    """With nothing to wait for the first check starts; before any scan, none does;
    a loop that stops releases waiters without saying it started."""
    said: list[str] = []
    startup = Startup(lambda: said.append("started"))
    startup.check(book)  # no scan reconciled yet
    assert not startup.wait(0)
    startup.expect(())
    startup.check(book)
    assert (said, startup.wait(0)) == (["started"], True)
    stopped = Startup(lambda: said.append("again"))
    stopped.stopped()
    assert (stopped.wait(0), said) == (True, ["started"])
