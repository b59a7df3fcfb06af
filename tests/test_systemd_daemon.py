"""The real volplugd process under the systemd protocols (issue 6, section 3).

systemd's side is played for real: the test binds an AF_UNIX/SOCK_DGRAM socket, hands
it to the daemon as NOTIFY_SOCKET (a path, or an abstract "@name") and reads the very
datagrams the daemon sends, with the sender's pid from SCM_CREDENTIALS (what
``NotifyAccess=main`` checks). Socket activation uses the real
``systemd-socket-activate`` and, for two named sockets, a protocol-exact launcher.

Nothing here sleeps: every wait is a socket timeout or ``wait_until`` with a deadline.
The only time spans measured are the daemon's own: the watchdog period is bounded from
below (which load cannot break), and the "no ping while stalled" window is sized from
the daemon's earlier pings.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import tiers
from tests.fakeplugin import FakePlugin
from tests.harness import Daemon, call
from tests.waiting import wait_until

pytestmark = pytest.mark.system

VOLPLUGCTL = str(Path(sys.executable).with_name("volplugctl"))
# Variables systemd sets; one inherited from a test runner started by systemd must not leak.
SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                "LISTEN_FDNAMES")
WATCHDOG_USEC = 400_000  # the daemon pings every 0.2 s
PING_INTERVAL = WATCHDOG_USEC / 2_000_000
WAIT = 60.0  # deadline for something that should happen within a second or two
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Datagram:
    """One sd_notify message as systemd sees it."""

    raw: bytes
    fields: dict[str, str]
    pid: int  # the sender, from SCM_CREDENTIALS
    received_at: float  # the test's CLOCK_MONOTONIC

    def has(self, key: str, value: str = "1") -> bool:
        return self.fields.get(key) == value


def is_(key: str, value: str = "1") -> Callable[[Datagram], bool]:
    return lambda d: d.has(key, value)


class NotifySocket:
    """The systemd end of NOTIFY_SOCKET: binds, receives, remembers every datagram."""

    def __init__(self, bind_address: str, name: str):
        self.name = name  # the value of NOTIFY_SOCKET
        self.received: list[Datagram] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.bind(bind_address)
        except BaseException:
            self._sock.close()
            raise
        self._log: Callable[[], str] = str

    def follow_log(self, log: Callable[[], str]) -> None:
        """What a failed wait shows besides the datagrams (the daemon's log)."""
        self._log = log

    def receive(self, timeout: float) -> Datagram | None:
        """The next datagram, or None when none arrives within ``timeout`` seconds."""
        self._sock.settimeout(timeout if timeout > 0 else 0.0)  # 0.0: do not block
        try:
            raw, ancdata, _, _ = self._sock.recvmsg(65536, socket.CMSG_SPACE(_UCRED.size))
        except (TimeoutError, BlockingIOError):
            return None
        pid = -1
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(data[:_UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in raw.decode().split("\n") if "=" in line)
        datagram = Datagram(raw, fields, pid, time.monotonic())
        self.received.append(datagram)
        return datagram

    def drain(self) -> list[Datagram]:
        """Every datagram already queued, without waiting."""
        out = []
        while (datagram := self.receive(0.0)) is not None:
            out.append(datagram)
        return out

    def wait_for(self, want: Callable[[Datagram], bool], what: str,
                 timeout: float = WAIT) -> Datagram:
        """Read until a datagram satisfies ``want``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            datagram = self.receive(left)
            if datagram is not None and want(datagram):
                return datagram
        raise AssertionError(f"no {what} within {timeout}s; received "
                             f"{[d.raw for d in self.received]}; log:\n{self._log()}")

    def pings(self, count: int) -> list[Datagram]:
        """The next ``count`` WATCHDOG=1 datagrams."""
        return [self.wait_for(is_("WATCHDOG"), f"WATCHDOG=1 #{i + 1}") for i in range(count)]

    def after(self, datagram: Datagram) -> list[Datagram]:
        """What was received after ``datagram`` so far, in order."""
        return self.received[self.received.index(datagram) + 1:]

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def notify(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[NotifySocket]:
    """A real notify socket at a path (default) or, with param "abstract", an "@name"."""
    kind = getattr(request, "param", "path")
    if kind == "abstract":
        name = f"volplugd-test-{os.getpid()}-{short_tmp.name}"
        receiver = NotifySocket("\0" + name, "@" + name)
    else:
        receiver = NotifySocket(str(short_tmp / "notify"), str(short_tmp / "notify"))
    yield receiver
    receiver.close()


class ServiceDaemon(Daemon):
    """tests.harness.Daemon started the way systemd starts the service.

    NOTIFY_SOCKET is set; with ``watchdog_usec`` also WATCHDOG_USEC and WATCHDOG_PID,
    the latter through ``sh -c 'export WATCHDOG_PID=$$; exec …'`` since the pid is only
    known in the child; ``launcher`` goes in front of the command (socket activation)
    and ``pass_fds`` are inherited by it.
    """

    def __init__(self, workdir: Path, notify: NotifySocket, *, watchdog_usec: int | None = None,
                 launcher: Sequence[str] = (), pass_fds: Sequence[int] = (), **kw: Any):
        super().__init__(workdir, **kw)
        self.env = {k: v for k, v in self.env.items() if k not in SYSTEMD_VARS}
        self.env["NOTIFY_SOCKET"] = notify.name
        if watchdog_usec is not None:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.watchdog = watchdog_usec is not None
        self.launcher = list(launcher)
        self.pass_fds = tuple(pass_fds)
        notify.follow_log(self.log)

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.watchdog:
            argv = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh", *argv]
        return [*self.launcher, *argv]

    def start(self, wait: bool = True) -> ServiceDaemon:
        for d in self.plugin_dirs:
            d.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, env=self.env,
                                         cwd=self.workdir, pass_fds=self.pass_fds)
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@pytest.fixture
def service(short_tmp: Path, notify: NotifySocket) -> Iterator[Callable[..., ServiceDaemon]]:
    """Factory of ServiceDaemons talking to ``notify``; each is stopped after the test."""
    started: list[ServiceDaemon] = []

    def make(**kw: Any) -> ServiceDaemon:
        d = ServiceDaemon(short_tmp, notify, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


@pytest.fixture
def plugins(short_tmp: Path) -> Iterator[Callable[[str], FakePlugin]]:
    """Factory of fake plugins bound in ``<tmp>/plugins``; each is stopped after the test."""
    made: list[FakePlugin] = []
    (short_tmp / "plugins").mkdir(exist_ok=True)

    def make(name: str) -> FakePlugin:
        plugin = FakePlugin(str(short_tmp / "plugins" / f"{name}.sock"))
        made.append(plugin)
        return plugin

    yield make
    for plugin in made:
        plugin.stop()


def status_text(activating: int = 0, ready: int = 0, unhealthy: int = 0,
                restarting: int = 0, rejected: int = 0) -> str:
    return (f"{activating} activating, {ready} ready, {unhealthy} unhealthy, "
            f"{restarting} restarting, {rejected} rejected")


def assert_from(d: ServiceDaemon, datagrams: Sequence[Datagram]) -> None:
    """Every datagram came from the main pid (what NotifyAccess=main accepts)."""
    assert {g.pid for g in datagrams} == {d.pid}, [(g.pid, g.raw) for g in datagrams]


# ---------------------------------------------------------------------- READY, STATUS

def test_ready_only_after_the_plugins_present_at_start_are_ready(
        service: Callable[..., ServiceDaemon], notify: NotifySocket,
        plugins: Callable[[str], FakePlugin]) -> None:
    """READY=1 comes once the plugins present at start are tried: at that instant the API
    lists all N as ready; STATUS= then follows the counts when they change."""
    n = 20
    fakes = [plugins(f"p{i:02d}") for i in range(n)]
    d = service().start(wait=False)
    ready = notify.wait_for(is_("READY"), "READY=1")
    status, listed = call(d.socket, "GET", "/v1/plugins")
    assert status == 200
    assert {p["name"]: p["state"] for p in listed["plugins"]} == {
        f"p{i:02d}": "ready" for i in range(n)}
    assert ready.raw == f"READY=1\nSTATUS={status_text(ready=n)}".encode()
    assert [g for g in notify.received if g.has("READY")] == [ready]  # exactly one, no early one
    for fake in fakes[:5]:
        fake.stop()  # removes its socket file: the plugin goes away
    notify.wait_for(lambda g: g.fields.get("STATUS") == status_text(ready=n - 5),
                    "STATUS with 15 ready")
    assert_from(d, notify.received)


# -------------------------------------------------------------------------- WATCHDOG

def test_watchdog_pings_keep_coming_at_half_of_watchdog_usec(
        service: Callable[..., ServiceDaemon], notify: NotifySocket) -> None:
    """With WATCHDOG_USEC and WATCHDOG_PID=its pid, WATCHDOG=1 keeps coming from the main
    pid, and never more often than every WATCHDOG_USEC/2."""
    d = service(watchdog_usec=WATCHDOG_USEC).start(wait=False)
    notify.wait_for(is_("READY"), "READY=1")
    k = 10
    # Every ping queued before t0 is drained, so each ping counted was sent after t0.
    # The loop sends ping i+1 no earlier than one interval after the iteration following
    # ping i began, so k pings span at least (k-2) intervals: a lower bound that a slow
    # machine can only make easier to meet.
    t0 = time.monotonic()
    notify.drain()
    pings = notify.pings(k)
    elapsed = time.monotonic() - t0
    assert elapsed >= (k - 2) * PING_INTERVAL, (elapsed, [g.received_at for g in pings])
    assert [g.raw for g in pings] == [b"WATCHDOG=1"] * k
    assert_from(d, notify.received)
    assert d.stop() == 0


def _mean_gap(pings: Sequence[Datagram]) -> float:
    return (pings[-1].received_at - pings[0].received_at) / (len(pings) - 1)


def _unblock(fifo: Path, content: bytes) -> bool:
    """Give the reader blocked on ``fifo`` ``content`` and EOF; False if nobody reads it."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:  # no reader has the FIFO open
            return False
        raise
    try:
        os.set_blocking(fd, True)
        os.write(fd, content)
    finally:
        os.close(fd)
    return True


def test_no_watchdog_while_the_loop_is_stalled_but_the_api_answers(
        service: Callable[..., ServiceDaemon], notify: NotifySocket) -> None:
    """A supervisor loop stuck in a SIGHUP reload (config file is a FIFO nobody writes)
    sends no WATCHDOG=1 while /v1/health still answers; once the FIFO delivers a valid
    config, RELOADING=1 (MONOTONIC_USEC) is followed by READY=1 and pings resume."""
    d = service(watchdog_usec=WATCHDOG_USEC).start(wait=False)
    notify.wait_for(is_("READY"), "READY=1")
    period = _mean_gap(notify.pings(6))  # the daemon's own ping period, as received
    fifo = d.config_path
    fifo.unlink()
    os.mkfifo(fifo)
    before_hup = time.monotonic()
    d.signal(signal.SIGHUP)
    try:
        reloading = notify.wait_for(is_("RELOADING"), "RELOADING=1")
        # The loop is now blocked in open() of the FIFO. Watch 5 ping periods (and at
        # least 3 answered health calls): nothing may be sent at all.
        window_end = reloading.received_at + 5 * period
        answered = 0
        while answered < 3 or time.monotonic() < window_end:
            status, health = call(d.socket, "GET", "/v1/health", timeout=10.0)
            assert (status, health["status"]) == (200, "ok")
            answered += 1
            notify.receive(min(period, window_end - time.monotonic()))
        assert notify.after(reloading) == [], "sent while the loop was blocked"
        assert _unblock(fifo, b"# delivered through a FIFO\n[probe]\ninterval = 5.0\n")
    finally:
        _unblock(fifo, b"")  # never leave the daemon blocked (EOF: an empty, valid file)
    ready = notify.wait_for(is_("READY"), "READY=1 after the reload")
    assert [g.raw for g in notify.after(reloading)][:1] == [b"READY=1"]
    assert notify.after(reloading)[0] is ready
    monotonic_usec = int(reloading.fields["MONOTONIC_USEC"])
    assert before_hup * 1e6 <= monotonic_usec <= reloading.received_at * 1e6
    assert list(reloading.fields) == ["RELOADING", "MONOTONIC_USEC"]
    notify.pings(3)
    wait_until(lambda: any(e.get("event") == "config_reloaded" for e in d.log_events()),
               WAIT, message="config_reloaded in the log")
    assert_from(d, notify.received)
    assert d.stop() == 0


# ------------------------------------------------------------- RELOADING, STOPPING

@pytest.mark.parametrize("notify", ["path", "abstract"], indirect=True)
def test_reloading_ready_around_sighup_and_stopping_on_sigterm(
        service: Callable[..., ServiceDaemon], notify: NotifySocket) -> None:
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1; SIGTERM: STOPPING=1 is the
    last datagram and the exit status is 0 (a path and an abstract notify socket)."""
    d = service().start(wait=False)
    notify.wait_for(is_("READY"), "READY=1")
    before_hup = time.monotonic()
    d.signal(signal.SIGHUP)
    reloading = notify.wait_for(is_("RELOADING"), "RELOADING=1")
    assert before_hup * 1e6 <= int(reloading.fields["MONOTONIC_USEC"]) \
        <= reloading.received_at * 1e6
    ready = notify.wait_for(is_("READY"), "READY=1 after RELOADING=1")
    assert ready.raw == b"READY=1"
    assert not [g for g in notify.after(reloading) if g is not ready and g.has("READY")]
    d.signal(signal.SIGTERM)
    notify.wait_for(is_("STOPPING"), "STOPPING=1")
    assert d.proc is not None
    assert d.proc.wait(WAIT) == 0
    notify.drain()
    assert notify.received[-1].raw == b"STOPPING=1"
    assert_from(d, notify.received)


# ------------------------------------------------------------------ socket activation

def volplugctl(sock: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VOLPLUGD_SOCKET", "COLUMNS")}
    return subprocess.run([VOLPLUGCTL, "--socket", sock, *argv], capture_output=True,
                          text=True, env=env, timeout=WAIT, check=False)


@pytest.mark.peer  # runs systemd-socket-activate
def test_socket_activated_by_systemd_socket_activate(
        service: Callable[..., ServiceDaemon], notify: NotifySocket,
        plugins: Callable[[str], FakePlugin], short_tmp: Path) -> None:
    """Under the real systemd-socket-activate, volplugd serves the inherited "control" fd:
    volplugctl's first connection starts it, ls and health work, and after SIGTERM the
    socket file it did not create is still there, the same inode."""
    tool = tiers.tool("systemd-socket-activate", "systemd")
    plugins("fake")
    path = str(short_tmp / "control.sock")
    # The tool passes on only the -E variables (plus LISTEN_*), as systemd would;
    # PYTHONPATH too when set, so that the tree under test is the one that runs.
    keep = ["-E", "PYTHONPATH"] if "PYTHONPATH" in os.environ else []
    d = service(launcher=[tool, f"--listen={path}", "--fdname=control",
                          "-E", f"NOTIFY_SOCKET={notify.name}", *keep])
    d.start(wait=False)
    wait_until(lambda: os.path.exists(path) or d.proc is None or d.proc.poll() is not None,
               WAIT, message="systemd-socket-activate to listen")
    inode = os.stat(path).st_ino
    # Until a client connects, the tool waits; volplugd has not started yet.
    assert os.readlink(f"/proc/{d.pid}/exe") == os.path.realpath(tool)
    health = volplugctl(path, "--json", "health")  # this connection starts volplugd
    assert (health.returncode, health.stderr) == (0, ""), (health, d.log())
    assert json.loads(health.stdout)["status"] == "ok"
    ready = notify.wait_for(is_("READY"), "READY=1")
    assert ready.pid == d.pid  # exec'd in place: LISTEN_PID matched
    listed = volplugctl(path, "--json", "ls")
    assert (listed.returncode, listed.stderr) == (0, ""), listed
    assert [(p["name"], p["state"]) for p in json.loads(listed.stdout)["plugins"]] == [
        ("fake", "ready")]
    table = volplugctl(path, "ls")
    assert table.returncode == 0, table
    assert "fake" in table.stdout, table
    assert d.stop() == 0
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_ino == inode


ACTIVATOR = """\
import fcntl, os, sys
names, fds, argv = sys.argv[1], [int(f) for f in sys.argv[2].split(",")], sys.argv[3:]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(moved):
    os.dup2(fd, 3 + i)  # inheritable, like systemd's fds
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names)
os.execv(argv[0], argv)
"""


def test_socket_activated_control_and_metrics_fds(
        service: Callable[..., ServiceDaemon], notify: NotifySocket,
        plugins: Callable[[str], FakePlugin], short_tmp: Path) -> None:
    """Given fds 3 "control" (unix) and 4 "metrics" (TCP, port 0) as systemd passes them,
    volplugd serves the API on one and Prometheus metrics on the other, binding nothing."""
    plugins("fake")
    path = str(short_tmp / "activated.sock")
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    metrics = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        control.bind(path)
        control.listen(16)
        metrics.bind(("127.0.0.1", 0))
        metrics.listen(16)
        port = metrics.getsockname()[1]
        fds = f"{control.fileno()},{metrics.fileno()}"
        d = service(launcher=[sys.executable, "-c", ACTIVATOR, "control:metrics", fds],
                    pass_fds=[control.fileno(), metrics.fileno()])
        d.start(wait=False)
    finally:
        control.close()  # the daemon holds its own copies now
        metrics.close()
    ready = notify.wait_for(is_("READY"), "READY=1")
    assert ready.pid == d.pid
    status, fake = call(path, "GET", "/v1/plugins/fake")
    assert (status, fake["state"]) == (200, "ready")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    assert 'volplugd_plugins{state="ready"} 1' in body, body[:2000]
    # --control-socket names another path: the inherited socket wins, nothing is bound.
    assert not os.path.exists(d.socket)
    assert d.stop() == 0
    assert stat.S_ISSOCK(os.stat(path).st_mode)
