"""volplugd_plugin_busy_total: operations refused with 503 plugin_busy, per plugin."""

from __future__ import annotations

import subprocess

import pytest

from tests.test_metrics import make, promtool, snap, text, view


def test_busy_refusals_are_counted_per_plugin() -> None:
    """Each refusal counts once; a plugin never refused has no series."""
    m, _ = make(snap(view("stuck"), view("good")))
    for _ in range(3):
        m.busy("stuck")
    assert m.registry.get_sample_value("volplugd_plugin_busy_total", {"plugin": "stuck"}) == 3
    assert m.registry.get_sample_value("volplugd_plugin_busy_total", {"plugin": "good"}) is None
    assert ('# TYPE volplugd_plugin_busy_total counter\n'
            'volplugd_plugin_busy_total{plugin="stuck"} 3\n') in text(m)


def test_busy_series_vanish_with_the_plugin() -> None:
    """An evicted plugin's refusals are forgotten with its other counters."""
    m, holder = make(snap(view("stuck")))
    m.busy("stuck")
    holder.current = snap()
    m.evicted("stuck", "removed")
    assert "volplugd_plugin_busy_total{" not in text(m)
    holder.current = snap(view("stuck"))
    assert m.registry.get_sample_value("volplugd_plugin_busy_total", {"plugin": "stuck"}) is None


@pytest.mark.peer
def test_promtool_check_metrics_is_clean_with_busy_refusals() -> None:
    """`promtool check metrics` has nothing to say about the new family."""
    m, _ = make(snap(view("stuck"), view("good")))
    m.busy("stuck")
    m.request("good", "/VolumeDriver.List", "success", 0.001)
    body, _ = m.exposition()
    done = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
