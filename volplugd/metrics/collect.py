"""The ``volplugd_`` families as prometheus_client ``Metric`` objects, for the registry
(``registry.get_sample_value``, the OpenMetrics exposition).

Built from the same ``Taken`` and the same family table as the text renderer, sample
for sample what ``prometheus_client.parser`` reads back from that text (a test holds the
two to it); nothing here parses text. Not the fast path: Prometheus gets the text
from ``render``. Text from these objects would make one path for both formats, at many
times a scrape's cost (docs/performance.md, "One metrics path?"), so both stay.

Runs on: the threads that serve a scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import Metric

from volplugd.metrics.families import DAEMON, PLUGIN_COUNTERS, PLUGIN_GAUGES, Family
from volplugd.metrics.observer import (
    GATEWAY_BUCKETS,
    LATENESS_BUCKETS,
    PROBE_BUCKETS,
    REQUEST_BUCKETS,
    Histogram,
    PluginSeries,
    Taken,
)
from volplugd.metrics.render import number, unit_of
from volplugd.model import PluginState
from volplugd.plugin.text import safe_text

__all__ = ["RegistryCollector", "families"]

Labels = dict[str, str]


def _metric(family: Family) -> Metric:
    return Metric(family.registry_name, family.help, family.kind)


def _histogram(metric: Metric, labels: Labels, bounds: tuple[float, ...],
               hist: Histogram) -> None:
    running = 0
    for le, count in zip((*(number(b) for b in bounds), "+Inf"), hist.counts, strict=True):
        running += count
        metric.add_sample(f"{metric.name}_bucket", {**labels, "le": le}, running)
    metric.add_sample(f"{metric.name}_sum", labels, hist.total)
    metric.add_sample(f"{metric.name}_count", labels, running)


def _counter(family: Family, label: str, counts: Mapping[str, int]) -> Metric:
    metric = _metric(family)
    for value, count in sorted(counts.items()):
        metric.add_sample(family.name, {label: safe_text(value, None)}, count)
    return metric


def _daemon(taken: Taken, version: str) -> list[Metric]:
    """The families about the daemon as a whole (DAEMON, in order)."""
    (build, plugins, watcher, discovery, rescans, evictions, lateness, control, refused,
     loop_errors, gateway_refused, stale_removed) = DAEMON
    out = [_metric(build), _metric(plugins), _metric(watcher),
           _counter(discovery, "event", taken.discovery),
           _counter(rescans, "trigger", taken.rescans),
           _counter(evictions, "reason", taken.evictions),
           _metric(lateness), _metric(control), _counter(refused, "reason", taken.refused),
           _counter(loop_errors, "errno", taken.loop_errors),
           _counter(gateway_refused, "reason", taken.gateway_refused),
           _metric(stale_removed)]
    out[0].add_sample(build.name, {"version": safe_text(version, None)}, 1)
    for state in PluginState:
        out[1].add_sample(plugins.name, {"state": state.value},
                          taken.snapshot.counts[state.value])
    out[2].add_sample(watcher.name, {}, 1 if taken.watcher_up else 0)
    out[-1].add_sample(stale_removed.name, {}, taken.stale_sockets_removed)
    _histogram(out[6], {}, LATENESS_BUCKETS, taken.lateness)
    for (route, code), count in sorted(taken.control.items()):
        out[7].add_sample(control.name, {"route": safe_text(route, None), "code": code},
                          count)
    return out


def families(taken: Taken, version: str) -> list[Metric]:
    """Every ``volplugd_`` family of ``taken``, in the text renderer's order."""
    views = [taken.snapshot.plugins[name] for name in taken.snapshot.names]
    up, state, last, info = (_metric(f) for f in PLUGIN_GAUGES)
    for view in views:
        labels = {"plugin": safe_text(view.name, None)}
        up.add_sample(up.name, labels, 1 if view.state is PluginState.READY else 0)
        state.add_sample(state.name, {**labels, "state": view.state.value}, 1)
        if view.last_success_at is not None:
            last.add_sample(last.name, labels, view.last_success_at)
        info.add_sample(info.name, {**labels, "unit": safe_text(unit_of(view), None)}, 1)
    counters = tuple(_metric(f) for f in PLUGIN_COUNTERS)
    for view in views:
        s = taken.series.get(view.name)
        if s is not None:
            _add_series(counters, {"plugin": safe_text(view.name, None)}, s)
    return [*_daemon(taken, version), up, state, last, info, *counters]


def _add_series(counters: tuple[Metric, ...], labels: Labels, s: PluginSeries) -> None:
    """One plugin's samples of PLUGIN_COUNTERS (a counter's samples are named as in the
    family table, with _total, not as its Metric)."""
    (probes, probe_hist, requests, request_hists, busy, gateway, gateway_hists, restarts,
     given_up) = counters
    for result, count in sorted(s.probes.items()):
        probes.add_sample(PLUGIN_COUNTERS[0].name, {**labels, "result": result}, count)
    if s.probes:
        _histogram(probe_hist, labels, PROBE_BUCKETS, s.probe_hist)
    for (endpoint, outcome), count in sorted(s.requests.items()):
        requests.add_sample(PLUGIN_COUNTERS[2].name,
                            {**labels, "endpoint": endpoint, "outcome": outcome}, count)
    for endpoint, hist in sorted(s.request_hists.items()):
        _histogram(request_hists, {**labels, "endpoint": endpoint}, REQUEST_BUCKETS, hist)
    if s.busy:
        busy.add_sample(PLUGIN_COUNTERS[4].name, labels, s.busy)
    for (endpoint, outcome), count in sorted(s.gateway.items()):
        gateway.add_sample(PLUGIN_COUNTERS[5].name,
                           {**labels, "endpoint": endpoint, "outcome": outcome}, count)
    for endpoint, hist in sorted(s.gateway_hists.items()):
        _histogram(gateway_hists, {**labels, "endpoint": endpoint}, GATEWAY_BUCKETS, hist)
    for outcome, count in sorted(s.restarts.items()):
        restarts.add_sample(PLUGIN_COUNTERS[7].name, {**labels, "outcome": outcome}, count)
    if s.given_up is not None:
        given_up.add_sample(given_up.name, labels, int(s.given_up))


class RegistryCollector:
    """A prometheus_client collector of ``families(take(), version)``."""

    def __init__(self, take: Callable[[], Taken], version: str):
        self._take = take
        self._version = version

    def collect(self) -> Iterable[Metric]:
        return families(self._take(), self._version)
