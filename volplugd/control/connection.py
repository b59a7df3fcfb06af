"""One HTTP/1.1 connection, served by our own small server: heads read strictly, each
request handed to the WSGI app, answers written whole.

What it does, in order: read the next head under a deadline (a connection's first head
within ``first_request_timeout``, any later one within ``read_timeout`` of its first
byte; an idle keep-alive connection waits ``read_timeout``) and within a byte budget;
parse it strictly (``head.parse_head``: any malformed head gets its 4xx, never a
traceback); refuse a ``Host`` the listener must not serve (421) and, on a read-only
listener, any method but GET and HEAD (405); give the app an environ with the peer's
credentials and a ``wsgi.input`` that sends ``100 Continue`` only when the app reads;
write the answer (head and body in one ``sendmsg``); keep the connection when the answer
has a length and nothing forbids it. Protocol errors are JSON. Closing on unread bytes
would reset the connection under a client still sending (it would never read our 413),
so such a connection is half-closed and a bounded amount swallowed first.
Runs on: one thread per connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from volplugd.control.access import Peer, groups_of
from volplugd.control.head import BadHead, Head
from volplugd.control.replies import CRASHED, Answer, protocol_error
from volplugd.control.routing import JSON
from volplugd.control.sockio import MAX_HEAD_BYTES, Body, HeadTooLarge, Wire
from volplugd.log import get_logger

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["FIRST_REQUEST_TIMEOUT", "MAX_HEAD_BYTES", "PROTOCOL_ERRORS", "Site",
           "serve_connection"]

# A new connection must deliver its first head this soon: a client that connects and says
# nothing holds a slot (and a thread) for seconds at most, not a whole read_timeout.
FIRST_REQUEST_TIMEOUT = 2.0
DRAIN_LIMIT = 64 * 1024  # an unread body up to this is skipped to keep the connection
# A unix socket's default send buffer (~200 KiB) takes the plugin list of 1,000 plugins
# (~0.5 MB) in three writes, each waiting for the client to read; with this (the kernel
# doubles it) it leaves in one and the thread is free at once. Kernel memory, held only
# while a client has not read its answer yet.
SEND_BUFFER = 512 * 1024
LINGER_BYTES = 4 * 1024 * 1024
LINGER_SECONDS = 2.0
_READ_METHODS = frozenset({"GET", "HEAD"})
_NO_BODY = ("204", "304")
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
        "SCRIPT_NAME": "", "CONTENT_LENGTH": "", "REMOTE_HOST": "",
        "SERVER_SOFTWARE": "volplugd", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False})


class _Connection:
    """Serves requests on one accepted socket until it closes or must close."""

    def __init__(self, sock: socket.socket, site: Site, peer: Peer | None,
                 accepted_at: float):
        self.sock = sock
        if sock.family == socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.site = site
        self.peer = peer
        self.groups = frozenset() if peer is None else groups_of(peer.uid, peer.gid)
        self.wire = Wire(sock, site.read_timeout)
        self.accepted_at = accepted_at
        self.method = ""
        self.body: Body | None = None
        self.expecting = False  # a 100 Continue is owed when the app reads the body
        self.refused = False  # a protocol error: the client may still be sending
        self.address = "local" if sock.family == socket.AF_UNIX else sock.getpeername()[0]

    def run(self) -> None:
        try:
            first = True
            while not self.site.stopping.is_set():
                head = self._next_head(first)
                if head is None or not self._serve(head):
                    return
                first = False
        finally:
            with contextlib.suppress(OSError):
                self._linger()

    def _linger(self) -> None:
        unread = self.refused or (self.body is not None and self.body.remaining > 0)
        if not unread or self.site.stopping.is_set():
            return
        self.sock.shutdown(socket.SHUT_WR)
        self.wire.deadline = time.monotonic() + min(LINGER_SECONDS, self.site.read_timeout)
        self.wire.buf.clear()
        while self.wire.received < LINGER_BYTES and self.wire.fill():
            self.wire.buf.clear()

    # -- reading a request head --

    def _next_head(self, first: bool) -> Head | None:
        """Read and check the next head; None when the connection is done."""
        site, wire = self.site, self.wire
        wire.received, self.method = 0, ""
        idle = not first
        site.set_idle(self.sock, True)  # until its head is in, its slot may be taken
        try:
            started = self.accepted_at
            wire.deadline = started + min(site.first_request_timeout, site.read_timeout)
            if idle:
                wire.deadline = time.monotonic() + site.read_timeout
                if not wire.buf and not wire.fill():
                    return None
                started = time.monotonic()
                wire.deadline = started + site.read_timeout
                idle = False
            head = wire.read_head()
            if not site.set_idle(self.sock, False):
                return None  # evicted to make room while its head came in
        except HeadTooLarge:
            self._refuse(431, "request head is over the limit")
        except BadHead as bad:
            self._refuse(bad.status, bad.message)
        except TimeoutError:
            self._log_timeout(idle)
        except OSError:
            pass  # reset, or shut down by stop() or to make room
        else:
            if head is not None:
                wire.deadline = started + site.read_timeout  # for the body
                return self._accept(head)
        finally:
            site.set_idle(self.sock, False)
        return None

    def _log_timeout(self, idle: bool) -> None:
        # An idle keep-alive connection, or one that never sent a byte, timing out is
        # normal (and cheap to cause: logged at debug); a request that started and did
        # not finish in time is a slow (or hostile) client.
        pid = self.peer and self.peer.pid
        if idle or self.wire.received == 0:
            event = "control_idle_connection_closed" if idle else "control_connection_silent"
            _log.debug(event, pid=pid)
        else:
            _log.info("control_client_too_slow", pid=pid, timeout=self.site.read_timeout)

    def _accept(self, head: Head) -> Head | None:
        """The head, unless this listener must refuse its Host or its method."""
        self.method = head.method
        self.expecting = head.expects_continue
        allowed = self.site.host_allowed
        if allowed is not None and not allowed(head.get("Host")):
            self._refuse(421, _MISDIRECTED)
            return None
        if self.site.read_only and head.method not in _READ_METHODS:
            self._refuse(405, "this listener is read-only")
            return None
        return head

    def _refuse(self, code: int, message: str) -> None:
        """A protocol error: its JSON answer, then the connection ends."""
        self.refused = True
        head, body = protocol_error(code, message)
        with contextlib.suppress(OSError):
            self.wire.send(head, b"" if self.method == "HEAD" else body)

    # -- one request through the WSGI app --

    def _serve(self, head: Head) -> bool:
        """Answer one request; True if the connection may serve another."""
        self.body = body = Body(self.wire, head.content_length, self._send_continue)
        answer = Answer()
        keep = head.keep_alive
        try:
            result = self.site.app(self._environ(head, body), answer.start_response)
            try:
                keep = self._write(answer, result, keep)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except OSError as err:  # the client went away, or stopped reading
            _log.info("control_client_write_failed", error=str(err))
            return False
        except Exception:  # noqa: BLE001 — logged; the client gets a JSON 500
            _log.error("control_request_crashed", exc_info=sys.exc_info())
            if answer.sent:
                return False
            answer.start_response("500 Internal Server Error", [
                ("Content-Type", JSON), ("Content-Length", str(len(CRASHED)))])
            try:
                keep = self._write(answer, [CRASHED], keep)
            except OSError:
                return False
        if keep and body.remaining:
            try:
                body.drain()
            except OSError:  # too slow, or gone: this connection is done
                return False
        return keep

    def _write(self, answer: Answer, result: Iterable[bytes], keep: bool) -> bool:
        """Send the answer; whether the connection stays open after it."""
        if isinstance(result, list) and len(result) <= 1:
            body = result[0] if result else b""
            if answer.length() is None and not answer.status.startswith(_NO_BODY):
                answer.headers.append(("Content-Length", str(len(body))))
            return self._send_head(answer, keep, body)
        for chunk in result:
            if not answer.sent:
                keep = self._send_head(answer, keep, chunk)
            elif chunk and self.method != "HEAD":
                self.wire.send(chunk)
        if not answer.sent:
            keep = self._send_head(answer, keep, b"")
        return keep

    def _send_head(self, answer: Answer, keep: bool, body: bytes) -> bool:
        """The status line and headers, with ``body`` if any; decides keep-alive."""
        no_body = answer.status.startswith(_NO_BODY)
        if not no_body and answer.length() is None:
            keep = False  # a stream: its end is the connection's
        unread = 0 if self.body is None else self.body.remaining
        if unread and (unread > DRAIN_LIMIT or self.expecting):
            keep = False
        if self.site.stopping.is_set() or not self.site.may_keep_alive():
            keep = False
        head = answer.head(no_body=no_body, keep=keep)
        self.wire.send(head, b"" if no_body or self.method == "HEAD" else body)
        return keep

    def _send_continue(self) -> None:
        if self.expecting:
            self.expecting = False
            self.wire.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _environ(self, head: Head, body: Body) -> dict[str, Any]:
        path, _, query = head.target.partition("?")
        environ = self.site.base_environ.copy()
        environ.update({
            "REQUEST_METHOD": head.method, "SERVER_PROTOCOL": head.version,
            "PATH_INFO": urllib.parse.unquote(path, "iso-8859-1"), "QUERY_STRING": query,
            "REMOTE_ADDR": self.address, "wsgi.input": body,
            "volplugd.raw_path": path, "volplugd.stopping": self.site.stopping,
            "volplugd.disconnected": self._disconnected,
            "volplugd.follow_slot": self.site.follow_slot})
        for name, value in head.fields:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
                if key in environ:
                    environ[key] += "," + value
                    continue
            environ[key] = value
        if self.peer is not None:
            environ["volplugd.peer"] = self.peer
            environ["volplugd.groups"] = self.groups
        return environ

    def _disconnected(self) -> bool:
        """True once the client has hung up (a follow stream then ends)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLRDHUP)
        return bool(poller.poll(0))


def serve_connection(sock: socket.socket, site: Site, peer: Peer | None,
                     accepted_at: float) -> None:
    """Serve ``sock`` until it is done; the caller closes it."""
    _Connection(sock, site, peer, accepted_at).run()
