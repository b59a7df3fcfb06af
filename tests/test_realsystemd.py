"""tests/realsystemd.py itself: two containers at once stay apart, and leaving ``boot``,
by a failure too, removes every mount, folder, cgroup and nspawn entry it made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import realsystemd
from tests.realsystemd import NSPAWN_RUN, Container, boot

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


def _traces(box: Container) -> list[str]:
    """What of ``box`` is still on the host."""
    left = [str(p) for p in (box.folder, NSPAWN_RUN / "propagate" / box.name,
                             NSPAWN_RUN / "unix-export" / box.name, box.image_lock)
            if p is not None and p.exists()]
    left += [str(c / box.name) for c in realsystemd._cgroup_roots() if (c / box.name).exists()]
    mounts = Path("/proc/self/mounts").read_text()
    left += [line for line in mounts.splitlines() if str(box.folder) in line]
    return left


def _two_then_fail(seen: list[Container]) -> None:
    with boot("one") as one, boot("two") as two:
        seen += [one, two]
        assert one.leader != two.leader
        one.write("/run/mark", "one\n")
        assert one.run(["cat", "/run/mark"]).stdout == "one\n"
        assert two.run(["test", "-e", "/run/mark"], check=False).returncode == 1
        assert one.run(["cat", "/proc/1/comm"]).stdout == "systemd\n"
        assert one.run(["systemctl", "is-system-running"], check=False).stdout in (
            "running\n", "degraded\n")
        for box in seen:
            assert _traces(box) != []
        raise RuntimeError("the test failed")


def test_two_at_once_then_nothing_left() -> None:
    """Two containers boot side by side, each with its own PID 1, /run and cgroup; an
    exception inside ``boot`` still stops both and leaves no trace of either."""
    seen: list[Container] = []
    with pytest.raises(RuntimeError, match=r"^the test failed$"):
        _two_then_fail(seen)
    assert len(seen) == 2
    assert [(box.name, _traces(box)) for box in seen] == [(box.name, []) for box in seen]
    assert all(box.nspawn is not None and box.nspawn.returncode is not None for box in seen)


def test_a_container_that_outlives_its_nspawn_is_removed_too() -> None:
    """nspawn SIGKILLed: its container lives on without it; leaving ``boot`` kills what
    is left in the container's cgroups and removes everything all the same."""
    with boot("orphan") as box:
        assert box.nspawn is not None
        box.nspawn.kill()
        box.nspawn.wait(timeout=60)
        leader = box.leader
        assert Path(f"/proc/{leader}/comm").read_text() == "systemd\n"
    assert _traces(box) == []
    assert _gone_or_zombie(leader)


def _gone_or_zombie(pid: int) -> bool:
    """Killed: gone, or a zombie its new parent (the host's PID 1) has yet to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_skip_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root, or without systemd-nspawn, the reason says which and how to get it."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert realsystemd.skip_reason() == "a systemd-nspawn container needs root"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = realsystemd.shutil.which
    monkeypatch.setattr(realsystemd.shutil, "which",
                        lambda tool: None if tool == "systemd-nspawn" else real_which(tool))
    assert realsystemd.skip_reason() == ("systemd-nspawn is missing (Debian package "
                                         "systemd-container; make system-deps)")
