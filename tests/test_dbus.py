"""The D-Bus client (supervision.dbus) and systemd's Manager client (supervision.units)
against a real dbus-daemon (a private bus, no systemd on it): connection, Hello, error
replies, deadlines, signals, and the exact errors for an unreachable or mute bus. The
same clients against the real systemd: tests/test_units_system.py."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import tiers
from volplugd.supervision.dbus import BUS_DRIVER, Bus, BusCallFailed, Target
from volplugd.supervision.units import (
    MANAGER_OBJECT,
    SystemdManager,
    UnitsError,
    UnitsTimeout,
    UnitsUnreachable,
)

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={path}</listen>
<auth>EXTERNAL</auth><policy context="default"><allow send_destination="*" eavesdrop="true"/>
<allow eavesdrop="true"/><allow own="*"/></policy></busconfig>
"""


@pytest.fixture
def bus_path(short_tmp: Path) -> Iterator[str]:
    """A private, real dbus-daemon listening at the returned socket path."""
    daemon = tiers.tool("dbus-daemon", "dbus-daemon")
    path = str(short_tmp / "bus")
    config = short_tmp / "bus.conf"
    config.write_text(CONFIG.format(path=path))
    proc = subprocess.Popen([daemon, "--nofork", "--print-address", f"--config-file={config}"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"unix:path={path}")
        yield path
    finally:
        proc.terminate()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


@pytest.mark.peer
def test_a_connection_says_hello_and_gets_its_unique_name(bus_path: str) -> None:
    """Connect, authenticate and Hello: a unique name; the bus driver answers calls."""
    with Bus(bus_path) as bus:
        assert bus.unique_name.startswith(":1.")
        assert bus.call(BUS_DRIVER, "GetNameOwner", "s", ("org.freedesktop.DBus",),
                        deadline=soon()) == ("org.freedesktop.DBus",)


@pytest.mark.peer
def test_an_error_reply_is_bus_call_failed_with_its_name(bus_path: str) -> None:
    """A call to a name nobody owns: the bus's ServiceUnknown, name and text kept."""
    with Bus(bus_path) as bus, pytest.raises(BusCallFailed) as caught:
        bus.call(Target("org.example.Nobody", "/x", "org.example.X"), "Ping", deadline=soon())
    assert (caught.value.member, caught.value.name) == (
        "Ping", "org.freedesktop.DBus.Error.ServiceUnknown")
    assert "org.example.Nobody" in caught.value.text


@pytest.mark.peer
def test_a_signal_sent_while_a_reply_is_awaited_is_kept_for_next_signal(bus_path: str) -> None:
    """A signal that arrives before the awaited reply is not lost: the bus's own
    NameOwnerChanged for a name another connection takes, then a call's reply."""
    with Bus(bus_path) as listener, Bus(bus_path) as other:
        listener.call(BUS_DRIVER, "AddMatch", "s", (
            "type='signal',member='NameOwnerChanged',arg0='org.example.T'",), deadline=soon())
        other.call(BUS_DRIVER, "RequestName", "su", ("org.example.T", 0), deadline=soon())
        listener.call(BUS_DRIVER, "GetId", deadline=soon())  # the signal came before this
        assert [s.member for s in listener.signals] == ["NameAcquired", "NameOwnerChanged"]
        got = listener.next_signal(lambda s: s.member == "NameOwnerChanged", soon())
    assert (got.path, got.interface, got.member, got.body) == (
        "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged",
        ("org.example.T", "", other.unique_name))


def test_a_missing_bus_socket_is_unreachable(short_tmp: Path) -> None:
    """No socket file: UnitsUnreachable naming the path and ENOENT."""
    path = str(short_tmp / "none")
    with pytest.raises(UnitsUnreachable) as caught:
        SystemdManager(path).restart_unit("x.service", 5)
    assert str(caught.value) == (f"restart x.service: the system bus is unreachable: "
                                 f"{path}: No such file or directory")


def test_a_bus_that_never_answers_the_authentication_is_unreachable(short_tmp: Path) -> None:
    """A socket that accepts and stays mute: UnitsUnreachable once call_timeout passes."""
    path = str(short_tmp / "mute")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    try:
        with pytest.raises(UnitsUnreachable) as caught:
            SystemdManager(path, call_timeout=0.2).socket_service("/run/x.sock")
    finally:
        server.close()
    assert str(caught.value) == (
        f"the socket unit of /run/x.sock: the system bus is unreachable: {path}: "
        "authenticating: no answer by the deadline")


def test_a_bus_that_closes_at_once_is_unreachable(short_tmp: Path) -> None:
    """A socket that reads the authentication and closes: UnitsUnreachable, the bus
    closed the connection."""
    path = str(short_tmp / "closing")

    def close_at_once(conn: socket.socket) -> None:
        conn.recv(1024)

    caught = _restart_against(path, close_at_once)
    assert str(caught.value) == (f"restart x.service: the system bus is unreachable: {path}: "
                                 "authenticating: the bus closed the connection")


@pytest.mark.peer
def test_a_manager_that_never_replies_is_units_timeout(bus_path: str) -> None:
    """A process owns systemd's name on the bus and never answers: RestartUnit ends in
    UnitsTimeout at the deadline (the stand-in only holds the name: the real Manager's
    answers are tested against the real systemd)."""
    with Bus(bus_path) as impostor:
        impostor.call(BUS_DRIVER, "RequestName", "su", (MANAGER_OBJECT.destination, 0),
                      deadline=soon())
        with pytest.raises(UnitsTimeout) as caught:
            SystemdManager(bus_path, call_timeout=5).restart_unit("x.service", 0.3)
    assert str(caught.value) == "restart x.service: Subscribe: no answer by the deadline"


@pytest.mark.peer
def test_no_manager_on_the_bus_is_an_error_with_the_bus_error_name(bus_path: str) -> None:
    """A bus without systemd: UnitsError carrying ServiceUnknown (not NoSuchUnit)."""
    with pytest.raises(UnitsError) as caught:
        SystemdManager(bus_path).restart_unit("x.service", 5)
    assert type(caught.value) is UnitsError
    assert caught.value.error == "org.freedesktop.DBus.Error.ServiceUnknown"
    assert str(caught.value).startswith(
        "restart x.service: org.freedesktop.DBus.Error.ServiceUnknown: ")


def test_a_bus_that_answers_garbage_is_unreachable(short_tmp: Path) -> None:
    """A "bus" that accepts the authentication, then sends bytes that are no D-Bus
    message: UnitsUnreachable, malformed message; nothing else escapes."""
    path = str(short_tmp / "garbage")

    def answer_garbage(conn: socket.socket) -> None:
        conn.recv(1024)  # the NUL and AUTH EXTERNAL
        conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
        conn.recv(1024)  # BEGIN, Hello
        conn.sendall(b"X" * 64)  # no endianness mark D-Bus knows
        conn.recv(1024)

    caught = _restart_against(path, answer_garbage)
    assert str(caught.value) == (
        f"restart x.service: the system bus is unreachable: {path}: Hello: the bus sent a "
        "malformed message (KeyError)")


def _restart_against(path: str, serve: Callable[[socket.socket], None]
                     ) -> pytest.ExceptionInfo[UnitsUnreachable]:
    """``restart_unit`` against a stand-in "bus" at ``path`` whose one connection
    ``serve`` plays (then closes); the UnitsUnreachable it must end in."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)

    def serve_one() -> None:
        conn, _ = server.accept()
        with conn:
            serve(conn)

    thread = threading.Thread(target=serve_one)
    thread.start()
    try:
        with pytest.raises(UnitsUnreachable) as caught:
            SystemdManager(path).restart_unit("x.service", 5)
    finally:
        thread.join()
        server.close()
    return caught
