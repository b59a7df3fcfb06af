"""The daemon's Observer: counters and histograms fed by the supervisor, the gateway and
the control server, and ``take()``, one consistent copy of them for a scrape.

A plugin's series are one immutable ``PluginSeries``: an observation replaces it (cheap
beside the plugin call it counts), so a scrape copies references, and a renderer
knows a plugin's counters did not change since its last render when it holds the very
same object (``is``).

Runs on: the Observer methods on the supervisor, worker, gateway and control threads
(one short lock, they never block on I/O and never raise); ``take()`` on the threads that
serve a scrape.
"""

from __future__ import annotations

import errno
import functools
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping
from threading import Lock
from typing import NamedTuple, ParamSpec

from volplugd.log import get_logger
from volplugd.model import Snapshot
from volplugd.supervision.restart import OUTCOMES as RESTART_OUTCOMES

__all__ = [
    "DISCOVERY_EVENTS",
    "ENDPOINTS",
    "EVICTION_REASONS",
    "GATEWAY_BUCKETS",
    "LATENESS_BUCKETS",
    "MAX_ROUTES",
    "OUTCOMES",
    "PROBE_BUCKETS",
    "PROBE_RESULTS",
    "REFUSAL_REASONS",
    "REQUEST_BUCKETS",
    "RESCAN_TRIGGERS",
    "Histogram",
    "Observations",
    "PluginSeries",
    "Taken",
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
RESCAN_TRIGGERS = ("startup", "periodic", "overflow", "watcher_restart", "flood", "manual",
                   "reload")
EVICTION_REASONS = ("removed", "replaced", "reload")
REFUSAL_REASONS = ("full", "uid_limit")  # admission.Refusal's values
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


class Histogram(NamedTuple):
    """Non-cumulative bucket counts (the last is +Inf) and the sum of observations."""

    counts: tuple[int, ...]
    total: float

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls((0,) * (len(bounds) + 1), 0.0)

    def observe(self, bounds: tuple[float, ...], seconds: float) -> Histogram:
        i = bisect_left(bounds, seconds)  # le: a value equal to a bound belongs to it
        counts = self.counts
        return Histogram((*counts[:i], counts[i] + 1, *counts[i + 1:]), self.total + seconds)


_EMPTY_PROBE_HIST = Histogram.empty(PROBE_BUCKETS)


class PluginSeries(NamedTuple):
    """One plugin's counters and histograms. Never changed once made: an observation
    makes a new one (the mappings are fresh copies, never mutated afterwards)."""

    busy: int = 0  # operations refused with 503 plugin_busy
    probes: Mapping[str, int] = {}  # result -> probes
    probe_hist: Histogram = _EMPTY_PROBE_HIST
    requests: Mapping[tuple[str, str], int] = {}  # (endpoint, outcome) -> calls
    request_hists: Mapping[str, Histogram] = {}
    gateway: Mapping[tuple[str, str], int] = {}  # (endpoint, outcome) -> requests
    gateway_hists: Mapping[str, Histogram] = {}
    restarts: Mapping[str, int] = {}  # outcome -> restarts ended so (or budgets given up)
    given_up: bool | None = None  # None: volplugd never restarted it


def _plus(counts: Mapping[str, int], key: str) -> dict[str, int]:
    return {**counts, key: counts.get(key, 0) + 1}


def _plus2(counts: Mapping[tuple[str, str], int], key: tuple[str, str]) -> dict[
        tuple[str, str], int]:
    return {**counts, key: counts.get(key, 0) + 1}


def _observed(hists: Mapping[str, Histogram], label: str, bounds: tuple[float, ...],
              seconds: float) -> dict[str, Histogram]:
    hist = hists.get(label) or Histogram.empty(bounds)
    return {**hists, label: hist.observe(bounds, seconds)}


class Taken(NamedTuple):
    """What one scrape renders: the snapshot, the series of the plugins in it, and the
    daemon-wide counters (copies: the observer goes on counting meanwhile)."""

    snapshot: Snapshot
    series: Mapping[str, PluginSeries]
    watcher_up: bool
    discovery: Mapping[str, int]
    rescans: Mapping[str, int]
    evictions: Mapping[str, int]
    control: Mapping[tuple[str, str], int]  # (route, code) -> answers
    lateness: Histogram
    refused: Mapping[str, int]  # reason -> connections refused at accept
    loop_errors: Mapping[str, int]  # errno name -> OS errors the loop went on after
    gateway_refused: Mapping[str, int]  # reason -> gateway connections refused at accept
    stale_sockets_removed: int


class Observations:
    """The contracts.Observer of the daemon, plus the control server's and gateway's counts."""

    def __init__(self, *, watcher_up: bool = False) -> None:
        self._lock = Lock()
        self._plugins: dict[str, PluginSeries] = {}
        self._stale: set[str] = set()  # absent from the snapshot at the last take()
        self._discovery = dict.fromkeys(DISCOVERY_EVENTS, 0)
        self._rescans = dict.fromkeys(RESCAN_TRIGGERS, 0)
        self._evictions = dict.fromkeys(EVICTION_REASONS, 0)
        self._control: dict[tuple[str, int], int] = {}  # (route, status) -> answers
        self._control_lock = Lock()  # the control loop's: it never waits for the supervisor
        self._refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self._loop_errors: dict[str, int] = {}
        self._gateway_refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self._stale_sockets_removed = 0
        self._routes: set[str] = set()
        self._watcher_up = watcher_up
        self._lateness = Histogram.empty(LATENESS_BUCKETS)

    # ------------------------------------------------------------ Observer methods

    @_never_raise
    def request(self, plugin: str, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one plugin-client call and time it by endpoint (short label name)."""
        label = _ENDPOINT_LABEL.get(endpoint, "other")
        outcome = outcome if outcome in OUTCOMES else "error"
        seconds = _seconds(seconds)  # before any change: a bad value changes nothing
        with self._lock:
            s = self._series(plugin)
            self._plugins[plugin] = s._replace(
                requests=_plus2(s.requests, (label, outcome)),
                request_hists=_observed(s.request_hists, label, REQUEST_BUCKETS, seconds))

    @_never_raise
    def probe(self, plugin: str, result: str, seconds: float) -> None:
        """Count one health probe by result and time it."""
        result = result if result in PROBE_RESULTS else "error"
        seconds = _seconds(seconds)
        with self._lock:
            s = self._series(plugin)
            self._plugins[plugin] = s._replace(
                probes=_plus(s.probes, result),
                probe_hist=s.probe_hist.observe(PROBE_BUCKETS, seconds))

    @_never_raise
    def busy(self, plugin: str) -> None:
        """Count one volume operation refused because the plugin had its most in flight."""
        with self._lock:
            s = self._series(plugin)
            self._plugins[plugin] = s._replace(busy=s.busy + 1)

    @_never_raise
    def gateway_request(self, plugin: str, endpoint: str, outcome: str,
                        seconds: float) -> None:
        """Count one request answered on a gateway socket and time it by endpoint."""
        label = endpoint if endpoint in ENDPOINTS else "other"
        outcome = outcome if outcome in GATEWAY_OUTCOMES else "error"
        seconds = _seconds(seconds)
        with self._lock:
            s = self._series(plugin)
            self._plugins[plugin] = s._replace(
                gateway=_plus2(s.gateway, (label, outcome)),
                gateway_hists=_observed(s.gateway_hists, label, GATEWAY_BUCKETS, seconds))

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
        """Count an eviction and drop the plugin's counters and histograms, but for its
        restart series: a restarted plugin's new socket is a new registration of the same
        plugin. They go once the plugin stays away (``take``: two scrapes)."""
        self._bump(self._evictions, reason if reason in EVICTION_REASONS else "other")
        with self._lock:
            s = self._plugins.pop(plugin, None)
            self._stale.discard(plugin)
            if s is not None and s.given_up is not None:
                self._plugins[plugin] = PluginSeries(restarts=s.restarts, given_up=s.given_up)

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

    @_never_raise
    def restart(self, plugin: str, outcome: str) -> None:
        """Count one restart of what serves the plugin by outcome (or a budget given up)."""
        outcome = outcome if outcome in RESTART_OUTCOMES else "error"
        with self._lock:
            s = self._series(plugin)
            self._plugins[plugin] = s._replace(
                restarts=_plus(s.restarts or _NO_RESTARTS, outcome))

    @_never_raise
    def restart_given_up(self, plugin: str, given_up: bool) -> None:
        """Whether volplugd has given up restarting the plugin. Its restart counters
        exist (at 0) from the first call on, so a rate over them sees the first one."""
        with self._lock:
            s = self._series(plugin)
            self._plugins[plugin] = s._replace(given_up=bool(given_up),
                                               restarts=s.restarts or _NO_RESTARTS)

    # ------------------------------------------------------------ other inputs

    def control_request(self, route: str, code: int) -> None:
        """Count one control API answer; ``route`` is the route template, not the path
        (past ``MAX_ROUTES`` of them, a new one counts as "other").
        Asked for every answer, on every connection thread: a lock of its own, a key
        seen before costs one lookup under it, and the guard of ``_never_raise`` is
        written in (one call frame less)."""
        key = (route, code)
        try:
            with self._control_lock:
                count = self._control.get(key)
                if count is None:  # a new route or status
                    key = self._control_key(route, code)
                    count = self._control.get(key, 0)
                self._control[key] = count + 1
        except Exception:  # logged, not raised: the answer matters more
            log.exception("metrics_observer_failed", method="control_request")

    def _control_key(self, route: str, code: int) -> tuple[str, int]:
        """The key a new (route, status) counts under (caller holds the lock)."""
        if route not in self._routes:
            if len(self._routes) >= MAX_ROUTES:
                route = "other"
            self._routes.add(route)
        return route, code

    @_never_raise
    def control_refused(self, reason: str) -> None:
        """Count one connection the control socket refused at accept (503
        too_many_connections), by reason (full, uid_limit; else "other")."""
        self._bump(self._refused, reason if reason in REFUSAL_REASONS else "other")

    @_never_raise
    def loop_error(self, code: int) -> None:
        """Count one OS error the supervisor loop went on after, by its errno name (a
        bounded set: the names of ``errno.errorcode``, else "other")."""
        self._bump(self._loop_errors, errno.errorcode.get(code, "other"))

    @_never_raise
    def gateway_refused(self, reason: str) -> None:
        """Count one connection a gateway socket refused at accept (503 Err), by reason
        (full, uid_limit; else "other")."""
        self._bump(self._gateway_refused, reason if reason in REFUSAL_REASONS else "other")

    @_never_raise
    def stale_socket_removed(self) -> None:
        """Count one stale plugin socket removed."""
        with self._lock:
            self._stale_sockets_removed += 1

    def forget(self, plugin: str) -> None:
        """Remove every counter and histogram child of ``plugin``."""
        with self._lock:
            self._plugins.pop(plugin, None)
            self._stale.discard(plugin)

    # ------------------------------------------------------------ a scrape's copy

    def take(self, snapshot: Snapshot) -> Taken:
        """Copy the counters and the snapshot's plugins' series under the lock (cheap:
        series are immutable), and prune series of plugins the snapshot lacks.

        A series whose plugin is absent from two takes in a row with no observation
        between is dropped: a probe that ended after its plugin was forgotten must not
        bring back an evicted plugin's series for good.
        """
        plugins = snapshot.plugins
        with self._control_lock:
            counted = list(self._control.items())
        control = {(route, str(code)): n for (route, code), n in counted}
        with self._lock:
            absent = [name for name in self._plugins if name not in plugins]
            for name in absent:
                if name in self._stale:
                    del self._plugins[name]
                    self._stale.discard(name)
                else:
                    self._stale.add(name)
            series = (self._plugins if not absent else
                      {n: s for n, s in self._plugins.items() if n in plugins})
            return Taken(snapshot, dict(series), self._watcher_up, dict(self._discovery),
                         dict(self._rescans), dict(self._evictions), control,
                         self._lateness, dict(self._refused), dict(self._loop_errors),
                         dict(self._gateway_refused), self._stale_sockets_removed)

    def _series(self, plugin: str) -> PluginSeries:
        """The plugin's series, or an empty one (caller holds the lock and stores the
        new series it makes)."""
        if self._stale:
            self._stale.discard(plugin)
        return self._plugins.get(plugin) or _EMPTY_SERIES

    def _bump(self, counts: dict[str, int], key: str) -> None:
        with self._lock:
            counts[key] = counts.get(key, 0) + 1


_EMPTY_SERIES = PluginSeries()
_NO_RESTARTS = dict.fromkeys(RESTART_OUTCOMES, 0)
