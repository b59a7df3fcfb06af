"""What every connection of one listener shares (``Site``), and what the loop does with
a connection after reading from it (``Step``).

Runs on: the listener's loop thread and its connection threads (``Site`` is set up
before the loop starts and read-only after).
"""

from __future__ import annotations

import enum
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from volplugd.control.head import MEMO_HEADS, Head

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from volplugd.control.sockio import Body

__all__ = ["FIRST_REQUEST_TIMEOUT", "READ_METHODS", "Site", "Step"]

# A new connection must deliver its first head this soon: a client that connects and says
# nothing holds a slot (and a thread) for seconds at most, not a whole read_timeout.
FIRST_REQUEST_TIMEOUT = 2.0
READ_METHODS = frozenset({"GET", "HEAD"})


class Step(enum.Enum):
    """What the loop does with a connection after ``Connection.serve_buffered``."""

    WAIT = "wait"  # for more bytes (the connection stays on the loop)
    AGAIN = "again"  # more is buffered: its turn comes after the other ready connections'
    THREAD = "thread"  # hand it to a thread of its own (``Connection.run``)
    CLOSE = "close"  # it is done


@dataclass
class Site:
    """One listener's settings and hooks, built by the listener."""

    app: WSGIApplication
    read_timeout: float
    read_only: bool
    stopping: threading.Event
    follow_slot: Callable[[], Callable[[], None] | None]
    may_keep_alive: Callable[[], bool]
    set_idle: Callable[[socket.socket, bool], bool]  # False: the slot was taken away
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT
    host_allowed: Callable[[str | None], bool] | None = None  # None: any Host
    # whether the app answers (method, target) at once from memory: ``runs_inline``
    app_inline: Callable[[str, str], bool] | None = None
    base_environ: dict[str, Any] = field(default_factory=lambda: {
        "SERVER_NAME": "localhost", "SERVER_PORT": "0", "GATEWAY_INTERFACE": "CGI/1.1",
        "SCRIPT_NAME": "", "CONTENT_LENGTH": "", "REMOTE_HOST": "",
        "SERVER_SOFTWARE": "volplugd", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False})

    _prepared: dict[int, tuple[Head, bool, dict[str, Any]]] = field(
        default_factory=dict, init=False, repr=False)  # id(head) -> (head, inline, environ)

    def inline(self, head: Head) -> bool:
        """Whether the loop thread may answer this request itself: a read without a
        body, for a Host this listener serves, that the app answers from memory."""
        return self._prepare(head)[1]

    def environ(self, head: Head, body: Body, address: str,
                disconnected: Callable[[], bool]) -> dict[str, Any]:
        """The WSGI environ of one request (the caller adds the peer's credentials)."""
        environ = self._prepare(head)[2].copy()
        environ["wsgi.input"], environ["REMOTE_ADDR"] = body, address
        environ["volplugd.disconnected"] = disconnected
        return environ

    def _prepare(self, head: Head) -> tuple[Head, bool, dict[str, Any]]:
        """What depends on the head alone, worked out once per head object (a head
        read again is the same object, see ``head.parse_whole``). The entry holds its
        head, so an id is not reused while it is remembered."""
        entry = self._prepared.get(id(head))
        if entry is None or entry[0] is not head:
            entry = (head, self._inline(head), self._head_environ(head))
            if len(self._prepared) >= MEMO_HEADS:
                self._prepared.clear()
            self._prepared[id(head)] = entry
        return entry

    def _inline(self, head: Head) -> bool:
        return (self.app_inline is not None and head.method in READ_METHODS
                and head.content_length == 0 and not head.expects_continue
                and (self.host_allowed is None or self.host_allowed(head.get("Host")))
                and self.app_inline(head.method, head.target))

    def _head_environ(self, head: Head) -> dict[str, Any]:
        path, _, query = head.target.partition("?")
        environ = self.base_environ.copy()
        environ.update({
            "REQUEST_METHOD": head.method, "SERVER_PROTOCOL": head.version,
            "PATH_INFO": urllib.parse.unquote(path, "iso-8859-1"), "QUERY_STRING": query,
            "volplugd.raw_path": path, "volplugd.stopping": self.stopping,
            "volplugd.follow_slot": self.follow_slot})
        for name, value in head.fields:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
                if key in environ:
                    environ[key] += "," + value
                    continue
            environ[key] = value
        return environ
