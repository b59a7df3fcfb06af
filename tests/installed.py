"""The installed volplugd in a booted container (tests/realsystemd.py), driven as an
operator drives it: ``volplugctl --json``, its events, its JSON log lines in the journal,
``/metrics`` and the gateway sockets. Shared by the restart tests under the real systemd
(tests/test_restart_system.py with the fake plugin, tests/test_restart_buttervolume_system.py
with buttervolume).

Every helper runs on the host and reaches volplugd inside the container with
``Container.run``; none waits except ``ready_as``, ``restart_ended`` and
``gateway_answers``, which wait with the container's deadline (``Container.wait_for``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tests.realsystemd import Container, message

SERVICE = "volplugd.service"
CONF = "/etc/volplugd/volplugd.toml"
PLUGINS = "/run/docker/plugins"
GATEWAY = "/run/volplugd/gateway"
METRICS = "http://127.0.0.1:9612/metrics"


def config(units: Sequence[str]) -> str:
    """volplugd.toml for the restart tests: probes every second (two failures make a plugin
    unhealthy), restarts on after 2 s for ``units`` (none: any service), a budget of 2,
    a 3 s hold, and the gateway."""
    listed = ", ".join(json.dumps(u) for u in units)
    return f"""\
[probe]
interval = 1.0
timeout = 1.0
failure_threshold = 2

[restart]
enabled = true
after = 2.0
burst = 2
hold = 3.0
units = [{listed}]

[gateway]
enabled = true
"""


def ctl(box: Container, *args: str) -> Any:
    """``volplugctl --json ARGS`` (exit 0 required), parsed."""
    return json.loads(box.run(["volplugctl", "--json", *args]).stdout)


def plugin(box: Container, name: str) -> dict[str, Any] | None:
    """The plugin's view in ``volplugctl ls``, or None while it is not registered."""
    return {p["name"]: p for p in ctl(box, "ls")["plugins"]}.get(name)


def ready_as(box: Container, name: str, unit: str) -> dict[str, Any]:
    """Wait until ``name`` is ready with its process identified as ``unit``'s."""
    def check() -> dict[str, Any] | None:
        view = plugin(box, name)
        ready = view is not None and view["state"] == "ready" and view["process"]
        return view if ready and view["process"]["unit"] == unit else None

    return box.wait_for(check, message=f"{name} ready, served by {unit}")


def restart_ended(box: Container, name: str, outcome: str = "done",
                  timeout: float = 60.0) -> dict[str, Any]:
    """Wait until ``name``'s view shows its last restart ended with ``outcome`` (``done``:
    and the plugin is ready); the view."""
    def ended() -> dict[str, Any] | None:
        view = plugin(box, name)
        if view is None or not view["restart"] or view["restart"]["outcome"] != outcome:
            return None
        return view if outcome != "done" or view["state"] == "ready" else None

    return box.wait_for(ended, timeout=timeout,
                        message=f"{name}'s restart to end {outcome}")


def events(box: Container, name: str) -> list[dict[str, Any]]:
    """The plugin's events in volplugd's ring (``volplugctl --json events``), oldest first."""
    lines = box.run(["volplugctl", "--json", "events"]).stdout.splitlines()
    return [e for e in (json.loads(line) for line in lines if line.strip())
            if e["plugin"] == name]


def restart_events(box: Container, name: str) -> list[tuple[str, str]]:
    """``(type, reason)`` of the plugin's ``restart_*`` events, oldest first."""
    return [(e["type"], e["reason"]) for e in events(box, name)
            if e["type"].startswith("restart_")]


def logged(box: Container, event: str, cursor: str) -> list[dict[str, Any]]:
    """volplugd's JSON log lines of ``event`` since ``cursor``."""
    lines = [message(e) for e in box.entries(SERVICE, cursor=cursor)
             if e.get("_SYSTEMD_UNIT") == SERVICE]
    return [line for line in map(json.loads, (t for t in lines if t.startswith("{")))
            if line.get("event") == event]


def start_volplugd(box: Container) -> int:
    """``systemctl start volplugd.service`` (Type=notify: it returns once volplugd is
    ready); its MainPID."""
    box.systemctl("start", SERVICE)
    pid = box.main_pid(SERVICE)
    assert pid > 0
    return pid


def gateway_post(box: Container, name: str, endpoint: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to ``/ENDPOINT`` on the plugin's gateway socket, as Docker sends it
    (curl in the container); the answer, parsed."""
    answer = box.run(["curl", "-sS", "--unix-socket", f"{GATEWAY}/{name}.sock", "-X", "POST",
                      "-H", "Content-Type: application/json", "-d", json.dumps(body),
                      f"http://localhost/{endpoint}"]).stdout
    return json.loads(answer)


def gateway_answers(box: Container, name: str) -> None:
    """Wait until the plugin's gateway socket answers (an Activate): the gateway makes it
    on its own thread, after the snapshot that shows the plugin."""
    argv = ["curl", "-sS", "--unix-socket", f"{GATEWAY}/{name}.sock", "-X", "POST",
            "http://localhost/Plugin.Activate"]
    box.wait_for(lambda: box.run(argv, check=False).returncode == 0,
                 message=f"{name}'s gateway socket to answer")


def restart_samples(box: Container) -> dict[str, str]:
    """The restart families' samples of a scrape of ``/metrics``: ``name{labels}`` → value."""
    found = {}
    for line in box.run(["curl", "-sS", METRICS]).stdout.splitlines():
        if line.startswith(("volplugd_plugin_restart_given_up{",
                            "volplugd_plugin_restarts_total{")):
            series, value = line.rsplit(" ", 1)
            found[series] = value
    return found
