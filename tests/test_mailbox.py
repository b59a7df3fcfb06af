"""The loop's mailbox: a put makes its descriptor readable, a take resets it and hands
over the items in order, and nothing put is lost once the descriptor is closed."""

from __future__ import annotations

import select
import signal
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


def test_a_put_from_a_signal_handler_never_waits_for_the_owners_take() -> None:
    """Signal handlers run on the owner's thread, between any two bytecodes, also inside
    ``take``: a put there must not wait for a lock the interrupted take holds (it would
    never be released). A timer signal puts while the owner takes in a tight loop; every
    item arrives and the loop ends."""
    box: Mailbox[int] = Mailbox()
    sent: list[int] = []

    def handler(signum: int, frame: object) -> None:
        sent.append(len(sent))
        box.put(sent[-1])

    previous = signal.signal(signal.SIGVTALRM, handler)
    got: list[int] = []
    try:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0.0002, 0.0002)  # CPU time: SIGVTALRM
        while len(sent) < 150:
            got.extend(box.take())
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0, 0)
        signal.signal(signal.SIGVTALRM, previous)
    got.extend(box.take())
    assert got == sent
    box.close()
