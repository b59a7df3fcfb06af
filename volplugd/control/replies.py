"""What the control server writes of its own: the head of an app's ``Reply``, its JSON
answers to protocol errors, and the 503 for a connection refused at accept.

Runs on: the loop thread and connection threads.
"""

from __future__ import annotations

import http
import time
from email.utils import formatdate

from volplugd.control.routing import JSON, Reply
from volplugd.model import encode

__all__ = ["CRASHED", "protocol_error", "reply_head", "too_many_connections"]

_PROTOCOL_CODES = {405: "method_not_allowed", 413: "request_too_large",
                   414: "request_too_large", 421: "misdirected_request",
                   431: "request_too_large"}
CRASHED = Reply(500, encode({"error": {"code": "internal_error",
                                       "message": "internal error; the daemon logged it"}}))
_STATUS_LINES: dict[int, str] = {}
_date: tuple[int, str] = (0, "")
# The heads made this second, by what they say: most answers repeat a few (the same
# status, type and length), and the Date line changes once a second. At most this many.
_HEADS = 256
_heads: dict[tuple[int, str | None, tuple[tuple[str, str], ...], int | None, bool], bytes] = {}
_heads_second = 0


def reply_head(reply: Reply, length: int | None, *, keep: bool) -> bytes:
    """The status line and header lines of ``reply``, with ``Content-Length: length``
    (None: no length, for a stream or a 204/304) and ``Connection: close`` unless
    ``keep``."""
    global _heads_second  # noqa: PLW0603 — a cache of this second's heads (see _stamp)
    key = (reply.status, reply.content_type, reply.headers, length, keep)
    second = int(time.time())
    if second != _heads_second:
        _heads.clear()
        _heads_second = second
    head = _heads.get(key)
    if head is None:
        head = _make_head(reply, length, keep=keep)
        if len(_heads) < _HEADS:
            _heads[key] = head
    return head


def _make_head(reply: Reply, length: int | None, *, keep: bool) -> bytes:
    fields = "".join(map("%s: %s\r\n".__mod__, reply.headers)) if reply.headers else ""
    kind = "" if reply.content_type is None else f"Content-Type: {reply.content_type}\r\n"
    size = "" if length is None else f"Content-Length: {length}\r\n"
    close = "" if keep else "Connection: close\r\n"
    return (f"HTTP/1.1 {_status_line(reply.status)}\r\n{_stamp()}{fields}{kind}{size}{close}"
            "\r\n").encode("latin-1")


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            line = f"{status} {http.HTTPStatus(status).phrase}"
        except ValueError:
            line = f"{status} Unknown"
        _STATUS_LINES[status] = line
    return line


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
