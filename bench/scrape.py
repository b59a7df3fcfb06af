"""Cost of one /metrics scrape with many plugins, beside baselines measured in the same run.

Builds a Snapshot of N plugins (default 1000) in all four states, feeds every plugin's
counters and histograms as the supervisor would (probes; the activate call behind each
probe; in the "busy" case also every volume endpoint), then times ``Metrics.exposition()``
and reports its bytes beside:
  * ``json.dumps`` of the same snapshot's records (what /v1/plugins would encode), and
  * ``generate_latest()`` of plain prometheus_client Histograms/Counters holding the same
    data (the straightforward implementation this module avoids).
Goal: one scrape of 1000 plugins in <= 50 ms. Usage: python bench/scrape.py [N]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from volplugd.metrics import ENDPOINTS, PROBE_BUCKETS, REQUEST_BUCKETS, Metrics
from volplugd.model import Kind, PluginState, PluginView, Snapshot, encode

GOAL_SECONDS = 0.050
STATES = tuple(PluginState)


def build_snapshot(count: int) -> Snapshot:
    now = time.time()
    views = {}
    for i in range(count):
        name = f"plugin-{i:05d}"
        views[name] = PluginView(
            name=name, address=f"unix:///run/docker/plugins/{name}.sock",
            source=f"/run/docker/plugins/{name}.sock", kind=Kind.SOCK, state=STATES[i % 4],
            registered_at=now - 3600, implements=("VolumeDriver",), last_probe_at=now - 3,
            last_success_at=now - 3, probe_latency_seconds=0.0007,
            last_error="timeout after 5.0s" if i % 4 == 2 else None)
    encoded = {n: encode(v.to_json()) for n, v in views.items()}
    return Snapshot(plugins=MappingProxyType(views), encoded=MappingProxyType(encoded))


Observation = tuple[str, str, str, float]  # plugin, endpoint or "" for a probe, label, seconds


def observations(snapshot: Snapshot, busy: bool) -> list[Observation]:
    rng = random.Random(1)  # noqa: S311 - reproducible test data, not secrets
    out: list[Observation] = []
    for name in snapshot.plugins:
        for _ in range(20):
            seconds = rng.lognormvariate(-7, 1)  # ~1 ms, a long tail
            result = "success" if rng.random() > 0.05 else "timeout"
            out += [(name, "", result, seconds), (name, "activate", result, seconds)]
        for endpoint in ENDPOINTS[1:] if busy else ():
            out.append((name, endpoint, "success", rng.lognormvariate(-4, 1.5)))
    return out


def ours(snapshot: Snapshot, feed: list[Observation]) -> Callable[[], bytes]:
    metrics = Metrics(lambda: snapshot, version="bench")
    for plugin, endpoint, label, seconds in feed:
        if endpoint:
            metrics.request(plugin, endpoint, label, seconds)
        else:
            metrics.probe(plugin, label, seconds)
    return lambda: metrics.exposition()[0]


def naive(feed: list[Observation]) -> Callable[[], bytes]:
    registry = CollectorRegistry()
    probes = Histogram("volplugd_plugin_probe_duration_seconds", "d", ["plugin"],
                       buckets=PROBE_BUCKETS, registry=registry)
    results = Counter("volplugd_plugin_probes", "d", ["plugin", "result"], registry=registry)
    calls = Histogram("volplugd_plugin_request_duration_seconds", "d", ["plugin", "endpoint"],
                      buckets=REQUEST_BUCKETS, registry=registry)
    outcomes = Counter("volplugd_plugin_requests", "d", ["plugin", "endpoint", "outcome"],
                       registry=registry)
    for plugin, endpoint, label, seconds in feed:
        if endpoint:
            calls.labels(plugin, endpoint).observe(seconds)
            outcomes.labels(plugin, endpoint, label).inc()
        else:
            probes.labels(plugin).observe(seconds)
            results.labels(plugin, label).inc()
    return lambda: generate_latest(registry)


def timed(job: Callable[[], bytes], runs: int = 7) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``runs`` calls after one warm-up; bytes produced."""
    size = len(job())
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        job()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), size


def report(label: str, figures: tuple[float, float, int], base: float) -> None:
    wall, cpu, size = figures
    print(f"  {label:<34} {wall * 1e3:8.1f} ms wall {cpu * 1e3:8.1f} ms CPU "
          f"{size / 1e6:6.2f} MB  x{wall / base:6.1f} json")


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    snapshot = build_snapshot(count)
    records = [v.to_json() for v in snapshot.plugins.values()]
    base = timed(lambda: json.dumps(records).encode())
    print(f"scrape of {count} plugins (median of 7; goal <= {GOAL_SECONDS * 1e3:.0f} ms)")
    report("json.dumps(snapshot records)", base, base[0])
    worst = 0.0
    for busy in (False, True):
        feed = observations(snapshot, busy)
        case = "busy: + every volume endpoint" if busy else "probes only"
        figures = timed(ours(snapshot, feed))
        worst = max(worst, figures[0])
        report(f"Metrics.exposition ({case})", figures, base[0])
        report(f"prometheus_client ({case})", timed(naive(feed), runs=3), base[0])
    verdict = "within" if worst <= GOAL_SECONDS else "OVER"
    print(f"worst exposition {worst * 1e3:.1f} ms: {verdict} the {GOAL_SECONDS * 1e3:.0f} ms goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
