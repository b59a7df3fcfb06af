"""`make install` / `make uninstall` into a temp DESTDIR: the tree, the relocation to
PREFIX, the config that is never overwritten once changed, and the removal.

One real install (a virtual environment, ~15-40 s) is shared by the module; tests
that change a tree work on their own copy of it, so no test depends on another.
A PREFIX other than the default proves that every path is rewritten to it.
System tier (tests/tiers.py): each test runs the installer (make, venv, pip) or the
volplugd it installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tiers
from volplugd import __version__

REPO = Path(__file__).resolve().parent.parent
PREFIX = "/srv/volplugd-test"
CONF = "etc/volplugd/volplugd.toml"
UNITDIR = "etc/systemd/system"

# One worker runs the module: test_install_ships_exactly_the_sources plants a file in the
# checkout's build/ that no other install may see.
pytestmark = [pytest.mark.system, pytest.mark.xdist_group("make-install"),
              pytest.mark.timeout(900)]  # a venv and a pip install on a shared machine


def make(target: str, destdir: Path) -> subprocess.CompletedProcess[str]:
    """Run `make <target> DESTDIR=… PREFIX=…` in the repository, not inheriting any make flags."""
    tiers.require("system", f"runs make {target}")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target,
                          f"DESTDIR={destdir}", f"PREFIX={PREFIX}"],
                         capture_output=True, text=True, env=env, timeout=800, check=False)
    assert out.returncode == 0, f"make {target} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A DESTDIR holding one `make install`; tests must not change it (copy it first)."""
    destdir = tmp_path_factory.mktemp("destdir")
    make("install", destdir)
    yield destdir
    shutil.rmtree(destdir, ignore_errors=True)


@pytest.fixture
def copy(installed: Path, tmp_path: Path) -> Path:
    """A private copy of the installed DESTDIR that a test may change."""
    destdir = tmp_path / "destdir"
    shutil.copytree(installed, destdir, symlinks=True)
    return destdir


def root(destdir: Path, path: str) -> Path:
    return destdir / path.lstrip("/")


def files(destdir: Path) -> set[str]:
    return {str(p.relative_to(destdir)) for p in destdir.rglob("*") if not p.is_dir()}


def test_tree(installed: Path) -> None:
    """install puts the venv at PREFIX, both units, the config and the docs where expected."""
    venv = root(installed, PREFIX)
    for script in ("volplugd", "volplugctl", "python"):
        assert os.access(venv / "bin" / script, os.X_OK), script
    assert (venv / "pyvenv.cfg").is_file()
    assert (venv / "share/doc/volplugd/install.md").read_text() == \
        (REPO / "docs/install.md").read_text()
    assert (installed / CONF).read_bytes() == (REPO / CONF).read_bytes()
    assert (installed / CONF).stat().st_mode & 0o777 == 0o644
    assert not (installed / (CONF + ".dist")).exists()
    for unit in ("volplugd.service", "volplugd.socket"):
        assert (installed / UNITDIR / unit).stat().st_mode & 0o777 == 0o644
    for command in ("volplugd", "volplugctl"):
        assert os.readlink(installed / "usr/local/bin" / command) == f"{PREFIX}/bin/{command}"
    completion = installed / "usr/share/bash-completion/completions/volplugctl"
    assert completion.read_bytes() == (REPO / "etc/bash_completion.d/volplugctl").read_bytes()


def test_install_ships_exactly_the_sources(tmp_path: Path) -> None:
    """A module left in the checkout's build/lib by an earlier build (deleted from the
    sources since) is not installed: each install builds in a fresh folder."""
    stale = REPO / "build/lib/volplugd/_deleted_since.py"
    made = [p for p in (REPO / "build", REPO / "build/lib", stale.parent) if not p.exists()]
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("GONE = True\n")
    try:
        make("install", tmp_path)
    finally:
        stale.unlink()
        for folder in reversed(made):
            folder.rmdir()
    site = next(root(tmp_path, PREFIX).glob("lib/python3*/site-packages/volplugd"))
    installed = {str(p.relative_to(site)) for p in site.rglob("*.py")}
    sources = {str(p.relative_to(REPO / "volplugd")) for p in (REPO / "volplugd").rglob("*.py")}
    assert installed == sources


def test_units_name_prefix(installed: Path) -> None:
    """Installed units differ from the shipped ones only in naming PREFIX, not /opt/volplugd."""
    for unit in ("volplugd.service", "volplugd.socket"):
        shipped = (REPO / "systemd" / unit).read_text()
        assert (installed / UNITDIR / unit).read_text() == \
            shipped.replace("/opt/volplugd/", PREFIX + "/")
    service = (installed / UNITDIR / "volplugd.service").read_text()
    assert f"\nExecStart={PREFIX}/bin/volplugd --config /etc/volplugd/volplugd.toml\n" in service


def test_nothing_names_destdir(installed: Path) -> None:
    """No installed file (scripts' #! lines, pyvenv.cfg, byte-code) mentions the DESTDIR."""
    needle = str(installed).encode()
    regular = [installed / name for name in files(installed)]
    mentions = [p for p in regular if not p.is_symlink() and needle in p.read_bytes()]
    assert mentions == []
    shebang = (root(installed, PREFIX) / "bin/volplugd").read_text().splitlines()[0]
    assert shebang == f"#!{PREFIX}/bin/python"


def test_installed_volplugd_runs(installed: Path, tmp_path: Path) -> None:
    """The installed `volplugd --version` runs from the venv's own (non-editable) copy."""
    venv = root(installed, PREFIX)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = [str(venv / "bin/python"), str(venv / "bin/volplugd"), "--version"]
    out = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120, check=True)
    assert out.stdout == f"volplugd {__version__}\n"
    where = subprocess.run([str(venv / "bin/python"), "-c",
                            "import volplugd; print(volplugd.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=120, check=True)
    assert where.stdout.startswith(str(venv / "lib/python3"))


def test_reinstall_keeps_a_changed_config(copy: Path) -> None:
    """Reinstall keeps an edited config (new default as .dist); uninstall keeps it too."""
    conf = copy / CONF
    changed = conf.read_text() + "\n# the operator's change\n"
    conf.write_text(changed)
    out = make("install", copy)
    assert f"install: kept your changed {conf}; the new default is {conf}.dist\n" in out.stdout
    assert conf.read_text() == changed
    assert (copy / (CONF + ".dist")).read_bytes() == (REPO / CONF).read_bytes()
    out = make("uninstall", copy)
    assert f"uninstall: kept your changed {conf}\n" in out.stdout
    assert files(copy) == {CONF}
    assert conf.read_text() == changed


def test_uninstall_removes_everything(copy: Path) -> None:
    """uninstall removes the venv, the units, an unchanged config and volplugd's Podman drop-in."""
    dropin = copy / "etc/containers/containers.conf.d/50-volplugd.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("# Generated by volplugd 0.1.0 - do not edit\n")
    out = make("uninstall", copy)
    assert f"uninstall: removed {root(copy, PREFIX)}\n" in out.stdout
    assert files(copy) == set()
    assert not (copy / "etc/volplugd").exists()
    assert not dropin.parent.exists()


def test_uninstall_leaves_other_files(copy: Path) -> None:
    """uninstall leaves a Podman drop-in it did not write and a PREFIX that is not its venv."""
    dropin = copy / "etc/containers/containers.conf.d/50-volplugd.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[engine]\n")
    (root(copy, PREFIX) / "share/volplugd/volplugd.toml").unlink()  # no longer ours
    out = make("uninstall", copy)
    assert f"uninstall: left {root(copy, PREFIX)}: not a volplugd install\n" in out.stderr
    assert dropin.read_text() == "[engine]\n"
    assert (root(copy, PREFIX) / "pyvenv.cfg").is_file()
