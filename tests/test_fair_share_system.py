"""The real daemon under hung and odd plugins: fair share and harmless Capabilities.

volplugd as a process (tests.harness), fake plugins on real sockets, HTTP over the real
control socket, and the real volplugctl script.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import Daemon, UnixHTTPConnection
from tests.waiting import wait_until
from volplugd.plugin.protocol import CAPABILITIES, LIST

pytestmark = pytest.mark.system

VOLPLUGCTL = str(Path(sys.executable).with_name("volplugctl"))
CONFIG = """
[probe]
interval = 0.5
timeout = 0.4
[plugin]
max_in_flight = 4
timeouts = { activate = 0.5, capabilities = 1.0, list = 120.0, default = 5.0 }
"""
BUSY = {"error": {"code": "plugin_busy",
                  "message": "plugin stuck0 is busy (4 operations in flight)"}}


def request(d: Daemon, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    """One request: status, headers (lower-case names) and the decoded JSON body."""
    conn = UnixHTTPConnection(d.socket, timeout=180.0)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, json.loads(body) if body else None
    finally:
        conn.close()


class Flood:
    """``n`` concurrent GETs of one path, each answer kept as it comes."""

    def __init__(self, d: Daemon, path: str, n: int):
        self.answers: list[tuple[int, dict[str, str], Any]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._one, args=(d, path)) for _ in range(n)]
        for thread in self._threads:
            thread.start()

    def _one(self, d: Daemon, path: str) -> None:
        try:
            answer = request(d, "GET", path)
        except OSError as err:  # counted as an answer the test does not expect
            answer = (0, {}, str(err))
        with self._lock:
            self.answers.append(answer)

    def busy(self) -> list[tuple[int, dict[str, str], Any]]:
        with self._lock:
            return [a for a in self.answers if a[0] == 503]

    def join(self) -> None:
        for thread in self._threads:
            thread.join(60)


def lists(fp: FakePlugin) -> int:
    return sum(r.path == LIST for r in fp.requests)


def test_hung_plugins_never_starve_a_healthy_one_and_the_daemon_keeps_serving(
        daemon: Callable[..., Daemon], fakes: Callable[..., FakePlugin]) -> None:
    """48 GETs on one hung plugin: 4 reach it and 44 get 503 plugin_busy with
    Retry-After; 4 more hung plugins hold 4 calls each (20 hung calls, more than the old
    16-thread pool); a healthy plugin's List, health and metrics are served meanwhile,
    volplugctl exits 1 with the hint, and everything ends cleanly when the plugins go."""
    stuck = [fakes(f"stuck{i}") for i in range(5)]
    good = fakes("good")
    d = daemon(config=CONFIG).start()
    for name in ("good", *(f"stuck{i}" for i in range(5))):
        d.wait_state(name, "ready")
    for fp in stuck:
        fp.set(LIST, b.Hang())
    flood = Flood(d, "/v1/plugins/stuck0/volumes", 48)
    wait_until(lambda: len(flood.busy()) == 44, timeout=30, message="44 refusals")
    # then 16 more hung calls: never more connections at once than the listener admits
    others = [Flood(d, f"/v1/plugins/stuck{i}/volumes", 4) for i in range(1, 5)]
    wait_until(lambda: [lists(fp) for fp in stuck] == [4] * 5, message="20 calls hung")

    assert request(d, "GET", "/v1/plugins/good/volumes")[::2] == (200, {"volumes": []})
    assert lists(good) == 1
    assert request(d, "GET", "/v1/health")[0] == 200
    assert len(flood.answers) == 44  # the 4 that reached stuck0 are still hung
    assert [len(f.answers) for f in others] == [0] * 4
    assert {(s, h["retry-after"], json.dumps(body)) for s, h, body in flood.busy()} == {
        (503, "1", json.dumps(BUSY))}
    metrics = d.get("/metrics").decode()
    assert 'volplugd_plugin_busy_total{plugin="stuck0"} 44' in metrics
    assert 'volplugd_plugin_busy_total{plugin="good"}' not in metrics

    ctl = subprocess.run([VOLPLUGCTL, "--socket", d.socket, "volume", "ls", "stuck0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert (ctl.returncode, ctl.stdout, ctl.stderr) == (
        1, "", "volplugctl: plugin_busy: plugin stuck0 is busy (4 operations in flight); "
               "retry in 1 s\n")

    for fp in stuck:
        fp.stop()  # the hung calls end: their plugins went away under them
    for f in (flood, *others):
        f.join()
    assert len(flood.answers) == 48
    assert sorted({a[0] for f in others for a in f.answers} | {a[0] for a in flood.answers}
                  ) == [502, 503]
    assert request(d, "GET", "/v1/plugins/good/volumes")[0] == 200
    levels = {e["level"] for e in d.log_events()}
    assert "info" in levels  # the records carry their level: the next line means something
    assert levels.isdisjoint({"error", "critical"})


ODD = {
    "weird": (b.Json({"Capabilities": {"Scope": "weird"}}),
              "Capabilities: unknown scope 'weird'; treated as local",
              (502, "plugin_bad_response", "unmarshalling volume plugin weird capabilities "
               "response: unknown Scope 'weird' (want \"local\" or \"global\")")),
    "garbage": (b.Garbage(),
                "Capabilities failed (unmarshalling volume plugin garbage capabilities "
                "response: not JSON: Expecting value: line 1 column 1 (char 0)); "
                "treated as local",
                (502, "plugin_bad_response", "unmarshalling volume plugin garbage "
                 "capabilities response: not JSON: Expecting value: line 1 column 1 (char 0)")),
    "hung": (b.Hang(),
             "Capabilities failed (sending request to volume plugin hung endpoint "
             "/VolumeDriver.Capabilities: timed out: no complete answer within 0.5 s); "
             "treated as local",
             (504, "plugin_timeout", "sending request to volume plugin hung endpoint "
              "/VolumeDriver.Capabilities: timed out: no complete answer within 1 s")),
    "erring": (b.StatusErr(500, "not implemented"), None, (200, None, None)),
}


def test_odd_capabilities_answers_leave_plugins_ready_and_only_the_route_complains(
        daemon: Callable[..., Daemon], fakes: Callable[..., FakePlugin]) -> None:
    """Unknown scope, garbage, a hang: ready as "local" with a warning, volume calls
    served; only GET …/capabilities reports the answer. A 500 (the endpoint is optional)
    is "local" without a warning, as Docker does."""
    plugins = {}
    for name, (behaviour, _, _) in ODD.items():
        plugins[name] = fakes(name)
        plugins[name].set(CAPABILITIES, behaviour)
    d = daemon(config=CONFIG).start()
    for name, (_, warning, (status, code, message)) in ODD.items():
        view = d.wait_state(name, "ready")
        assert (view["capabilities"], view["warnings"], view["last_error"]) == (
            {"scope": "local"}, [] if warning is None else [warning], None), name
        answer = request(d, "GET", f"/v1/plugins/{name}/capabilities")
        expected = ({"scope": "local"} if code is None
                    else {"error": {"code": code, "message": message}})
        assert answer[::2] == (status, expected), name
        assert request(d, "GET", f"/v1/plugins/{name}/volumes")[::2] == (
            200, {"volumes": []}), name
    logged = {e["plugin"]: e["warning"] for e in d.log_events()
              if e.get("event") == "plugin_capabilities_odd"}
    assert logged == {n: w for n, (_, w, _) in ODD.items() if w is not None}
    assert ("state_changed", "ready") in [(e["type"], e["to"]) for e in _events(d, "weird")]
    assert request(d, "GET", "/v1/health")[0] == 200


def _events(d: Daemon, plugin: str) -> list[dict[str, Any]]:
    lines = d.get("/v1/events?since=0").decode().splitlines()
    return [e for e in map(json.loads, lines) if e["plugin"] == plugin]
