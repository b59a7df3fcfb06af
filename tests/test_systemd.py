"""volplugd.systemd against the real protocol: datagrams read from a real AF_UNIX
SOCK_DGRAM notify socket, and sockets inherited from the real systemd-socket-activate.

The daemon-level proofs (READY after the first scan, no WATCHDOG while the loop is
stalled, RELOADING/READY around SIGHUP, STOPPING on SIGTERM, volplugctl through an
activated socket) start the real daemon and live with the daemon's system tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tiers
from tests.waiting import wait_until
from volplugd.systemd import Notifier, listen_fds

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for unix socket paths (< 108 bytes)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="vp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Receiver:
    """The systemd side: a bound datagram socket and the NOTIFY_SOCKET naming it."""

    def __init__(self, sock: socket.socket, notify_socket: str):
        self.sock = sock
        self.notify_socket = notify_socket

    def next(self) -> bytes:
        return self.sock.recv(4096)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[Receiver]:
    """A real notify socket, bound at a filesystem path or an abstract "@" name."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(10.0)  # a bound on a wait that should end at once, not a pacing sleep
    if request.param == "path":
        sock.bind(str(short_dir / "notify"))
        name = str(short_dir / "notify")
    else:
        abstract = f"volplugd-test-{os.getpid()}-{short_dir.name}"
        sock.bind("\0" + abstract)
        name = "@" + abstract
    yield Receiver(sock, name)
    sock.close()


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[Notifier]:
    """A Notifier pointed at the receiver, closed afterwards."""
    n = Notifier({"NOTIFY_SOCKET": receiver.notify_socket})
    yield n
    n.close()


def test_ready_is_one_datagram(notifier: Notifier, receiver: Receiver) -> None:
    """ready() sends exactly READY=1, and with a status both fields in one datagram."""
    assert notifier.enabled
    notifier.ready()
    assert receiver.next() == b"READY=1"
    notifier.ready("3 plugins: 2 ready, 1 unhealthy")
    assert receiver.next() == b"READY=1\nSTATUS=3 plugins: 2 ready, 1 unhealthy"


def test_status_stopping_watchdog_datagrams(notifier: Notifier, receiver: Receiver) -> None:
    """status(), stopping() and watchdog() send their single assignment exactly."""
    notifier.status("2 ready")
    notifier.stopping()
    notifier.watchdog()
    assert [receiver.next() for _ in range(3)] == [b"STATUS=2 ready", b"STOPPING=1",
                                                  b"WATCHDOG=1"]


def test_status_newlines_cannot_inject_fields(notifier: Notifier, receiver: Receiver) -> None:
    """A newline in a status text is flattened, so it cannot smuggle in READY=1."""
    notifier.status("bad\nREADY=1")
    assert receiver.next() == b"STATUS=bad READY=1"


def test_reloading_carries_monotonic_usec(notifier: Notifier, receiver: Receiver) -> None:
    """reloading() sends RELOADING=1 and MONOTONIC_USEC= read from CLOCK_MONOTONIC."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, usec = receiver.next().split(b"\n")
    assert reloading == b"RELOADING=1"
    assert usec.startswith(b"MONOTONIC_USEC=")
    assert before <= int(usec.removeprefix(b"MONOTONIC_USEC=")) <= after


def test_notify_joins_fields_and_reports_delivery(notifier: Notifier, receiver: Receiver) -> None:
    """notify() sends the given fields newline-joined and returns True when delivered."""
    assert notifier.notify("READY=1", "STATUS=x", "MAINPID=1") is True
    assert receiver.next() == b"READY=1\nSTATUS=x\nMAINPID=1"


def test_notify_never_raises_when_nobody_listens(short_dir: Path) -> None:
    """A notify socket that does not exist makes notify() return False, not raise."""
    n = Notifier({"NOTIFY_SOCKET": str(short_dir / "gone")})
    try:
        assert n.enabled
        assert n.notify("READY=1") is False
        n.ready("x")
        n.watchdog()
    finally:
        n.close()


def test_closed_notifier_is_a_no_op(notifier: Notifier) -> None:
    """After close() (twice), notify() returns False and nothing is sent or raised."""
    notifier.close()
    notifier.close()
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    notifier.stopping()


def test_disabled_without_notify_socket() -> None:
    """Without NOTIFY_SOCKET everything is a silent no-op and no socket is opened."""
    n = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.watchdog_interval is None
    assert n.notify("READY=1") is False
    n.ready("x")
    n.reloading()
    n.status("x")
    n.watchdog()
    n.stopping()
    n.close()


@pytest.mark.parametrize("value", ["", "relative/notify", "vsock:2:1234"])
def test_unusable_notify_socket_disables(value: str) -> None:
    """An empty, relative or vsock NOTIFY_SOCKET leaves the notifier disabled."""
    n = Notifier({"NOTIFY_SOCKET": value})
    assert not n.enabled
    assert n.notify("READY=1") is False


@pytest.mark.parametrize(("watchdog_env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "{pid}"}, 0.5),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ({}, None),
])
def test_watchdog_interval(receiver: Receiver, watchdog_env: dict[str, str],
                           interval: float | None) -> None:
    """watchdog_interval is half of WATCHDOG_USEC, None when absent, bad or for another pid."""
    pids = {"pid": str(os.getpid()), "other": str(os.getpid() + 1)}
    env = {k: v.format(**pids) for k, v in watchdog_env.items()}
    n = Notifier({"NOTIFY_SOCKET": receiver.notify_socket, **env})
    try:
        assert n.watchdog_interval == interval
    finally:
        n.close()


# -- listen_fds ---------------------------------------------------------------------

CHILD = """
import json, os, socket, sys
before = {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}
from volplugd.systemd import listen_fds
try:
    fds = listen_fds()
except ValueError as err:
    report = {"error": str(err)}
    fds = None
else:
    report = {
        "pid_matches": before.get("LISTEN_PID") == str(os.getpid()),
        "names": list(fds),
        "fds": [s.fileno() for s in fds.values()],
        "family": [int(s.family) for s in fds.values()],
        "type": [int(s.type) for s in fds.values()],
        "addr": [s.getsockname() for s in fds.values()],
        "inheritable": [os.get_inheritable(s.fileno()) for s in fds.values()],
        "env_after": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
    }
report["before"] = before
# Answer the connection that triggered the activation, on the first inherited socket.
listener = next(iter(fds.values())) if fds else socket.socket(fileno=3)
conn, _ = listener.accept()
conn.sendall(json.dumps(report).encode())
conn.close()
"""


def _activate(paths: list[Path], fdnames: str | None) -> dict[str, object]:
    """Run CHILD under systemd-socket-activate, trigger it by connecting, return its report."""
    tool = tiers.tool("systemd-socket-activate", "systemd")
    argv = [tool, *(f"--listen={p}" for p in paths)]
    argv += [f"--fdname={fdnames}"] if fdnames else []
    argv += [sys.executable, "-c", CHILD]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env) as proc:
        try:
            wait_until(lambda: all(p.exists() for p in paths) or proc.poll() is not None,
                       message="systemd-socket-activate to listen")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(30.0)  # bounds python start-up in the child
                client.connect(str(paths[0]))
                data = b"".join(iter(lambda: client.recv(65536), b""))
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err.decode()
    report: dict[str, object] = json.loads(data)
    return report


@pytest.mark.peer
def test_listen_fds_adopts_the_named_activated_socket(short_dir: Path) -> None:
    """Under systemd-socket-activate --fdname=control, listen_fds returns that socket by name."""
    path = short_dir / "control.sock"
    report = _activate([path], "control")
    before = report["before"]
    assert isinstance(before, dict)
    assert before.keys() == {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}
    assert (before["LISTEN_FDS"], before["LISTEN_FDNAMES"]) == ("1", "control")
    assert report["pid_matches"] is True
    assert report["names"] == ["control"]
    assert report["fds"] == [3]
    assert report["family"] == [int(socket.AF_UNIX)]
    assert report["type"] == [int(socket.SOCK_STREAM)]
    assert report["addr"] == [str(path)]
    assert report["inheritable"] == [False]
    assert report["env_after"] == {}


@pytest.mark.peer
def test_listen_fds_names_several_sockets_in_order(short_dir: Path) -> None:
    """Two activated sockets come back in fd order under their LISTEN_FDNAMES names."""
    control, metrics = short_dir / "control.sock", short_dir / "metrics.sock"
    report = _activate([control, metrics], "control:metrics")
    assert report["names"] == ["control", "metrics"]
    assert report["fds"] == [3, 4]
    assert report["addr"] == [str(control), str(metrics)]


@pytest.mark.peer
def test_listen_fds_rejects_two_unnamed_sockets(short_dir: Path) -> None:
    """Two sockets without names would both be "unknown": listen_fds says so instead of guessing."""
    report = _activate([short_dir / "a.sock", short_dir / "b.sock"], None)
    assert report["error"] == ("LISTEN_FDNAMES: fds 3 and 4 are both named 'unknown'; "
                               "give each socket its own name")


def test_listen_fds_ignores_another_pids_fds() -> None:
    """LISTEN_PID of another process means the fds are not ours: {} and the variables unset."""
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "control",
           "OTHER": "kept"}
    assert listen_fds(env) == {}
    assert env == {"OTHER": "kept"}


def test_listen_fds_without_activation() -> None:
    """No LISTEN_PID: not socket-activated, {} and nothing else touched."""
    env = {"LISTEN_FDS": "1"}
    assert listen_fds(env, unset=False) == {}
    assert env == {"LISTEN_FDS": "1"}


def test_listen_fds_keeps_variables_when_asked() -> None:
    """unset=False leaves LISTEN_* in place (e.g. for a child that should inherit them)."""
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}
    assert listen_fds(env, unset=False) == {}
    assert env == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}


@pytest.mark.parametrize(("env", "error"), [
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "two"}, "LISTEN_FDS: not a non-negative integer: 'two'"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"}, "LISTEN_FDS: not a non-negative integer: '-1'"),
    ({"LISTEN_PID": "self", "LISTEN_FDS": "1"}, "LISTEN_PID: not a non-negative integer: 'self'"),
])
def test_listen_fds_malformed_variables(env: dict[str, str], error: str) -> None:
    """Malformed LISTEN_* variables raise ValueError naming the variable and value."""
    env = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    with pytest.raises(ValueError, match=re.escape(error)) as info:
        listen_fds(env)
    assert str(info.value) == error


def test_listen_fds_zero_fds_for_us() -> None:
    """LISTEN_FDS=0 addressed to us is an activation with nothing passed: {}."""
    assert listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) == {}


def test_listen_fds_rejects_a_non_socket_fd() -> None:
    """An inherited fd that is not a socket (here a pipe on fd 3) raises ValueError naming it."""
    child = (
        "import os\n"
        "r, w = os.pipe()\n"
        "os.dup2(r, 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='control')\n"
        "from volplugd.systemd import listen_fds\n"
        "try:\n"
        "    listen_fds()\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.stdout == ("LISTEN_FDS: fd 3 ('control') is not a socket: "
                          "[Errno 88] Socket operation on non-socket\n")
