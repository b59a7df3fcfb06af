"""Untrusted text against the real daemon: a socket named with bytes that are not UTF-8,
a plugin named with terminal escapes, an Err with a lone surrogate, a 1 MiB Err and a
.spec symlink to a root-only file. Every view stays 200 and parses, nothing is unbounded,
and no file's content is quoted anywhere."""

from __future__ import annotations

import html.parser
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import tiers
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.harness import Daemon, call
from tests.renderers import CONTROL
from tests.waiting import wait_until

pytestmark = [pytest.mark.system, pytest.mark.peer]  # promtool checks every scrape

FAST = """
[probe]
interval = 0.5
timeout = 0.5
failure_threshold = 1
[plugin]
timeouts = { activate = 1.0, default = 2.0 }
"""
EVIL = "evil\x1b]0;PWNED\x07"
BAD = b"bad\xff"
VOLPLUGCTL = str(Path(sys.executable).with_name("volplugctl"))
MARKER_TEXT = "TOPSECRET-4f2a91"
NOT_UTF8 = "plugin name is not valid UTF-8 (the plugin is skipped)"
LIMIT = 4096


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakePlugin]]:
    made: list[FakePlugin] = []

    def make(path: str) -> FakePlugin:
        made.append(FakePlugin(path))
        return made[-1]

    yield make
    for fp in made:
        fp.stop()


def tcp_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def volplugctl(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VOLPLUGD_SOCKET", "COLUMNS")}
    return subprocess.run([VOLPLUGCTL, "--socket", d.socket, *argv], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def all_views(d: Daemon, port: int) -> dict[str, Any]:
    """Every view, each asserted 200 and parsed: plugins, events, both /metrics, page."""
    plugins = d.get("/v1/plugins")["plugins"]
    events = [json.loads(line) for line in d.get("/v1/events?since=0").decode().splitlines()]
    scrapes = [bytes(d.get("/metrics"))]
    status, tcp_scrape = tcp_get(port, "/metrics")
    assert status == 200
    scrapes.append(tcp_scrape)
    promtool = tiers.tool("promtool", "prometheus")
    for scrape in scrapes:
        list(text_string_to_metric_families(scrape.decode("utf-8")))
        checked = subprocess.run([promtool, "check", "metrics"], input=scrape, check=False,
                                 capture_output=True, timeout=60)
        assert checked.returncode == 0, checked
    status, page = tcp_get(port, "/")
    assert status == 200
    parser = html.parser.HTMLParser()
    parser.feed(page.decode("utf-8"))
    parser.close()
    return {"plugins": plugins, "events": events, "metrics": scrapes[0].decode(),
            "page": page.decode()}


def test_hostile_names_break_no_view(daemon: Callable[..., Daemon],
                                     fakes: Callable[..., FakePlugin]) -> None:
    """bad\\xff.sock is skipped with one escaped warning (also after rescans); the plugin
    named with terminal escapes is served, and every view of both is 200 and parses."""
    d = daemon(config=FAST, args=["--metrics-listen", "127.0.0.1:0"]).start()
    port = int(d.wait_log("metrics_listening")["port"])
    folder = os.fsencode(d.plugin_dirs[0])
    fakes(os.fsdecode(os.path.join(folder, BAD + b".sock")))
    fakes(str(d.plugin_dirs[0] / f"{EVIL}.sock"))
    fakes(str(d.plugin_dirs[0] / "good.sock"))
    d.wait_state(EVIL, "ready")
    d.wait_state("good", "ready")
    ignored = d.wait_log("plugin_file_ignored")
    assert ignored["path"] == f"{d.plugin_dirs[0]}/bad\\xff.sock"
    assert ignored["reason"] == NOT_UTF8
    assert d.call("POST", "/v1/rescan")[0] == 200
    views = all_views(d, port)
    assert [p["name"] for p in views["plugins"]] == sorted([EVIL, "good"])
    assert not any("bad" in str(e["plugin"]) for e in views["events"])
    assert f'plugin="{EVIL}"' in views["metrics"]  # data to Prometheus, kept as it is
    assert "evil\\x1b]0;PWNED\\x07" in views["page"]
    assert "\x1b" not in views["page"]
    assert [e["event"] for e in d.log_events()].count("plugin_file_ignored") == 1
    for argv in (["ls"], ["inspect", EVIL], ["events"], ["--json", "ls"]):
        done = volplugctl(d, *argv)
        assert done.returncode == 0, done
        assert CONTROL.search(done.stdout.replace("\n", "")) is None, argv
    assert "evil\\x1b]0;PWNED\\x07" in volplugctl(d, "ls").stdout
    assert [p["name"] for p in json.loads(volplugctl(d, "--json", "ls").stdout)["plugins"]] \
        == sorted([EVIL, "good"])


def test_hostile_errs_give_bounded_502s(daemon: Callable[..., Daemon],
                                        fakes: Callable[..., FakePlugin]) -> None:
    """An Err with a lone surrogate is a 502 plugin_error with the escape; a 1 MiB Err
    is a 502 of at most 4 KiB, and it stays bounded in last_error, events, log, page."""
    d = daemon(config=FAST, args=["--metrics-listen", "127.0.0.1:0"]).start()
    port = int(d.wait_log("metrics_listening")["port"])
    fp = fakes(str(d.plugin_dirs[0] / "boom.sock"))
    d.wait_state("boom", "ready")
    fp.set("/VolumeDriver.Mount", b.Status(200, b'{"Err": "boom \\ud800"}'))
    status, body = d.call("POST", "/v1/plugins/boom/volumes/v/mount", {"id": "c1"})
    assert (status, body) == (502, {"error": {"code": "plugin_error",
                                              "message": "boom \\ud800"}})
    fp.set("/VolumeDriver.Remove", b.ErrOn200("E" * (1 << 20)))
    status, body = d.call("DELETE", "/v1/plugins/boom/volumes/v")
    message = body["error"]["message"]
    assert (status, body["error"]["code"]) == (502, "plugin_error")
    assert len(message.encode()) <= LIMIT
    assert message == "E" * (LIMIT - 22) + f"…({(1 << 20) - LIMIT + 22} bytes cut)"
    assert d.call("GET", "/v1/plugins/boom/volumes")[0] == 200  # still serving

    fp.set("/Plugin.Activate", b.ErrOn200("P" * (1 << 20)))  # probes now fail hugely
    view = d.wait_state("boom", "unhealthy")
    assert len(view["last_error"].encode()) <= LIMIT
    assert "bytes cut)" in view["last_error"]
    views = all_views(d, port)
    reasons = [e["reason"] for e in views["events"] if e["plugin"] == "boom"]
    assert max(len(r.encode()) for r in reasons) <= LIMIT
    assert "P" * 5000 not in views["page"]
    assert "bytes cut)" in views["page"]
    lines = d.log().splitlines()
    assert max(len(line.encode()) for line in lines) < 3 * LIMIT
    assert any("PPPP" in line for line in lines)


def test_a_spec_symlink_to_a_secret_quotes_nothing(daemon: Callable[..., Daemon],
                                                   short_tmp: Path) -> None:
    """leak.spec and leak.json link to a root-only file: each is ignored with what is
    wrong, and the file's text appears in no log line and no API field."""
    secret = short_tmp / "secret"
    secret.write_text(f"{MARKER_TEXT}\nline two\n")
    secret.chmod(0o600)
    secret_json = short_tmp / "secret.json"
    secret_json.write_text(f'{{"Addr": "{MARKER_TEXT}"}}')
    secret_json.chmod(0o600)
    d = daemon(config=FAST, args=["--metrics-listen", "127.0.0.1:0"])
    d.plugin_dirs[0].mkdir(parents=True)
    (d.plugin_dirs[0] / "leak.spec").symlink_to(secret)
    (d.plugin_dirs[0] / "leak2.json").symlink_to(secret_json)
    d.start()
    port = int(d.wait_log("metrics_listening")["port"])
    wait_until(lambda: len([e for e in d.log_events()
                            if e["event"] == "plugin_file_ignored"]) == 2, message="2 ignored")
    reasons = {os.path.basename(e["path"]): e["reason"] for e in d.log_events()
               if e["event"] == "plugin_file_ignored"}
    assert reasons == {"leak.spec": "URL contains a control character (want one URL on one "
                                    "line)",
                       "leak2.json": '"Addr": URL has no scheme (want unix://, tcp://, http:// '
                                     "or https://)"}
    views = all_views(d, port)
    assert views["plugins"] == []
    assert MARKER_TEXT not in json.dumps(views) + d.log()


def test_no_raw_control_character_reaches_a_terminal_from_the_log(
        daemon: Callable[..., Daemon], fakes: Callable[..., FakePlugin]) -> None:
    """With --log-format console the escape-named plugin is logged escaped."""
    d = daemon(config=FAST, args=["--log-format", "console"]).start()
    fakes(str(d.plugin_dirs[0] / f"{EVIL}.sock"))
    wait_until(lambda: "evil\\x1b]0;PWNED\\x07" in d.log(), message="the plugin logged")
    for line in d.log().splitlines():
        assert CONTROL.search(line) is None, repr(line)
    assert call(d.socket, "GET", "/v1/health")[0] == 200
