"""The gateway's files and settings: Docker spec files (written, left alone, restored,
never discovered), the Podman drop-in through the gateway (and back at a stop), the
gateway metrics, the [gateway] settings and --gateway."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.test_podman import Snapshots, listed, make_writer
from tests.waiting import wait_until
from volplugd import __version__
from volplugd.cli import build_parser, flag_overrides
from volplugd.config import ConfigError, GatewaySettings, PodmanSettings, load_settings
from volplugd.discovery import scan
from volplugd.gateway import SpecFiles, name_problem, serves, socket_path
from volplugd.metrics import Metrics
from volplugd.model import Kind, PluginState, PluginView, Snapshot
from volplugd.podman import DropinWriter, plan_dropin

MakeSpecs = Callable[[str, str], SpecFiles]
MARK = f"volplugd {__version__}; rewritten when volplugd starts and stops, do not edit"


def view(name: str, source: str, *, address: str | None = None,
         state: PluginState = PluginState.READY) -> PluginView:
    return PluginView(name=name, address=address or f"unix://{source}", source=source,
                      kind=Kind.SOCK, state=state, registered_at=1.0)


def snap(*views: PluginView, generation: int = 1) -> Snapshot:
    return Snapshot(MappingProxyType({v.name: v for v in views}), MappingProxyType({}),
                    generation=generation)


def spec(path: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads(path.read_bytes())
    return data


@pytest.fixture
def specs_dir(tmp_path: Path) -> Path:
    return tmp_path / "etc-docker-plugins"


@pytest.fixture
def specs() -> Iterator[MakeSpecs]:
    """SpecFiles, each closed (its folder's descriptor) after the test."""
    made: list[SpecFiles] = []

    def make(directory: str, docker_sockets: str) -> SpecFiles:
        made.append(SpecFiles(directory, docker_sockets))
        return made[-1]
    yield make
    for files in made:
        files.close()


def test_spec_files_point_docker_at_the_gateway_and_back(specs: MakeSpecs, specs_dir: Path,
                                                         tmp_path: Path) -> None:
    docker = tmp_path / "run-docker-plugins"
    files = specs(str(specs_dir), str(docker))
    outside = view("btrfs", "/run/volplugd/plugins/btrfs.sock")
    inside = view("local2", f"{docker}/local2.sock")  # Docker finds it itself
    umask = os.umask(0o077)  # the shipped unit's UMask
    try:
        files.update({"btrfs": ("/gw/btrfs.sock", outside),
                      "local2": ("/gw/local2.sock", inside)})
    finally:
        os.umask(umask)
    assert sorted(os.listdir(specs_dir)) == ["btrfs.json"]
    assert oct(specs_dir.stat().st_mode & 0o777) == "0o755"
    raw = (specs_dir / "btrfs.json").read_bytes()
    assert raw == (b'{"Generated-By":"' + MARK.encode() +
                   b'","Addr":"unix:///gw/btrfs.sock"}\n')
    assert oct((specs_dir / "btrfs.json").stat().st_mode & 0o777) == "0o644"
    assert files.ours() == ["btrfs"]
    # A clean stop: back to the plugin's own socket, still ours (recognised next time).
    files.restore(snap(outside))
    assert spec(specs_dir / "btrfs.json") == {"Generated-By": MARK,
                                              "Addr": "unix:///run/volplugd/plugins/btrfs.sock"}
    assert files.ours() == ["btrfs"]
    # The plugin left: its file goes.
    files.update({})
    assert os.listdir(specs_dir) == []


def test_spec_files_never_replace_the_administrators(specs: MakeSpecs, specs_dir: Path) -> None:
    specs_dir.mkdir()
    (specs_dir / "mine.json").write_text('{"Addr": "unix:///admin.sock"}')
    (specs_dir / "texty.spec").write_text("unix:///admin2.sock\n")
    files = specs(str(specs_dir), "/run/docker/plugins")
    served = {n: (f"/gw/{n}.sock", view(n, f"/srv/{n}.sock")) for n in ("mine", "texty")}
    with capture_logs() as logs:
        files.update(served)
        files.update(served)  # logged once
    assert (specs_dir / "mine.json").read_text() == '{"Addr": "unix:///admin.sock"}'
    assert sorted(os.listdir(specs_dir)) == ["mine.json", "texty.spec"]
    assert [(e["event"], e["plugin"], e["reason"]) for e in logs] == [
        ("docker_spec_left", "mine",
         f"{specs_dir}/mine.json was not written by volplugd; not overwriting it"),
        ("docker_spec_left", "texty",
         f"{specs_dir}/texty.spec exists (Docker reads it before texty.json)")]
    files.restore(snap())
    assert (specs_dir / "mine.json").read_text() == '{"Addr": "unix:///admin.sock"}'


def test_restore_removes_what_cannot_be_restored(specs: MakeSpecs, specs_dir: Path) -> None:
    files = specs(str(specs_dir), "/run/docker/plugins")
    tls = view("tls", "/etc/volplugd/tls.json", address="https://10.0.0.1:9000")
    files.update({"tls": ("/gw/tls.sock", tls), "gone": ("/gw/gone.sock",
                                                         view("gone", "/srv/gone.sock"))})
    assert files.ours() == ["gone", "tls"]
    files.restore(snap(tls))  # https: its TLS settings are not copied; gone: unknown
    assert os.listdir(specs_dir) == []


def test_discovery_skips_our_spec_files_but_not_the_administrators(specs: MakeSpecs,
                                                                    specs_dir: Path) -> None:
    files = specs(str(specs_dir), "/run/docker/plugins")
    files.update({"ours": ("/gw/ours.sock", view("ours", "/srv/ours.sock"))})
    (specs_dir / "admin.json").write_text('{"Addr": "unix:///srv/admin.sock"}')
    found = scan([str(specs_dir)])
    assert list(found.desired) == ["admin"]
    assert found.ignored == ()


def test_names_that_cannot_be_gateway_sockets() -> None:
    assert name_problem("/run/volplugd/gateway", "btrfs") is None
    assert socket_path("/run/volplugd/gateway", "btrfs") == "/run/volplugd/gateway/btrfs.sock"
    assert name_problem("/g", "..") == "cannot be a file name"
    assert name_problem("/g", "a/b") == "cannot be a file name"
    assert name_problem("/g", ".hidden") == "a hidden file name"
    assert name_problem("/g", "é" * 126) == f"{'é' * 126}.sock is longer than 255 bytes"
    assert name_problem("/g", "x" * 100) == "the socket path would be longer than 107 bytes"
    assert socket_path("/g", "x" * 100) is None
    assert socket_path("/g", "x" * 99) == "/g/" + "x" * 99 + ".sock"  # 107 bytes


# --- Podman through the gateway --------------------------------------------------------


def test_the_dropin_lists_gateway_sockets_and_falls_back_per_name() -> None:
    a, b = view("a", "/srv/a.sock"), view("b" * 120, "/srv/b.sock")
    plan = plan_dropin(snap(a, b), {}, lambda n: socket_path("/run/volplugd/gateway", n))
    assert dict(plan.entries) == {"a": "/run/volplugd/gateway/a.sock", "b" * 120: "/srv/b.sock"}


def test_a_clean_stop_lists_the_plugins_own_sockets_again(tmp_path: Path) -> None:
    dropin = str(tmp_path / "50-volplugd.conf")
    snapshots = Snapshots()
    plain = make_writer(dropin, snapshots)
    writer = DropinWriter(PodmanSettings(enabled=True, dropin=dropin, via_gateway=True),
                          snapshots.wait, tick=0.05, search_paths=list,
                          route=lambda n: f"/gw/{n}.sock")
    assert plain.path == writer.path
    writer.start()
    snapshots.publish(view("a", "/srv/a.sock"))
    wait_until(lambda: os.path.exists(dropin) and listed(Path(dropin).read_text())
               == {"a": "/gw/a.sock"}, message="the routed drop-in")
    writer.stop()
    writer.join(5)
    assert listed(Path(dropin).read_text()) == {"a": "/srv/a.sock"}


# --- metrics ----------------------------------------------------------------------------


def test_gateway_metrics() -> None:
    current = snap(view("p", "/srv/p.sock"))
    metrics = Metrics(lambda: current, version="test")
    metrics.gateway_request("p", "create", "not_ready", 0.0004)
    metrics.gateway_request("p", "create", "answered", 0.02)
    metrics.gateway_request("p", "weird", "what", 0.5)
    text = metrics.exposition()[0].decode()
    lines = [line.replace("volplugd_gateway_request_duration_seconds", "H")
             for line in text.splitlines() if line.startswith("volplugd_gateway_request")]
    assert lines == [
        'volplugd_gateway_requests_total{plugin="p",endpoint="create",outcome="answered"} 1',
        'volplugd_gateway_requests_total{plugin="p",endpoint="create",outcome="not_ready"} 1',
        'volplugd_gateway_requests_total{plugin="p",endpoint="other",outcome="error"} 1',
        'H_bucket{plugin="p",endpoint="create",le="0.001"} 1',
        'H_bucket{plugin="p",endpoint="create",le="0.01"} 1',
        'H_bucket{plugin="p",endpoint="create",le="0.1"} 2',
        'H_bucket{plugin="p",endpoint="create",le="1.0"} 2',
        'H_bucket{plugin="p",endpoint="create",le="10.0"} 2',
        'H_bucket{plugin="p",endpoint="create",le="120.0"} 2',
        'H_bucket{plugin="p",endpoint="create",le="+Inf"} 2',
        'H_sum{plugin="p",endpoint="create"} 0.0204',
        'H_count{plugin="p",endpoint="create"} 2',
        'H_bucket{plugin="p",endpoint="other",le="0.001"} 0',
        'H_bucket{plugin="p",endpoint="other",le="0.01"} 0',
        'H_bucket{plugin="p",endpoint="other",le="0.1"} 0',
        'H_bucket{plugin="p",endpoint="other",le="1.0"} 1',
        'H_bucket{plugin="p",endpoint="other",le="10.0"} 1',
        'H_bucket{plugin="p",endpoint="other",le="120.0"} 1',
        'H_bucket{plugin="p",endpoint="other",le="+Inf"} 1',
        'H_sum{plugin="p",endpoint="other"} 0.5',
        'H_count{plugin="p",endpoint="other"} 1',
    ]


# --- settings ---------------------------------------------------------------------------


def test_gateway_settings_default_off_and_validated(tmp_path: Path) -> None:
    assert load_settings(None).gateway == GatewaySettings(
        enabled=False, dir="/run/volplugd/gateway", mode=0o660, group=None,
        docker_specs=False, docker_spec_dir="/etc/docker/plugins")
    assert load_settings(None).podman.via_gateway is False
    on = load_settings(None, {"gateway.enabled": True, "gateway.mode": "0600",
                              "gateway.group": "docker", "podman.via_gateway": True,
                              "gateway.docker_specs": True})
    assert (on.gateway.mode, on.gateway.group, on.podman.via_gateway) == (0o600, "docker", True)
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"podman.via_gateway": True})
    assert str(err.value) == ("podman.via_gateway: needs the gateway: set gateway.enabled = "
                              "true (or --gateway)")
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"gateway.docker_specs": True})
    assert str(err.value) == ("gateway.docker_specs: needs the gateway: set gateway.enabled "
                              "= true (or --gateway)")
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"gateway.dir": "relative"})
    assert str(err.value) == 'gateway.dir: must be an absolute path, got "relative"'


def test_the_gateway_flag() -> None:
    args = build_parser().parse_args(["--gateway"])
    assert flag_overrides(args) == {"gateway.enabled": True}
    assert flag_overrides(build_parser().parse_args([])) == {}


def test_which_plugins_get_a_gateway_socket() -> None:
    """Not rejected ones, not untrusted ones, and — only while never activated — not a
    unix plugin nobody listens on; the socket is asked only in that last case."""
    asked: list[str] = []

    def nobody(path: str) -> bool:
        asked.append(path)
        return False

    def ok(state: PluginState, **kw: Any) -> PluginView:
        return dataclasses.replace(view("p", "/srv/p.sock", state=state), **kw)

    untrusted = ok(PluginState.READY, warnings=("untrusted: /srv is writable by others",))
    table = [
        (ok(PluginState.REJECTED), "rejected"),
        (untrusted, "untrusted: /srv is writable by others"),
        (ok(PluginState.ACTIVATING), "nobody listens on its socket"),
        (ok(PluginState.ACTIVATING, last_success_at=2.0), None),  # once ready: kept
        (ok(PluginState.UNHEALTHY), None),
        (ok(PluginState.READY), None),
        (ok(PluginState.ACTIVATING, address="tcp://127.0.0.1:9"), None),
    ]
    assert [serves(v, nobody) for v, _ in table] == [want for _, want in table]
    assert asked == ["/srv/p.sock"]
    assert serves(ok(PluginState.ACTIVATING), lambda path: True) is None
