"""PidFd and ProcessWatch against real child processes killed with SIGKILL."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import pidns
from volplugd.supervision.pidfd import PidFd, ProcessWatch, fdinfo_pid


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Sleeping child processes, killed and reaped after the test."""
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for child in made:
        child.kill()
        child.wait()


def sleeper(children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    children.append(child)
    return child


def test_a_pidfd_turns_readable_when_its_process_is_killed(
        children: list[subprocess.Popen[bytes]]) -> None:
    """A live process's pidfd is not readable; after SIGKILL (not yet reaped) it is."""
    child = sleeper(children)
    with PidFd.open(child.pid) as pidfd:
        assert (pidfd.pid, fdinfo_pid(pidfd.fileno()), pidfd.exited()) == (
            child.pid, child.pid, False)
        os.kill(child.pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], 30)[0] == [pidfd]
        assert pidfd.exited()


def test_opening_a_pidfd_of_no_process_raises_process_lookup_error(
        children: list[subprocess.Popen[bytes]]) -> None:
    """pidfd_open of a reaped child's pid (nothing reused it yet) is ESRCH."""
    child = sleeper(children)
    child.kill()
    child.wait()
    with pytest.raises(ProcessLookupError):
        PidFd.open(child.pid)


def test_the_watch_is_one_descriptor_readable_when_any_watched_process_exits(
        children: list[subprocess.Popen[bytes]]) -> None:
    """Two watched processes: the watch is quiet; one killed → readable, ``exited()``
    names that key once and its pid, the other stays watched."""
    first, second = sleeper(children), sleeper(children)
    watch: ProcessWatch[str] = ProcessWatch()
    try:
        watch.watch("a", PidFd.open(first.pid))
        watch.watch("b", PidFd.open(second.pid))
        assert (select.select([watch], [], [], 0)[0], watch.exited()) == ([], [])
        os.kill(second.pid, signal.SIGKILL)
        assert select.select([watch], [], [], 30)[0] == [watch]
        assert watch.exited() == [("b", second.pid)]
        assert (len(watch), watch.pid("a"), watch.pid("b"), watch.exited()) == (
            1, first.pid, None, [])
    finally:
        watch.close()


def test_watching_a_key_again_replaces_and_closes_its_old_pidfd(
        children: list[subprocess.Popen[bytes]]) -> None:
    """A plugin's new process replaces the old one's pidfd: the old one's death is no
    longer reported, and its descriptor is closed."""
    old, new = sleeper(children), sleeper(children)
    watch: ProcessWatch[str] = ProcessWatch()
    try:
        first = PidFd.open(old.pid)
        watch.watch("p", first)
        watch.watch("p", PidFd.open(new.pid))
        with pytest.raises(ValueError, match=r"^the pidfd is closed$"):
            first.fileno()
        os.kill(old.pid, signal.SIGKILL)
        old.wait()
        assert (watch.exited(0), watch.pid("p")) == ([], new.pid)
        os.kill(new.pid, signal.SIGKILL)
        assert watch.exited(30) == [("p", new.pid)]
    finally:
        watch.close()
    watch.close()  # idempotent


@pytest.mark.peer  # unshare (util-linux)
def test_a_reused_pid_never_matches_the_old_pidfd() -> None:
    """In a fresh pid namespace a process is killed and reaped and a new one gets its
    very pid: the old pidfd still says exited (fdinfo Pid -1), a pidfd opened now is
    the new, live process."""
    result = pidns.run("""
        import json, subprocess, sys
        from volplugd.supervision.pidfd import PidFd, fdinfo_pid
        argv = [sys.executable, "-c", "import time; time.sleep(600)"]
        old = subprocess.Popen(argv)
        pidfd = PidFd.open(old.pid)
        old.kill(); old.wait()
        next_pid(old.pid)
        new = subprocess.Popen(argv)
        now = PidFd.open(new.pid)
        print(json.dumps({"same_pid": new.pid == old.pid, "old_exited": pidfd.exited(),
                          "old_fdinfo": fdinfo_pid(pidfd.fileno()),
                          "now_exited": now.exited(),
                          "now_fdinfo_is_pid": fdinfo_pid(now.fileno()) == new.pid}))
        new.kill(); new.wait()
    """)
    assert result == {"same_pid": True, "old_exited": True, "old_fdinfo": -1,
                      "now_exited": False, "now_fdinfo_is_pid": True}


def test_adopting_a_descriptor_that_is_no_pidfd_raises_and_closes_it() -> None:
    """A pipe is no pidfd: OSError naming the fd, and the fd is closed (no leak)."""
    read, write = os.pipe()
    os.close(write)
    with pytest.raises(OSError, match=rf"^fd {read} is not a pidfd \(no Pid: in its fdinfo\)$"):
        PidFd.adopt(read)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(read)
