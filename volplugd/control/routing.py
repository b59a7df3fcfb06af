"""A tiny framework for the control API: the request the server hands over, replies, a
route table, and the one place where any exception becomes a JSON error answer.

The server and the app meet here: the server builds a ``Request`` from the head it read
and calls the app with it; the app returns a ``Reply`` (its body whole, or an iterable
for a stream), which the server writes. No WSGI environ, no ``start_response``: the
app is ours, and the server is ours (``control.connection``).
Runs on: the control loop thread and connection threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, NamedTuple

from volplugd.admission import Peer, Refusal
from volplugd.control.inputs import (
    BodyReader,
    InvalidRequest,
    check_length,
    path_segments,
    query,
)
from volplugd.model import encode

__all__ = [
    "JSON", "NDJSON", "UNMATCHED", "App", "Application", "Handler", "MethodNotAllowed",
    "MustWait", "NotFound", "Reply", "Request", "json_reply", "raw_reply",
]

JSON = "application/json"
NDJSON = "application/x-ndjson"
UNMATCHED = "unmatched"  # the metrics route label of a path that matches no route
# A path's route is kept for up to this many paths of at most this length; then all are
# forgotten at once.
_MEMO_ENTRIES = 4096
_MEMO_KEY = 256


class NotFound(Exception):
    """No route matches the path (404 not_found)."""


class MustWait(Exception):
    """Raised by a handler asked on the server's event loop (``Request.inline``) that
    would have to wait: the server answers the request on a thread instead. Only before
    anything of the answer is decided; never an error answer."""


class MethodNotAllowed(Exception):
    """The path exists, the method does not (405, with the Allow header)."""

    def __init__(self, allow: Iterable[str]):
        self.allow = ", ".join(sorted(allow))
        super().__init__(f"allowed: {self.allow}")


def _never() -> str | None:
    return None


_NONE: Mapping[str, str] = MappingProxyType({})


def _none() -> Mapping[str, str]:
    return _NONE


@dataclass(slots=True)
class Request:
    """One request, as the server hands it to the app: what its head says, its body,
    who sent it, and the server's hooks. ``params`` (read-only: one mapping per route
    match, shared by every request of that path) and ``query`` are the route's."""

    method: str
    path: str  # the raw path (before percent-decoding), without the query
    query_string: str = ""
    content_length: int = 0  # as the head declared it (the server checked its form)
    body: BodyReader | None = None  # reads exactly content_length bytes (100 Continue first)
    peer: Peer | None = None  # SO_PEERCRED; None: no credentials (refused)
    groups: frozenset[int] = frozenset()  # the peer's groups (root: its own gid only)
    inline: bool = False  # on the server's event loop: raise MustWait to be asked on a thread
    stopping: threading.Event | None = None  # set when the server stops (a stream ends)
    # why the client is gone ("hung_up", "not_reading"), or None (a follow stream ends)
    disconnected: Callable[[], str | None] = _never
    # takes a follow-stream slot for (peer, groups): its release, or why there is none;
    # None: no limit
    follow_slot: Callable[[Peer | None, frozenset[int]],
                          Callable[[], None] | Refusal] | None = None
    params: Mapping[str, str] = field(default_factory=_none)
    query: Mapping[str, str] = field(default_factory=_none)
    # the app's, once it let the request in: its route label and handler (a request the
    # server hands over again, the same head on the same connection, is not asked again)
    routed: tuple[str, Handler] | None = None


class Reply(NamedTuple):
    """What the app answers (a tuple: made once per request, three times cheaper than a
    frozen dataclass)."""

    status: int
    body: bytes | Iterable[bytes] = b""  # an iterable is a stream: its end is the connection's
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, encode(obj))


def raw_reply(status: int, body: bytes, content_type: str = JSON) -> Reply:
    return Reply(status, body, content_type)


Handler = Callable[[Request], Reply]
Application = Callable[[Request], Reply]
"""What a server serves: an ``App``, or any callable of the same shape."""


@dataclass(frozen=True, slots=True)
class _Match:
    template: str
    handlers: Mapping[str, Handler]
    params: Mapping[str, str]  # read-only: the match is remembered per path


class _Router:
    """Matches path segments against templates; ``{x}`` takes one non-empty segment."""

    def __init__(self, table: Mapping[str, Mapping[str, Handler]]):
        self._routes = [(t, tuple(t.split("/")[1:]), h) for t, h in table.items()]

    def match(self, segments: list[str]) -> _Match | None:
        for template, parts, handlers in self._routes:
            params = _bind(parts, segments)
            if params is not None:
                return _Match(template, handlers, MappingProxyType(params))
        return None


def _bind(parts: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


class App:
    """Routing, errors and the ``on_request(route, status)`` hook: ``app(request)`` is
    the reply (HEAD is routed as GET; the server sends no body for it).

    ``errors`` turns any exception into the error Reply (the app's one table).
    """

    def __init__(self, table: Mapping[str, Mapping[str, Handler]],
                 on_request: Callable[[str, int], None] | None,
                 errors: Callable[[BaseException], Reply],
                 inline: Iterable[str] = ()):
        self._router = _Router(table)
        self._on_request = on_request
        self._errors = errors
        self._inline = frozenset(inline)
        self._matches: dict[str, _Match | None] = {}  # raw path -> its route (read-only)

    def runs_inline(self, method: str, target: str) -> bool:
        """Whether a GET (or HEAD) of ``target`` is answered at once from memory, so a
        server may answer it on its event loop (see ``control.connection``).

        ``inline`` names those route templates. The raw path is matched (no decoding):
        a path that only matches once decoded is served on a thread, just as right.
        A server asks once per head it parsed (``control.site`` remembers the answer).
        """
        path, _, query_string = target.partition("?")
        found = self._router.match(path.split("/")[1:])
        return (found is not None and found.template in self._inline
                and self.inline_query(found.template, query_string))

    def inline_query(self, template: str, query_string: str) -> bool:
        """Whether this query keeps an inline route inline (any, by default)."""
        return True

    def __call__(self, req: Request) -> Reply:
        route, handler = req.routed or self._resolve(req)
        try:
            reply = handler(req)
        except MustWait:
            raise
        except Exception as exc:  # noqa: BLE001 — every failure becomes a JSON error
            reply = self._errors(exc)
        if self._on_request is not None:
            self._on_request(route, reply.status)
        return reply

    def _resolve(self, req: Request) -> tuple[str, Handler]:
        """The route label and handler of ``req``, kept in ``req.routed``; refused, a
        handler that raises why (a refusal is decided again each time)."""
        bad_path: InvalidRequest | None = None
        try:
            found = self._route(req.path)
        except InvalidRequest as exc:
            found, bad_path = None, exc
        route = UNMATCHED if found is None else found.template
        try:
            self.admit(req)  # who may ask comes before what is wrong with the path
            if bad_path is not None:
                raise bad_path
            if found is None:
                raise NotFound
            handler = found.handlers.get("GET" if req.method == "HEAD" else req.method)
            if handler is None:
                raise MethodNotAllowed(_allow(found.handlers))
            if req.query_string:
                req.query = query(req.query_string)
        except Exception as exc:  # noqa: BLE001 — refused: its error is the answer
            return route, partial(_raise, exc)
        req.params = found.params
        req.routed = (route, handler)
        return req.routed

    def _route(self, path: str) -> _Match | None:
        """The route of a raw path (remembered); raises InvalidRequest for one that is
        not UTF-8."""
        if path in self._matches:
            return self._matches[path]
        found = self._router.match(path_segments(path))
        if len(path) <= _MEMO_KEY:
            if len(self._matches) >= _MEMO_ENTRIES:
                self._matches.clear()
            self._matches[path] = found
        return found

    def admit(self, req: Request) -> None:
        """Checks before routing (the body's declared size here); raise to refuse."""
        if req.content_length:
            check_length(req.content_length)


def _raise(exc: Exception, req: Request) -> Reply:
    raise exc


def _allow(handlers: Mapping[str, Handler]) -> set[str]:
    return set(handlers) | ({"HEAD"} if "GET" in handlers else set())
