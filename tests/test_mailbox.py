"""The loop's mailbox: a put makes its descriptor readable, a take resets it and hands
over the items in order, and nothing put is lost once the descriptor is closed."""

from __future__ import annotations

import select
import threading

from volplugd.mailbox import Mailbox


def readable(box: Mailbox[object], timeout: float = 0.0) -> bool:
    return bool(select.select([box.fileno()], [], [], timeout)[0])


def test_a_put_from_another_thread_wakes_a_poll_and_take_quiets_it() -> None:
    """A poll on the descriptor returns once another thread puts; take hands the items
    over oldest first and leaves the descriptor quiet."""
    box: Mailbox[object] = Mailbox()
    try:
        assert (readable(box), box.empty()) == (False, True)
        putter = threading.Thread(target=lambda: [box.put(i) for i in range(3)])
        putter.start()
        assert readable(box, timeout=30)
        putter.join(10)
        assert (box.take(), readable(box), box.empty()) == ([0, 1, 2], False, True)
    finally:
        box.close()


def test_a_limited_take_leaves_the_rest_queued_and_says_so_by_empty() -> None:
    """take(limit) leaves the rest queued; the descriptor is reset, so the owner asks
    ``empty()`` before it waits again (as the supervisor does)."""
    box: Mailbox[str] = Mailbox()
    try:
        for item in "abc":
            box.put(item)
        assert box.take(2) == ["a", "b"]
        assert (readable(box), box.empty()) == (False, False)
        assert box.take() == ["c"]
    finally:
        box.close()


def test_after_close_a_put_is_kept_for_take_and_wakes_nobody() -> None:
    """Closing frees the descriptor; a later put (a caller racing a stopping loop) is
    still queued, never raises, and a take hands it over."""
    box: Mailbox[str] = Mailbox()
    box.close()
    box.put("late")
    assert box.take() == ["late"]
    box.close()  # twice: nothing to do
