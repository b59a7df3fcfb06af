"""Where a server and its app meet: the ``Request`` the server hands over, the ``Reply``
the app returns, and the bytes of a reply's head.

No WSGI environ, no ``start_response``: both apps are ours (the control API and the
gateway), and so is the server (``serving.connection``).
Runs on: connection threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.client import responses
from types import MappingProxyType
from typing import NamedTuple, Protocol

from volplugd.admission import Peer, Refusal

__all__ = ["JSON", "Application", "BodyReader", "Reply", "Request", "http_date", "reply_head"]

JSON = "application/json"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # tm_wday 0 is Monday
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


class BodyReader(Protocol):
    """A request body: ``read(n)`` gives up to ``n`` bytes (fewer only at its end)."""

    def read(self, size: int = -1, /) -> bytes | None: ...


def _never() -> str | None:
    return None


_NONE: Mapping[str, str] = MappingProxyType({})


def _none() -> Mapping[str, str]:
    return _NONE


@dataclass(slots=True)
class Request:
    """One request, as the server hands it to the app: what its head says, its body,
    who sent it, and the server's hooks. ``params`` and ``query`` are the router's to
    fill (``control.routing``)."""

    method: str
    path: str  # the raw path (before percent-decoding), without the query
    query_string: str = ""
    content_length: int = 0  # as the head declared it (the server checked its form)
    body: BodyReader | None = None  # reads exactly content_length bytes (100 Continue first)
    peer: Peer | None = None  # SO_PEERCRED; None: no credentials (TCP)
    groups: frozenset[int] = frozenset()  # the peer's groups (root: its own gid only)
    stopping: threading.Event | None = None  # set when the server stops (a stream ends)
    # why the client is gone ("hung_up", "not_reading"), or None (a follow stream ends)
    disconnected: Callable[[], str | None] = _never
    # takes a follow-stream slot for (peer, groups): its release, or why there is none;
    # None: no limit (an app called without a server)
    follow_slot: Callable[[Peer | None, frozenset[int]],
                          Callable[[], None] | Refusal] | None = None
    listener: str = ""  # the name of the listening socket it came in on (a plugin's)
    params: Mapping[str, str] = field(default_factory=_none)
    query: Mapping[str, str] = field(default_factory=_none)


class Reply(NamedTuple):
    """What the app answers."""

    status: int
    body: bytes | Iterable[bytes] = b""  # an iterable is a stream: its end is the connection's
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()


Application = Callable[[Request], Reply]
"""What a server serves."""


def reply_head(reply: Reply, length: int | None, *, keep: bool) -> bytes:
    """The status line and header lines of ``reply``, with ``Content-Length: length``
    (None: no length, for a stream or a 204/304) and ``Connection: close`` unless
    ``keep``."""
    phrase = responses.get(reply.status, "Unknown")
    fields = "".join([f"{name}: {_header_text(value)}\r\n" for name, value in reply.headers])
    if reply.content_type is not None:
        fields += f"Content-Type: {_header_text(reply.content_type)}\r\n"
    if length is not None:
        fields += f"Content-Length: {length}\r\n"
    if not keep:
        fields += "Connection: close\r\n"
    return (f"HTTP/1.1 {reply.status} {phrase}\r\nServer: volplugd\r\n"
            f"Date: {http_date()}\r\n{fields}\r\n").encode("latin-1")


def http_date(when: float | None = None) -> str:
    """``when`` (seconds since the epoch, up to the year 9999; None: now) as an HTTP
    date, the IMF-fixdate of RFC 9110 section 5.6.7: ``email.utils.formatdate(when,
    usegmt=True)``'s text, without the datetime objects it makes on the way. The day
    and month names are English whatever the locale (strftime writes only numbers)."""
    t = time.gmtime(when)
    return time.strftime(f"{_DAYS[t.tm_wday]}, %d {_MONTHS[t.tm_mon - 1]} %Y %H:%M:%S GMT", t)


def _header_text(value: str) -> str:
    """A value as it came (a plugin's Content-Type, say), minus anything that could end
    the header line."""
    if value.isprintable() and value.isascii():
        return value
    kept = "".join(c for c in value if c >= " " and c != "\x7f")
    return kept.encode("latin-1", "replace").decode("latin-1")
