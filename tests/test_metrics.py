"""volplugd.metrics: values, label bounds, series lifetime, exposition and status page.

Unit tests read values back with ``registry.get_sample_value``; the exposition is checked
by the real ``promtool``, the status page by a real headless Chromium, and the format by
a real Prometheus server scraping it over loopback.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests import tiers
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as fb
from tests.harness import Daemon
from tests.renderers import PageCells
from tests.waiting import wait_until
from volplugd.admission import Refusal
from volplugd.metrics import Metrics
from volplugd.metrics.observer import (
    MAX_ROUTES,
    PROBE_BUCKETS,
    REFUSAL_REASONS,
    REQUEST_BUCKETS,
    Observations,
)
from volplugd.metrics.render import TextRenderer
from volplugd.model import EMPTY_SNAPSHOT, Kind, PluginState, PluginView, Snapshot
from volplugd.plugin.text import printable
from volplugd.statuspage import status_page

REPO = Path(__file__).resolve().parent.parent
HOSTILE = 'evil"\\\n<script>alert(1)</script>é'
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,"
                     "application/openmetrics-text;version=0.0.1;q=0.4,"
                     "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


def view(name: str, state: PluginState = PluginState.READY, **extra: object) -> PluginView:
    return PluginView(name=name, address=f"unix:///run/docker/plugins/{name}.sock",
                      source=f"/run/docker/plugins/{name}.sock", kind=Kind.SOCK, state=state,
                      registered_at=1_700_000_000.0, **extra)  # type: ignore[arg-type]


def snap(*views: PluginView, published_at: float = 0.0) -> Snapshot:
    plugins = {v.name: v for v in views}
    encoded = {v.name: json.dumps(v.to_json()).encode() for v in views}
    return Snapshot(plugins=MappingProxyType(plugins), encoded=MappingProxyType(encoded),
                    published_at=published_at)


class Holder:
    """The current snapshot, swapped by the test like the registry swaps it."""

    def __init__(self, snapshot: Snapshot = EMPTY_SNAPSHOT):
        self.current = snapshot

    def __call__(self) -> Snapshot:
        return self.current


def make(snapshot: Snapshot = EMPTY_SNAPSHOT) -> tuple[Metrics, Holder]:
    holder = Holder(snapshot)
    return Metrics(holder, version="1.2.3"), holder


def every_state() -> Snapshot:
    return snap(view("a-activating", PluginState.ACTIVATING, last_error="connection refused"),
                view("b-ready", PluginState.READY, last_success_at=1_700_000_100.5),
                view("c-unhealthy", PluginState.UNHEALTHY, last_error="timeout after 5s"),
                view("d-rejected", PluginState.REJECTED, implements=("NetworkDriver",)),
                view(HOSTILE, PluginState.READY, last_success_at=1_700_000_200.0))


def text(metrics: Metrics) -> str:
    body, _ = metrics.exposition()
    return body.decode()


# ---------------------------------------------------------------- values


def test_build_info_and_every_state_count_exist_with_no_plugins() -> None:
    """An empty daemon still exports build_info and every state count at 0."""
    m, _ = make()
    assert m.registry.get_sample_value("volplugd_build_info", {"version": "1.2.3"}) == 1
    for state in PluginState:
        assert m.registry.get_sample_value("volplugd_plugins", {"state": state.value}) == 0


def test_plugin_gauges_follow_the_snapshot() -> None:
    """plugins{state}, plugin_up, plugin_state and last success come from the snapshot."""
    m, _ = make(every_state())
    get = m.registry.get_sample_value
    assert [get("volplugd_plugins", {"state": s.value}) for s in PluginState] == [1, 2, 1, 0, 1]
    assert get("volplugd_plugin_up", {"plugin": "b-ready"}) == 1
    assert get("volplugd_plugin_up", {"plugin": HOSTILE}) == 1
    for name in ("a-activating", "c-unhealthy", "d-rejected"):
        assert get("volplugd_plugin_up", {"plugin": name}) == 0
    assert get("volplugd_plugin_state", {"plugin": "c-unhealthy", "state": "unhealthy"}) == 1
    assert get("volplugd_plugin_state", {"plugin": "c-unhealthy", "state": "ready"}) is None
    assert get("volplugd_plugin_last_success_timestamp_seconds",
               {"plugin": "b-ready"}) == 1_700_000_100.5
    assert get("volplugd_plugin_last_success_timestamp_seconds",
               {"plugin": "a-activating"}) is None


def test_probe_fills_counter_and_histogram_with_le_semantics() -> None:
    """A probe lands in the first bucket whose bound is >= its duration; sum and count add up."""
    m, _ = make(snap(view("p")))
    m.probe("p", "success", PROBE_BUCKETS[0])
    m.probe("p", "success", 0.003)
    m.probe("p", "timeout", 7.5)
    get = m.registry.get_sample_value
    assert get("volplugd_plugin_probes_total", {"plugin": "p", "result": "success"}) == 2
    assert get("volplugd_plugin_probes_total", {"plugin": "p", "result": "timeout"}) == 1
    bucket = "volplugd_plugin_probe_duration_seconds_bucket"
    assert get(bucket, {"plugin": "p", "le": "0.0005"}) == 1
    assert get(bucket, {"plugin": "p", "le": "0.0025"}) == 1
    assert get(bucket, {"plugin": "p", "le": "0.01"}) == 2
    assert get(bucket, {"plugin": "p", "le": "5.0"}) == 2
    assert get(bucket, {"plugin": "p", "le": "+Inf"}) == 3
    assert get("volplugd_plugin_probe_duration_seconds_count", {"plugin": "p"}) == 3
    assert get("volplugd_plugin_probe_duration_seconds_sum", {"plugin": "p"}) == pytest.approx(
        PROBE_BUCKETS[0] + 0.003 + 7.5)


def test_request_labels_endpoint_by_short_name_and_bounds_values() -> None:
    """Endpoint paths become short names; unknown endpoints and outcomes get fallbacks."""
    m, _ = make(snap(view("p")))
    m.request("p", "/VolumeDriver.Create", "success", 0.02)
    m.request("p", "create", "plugin_error", 0.03)
    m.request("p", "/Plugin.Activate", "refused", 0.001)
    m.request("p", "/VolumeDriver.Frobnicate", "success", 0.001)
    m.request("p", "/VolumeDriver.Mount", "volume vol-1 is busy", 0.5)
    get = m.registry.get_sample_value
    total = "volplugd_plugin_requests_total"
    assert get(total, {"plugin": "p", "endpoint": "create", "outcome": "success"}) == 1
    assert get(total, {"plugin": "p", "endpoint": "create", "outcome": "plugin_error"}) == 1
    assert get(total, {"plugin": "p", "endpoint": "activate", "outcome": "refused"}) == 1
    assert get(total, {"plugin": "p", "endpoint": "other", "outcome": "success"}) == 1
    assert get(total, {"plugin": "p", "endpoint": "mount", "outcome": "error"}) == 1
    count = "volplugd_plugin_request_duration_seconds_count"
    assert get(count, {"plugin": "p", "endpoint": "create"}) == 2
    assert get("volplugd_plugin_request_duration_seconds_bucket",
               {"plugin": "p", "endpoint": "mount", "le": "120.0"}) == 1
    assert "vol-1" not in text(m)


def test_histogram_has_every_bucket_and_ignores_impossible_durations() -> None:
    """Each request histogram has len(REQUEST_BUCKETS)+1 buckets; NaN/negative count as 0 s."""
    m, _ = make(snap(view("p")))
    m.request("p", "list", "success", float("nan"))
    m.request("p", "list", "success", -1.0)
    lines = [line for line in text(m).splitlines()
             if line.startswith("volplugd_plugin_request_duration_seconds_bucket")]
    assert len(lines) == len(REQUEST_BUCKETS) + 1
    get = m.registry.get_sample_value
    labels = {"plugin": "p", "endpoint": "list"}
    assert get("volplugd_plugin_request_duration_seconds_bucket", {**labels, "le": "0.0005"}) == 2
    assert get("volplugd_plugin_request_duration_seconds_sum", labels) == 0


def test_daemon_counters_start_at_zero_and_count_unknown_values_as_other() -> None:
    """Discovery, rescan and eviction counters exist at 0 for every known value."""
    m, _ = make()
    m.discovery("added")
    m.rescan("periodic")
    m.rescan("because")
    m.evicted("gone", "removed")
    get = m.registry.get_sample_value
    assert get("volplugd_discovery_events_total", {"event": "added"}) == 1
    assert get("volplugd_discovery_events_total", {"event": "ignored"}) == 0
    assert get("volplugd_rescans_total", {"trigger": "periodic"}) == 1
    assert get("volplugd_rescans_total", {"trigger": "watcher_restart"}) == 0
    assert get("volplugd_rescans_total", {"trigger": "other"}) == 1
    assert get("volplugd_evictions_total", {"reason": "removed"}) == 1
    assert get("volplugd_evictions_total", {"reason": "replaced"}) == 0


@pytest.mark.parametrize(("total", "method"), [
    ("volplugd_control_connections_refused_total", "control_refused"),
    ("volplugd_gateway_connections_refused_total", "gateway_refused")])
def test_refused_connections_are_counted_by_reason(total: str, method: str) -> None:
    """Both reasons of a refusal at accept exist at 0; an unknown one counts as "other"
    (the control socket's and the gateway's, each in its own family)."""
    m, _ = make()
    get = m.registry.get_sample_value
    assert (get(total, {"reason": "uid_limit"}), get(total, {"reason": "full"})) == (0, 0)
    assert get(total, {"reason": "other"}) is None
    for reason in ("uid_limit", "uid_limit", "full", "because"):
        getattr(m, method)(reason)
    assert (get(total, {"reason": "uid_limit"}), get(total, {"reason": "full"}),
            get(total, {"reason": "other"})) == (2, 1, 1)


def test_refusal_reasons_are_the_admissions() -> None:
    """The metric's reasons are the values the control socket's admission refuses with."""
    assert set(REFUSAL_REASONS) == {r.value for r in Refusal}


def test_watcher_up_follows_reports() -> None:
    """volplugd_watcher_up starts at 0 and follows watcher(up)."""
    m, _ = make()
    assert m.registry.get_sample_value("volplugd_watcher_up") == 0
    m.watcher(True)
    assert m.registry.get_sample_value("volplugd_watcher_up") == 1
    m.watcher(False)
    assert m.registry.get_sample_value("volplugd_watcher_up") == 0


def test_probe_lateness_is_one_unlabelled_histogram() -> None:
    """Dispatch lateness goes into volplugd_probe_lateness_seconds, with no plugin label."""
    m, _ = make()
    for seconds in (0.002, 0.3, 7.0):
        m.probe_lateness(seconds)
    get = m.registry.get_sample_value
    assert get("volplugd_probe_lateness_seconds_bucket", {"le": "0.01"}) == 1
    assert get("volplugd_probe_lateness_seconds_bucket", {"le": "0.5"}) == 2
    assert get("volplugd_probe_lateness_seconds_bucket", {"le": "30.0"}) == 3
    assert get("volplugd_probe_lateness_seconds_count") == 3
    assert get("volplugd_probe_lateness_seconds_sum") == pytest.approx(7.302)


def test_control_requests_are_counted_and_route_labels_are_capped() -> None:
    """Routes beyond MAX_ROUTES distinct values are counted as "other"."""
    m, _ = make()
    m.control_request("/v1/plugins/{name}", 404)
    m.control_request("/v1/plugins/{name}", 404)
    for i in range(MAX_ROUTES + 3):
        m.control_request(f"/v1/raw/path-{i}", 200)
    get = m.registry.get_sample_value
    total = "volplugd_control_requests_total"
    assert get(total, {"route": "/v1/plugins/{name}", "code": "404"}) == 2
    assert get(total, {"route": "other", "code": "200"}) == 4
    assert get(total, {"route": f"/v1/raw/path-{MAX_ROUTES}", "code": "200"}) is None


def test_observer_methods_never_raise() -> None:
    """A bad argument from a caller is logged, not raised into the supervisor or a worker."""
    m, _ = make(snap(view("p")))
    with capture_logs() as logs:
        m.probe("p", "success", "soon")  # type: ignore[arg-type]
        m.request("p", "list", "success", None)  # type: ignore[arg-type]
        m.control_request(["not", "a", "route"], 200)  # type: ignore[arg-type]
    assert m.registry.get_sample_value("volplugd_plugin_probes_total",
                                       {"plugin": "p", "result": "success"}) is None
    assert [(log["event"], log["method"]) for log in logs] == [
        ("metrics_observer_failed", "probe"), ("metrics_observer_failed", "request"),
        ("metrics_observer_failed", "control_request")]
    m.control_request("/v1/health", 200)  # and counting goes on
    assert m.registry.get_sample_value("volplugd_control_requests_total",
                                       {"route": "/v1/health", "code": "200"}) == 1


def on_four_threads_while_scraping(m: Metrics, work: Callable[[], None]) -> None:
    """Run ``work`` on four threads at once, rendering the exposition until all end."""
    threads = [threading.Thread(target=work, name=f"work-{i}") for i in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        m.exposition()
    for t in threads:
        t.join()


def test_concurrent_observations_are_all_counted_while_scraping() -> None:
    """Probes from 4 threads during scrapes are neither lost nor torn."""
    m, _ = make(snap(view("p"), view("q")))
    def work() -> None:
        for i in range(500):
            m.probe("p" if i % 2 else "q", "success", 0.001)
    on_four_threads_while_scraping(m, work)
    get = m.registry.get_sample_value
    for name in ("p", "q"):
        assert get("volplugd_plugin_probe_duration_seconds_count", {"plugin": name}) == 1000
        assert get("volplugd_plugin_probes_total", {"plugin": name, "result": "success"}) == 1000


def test_control_requests_from_many_threads_are_all_counted_while_scraping() -> None:
    """Answers counted on 4 connection threads at once, new keys among them, during
    scrapes: every one is in the total, none twice."""
    m, _ = make()
    def work() -> None:
        for i in range(2000):
            m.control_request("/v1/health" if i % 3 else "/v1/plugins", 200 + i % 2)
    on_four_threads_while_scraping(m, work)
    samples = {(s.labels["route"], s.labels["code"]): s.value
               for f in text_string_to_metric_families(text(m)) for s in f.samples
               if s.name == "volplugd_control_requests_total"}
    assert samples == {("/v1/health", "200"): 2664, ("/v1/health", "201"): 2668,
                       ("/v1/plugins", "200"): 1336, ("/v1/plugins", "201"): 1332}


# ---------------------------------------------------------------- series lifetime


def per_plugin_series(m: Metrics, plugin: str) -> list[str]:
    needle = f'plugin="{plugin}"'
    return [line for line in text(m).splitlines() if needle in line]


def feed(m: Metrics, plugin: str) -> None:
    m.probe(plugin, "success", 0.001)
    m.request(plugin, "/VolumeDriver.List", "success", 0.002)


def test_series_appear_with_a_plugin_and_vanish_when_it_is_evicted() -> None:
    """Gauges vanish with the snapshot, counters and histograms with evicted()/forget()."""
    m, holder = make(snap(view("p"), view("q")))
    feed(m, "p")
    feed(m, "q")
    # up, state, info; probes_total, 9 buckets + sum + count; requests_total, 10 + 2
    assert len(per_plugin_series(m, "p")) == 3 + 1 + 11 + 1 + 12
    holder.current = snap(view("q"))
    m.evicted("p", "removed")
    assert per_plugin_series(m, "p") == []
    assert per_plugin_series(m, "q") != []
    holder.current = snap(view("p"), view("q"))  # same name again: a new plugin, from zero
    assert m.registry.get_sample_value("volplugd_plugin_probes_total",
                                       {"plugin": "p", "result": "success"}) is None
    assert m.registry.get_sample_value("volplugd_plugin_up", {"plugin": "p"}) == 1


def test_restart_series_outlive_a_replacement_not_an_absence() -> None:
    """A restarted plugin's new socket replaces its registration: its restart counters
    and given-up gauge stay (its other counters go); absent for two scrapes, they go too."""
    m, holder = make(snap(view("p")))
    feed(m, "p")
    m.restart_given_up("p", False)
    m.restart("p", "done")
    m.evicted("p", "replaced")
    get = m.registry.get_sample_value
    assert get("volplugd_plugin_restarts_total", {"plugin": "p", "outcome": "done"}) == 1
    assert get("volplugd_plugin_restarts_total", {"plugin": "p", "outcome": "failed"}) == 0
    assert get("volplugd_plugin_restart_given_up", {"plugin": "p"}) == 0
    assert get("volplugd_plugin_probes_total", {"plugin": "p", "result": "success"}) is None
    holder.current = EMPTY_SNAPSHOT  # gone for good
    text(m)
    text(m)
    holder.current = snap(view("p"))
    assert get("volplugd_plugin_restarts_total", {"plugin": "p", "outcome": "done"}) is None


def test_forget_drops_counters_of_a_plugin_still_in_the_snapshot() -> None:
    """forget() alone removes the plugin's counters and histograms, not its gauges."""
    m, _ = make(snap(view("p")))
    feed(m, "p")
    m.forget("p")
    assert [line.split("{")[0] for line in per_plugin_series(m, "p")] == [
        "volplugd_plugin_up", "volplugd_plugin_state", "volplugd_plugin_info"]


def test_late_observation_of_an_evicted_plugin_is_hidden_then_dropped() -> None:
    """A probe ending after eviction shows no series and is pruned after two scrapes."""
    m, holder = make(snap(view("p")))
    m.evicted("p", "removed")
    holder.current = EMPTY_SNAPSHOT
    feed(m, "p")  # a probe that was in flight when the plugin left
    assert per_plugin_series(m, "p") == []
    text(m)
    holder.current = snap(view("p"))
    assert m.registry.get_sample_value("volplugd_plugin_probes_total",
                                       {"plugin": "p", "result": "success"}) is None


def test_observation_before_first_publication_survives_one_scrape() -> None:
    """A plugin's first probe may end before the snapshot lists it: it is not lost."""
    m, holder = make()
    feed(m, "new")
    assert per_plugin_series(m, "new") == []
    holder.current = snap(view("new"))
    assert m.registry.get_sample_value("volplugd_plugin_probes_total",
                                       {"plugin": "new", "result": "success"}) == 1


# ---------------------------------------------------------------- exposition


def test_exposition_is_text_format_without_created_series() -> None:
    """Text 0.0.4, no `_created`, process and platform collectors present."""
    m, _ = make(every_state())
    feed(m, "b-ready")
    m.control_request("/v1/health", 200)
    body, content_type = m.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"process_cpu_seconds", "python_info", "volplugd_plugin_up"} <= families
    assert "_created" not in body.decode()


def test_prometheus_accept_header_gets_text_and_openmetrics_only_gets_openmetrics() -> None:
    """Prometheus' default Accept gets the fast text; an OpenMetrics-only client gets OM."""
    m, _ = make(every_state())
    assert m.exposition(PROMETHEUS_ACCEPT)[1].startswith("text/plain; version=0.0.4")
    body, content_type = m.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert b'volplugd_plugin_up{plugin="b-ready"} 1.0' in body


def volplugd_families(body: bytes) -> list[Metric]:
    return [f for f in text_string_to_metric_families(body.decode())
            if f.name.startswith("volplugd_")]


def feed_everything(m: Observations, names: list[str], rounds: int) -> None:
    """Every kind of observation, for every plugin (and one not in the snapshot)."""
    for i in range(rounds):
        for name in [*names, "not-published"]:
            m.probe(name, ("success", "timeout", "nonsense")[i % 3], 0.0004 * (i + 1))
            m.request(name, ("/Plugin.Activate", "/VolumeDriver.Mount", "/x")[i % 3],
                      ("success", "plugin_error")[i % 2], 0.3 * i)
            m.gateway_request(name, ("create", "list", "bogus")[i % 3],
                              ("answered", "busy", "odd")[i % 3], 0.02 * i)
            if i % 2:
                m.busy(name)
            m.restart(name, ("done", "no_such_unit", "bogus")[i % 3])
            m.restart_given_up(name, bool(i % 2))
        m.discovery(("added", "ignored", "strange")[i % 3])
        m.rescan(("startup", "reload", "whim")[i % 3])
        m.control_request(f'/v1/"{i % 2}"', 200 + i)
        m.control_refused(("uid_limit", "full", "odd")[i % 3])
        m.gateway_refused(("full", "odd", "uid_limit")[i % 3])
        m.probe_lateness(0.05 * i)
        m.stale_socket_removed()


NAMES = ["a-activating", "b-ready", "c-unhealthy", "d-rejected", HOSTILE, "\udcff-x"]
# each step: the snapshot published, then the plugins observed (from NAMES[step:])
STEPS = [snap(*(view(n, list(PluginState)[i % 4]) for i, n in enumerate(NAMES))),
         snap(*(view(n, PluginState.READY, last_success_at=1.7e9 + i)
                for i, n in enumerate(NAMES))),
         snap(*(view(n, PluginState.UNHEALTHY) for n in NAMES[1:])),
         snap(*(view(n, PluginState.READY, last_success_at=2e9) for n in NAMES))]


def test_registry_holds_what_the_text_says() -> None:
    """The registry's volplugd_ families (what OpenMetrics is written from) equal the
    text parsed back, sample for sample, scrape after scrape as plugins change."""
    m, holder = make()
    for step, current in enumerate(STEPS):
        holder.current = current
        if step == 2:
            m.evicted(NAMES[0], "removed")
        feed_everything(m, NAMES[step:], 2)
        registry = [f for f in m.registry.collect() if f.name.startswith("volplugd_")]
        assert volplugd_families(m.exposition()[0]) == registry
        assert len(registry) == 25


def test_kept_fragments_render_the_same_bytes_as_a_fresh_render() -> None:
    """A scrape joined from fragments kept since earlier scrapes is byte for byte what a
    renderer that never rendered before makes of the same counts."""
    observed, kept = Observations(), TextRenderer()
    for step, current in enumerate(STEPS):
        if step == 2:
            observed.evicted(NAMES[0], "removed")
        feed_everything(observed, NAMES[step:], 1 + step % 2)
        taken = observed.take(current)
        again = kept.render(taken, "1.2.3")
        assert again == TextRenderer().render(taken, "1.2.3")
        assert again.count(b"volplugd_plugin_up{") == len(current.plugins)
        assert kept.render(taken, "1.2.3") == again  # all kept: nothing changed


def test_metrics_flips_no_process_wide_switch() -> None:
    """Building Metrics leaves prometheus_client's `_created` series on for everyone
    else (the switch is process-wide: a constructor must not flip it)."""
    make(every_state())
    registry = CollectorRegistry()
    Counter("unrelated_events", "Events of some other library.", registry=registry)
    assert b"unrelated_events_created" in generate_latest(registry)


def promtool() -> str:
    return tiers.tool("promtool", "prometheus")


@pytest.mark.peer
def test_promtool_check_metrics_is_clean_with_plugins_in_every_state() -> None:
    """`promtool check metrics` reports nothing on a scrape with every state and outcome."""
    m, _ = make(every_state())
    for name in ("a-activating", "b-ready", "c-unhealthy", "d-rejected", HOSTILE):
        for result in ("success", "timeout", "refused", "bad_response", "error"):
            m.probe(name, result, 0.004)
            m.request(name, "/Plugin.Activate", result, 0.004)
    m.discovery("added")
    m.rescan("startup")
    m.control_request("/v1/plugins", 200)
    body, _ = m.exposition()
    done = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


# ---------------------------------------------------------------- status page


def test_status_page_escapes_untrusted_names_and_errors() -> None:
    """A hostile plugin name and error text show as text, never as markup."""
    page = status_page(snap(view(HOSTILE, PluginState.UNHEALTHY,
                                 last_error='<img src=x onerror="alert(2)">')), "1.2.3")
    parser = PageCells()
    parser.feed(page.decode())
    assert "script" not in parser.tags
    assert "img" not in parser.tags
    assert parser.cells[0] == printable(HOSTILE)  # the newline shows as \n
    assert parser.cells[1] == "unhealthy"
    assert parser.cells[5] == '<img src=x onerror="alert(2)">'


def test_status_page_shows_version_counts_plugins_and_metrics_link() -> None:
    """The page names the version, counts by state, one row per plugin, and links /metrics."""
    page = status_page(every_state(), "1.2.3").decode()
    assert "Version 1.2.3" in page
    assert "activating: 1 · ready: 2 · unhealthy: 1 · restarting: 0 · rejected: 1" in page
    assert page.count("<tr><td>") == 5
    assert '<a href="metrics">' in page
    assert "timeout after 5s" in page


ARTEFACTS = REPO / "test-artifacts"


@pytest.mark.peer
def test_status_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Chromium parses the page into one row per plugin with the hostile name as text."""
    browser = tiers.tool("chromium", "chromium")
    page = tmp_path / "status.html"
    page.write_bytes(status_page(every_state(), "1.2.3"))
    ARTEFACTS.mkdir(exist_ok=True)
    shot = ARTEFACTS / "status-page.png"
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,500"]
    dom = subprocess.run([*argv, "--dump-dom", page.as_uri()], capture_output=True,
                         timeout=90, check=True).stdout.decode()
    subprocess.run([*argv, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=90, check=True)
    parser = PageCells()
    parser.feed(dom)
    assert parser.cells[::6] == sorted(["a-activating", "b-ready", "c-unhealthy", "d-rejected",
                                        printable(HOSTILE)])
    assert "script" not in parser.tags[parser.tags.index("body"):]
    assert shot.read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------- a live daemon

LIVE_CONFIG = """
[probe]
interval = 0.3
timeout = 0.25
failure_threshold = 1
endpoint = "/VolumeDriver.List"
[plugin]
timeouts = { activate = 0.5, default = 2.0 }
"""
# plugin -> (how its probes are answered once it is ready, the probe result that gives)
PROBE_FAULTS = {
    "slow": (fb.Hang(), "timeout"),
    "garbage": (fb.Garbage(), "bad_response"),
    "failing": (fb.ErrOn200("backend offline"), "error"),
}


def scrape(d: Daemon) -> str:
    status, body = d.call("GET", "/metrics")
    assert status == 200, (status, body)
    return bytes(body).decode()


def sample(text_: str, name: str, **labels: str) -> float | None:
    """One sample's value from a scrape, or None."""
    for family in text_string_to_metric_families(text_):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


@pytest.fixture
def fakes_by_outcome(short_tmp: Path) -> Iterator[dict[str, FakePlugin]]:
    """Fake plugins in short_tmp/plugins: ok, rejected, stuck, refused and PROBE_FAULTS."""
    folder = short_tmp / "plugins"
    folder.mkdir()
    made = {name: FakePlugin(str(folder / f"{name}.sock"))
            for name in ("ok", "refused", *PROBE_FAULTS)}
    made["rejected"] = FakePlugin(str(folder / "rejected.sock"), implements=("NetworkDriver",))
    made["stuck"] = FakePlugin(str(folder / "stuck.sock"))
    made["stuck"].set("/Plugin.Activate", fb.Hang())
    try:
        yield made
    finally:
        for plugin in made.values():
            plugin.stop()


@pytest.mark.system
@pytest.mark.peer
def test_live_daemon_scrape_covers_every_state_and_probe_result(
        daemon: Callable[..., Daemon], fakes_by_outcome: dict[str, FakePlugin]) -> None:
    """A running daemon's /metrics has each state and each probe result a fake plugin
    provokes, passes `promtool check metrics`, and drops an evicted plugin's series."""
    d = daemon(config=LIVE_CONFIG).start()
    for name in ("ok", "refused", *PROBE_FAULTS):
        d.wait_state(name, "ready")
    fakes_by_outcome["ok"].set("/VolumeDriver.Create", fb.ErrOn200("no space left"))
    assert d.call("GET", "/v1/plugins/ok/volumes")[0] == 200
    assert d.call("POST", "/v1/plugins/ok/volumes", {"name": "v1"})[0] == 502
    fakes_by_outcome["ok"].reset()
    for name, (behaviour, _) in PROBE_FAULTS.items():
        fakes_by_outcome[name].set("/VolumeDriver.List", behaviour)
    fakes_by_outcome["refused"].stop(unlink=False)  # a stale socket: connect() is refused
    for name in ("refused", *PROBE_FAULTS):
        d.wait_state(name, "unhealthy")
    d.wait_state("rejected", "rejected")
    d.wait_state("stuck", "activating")
    expected = {"ok": "success", "refused": "refused",
                **{name: result for name, (_, result) in PROBE_FAULTS.items()}}

    def complete() -> str | None:
        t = scrape(d)
        wanted = [("volplugd_plugin_probes_total", {"plugin": n, "result": r})
                  for n, r in expected.items()]
        wanted.append(("volplugd_plugin_requests_total",
                       {"plugin": "ok", "endpoint": "list", "outcome": "success"}))
        return t if all(sample(t, name, **labels) for name, labels in wanted) else None

    text_ = wait_until(complete, timeout=15, message="every probe result in /metrics") or ""
    for state, count in (("ready", 1), ("unhealthy", 4), ("activating", 1), ("rejected", 1)):
        assert sample(text_, "volplugd_plugins", state=state) == count
    assert sample(text_, "volplugd_plugin_up", plugin="ok") == 1
    assert sample(text_, "volplugd_plugin_up", plugin="slow") == 0
    assert sample(text_, "volplugd_plugin_requests_total", plugin="ok", endpoint="create",
                  outcome="plugin_error") == 1
    # probes and activations are counted as probes, never as volume requests
    assert 'volplugd_plugin_requests_total{plugin="failing"' not in text_
    assert 'volplugd_plugin_requests_total{plugin="stuck"' not in text_
    assert sample(text_, "volplugd_control_requests_total", route="/v1/plugins", code="200")
    assert (sample(text_, "volplugd_probe_lateness_seconds_count") or 0) > 0
    done = subprocess.run([promtool(), "check", "metrics"], input=text_.encode(),
                          capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")

    fakes_by_outcome["ok"].stop()  # the socket file goes: evicted
    d.wait_state("ok", None)
    wait_until(lambda: 'plugin="ok"' not in scrape(d), timeout=10,
               message="the evicted plugin's series to vanish")
    assert sample(scrape(d), "volplugd_evictions_total", reason="removed") == 1


def test_stale_sockets_removed_is_a_daemon_counter_from_zero() -> None:
    """volplugd_stale_sockets_removed_total: 0 before any removal, then one per removal,
    in the text and in the registry alike (it outlives the plugin, which is evicted)."""
    m, _ = make(snap())
    assert "volplugd_stale_sockets_removed_total 0\n" in m.exposition()[0].decode()
    m.stale_socket_removed()
    m.stale_socket_removed()
    assert "volplugd_stale_sockets_removed_total 2\n" in m.exposition()[0].decode()
    assert m.registry.get_sample_value("volplugd_stale_sockets_removed_total") == 2
