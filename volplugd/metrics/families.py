"""The ``volplugd_`` metric families: names, types and HELP texts, in exposition order.

One table for both writers (``render``: the text format; ``collect``: the registry's
Metric objects, for OpenMetrics), so the two cannot disagree on what a family is.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DAEMON", "PLUGIN_COUNTERS", "PLUGIN_GAUGES", "Family"]


class Family(NamedTuple):
    name: str
    kind: str  # "gauge", "counter" or "histogram"
    help: str

    @property
    def header(self) -> str:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"

    @property
    def registry_name(self) -> str:
        """The family's name in prometheus_client (a counter's without ``_total``)."""
        if self.kind == "counter" and self.name.endswith("_total"):
            return self.name[:-len("_total")]
        return self.name


# About the daemon as a whole (bounded, a few dozen lines).
BUILD_INFO = Family("volplugd_build_info", "gauge",
                    "Always 1; the version label says which build runs.")
PLUGINS = Family("volplugd_plugins", "gauge", "Registered plugins by state.")
WATCHER_UP = Family("volplugd_watcher_up", "gauge",
                    "1 while the filesystem watcher runs, 0 while it is down or restarting.")
DISCOVERY = Family("volplugd_discovery_events_total", "counter",
                   "Plugin files seen by discovery, by event.")
RESCANS = Family("volplugd_rescans_total", "counter",
                 "Full scans of the plugin directories, by trigger.")
EVICTIONS = Family("volplugd_evictions_total", "counter",
                   "Plugins removed from the registry, by reason.")
LATENESS = Family("volplugd_probe_lateness_seconds", "histogram",
                  "Time from a probe's due moment to its dispatch: the scheduler's slack.")
CONTROL = Family("volplugd_control_requests_total", "counter",
                 "Control API requests answered, by route template and HTTP status code.")
REFUSED = Family("volplugd_control_connections_refused_total", "counter",
                 "Control socket connections refused at accept (503), by reason.")
LOOP_ERRORS = Family("volplugd_loop_errors_total", "counter",
                     "OS errors the supervisor loop met and went on after, by errno name.")
GATEWAY_REFUSED = Family("volplugd_gateway_connections_refused_total", "counter",
                         "Gateway socket connections refused at accept (503 Err), by reason.")
STALE_REMOVED = Family("volplugd_stale_sockets_removed_total", "counter",
                       "Plugin socket files removed as stale (discovery.remove_stale_after).")
DAEMON = (BUILD_INFO, PLUGINS, WATCHER_UP, DISCOVERY, RESCANS, EVICTIONS, LATENESS, CONTROL,
          REFUSED, LOOP_ERRORS, GATEWAY_REFUSED, STALE_REMOVED)

# Per plugin, straight from the snapshot's view.
PLUGIN_GAUGES = (
    Family("volplugd_plugin_up", "gauge", "1 if the plugin is ready, 0 otherwise."),
    Family("volplugd_plugin_state", "gauge",
           "Always 1; the state label is the plugin's current state."),
    Family("volplugd_plugin_last_success_timestamp_seconds", "gauge",
           "Unix time of the plugin's last successful probe or activation."),
    Family("volplugd_plugin_info", "gauge", "Always 1; the unit label is the systemd unit "
           "that runs the plugin's process (empty when none is known)."),
)

# Per plugin, from the observer's series (only plugins with observations have samples).
PLUGIN_COUNTERS = (
    Family("volplugd_plugin_probes_total", "counter", "Health probes by result."),
    Family("volplugd_plugin_probe_duration_seconds", "histogram",
           "Duration of health probes."),
    Family("volplugd_plugin_requests_total", "counter",
           "Plugin API calls by endpoint and outcome."),
    Family("volplugd_plugin_request_duration_seconds", "histogram",
           "Duration of plugin API calls by endpoint."),
    Family("volplugd_plugin_busy_total", "counter", "Volume operations refused with "
           "503 plugin_busy: the plugin had plugin.max_in_flight operations in flight."),
    Family("volplugd_gateway_requests_total", "counter",
           "Requests on gateway sockets by endpoint and outcome."),
    Family("volplugd_gateway_request_duration_seconds", "histogram",
           "Time from a gateway request to its answer, by endpoint."),
    Family("volplugd_plugin_restarts_total", "counter",
           "Restarts of what serves the plugin, by outcome (given_up: its restart "
           "budget ran out)."),
    Family("volplugd_plugin_restart_given_up", "gauge",
           "1 while volplugd has given up restarting the plugin (its restart budget ran "
           "out), else 0; only for plugins volplugd has restarted."),
)
