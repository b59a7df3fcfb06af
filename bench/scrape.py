"""Cost of /metrics with many plugins, beside baselines measured in the same run.

1. Through the real daemon (``--live``, the default; ``--no-live`` skips it): N plugins
   (default 1000) served by one responder, ready, probed at the configured interval
   (``--interval``, default 10 s as shipped: N/10 probes per second run throughout).
   One keep-alive client sends ``--scrapes`` (50) rounds of ``GET /metrics``, ``GET
   /v1/health`` (the floor of the same socket) and ``GET /v1/plugins`` (a cached body of
   similar size), interleaved so machine load hits all three alike; p50/p99 of each.
   Goal: /metrics p99 <= 25 ms.
2. In process: builds a Snapshot of N plugins in all four states, feeds every plugin's
   counters and histograms as the supervisor would (probes; the activate call behind each
   probe; in the "busy" case also every volume endpoint), then times
   ``Metrics.exposition()`` and reports its bytes beside:
     * ``json.dumps`` of the same snapshot's records (what /v1/plugins would encode), and
     * ``generate_latest()`` of plain prometheus_client Histograms/Counters holding the
       same data (the straightforward implementation this module avoids).
   Goal: one scrape of 1000 plugins in <= 50 ms. Beside it, the same text rendered from
   the registry's collectors (``collect``, the OpenMetrics path): the cost of one path.
Usage: .venv/bin/python bench/scrape.py [N] [--scrapes 50] [--interval 10] [--no-live]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from types import MappingProxyType

import _common as c
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from volplugd.metrics import Metrics
from volplugd.metrics.observer import ENDPOINTS, PROBE_BUCKETS, REQUEST_BUCKETS
from volplugd.model import Kind, PluginState, PluginView, Snapshot, encode

GOAL_SECONDS = 0.050
LIVE_GOAL = 0.025
LIVE_TARGETS = ("/metrics", "/v1/health", "/v1/plugins")
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


def ours(snapshot: Snapshot, feed: list[Observation], *, one_path: bool = False
         ) -> tuple[Callable[[], bytes], Callable[[], None]]:
    """A scrape, and a churn: every plugin probed once more (a new last success in a new
    snapshot), as between two scrapes by Prometheus every 15 s with probes every 10 s.
    ``one_path``: the text format from the registry's collectors (``metrics/collect.py``
    through ``generate_latest``), what one metrics path for text and OpenMetrics costs."""
    current = [snapshot]
    metrics = Metrics(lambda: current[0], version="bench")
    for plugin, endpoint, label, seconds in feed:
        if endpoint:
            metrics.request(plugin, endpoint, label, seconds)
        else:
            metrics.probe(plugin, label, seconds)

    def churn() -> None:
        now = time.time()
        views = {n: dataclasses.replace(v, last_success_at=now, last_probe_at=now)
                 for n, v in current[0].plugins.items()}
        for name in views:
            metrics.probe(name, "success", 0.0007)
        current[0] = Snapshot(plugins=MappingProxyType(views), encoded=snapshot.encoded)

    if one_path:
        return (lambda: generate_latest(metrics.registry)), churn
    return (lambda: metrics.exposition()[0]), churn


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


def timed(job: Callable[[], bytes], runs: int = 7,
          before: Callable[[], None] | None = None) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``runs`` calls after one warm-up, each after an
    untimed ``before()``; bytes produced."""
    size = len(job())
    walls, cpus = [], []
    for _ in range(runs):
        if before is not None:
            before()
        wall, cpu = time.perf_counter(), time.process_time()
        job()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), size


def report(label: str, figures: tuple[float, float, int], base: float) -> None:
    wall, cpu, size = figures
    print(f"  {label:<34} {wall * 1e3:8.1f} ms wall {cpu * 1e3:8.1f} ms CPU "
          f"{size / 1e6:6.2f} MB  x{wall / base:6.1f} json")


def wait_probing(responder: c.Responder, count: int, deadline: float) -> int:
    """Wait until the responder has answered ``count // 2`` requests more than now: the
    first probes come one interval after activation, so right after ``ready`` none run."""
    start = responder.served()
    while (done := responder.served() - start) < count // 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} probes before the deadline")
        time.sleep(0.2)
    return done


def live(count: int, scrapes: int, interval: float) -> bool:
    """Part 1: p50/p99 of GET /metrics on the real daemon while probes run."""
    config = f"[probe]\ninterval = {interval}\n"
    with contextlib.ExitStack() as stack:
        setup = c.Setup.start(stack, count, config, prefix="vpm")
        took = setup.daemon.wait_plugins_ready(count, timeout=300)
        print(f"1. live daemon: {count} plugins ready in {took:.1f} s; probe interval "
              f"{interval:g} s ({count / interval:.0f} probes/s)")
        probing = wait_probing(setup.responder, count,
                               deadline=time.monotonic() + 3 * interval + 30)
        print(f"  probes under way: {probing} answered since all were ready")
        client = c.RawClient(setup.daemon.socket)
        sizes = {t: len(client.get(t)[1]) for t in LIVE_TARGETS}  # warm-up, sizes
        times: dict[str, list[float]] = {t: [] for t in LIVE_TARGETS}
        served = setup.responder.served()
        wall = time.monotonic()
        for _ in range(scrapes):
            for target in LIVE_TARGETS:
                start = time.perf_counter()
                status, body = client.get(target)
                times[target].append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"GET {target}: {status} {body[:200]!r}")
        wall = time.monotonic() - wall
        probes = setup.responder.served() - served
        client.close()
    rows = [[f"GET {t} ({sizes[t] / 1e3:.0f} KB)", c.ms(c.percentile(v, 50)),
             c.ms(c.percentile(v, 99)), c.ms(max(v)), len(v)] for t, v in times.items()]
    print(c.table(rows, ["ms", "p50", "p99", "max", "n"]))
    print(f"  {probes} plugin requests answered during the {wall:.1f} s of scrapes")
    p99 = c.percentile(times["/metrics"], 99)
    ok = p99 <= LIVE_GOAL
    print(f"  goal /metrics p99 <= {LIVE_GOAL * 1e3:.0f} ms ({p99 * 1e3:.2f} ms): "
          f"{c.verdict(ok)}")
    return ok


def in_process(count: int) -> bool:
    """Part 2: Metrics.exposition() in this process, beside json and prometheus_client."""
    snapshot = build_snapshot(count)
    records = [v.to_json() for v in snapshot.plugins.values()]
    base = timed(lambda: json.dumps(records).encode())
    print(f"2. in process: scrape of {count} plugins (median of 7; goal <= "
          f"{GOAL_SECONDS * 1e3:.0f} ms)")
    report("json.dumps(snapshot records)", base, base[0])
    worst = 0.0
    for busy in (False, True):
        feed = observations(snapshot, busy)
        case = "busy: + every volume endpoint" if busy else "probes only"
        scrape, churn = ours(snapshot, feed)
        figures = timed(scrape)
        report(f"Metrics.exposition ({case})", figures, base[0])
        churned = timed(scrape, before=churn)
        report("  every plugin probed since the last", churned, base[0])
        worst = max(worst, figures[0], churned[0])
        one, one_churn = ours(snapshot, feed, one_path=True)
        report("  one path (collect -> text)", timed(one), base[0])
        report("    every plugin probed since the last", timed(one, before=one_churn), base[0])
        report(f"prometheus_client ({case})", timed(naive(feed), runs=3), base[0])
    ok = worst <= GOAL_SECONDS
    print(f"  worst exposition {worst * 1e3:.1f} ms: {c.verdict(ok)} "
          f"(goal {GOAL_SECONDS * 1e3:.0f} ms)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plugins", type=int, nargs="?", default=1000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10.0, help="probe.interval, s")
    parser.add_argument("--live", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    c.exit_cleanly_on_sigterm()
    # The naive baseline's prometheus_client metrics: no `_created` series, like ours.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    print(f"scrape: {args.plugins} plugins; {c.machine_line()}")
    ok = True
    if args.live:
        c.fd_limit_for(2 * args.plugins + 64)
        ok = live(args.plugins, args.scrapes, args.interval)
    ok = in_process(args.plugins) and ok
    print(f"scrape: {c.verdict(ok)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
