"""What every connection of one listener shares (``Site``), and what the loop does with
a connection after reading from it (``Step``).

Runs on: the listener's loop thread and its connection threads (``Site`` is set up
before the loop starts and read-only after).
"""

from __future__ import annotations

import enum
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from volplugd.admission import Peer, Refusal
from volplugd.control.head import MEMO_HEADS, Head
from volplugd.control.inputs import BodyReader
from volplugd.control.routing import Application, Request

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

    app: Application
    read_timeout: float
    read_only: bool
    stopping: threading.Event
    follow_slot: Callable[[Peer | None, frozenset[int]], Callable[[], None] | Refusal]
    may_keep_alive: Callable[[], bool]
    set_idle: Callable[[socket.socket, bool], bool]  # False: the slot was taken away
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT
    host_allowed: Callable[[str | None], bool] | None = None  # None: any Host
    # whether the app answers (method, target) at once from memory: ``runs_inline``
    app_inline: Callable[[str, str], bool] | None = None

    # id(head) -> (head, inline, method, path, query string)
    _prepared: dict[int, tuple[Head, bool, str, str, str]] = field(
        default_factory=dict, init=False, repr=False)

    def inline(self, head: Head) -> bool:
        """Whether the loop thread may answer this request itself: a read without a
        body, for a Host this listener serves, that the app answers from memory."""
        return self._prepare(head)[1]

    def request(self, head: Head, body: BodyReader, peer: Peer | None,
                groups: frozenset[int], *, inline: bool,
                disconnected: Callable[[], str | None]) -> Request:
        """The ``Request`` the app gets for ``head`` (``inline``: on the event loop)."""
        _, _, method, path, query_string = self._prepare(head)
        return Request(method, path, query_string, head.content_length, body, peer, groups,
                       inline, self.stopping, disconnected, self.follow_slot)

    def _prepare(self, head: Head) -> tuple[Head, bool, str, str, str]:
        """What depends on the head alone, worked out once per head object (a head
        read again is the same object, see ``head.parse_whole``). The entry holds its
        head, so an id is not reused while it is remembered."""
        entry = self._prepared.get(id(head))
        if entry is None or entry[0] is not head:
            path, _, query_string = head.target.partition("?")
            entry = (head, self._inline(head), head.method.upper(), path, query_string)
            if len(self._prepared) >= MEMO_HEADS:
                self._prepared.clear()
            self._prepared[id(head)] = entry
        return entry

    def _inline(self, head: Head) -> bool:
        return (self.app_inline is not None and head.method in READ_METHODS
                and head.content_length == 0 and not head.expects_continue
                and (self.host_allowed is None or self.host_allowed(head.get("Host")))
                and self.app_inline(head.method, head.target))
