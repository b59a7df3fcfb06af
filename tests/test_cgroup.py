"""placement(): what runs a process, from the text of its /proc/PID/cgroup (table tests)."""

from __future__ import annotations

import pytest

from volplugd.supervision.cgroup import Container, Placement, placement

ID = "0123456789abcdef" * 4


@pytest.mark.parametrize(("text", "expected"), [
    ("0::/system.slice/buttervolume.service\n",
     Placement("/system.slice/buttervolume.service", "buttervolume.service", "system", None)),
    ("0::/system.slice/foo.service/worker\n",  # a delegated sub-cgroup of the unit
     Placement("/system.slice/foo.service/worker", "foo.service", "system", None)),
    ("0::/system.slice/system-plug.slice/plug@a.service\n",
     Placement("/system.slice/system-plug.slice/plug@a.service", "plug@a.service", "system",
               None)),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n",
     Placement("/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
               "x.service", "user@1000.service", None)),
    ("0::/user.slice/user-1000.slice/session-3.scope\n",
     Placement("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", "system",
               None)),
    ("0::/init.scope\n", Placement("/init.scope", "init.scope", "system", None)),
    (f"0::/system.slice/docker-{ID}.scope\n",
     Placement(f"/system.slice/docker-{ID}.scope", f"docker-{ID}.scope", "system",
               Container("docker", ID))),
    (f"0::/docker/{ID}\n", Placement(f"/docker/{ID}", None, None, Container("docker", ID))),
    (f"0::/machine.slice/libpod-{ID}.scope/container\n",
     Placement(f"/machine.slice/libpod-{ID}.scope/container", f"libpod-{ID}.scope", "system",
               Container("podman", ID))),
    (f"0::/libpod_parent/libpod-{ID}\n",
     Placement(f"/libpod_parent/libpod-{ID}", None, None, Container("podman", ID))),
    (f"0::/machine.slice/libpod-conmon-{ID}.scope\n",
     Placement(f"/machine.slice/libpod-conmon-{ID}.scope", f"libpod-conmon-{ID}.scope",
               "system", Container("podman", ID, conmon=True))),
    (f"0::/{ID}\n", Placement(f"/{ID}", None, None, None)),  # a bare id: not Docker's
    ("0::/\n", Placement("/", None, None, None)),  # the root (or a cgroup namespace's)
    ("12:pids:/x\n1:name=systemd:/system.slice/old.service\n0::/\n",
     Placement("/", None, None, None)),  # hybrid: the unified line wins
    ("12:pids:/x\n1:name=systemd:/system.slice/old.service\n",
     Placement("/system.slice/old.service", "old.service", "system", None)),  # v1 only
])
def test_placement_names_the_unit_and_the_container(text: str, expected: Placement) -> None:
    """Each cgroup layout of systemd, Docker and Podman gives its unit and container."""
    assert placement(text) == expected


@pytest.mark.parametrize("text", ["", "garbage", "12:pids:/x\n", "\x00\xff::"])
def test_placement_of_text_without_a_readable_line_is_none(text: str) -> None:
    """No unified and no name=systemd line: nothing is told."""
    assert placement(text) is None


def test_placement_of_hostile_names_keeps_them_as_data() -> None:
    """A cgroup name with control characters or spaces is no unit (systemd never makes
    one), and the path is kept as it is."""
    text = "0::/system.slice/evil\x1b[2J name.service\n"
    assert placement(text) == Placement("/system.slice/evil\x1b[2J name.service", None,
                                        None, None)
