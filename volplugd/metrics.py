"""Prometheus metrics: the daemon's Observer and a scrape-time view of the snapshot (the
HTML status page lives in ``volplugd.statuspage``).

Per-plugin gauges are read from ``snapshot()`` at scrape time, so an evicted plugin's
series vanish with it; its counters and histograms live here and are dropped by
``forget()`` (called by ``evicted()``). Per-plugin histograms dominate a big host's
scrape (see ARCHITECTURE "Known traps"), so the ``volplugd_`` families are written by one
small text renderer with few buckets instead of ``generate_latest()``; the registry's
``collect()`` parses that same text, so both paths always agree.

Runs on: the Observer methods on the supervisor and worker threads (one short lock, they
never block on I/O and never raise); ``exposition()`` on the control and metrics HTTP
threads.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate
from threading import Lock
from typing import NamedTuple, ParamSpec

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from volplugd.log import get_logger
from volplugd.model import PluginState, PluginView, Snapshot
from volplugd.plugin.text import safe_text

__all__ = [
    "PROBE_BUCKETS",
    "REQUEST_BUCKETS",
    "Metrics",
]

P = ParamSpec("P")
log = get_logger(__name__)

# Unix-socket calls take ~0.5 ms when healthy; probes are cut at probe.timeout (5 s by
# default), operations at their deadline (up to 120 s). Each bucket costs one line per
# plugin per scrape, so there are few of them.
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0, 5.0)
REQUEST_BUCKETS = (0.0005, 0.0025, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 120.0)
LATENESS_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 30.0)
# The gateway answers refusals in well under a millisecond and forwards at plugin speed.
GATEWAY_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 120.0)
GATEWAY_OUTCOMES = ("answered", "manifest", "not_ready", "busy", "timeout", "refused",
                    "bad_response", "bad_request", "error")

# The bounded label values. Anything else a caller passes is counted under a fallback,
# so a bug upstream can never turn a volume name or an error text into a label.
PROBE_RESULTS = ("success", "timeout", "refused", "bad_response", "error")
OUTCOMES = ("success", "timeout", "refused", "bad_response", "plugin_error", "error")
DISCOVERY_EVENTS = ("added", "removed", "changed", "ignored")
RESCAN_TRIGGERS = ("startup", "periodic", "overflow", "watcher_restart", "manual", "reload")
EVICTION_REASONS = ("removed", "replaced", "reload")
ENDPOINTS = ("activate", "capabilities", "create", "remove", "get", "list", "path", "mount",
             "unmount")
_ENDPOINT_LABEL = {
    **{name: name for name in ENDPOINTS},
    "/Plugin.Activate": "activate",
    **{f"/VolumeDriver.{name.capitalize()}": name for name in ENDPOINTS[1:]},
}
MAX_ROUTES = 64  # route labels are templates; more than this means a caller passes paths


def _never_raise(method: Callable[P, None]) -> Callable[P, None]:
    """Observer calls come from the loop and workers: a metrics bug must not kill them."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:  # logged, not raised: the caller's work matters more
            log.exception("metrics_observer_failed", method=method.__name__)

    return guarded


def _seconds(value: float) -> float:
    """A duration fit for a histogram: NaN, infinities and negatives become 0."""
    return value if math.isfinite(value) and value > 0 else 0.0


def _number(value: float) -> str:
    """A float as Prometheus parses it (Python's repr, Go's spelling of the specials)."""
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _label(value: str) -> str:
    """Escape a label value for the text format (backslash, newline, double quote); a
    lone surrogate (never valid UTF-8) is first escaped visibly by ``safe_text``."""
    value = safe_text(value, None)
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Histogram(NamedTuple):
    """Non-cumulative bucket counts (the last is +Inf) and the sum of observations.

    Immutable: an observation makes a new value (a few hundred ns, next to a plugin call
    of ~0.5 ms), so a scrape copies references, not bucket lists.
    """

    counts: tuple[int, ...]
    total: float

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> _Histogram:
        return cls((0,) * (len(bounds) + 1), 0.0)

    def observe(self, bounds: tuple[float, ...], seconds: float) -> _Histogram:
        i = bisect_left(bounds, seconds)  # le: a value equal to a bound belongs to it
        counts = self.counts
        return _Histogram((*counts[:i], counts[i] + 1, *counts[i + 1:]), self.total + seconds)


class _PluginSeries:
    """One plugin's counters and histograms (mutated only under ``Metrics._lock``)."""

    __slots__ = ("busy", "gateway", "gateway_hists", "probe_hist", "probes", "request_hists",
                 "requests", "stale")

    def __init__(self) -> None:
        self.busy = 0  # operations refused with 503 plugin_busy
        self.gateway: dict[tuple[str, str], int] = {}  # (endpoint, outcome) -> requests
        self.gateway_hists: dict[str, _Histogram] = {}
        self.probes: dict[str, int] = {}
        self.probe_hist = _Histogram.empty(PROBE_BUCKETS)
        self.requests: dict[tuple[str, str], int] = {}
        self.request_hists: dict[str, _Histogram] = {}
        self.stale = False  # absent from the snapshot at the last scrape

    def copy(self) -> _PluginSeries:
        twin = _PluginSeries()
        twin.busy = self.busy
        twin.gateway = dict(self.gateway)
        twin.gateway_hists = dict(self.gateway_hists)
        twin.probes = dict(self.probes)
        twin.probe_hist = self.probe_hist
        twin.requests = dict(self.requests)
        twin.request_hists = dict(self.request_hists)
        return twin


# discovery events, rescans, evictions, control requests: copies taken for one scrape
_Totals = tuple[dict[str, int], dict[str, int], dict[str, int], dict[tuple[str, str], int],
                "_Histogram"]


class _ParsedCollector:
    """Registry adapter: ``collect()`` parses the renderer's text (one source of truth)."""

    def __init__(self, render: Callable[[], str]):
        self._render = render

    def collect(self) -> Iterable[Metric]:
        return text_string_to_metric_families(self._render())


class Metrics:
    """The daemon's Observer and its Prometheus exposition (see the module docstring)."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, version: str,
                 registry: CollectorRegistry | None = None, watcher_up: bool = False):
        # A process-wide switch: no `_created` series from any prometheus_client metric.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._snapshot = snapshot
        self._version = version
        self._lock = Lock()
        self._plugins: dict[str, _PluginSeries] = {}
        self._discovery = dict.fromkeys(DISCOVERY_EVENTS, 0)
        self._rescans = dict.fromkeys(RESCAN_TRIGGERS, 0)
        self._evictions = dict.fromkeys(EVICTION_REASONS, 0)
        self._control: dict[tuple[str, str], int] = {}
        self._routes: set[str] = set()
        self._watcher_up = watcher_up
        self._lateness = _Histogram.empty(LATENESS_BUCKETS)
        # The process/platform/GC collectors are cheap; generate_latest() writes them.
        self._runtime = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self._runtime)
        PlatformCollector(registry=self._runtime)
        GCCollector(registry=self._runtime)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self._runtime)
        self.registry.register(_ParsedCollector(self._render))

    # ------------------------------------------------------------ Observer methods

    @_never_raise
    def request(self, plugin: str, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one plugin-client call and time it by endpoint (short label name)."""
        label = _ENDPOINT_LABEL.get(endpoint, "other")
        outcome = outcome if outcome in OUTCOMES else "error"
        seconds = _seconds(seconds)  # before any change: a bad value changes nothing
        with self._lock:
            series = self._series(plugin)
            key = (label, outcome)
            series.requests[key] = series.requests.get(key, 0) + 1
            hist = series.request_hists.get(label) or _Histogram.empty(REQUEST_BUCKETS)
            series.request_hists[label] = hist.observe(REQUEST_BUCKETS, seconds)

    @_never_raise
    def probe(self, plugin: str, result: str, seconds: float) -> None:
        """Count one health probe by result and time it."""
        result = result if result in PROBE_RESULTS else "error"
        seconds = _seconds(seconds)
        with self._lock:
            series = self._series(plugin)
            series.probes[result] = series.probes.get(result, 0) + 1
            series.probe_hist = series.probe_hist.observe(PROBE_BUCKETS, seconds)

    @_never_raise
    def busy(self, plugin: str) -> None:
        """Count one volume operation refused because the plugin had its most in flight."""
        with self._lock:
            self._series(plugin).busy += 1

    @_never_raise
    def gateway_request(self, plugin: str, endpoint: str, outcome: str,
                        seconds: float) -> None:
        """Count one request answered on a gateway socket and time it by endpoint."""
        label = endpoint if endpoint in ENDPOINTS else "other"
        outcome = outcome if outcome in GATEWAY_OUTCOMES else "error"
        seconds = _seconds(seconds)
        with self._lock:
            series = self._series(plugin)
            key = (label, outcome)
            series.gateway[key] = series.gateway.get(key, 0) + 1
            hist = series.gateway_hists.get(label) or _Histogram.empty(GATEWAY_BUCKETS)
            series.gateway_hists[label] = hist.observe(GATEWAY_BUCKETS, seconds)

    @_never_raise
    def discovery(self, event: str) -> None:
        """Count one discovery event (added, removed, changed, ignored; else "other")."""
        self._bump(self._discovery, event if event in DISCOVERY_EVENTS else "other")

    @_never_raise
    def rescan(self, trigger: str) -> None:
        """Count one full scan by trigger (unknown triggers count as "other")."""
        self._bump(self._rescans, trigger if trigger in RESCAN_TRIGGERS else "other")

    @_never_raise
    def evicted(self, plugin: str, reason: str) -> None:
        """Count an eviction and drop the plugin's counters and histograms."""
        self._bump(self._evictions, reason if reason in EVICTION_REASONS else "other")
        self.forget(plugin)

    @_never_raise
    def watcher(self, up: bool) -> None:
        """Record whether the filesystem watcher runs (volplugd_watcher_up)."""
        self._watcher_up = bool(up)

    @_never_raise
    def probe_lateness(self, seconds: float) -> None:
        """Time from a probe's due moment to its dispatch (no per-plugin label)."""
        seconds = _seconds(seconds)
        with self._lock:
            self._lateness = self._lateness.observe(LATENESS_BUCKETS, seconds)

    # ------------------------------------------------------------ other inputs

    @_never_raise
    def control_request(self, route: str, code: int) -> None:
        """Count one control API answer; ``route`` is the route template, not the path."""
        with self._lock:
            if route not in self._routes:
                if len(self._routes) >= MAX_ROUTES:
                    route = "other"
                self._routes.add(route)
            key = (route, str(code))
            self._control[key] = self._control.get(key, 0) + 1

    def forget(self, plugin: str) -> None:
        """Remove every counter and histogram child of ``plugin``."""
        with self._lock:
            self._plugins.pop(plugin, None)

    # ------------------------------------------------------------ exposition

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """One scrape: (body, content type). Text format 0.0.4 unless the client accepts
        only OpenMetrics (Prometheus accepts text too, and text is the fast path)."""
        if _only_openmetrics(accept):
            body: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
            return body, openmetrics.CONTENT_TYPE_LATEST
        runtime: bytes = generate_latest(self._runtime)
        return runtime + self._render().encode(), CONTENT_TYPE_PLAIN_0_0_4

    def _series(self, plugin: str) -> _PluginSeries:
        """The plugin's series, created on first use (caller holds the lock)."""
        series = self._plugins.get(plugin)
        if series is None:
            series = self._plugins[plugin] = _PluginSeries()
        series.stale = False
        return series

    def _bump(self, counts: dict[str, int], key: str) -> None:
        with self._lock:
            counts[key] = counts.get(key, 0) + 1

    def _take(self, snapshot: Snapshot) -> tuple[dict[str, _PluginSeries], _Totals]:
        """Copy the counters and the snapshot's plugins' series under the lock (cheap:
        histograms are immutable), and prune series of plugins the snapshot lacks.

        A series whose plugin is absent from two scrapes in a row with no observation
        between is dropped: a probe that ended after its plugin was forgotten must not
        bring back an evicted plugin's series for good.
        """
        with self._lock:
            for name in [n for n in self._plugins if n not in snapshot.plugins]:
                if self._plugins[name].stale:
                    del self._plugins[name]
                else:
                    self._plugins[name].stale = True
            series = {name: s.copy() for name, s in self._plugins.items()
                      if name in snapshot.plugins}
            return series, (dict(self._discovery), dict(self._rescans),
                            dict(self._evictions), dict(self._control), self._lateness)

    def _render(self) -> str:
        """The ``volplugd_`` families in text format 0.0.4."""
        snapshot = self._snapshot()
        series, totals = self._take(snapshot)
        views = sorted(snapshot.plugins.values(), key=lambda v: v.name)
        out = _Text()
        _daemon_families(out, self._version, snapshot, self._watcher_up, totals)
        _plugin_gauges(out, views)
        _plugin_counters(out, views, series)
        return out.text()


def _only_openmetrics(accept: str | None) -> bool:
    types = {part.split(";")[0].strip().lower() for part in (accept or "").split(",")}
    return ("application/openmetrics-text" in types
            and not types & {"text/plain", "text/*", "*/*"})


class _Text:
    """A text-format writer: HELP and TYPE once per family, then sample lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, labels: str, value: float | int) -> None:
        number = str(value) if isinstance(value, int) else _number(value)
        self.lines.append(f"{name}{{{labels}}} {number}\n" if labels else f"{name} {number}\n")

    def histogram(self, template: str, labels: str, hist: _Histogram) -> None:
        """All lines of one histogram child in one ``str.format`` call (the hot loop)."""
        cumulative = tuple(accumulate(hist.counts))
        self.lines.append(template.format(labels, *cumulative, _number(hist.total),
                                          cumulative[-1]))

    def text(self) -> str:
        return "".join(self.lines)


def _histogram_template(name: str, bounds: tuple[float, ...], labelled: bool = True) -> str:
    """Format template of one histogram child: {0} labels (unused when not
    ``labelled``), {1}.. cumulative buckets, then sum and count."""
    les = (*(_number(b) for b in bounds), "+Inf")
    first = "{{{0}," if labelled else "{{"
    lines = [f'{name}_bucket{first}le="{le}"}}}} {{{i}}}\n' for i, le in enumerate(les, 1)]
    braces = "{{{0}}}" if labelled else ""
    lines.append(f"{name}_sum{braces} {{{len(les) + 1}}}\n")
    lines.append(f"{name}_count{braces} {{{len(les) + 2}}}\n")
    return "".join(lines)


_PROBE_TEMPLATE = _histogram_template("volplugd_plugin_probe_duration_seconds", PROBE_BUCKETS)
_REQUEST_TEMPLATE = _histogram_template("volplugd_plugin_request_duration_seconds",
                                        REQUEST_BUCKETS)
_GATEWAY_TEMPLATE = _histogram_template("volplugd_gateway_request_duration_seconds",
                                        GATEWAY_BUCKETS)
_LATENESS_TEMPLATE = _histogram_template("volplugd_probe_lateness_seconds", LATENESS_BUCKETS,
                                         labelled=False)


def _counter(out: _Text, name: str, label: str, help_text: str, counts: dict[str, int]) -> None:
    out.family(name, "counter", help_text)
    for value, count in sorted(counts.items()):
        out.sample(name, f'{label}="{_label(value)}"', count)


def _daemon_families(out: _Text, version: str, snapshot: Snapshot, watcher_up: bool,
                     totals: _Totals) -> None:
    """Families about the daemon as a whole (bounded, a few dozen lines)."""
    discovery, rescans, evictions, control, lateness = totals
    out.family("volplugd_build_info", "gauge", "Always 1; the version label says which build runs.")
    out.sample("volplugd_build_info", f'version="{_label(version)}"', 1)
    out.family("volplugd_plugins", "gauge", "Registered plugins by state.")
    for state in PluginState:
        out.sample("volplugd_plugins", f'state="{state.value}"', snapshot.counts[state.value])
    out.family("volplugd_watcher_up", "gauge",
               "1 while the filesystem watcher runs, 0 while it is down or restarting.")
    out.sample("volplugd_watcher_up", "", 1 if watcher_up else 0)
    _counter(out, "volplugd_discovery_events_total", "event",
             "Plugin files seen by discovery, by event.", discovery)
    _counter(out, "volplugd_rescans_total", "trigger", "Full scans of the plugin directories, "
             "by trigger.", rescans)
    _counter(out, "volplugd_evictions_total", "reason",
             "Plugins removed from the registry, by reason.", evictions)
    out.family("volplugd_probe_lateness_seconds", "histogram",
               "Time from a probe's due moment to its dispatch: the scheduler's slack.")
    out.histogram(_LATENESS_TEMPLATE, "", lateness)
    out.family("volplugd_control_requests_total", "counter",
               "Control API requests answered, by route template and HTTP status code.")
    for (route, code), count in sorted(control.items()):
        out.sample("volplugd_control_requests_total", f'route="{_label(route)}",code="{code}"',
                   count)


def _plugin_gauges(out: _Text, views: list[PluginView]) -> None:
    """Per-plugin gauges, straight from the snapshot."""
    out.family("volplugd_plugin_up", "gauge", "1 if the plugin is ready, 0 otherwise.")
    for view in views:
        out.sample("volplugd_plugin_up", f'plugin="{_label(view.name)}"',
                   1 if view.state is PluginState.READY else 0)
    out.family("volplugd_plugin_state", "gauge",
               "Always 1; the state label is the plugin's current state.")
    for view in views:
        out.sample("volplugd_plugin_state",
                   f'plugin="{_label(view.name)}",state="{view.state.value}"', 1)
    name = "volplugd_plugin_last_success_timestamp_seconds"
    out.family(name, "gauge", "Unix time of the plugin's last successful probe or activation.")
    for view in views:
        if view.last_success_at is not None:
            out.sample(name, f'plugin="{_label(view.name)}"', view.last_success_at)


def _plugin_counters(out: _Text, views: list[PluginView],
                     series: dict[str, _PluginSeries]) -> None:
    """Per-plugin counters and histograms of the plugins in the snapshot."""
    present = [(f'plugin="{_label(v.name)}"', series[v.name]) for v in views if v.name in series]
    out.family("volplugd_plugin_probes_total", "counter", "Health probes by result.")
    for labels, s in present:
        for result, count in sorted(s.probes.items()):
            out.sample("volplugd_plugin_probes_total", f'{labels},result="{result}"', count)
    name = "volplugd_plugin_probe_duration_seconds"
    out.family(name, "histogram", "Duration of health probes.")
    for labels, s in present:
        if s.probes:
            out.histogram(_PROBE_TEMPLATE, labels, s.probe_hist)
    out.family("volplugd_plugin_requests_total", "counter",
               "Plugin API calls by endpoint and outcome.")
    for labels, s in present:
        for (endpoint, outcome), count in sorted(s.requests.items()):
            out.sample("volplugd_plugin_requests_total",
                       f'{labels},endpoint="{endpoint}",outcome="{outcome}"', count)
    name = "volplugd_plugin_request_duration_seconds"
    out.family(name, "histogram", "Duration of plugin API calls by endpoint.")
    for labels, s in present:
        for endpoint, hist in sorted(s.request_hists.items()):
            out.histogram(_REQUEST_TEMPLATE, f'{labels},endpoint="{endpoint}"', hist)
    out.family("volplugd_plugin_busy_total", "counter", "Volume operations refused with "
               "503 plugin_busy: the plugin had plugin.max_in_flight operations in flight.")
    for labels, s in present:
        if s.busy:
            out.sample("volplugd_plugin_busy_total", labels, s.busy)
    _gateway_families(out, present)


def _gateway_families(out: _Text, present: list[tuple[str, _PluginSeries]]) -> None:
    """What Docker and Podman asked of each plugin through the gateway, and how long
    the answers took (only plugins the gateway served have samples)."""
    out.family("volplugd_gateway_requests_total", "counter",
               "Requests on gateway sockets by endpoint and outcome.")
    for labels, s in present:
        for (endpoint, outcome), count in sorted(s.gateway.items()):
            out.sample("volplugd_gateway_requests_total",
                       f'{labels},endpoint="{endpoint}",outcome="{outcome}"', count)
    out.family("volplugd_gateway_request_duration_seconds", "histogram",
               "Time from a gateway request to its answer, by endpoint.")
    for labels, s in present:
        for endpoint, hist in sorted(s.gateway_hists.items()):
            out.histogram(_GATEWAY_TEMPLATE, f'{labels},endpoint="{endpoint}"', hist)
