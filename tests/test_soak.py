"""A short soak (``bench/soak.py``) against the real daemon: behaviour only, no timings.

A few hundred plugin sockets created and deleted (a tenth with names that are not
UTF-8) while hostile plugins hang, drip, answer 64 MiB, garbage or half an answer, and
one is killed in the middle of a volume call, with readers polling ``/v1/health``,
``/v1/plugins``, ``/metrics`` and ``/v1/events`` all along. Nothing answers 500 or fails
to answer, each hostile plugin gets its exact status, and once the storm is over the
daemon lists only its steady plugins and holds no more fds and threads than before it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[1] / "bench"
# What volplugd answers a volume call to each hostile plugin (a timeout or a lost
# connection counts towards its health: it may be unhealthy, 409, by the next call).
EXPECTED = {"hang": {409}, "badactivate": {409}, "drip": {504, 409}, "huge": {502},
            "garbage": {502}, "closemid": {502, 409}}


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("soak")


def test_a_short_soak_answers_everyone_and_leaks_nothing(soak: ModuleType) -> None:
    """300 cycles with every hostile plugin: no 5xx, exact answers, back to baseline."""
    report = soak.soak(300, base=1.0, quiet=True)
    assert [line for r in report.readers for line in r.five_xx + r.failures] == []
    assert report.bad_calls == []
    assert all(len(r.times["storm"]) > 0 for r in report.readers)
    answered: dict[str, set[int]] = {}
    for key, _count in report.calls.items():
        name, status = key.split()
        answered.setdefault(name, set()).add(int(status))
    assert set(answered) == set(EXPECTED)
    assert all(answered[name] <= EXPECTED[name] for name in EXPECTED), (answered, report.refused)
    assert report.kills >= 1
    assert set(report.killed) <= {409, 502}, report.killed
    assert report.discovered > 0  # the storm reached the daemon
    assert report.settled, (report.before, report.after)
    assert report.after.fds <= report.before.fds
    assert report.after.threads <= report.before.threads
