"""Real peers against the running daemon: Prometheus scrapes its TCP listener, Chromium
renders its status page, and schemathesis fuzzes its control socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import tiers
from tests.control.fuzz import fuzz_operations
from tests.control.helpers import unix_session
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import Daemon
from tests.waiting import wait_until
from volplugd.control import openapi_document

pytestmark = [pytest.mark.system, pytest.mark.peer]

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
[probe]
interval = 0.3
timeout = 0.3
failure_threshold = 1
[plugin]
timeouts = { activate = 0.5, default = 1.0 }
"""


@pytest.fixture
def served(daemon: Callable[..., Daemon], short_tmp: Path) -> Iterator[tuple[Daemon, int]]:
    """A daemon with a metrics listener on a free loopback port and three fake plugins:
    ready ("demo"), unhealthy ("sick") and rejected ("net")."""
    d = daemon(config=CONFIG, args=["--metrics-listen", "127.0.0.1:0"])
    folder = d.plugin_dirs[0]
    folder.mkdir(parents=True)
    fakes = [FakePlugin(str(folder / "demo.sock")), FakePlugin(str(folder / "sick.sock")),
             FakePlugin(str(folder / "net.sock"), implements=("NetworkDriver",))]
    try:
        d.start()
        d.wait_state("demo", "ready")
        d.wait_state("sick", "ready")
        fakes[1].set("/Plugin.Activate", b.Hang())
        d.wait_state("sick", "unhealthy")
        d.wait_state("net", "rejected")
        yield d, int(d.wait_log("metrics_listening")["port"])
    finally:
        for fp in fakes:
            fp.stop()


def _query(port: int, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return list(json.load(answer)["data"]["result"])
    except OSError:
        return []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_prometheus_scrapes_the_daemon(served: tuple[Daemon, int]) -> None:
    """Debian's Prometheus scrapes --metrics-listen; its query API returns plugin_up."""
    binary = tiers.tool("prometheus", "prometheus")
    _, target = served
    work = Path(tempfile.mkdtemp(dir="/tmp", prefix="vpprom"))
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n- job_name: volplugd\n"
        f"  static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n")
    port = _free_port()
    with open(work / "log", "wb") as log:
        server = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={work / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=log)
    try:
        up = wait_until(lambda: _query(port, 'volplugd_plugin_up{plugin="demo"}'), timeout=60,
                        message="prometheus to scrape volplugd_plugin_up")
        assert up[0]["value"][1] == "1"  # type: ignore[index]
        sick = _query(port, 'volplugd_plugin_up{plugin="sick"}')
        assert sick[0]["value"][1] == "0"  # type: ignore[index]
        target_health = wait_until(lambda: _query(port, 'up{job="volplugd"}'), timeout=30)
        assert target_health[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def test_chromium_renders_the_daemons_status_page(served: tuple[Daemon, int],
                                                  tmp_path: Path) -> None:
    """The TCP listener's / is an HTML page a real browser renders, one row per plugin."""
    browser = tiers.tool("chromium", "chromium")
    _, port = served
    url = f"http://127.0.0.1:{port}/"
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,500"]
    dom = subprocess.run([*argv, "--dump-dom", url], capture_output=True, timeout=90,
                         check=True).stdout.decode()
    for name, state in (("demo", "ready"), ("sick", "unhealthy"), ("net", "rejected")):
        assert name in dom
        assert state in dom
    assert 'href="metrics"' in dom
    artefacts = REPO / "test-artifacts"
    artefacts.mkdir(exist_ok=True)
    shot = artefacts / "daemon-status-page.png"
    subprocess.run([*argv, f"--screenshot={shot}", url], capture_output=True, timeout=90,
                   check=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_fuzzing_the_live_daemon_finds_only_documented_answers(
        served: tuple[Daemon, int]) -> None:
    """schemathesis against the real control socket: every status documented, no 500,
    no hang — and the daemon keeps serving afterwards."""
    d, _ = served
    with unix_session(d.socket) as session:
        statuses = fuzz_operations("http://localhost", session, ["demo", "sick", "net"])
    assert sum(statuses.values()) >= len(openapi_document()["paths"])
    assert {200, 404, 409} <= set(statuses), statuses
    assert d.get("/v1/health")["status"] == "ok"
    assert d.plugins()["demo"]["state"] == "ready"
    assert d.proc is not None
    assert d.proc.poll() is None
