"""One HTTP connection: the stdlib ``wsgiref`` handler, made safe for a daemon.

Added to the standard library's server: a strict head parser (``head.parse_head``: any
malformed head gets its 4xx, never a traceback), a deadline for each whole request (a
client dripping one byte at a time is dropped at ``read_timeout``) and a shorter one for
a connection's first head (``first_request_timeout``), a byte budget for the request
head, bodies framed by Content-Length only, a lazy ``100 Continue``, HTTP/1.1 keep-alive
when the answer has a length, the listener's ``Host`` rule (421), JSON error bodies for
protocol errors, and the peer's credentials in the environ.
Runs on: one thread per connection.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, cast
from wsgiref.simple_server import WSGIRequestHandler

from volplugd.control.access import Peer, groups_of
from volplugd.control.head import MAX_FIELDS, BadHead, Head, parse_head
from volplugd.control.response import Response
from volplugd.control.routing import JSON
from volplugd.control.sockio import Body, HeadTooLarge, Reader, Writer
from volplugd.log import get_logger
from volplugd.model import encode

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["FIRST_REQUEST_TIMEOUT", "MAX_HEAD_BYTES", "PROTOCOL_ERRORS", "Site",
           "serve_connection", "too_many_connections"]

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; http.client alone allows 100 x 64 KiB
# A new connection must deliver its first head this soon: a client that connects and says
# nothing holds a slot (and a thread) for seconds at most, not a whole read_timeout.
FIRST_REQUEST_TIMEOUT = 2.0
DRAIN_LIMIT = 64 * 1024  # an unread body up to this is skipped to keep the connection
# Closing on unread bytes resets the connection, and a client still sending then never
# reads our answer (a 413, say); so we half-close and swallow a bounded amount first.
LINGER_BYTES = 4 * 1024 * 1024
LINGER_SECONDS = 2.0
_READ_METHODS = frozenset({"GET", "HEAD"})
_PROTOCOL_CODES = {405: "method_not_allowed", 413: "request_too_large",
                   414: "request_too_large", 421: "misdirected_request",
                   431: "request_too_large"}
PROTOCOL_ERRORS = frozenset({"too_many_connections"})
"""Codes the control socket's server answers by itself, beyond the app's error table
(``misdirected_request`` is the TCP listener's only)."""
_MISDIRECTED = "this listener answers only requests for localhost, 127.0.0.0/8 or [::1]"

_log = get_logger(__name__)


@dataclass
class Site:
    """What every connection of one listener shares (built by the server)."""

    app: WSGIApplication
    read_timeout: float
    read_only: bool
    stopping: threading.Event
    follow_slot: Callable[[], Callable[[], None] | None]
    may_keep_alive: Callable[[], bool]
    set_idle: Callable[[socket.socket, bool], bool]  # False: the slot was taken away
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT
    host_allowed: Callable[[str | None], bool] | None = None  # None: any Host
    base_environ: dict[str, Any] = field(default_factory=lambda: {
        "SERVER_NAME": "localhost", "SERVER_PORT": "0", "GATEWAY_INTERFACE": "CGI/1.1",
        "SCRIPT_NAME": "", "CONTENT_LENGTH": "", "REMOTE_HOST": ""})


@dataclass(frozen=True)
class _Accepted:
    """One connection as the listener accepted it (BaseRequestHandler's "server")."""

    site: Site
    peer: Peer | None
    at: float  # time.monotonic() at accept


class _Connection(WSGIRequestHandler):
    """Serves requests on one accepted socket until it closes or must close."""

    protocol_version = "HTTP/1.1"
    server_version = "volplugd"
    sys_version = ""
    server: Any  # an _Accepted, then its Site (BaseRequestHandler calls it "server")

    def setup(self) -> None:
        accepted: _Accepted = self.server
        self.server = self.site = accepted.site  # wsgiref reads server.base_environ
        self._accepted_at = accepted.at
        self.connection = sock = self.request
        self._reader = Reader(sock)
        self.rfile = self.inp = io.BufferedReader(self._reader, 16 * 1024)
        self.wfile = self.out = io.BufferedWriter(Writer(sock, self.site.read_timeout),
                                                  64 * 1024)
        self.peer = accepted.peer
        self.groups = frozenset() if self.peer is None else \
            groups_of(self.peer.uid, self.peer.gid)
        self.command, self.requestline, self.request_version = "", "", "HTTP/1.1"
        self._expecting = False
        self._body: Body | None = None
        self._refused = False  # a protocol error: the client may still be sending

    def handle(self) -> None:
        first = True
        while not self.site.stopping.is_set():
            self.close_connection = True
            if not self._next_request(first):
                return
            first = False
            self._serve_one()
            if self.close_connection:
                return

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.close()  # flushes what is left
            self._linger()
        self.rfile.close()

    def _linger(self) -> None:
        unread = self._refused or (self._body is not None and self._body.remaining > 0)
        self._reader.budget = None  # a refused head's leftovers are not a head
        if not unread or self.site.stopping.is_set():
            return
        self.connection.shutdown(socket.SHUT_WR)
        self._reader.deadline = time.monotonic() + min(LINGER_SECONDS, self.site.read_timeout)
        left = LINGER_BYTES
        while left > 0 and (chunk := self.inp.read1(65536)):
            left -= len(chunk)

    # -- reading a request head --

    def _next_request(self, first: bool) -> bool:
        """Read and check the next head; False when the connection is done."""
        reader = self._reader
        reader.budget, reader.received = MAX_HEAD_BYTES, 0
        idle = not first
        self.site.set_idle(self.connection, True)  # until its head is in, a slot can go
        try:
            started = self._accepted_at
            reader.deadline = started + min(self.site.first_request_timeout,
                                            self.site.read_timeout)
            if idle:
                reader.deadline = time.monotonic() + self.site.read_timeout
                if not self.inp.peek(1):
                    return False
                started = time.monotonic()
                reader.deadline = started + self.site.read_timeout
                idle = False
            head = self._read_head()
            if not self.site.set_idle(self.connection, False):
                return False  # evicted to make room while its head came in
        except HeadTooLarge:
            self.send_error(431, "request head is over the limit")
        except BadHead as bad:
            self.send_error(bad.status, bad.message)
        except TimeoutError:
            self._log_timeout(idle)
        except OSError:
            pass  # reset, or shut down by stop() or to make room
        else:
            if head is not None:
                reader.deadline = started + self.site.read_timeout  # for the body
                return self._accept_head(head)
        finally:
            reader.budget = None
            self.site.set_idle(self.connection, False)
        return False

    def _log_timeout(self, idle: bool) -> None:
        # An idle keep-alive connection, or one that never sent a byte, timing out is
        # normal (and cheap to cause: logged at debug); a request that started and did
        # not finish in time is a slow (or hostile) client.
        if idle or self._reader.received == 0:
            event = "control_idle_connection_closed" if idle else "control_connection_silent"
            _log.debug(event, pid=self.peer and self.peer.pid)
        else:
            _log.info("control_client_too_slow", pid=self.peer and self.peer.pid,
                      timeout=self.site.read_timeout)

    def _read_head(self) -> Head | None:
        """The head's lines, parsed; None if the client closed before sending a byte."""
        request_line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not request_line:
            return None
        if len(request_line) > MAX_REQUEST_LINE:
            raise BadHead(414, "request line is over the limit")
        fields: list[bytes] = []
        line = request_line
        while True:
            if not line.endswith(b"\n"):
                raise BadHead(400, "the request head ended early")
            line = self.rfile.readline(MAX_HEAD_BYTES)  # the head's budget bounds it
            if line in (b"\r\n", b"\n"):
                return parse_head(request_line, fields)
            if len(fields) == MAX_FIELDS:
                raise BadHead(431, f"more than {MAX_FIELDS} header fields")
            fields.append(line)

    def _accept_head(self, head: Head) -> bool:
        """Take a parsed head as this request's; refuse a Host this listener must not serve."""
        self.command, self.path, self.request_version = head.method, head.target, head.version
        self.requestline = f"{head.method} {head.target} {head.version}"
        self.head = head
        self.headers = http.client.HTTPMessage()
        for name, value in head.fields:
            self.headers[name] = value  # appends: repeated fields stay repeated
        self.close_connection = not head.keep_alive
        self._expecting = head.expects_continue  # answered only when the app reads
        allowed = self.site.host_allowed
        if allowed is not None and not allowed(head.get("Host")):
            self.send_error(421, _MISDIRECTED)
            return False
        return True

    # -- one request through the WSGI app --

    def _serve_one(self) -> None:
        length = self._framing()
        if length is None:
            return
        self._body = body = Body(self.inp, length, self._send_continue)
        handler = Response(self, self._environ(), body, cast(IO[bytes], self.out))
        handler.run(self.site.app)
        try:
            self.wfile.flush()
        except OSError:
            handler.completed = False
        if not handler.completed:
            self.close_connection = True
        elif body.remaining and not self.close_connection:
            try:
                body.drain()
            except OSError:  # too slow, or gone: this connection is done
                self.close_connection = True

    def _framing(self) -> int | None:
        """The body length (checked by parse_head), or None after refusing the method."""
        if self.site.read_only and self.command not in _READ_METHODS:
            self.send_error(405, "this listener is read-only")
            return None
        return self.head.content_length

    def keep_after_reply(self) -> bool:
        """Decided as the answer's headers go out; an unread body may forbid it."""
        body = self._body
        unread = 0 if body is None else body.remaining
        if unread and (unread > DRAIN_LIMIT or self._expecting):
            self.close_connection = True
        if self.site.stopping.is_set() or not self.site.may_keep_alive():
            self.close_connection = True
        return not self.close_connection

    def _send_continue(self) -> None:
        if self._expecting:
            self._expecting = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()

    def _environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = self.get_environ()
        environ["volplugd.raw_path"] = self.path.split("?", 1)[0]
        environ["volplugd.stopping"] = self.site.stopping
        environ["volplugd.disconnected"] = self._disconnected
        environ["volplugd.follow_slot"] = self.site.follow_slot
        if self.peer is not None:
            environ["volplugd.peer"] = self.peer
            environ["volplugd.groups"] = self.groups
        return environ

    def _disconnected(self) -> bool:
        """True once the client has hung up (a follow stream then ends)."""
        poller = select.poll()
        poller.register(self.connection, select.POLLRDHUP)
        return bool(poller.poll(0))

    # -- protocol errors as JSON, and no stderr chatter --

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        self.close_connection = self._refused = True
        if self.request_version in {"", "HTTP/0.9"}:
            self.request_version = "HTTP/1.1"
        error = _PROTOCOL_CODES.get(code, "invalid_request")
        status = self.responses.get(code, ("error",))[0]
        body = encode({"error": {"code": error, "message": message or status}})
        try:
            self.send_response(code, status)
            self.send_header("Content-Type", JSON)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            if code == 405:
                self.send_header("Allow", "GET, HEAD")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # answers are counted by on_request; connection trouble is logged by name


def too_many_connections(message: str) -> bytes:
    """The whole answer to a connection refused at accept: 503, JSON, then close."""
    body = encode({"error": {"code": "too_many_connections", "message": message}})
    head = ("HTTP/1.1 503 Service Unavailable\r\nServer: volplugd\r\n"
            f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\nRetry-After: 1\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


def serve_connection(sock: socket.socket, site: Site, peer: Peer | None,
                     accepted_at: float) -> None:
    """Serve ``sock`` until it is done; the caller closes it."""
    address = ("local", 0) if sock.family == socket.AF_UNIX else sock.getpeername()
    _Connection(sock, address, cast(Any, _Accepted(site, peer, accepted_at)))
