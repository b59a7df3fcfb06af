"""Alert/recording rules and the Grafana dashboard: valid for the real promtool, and
every metric they name is one volplugd exports."""

from __future__ import annotations

import errno
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import tiers
from tests.test_metrics import every_state, make
from volplugd.metrics.observer import ENDPOINTS, EVICTION_REASONS, PROBE_RESULTS
from volplugd.model import PluginState

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "etc/prometheus/volplugd.rules.yml"
RULES_TEST = REPO / "etc/prometheus/volplugd.rules.test.yml"
DASHBOARD = REPO / "etc/grafana/volplugd-dashboard.json"
ALERTS_DOC = REPO / "docs/alerts.md"
# A metric name not glued to a recording-rule name (`level:metric:ops`) by a colon.
METRIC = re.compile(r"(?<![\w:])((?:volplugd|process|python)_\w+|up)(?![\w:(])")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*", "$plugin": ".*"}


def promtool() -> str:
    return tiers.tool("promtool", "prometheus")


def run(*argv: str | Path) -> tuple[int, str]:
    done = subprocess.run([promtool(), *map(str, argv)], capture_output=True, text=True,
                          timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def exported_names() -> set[str]:
    """Every sample name in a scrape where each kind of series has data."""
    m, _ = make(every_state())
    for result in PROBE_RESULTS:
        m.probe("b-ready", result, 0.003)
    for endpoint in ENDPOINTS:
        m.request("b-ready", endpoint, "success", 0.003)
    for reason in EVICTION_REASONS:
        m.evicted("gone", reason)
    m.control_request("/v1/health", 200)
    m.busy("b-ready")
    m.gateway_request("b-ready", "create", "not_ready", 0.0004)
    m.loop_error(errno.EMFILE)
    m.restart_given_up("b-ready", True)
    body, _ = m.exposition()
    lines = body.decode().splitlines()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines if not line.startswith("#")}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def fill_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def names_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr)) - {"by", "without", "on"}


# ---------------------------------------------------------------- rules


@pytest.mark.peer
def test_promtool_check_rules_passes() -> None:
    """`promtool check rules` accepts the rules file (3 recording rules, 14 alerts)."""
    code, out = run("check", "rules", RULES)
    assert (code, out.strip().splitlines()[-1].strip()) == (0, "SUCCESS: 17 rules found")


@pytest.mark.peer
def test_promtool_test_rules_passes() -> None:
    """`promtool test rules` passes: each alert fires and stays quiet where it should."""
    code, out = run("test", "rules", RULES_TEST)
    assert (code, out.split()[-1]) == (0, "SUCCESS"), out


def test_rule_tests_cover_every_alert_firing_and_not_firing() -> None:
    """Each alert has a test case expecting alerts and one expecting none."""
    alerts = {r["alert"] for r in rules() if "alert" in r}
    cases = [case for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts == {"VolplugdDown", "VolplugdWatcherDown", "VolplugdPluginDown",
                      "VolplugdPluginFlapping", "VolplugdSlowProbes",
                      "VolplugdPluginStuckActivating", "VolplugdProbesLate",
                      "VolplugdPluginBusy", "VolplugdGatewayRefusing",
                      "VolplugdControlRefusing", "VolplugdGatewayConnectionsRefused",
                      "VolplugdLoopErrors", "VolplugdPluginRestartsGivenUp",
                      "VolplugdPluginRestartedOften"}
    assert (firing, quiet) == (alerts, alerts)


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    """summary, description and a runbook_url whose anchor is a heading of docs/alerts.md."""
    headings = {line[3:].strip().lower() for line in ALERTS_DOC.read_text().splitlines()
                if line.startswith("## ")}
    for rule in (r for r in rules() if "alert" in r):
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        assert rule["annotations"]["runbook_url"] == f"docs/alerts.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in headings, rule["alert"]


def test_rules_name_only_exported_metrics() -> None:
    """Every metric a rule reads is in the exposition (or is Prometheus' own `up`)."""
    exported = exported_names() | {"up"}
    for rule in rules():
        assert names_in(rule["expr"]) <= exported, rule.get("alert") or rule.get("record")


# ---------------------------------------------------------------- dashboard


def test_dashboard_is_importable_with_a_datasource_input() -> None:
    """The JSON has the DS_PROMETHEUS input, and every panel and target uses it."""
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    variables = board["templating"]["list"]
    assert [v["name"] for v in variables] == ["job", "instance", "plugin"]


def test_dashboard_has_the_required_panels() -> None:
    """States over time, per-plugin up timeline, latency heatmap and percentiles, ops, errors."""
    by_title = {p["title"]: p for p in dashboard()["panels"]}
    assert by_title["Plugins by state"]["type"] == "timeseries"
    assert by_title["Plugin up"]["type"] == "state-timeline"
    assert by_title["Probe latency"]["type"] == "heatmap"
    assert [t["legendFormat"] for t in by_title["Probe latency percentiles"]["targets"]] == [
        "p50", "p90", "p99"]
    assert "Operations by endpoint" in by_title
    assert "Operation errors" in by_title


def test_dashboard_shows_every_state_each_in_its_colour() -> None:
    """Every state has its colour in "Plugins by state" and its own value in "Plugin
    state"; "Plugins not ready" counts every state but ready and rejected."""
    by_title = {p["title"]: p for p in dashboard()["panels"]}
    colours = {o["matcher"]["options"]: o["properties"][0]["value"]["fixedColor"]
               for o in by_title["Plugins by state"]["fieldConfig"]["overrides"]}
    assert colours == {"ready": "green", "activating": "yellow", "unhealthy": "red",
                       "restarting": "blue", "rejected": "text"}
    timeline = by_title["Plugin state"]
    mapping = timeline["fieldConfig"]["defaults"]["mappings"][0]["options"]
    coded = re.findall(r'state="(\w+)"\} \* (\d+)', timeline["targets"][0]["expr"])
    assert {state: mapping[code] for state, code in coded} == {
        state: {"text": state, "color": colours[state]} for state in colours}
    assert {s.value for s in PluginState} == set(colours)
    not_ready = re.search(r'state=~"([^"]+)"', by_title["Plugins not ready"]["targets"][0]["expr"])
    assert not_ready is not None
    assert set(not_ready[1].split("|")) == {s.value for s in PluginState} - {"ready", "rejected"}


def test_dashboard_queries_name_only_exported_metrics() -> None:
    """Every metric a panel or variable queries is in the exposition."""
    exported = exported_names() | {"up"}
    queries = dashboard_exprs() + [v["definition"] for v in dashboard()["templating"]["list"]]
    for expr in queries:
        assert names_in(expr), expr
        assert names_in(expr) <= exported, expr


@pytest.mark.peer
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, parses in `promtool check rules`."""
    exprs = [fill_variables(expr) for expr in dashboard_exprs()]
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    code, out = run("check", "rules", rules_file)
    assert (code, out.strip().splitlines()[-1].strip()) == (0, f"SUCCESS: {len(exprs)} rules found")
