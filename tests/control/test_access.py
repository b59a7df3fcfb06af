"""The access rule: root and admin groups do everything, read groups GET/HEAD only."""

from __future__ import annotations

import os

import pytest
from structlog.testing import capture_logs

from tests.control.conftest import build_app
from tests.control.helpers import call
from tests.control.memory import MemoryCommands
from volplugd.control.access import AccessPolicy, Grant, decide
from volplugd.control.app import ControlApp
from volplugd.control.routing import Request
from volplugd.serving import Peer, groups_of

POLICY = AccessPolicy(admin_gids=frozenset({500}), read_gids=frozenset({600}))
USER = Peer(pid=77, uid=1000, gid=1000)


@pytest.mark.parametrize(("peer", "groups", "method", "allowed"), [
    (Peer(1, 0, 0), frozenset({0}), "POST", True),          # root, whatever its groups
    (Peer(1, 0, 999), frozenset({999}), "DELETE", True),
    (USER, frozenset({1000, 500}), "POST", True),            # admin group member
    (USER, frozenset({1000, 600}), "GET", True),             # read group: GET
    (USER, frozenset({1000, 600}), "HEAD", True),            #             HEAD
    (USER, frozenset({1000, 600}), "POST", False),           #             nothing else
    (USER, frozenset({1000, 600}), "DELETE", False),
    (USER, frozenset({1000}), "GET", False),                 # nobody special
    (None, frozenset(), "GET", False),                       # no credentials at all
])
def test_decide_table(peer: Peer | None, groups: frozenset[int], method: str,
                      allowed: bool) -> None:
    """The rule, as a table."""
    assert decide(POLICY, peer, groups, method) is allowed


def test_admin_and_read_both_means_admin() -> None:
    """A member of both kinds of group gets everything."""
    assert POLICY.grant(USER, frozenset({500, 600})) is Grant.ALL


def test_unprivileged_request_is_403_and_logged(commands: MemoryCommands) -> None:
    """Refused: 403 forbidden JSON, the refusal logged with uid and pid, no plugin call."""
    app = build_app(commands, POLICY)
    with capture_logs() as logs:
        ans = call(app, "GET", "/v1/plugins", peer=USER, groups=frozenset({1000}))
    assert ans.status == 403
    assert ans.error == ("forbidden", "this user may not do that on the control socket")
    assert logs == [{"event": "control_request_forbidden", "log_level": "warning",
                     "logger_name": "volplugd.control.app",
                     "method": "GET", "path": "/v1/plugins", "uid": 1000, "pid": 77,
                     "reason": "forbidden", "suppressed": 0, "refused": 1}]


def test_every_request_is_asked_and_every_refusal_counted(commands: MemoryCommands) -> None:
    """The access rule is asked for each request, the same request again included; one
    it refused is refused each time (logged once per 10 s)."""
    asked: list[int | None] = []

    class Counting(ControlApp):
        def admit(self, req: Request) -> None:
            asked.append(None if req.peer is None else req.peer.uid)
            super().admit(req)

    app = Counting(commands, metrics=None, on_request=None, version="9.9.9",
                   started_at=0.0, access=POLICY, probe_timeout=1.0, rescan_timeout=1.0,
                   clock=lambda: 1.0)
    allowed = Request("GET", "/v1/plugins/demo", peer=USER, groups=frozenset({1000, 600}))
    refused = Request("GET", "/v1/plugins/demo", peer=USER, groups=frozenset({1000}))
    with capture_logs() as logs:
        answers = [app(req).status for req in (allowed, allowed, refused, refused)]
    assert answers == [200, 200, 403, 403]
    assert asked == [1000] * 4
    assert [log["event"] for log in logs] == ["control_request_forbidden"]


def test_read_group_may_read_but_not_change(commands: MemoryCommands) -> None:
    """A read-group member lists plugins but cannot create volumes or rescan."""
    app = build_app(commands, POLICY)
    reader = frozenset({1000, 600})
    assert call(app, "GET", "/v1/plugins", peer=USER, groups=reader).status == 200
    assert call(app, "HEAD", "/v1/health", peer=USER, groups=reader).status == 200
    refused = call(app, "POST", "/v1/plugins/demo/volumes", body={"name": "v"}, peer=USER,
                   groups=reader)
    assert refused.status == 403
    assert call(app, "POST", "/v1/rescan", peer=USER, groups=reader).status == 403
    assert commands.clients["demo"].calls == []


def test_admin_group_may_change(commands: MemoryCommands) -> None:
    """An admin-group member creates a volume."""
    app = build_app(commands, POLICY)
    ans = call(app, "POST", "/v1/plugins/demo/volumes", body={"name": "v"}, peer=USER,
               groups=frozenset({1000, 500}))
    assert ans.status == 201


def test_no_credentials_is_refused(commands: MemoryCommands) -> None:
    """A request without peer credentials (not our unix server) gets 403: fail closed."""
    assert call(build_app(commands), "GET", "/v1/health", peer=None).status == 403


def test_refusal_comes_before_routing(commands: MemoryCommands) -> None:
    """An outsider learns nothing about routes: unknown paths are 403 too."""
    ans = call(build_app(commands, POLICY), "GET", "/nope", peer=USER)
    assert ans.status == 403


def test_groups_of_root_includes_its_groups() -> None:
    """root's groups come from NSS and include its primary gid."""
    assert set(groups_of(0, 0)) >= {0} | set(os.getgrouplist("root", 0))


def test_groups_of_uid_without_passwd_entry_is_its_gid() -> None:
    """A uid with no passwd entry (a container's) has only its primary gid."""
    assert groups_of(54_321, 54_322) == frozenset({54_322})
