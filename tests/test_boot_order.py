"""``systemd/volplugd-wait.conf``, the drop-in that starts the container engines after
the plugins (docs/install.md, "Order at boot"), checked by ``systemd-analyze verify``
against the engines' own units as this machine installs them, and kept equal to the block
docs/install.md shows. tests/test_boot_order_system.py runs it under the real systemd.

verify does not check a ``-`` command's executable, and insists that the units'
``ExecStart=`` exist: the drop-in and volplugd's units are copied to a temp folder with
``/opt/volplugd/`` rewritten to it (as ``make install`` rewrites it to ``PREFIX``), where
stub executables stand in for volplugd's.
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
DROPIN = REPO / "systemd/volplugd-wait.conf"
ENGINES = {"docker.service": "docker.io", "podman-restart.service": "podman"}
SYSTEM_UNITS = Path("/lib/systemd/system")


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> str:
    unit: str = request.param
    if not (SYSTEM_UNITS / unit).is_file():
        pytest.skip(f"{unit} is not installed (Debian package {ENGINES[unit]}; "
                    f"make system-deps)")
    return unit


@pytest.fixture
def unit_dir(engine: str) -> Iterator[Path]:
    """The engine's unit with the drop-in beside it, volplugd's units, stub executables."""
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="vpb"))
    for command in ("volplugd", "volplugctl"):
        stub = folder / "bin" / command
        stub.parent.mkdir(exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    shutil.copy(SYSTEM_UNITS / engine, folder / engine)
    for name, source in (("volplugd.service", REPO / "systemd/volplugd.service"),
                         ("volplugd.socket", REPO / "systemd/volplugd.socket"),
                         (f"{engine}.d/volplugd-wait.conf", DROPIN)):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(source.read_text().replace("/opt/volplugd/", f"{folder}/"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _verify(unit: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tiers.tool("systemd-analyze", "systemd"), "verify", "--man=no", unit],
                          cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_verify_is_clean(unit_dir: Path, engine: str) -> None:
    """The engine's unit with the drop-in: rc 0 and not one line of output."""
    out = _verify(engine, unit_dir)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_verify_reads_the_drop_in(unit_dir: Path, engine: str) -> None:
    """A misspelt key in the drop-in is reported, naming it: the clean run covered it."""
    dropin = unit_dir / f"{engine}.d/volplugd-wait.conf"
    lines = dropin.read_text().splitlines(keepends=True)
    number = lines.index("[Service]\n") + 2
    lines.insert(number - 1, "ExecStartPree=-/bin/true\n")
    dropin.write_text("".join(lines))
    out = _verify(engine, unit_dir)
    assert out.returncode == 0
    assert out.stderr == f"{dropin}:{number}: Unknown key 'ExecStartPree' in section " \
                         f"[Service], ignoring.\n"


def test_docs_show_the_drop_in() -> None:
    """docs/install.md's block under "## Order at boot" is the file without its comments."""
    text = (REPO / "docs/install.md").read_text()
    block = re.search(r"```ini\n(.*?)```", text[text.index("## Order at boot"):], re.DOTALL)
    assert block is not None
    settings = [line for line in DROPIN.read_text().splitlines()
                if line and not line.startswith("#")]
    assert [line for line in block.group(1).splitlines() if line] == settings
