"""RefusalLog: one line per window per event, uid and reason, the next one carrying the
count left out (a clock of our own: no waiting)."""

from __future__ import annotations

from structlog.testing import capture_logs

from volplugd.refusals import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(logs: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(e["event"], e["uid"], e["reason"], e["suppressed"], e["refused"]) for e in logs]


def test_one_line_per_window_and_the_next_says_how_many_were_left_out() -> None:
    """80 refusals in one window: one line; the first after the window: a line with 79
    left out; another uid, reason or event has a window of its own."""
    clock = Clock()
    refusals = RefusalLog("volplugd.test", clock=clock)
    with capture_logs() as logs:
        logged = [refusals.refused("x_refused", 7, "forbidden", path="/p") for _ in range(80)]
        refusals.refused("x_refused", 8, "forbidden")
        refusals.refused("x_refused", 7, "uid_limit")
        refusals.refused("y_refused", 7, "forbidden")
        clock.now += 9.99
        refusals.refused("x_refused", 7, "forbidden")  # still the first window
        clock.now += 0.01
        refusals.refused("x_refused", 7, "forbidden")
    assert logged == [True] + [False] * 79
    assert _lines(logs) == [
        ("x_refused", 7, "forbidden", 0, 1), ("x_refused", 8, "forbidden", 0, 1),
        ("x_refused", 7, "uid_limit", 0, 1), ("y_refused", 7, "forbidden", 0, 1),
        ("x_refused", 7, "forbidden", 80, 81)]
    assert logs[0]["path"] == "/p"
    assert logs[0]["log_level"] == "warning"


def test_finished_windows_are_forgotten_when_many_are_kept(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Past MAX_WINDOWS keys, windows that ended are dropped (memory stays bounded);
    a uid seen again after that starts afresh."""
    monkeypatch.setattr("volplugd.refusals.MAX_WINDOWS", 3)
    clock = Clock()
    refusals = RefusalLog("volplugd.test", clock=clock)
    with capture_logs() as logs:
        for uid in (1, 2, 3):
            refusals.refused("x_refused", uid, "full")
        refusals.refused("x_refused", 1, "full")  # counted in its window
        clock.now += 10.0
        refusals.refused("x_refused", 4, "full")  # the finished windows go
        refusals.refused("x_refused", 1, "full")
    assert [(e["uid"], e["suppressed"]) for e in logs] == [(1, 0), (2, 0), (3, 0), (4, 0),
                                                             (1, 0)]
