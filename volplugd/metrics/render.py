"""The ``volplugd_`` families in the text format 0.0.4, from one ``Taken``.

Per-plugin series dominate a big host's scrape (docs/performance.md, ``bench/scrape.py``),
so each plugin's lines are rendered once per change and kept: its gauge lines until its state or
last success changes, its counter and histogram lines until the observer replaced its
``PluginSeries`` (held here, so ``is`` tells). A scrape renders what changed since the
last one, then joins the kept fragments family by family in name order.

Runs on: the threads that serve a scrape (one at a time: the cache has one lock).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import accumulate
from operator import itemgetter
from threading import Lock
from typing import NamedTuple

from volplugd.metrics.families import DAEMON, PLUGIN_COUNTERS, PLUGIN_GAUGES
from volplugd.metrics.observer import (
    GATEWAY_BUCKETS,
    LATENESS_BUCKETS,
    PROBE_BUCKETS,
    REQUEST_BUCKETS,
    Histogram,
    PluginSeries,
    Taken,
)
from volplugd.model import PluginState, PluginView
from volplugd.plugin.text import safe_text

__all__ = ["TextRenderer", "number"]


def number(value: float) -> str:
    """A float as Prometheus parses it (Python's repr, Go's spelling of the specials)."""
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _label(value: str) -> str:
    """Escape a label value for the text format (backslash, newline, double quote); a
    lone surrogate (never valid UTF-8) is first escaped visibly by ``safe_text``."""
    value = safe_text(value, None)
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _histogram_template(name: str, bounds: tuple[float, ...], labelled: bool = True) -> str:
    """Format template of one histogram child: {0} labels (unused when not
    ``labelled``), {1}.. cumulative buckets, then sum and count."""
    les = (*(number(b) for b in bounds), "+Inf")
    first = "{{{0}," if labelled else "{{"
    lines = [f'{name}_bucket{first}le="{le}"}}}} {{{i}}}\n' for i, le in enumerate(les, 1)]
    braces = "{{{0}}}" if labelled else ""
    lines.append(f"{name}_sum{braces} {{{len(les) + 1}}}\n")
    lines.append(f"{name}_count{braces} {{{len(les) + 2}}}\n")
    return "".join(lines)


def _histogram(template: str, labels: str, hist: Histogram) -> str:
    """All lines of one histogram child in one ``str.format`` call."""
    cumulative = tuple(accumulate(hist.counts))
    return template.format(labels, *cumulative, number(hist.total), cumulative[-1])


_PROBE = _histogram_template("volplugd_plugin_probe_duration_seconds", PROBE_BUCKETS)
_REQUEST = _histogram_template("volplugd_plugin_request_duration_seconds", REQUEST_BUCKETS)
_GATEWAY = _histogram_template("volplugd_gateway_request_duration_seconds", GATEWAY_BUCKETS)
_LATENESS = _histogram_template("volplugd_probe_lateness_seconds", LATENESS_BUCKETS,
                                labelled=False)
_HEADERS = {f.name: f.header.encode() for f in (*PLUGIN_GAUGES, *PLUGIN_COUNTERS)}
_NO_COUNTERS = (b"",) * len(PLUGIN_COUNTERS)


def _last_success(labels: str, last: float | None) -> bytes:
    if last is None:
        return b""
    return f"volplugd_plugin_last_success_timestamp_seconds{{{labels}}} {number(last)}\n".encode()


def unit_of(view: PluginView) -> str:
    """The ``unit`` label of ``volplugd_plugin_info``: the unit that runs the plugin's
    process, or "" when none is known."""
    process = view.process
    return "" if process is None or process.unit is None else process.unit


def _gauges(labels: str, view: PluginView) -> tuple[bytes, ...]:
    """The plugin's lines of PLUGIN_GAUGES, one UTF-8 string per family."""
    up = 1 if view.state is PluginState.READY else 0
    return (f"volplugd_plugin_up{{{labels}}} {up}\n".encode(),
            f'volplugd_plugin_state{{{labels},state="{view.state.value}"}} 1\n'.encode(),
            _last_success(labels, view.last_success_at),
            f'volplugd_plugin_info{{{labels},unit="{_label(unit_of(view))}"}} 1\n'.encode())


def _probe_lines(labels: str, s: PluginSeries) -> tuple[bytes, bytes]:
    return ("".join(f'volplugd_plugin_probes_total{{{labels},result="{result}"}} {count}\n'
                    for result, count in sorted(s.probes.items())).encode(),
            _histogram(_PROBE, labels, s.probe_hist).encode() if s.probes else b"")


def _endpoint_lines(counter: str, template: str, labels: str,
                    counts: Mapping[tuple[str, str], int],
                    hists: Mapping[str, Histogram]) -> tuple[bytes, bytes]:
    """Counts by (endpoint, outcome) and a histogram per endpoint: the plugin client's
    requests and the gateway's alike."""
    return ("".join(f'{counter}{{{labels},endpoint="{endpoint}",outcome="{outcome}"}} '
                    f'{count}\n' for (endpoint, outcome), count in sorted(counts.items())
                    ).encode(),
            "".join(_histogram(template, f'{labels},endpoint="{endpoint}"', hist)
                    for endpoint, hist in sorted(hists.items())).encode())


def _request_lines(labels: str, s: PluginSeries) -> tuple[bytes, bytes]:
    return _endpoint_lines("volplugd_plugin_requests_total", _REQUEST, labels, s.requests,
                           s.request_hists)


def _gateway_lines(labels: str, s: PluginSeries) -> tuple[bytes, bytes]:
    return _endpoint_lines("volplugd_gateway_requests_total", _GATEWAY, labels, s.gateway,
                           s.gateway_hists)


def _busy_line(labels: str, s: PluginSeries) -> bytes:
    return f"volplugd_plugin_busy_total{{{labels}}} {s.busy}\n".encode() if s.busy else b""


def _restart_lines(labels: str, s: PluginSeries) -> tuple[bytes, bytes]:
    given_up = b"" if s.given_up is None else \
        f"volplugd_plugin_restart_given_up{{{labels}}} {int(s.given_up)}\n".encode()
    return ("".join(f'volplugd_plugin_restarts_total{{{labels},outcome="{outcome}"}} '
                    f'{count}\n' for outcome, count in sorted(s.restarts.items())).encode(),
            given_up)


def _counters(labels: str, s: PluginSeries | None, old: PluginSeries | None,
              kept: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The plugin's lines of PLUGIN_COUNTERS, one UTF-8 string per family. ``kept`` were
    rendered from ``old``: a part whose mappings ``s`` still shares is reused (a probe
    replaces the probe counts and histogram only, so only those are rendered again)."""
    if s is None:
        return _NO_COUNTERS
    if old is None:
        return (*_probe_lines(labels, s), *_request_lines(labels, s), _busy_line(labels, s),
                *_gateway_lines(labels, s), *_restart_lines(labels, s))
    return (
        *(kept[0:2] if old.probes is s.probes and old.probe_hist is s.probe_hist
          else _probe_lines(labels, s)),
        *(kept[2:4] if old.requests is s.requests and old.request_hists is s.request_hists
          else _request_lines(labels, s)),
        kept[4] if old.busy == s.busy else _busy_line(labels, s),
        *(kept[5:7] if old.gateway is s.gateway and old.gateway_hists is s.gateway_hists
          else _gateway_lines(labels, s)),
        *(kept[7:9] if old.restarts is s.restarts and old.given_up == s.given_up
          else _restart_lines(labels, s)),
    )


class _Fragments(NamedTuple):
    """One plugin's rendered lines and what they were rendered from."""

    labels: str  # plugin="<escaped name>"
    state: PluginState
    unit: str
    last_success: float | None
    gauges: tuple[bytes, ...]
    series: PluginSeries | None
    counters: tuple[bytes, ...]


def _counter_lines(name: str, label: str, counts: Mapping[str, int]) -> str:
    return "".join(f'{name}{{{label}="{_label(value)}"}} {count}\n'
                   for value, count in sorted(counts.items()))


def daemon_text(taken: Taken, version: str) -> str:
    """The families about the daemon as a whole (DAEMON, in order)."""
    (build, plugins, watcher, discovery, rescans, evictions, lateness, control, refused,
     loop_errors, gateway_refused, stale_removed) = DAEMON
    counts = taken.snapshot.counts
    return "".join((
        build.header, f'volplugd_build_info{{version="{_label(version)}"}} 1\n',
        plugins.header,
        *(f'volplugd_plugins{{state="{s.value}"}} {counts[s.value]}\n' for s in PluginState),
        watcher.header, f"volplugd_watcher_up {1 if taken.watcher_up else 0}\n",
        discovery.header, _counter_lines(discovery.name, "event", taken.discovery),
        rescans.header, _counter_lines(rescans.name, "trigger", taken.rescans),
        evictions.header, _counter_lines(evictions.name, "reason", taken.evictions),
        lateness.header, _histogram(_LATENESS, "", taken.lateness),
        control.header,
        *(f'{control.name}{{route="{_label(route)}",code="{code}"}} {count}\n'
          for (route, code), count in sorted(taken.control.items())),
        refused.header, _counter_lines(refused.name, "reason", taken.refused),
        loop_errors.header, _counter_lines(loop_errors.name, "errno", taken.loop_errors),
        gateway_refused.header,
        _counter_lines(gateway_refused.name, "reason", taken.gateway_refused),
        stale_removed.header, f"{stale_removed.name} {taken.stale_sockets_removed}\n",
    ))


class TextRenderer:
    """Renders scrapes, keeping each plugin's fragments between them (module docstring)."""

    def __init__(self) -> None:
        self._lock = Lock()
        self._kept: dict[str, _Fragments] = {}

    def render(self, taken: Taken, version: str, head: bytes = b"") -> bytes:
        """``head``, then the ``volplugd_`` families of ``taken`` (UTF-8): the daemon's,
        then the per-plugin ones, each family's fragments joined in name order."""
        with self._lock:
            rows = self._update(taken)
        parts = [head, daemon_text(taken, version).encode()]
        for families, fragments in ((PLUGIN_GAUGES, [row.gauges for row in rows]),
                                    (PLUGIN_COUNTERS, [row.counters for row in rows])):
            for i, family in enumerate(families):
                parts.append(_HEADERS[family.name])
                parts.extend(map(itemgetter(i), fragments))
        return b"".join(parts)

    def _update(self, taken: Taken) -> list[_Fragments]:
        """Each plugin's fragments in name order, rendering only what changed; plugins
        gone from the snapshot are dropped from the cache (caller holds the lock)."""
        kept, plugins, series = self._kept, taken.snapshot.plugins, taken.series
        fresh: dict[str, _Fragments] = {}
        for name in taken.snapshot.names:
            view, s, row = plugins[name], series.get(name), kept.get(name)
            if row is None:
                labels = f'plugin="{_label(name)}"'
                row = _Fragments(labels, view.state, unit_of(view), view.last_success_at,
                                 _gauges(labels, view), s, _counters(labels, s, None, ()))
            else:
                labels, gauges, counters = row.labels, row.gauges, row.counters
                last, unit = view.last_success_at, unit_of(view)
                if row.state is not view.state or row.unit != unit:
                    gauges = _gauges(labels, view)
                elif row.last_success != last:  # a probe succeeded
                    gauges = (*gauges[:2], _last_success(labels, last), gauges[3])
                if row.series is not s:
                    counters = _counters(labels, s, row.series, counters)
                if gauges is not row.gauges or counters is not row.counters:
                    row = _Fragments(labels, view.state, unit, last, gauges, s, counters)
            fresh[name] = row
        self._kept = fresh
        return list(fresh.values())
