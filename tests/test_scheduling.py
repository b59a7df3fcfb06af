"""The supervisor's machinery: a daemon-thread pool, and the slots that bound a plugin's
operations in flight (due times: tests/test_registrations.py)."""

from __future__ import annotations

import threading

import pytest

from tests.waiting import wait_until
from volplugd.scheduling import Slots, WorkerPool


def test_pool_runs_jobs_and_hands_back_results_and_errors() -> None:
    """Futures carry a job's result or its exception; jobs run on the pool's threads."""
    pool = WorkerPool(2, "test-pool")
    try:
        name = pool.submit(lambda: threading.current_thread().name).result(10)
        assert name in {"test-pool-0", "test-pool-1"}
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 // 0).result(10)
    finally:
        pool.stop()
        pool.join(10)


def test_pool_threads_are_daemon_threads() -> None:
    """A job hung in a plugin must never keep the interpreter from exiting."""
    pool = WorkerPool(1, "daemonic")
    try:
        assert pool.submit(lambda: threading.current_thread().daemon).result(10)
    finally:
        pool.stop()
        pool.join(10)


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


def test_resize_keeps_the_holders_and_admits_waiters_to_new_room() -> None:
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
