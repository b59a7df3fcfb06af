"""A tiny framework for the control API: a route table, HEAD routed as GET, and the one
place where any exception becomes a JSON error answer (through ``control.errors``).

The server (``volplugd.serving``) builds a ``Request`` from the head it read and calls
the app with it; the app returns a ``Reply`` (its body whole, or an iterable for a
stream), which the server writes.
Runs on: connection threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from volplugd.control.inputs import InvalidRequest, check_length, path_segments, query
from volplugd.model import encode
from volplugd.serving import JSON, Application, Reply, Request

__all__ = [
    "JSON", "NDJSON", "UNMATCHED", "App", "Application", "Handler", "MethodNotAllowed",
    "NotFound", "Reply", "Request", "json_reply", "raw_reply",
]

NDJSON = "application/x-ndjson"
UNMATCHED = "unmatched"  # the metrics route label of a path that matches no route


class NotFound(Exception):
    """No route matches the path (404 not_found)."""


class MethodNotAllowed(Exception):
    """The path exists, the method does not (405, with the Allow header)."""

    def __init__(self, allow: Iterable[str]):
        self.allow = ", ".join(sorted(allow))
        super().__init__(f"allowed: {self.allow}")


def json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, encode(obj))


def raw_reply(status: int, body: bytes, content_type: str = JSON) -> Reply:
    return Reply(status, body, content_type)


Handler = Callable[[Request], Reply]


@dataclass(frozen=True, slots=True)
class _Match:
    template: str
    handlers: Mapping[str, Handler]
    params: Mapping[str, str]


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
                 errors: Callable[[BaseException], Reply]):
        self._router = _Router(table)
        self._on_request = on_request
        self._errors = errors

    def __call__(self, req: Request) -> Reply:
        route, handler = self._resolve(req)
        try:
            reply = handler(req)
        except Exception as exc:  # noqa: BLE001 — every failure becomes a JSON error
            reply = self._errors(exc)
        if self._on_request is not None:
            self._on_request(route, reply.status)
        return reply

    def _resolve(self, req: Request) -> tuple[str, Handler]:
        """The route label and handler of ``req``; refused, a handler that raises why."""
        bad_path: InvalidRequest | None = None
        try:
            found = self._router.match(path_segments(req.path))
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
            return route, _Refused(exc)
        req.params = found.params
        return route, handler

    def admit(self, req: Request) -> None:
        """Checks before routing (the body's declared size here); raise to refuse."""
        if req.content_length:
            check_length(req.content_length)


@dataclass(frozen=True)
class _Refused:
    """The handler of a refused request: raises why."""

    error: Exception

    def __call__(self, req: Request) -> Reply:
        raise self.error


def _allow(handlers: Mapping[str, Handler]) -> set[str]:
    return set(handlers) | ({"HEAD"} if "GET" in handlers else set())
