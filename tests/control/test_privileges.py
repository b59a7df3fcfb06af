"""Access through the real socket from another uid (setpriv): refused, or read-only."""

from __future__ import annotations

import json
import os
from typing import Any

from structlog.testing import capture_logs

from tests.control.conftest import build_app, serving
from tests.control.memory import MemoryCommands
from tests.harness import NOBODY, SYSTEM_PYTHON, run_as
from volplugd.control import AccessPolicy

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
    os.chmod(sockdir, 0o777)  # noqa: S103 — the other uid must reach the socket file
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
    assert [(e["uid"], e["method"]) for e in refused] == [(NOBODY, "GET"), (NOBODY, "POST")]
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
