"""The processes room (volplugd/processes.py) against real processes: a lookup's every
outcome as the fact the loop gets, socket activation (the listener is pid 1 of a new pid
namespace), and the pidfd watch in the calls' own poll."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pidns
from tests.waiting import wait_until
from volplugd.calls import Calls
from volplugd.processes import Exited, Identified, Processes, lookup
from volplugd.supervision.units import SystemdManager

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin(short_tmp: Path) -> Iterator[subprocess.Popen[str]]:
    """The fake plugin in its own process at ``short_tmp/p.sock``, listening."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakeplugin", str(short_tmp / "p.sock")],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("fakeplugin listening on ")
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_a_stale_or_missing_socket_is_a_problem_and_no_process(short_tmp: Path) -> None:
    """NotListening's reason is the fact's problem, word for word; no pidfd is opened."""
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(short_tmp / "stale.sock"))
    stale.close()  # bound, never listening: refused
    unreachable = SystemdManager(bus=str(short_tmp / "no-bus"))
    assert lookup("s", 1, str(short_tmp / "stale.sock"), unreachable) == Identified(
        "s", 1, None, None, "cannot connect: Connection refused")
    assert lookup("m", 2, str(short_tmp / "none.sock"), unreachable) == Identified(
        "m", 2, None, None, "cannot connect: No such file or directory")


def test_the_room_reports_who_serves_and_then_that_it_exited(
        plugin: subprocess.Popen[str], short_tmp: Path) -> None:
    """identify → an Identified fact with a pidfd of the plugin's process, taken after a
    poll of the calls; watched, its kill -9 is an Exited fact after the next poll."""
    calls = Calls(workers=1)
    room = Processes(calls, SystemdManager(bus=str(short_tmp / "no-bus")))
    try:
        room.identify("p", 7, str(short_tmp / "p.sock"))

        def taken() -> list[object]:
            calls.poll(0.5)
            return list(room.take())
        facts = wait_until(taken, 30.0, message="the identify fact")
        assert len(facts) == 1
        fact = facts[0]
        assert isinstance(fact, Identified)
        assert fact.info is not None
        assert fact.pidfd is not None
        assert (fact.name, fact.token, fact.info.pid, fact.pidfd.pid, fact.problem) == (
            "p", 7, plugin.pid, plugin.pid, None)
        room.watch("p", 7, fact.pidfd)
        assert room.watched("p", 7) == plugin.pid
        plugin.kill()
        assert wait_until(taken, 30.0, message="the exit fact") == [Exited("p", 7, plugin.pid)]
        assert room.watched("p", 7) is None
    finally:
        room.close()
        calls.close()


@pytest.mark.peer  # unshare (util-linux)
def test_a_socket_activated_plugin_is_its_services_main_process() -> None:
    """The listener is pid 1 (as systemd for a .socket unit): the process shown and
    watched is the main process systemd names for the service; systemd naming none, or
    failing (a stand-in's error, the real client with no bus), is a problem with pid 1
    shown and nothing watched."""
    result = pidns.run(f"""
        import json, os, socket, subprocess, sys
        sys.path.insert(0, {str(REPO)!r})
        from volplugd.processes import lookup
        from volplugd.supervision.units import SystemdManager, UnitsUnreachable
        sock = "/tmp/vp-act-%d.sock" % os.getppid()
        s = socket.socket(socket.AF_UNIX); s.bind(sock); s.listen(8)
        # Popen returns once exec began; its argv shows in /proc only once the child runs.
        service = subprocess.Popen([sys.executable, "-c", "print(); import time; time.sleep(600)"],
                                   stdout=subprocess.PIPE)
        service.stdout.readline()
        class Systemd:
            def __init__(self, main):
                self.main = main
            def socket_service(self, path):
                return "plug.service" if path == sock else None
            def main_pid(self, unit):
                if isinstance(self.main, Exception):
                    raise self.main
                return self.main
        out = []
        unreachable = UnitsUnreachable("the main process of plug.service: the system bus "
                                       "is unreachable")
        for systemd in (Systemd(service.pid), Systemd(0), Systemd(unreachable),
                        SystemdManager(bus="/nonexistent/bus")):
            fact = lookup("act", 1, sock, systemd)
            info = fact.info
            out.append([info.pid, info.unit, info.socket_unit, list(info.problems),
                        None if fact.pidfd is None else fact.pidfd.pid,
                        info.command if info.pid != 1 else None])
            if fact.pidfd is not None:
                fact.pidfd.close()
        service.kill(); service.wait(); os.unlink(sock)
        print(json.dumps({{"service": service.pid, "sock": sock, "out": out}}))
    """)
    service, sock = result["service"], result["sock"]
    assert result["out"] == [
        [service, "plug.service", "plug.socket", [], service,
         f"{sys.executable} -c print(); import time; time.sleep(600)"],
        [1, "plug.service", "plug.socket",
         ["socket-activated: plug.service has no main process"], None, None],
        [1, "plug.service", "plug.socket",
         ["socket-activated: the main process of plug.service: the system bus is "
          "unreachable"], None, None],
        [1, None, None, [f"socket-activated: the socket unit of {sock}: the system bus is "
                         "unreachable: /nonexistent/bus: No such file or directory"], None, None],
    ]

