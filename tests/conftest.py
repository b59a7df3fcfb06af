"""Suite-wide guards: a test that leaks a thread or a file descriptor fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import tiers
from tests.control.otheruser import SCRIPT, Peer
from tests.fakes import fakes, fakes_at  # noqa: F401 - fixtures
from tests.harness import Daemon
from tests.rawsockets import sockets  # noqa: F401 - fixture
from tests.realsystemd import wheelhouse  # noqa: F401 - fixture
from tests.supervising import book, plugins_dir, supervisors  # noqa: F401 - fixtures
from tests.waiting import wait_until


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Each test's markers are known to the launchers it calls (``tests/tiers.py``)."""
    tiers.running(item)
    try:
        return (yield)
    finally:
        tiers.running(None)


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(config: pytest.Config,
                                  report: pytest.TestReport | pytest.CollectReport
                                  ) -> Iterator[None] | Any:
    """A report as xdist sends it from a worker, its strings made UTF-8-encodable.

    Tests here feed lone surrogates through everything, and any test's report may carry
    them: a failure's message, a leaked fd's path, or the captured log that every report
    takes along, passed or not (``tests/renderers.py`` logs raw text to a stdlib logger
    on purpose, and pytest's own handler on the root logger keeps it). execnet refuses
    such a string, and the whole run ended in an INTERNALERROR that named no failure.
    Surrogates become visible escapes (``\\udcff``) instead."""
    data = yield
    return _encodable(data)


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_encodable(v) for v in value)
    return value


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running after it ends."""
    before = set(threading.enumerate())
    yield
    def extra() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]
    try:
        wait_until(lambda: not extra(), timeout=5.0, message="test threads to end")
    except AssertionError:
        pytest.fail(f"leaked threads: {[t.name for t in extra()]}")


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    """Fail a test that leaves file descriptors open after it ends."""
    before = _open_fds()
    yield
    def extra() -> set[int]:
        return _open_fds() - before
    try:
        wait_until(lambda: not extra(), timeout=5.0, message="test fds to close")
    except AssertionError:
        leaked = {fd: _describe(fd) for fd in extra()}
        pytest.fail(f"leaked file descriptors: {leaked}")


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory for real volplugd processes; each is stopped after the test."""
    started: list[Daemon] = []

    def make(**kw: Any) -> Daemon:
        d = Daemon(short_tmp, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
@pytest.fixture
def peer_script() -> Iterator[Path]:
    """peer_client.py copied where any user can read it (the checkout may be 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="vp-peer-"))
    folder.chmod(0o755)
    copy = folder / "peer_client.py"
    shutil.copyfile(SCRIPT, copy)
    copy.chmod(0o644)
    yield copy
    shutil.rmtree(folder)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Peer clients started by a test; killed and reaped after it."""
    started: list[Peer] = []
    yield started
    for peer in started:
        peer.end()


@pytest.fixture
def plugin_process() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """``python -m tests.fakeplugin SOCK`` in a subprocess, listening when returned;
    each is killed after the test."""
    made: list[subprocess.Popen[str]] = []

    def start(path: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "tests.fakeplugin", str(path)],
                                cwd=Path(__file__).resolve().parents[1],
                                stdout=subprocess.PIPE, text=True)
        made.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("fakeplugin listening on ")
        return proc

    yield start
    for proc in made:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
