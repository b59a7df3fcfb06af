"""What a plugin folder may hold against the real daemon: a folder chain far deeper than
Python's recursion limit, a FIFO swapped in for a ``.json`` between the scan's stat and
its open, and more sockets than the daemon has descriptors. Each time the daemon keeps
serving, says what happened once, and stops on SIGTERM."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakeplugin import FakePlugin
from tests.harness import NOBODY, Daemon
from tests.trees import make_chain, remove_chain

pytestmark = pytest.mark.system

FAST = """
[probe]
interval = 0.5
timeout = 0.5
failure_threshold = 1
[plugin]
timeouts = { activate = 1.0, default = 2.0 }
"""


def metric(d: Daemon, name: str, labels: dict[str, str]) -> float | None:
    text = d.get("/metrics").decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    return None


def events(d: Daemon, event: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == event]


@pytest.fixture
def plugins(short_tmp: Path) -> Iterator[Path]:
    folder = short_tmp / "plugins"
    folder.mkdir()
    yield folder
    for chain in (folder / "deep", folder / "nest"):
        if chain.exists():
            remove_chain(chain)


def test_deep_chain_neither_stops_the_daemon_nor_a_restart(
        daemon: Any, plugins: Path) -> None:
    """Chains 1,100 folders deep, in the plugin dir and in a plugin's own <name>/ folder,
    made before the start and while it runs: the watcher stays up, rescans answer, a new
    plugin is found, and a restart over the same tree serves again."""
    (plugins / "deep").mkdir()
    make_chain(plugins / "deep")
    with FakePlugin(str(plugins / "good.sock")):
        d = daemon(plugin_dirs=[plugins], config=FAST).start()
        d.wait_state("good", "ready")
        (plugins / "nest").mkdir()
        with FakePlugin(str(plugins / "nest/nest.sock")):
            make_chain(plugins / "nest")
            status, body = d.call("POST", "/v1/rescan")
            assert status == 200, body
            d.wait_state("nest", "ready")
            assert metric(d, "volplugd_watcher_up", {}) == 1.0
            assert d.get("/v1/health")["status"] == "ok"
            assert d.stop() == 0
            again = daemon(plugin_dirs=[plugins], config=FAST).start()
            again.wait_state("good", "ready")
            again.wait_state("nest", "ready")
            assert metric(again, "volplugd_watcher_up", {}) == 1.0
            assert again.stop() == 0
    log = d.log() + again.log()
    assert "RecursionError" not in log
    assert not events(d, "thread_crashed")
    assert not events(again, "thread_crashed")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchanger() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = libc.renameat2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    return renameat2


def test_fifo_swapped_in_for_a_json_never_stalls_the_loop(daemon: Any, plugins: Path) -> None:
    """A FIFO and a valid .json swapped atomically (renameat2 RENAME_EXCHANGE) as fast as
    possible while the daemon rescans again and again: every rescan answers, health stays
    ok (the loop never stalls), a plugin beside them stays ready, and SIGTERM stops it."""
    renameat2 = _exchanger()
    json_path, fifo_path = plugins / "swapped.json", plugins / ".fifo"
    json_path.write_text('{"Addr": "tcp://127.0.0.1:1"}')
    os.mkfifo(fifo_path)
    a, b = bytes(json_path), bytes(fifo_path)
    if renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE) != 0:
        pytest.skip(f"renameat2(RENAME_EXCHANGE): {os.strerror(ctypes.get_errno())}")
    stop = threading.Event()
    swaps = [1]

    def swap() -> None:
        while not stop.is_set():
            renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
            swaps[0] += 1

    with FakePlugin(str(plugins / "good.sock")):
        d = daemon(plugin_dirs=[plugins], config=FAST,
                   args=["--log-level", "info"]).start()
        d.wait_state("good", "ready")
        swapper = threading.Thread(target=swap, name="fifo swapper")
        swapper.start()
        try:
            for _ in range(40):
                status, body = d.call("POST", "/v1/rescan")
                assert status == 200, body
                assert d.get("/v1/health")["status"] == "ok"
        finally:
            stop.set()
            swapper.join()
        assert swaps[0] > 1000
        assert d.plugins()["good"]["state"] == "ready"
        assert d.stop() == 0
    fifo = str(json_path)
    reasons = {e["reason"] for e in events(d, "plugin_file_ignored") if e["path"] == fifo}
    assert reasons <= {"not a regular file"}, reasons


HUNG = r"""
import os, socket, sys
held = []
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(sys.argv[1], f"h{i:03}.sock"))
    s.listen(1024)  # never accepted: a connect waits in the backlog, nothing answers
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""
FD_LIMIT = 256


def test_descriptors_used_up_are_counted_once_and_the_daemon_goes_on(
        daemon: Any, plugins: Path) -> None:
    """Under a 256-descriptor limit (soft and hard), 300 sockets that accept connections
    but never answer use up every descriptor the daemon has: scans and probes meet
    EMFILE. The loop goes on: one loop_error line per errno and step, the counter
    volplugd_loop_errors_total{errno="EMFILE"}; no plugin is evicted because a scan could
    not look; once the sockets go quiet the daemon serves and its plugin is ready again."""
    config = FAST.replace("activate = 1.0", "activate = 60.0") + (
        "[discovery]\nrescan_interval = 0.2\n")
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    with FakePlugin(str(plugins / "good.sock")):
        d = daemon(plugin_dirs=[plugins], config=config,
                   wrapper=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"]).start()
        d.wait_state("good", "ready")
        hung = subprocess.Popen([sys.executable, "-c", HUNG, str(plugins), "300"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert hung.stdout is not None
            assert hung.stdout.readline() == "ready\n"
            d.wait_log("loop_error", timeout=30.0)
        finally:
            with contextlib.suppress(OSError):
                assert hung.stdin is not None
                hung.stdin.close()
            hung.wait(10)
            assert hung.stdout is not None
            hung.stdout.close()
        d.wait_ready()  # the hung connections ended: descriptors are free again
        d.wait_state("good", "ready")
        assert d.get("/v1/health")["status"] == "ok"
        counted = metric(d, "volplugd_loop_errors_total", {"errno": "EMFILE"})
        assert counted is not None
        assert counted >= 1
        assert d.stop() == 0
    limits = events(d, "fd_limit")
    assert [(e["soft"], e["hard"]) for e in limits] == [(FD_LIMIT, FD_LIMIT)]
    lines = events(d, "loop_error")
    assert {e["errno"] for e in lines} == {"EMFILE"}
    steps = [e["step"] for e in lines]
    assert len(steps) == len(set(steps)), steps  # once per errno and step, not per round
    assert not [e for e in events(d, "plugin_evicted") if e["plugin"] == "good"]


STORM = r"""
import os, sys
a, b = os.path.join(sys.argv[1], "a"), os.path.join(sys.argv[1], "b")
open(a, "w").close()
print("storming", flush=True)
while True:
    os.rename(a, b)
    os.rename(b, a)
"""


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A 0777 folder any user may fill (in a 0755 one: other uids can reach it)."""
    top = Path(tempfile.mkdtemp(prefix="vp-storm-", dir="/tmp"))
    top.chmod(0o755)
    folder = top / "u"
    folder.mkdir()
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(top, ignore_errors=True)


def test_a_storm_in_an_untrusted_folder_does_not_blind_a_trusted_one(
        daemon: Any, plugins: Path, open_folder: Path) -> None:
    """uid 65534 renames a file back and forth in an untrusted 0777 plugin dir as fast as
    it can; the dir is muted (discovery_flooded) and a plugin that appears meanwhile in a
    trusted dir is found and ready, with a periodic rescan an hour away (the only
    periodic scan is the startup one)."""
    config = FAST + "[discovery]\nrescan_interval = 3600.0\n"
    d = daemon(plugin_dirs=[plugins, open_folder], config=config,
               args=["--log-level", "info"]).start()
    storm = _as_nobody_if_possible([sys.executable if os.geteuid() != 0 else
                                    "/usr/bin/python3", "-I", "-c", STORM, str(open_folder)])
    try:
        assert storm.stdout is not None
        assert storm.stdout.readline() == "storming\n"
        flooded = d.wait_log("discovery_flooded", timeout=30.0)
        assert flooded["dir"] == str(open_folder)
        with FakePlugin(str(plugins / "new.sock")):
            d.wait_state("new", "ready", timeout=30.0)
            assert d.get("/v1/health")["status"] == "ok"
            assert metric(d, "volplugd_rescans_total", {"trigger": "periodic"}) == 0.0
            assert metric(d, "volplugd_watcher_up", {}) == 1.0
    finally:
        storm.kill()
        storm.wait(10)
        assert storm.stdout is not None
        storm.stdout.close()
    assert d.stop() == 0
    assert len(events(d, "discovery_flooded")) == 1  # once a minute at most


def _as_nobody_if_possible(argv: list[str]) -> subprocess.Popen[str]:
    """``argv`` as uid 65534 where this process may switch users, else as itself."""
    if os.geteuid() == 0 and shutil.which("setpriv") is not None:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/")
