"""A tiny WSGI framework for the control API: replies, a route table, HEAD, and the
one place where any exception becomes a JSON error answer.

Runs on: the control loop thread and connection threads.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from volplugd.control.inputs import InvalidRequest, content_length, path_segments, query
from volplugd.model import encode

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "JSON", "NDJSON", "UNMATCHED", "Handler", "MethodNotAllowed", "MustWait", "NotFound", "Reply",
    "Request", "WsgiBase", "json_reply", "raw_reply",
]

JSON = "application/json"
NDJSON = "application/x-ndjson"
UNMATCHED = "unmatched"  # the metrics route label of a path that matches no route
# A path's route is kept for up to this many paths of at most this length; then all are
# forgotten at once.
_MEMO_ENTRIES = 4096
_MEMO_KEY = 256
_STATUS_LINES: dict[int, str] = {}
T = TypeVar("T")


class NotFound(Exception):
    """No route matches the path (404 not_found)."""


class MustWait(Exception):
    """Raised by a handler asked on the server's event loop (``volplugd.inline`` in the
    environ) that would have to wait: the server answers the request on a thread
    instead. Only before anything of the answer is decided; never an error answer."""


class MethodNotAllowed(Exception):
    """The path exists, the method does not (405, with the Allow header)."""

    def __init__(self, allow: Iterable[str]):
        self.allow = ", ".join(sorted(allow))
        super().__init__(f"allowed: {self.allow}")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes | Iterable[bytes] = b""
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, encode(obj))


def raw_reply(status: int, body: bytes, content_type: str = JSON) -> Reply:
    return Reply(status, body, content_type)


@dataclass(slots=True)
class Request:
    environ: WSGIEnvironment
    method: str
    params: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Reply]


@dataclass(frozen=True, slots=True)
class _Match:
    template: str
    handlers: Mapping[str, Handler]
    params: dict[str, str]


class _Router:
    """Matches path segments against templates; ``{x}`` takes one non-empty segment."""

    def __init__(self, table: Mapping[str, Mapping[str, Handler]]):
        self._routes = [(t, tuple(t.split("/")[1:]), h) for t, h in table.items()]

    def match(self, segments: list[str]) -> _Match | None:
        for template, parts, handlers in self._routes:
            params = _bind(parts, segments)
            if params is not None:
                return _Match(template, handlers, params)
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


class WsgiBase:
    """Routing, errors, HEAD and the ``on_request(route, status)`` hook.

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
        path, _, query = target.partition("?")
        found = self._router.match(path.split("/")[1:])
        return (found is not None and found.template in self._inline
                and self.inline_query(found.template, query))

    def inline_query(self, template: str, query: str) -> bool:
        """Whether this query keeps an inline route inline (any, by default)."""
        return True

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        route, reply = self._answer(environ, method)
        if self._on_request is not None:
            self._on_request(route, reply.status)
        start_response(_status_line(reply.status), _headers(reply))
        if method == "HEAD":
            _close(reply.body)
            return []
        return [reply.body] if isinstance(reply.body, bytes) else reply.body

    def _answer(self, environ: WSGIEnvironment, method: str) -> tuple[str, Reply]:
        bad_path: InvalidRequest | None = None
        raw = environ.get("volplugd.raw_path")
        found: _Match | None = None
        if raw is not None and raw in self._matches:
            found = self._matches[raw]
        else:
            try:
                found = self._router.match(path_segments(environ))
            except InvalidRequest as exc:
                bad_path = exc
            else:
                if raw is not None:
                    _remember(self._matches, raw, found)
        route = UNMATCHED if found is None else found.template
        try:
            self.admit(environ, method)
            if bad_path is not None:
                raise bad_path
            return route, self._dispatch(found, environ, method)
        except MustWait:
            raise
        except Exception as exc:  # noqa: BLE001 — every failure becomes a JSON error
            return route, self._errors(exc)

    def admit(self, environ: WSGIEnvironment, method: str) -> None:
        """Checks before routing (the body's declared size here); raise to refuse."""
        content_length(environ)

    def _dispatch(self, found: _Match | None, environ: WSGIEnvironment,
                  method: str) -> Reply:
        if found is None:
            raise NotFound
        handler = found.handlers.get("GET" if method == "HEAD" else method)
        if handler is None:
            raise MethodNotAllowed(_allow(found.handlers))
        params = query(environ) if environ.get("QUERY_STRING") else {}
        return handler(Request(environ, method, found.params, params))


def _allow(handlers: Mapping[str, Handler]) -> set[str]:
    return set(handlers) | ({"HEAD"} if "GET" in handlers else set())


def _remember(memo: dict[str, T], key: str, value: T) -> None:
    if len(key) <= _MEMO_KEY:
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[key] = value


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            line = f"{status} {http.HTTPStatus(status).phrase}"
        except ValueError:
            line = f"{status} Unknown"
        _STATUS_LINES[status] = line
    return line


def _headers(reply: Reply) -> list[tuple[str, str]]:
    headers = list(reply.headers)
    if reply.content_type is not None:
        headers.append(("Content-Type", reply.content_type))
    if isinstance(reply.body, bytes) and reply.status not in {204, 304}:
        headers.append(("Content-Length", str(len(reply.body))))  # none for no-body codes
    return headers


def _close(body: bytes | Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()
