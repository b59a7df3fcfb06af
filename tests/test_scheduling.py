"""The supervisor's machinery: a schedule with lazy deletion and a daemon-thread pool."""

from __future__ import annotations

import threading

import pytest

from volplugd.scheduling import Schedule, WorkerPool, current_pool


def test_schedule_pops_due_entries_in_time_order_and_skips_replaced_ones() -> None:
    """Rescheduling a token replaces its old due time; forget() drops it."""
    s = Schedule()
    s.at(5.0, 1, "a")
    s.at(3.0, 2, "b")
    s.at(4.0, 1, "a")  # replaces 5.0
    s.at(1.0, 3, "c")
    s.forget(3)
    assert s.next_time() == 3.0
    assert s.pop_due(4.5) == [(3.0, 2, "b"), (4.0, 1, "a")]
    assert s.pop_due(100.0) == []
    assert s.next_time() is None


def test_pool_runs_jobs_and_hands_back_results_and_errors() -> None:
    """Futures carry a job's result or its exception; jobs know which pool runs them."""
    pool = WorkerPool(2, "test-pool")
    try:
        assert pool.submit(current_pool).result(10) == "test-pool"
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 // 0).result(10)
    finally:
        pool.stop()
        pool.join(10)
    assert current_pool() is None


def test_pool_threads_are_daemon_threads() -> None:
    """A job hung in a plugin must never keep the interpreter from exiting."""
    pool = WorkerPool(1, "daemonic")
    try:
        assert pool.submit(lambda: threading.current_thread().daemon).result(10)
    finally:
        pool.stop()
        pool.join(10)
