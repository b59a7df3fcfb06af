"""One HTTP/1.1 connection on its own thread: heads read strictly, each request handed
to the app as a ``Request``, its ``Reply`` written, keep-alive.

In order: the next head is read under a deadline (the first within
``first_request_timeout`` of the accept, a later one within ``idle_timeout`` of the
last answer for its first byte and ``read_timeout`` from there) and within the head's
bounds (``wire.Wire.read_head``: a malformed head gets its 4xx, never a traceback); a
``Host`` the listener must not serve gets 421, anything but GET and HEAD on a read-only
listener 405; the app gets a ``Request`` with the peer's credentials and groups and a
body that sends ``100 Continue`` only when read; the connection is kept when the answer
has a length and nothing forbids it. Protocol errors are in the app's own shape
(``Rules.protocol_error``). A connection closed on unread bytes would be reset under a
client still sending (it would never read our 413): it is half-closed and a bounded
amount swallowed first.
Runs on: the connection's own thread (started by ``serving.server.Server``).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from volplugd.admission import Refusal
from volplugd.log import get_logger
from volplugd.serving.head import READ_METHODS, BadHead, Head
from volplugd.serving.messages import Application, Reply, Request, reply_head
from volplugd.serving.peers import Peer, groups_of
from volplugd.serving.wire import Body, HeadTooLarge, RequestTimeout, Wire

__all__ = ["DRAIN_LIMIT", "FIRST_REQUEST_TIMEOUT", "HEAD_TOO_LARGE", "Client", "Hooks",
           "Rules", "serve"]

# A new connection must deliver its first head this soon: a client that connects and says
# nothing holds a slot (and a thread) for seconds at most, not a whole read_timeout.
FIRST_REQUEST_TIMEOUT = 2.0
DRAIN_LIMIT = 64 * 1024  # an unread body up to this is skipped to keep the connection
LINGER_BYTES, LINGER_SECONDS = 4 * 1024 * 1024, 2.0  # swallowed at most, before close
_NO_BODY = (204, 304)
HEAD_TOO_LARGE = "request head is over the limit"
_MISDIRECTED = "this listener answers only requests for localhost, 127.0.0.0/8 or [::1]"

_log = get_logger(__name__)


@dataclass(frozen=True)
class Rules:
    """What one server's connections share: its app, deadlines and rules."""

    app: Application
    protocol_error: Callable[[int, str], Reply]  # (status, message): the app's error shape
    read_timeout: float = 10.0  # from a request's first byte to its last; each write
    first_request_timeout: float = FIRST_REQUEST_TIMEOUT
    idle_timeout: float | None = None  # between keep-alive requests; None: read_timeout
    read_only: bool = False  # GET and HEAD only (405 otherwise)
    host_allowed: Callable[[str | None], bool] | None = None  # None: any Host
    events: str = "control"  # the prefix of this server's log events


@dataclass(eq=False)
class Client:
    """An accepted connection: its socket, who connected (None: no credentials, as on
    TCP), when, on which listening socket, and its groups once known."""

    sock: socket.socket
    peer: Peer | None
    accepted_at: float
    listener: str = ""
    groups: frozenset[int] | None = None


class Hooks:
    """What a connection asks of its server (``serving.server.Server`` implements it)."""

    def set_idle(self, sock: socket.socket, idle: bool) -> bool:
        """The connection starts (True) or stops waiting for a head; False if its slot
        was taken away meanwhile (it must not serve a request)."""
        raise NotImplementedError

    def may_keep_alive(self) -> bool:
        raise NotImplementedError

    def follow_slot(self, peer: Peer | None,
                    groups: frozenset[int]) -> Callable[[], None] | Refusal:
        """One of this peer's follow-stream slots: its release, or why there is none."""
        raise NotImplementedError


def serve(client: Client, rules: Rules, hooks: Hooks, stopping: threading.Event) -> None:
    """Serve requests on ``client.sock`` until it closes or must close (not closing it)."""
    _Connection(client, rules, hooks, stopping).run()


class _Connection:
    def __init__(self, client: Client, rules: Rules, hooks: Hooks,
                 stopping: threading.Event):
        self.sock = client.sock
        self.rules = rules
        self.hooks = hooks
        self.stopping = stopping
        self.peer = client.peer
        self.groups = client.groups
        self.accepted_at = client.accepted_at
        self.listener = client.listener
        self.wire = Wire(client.sock, rules.read_timeout)
        self.method = ""
        self.empty = Body(self.wire, 0, _nothing)
        self.body = self.empty
        self.expecting = False  # a 100 Continue is owed when the app reads the body
        self.refused = False  # a protocol error: the client may still be sending
        self.answered = False  # the head of the current request's answer went out

    def run(self) -> None:
        first = True
        try:
            while not self._stopping():
                head = self._next_head(first)
                if head is None or not self._serve(head):
                    return
                first = False
        except OSError:
            return  # the client went away while its answer was sent
        finally:
            with contextlib.suppress(OSError):
                self._linger()
            self.body = self.empty  # a body holds our ``_send_continue``: no cycle for the GC

    def _stopping(self) -> bool:
        return self.stopping.is_set()

    def _linger(self) -> None:
        if (self.refused or self.body.remaining) and not self._stopping():
            self.wire.linger(min(LINGER_SECONDS, self.rules.read_timeout), LINGER_BYTES)

    # -- reading a request head --

    def _next_head(self, first: bool) -> Head | None:
        """Read and check the next head; None when the connection is done."""
        rules, wire = self.rules, self.wire
        wire.received, self.method = 0, ""
        idle = not first
        head = None
        self.hooks.set_idle(self.sock, True)  # until its head is in, its slot may be taken
        try:
            started = self.accepted_at
            wire.deadline = started + min(rules.first_request_timeout, rules.read_timeout)
            if idle:
                wire.deadline = time.monotonic() + (rules.idle_timeout or rules.read_timeout)
                if not wire.buf and not wire.fill():
                    return None
                started = time.monotonic()
                wire.deadline = started + rules.read_timeout
                idle = False
            head = wire.read_head()
        except HeadTooLarge:
            self._refuse(431, HEAD_TOO_LARGE)
        except BadHead as bad:
            self._refuse(bad.status, bad.message)
        except RequestTimeout:
            self._log_timeout(idle)
        except OSError:
            pass  # reset, or shut down by stop() or to make room
        finally:
            kept = self.hooks.set_idle(self.sock, False)  # False: evicted meanwhile
        if head is None or not kept:
            return None  # closed, refused, or evicted to make room while its head came in
        wire.deadline = started + rules.read_timeout  # for the body
        return self._accept(head)

    def _log_timeout(self, idle: bool) -> None:
        """An idle keep-alive connection, or one that never sent a byte, timing out is
        normal (and cheap to cause: logged at debug); a request that started and did not
        finish in time is a slow (or hostile) client."""
        pid = self.peer and self.peer.pid
        events = self.rules.events
        if idle or self.wire.received == 0:
            event = "idle_connection_closed" if idle else "connection_silent"
            _log.debug(f"{events}_{event}", pid=pid)
        else:
            _log.info(f"{events}_client_too_slow", pid=pid, timeout=self.rules.read_timeout)

    def _accept(self, head: Head) -> Head | None:
        """The head, unless this listener must refuse its Host or its method."""
        self.method = head.method
        self.expecting = head.expects_continue
        allowed = self.rules.host_allowed
        if allowed is not None and not allowed(head.get("Host")):
            self._refuse(421, _MISDIRECTED)
            return None
        if self.rules.read_only and head.method not in READ_METHODS:
            self._refuse(405, "this listener is read-only")
            return None
        return head

    def _refuse(self, status: int, message: str) -> None:
        """A protocol error: its answer in the app's shape, then the connection ends."""
        self.refused = True
        reply = self.rules.protocol_error(status, message)
        if status == 405:
            reply = reply._replace(headers=(*reply.headers, ("Allow", "GET, HEAD")))
        body = reply.body if isinstance(reply.body, bytes) else b""
        with contextlib.suppress(OSError):
            self.wire.send(reply_head(reply, len(body), keep=False),
                           b"" if self.method == "HEAD" else body)

    # -- one request through the app --

    def _serve(self, head: Head) -> bool:
        """Answer one request; True if the connection may serve another."""
        keep = head.keep_alive
        self.answered = False
        try:
            keep = self._send(self.rules.app(self._request(head)), keep)
        except OSError as err:  # the client went away, or stopped reading
            _log.info(f"{self.rules.events}_client_write_failed", error=str(err))
            return False
        except Exception:  # noqa: BLE001 — logged; the client gets a 500 in the app's shape
            _log.error(f"{self.rules.events}_request_crashed", exc_info=sys.exc_info())
            if self.answered:
                return False
            try:
                crashed = self.rules.protocol_error(500, "internal error; the daemon logged it")
                keep = self._send(crashed, keep)
            except OSError:
                return False
        if keep and self.body.remaining:
            try:
                self.body.drain()
            except OSError:  # too slow, or gone: this connection is done
                return False
        return keep

    def _request(self, head: Head) -> Request:
        """What the app gets for ``head``; its body is read from the wire when asked."""
        length = head.content_length
        self.body = Body(self.wire, length, self._send_continue) if length else self.empty
        peer = self.peer
        if self.groups is None:  # asked once per connection, on this thread
            self.groups = _groups(peer)
        path, _, query_string = head.target.partition("?")
        return Request(head.method.upper(), path, query_string, length, self.body, peer,
                       self.groups, self.stopping, self.wire.gone, self.hooks.follow_slot,
                       self.listener)

    def _send(self, reply: Reply, keep: bool) -> bool:
        """Send the reply; whether the connection stays open after it."""
        content = reply.body
        bare = reply.status in _NO_BODY or self.method == "HEAD"  # the head alone goes out
        if isinstance(content, bytes):
            keep = self._may_keep(keep)
            length = None if reply.status in _NO_BODY else len(content)
            self.answered = True
            self.wire.send(reply_head(reply, length, keep=keep), b"" if bare else content)
            return keep
        try:  # a stream: its end is the connection's (the head alone for HEAD)
            keep = self._may_keep(keep) and bare
            chunks = iter(()) if bare else iter(content)
            first = next(chunks, b"")  # a stream sends b"" to have its head sent at once
            self.answered = True
            self.wire.send(reply_head(reply, None, keep=keep), first)
            for chunk in chunks:
                self.wire.send(chunk)
            return keep
        finally:
            close = getattr(content, "close", None)
            if close is not None:
                close()

    def _may_keep(self, keep: bool) -> bool:
        """Whether the connection may stay after this answer (``keep``: the client's)."""
        unread = self.body.remaining
        if unread and (unread > DRAIN_LIMIT or self.expecting):
            return False
        return keep and not self._stopping() and self.hooks.may_keep_alive()

    def _send_continue(self) -> None:
        if self.expecting:
            self.expecting = False
            self.wire.send(b"HTTP/1.1 100 Continue\r\n\r\n")


def _groups(peer: Peer | None) -> frozenset[int]:
    """The groups the access rule sees: none without credentials, root's gid (root may
    do all), a user's from the user database."""
    if peer is None:
        return frozenset()
    if peer.uid == 0:
        return frozenset({peer.gid})
    return groups_of(peer.uid, peer.gid)


def _nothing() -> None:
    pass
