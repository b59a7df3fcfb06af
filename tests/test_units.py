"""The systemd units, checked by systemd's own tools: `systemd-analyze verify` is clean
and `systemd-analyze security --offline=true` rates the sandbox <= 2.0 ("OK").

verify insists that ExecStart= exists, so the units are checked from a temp folder
with ExecStart= pointing at a stub executable (nothing else is changed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tiers

pytestmark = pytest.mark.peer

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
INSTALLED_EXEC = "/opt/volplugd/bin/volplugd"
OVERALL = re.compile(r"^→ Overall exposure level for (\S+): (\d+\.\d) (\w+)", re.MULTILINE)
# Every check the unit does not pass, each explained by a comment in the unit.
RELAXED = {
    "User=/DynamicUser=",
    "PrivateUsers=",
    "RootDirectory=/RootImage=",
    "ProcSubset=",
    "DeviceAllow=",
    "SystemCallFilter=~@privileged",
    "PrivateNetwork=",
    "IPAddressDeny=",
    "RestrictAddressFamilies=~AF_UNIX",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
}


def _analyze() -> str:
    return tiers.tool("systemd-analyze", "systemd")


@pytest.fixture
def unit_dir() -> Iterator[Path]:
    """Both units in a temp folder, ExecStart= pointing at an existing stub executable."""
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="vpu"))
    stub = folder / "volplugd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    service = (UNITS / "volplugd.service").read_text()
    assert f"ExecStart={INSTALLED_EXEC} " in service
    (folder / "volplugd.service").write_text(service.replace(INSTALLED_EXEC, str(stub)))
    shutil.copy(UNITS / "volplugd.socket", folder / "volplugd.socket")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _settings(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (all sections; comments and blank lines skipped)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_verify_is_clean(unit_dir: Path) -> None:
    """systemd-analyze verify --man=no accepts both units: rc 0 and not one line of output."""
    out = _run([_analyze(), "verify", "--man=no", "volplugd.service", "volplugd.socket"],
               unit_dir)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_verify_would_catch_a_broken_unit(unit_dir: Path) -> None:
    """A misspelt Type= is reported on stderr although rc stays 0: why "clean" means no output."""
    service = unit_dir / "volplugd.service"
    lines = service.read_text().splitlines(keepends=True)
    number = lines.index("Type=notify\n") + 1
    lines[number - 1] = "Type=notifyy\n"
    service.write_text("".join(lines))
    out = _run([_analyze(), "verify", "--man=no", "volplugd.service"], unit_dir)
    assert out.returncode == 0
    assert out.stderr == f"{service}:{number}: Failed to parse service type, ignoring: notifyy\n"


def test_security_exposure_is_ok(unit_dir: Path) -> None:
    """systemd-analyze security --offline=true rates volplugd.service at most 2.0 (OK)."""
    out = _run([_analyze(), "security", "--offline=true", "volplugd.service"], unit_dir)
    assert out.returncode == 0, out.stderr
    match = OVERALL.search(out.stdout)
    assert match is not None, out.stdout
    unit, score, verdict = match.group(1), float(match.group(2)), match.group(3)
    assert unit == "volplugd.service"
    assert score <= 2.0, out.stdout
    assert verdict == "OK"


def test_only_explained_checks_fail(unit_dir: Path) -> None:
    """The checks the sandbox fails are exactly the ones the unit's comments explain."""
    out = _run([_analyze(), "security", "--offline=true", "volplugd.service"], unit_dir)
    failed = {line[2:].split()[0] for line in out.stdout.splitlines() if line.startswith("✗ ")}
    assert failed == RELAXED, out.stdout


def test_service_settings() -> None:
    """The service is Type=notify with the watchdog, reload by HUP and the socket alongside."""
    s = _settings(UNITS / "volplugd.service")
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecStart"] == [f"{INSTALLED_EXEC} --config /etc/volplugd/volplugd.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["RuntimeDirectory"] == ["volplugd"]
    assert s["RuntimeDirectoryPreserve"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["ReadWritePaths"] == ["-/etc/containers/containers.conf.d"]
    assert s["ReadOnlyPaths"] == ["/run"]  # tests/test_sandbox_system.py proves why
    assert s["LimitNOFILE"] == ["65536"]
    assert s["Also"] == ["volplugd.socket"]


def test_socket_settings() -> None:
    """The socket unit listens on the control socket, 0660 for the volplugd group, fd "control"."""
    s = _settings(UNITS / "volplugd.socket")
    assert s["ListenStream"] == ["/run/volplugd/control.sock"]
    assert s["SocketMode"] == ["0660"]
    assert s["SocketGroup"] == ["volplugd"]
    assert s["FileDescriptorName"] == ["control"]
    assert s["Service"] == ["volplugd.service"]
    assert s["RemoveOnStop"] == ["yes"]
