"""A real systemd 252 as PID 1 in ``systemd-nspawn``, for tests of installed units.

PID 1 on the test machines is not systemd, but ``systemd-nspawn`` boots the machine's own
Debian as a container (recipe: shared/peers README §9): an overlay of ``/`` whose writes go
to a tmpfs, booted to ``basic.target`` with ``--keep-unit --register=no
--private-network``, driven with ``nsenter`` into the container's leader (its PID 1).

Use (the tests of issue 21 do; later issues reuse it for restarts of real units)::

    with boot("mytest") as box:               # skips, saying why, where it cannot work
        box.install_volplugd(wheelhouse)      # `make install` of this checkout, offline
        box.write("/run/systemd/system/volplugd.service.d/x.conf", "[Service]\\n...")
        box.systemctl("daemon-reload")
        box.systemctl("start", "volplugd.service")
        pid = box.main_pid("volplugd.service")
        box.wait_for(lambda: box.show("volplugd.service", "ActiveState") == "active",
                     message="volplugd active")
        box.journal("volplugd.service")       # what systemd and volplugd logged
        box.entries("volplugd.service", cursor=box.cursor())  # the same, as JSON, later

``boot`` cleans up everything it made when the block ends, failing or not: the container
(SIGTERM to nspawn, SIGKILL after a deadline), the overlay and tmpfs mounts, its cgroups,
its entries under ``/run/systemd/nspawn``. Every container has its own name, folder and
cgroup (``vpn-<pid>-<n>``), so several may run at once (pytest-xdist workers).

For the next tests (restarts of real units driven over D-Bus): the container's system
bus is socket-activated (``dbus.socket``), so ``box.run(["busctl", "--system", "call",
"org.freedesktop.systemd1", ...])`` reaches its systemd, and a client under test can run
inside from the source copy (``SOURCE``, e.g. ``/usr/bin/python3 -m ...`` with
``WorkingDirectory=SOURCE`` through ``systemd-run``, as tests/test_sandbox_system.py runs
tests/fakeplugin). Share one container per module (a module fixture, and
``pytest.mark.xdist_group`` so ``make test``'s ``--dist loadgroup`` keeps the module on
one worker) and put state back before each test, as that module's ``fresh`` does.
Commands given to ``run`` see the container's root only (``nsenter -r -w``); pids are
the container's. The host sees the container's files below ``box.root``, except in its
own tmpfs mounts (/run, /tmp): write those with ``box.write``.

``wheelhouse`` (a session fixture, shared by the xdist workers of one run) holds wheels of
volplugd's runtime and build dependencies: a ``--private-network`` container reaches no
package index, so ``make install`` inside runs pip with ``PIP_NO_INDEX=1``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import tiers
from tests.waiting import wait_until

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
SYSTEMD = "/lib/systemd/systemd"
CGROUPS = Path("/sys/fs/cgroup")
NSPAWN_RUN = Path("/run/systemd/nspawn")
# Taken while a container starts and while shared nspawn folders are removed, so one
# clean-up never removes a folder another nspawn has just made (processes, not threads).
# The file itself stays: removing a lock file that another process may hold breaks it.
LOCK = Path("/run/volplugd-tests-nspawn.lock")
SOURCE = "/usr/src/volplugd"  # where install_volplugd puts the checkout, in the container
WHEELS = "/usr/src/volplugd-wheels"
# Inside the container: the Debian interpreter (the venv links to it; ProtectHome= hides
# one under /root), and a PATH without the host's pyenv shims.
PYTHON = "/usr/bin/python3"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SKIP_COPY = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__",
             "run", "build"}
_serial = itertools.count(1)


def skip_reason() -> str | None:
    """Why containers cannot boot here, or None."""
    if os.geteuid() != 0:
        return "a systemd-nspawn container needs root"
    for tool in ("systemd-nspawn", "nsenter", "mount", "umount"):
        if shutil.which(tool) is None:
            package = "systemd-container" if tool == "systemd-nspawn" else "util-linux"
            return f"{tool} is missing (Debian package {package}; make system-deps)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing (Debian package systemd)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs (modprobe overlay)"
    if not (CGROUPS / "unified").is_dir() and not (CGROUPS / "cgroup.controllers").exists():
        return "no cgroup2 hierarchy for nspawn (none at /sys/fs/cgroup or its unified/)"
    return None


def _cgroup_roots() -> list[Path]:
    """The hierarchies nspawn puts the container in: cgroup2 and, on a hybrid host, name=systemd."""
    if (CGROUPS / "cgroup.controllers").exists():
        return [CGROUPS]
    return [p for p in (CGROUPS / "unified", CGROUPS / "systemd") if p.is_dir()]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


class Container:
    """One booted container. Made by ``boot``; every method runs on the host."""

    def __init__(self, name: str, folder: Path, binds: Sequence[tuple[Path, str]] = ()):
        self.name = name
        self.folder = folder
        self.binds = tuple(binds)  # (host folder, where it appears inside): nspawn --bind=
        self.root = folder / "root"  # the overlay: the container's "/" as the host sees it
        self.log = folder / "nspawn.log"  # nspawn's and the console's output
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0  # host pid of the container's PID 1
        self.image_lock: Path | None = None

    # --- running commands --------------------------------------------------------------
    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 120.0,
            input: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in all the container's namespaces, as its root (text in and out).
        ``check``: fail the test, with the output, unless it exits 0."""
        enter = ["nsenter", "-t", str(self.leader), "-m", "-p", "-u", "-i", "-n", "-C",
                 "-r", "-w", "--", "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8",
                 *(f"{k}={v}" for k, v in (env or {}).items())]
        out = subprocess.run([*enter, *argv], capture_output=True, text=True, input=input,
                             timeout=timeout, check=False, errors="backslashreplace")
        if check and out.returncode != 0:
            pytest.fail(f"{list(argv)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """``run(["sh", "-c", script])``."""
        return self.run(["sh", "-c", script], **kw)  # type: ignore[arg-type]

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, as ``systemctl show -P`` prints it."""
        return self.systemctl("show", "-P", prop, unit).stdout.rstrip("\n")

    def main_pid(self, unit: str) -> int:
        """The unit's MainPID (a pid of the container's namespace; 0: none)."""
        return int(self.show(unit, "MainPID"))

    def entries(self, unit: str | None = None, *, cursor: str | None = None
                ) -> list[dict[str, Any]]:
        """The journal's entries (of ``unit``, after ``cursor``; flushed first), each as
        ``journalctl -o json`` gives it. ``unit`` is matched here, as ``journalctl -u``
        matches (what the unit logged, and what PID 1 and root logged about it):
        journalctl 252 given ``-u`` with ``--after-cursor`` drops the first entry that
        matches (systemd/systemd#30288, fixed in 255)."""
        self.run(["journalctl", "--sync"], check=False)
        argv = ["journalctl", "--no-pager", "-o", "json"]
        if cursor is not None:
            argv += ["--after-cursor", cursor]
        lines = self.run(argv, check=False).stdout.splitlines()
        found = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in found if unit is None or unit in (
            e.get("_SYSTEMD_UNIT"), e.get("UNIT") if e.get("_PID") == "1" else None,
            e.get("OBJECT_SYSTEMD_UNIT") if e.get("_UID") == "0" else None)]

    def journal(self, unit: str | None = None, *, cursor: str | None = None) -> str:
        """The journal (of ``unit``, after ``cursor``; see ``entries``) as lines
        ``[MONOTONIC] IDENTIFIER[PID]: MESSAGE``."""
        return "".join(f"[{int(e['__MONOTONIC_TIMESTAMP']) / 1e6:12.6f}] "
                       f"{e.get('SYSLOG_IDENTIFIER', '?')}[{e.get('_PID', '?')}]: "
                       f"{message(e)}\n" for e in self.entries(unit, cursor=cursor))

    def cursor(self) -> str:
        """The journal's current end, for ``journal(cursor=...)``: only what comes later."""
        self.run(["journalctl", "--sync"], check=False)
        out = self.run(["journalctl", "-n", "0", "--show-cursor", "--no-pager"]).stdout
        return out.rsplit("-- cursor: ", 1)[1].strip()

    def wait_for(self, predicate: Callable[[], T], timeout: float = 60.0,
                 message: str = "condition") -> T:
        """``tests.waiting.wait_until``, failing with the end of the journal for context."""
        try:
            return wait_until(predicate, timeout=timeout, interval=0.1, message=message)
        except AssertionError as err:
            tail = "\n".join(self.journal().splitlines()[-40:])
            raise AssertionError(f"{err}\n--- journal tail:\n{tail}") from None

    # --- files ---------------------------------------------------------------------------
    def path(self, inside: str) -> Path:
        """Where the host writes a file of the container's overlay (not its tmpfs mounts:
        /run, /tmp; use ``write`` for those)."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        """Create or replace a file in the container (any path, /run included), parents made."""
        folder = os.path.dirname(inside)
        self.run(["sh", "-c", 'mkdir -p "$1" && cat > "$2" && chmod "$3" "$2"', "sh",
                  folder, inside, f"{mode:o}"], input=text)

    def remove(self, *inside: str) -> None:
        self.run(["rm", "-rf", "--", *inside])

    def add_unit(self, name: str, text: str) -> None:
        """A unit in /etc/systemd/system, then ``daemon-reload``."""
        self.write(f"/etc/systemd/system/{name}", text)
        self.systemctl("daemon-reload")

    def add_dropin(self, unit: str, name: str, text: str, *, runtime: bool = True) -> None:
        """A drop-in ``<name>.conf`` for ``unit`` (in /run unless ``runtime=False``), then
        ``daemon-reload``."""
        base = "/run/systemd/system" if runtime else "/etc/systemd/system"
        self.write(f"{base}/{unit}.d/{name}.conf", text)
        self.systemctl("daemon-reload")

    # --- volplugd ------------------------------------------------------------------------
    def install_volplugd(self, wheelhouse: Path) -> subprocess.CompletedProcess[str]:
        """Copy this checkout to /usr/src/volplugd and run ``make install`` there with the
        Debian Python, pip offline on ``wheelhouse``. The units land in
        /etc/systemd/system, systemd is reloaded; nothing is enabled or started."""
        shutil.copytree(REPO, self.path(SOURCE), symlinks=True,
                        ignore=lambda _d, names: [n for n in names if n in SKIP_COPY
                                                  or n.endswith(".egg-info")])
        shutil.copytree(wheelhouse, self.path(WHEELS))
        return self.run(["make", "--no-print-directory", "-C", SOURCE, "install",
                         f"PYTHON={PYTHON}"], timeout=600,
                        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS,
                             "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HOME": "/root"})

    # --- life cycle ----------------------------------------------------------------------
    def _start(self) -> None:
        (self.folder / "upper").mkdir()
        self.root.mkdir()
        _check(["mount", "-t", "tmpfs", "-o", "size=2G,mode=0755", "vpn-upper",
                str(self.folder / "upper")])
        (self.folder / "upper/u").mkdir()
        (self.folder / "upper/w").mkdir()
        _check(["mount", "-t", "overlay", "-o",
                f"lowerdir=/,upperdir={self.folder}/upper/u,workdir={self.folder}/upper/w",
                "vpn-overlay", str(self.root)])
        # nspawn's lock on the image, named by the overlay's device and inode; nspawn
        # removes it when it ends, unless it is killed.
        root = self.root.stat()
        self.image_lock = NSPAWN_RUN / "locks" / f"inode-{root.st_dev}:{root.st_ino}"
        for cgroup in _cgroup_roots():
            (cgroup / self.name).mkdir()
        # nspawn with --keep-unit makes its "payload" and "supervisor" cgroups below its
        # own; started in a cgroup of its own, two containers never share them.
        procs = " ".join(str(c / self.name / "cgroup.procs") for c in _cgroup_roots())
        argv = ["sh", "-c", f'for f in {procs}; do echo $$ > "$f"; done; exec "$@"', "sh",
                "systemd-nspawn", "-D", str(self.root), "-M", self.name, "--keep-unit",
                "--register=no", "--private-network", "--console=read-only",
                *(f"--bind={host}:{inside}" for host, inside in self.binds), "-b", "--",
                "systemd.unit=basic.target"]
        with self.log.open("wb") as log:
            self.nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = wait_until(self._find_leader, timeout=60.0,
                                 message=f"container {self.name}'s PID 1")
        state = wait_until(self._system_state, timeout=60.0,
                           message=f"container {self.name} to boot")
        if state not in ("running", "degraded"):
            pytest.fail(f"container {self.name} did not boot: {state!r}\n"
                        f"{self.log.read_text(errors='replace')}")

    def _system_state(self) -> str:
        """PID 1's state once booted; "" before. Until PID 1 has made /run/systemd/system
        systemctl says "offline", until it listens on its private bus it says nothing."""
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False).stdout
        return "" if state.strip() == "offline" else state.strip()

    def _find_leader(self) -> int:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            pytest.fail(f"systemd-nspawn exited {self.nspawn.returncode}:\n"
                        f"{self.log.read_text(errors='replace')}")
        for child in Path(f"/proc/{self.nspawn.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def stop(self) -> None:
        """Stop the container and remove everything ``_start`` made (safe to call twice,
        and after a partial start)."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn asks PID 1 to power off
            try:
                self.nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait(timeout=60)
        # A container whose nspawn was killed (or that was stopped while it booted) may
        # outlive it: whatever is left in its cgroups is killed.
        for cgroup in _cgroup_roots():
            _kill_cgroup(cgroup / self.name)
        for mount in (self.root, self.folder / "upper"):
            if os.path.ismount(mount):
                _check(["umount", "--lazy", str(mount)])
        with _locked():
            if self.image_lock is not None:
                self.image_lock.unlink(missing_ok=True)
            for entry in ("propagate", "unix-export"):
                shutil.rmtree(NSPAWN_RUN / entry / self.name, ignore_errors=True)
            for leftover in (NSPAWN_RUN / "propagate", NSPAWN_RUN / "unix-export",
                             NSPAWN_RUN / "locks", NSPAWN_RUN):
                with contextlib.suppress(OSError):  # in use by another container
                    leftover.rmdir()
        for cgroup in _cgroup_roots():
            _remove_cgroup(cgroup / self.name)
        shutil.rmtree(self.folder, ignore_errors=True)


def message(entry: dict[str, Any]) -> str:
    """An entry's MESSAGE as text (journalctl's JSON gives one that is not UTF-8 as a list
    of byte values)."""
    text = entry.get("MESSAGE", "")
    if isinstance(text, list):
        return bytes(text).decode(errors="backslashreplace")
    return str(text)


def _kill_cgroup(top: Path) -> bool:
    """SIGKILL every process in ``top`` and below; True if there was none."""
    found = False
    for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
        with contextlib.suppress(OSError):  # the cgroup went meanwhile
            for pid in procs.read_text().split():
                found = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    return not found


def _remove_cgroup(top: Path) -> None:
    """Remove a cgroup and those below it, deepest first (they are empty once the
    container is gone; a process still inside would make this raise)."""
    if not top.is_dir():
        return
    below = sorted((Path(d) for d, _s, _f in os.walk(top)), key=lambda p: -len(p.parts))
    wait_until(lambda: _kill_cgroup(top), timeout=30.0, message=f"cgroup {top} empty")
    for folder in below:
        wait_until(lambda f=folder: _rmdir(f), timeout=30.0, message=f"cgroup {folder} removed")


def _rmdir(folder: Path) -> bool:
    try:
        folder.rmdir()
    except FileNotFoundError:
        return True
    except OSError:  # EBUSY: a process is still leaving it
        return False
    return True


def _check(argv: Sequence[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{list(argv)} exited {out.returncode}: {out.stderr.strip()}")


@contextlib.contextmanager
def boot(label: str = "test", *, binds: Sequence[tuple[Path, str]] = ()
         ) -> Iterator[Container]:
    """Boot a container (skipping the test, with the reason, where that cannot work) and
    yield it; on leaving, stop it and remove everything it made, even after a failure.

    ``binds``: host folders shown inside, each ``(host, inside)`` (nspawn ``--bind=``,
    recursive, read-write). The overlay shows only the host's root file system, not what
    is mounted below it, and the container may open no block device (nspawn's device
    policy: no ``/dev/loop*``), so a file system a test mounts on the host (a
    loop-mounted btrfs) reaches the container only this way. The caller mounts before
    the boot and unmounts after the block: the container's bind is gone by then."""
    tiers.require("system", "boots a real systemd")
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    name = f"vpn-{label}-{os.getpid()}-{next(_serial)}"
    box = Container(name, Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp")), binds)
    try:
        with _locked():
            box._start()
        yield box
    finally:
        box.stop()


def runtime_requirements() -> list[str]:
    """What ``pip install .`` needs offline: the build system and the runtime dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [*project["build-system"]["requires"], *project["project"]["dependencies"]]


def build_wheelhouse(folder: Path) -> None:
    """``pip wheel`` of ``runtime_requirements()`` into ``folder`` (on the host, which
    reaches the package index). Skips the test if pip cannot."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                          "--wheel-dir", str(folder), *runtime_requirements()],
                         capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        pytest.skip(f"cannot build the wheelhouse (pip wheel exited {out.returncode}): "
                    f"{out.stderr.strip()[-500:]}")


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels for an offline ``make install``, built once per test run: the xdist workers
    of one run share the folder (the first builds it under a lock)."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent  # the run's folder, common to its workers
    folder = shared / "wheelhouse"
    with (shared / "wheelhouse.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build_wheelhouse(folder)
            (folder / ".complete").touch()
    return folder
