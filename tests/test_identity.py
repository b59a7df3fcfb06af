"""identify(): the process behind a plugin socket, from the kernel, against real processes:
the fake plugin in a subprocess, listeners that exit while a child keeps their socket,
a pid reused, pid 1 (socket activation), a peer in another pid namespace."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import pidns
from volplugd import safefs
from volplugd.supervision import identity
from volplugd.supervision.cgroup import placement
from volplugd.supervision.identity import (
    ListenerChanged,
    NotListening,
    ProcessInfo,
    identify,
)
from volplugd.supervision.pidfd import PidFd

REPO = Path(__file__).resolve().parents[1]
BOTH_WAYS = pytest.mark.parametrize("peer_pidfd", [True, False],
                                    ids=["SO_PEERPIDFD", "pidfd_open+recheck"])


def expected_info(proc: subprocess.Popen[str], sock: str) -> ProcessInfo:
    """What /proc says of ``proc`` (read here, independently)."""
    with open(f"/proc/{proc.pid}/cgroup", encoding="utf-8") as f:
        where = placement(f.read())
    assert where is not None
    return ProcessInfo(pid=proc.pid, uid=os.geteuid(), gid=os.getegid(),
                       command=f"{sys.executable} -m tests.fakeplugin {sock}",
                       unit=where.unit, manager=where.manager, container=where.container)


@BOTH_WAYS
def test_the_fake_plugin_process_is_identified_with_a_pidfd_of_it(
        plugin_process: Callable[[Path], subprocess.Popen[str]], short_tmp: Path,
        peer_pidfd: bool) -> None:
    """pid, uid, gid, command and the unit/container /proc gives; the pidfd fires on
    kill -9, and then the socket refuses (the file is left behind)."""
    proc = plugin_process(short_tmp / "p.sock")
    sock = str(short_tmp / "p.sock")
    info, pidfd = identify(sock, peer_pidfd=peer_pidfd)
    with pidfd:
        assert (info, pidfd.pid, pidfd.exited()) == (expected_info(proc, sock), proc.pid,
                                                     False)
        assert info.view() == {"pid": proc.pid, "uid": os.geteuid(), "command": info.command,
                               "unit": info.unit, "container": None if info.container is None
                               else {"engine": info.container.engine,
                                     "id": info.container.id}}
        proc.kill()
        assert select.select([pidfd], [], [], 30)[0] == [pidfd]
    with pytest.raises(NotListening) as caught:
        identify(sock, peer_pidfd=peer_pidfd)
    assert (str(caught.value), caught.value.reason) == (
        f"{sock}: cannot connect: Connection refused", "cannot connect: Connection refused")


def test_a_missing_socket_is_not_listening(short_tmp: Path) -> None:
    """No file: NotListening naming ENOENT."""
    with pytest.raises(NotListening, match=r": cannot connect: No such file or directory$"):
        identify(str(short_tmp / "none.sock"))


def test_a_full_backlog_is_not_listening_and_never_blocks(short_tmp: Path) -> None:
    """A listener that never accepts, with its backlog full: NotListening at once."""
    sock = str(short_tmp / "full.sock")
    server = socket.socket(socket.AF_UNIX)
    waiting: list[socket.socket] = []
    try:
        server.bind(sock)
        server.listen(0)
        for _ in range(8):  # fill the backlog (0 admits one) until a connect would block
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            waiting.append(client)
            if client.connect_ex(sock) != 0:
                break
        with pytest.raises(NotListening, match=r": its backlog is full \(the listener does "
                                               r"not accept\)$"):
            identify(sock)
    finally:
        for client in waiting:
            client.close()
        server.close()


def test_a_long_path_is_reached_through_its_folder(short_tmp: Path) -> None:
    """A socket path longer than sun_path (108 bytes) is still identified (here the
    listener is this very process, bound through its folder's descriptor)."""
    deep = short_tmp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    folder = os.open(deep, os.O_PATH)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(f"/proc/self/fd/{folder}/p.sock")
        server.listen(8)
        info, pidfd = identify(str(deep / "p.sock"))
        pidfd.close()
    finally:
        server.close()
        os.close(folder)
    assert (len(str(deep / "p.sock")) > safefs.MAX_UNIX_PATH, info.pid) == (True, os.getpid())


LISTENER_EXITS = """
    import json, os, socket, sys, time
    sys.path.insert(0, {repo!r})
    from volplugd.supervision.identity import identify, ProcessUnknown
    sock = "/tmp/vp-ident-%d.sock" % os.getpid()
    r, w = os.pipe()
    listener = os.fork()
    if listener == 0:  # listens, forks a child that keeps the socket, exits
        s = socket.socket(socket.AF_UNIX); s.bind(sock); s.listen(8)
        if os.fork() == 0:
            os.close(r); os.write(w, b"x"); time.sleep(600)
        os._exit(0)
    os.waitpid(listener, 0)
    os.read(r, 1)
    {reuse}
    out = {{"listener": listener}}
    for peer_pidfd in (True, False):
        try:
            info, pidfd = identify(sock, peer_pidfd=peer_pidfd)
            out[str(peer_pidfd)] = ["identified", info.pid]
        except ProcessUnknown as err:
            out[str(peer_pidfd)] = [type(err).__name__, err.reason]
    os.unlink(sock)
    print(json.dumps(out))
"""


@pytest.mark.peer  # unshare (util-linux)
def test_a_listener_that_exited_while_its_child_holds_the_socket_is_gone() -> None:
    """SO_PEERCRED still names the exited listener's pid; both ways say ProcessGone."""
    result = pidns.run(LISTENER_EXITS.format(repo=str(REPO), reuse=""))
    gone = f"the process that listened on it (pid {result['listener']}) has exited; " \
           "another process still holds the socket"
    assert result == {"listener": result["listener"], "True": ["ProcessGone", gone],
                      "False": ["ProcessGone", gone]}


@pytest.mark.peer  # unshare (util-linux)
def test_a_reused_pid_is_never_taken_for_the_exited_listener() -> None:
    """The exited listener's pid given to a new process: SO_PEERPIDFD still says
    ProcessGone. The older kernels' way (pidfd_open + a second SO_PEERCRED) cannot tell
    them apart and names the new process: the documented limit of that fallback."""
    reuse = ("next_pid(listener); import subprocess; "
             "new = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
             "assert new.pid == listener, (new.pid, listener)")
    result = pidns.run(LISTENER_EXITS.format(repo=str(REPO), reuse=reuse))
    listener = result["listener"]
    assert result == {"listener": listener, "True": [
        "ProcessGone", f"the process that listened on it (pid {listener}) has exited; "
                       "another process still holds the socket"],
        "False": ["identified", listener]}


@pytest.mark.peer  # unshare (util-linux)
def test_a_socket_activated_listener_is_pid_1_and_its_unit_comes_from_the_lookup() -> None:
    """The listener is pid 1 (here: the namespace's first process, listening as systemd
    does for a .socket unit): the unit is what socket_units names for the path, the
    socket unit is its .socket; a lookup that fails or knows nothing is a problem."""
    result = pidns.run(f"""
        import json, os, socket, sys
        sys.path.insert(0, {str(REPO)!r})
        from volplugd.supervision.identity import identify
        sock = "/tmp/vp-activated-%d.sock" % os.getppid()
        s = socket.socket(socket.AF_UNIX); s.bind(sock); s.listen(8)
        def boom(path):
            raise OSError("the bus is unreachable")
        out = []
        for lookup in ({{sock: "plug.service"}}.get, lambda path: None, boom, None):
            info, pidfd = identify(sock, lookup)
            pidfd.close()
            out.append([info.pid, info.unit, info.socket_unit, list(info.problems)])
        os.unlink(sock)
        print(json.dumps(out))
    """)
    assert result == [
        [1, "plug.service", "plug.socket", []],
        [1, None, None, ["socket-activated: no .socket unit listens on it"]],
        [1, None, None, ["socket-activated: the bus is unreachable"]],
        [1, None, None, ["socket-activated: no way to ask systemd which unit"]],
    ]


@pytest.mark.peer  # unshare (util-linux)
def test_a_listener_outside_our_pid_namespace_is_pid_0(
        plugin_process: Callable[[Path], subprocess.Popen[str]], short_tmp: Path) -> None:
    """Asked from inside a new pid namespace, a host plugin's pid is 0: OtherPidNamespace."""
    plugin_process(short_tmp / "host.sock")
    sock = str(short_tmp / "host.sock")
    result = pidns.run(f"""
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        from volplugd.supervision.identity import identify, ProcessUnknown
        try:
            identify({sock!r})
            print(json.dumps(["identified"]))
        except ProcessUnknown as err:
            print(json.dumps([type(err).__name__, str(err)]))
    """)
    assert result == ["OtherPidNamespace", f"{sock}: the listener is in another pid "
                                           "namespace (the kernel gives its pid as 0)"]


def test_a_listener_replaced_between_the_two_connections_is_listener_changed(
        plugin_process: Callable[[Path], subprocess.Popen[str]], short_tmp: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Older kernels' way: another plugin's socket renamed over the path right after the
    first look (while the pidfd is opened) makes the second connection reach another
    pid: ListenerChanged naming both; no pidfd is left open."""
    first, second = plugin_process(short_tmp / "a.sock"), plugin_process(short_tmp / "b.sock")
    sock = str(short_tmp / "a.sock")
    opened = PidFd.open

    def open_then_replace(pid: int) -> PidFd:
        pidfd = opened(pid)
        os.rename(short_tmp / "b.sock", sock)
        return pidfd

    monkeypatch.setattr(identity.PidFd, "open", open_then_replace)
    with pytest.raises(ListenerChanged) as caught:
        identify(sock, peer_pidfd=False)
    assert caught.value.reason == (f"the listener changed while it was looked at "
                                   f"(pid {first.pid}, then pid {second.pid})")


def test_a_hostile_command_line_is_kept_as_safe_bounded_text(short_tmp: Path) -> None:
    """Undecodable bytes, control characters and a huge argv become escaped text of at
    most COMMAND_LIMIT bytes."""
    sock = str(short_tmp / "h.sock")
    code = textwrap.dedent(f"""
        import socket, sys, time
        s = socket.socket(socket.AF_UNIX); s.bind({sock!r}); s.listen(8)
        print("up", flush=True); time.sleep(600)
    """)
    argv = [sys.executable, "-c", code, b"\xff\x1b[2J".decode("utf-8", "surrogateescape"),
            "x" * 5000]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        info, pidfd = identify(sock)
        pidfd.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert info.command is not None
    assert len(info.command.encode()) <= identity.COMMAND_LIMIT
    assert "\\xff\x1b[2J x" in info.command
    assert info.command.endswith(" bytes cut)")
