"""One HTTP connection: the stdlib ``wsgiref`` handler, made safe for a daemon.

Added to the standard library's server: a deadline for each whole request (a client
dripping one byte at a time is dropped at ``read_timeout``), a byte budget for the
request head, bodies framed by Content-Length only, a lazy ``100 Continue``, HTTP/1.1
keep-alive when the answer has a length, JSON error bodies for protocol errors, and the
peer's credentials in the environ. Runs on: one thread per connection.
"""

from __future__ import annotations

import contextlib
import io
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, cast
from wsgiref.handlers import SimpleHandler
from wsgiref.headers import Headers
from wsgiref.simple_server import WSGIRequestHandler

from volplugd.control.access import Peer, groups_of
from volplugd.control.routing import JSON
from volplugd.control.sockio import Body, HeadTooLarge, Reader, Writer
from volplugd.log import get_logger
from volplugd.model import encode

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MAX_HEAD_BYTES", "Site", "serve_connection"]

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; http.client alone allows 100 x 64 KiB
DRAIN_LIMIT = 64 * 1024  # an unread body up to this is skipped to keep the connection
# Closing on unread bytes resets the connection, and a client still sending then never
# reads our answer (a 413, say); so we half-close and swallow a bounded amount first.
LINGER_BYTES = 4 * 1024 * 1024
LINGER_SECONDS = 2.0
_READ_METHODS = frozenset({"GET", "HEAD"})
_PROTOCOL_CODES = {405: "method_not_allowed", 413: "request_too_large",
                   414: "request_too_large", 431: "request_too_large"}

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
    set_idle: Callable[[socket.socket, bool], None]
    base_environ: dict[str, Any] = field(default_factory=lambda: {
        "SERVER_NAME": "localhost", "SERVER_PORT": "0", "GATEWAY_INTERFACE": "CGI/1.1",
        "SCRIPT_NAME": "", "CONTENT_LENGTH": "", "REMOTE_HOST": ""})


class _Handler(SimpleHandler):
    """wsgiref's response side: HTTP/1.1, keep-alive decided as headers go out."""

    http_version = "1.1"
    server_software = "volplugd"
    os_environ: dict[str, str] = {}  # not the daemon's environment in every request
    wsgi_multithread = True
    wsgi_multiprocess = False
    headers: Headers | None  # set by wsgiref (undocumented, so not in its stubs)
    status: str | None

    def __init__(self, conn: _Connection, environ: dict[str, Any], body: Body):
        super().__init__(body, cast(IO[bytes], conn.out), sys.stderr, environ)
        self.conn = conn
        self.completed = False

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        assert self.headers is not None
        assert self.status is not None
        if self.status.startswith(("204", "304")):
            del self.headers["Content-Length"]  # no body by definition (RFC 9110)
        elif "Content-Length" not in self.headers:
            self.conn.close_connection = True  # a stream: its end is the connection's
        if not self.conn.keep_after_reply():
            self.headers["Connection"] = "close"

    def finish_response(self) -> None:
        super().finish_response()
        self.completed = True

    def error_output(self, environ: WSGIEnvironment,
                     start_response: StartResponse) -> list[bytes]:
        body = encode({"error": {"code": "internal_error",
                                 "message": "internal error; the daemon logged it"}})
        start_response("500 Internal Server Error",
                       [("Content-Type", JSON), ("Content-Length", str(len(body)))],
                       sys.exc_info())
        return [body]

    def log_exception(self, exc_info: Any) -> None:
        if isinstance(exc_info[1], OSError):  # the client went away or stopped reading
            _log.info("control_client_write_failed", error=str(exc_info[1]))
        else:
            _log.error("control_request_crashed", exc_info=exc_info)


class _Connection(WSGIRequestHandler):
    """Serves requests on one accepted socket until it closes or must close."""

    protocol_version = "HTTP/1.1"
    server_version = "volplugd"
    sys_version = ""
    server: Any  # the Site (BaseRequestHandler calls it "server")

    def setup(self) -> None:
        self.site: Site = self.server
        self.connection = sock = self.request
        self._reader = Reader(sock)
        self.rfile = self.inp = io.BufferedReader(self._reader, 16 * 1024)
        self.wfile = self.out = io.BufferedWriter(Writer(sock, self.site.read_timeout),
                                                  64 * 1024)
        self.peer, self.groups = _credentials(sock)
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
        if not unread or self.site.stopping.is_set():
            return
        self.connection.shutdown(socket.SHUT_WR)
        self._reader.deadline = time.monotonic() + min(LINGER_SECONDS, self.site.read_timeout)
        left = LINGER_BYTES
        while left > 0 and (chunk := self.inp.read1(65536)):
            left -= len(chunk)

    # -- reading a request head --

    def _next_request(self, first: bool) -> bool:
        self._reader.deadline = time.monotonic() + self.site.read_timeout
        self._reader.budget = MAX_HEAD_BYTES
        idle = not first
        try:
            if idle and not self._wait_while_idle():
                return False
            idle = False
            return self._read_head()
        except HeadTooLarge:
            self.send_error(431, "request head is over the limit")
        except TimeoutError:
            # An idle keep-alive connection timing out is normal; a request that started
            # and did not finish in time is a slow (or hostile) client.
            event = "control_idle_connection_closed" if idle else "control_client_too_slow"
            (_log.debug if idle else _log.info)(event, pid=self.peer and self.peer.pid,
                                                 timeout=self.site.read_timeout)
        except OSError:
            pass  # reset, or shut down by stop()
        return False

    def _wait_while_idle(self) -> bool:
        """Between keep-alive requests the server may reclaim this slot (when full)."""
        self.site.set_idle(self.connection, True)
        try:
            return bool(self.inp.peek(1))
        finally:
            self.site.set_idle(self.connection, False)

    def _read_head(self) -> bool:
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
            self.send_error(414, "request line is over the limit")
            return False
        if not self.raw_requestline:
            return False
        ok = bool(self.parse_request())
        self._reader.budget = None
        return ok

    def handle_expect_100(self) -> bool:
        self._expecting = True  # answered only when the app reads the body
        return True

    # -- one request through the WSGI app --

    def _serve_one(self) -> None:
        length = self._framing()
        if length is None:
            return
        self._body = body = Body(self.inp, length, self._send_continue)
        handler = _Handler(self, self._environ(), body)
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
        """The body length, or None after refusing a request we cannot frame."""
        if self.headers.get("Transfer-Encoding"):
            self.send_error(411, "send the body with a Content-Length")
            return None
        if self.site.read_only and self.command not in _READ_METHODS:
            self.send_error(405, "this listener is read-only")
            return None
        values = self.headers.get_all("Content-Length") or ["0"]
        value = values[0].strip()
        if len(values) > 1 or not value.isascii() or not value.isdigit():
            self.send_error(400, "Content-Length must be a non-negative integer")
            return None
        return int(value)

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
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # answers are counted by on_request; connection trouble is logged by name


def _credentials(sock: socket.socket) -> tuple[Peer | None, frozenset[int]]:
    if sock.family != socket.AF_UNIX:
        return None, frozenset()
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    peer = Peer(*struct.unpack("3i", raw))
    return peer, groups_of(peer.uid, peer.gid)


def serve_connection(sock: socket.socket, site: Site) -> None:
    """Serve ``sock`` until it is done; the caller closes it."""
    address = ("local", 0) if sock.family == socket.AF_UNIX else sock.getpeername()
    _Connection(sock, address, cast(Any, site))
