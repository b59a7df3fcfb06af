"""Overdue (volplugd/overdue.py): operations in flight by the moment they become overdue."""

from __future__ import annotations

import threading

from volplugd.overdue import Overdue


def test_an_operation_still_running_past_its_moment_is_due_once() -> None:
    """due(now) names each operation running past its moment once, earliest first; one
    that ended in time never shows, nor wakes the loop."""
    ops = Overdue()
    early = ops.begin("a", 1, 5.0)
    quick = ops.begin("b", 2, 4.0)
    ops.begin("c", 3, 9.0)
    ops.end(quick)
    assert ops.wake_at() == 5.0  # not 4.0: that one ended in time
    assert ops.due(4.9) == []
    assert ops.due(5.0) == [("a", 1)]
    assert ops.due(6.0) == []  # once only
    ops.end(early)  # its end after the report is a no-op
    assert (ops.wake_at(), len(ops)) == (9.0, 1)
    assert ops.due(100.0) == [("c", 3)]
    assert (ops.wake_at(), len(ops)) == (None, 0)


def test_operations_from_many_threads_are_all_kept() -> None:
    """begin and end from many threads at once: every operation still running is due."""
    ops = Overdue()

    def work(i: int) -> None:
        for j in range(200):
            ticket = ops.begin(f"p{i}", j, float(j))
            if j % 2:
                ops.end(ticket)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    due = ops.due(1000.0)
    assert len(due) == 4 * 100
    assert {token for _, token in due} == set(range(0, 200, 2))
