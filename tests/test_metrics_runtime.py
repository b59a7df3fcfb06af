"""runtime_text writes what prometheus_client's generate_latest writes, byte for byte."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from volplugd.metrics.runtime import _plain, runtime_text


class Fixed:
    """A collector that yields the same families every time."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def fixed(families: Iterable[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(Fixed(families))
    return registry


def test_the_runtime_collectors_families() -> None:
    live = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=live)
    families = list(live.collect())
    assert all(_plain(m) for m in families)  # written here, not by generate_latest
    registry = fixed(families)  # one reading, written both ways
    text = runtime_text(registry)
    assert text == generate_latest(registry)
    assert b"# TYPE process_cpu_seconds_total counter\n" in text
    assert b"python_info{" in text


def odd_families() -> list[Metric]:
    gauge = GaugeMetricFamily("odd_gauge", 'help with \\ and\nnewline and "quotes"',
                              labels=["b", "a"])
    for i, value in enumerate((0.0, -1.5, 1e20, 1234567.0, float("inf"), float("nan"))):
        gauge.add_metric([f'x\\y\n"{i}"', "é"], value)
    counter = CounterMetricFamily("odd_things", "counted", value=3)
    info = InfoMetricFamily("odd", "an info", value={"version": "1.2", "name": 'q"uote'})
    return [gauge, counter, info]


def test_odd_values_labels_and_help_texts() -> None:
    assert all(_plain(m) for m in odd_families())
    registry = fixed(odd_families())
    assert runtime_text(registry) == generate_latest(registry)


@pytest.mark.parametrize("odd", ["timestamp", "histogram", "created"])
def test_anything_else_is_written_by_generate_latest(odd: str) -> None:
    families = odd_families()
    if odd == "timestamp":
        gauge = GaugeMetricFamily("stamped", "has a timestamp")
        gauge.add_metric([], 1.0, timestamp=1700000000.5)
        families.append(gauge)
    elif odd == "histogram":
        families.append(HistogramMetricFamily("h", "a histogram", buckets=[("+Inf", 2)],
                                              sum_value=1.0))
    else:
        families.append(CounterMetricFamily("c", "with created", value=1, created=5.0))
    registry = fixed(families)
    assert runtime_text(registry) == generate_latest(registry)
