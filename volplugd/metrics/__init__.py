"""Prometheus metrics: the daemon's Observer and the exposition of what it counted (the
HTML status page lives in ``volplugd.statuspage``).

* ``observer``: ``Observations``, the counters and histograms the supervisor, the
  gateway and the control server feed (contracts.Observer), and ``take()``, one scrape's copy;
* ``families``: every ``volplugd_`` family's name, type and HELP, in exposition order;
* ``render``: the text format, each plugin's lines rendered once per change and kept;
* ``collect``: the same families as prometheus_client Metric objects (registry,
  OpenMetrics), built from the same data, not parsed back from text;
* ``exposition``: ``Metrics``, the Observer with ``exposition()`` and ``registry``.

Per-plugin gauges are read from ``snapshot()`` at scrape time, so an evicted plugin's
series vanish with it; its counters and histograms are dropped by ``forget()`` (called
by ``evicted()``).
"""

from volplugd.metrics.exposition import Metrics

# The label values and bucket bounds (PROBE_BUCKETS, ENDPOINTS, ...) are imported from
# volplugd.metrics.observer, where they are defined, not re-exported here.
__all__ = ["Metrics"]
