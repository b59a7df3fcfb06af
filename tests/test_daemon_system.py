"""volplugd as a real process, driven through its control socket, with fake plugins."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.configs import FAST
from tests.fakeplugin import FakePlugin
from tests.fakeplugin import behaviours as b
from tests.fakeplugin.many import Responder
from tests.harness import Daemon
from tests.waiting import wait_until

pytestmark = pytest.mark.system



def events(d: Daemon, plugin: str) -> list[tuple[str, str | None, str]]:
    body = d.get("/v1/events?since=0")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    return [(e["type"], e["to"], e["reason"]) for e in lines if e["plugin"] == plugin]


def test_socket_appears_ready_and_disappears_evicted(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A plugin socket is activated when it appears and evicted when it goes."""
    d = daemon(config=FAST).start()
    fp = fakes_at(d.plugin_dirs[0] / "alpha.sock")
    plugin = d.wait_state("alpha", "ready")
    assert (plugin["kind"], plugin["implements"], plugin["capabilities"]) == (
        "sock", ["VolumeDriver"], {"scope": "local"})
    fp.stop()
    d.wait_state("alpha", None)
    assert events(d, "alpha") == [("discovered", "activating", plugin["source"]),
                                  ("state_changed", "ready", "ok"), ("evicted", None, "removed")]
    status, body = d.call("GET", "/v1/plugins/alpha")
    assert (status, body["error"]["code"]) == (404, "plugin_not_found")


def test_replaced_socket_is_activated_again(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A new socket at the same path is evicted as 'replaced' and activated anew."""
    d = daemon(config=FAST).start()
    path = d.plugin_dirs[0] / "swap.sock"
    old = fakes_at(path)
    first = d.wait_state("swap", "ready")
    old.stop(unlink=False)
    os.unlink(path)
    fakes_at(path)
    wait_until(lambda: ("evicted", None, "replaced") in events(d, "swap")
               or ("evicted", None, "removed") in events(d, "swap"), message="old one evicted")
    second = d.wait_state("swap", "ready")
    assert second["registered_at"] >= first["registered_at"]
    assert events(d, "swap")[-1] == ("state_changed", "ready", "ok")


def test_not_a_volume_driver_is_rejected(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A plugin implementing only NetworkDriver is listed as rejected, never probed."""
    d = daemon(config=FAST).start()
    fakes_at(d.plugin_dirs[0] / "net.sock", implements=("NetworkDriver",))
    plugin = d.wait_state("net", "rejected")
    assert plugin["implements"] == ["NetworkDriver"]
    assert plugin["last_error"].endswith("plugin is not a volume plugin")
    assert [p["name"] for p in d.get("/v1/plugins?state=rejected")["plugins"]] == ["net"]


def test_hung_plugin_goes_unhealthy_and_recovers(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """Probes that time out make a plugin unhealthy; answers make it ready again."""
    d = daemon(config=FAST).start()
    fp = fakes_at(d.plugin_dirs[0] / "slow.sock")
    d.wait_state("slow", "ready")
    fp.set("/Plugin.Activate", b.Hang())
    plugin = d.wait_state("slow", "unhealthy")
    assert "timed out" in plugin["last_error"]
    status, body = d.call("GET", "/v1/plugins/slow/volumes")
    assert (status, body["error"]["code"]) == (409, "plugin_not_ready")
    fp.reset()
    assert d.wait_state("slow", "ready")["last_error"] is None


def test_stale_socket_is_told_apart_from_a_slow_plugin(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A socket file nobody listens on stays activating with a 'refused' error."""
    d = daemon(config=FAST)
    d.plugin_dirs[0].mkdir(parents=True)
    fakes_at(d.plugin_dirs[0] / "stale.sock").stop(unlink=False)
    d.start()
    plugin = wait_until(lambda: (d.plugins().get("stale") or {}).get("last_error"),
                        message="an activation error")
    assert "refused" in plugin
    assert d.plugins()["stale"]["state"] == "activating"


def test_plugin_dir_created_late_and_recreated_is_watched(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin],
        short_tmp: Path) -> None:
    """A plugin dir missing at start, then deleted and recreated, is still watched."""
    late = short_tmp / "late" / "plugins"
    d = daemon(config=FAST, plugin_dirs=[late])
    d.start(wait=False)
    shutil.rmtree(short_tmp / "late", ignore_errors=True)
    d.wait_ready()
    late.mkdir(parents=True)
    first = fakes_at(late / "one.sock")
    d.wait_state("one", "ready")
    first.stop()
    shutil.rmtree(late)
    d.wait_state("one", None)
    late.mkdir()
    fakes_at(late / "two.sock")
    d.wait_state("two", "ready")


def test_many_sockets_present_at_start_are_ready_once_serving(
        daemon: Callable[..., Daemon], short_tmp: Path) -> None:
    """200 plugins present at start are all ready once the daemon says it is ready.

    The plugins are the many-plugin responder (one process, tests/fakeplugin/many.py).
    Default deadlines: READY waits for each first activation to end, answered or timed
    out (see the test below), and 200 plugins may take longer than FAST's 0.5 s to
    answer on a busy machine (they then count as activating), or miss FAST's 0.3 s
    probes before the last one is activated (unhealthy).
    """
    d = daemon()
    d.plugin_dirs[0].mkdir(parents=True)
    responder = Responder(d.plugin_dirs[0], 200)
    try:
        d.start()
        ready = d.wait_log("volplugd_ready", timeout=60)
        assert (ready["ready"], ready["activating"]) == (200, 0)
        assert d.get("/v1/health")["plugins"]["ready"] == 200
        seen = responder.requests(short_tmp)
    finally:
        responder.stop()
    assert sorted(seen) == responder.names
    assert all(seen[name][0][1] == "A" for name in responder.names)


def test_ready_waits_for_each_first_activation_but_not_for_its_retries(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """A plugin present at start that never answers holds READY back until its first
    activation times out, not longer: it is then counted as activating, and retried."""
    d = daemon(config="[plugin]\ntimeouts = { activate = 3.0 }\n")
    d.plugin_dirs[0].mkdir(parents=True)
    fakes_at(d.plugin_dirs[0] / "good.sock")
    hung = fakes_at(d.plugin_dirs[0] / "hung.sock")
    hung.set("/Plugin.Activate", b.Hang())
    d.start()
    ready = d.wait_log("volplugd_ready", timeout=60)
    assert (ready["ready"], ready["activating"]) == (1, 1)
    events = [e["event"] for e in d.log_events() if e.get("plugin") in ("hung", None)]
    assert events.index("plugin_activation_failed") < events.index("volplugd_ready")
    failed = d.wait_log("plugin_activation_failed")
    assert (failed["plugin"], failed["attempt"], failed["error"]) == (
        "hung", 1, "sending request to plugin hung activation endpoint: timed out: "
                   "no complete answer within 3 s")
    assert hung.requests[0].path == "/Plugin.Activate"
    assert d.plugins()["hung"]["state"] == "activating"
    assert d.get("/v1/health")["status"] == "ok"


def test_sigterm_with_a_hung_plugin_exits_promptly(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin]) -> None:
    """Nobody waits on a hung plugin call at shutdown: SIGTERM exits 0."""
    d = daemon(config="[plugin]\ntimeouts = { activate = 300.0, default = 300.0 }\n")
    d.plugin_dirs[0].mkdir(parents=True)
    fp = fakes_at(d.plugin_dirs[0] / "hang.sock")
    fp.set("*", b.Hang())
    d.start()
    fp.wait_requests(1)
    assert d.stop(timeout=10.0) == 0  # the hung call would hold it 300 s
    assert not Path(d.socket).exists()
    assert [e["event"] for e in d.log_events()][-2:] == ["volplugd_stopping", "volplugd_stopped"]


def test_sighup_reloads_dirs_and_probe_settings_keeping_unchanged_plugins(
        daemon: Callable[..., Daemon], fakes_at: Callable[..., FakePlugin],
        short_tmp: Path) -> None:
    """SIGHUP re-reads the config: new dirs are watched, plugins still present are kept."""
    one, two = short_tmp / "one", short_tmp / "two"
    d = daemon(config=FAST, plugin_dirs=[])
    d.config_path.write_text(FAST + f'[discovery]\ndirs = ["{one}"]\n')
    one.mkdir()
    two.mkdir()
    fakes_at(one / "keep.sock")
    d.start()
    kept = d.wait_state("keep", "ready")
    fakes_at(two / "new.sock")
    d.config_path.write_text(FAST + f'[discovery]\ndirs = ["{one}", "{two}"]\n')
    d.signal(signal.SIGHUP)
    d.wait_state("new", "ready")
    assert d.plugins()["keep"]["registered_at"] == kept["registered_at"]
    d.config_path.write_text("[probe]\nintervall = 1\n")
    d.signal(signal.SIGHUP)
    failure = d.wait_log("config_reload_failed")
    assert failure["error"] == 'probe.intervall: unknown key (did you mean "interval"?)'
    assert d.get("/v1/health")["plugins"]["ready"] == 2


def test_a_second_daemon_on_the_same_socket_fails_clearly_and_the_first_keeps_serving(
        daemon: Callable[..., Daemon], short_tmp: Path) -> None:
    """Start-up refuses a control socket another volplugd serves: exit 1, one log line."""
    first = daemon(config=FAST).start()
    (short_tmp / "second").mkdir()
    second = Daemon(short_tmp / "second", plugin_dirs=first.plugin_dirs, config=FAST)
    second.socket = first.socket
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=30) == 1
    failure = second.wait_log("startup_failed")
    assert failure["error"] == (f"[Errno 98] another process is listening on it: "
                                f"'{first.socket}'")
    assert "Traceback" not in second.log()
    assert first.get("/v1/health")["status"] == "ok"


def test_malformed_socket_activation_variables_fail_start_up_clearly(
        daemon: Callable[..., Daemon]) -> None:
    """LISTEN_FDS that is not a number (for this pid): exit 1 and one startup_failed line."""
    d = daemon(config=FAST)
    d.plugin_dirs[0].mkdir(parents=True)
    argv = ["sh", "-c", 'export LISTEN_PID=$$ LISTEN_FDS=abc; exec "$@"', "sh", *d.argv()]
    with open(d.log_path, "ab") as log:
        proc = subprocess.run(argv, stdout=log, stderr=log, env=d.env, timeout=60,
                              check=False)
    assert proc.returncode == 1
    assert d.wait_log("startup_failed")["error"] == (
        "LISTEN_FDS: not a non-negative integer: 'abc'")
    assert "Traceback" not in d.log()
    assert not Path(d.socket).exists()
