"""Restarts by the installed volplugd under the real systemd 252 as PID 1 (nspawn,
tests/realsystemd.py), in its shipped sandbox (systemd/volplugd.service).

The fake plugin (tests/fakeplugin, from the source copy) runs as a systemd service with
``Restart=no``, so systemd never restarts it by itself: ``kill -9`` → volplugd sees it
(the pidfd), restarts the unit over the system bus (``RestartUnit``, its job awaited) →
ready → a volume is created through the gateway socket. A plugin that dies at every
start is restarted ``burst`` times, then given up: one event, one log line, the view,
``volplugd_plugin_restart_given_up`` at 1 in /metrics, and the alert's expression
(promtool, fed the very samples scraped) true. The sandbox is proven to reach the system
bus (the restarts above) and the engines' sockets (a fake Docker and Podman engine
answer a restart of a plugin that runs in a ``docker-<id>.scope`` / ``libpod-<id>.scope``,
which is how the engines name their containers' cgroups).

One container for the module; each test stops the units, volplugd and the fakes first.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import tiers
from tests.installed import (
    CONF,
    PLUGINS,
    SERVICE,
    config,
    ctl,
    gateway_post,
    logged,
    plugin,
    ready_as,
    restart_ended,
    restart_events,
    restart_samples,
    start_volplugd,
)
from tests.realsystemd import SOURCE, Container, boot

pytestmark = [pytest.mark.system, pytest.mark.peer, pytest.mark.timeout(600),
              pytest.mark.xdist_group("realsystemd-restart")]  # one container for the module

REPO = Path(__file__).resolve().parent.parent
ONCE = "/run/vp-dies.started"
CID = "0123456789abcdef" * 4  # a container id as the engines write them (64 hex digits)
CONFIG = config(["vp-fake.service", "vp-dies.service"])
UNITS = {
    "vp-fake.service": f"""[Service]
ExecStart=/usr/bin/python3 -m tests.fakeplugin {PLUGINS}/vpfake.sock
WorkingDirectory={SOURCE}
""",
    # Serves once; every later start dies at once (exit 1), before it listens.
    "vp-dies.service": f"""[Service]
ExecStart=/bin/sh -c 'test -e {ONCE} && exit 1; touch {ONCE}; \
exec /usr/bin/python3 -m tests.fakeplugin {PLUGINS}/vpdies.sock'
WorkingDirectory={SOURCE}
""",
}
# A container engine's restart endpoint, as Docker and Podman answer it for an unknown
# container; each request is appended to <socket>.log.
ENGINE = textwrap.dedent("""\
    import http.server, json, socketserver, sys
    path = sys.argv[1]
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            with open(path + ".log", "a") as log:
                log.write(self.command + " " + self.path + "\\n")
            body = json.dumps({"message": "No such container: " + self.path.split("/")[2]})
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
    class Server(socketserver.UnixStreamServer):
        def get_request(self):
            conn, _ = super().get_request()
            return conn, ("local", 0)
    Server(path, Handler).serve_forever()
""")
ENGINES = {"docker": ("/run/docker.sock", f"docker-{CID}.scope"),
           "podman": ("/run/podman/podman.sock", f"libpod-{CID}.scope")}


@pytest.fixture(scope="module")
def box(wheelhouse: Path) -> Iterator[Container]:
    with boot("restart") as container:
        container.install_volplugd(wheelhouse)
        container.write("/usr/local/lib/vp-engine.py", ENGINE)
        for name, text in UNITS.items():
            container.add_unit(name, text)
        yield container


@pytest.fixture(autouse=True)
def fresh(box: Container) -> Container:
    """volplugd, the plugin units, engines and scopes stopped; no plugin sockets."""
    box.systemctl("stop", SERVICE, "vp-*.service", "docker-*.scope", "libpod-*.scope",
                  check=False)
    box.remove("/run/systemd/system/vp-fake.service.d")
    box.systemctl("daemon-reload")
    box.systemctl("reset-failed", check=False)
    box.remove(PLUGINS, ONCE, "/run/docker.sock", "/run/docker.sock.log", "/run/podman")
    box.run(["mkdir", "-p", PLUGINS, "/run/podman"])
    box.write(CONF, CONFIG)
    return box


def test_sandboxed_volplugd_may_restart(box: Container) -> None:
    """The restarts below come from volplugd in its sandbox: no capabilities, seccomp on."""
    pid = start_volplugd(box)
    status = box.run(["cat", f"/proc/{pid}/status"]).stdout
    assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE), status
    assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), status


def test_killed_plugin_is_restarted_by_volplugd_and_serves_the_gateway(box: Container) -> None:
    """kill -9 of the plugin's main process: volplugd restarts vp-fake.service over the
    bus (systemd itself would not: Restart=no, NRestarts stays 0), the plugin is ready
    again with its new process, and a volume is created through its gateway socket."""
    box.systemctl("start", "vp-fake.service")
    start_volplugd(box)
    before = ready_as(box, "vpfake", "vp-fake.service")
    old = box.main_pid("vp-fake.service")
    assert before["process"]["pid"] == old
    cursor = box.cursor()
    box.run(["kill", "-9", str(old)])

    view = restart_ended(box, "vpfake")
    new = box.main_pid("vp-fake.service")
    assert new not in (0, old)
    assert box.show("vp-fake.service", "NRestarts") == "0"
    assert restart_events(box, "vpfake") == [("restart_started", "unit vp-fake.service"),
                                             ("restart_done", "done: ready again")]
    assert (view["restart"]["target"], view["restart"]["error"], view["restart"]["recent"],
            view["restart"]["given_up"]) == ("unit vp-fake.service", None, 1, False)
    jobs = logged(box, "plugin_restart_job_ended", cursor)
    assert [(j["plugin"], j["outcome"]) for j in jobs] == [("vpfake", "done")]
    assert re.fullmatch(r"restart vp-fake\.service: job /org/freedesktop/systemd1/job/\d+ "
                        r"done", jobs[0]["detail"]), jobs[0]
    box.wait_for(lambda: ((plugin(box, "vpfake") or {}).get("process") or {}).get("pid")
                 == new, message="the new process identified")
    created = gateway_post(box, "vpfake", "VolumeDriver.Create",
                           {"Name": "after-restart", "Opts": {}})
    assert created == {"Err": ""}
    listed = ctl(box, "volume", "ls", "vpfake")["volumes"]
    assert [v["name"] for v in listed] == ["after-restart"]
    samples = restart_samples(box)
    assert {s: v for s, v in samples.items() if v != "0"} == {
        'volplugd_plugin_restarts_total{plugin="vpfake",outcome="done"}': "1"}
    assert samples['volplugd_plugin_restart_given_up{plugin="vpfake"}'] == "0"


def test_a_plugin_that_dies_at_every_start_is_given_up(box: Container, tmp_path: Path
                                                        ) -> None:
    """Restarted burst (2) times, never ready again: each restart ends not_ready, then
    one restart_given_up event, one log line, given_up in the view and in /metrics, and
    the alert VolplugdPluginRestartsGivenUp fires on the samples scraped; the other
    plugin is supervised all along."""
    box.systemctl("start", "vp-dies.service", "vp-fake.service")
    start_volplugd(box)
    ready_as(box, "vpdies", "vp-dies.service")
    ready_as(box, "vpfake", "vp-fake.service")
    cursor = box.cursor()
    box.run(["kill", "-9", str(box.main_pid("vp-dies.service"))])
    box.wait_for(lambda: any(kind == "restart_given_up"
                             for kind, _ in restart_events(box, "vpdies")),
                 timeout=120, message="volplugd to give vpdies up")
    sock = f"{PLUGINS}/vpdies.sock"
    not_ready = ("not_ready: not ready within 3 s of its restart: sending request to plugin "
                 f"vpdies activation endpoint: dial unix {sock}: connect: connection refused")
    given_up = "2 restarts within 600 s: no more until it is ready again or an admin asks"
    assert restart_events(box, "vpdies") == [
        ("restart_started", "unit vp-dies.service"), ("restart_done", not_ready),
        ("restart_started", "unit vp-dies.service"), ("restart_done", not_ready),
        ("restart_given_up", given_up)]
    lines = logged(box, "plugin_restart_given_up", cursor)
    assert [(e["plugin"], e["target"], e["reason"], e["level"]) for e in lines] == [
        ("vpdies", "unit vp-dies.service", given_up, "error")]
    died = box.journal("vp-dies.service", cursor=cursor)
    assert died.count("vp-dies.service: Main process exited, code=exited, "
                      "status=1/FAILURE") == 2
    view = plugin(box, "vpdies")
    assert view is not None
    assert (view["state"], view["restart"]["given_up"], view["restart"]["recent"]) == (
        "unhealthy", True, 2)
    assert plugin(box, "vpfake")["state"] == "ready"  # type: ignore[index]
    samples = restart_samples(box)
    assert samples['volplugd_plugin_restart_given_up{plugin="vpdies"}'] == "1"
    assert samples['volplugd_plugin_restarts_total{plugin="vpdies",outcome="not_ready"}'] \
        == "2"
    assert samples['volplugd_plugin_restarts_total{plugin="vpdies",outcome="given_up"}'] \
        == "1"
    assert_alert_fires(tmp_path, samples, "VolplugdPluginRestartsGivenUp", "vpdies")


def assert_alert_fires(folder: Path, samples: dict[str, str], alert: str,
                       plugin_name: str) -> None:
    """``promtool test rules``: the shipped rules, fed these samples (as if scraped every
    minute for 10 minutes), fire ``alert`` for the plugin at minute 5."""
    rules = REPO / "etc" / "prometheus" / "volplugd.rules.yml"
    series = [{"series": s.replace("{", '{job="volplugd",instance="box",', 1),
               "values": f"{v}x10"} for s, v in samples.items()]
    test = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series, "alert_rule_test": [{
            "eval_time": "5m", "alertname": alert, "exp_alerts": [{
                "exp_labels": {"severity": "critical", "job": "volplugd",
                               "instance": "box", "plugin": plugin_name},
                "exp_annotations": {
                    "summary": f"volplugd gave up restarting plugin {plugin_name} on box",
                    "description": (
                        f"volplugd on box restarted what serves volume plugin {plugin_name} "
                        "as often as its budget allows (restart.burst per restart.interval) "
                        "and the plugin is still not ready. volplugd restarts it no more "
                        "until it is ready again or an admin runs `volplugctl restart "
                        f"{plugin_name}`."),
                    "runbook_url": "docs/alerts.md#volplugdpluginrestartsgivenup"}}]}]}]}
    path = folder / "given-up.test.yml"
    path.write_text(json.dumps(test))  # JSON is YAML
    promtool = tiers.tool("promtool", "prometheus")
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, check=False, timeout=60)
    assert (done.returncode, done.stdout.split()[-1]) == (0, "SUCCESS"), done


def test_the_sandbox_reaches_the_engines(box: Container) -> None:
    """A plugin in a Docker and one in a Podman container (their cgroup scopes): an
    admin's restart reaches each engine's socket from volplugd's sandbox, which answers
    404, so the outcome is container_gone with the engine's own message."""
    for engine, (sock, scope) in ENGINES.items():
        box.run(["systemd-run", f"--unit=vp-engine-{engine}", "/usr/bin/python3",
                 "/usr/local/lib/vp-engine.py", sock])
        box.wait_for(lambda s=sock: box.run(["test", "-S", s], check=False).returncode == 0,
                     message=f"the fake {engine} engine")
        box.sh(f"cd {SOURCE} && systemd-run --scope --unit={scope} -- /usr/bin/python3 "
               f"-m tests.fakeplugin {PLUGINS}/vp{engine}.sock >/dev/null 2>&1 &")
    box.write(CONF, config([]))
    start_volplugd(box)
    for engine in ENGINES:
        name = f"vp{engine}"
        view = box.wait_for(lambda n=name: _identified(box, n), message=f"{name} identified")
        assert view["process"]["container"] == {"engine": engine, "id": CID}
        assert ctl(box, "restart", name)["state"] == "restarting"
        text = f"{engine} container {CID}: no such container: No such container: {CID}"
        box.wait_for(lambda n=name: ((plugin(box, n) or {}).get("restart") or {})
                     .get("outcome") == "container_gone", message=f"{name}'s restart to end")
        assert ("restart_done", f"container_gone: {text}") in restart_events(box, name)
        assert (plugin(box, name) or {})["restart"]["error"] == text
        sock = ENGINES[engine][0]
        assert box.run(["cat", f"{sock}.log"]).stdout == f"POST /containers/{CID}/restart?t=1\n"


def _identified(box: Container, name: str) -> dict[str, Any] | None:
    view = plugin(box, name)
    return view if view is not None and view["state"] == "ready" and view["process"] else None


def test_a_restart_job_that_fails_is_told_with_systemds_word(box: Container) -> None:
    """The unit's start fails (ExecStartPre=/bin/false): systemd's job ends `failed`, and
    the restart ends so with the job's exact text (event, log line). The fake plugin,
    stopped cleanly by the restart, removed its socket: the plugin left the registry."""
    box.systemctl("start", "vp-fake.service")
    start_volplugd(box)
    ready_as(box, "vpfake", "vp-fake.service")
    box.add_dropin("vp-fake.service", "fail", "[Service]\nExecStartPre=/bin/false\n")
    cursor = box.cursor()
    assert ctl(box, "restart", "vpfake")["state"] == "restarting"
    done = box.wait_for(lambda: [reason for kind, reason in restart_events(box, "vpfake")
                                 if kind == "restart_done"], message="the restart to end")
    job = re.fullmatch(r"failed: (restart vp-fake\.service: job "
                       r"/org/freedesktop/systemd1/job/\d+ failed)", done[0])
    assert job is not None, done
    assert [(e["outcome"], e["error"]) for e in logged(box, "plugin_restart_failed", cursor)] \
        == [("failed", job.group(1))]
    assert box.show("vp-fake.service", "ActiveState") == "failed"
    assert plugin(box, "vpfake") is None
