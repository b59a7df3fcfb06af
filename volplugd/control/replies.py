"""What the control server writes of its own: the head of an app's answer (from what
the app gave ``start_response``), its JSON answers to protocol errors, and the 503 for a
connection refused at accept.

Runs on: the loop thread and connection threads.
"""

from __future__ import annotations

import http
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from volplugd.control.routing import JSON
from volplugd.model import encode

__all__ = ["CRASHED", "Answer", "protocol_error", "too_many_connections"]

_PROTOCOL_CODES = {405: "method_not_allowed", 413: "request_too_large",
                   414: "request_too_large", 421: "misdirected_request",
                   431: "request_too_large"}
CRASHED = encode({"error": {"code": "internal_error",
                            "message": "internal error; the daemon logged it"}})
_date: tuple[int, str] = (0, "")


class Answer:
    """The app's status and headers (``start_response``), until the head goes out."""

    status = ""
    headers: list[tuple[str, str]]
    sent = False

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        if exc_info is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, headers
        return _no_write

    def length(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "content-length"), None)

    def head(self, *, no_body: bool, keep: bool) -> bytes:
        """The status line and headers (Content-Length dropped for a 204 or 304)."""
        headers = self.headers
        if no_body:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        self.sent = True
        fields = "".join(map("%s: %s\r\n".__mod__, headers))
        close = "" if keep else "Connection: close\r\n"
        return f"HTTP/1.1 {self.status}\r\n{_stamp()}{fields}{close}\r\n".encode("latin-1")


def _no_write(data: bytes) -> object:
    raise NotImplementedError("this server takes the body from the app's iterable")


def protocol_error(code: int, message: str) -> tuple[bytes, bytes]:
    """The head and JSON body answering a request the server refuses by itself."""
    body = encode({"error": {"code": _PROTOCOL_CODES.get(code, "invalid_request"),
                             "message": message}})
    allow = "Allow: GET, HEAD\r\n" if code == 405 else ""
    head = (f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\n{_stamp()}"
            f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            f"{allow}\r\n")
    return head.encode("ascii"), body


def _stamp() -> str:
    """The Server and Date header lines (the date formatted once a second)."""
    global _date  # noqa: PLW0603 — a one-entry cache; a race only formats twice
    now = int(time.time())
    if _date[0] != now:
        _date = (now, f"Server: volplugd\r\nDate: {formatdate(now, usegmt=True)}\r\n")
    return _date[1]


def too_many_connections(message: str) -> bytes:
    """The whole answer to a connection refused at accept: 503, JSON, then close."""
    body = encode({"error": {"code": "too_many_connections", "message": message}})
    head = ("HTTP/1.1 503 Service Unavailable\r\nServer: volplugd\r\n"
            f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\nRetry-After: 1\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body
