"""Access through the real socket from another uid (setpriv): refused, or read-only."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.control.conftest import build_app, serving
from tests.control.helpers import fetch
from tests.control.memory import MemoryCommands
from tests.harness import NOBODY, SYSTEM_PYTHON, run_as, skip_unless_switching_to
from volplugd.control import AccessPolicy
from volplugd.serving import peers as access

CLIENT = r"""
import http.client, json, socket, sys

class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(sys.argv[1])

answers = []
for method, target, body in json.loads(sys.argv[2]):
    conn = Unix("localhost")
    conn.request(method, target, body=None if body is None else json.dumps(body))
    resp = conn.getresponse()
    answers.append([resp.status, json.loads(resp.read() or b"null")])
    conn.close()
print(json.dumps(answers))
"""


def _as_nobody(path: str, requests: list[tuple[str, str, Any]]) -> list[list[Any]]:
    # The client is stdlib only: the system Python runs it from /, with nothing of the
    # checkout (which may sit in a 0700 folder) on its path.
    done = run_as(NOBODY, [SYSTEM_PYTHON, "-P", "-B", "-c", CLIENT, path, json.dumps(requests)])
    assert (done.returncode, done.stderr) == (0, ""), done
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _open_path(sockdir: str) -> str:
    os.chmod(sockdir, 0o755)  # noqa: S103 — the other uid must reach the socket (not write)
    return os.path.join(sockdir, "c.sock")


def test_unprivileged_uid_gets_403_and_is_logged(sockdir: str,
                                                 commands: MemoryCommands) -> None:
    """uid 65534, in no configured group: 403 forbidden for reads and writes alike."""
    path = _open_path(sockdir)
    with capture_logs() as logs, \
            serving(build_app(commands, AccessPolicy()), path, mode=0o666):
        answers = _as_nobody(path, [("GET", "/v1/plugins", None),
                                    ("POST", "/v1/plugins/demo/volumes", {"name": "v"})])
    refusal = {"error": {"code": "forbidden",
                         "message": "this user may not do that on the control socket"}}
    assert answers == [[403, refusal], [403, refusal]]
    refused = [e for e in logs if e["event"] == "control_request_forbidden"]
    # once per 10 s per uid and reason: the POST's refusal is counted, not logged
    assert [(e["uid"], e["method"], e["reason"], e["suppressed"]) for e in refused] == [
        (NOBODY, "GET", "forbidden", 0)]
    assert all(isinstance(e["pid"], int) and e["pid"] > 0 for e in refused)
    assert commands.clients["demo"].calls == []


def test_read_group_member_may_only_read(sockdir: str, commands: MemoryCommands) -> None:
    """A member of a read group (nobody's own group here) GETs, but may not change."""
    path = _open_path(sockdir)
    policy = AccessPolicy(read_gids=frozenset({NOBODY}))
    with serving(build_app(commands, policy), path, mode=0o666):
        answers = _as_nobody(path, [("GET", "/v1/plugins/demo", None),
                                    ("POST", "/v1/rescan", None),
                                    ("POST", "/v1/plugins/demo/volumes", {"name": "v"})])
    assert [a[0] for a in answers] == [200, 403, 403]
    assert answers[0][1]["name"] == "demo"
    assert commands.clients["demo"].calls == []


def test_admin_group_member_may_change(sockdir: str, commands: MemoryCommands) -> None:
    """A member of an admin group creates a volume."""
    path = _open_path(sockdir)
    policy = AccessPolicy(admin_gids=frozenset({NOBODY}))
    with serving(build_app(commands, policy), path, mode=0o666):
        answers = _as_nobody(path, [("POST", "/v1/plugins/demo/volumes", {"name": "v"})])
    assert answers[0][0] == 201


def _nobodys_groups_held(sockdir: str, commands: MemoryCommands,
                         monkeypatch: pytest.MonkeyPatch,
                         policy: AccessPolicy, **server: Any) -> tuple[int, list[str], list[int]]:
    """nobody (not cached) GETs a plugin while the user database holds its lookup open;
    meanwhile root asks for /v1/health. Root's status, the threads that asked for
    nobody's groups, and nobody's statuses."""
    skip_unless_switching_to(NOBODY)  # here: nobody's client runs on a thread
    asked: list[str] = []
    asking, answer = threading.Event(), threading.Event()
    real = access._lookup

    def slow(uid: int, gid: int) -> frozenset[int]:
        asked.append(threading.current_thread().name)
        asking.set()
        answer.wait(60)
        return real(uid, gid)

    monkeypatch.setattr(access, "_cache", {})
    monkeypatch.setattr(access, "_lookup", slow)
    path = _open_path(sockdir)
    got: list[list[list[Any]]] = []
    with serving(build_app(commands, policy), path, mode=0o666, **server):
        nobody = threading.Thread(
            target=lambda: got.append(_as_nobody(path, [("GET", "/v1/plugins/demo", None)])))
        nobody.start()
        try:
            assert asking.wait(30), "nobody's groups were never asked for"
            health = fetch(path, "GET", "/v1/health")
        finally:
            answer.set()
            nobody.join(60)
    return health.status, asked, [status for status, _ in got[0]]


def test_a_users_groups_are_asked_on_its_own_thread_never_the_loop(
        sockdir: str, commands: MemoryCommands, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user database may be slow (a directory server that does not answer): a user's
    groups, when not cached, are asked for on its connection's own thread, and root is
    answered meanwhile (root's groups are never asked for: root may do everything)."""
    policy = AccessPolicy(read_gids=frozenset({NOBODY}))
    assert _nobodys_groups_held(sockdir, commands, monkeypatch, policy) == (
        200, ["control-conn"], [200])


def test_at_accept_a_users_groups_are_asked_off_the_accept_thread(
        sockdir: str, commands: MemoryCommands, monkeypatch: pytest.MonkeyPatch) -> None:
    """With admin groups configured, whether a user keeps the reserved slots depends on
    its groups: when they are not cached, its connection's own thread asks for them
    before it takes a slot, and the accept thread lets root in meanwhile. Then its
    request is served: one lookup in all (the connection reuses the groups found)."""
    policy = AccessPolicy(admin_gids=frozenset({NOBODY + 1}), read_gids=frozenset({NOBODY}))
    assert _nobodys_groups_held(sockdir, commands, monkeypatch, policy, access=policy) == (
        200, ["control-conn"], [200])
