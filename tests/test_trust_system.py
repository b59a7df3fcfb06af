"""Trust of plugin folders, end to end: the real daemon, fake plugins on real sockets, real
folder modes, the real Podman drop-in."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.configs import fast
from tests.fakeplugin import FakePlugin
from tests.harness import Daemon
from tests.test_trust_discovery import SPEC_UNVERIFIED, TLS_REFUSED, has_reader, tls_json
from tests.waiting import wait_until

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(os.geteuid() != 0, reason="folder owners need root")]

FAST = fast(failure_threshold=3)  # the default threshold: these tests need no other


def dropin_plugins(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    plugins: dict[str, Any] = tomllib.loads(path.read_text())["engine"]["volume_plugins"]
    return plugins


def warned(d: Daemon, plugin: str) -> list[str]:
    return [e["warning"] for e in d.log_events()
            if e.get("event") == "plugin_warning" and e.get("plugin") == plugin]


def probed_again(d: Daemon, name: str, times: int) -> None:
    """Wait until ``name``'s last_probe_at has changed ``times`` times."""
    seen: list[str | None] = []

    def check() -> bool:
        stamp = d.get(f"/v1/plugins/{name}")["last_probe_at"]
        if not seen or seen[-1] != stamp:
            seen.append(stamp)
        return len(seen) > times
    wait_until(check, 20, message=f"{name} probed {times} more times")


def test_untrusted_plugin_is_served_with_its_warning_and_kept_out_of_podman(
        daemon: Callable[..., Daemon], fakes_at: Callable[[Path], FakePlugin],
        short_tmp: Path) -> None:
    """shady (in a 0757 folder) is ready with 'untrusted: …' and absent from the drop-in
    while alpha (0755) is listed; a .json there naming TLS files is ignored and its files
    never opened; warnings are logged once per registration, not per probe; a chmod seen
    by a rescan makes alpha untrusted and then trusted again."""
    good = short_tmp / "good"
    shady = short_tmp / "shady"
    files = short_tmp / "files"
    for path in (good, shady, files):
        path.mkdir(mode=0o755)
    shady.chmod(0o757)
    fifos = tls_json(shady / "tls.json", files)
    (good / "web.spec").write_text("https://127.0.0.1:9\n")  # nothing listens: retries
    dropin = short_tmp / "50-volplugd.conf"
    d = daemon(config=FAST, plugin_dirs=[good, shady],
               args=["--podman-dropin", str(dropin)]).start()
    fakes_at(good / "alpha.sock")
    fakes_at(shady / "shady.sock")

    alpha = d.wait_state("alpha", "ready")
    untrusted = f"untrusted: {shady} is writable by others (mode 0757)"
    assert d.wait_state("shady", "ready")["warnings"] == [untrusted]
    assert alpha["warnings"] == []
    # The writer follows snapshots: it may first write alpha alone (shady still
    # activating), then again with shady named in the comment.
    wait_until(lambda: dropin_plugins(dropin) == {"alpha": str(good / "alpha.sock")}
               and f'#   "shady": {shady} is writable by others (mode 0757)\n'
               in dropin.read_text(), 15, message="the drop-in to list alpha only, name shady")

    ignored = d.wait_log("plugin_file_ignored")
    assert (ignored["path"], ignored["reason"]) == (
        str(shady / "tls.json"),
        f"{TLS_REFUSED}; untrusted: {shady} is writable by others (mode 0757)")
    status, body = d.call("GET", "/v1/plugins/tls")
    assert (status, body["error"]["code"]) == (404, "plugin_not_found")

    assert d.get("/v1/plugins/web")["warnings"] == [SPEC_UNVERIFIED]
    probed_again(d, "shady", 3)
    probed_again(d, "web", 2)  # activation attempts, with back-off
    assert warned(d, "shady") == [untrusted]
    assert warned(d, "web") == [SPEC_UNVERIFIED]
    assert warned(d, "alpha") == []
    assert not any(has_reader(f) for f in fifos.values())

    good.chmod(0o775)
    assert d.call("POST", "/v1/rescan")[0] == 200
    now_untrusted = f"untrusted: {good} is writable by group (mode 0775)"
    assert d.get("/v1/plugins/alpha")["warnings"] == [now_untrusted]
    assert d.get("/v1/plugins/alpha")["state"] == "ready"
    wait_until(lambda: dropin_plugins(dropin) == {}, 15, message="alpha left out")
    wait_until(lambda: warned(d, "alpha") == [now_untrusted], 15, message="one warning")
    good.chmod(0o755)
    assert d.call("POST", "/v1/rescan")[0] == 200
    assert d.get("/v1/plugins/alpha")["warnings"] == []
    wait_until(lambda: dropin_plugins(dropin) == {"alpha": str(good / "alpha.sock")}, 15,
               message="alpha listed again")
    assert d.get("/v1/health")["status"] == "ok"
    assert not [e for e in d.log_events() if e.get("level") == "error"]
    assert not any(has_reader(f) for f in fifos.values())
