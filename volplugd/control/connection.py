"""One HTTP/1.1 connection, served by our own small server: heads read strictly, each
request handed to the app as a ``Request``, its ``Reply`` written whole.

It starts on its listener's event loop, which answers requests the app can answer at
once from memory (``Site.inline``) without a thread hand-off; the same bytes sent again
(a poller's) reuse the head and ``Request`` made of them, and the app answers anew. The
first request that may wait (a plugin call, a stream, a body, a head to refuse, an
answer the client is slow to take) moves the connection to a thread of its own
(``run``) until it closes.

In order: the next head is read under a deadline (the first within
``first_request_timeout``, a later one within ``read_timeout`` of its first byte) and a
byte budget, parsed strictly (``head.parse_head``: a malformed head gets its 4xx, never
a traceback); a ``Host`` the listener must not serve gets 421, anything but GET and
HEAD on a read-only listener 405; the app gets a ``Request`` with the peer's credentials
and a body that sends ``100 Continue`` only when read; the answer leaves in one
``sendmsg``; the connection is kept when the answer has a length and nothing forbids
it. Protocol errors are JSON. A connection closed on unread bytes would be reset under a
client still sending (it would never read our 413): it is half-closed and a bounded
amount swallowed first.
Runs on: the loop thread (``receive``, ``serve_buffered``), then its own (``run``).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time

from volplugd.control.access import Peer, cached_groups, groups_of
from volplugd.control.head import MEMO_HEAD_BYTES, BadHead, Head
from volplugd.control.replies import CRASHED, protocol_error, reply_head
from volplugd.control.routing import MustWait, Reply, Request
from volplugd.control.site import READ_METHODS, Site, Step
from volplugd.control.sockio import RECV_SIZE, Body, HeadTooLarge, Wire
from volplugd.log import get_logger

__all__ = ["DRAIN_LIMIT", "PROTOCOL_ERRORS", "Connection"]

DRAIN_LIMIT = 64 * 1024  # an unread body up to this is skipped to keep the connection
# A unix socket's default send buffer (~200 KiB) takes the plugin list of 1,000 plugins
# (~0.5 MB) in three writes; with this (the kernel doubles it) it leaves in one, from the
# loop. Kernel memory, held only while a client has not read its answer yet.
SEND_BUFFER = 512 * 1024
LINGER_BYTES, LINGER_SECONDS = 4 * 1024 * 1024, 2.0  # swallowed at most, before close
_NO_BODY = (204, 304)
PROTOCOL_ERRORS = frozenset({"too_many_connections"})
"""Codes the control socket's server answers by itself, beyond the app's error table
(``misdirected_request`` is the TCP listener's only)."""
_HEAD_TOO_LARGE = "request head is over the limit"
_MISDIRECTED = "this listener answers only requests for localhost, 127.0.0.0/8 or [::1]"

_log = get_logger(__name__)


def _nothing() -> None:
    pass


class Connection:
    """Serves requests on one accepted socket until it closes or must close."""

    def __init__(self, sock: socket.socket, site: Site, peer: Peer | None,
                 accepted_at: float):
        self.sock = sock
        if sock.family == socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.site = site
        self.peer = peer
        # The access rule's groups: none without credentials, root's gid (root may do
        # all), a user's if cached (None: a thread asks the user database; never the loop).
        self.groups: frozenset[int] | None = (
            frozenset() if peer is None else frozenset({peer.gid}) if peer.uid == 0
            else cached_groups(peer.uid, peer.gid))
        sock.setblocking(False)  # it starts on the loop
        self.wire = Wire(sock, site.read_timeout, blocking=False)
        self.accepted_at = accepted_at
        self.method = ""
        self._empty = Body(self.wire, 0, _nothing)  # every request without a body (never asks)
        self.body = self._empty
        self.expecting = False  # a 100 Continue is owed when the app reads the body
        self.refused = False  # a protocol error: the client may still be sending
        self.answered = False  # the head of the current request's answer went out
        # on the loop: the head being waited for, and the deadline it must meet
        self.first = True  # no request answered yet
        self.idle = False  # a keep-alive connection that has not sent its next byte
        self.started = accepted_at  # when the head being read began (its first byte)
        self.deadline = accepted_at + min(site.first_request_timeout, site.read_timeout)
        self.ready: Head | None = None  # a head read on the loop, served by ``run``
        self.refusal: tuple[int, str] | None = None  # a head the loop found malformed
        self.keep = True  # whether the connection stays after the last answer
        # the bytes, head and request the loop answered last (an empty buffer after)
        self._again: tuple[bytes, Head, Request] | None = None

    # -- on the listener's event loop --

    def receive(self) -> bool:
        """One read without blocking; False when the client closed (or reset) it."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.wire.buf.clear()
            return False
        if self.idle and data:
            self.idle = False
            self.started = time.monotonic()
            self.deadline = self.started + self.site.read_timeout
        self.wire.received += len(data)
        self.wire.buf += data
        return bool(data)

    def serve_buffered(self) -> Step:
        """Answer the next complete head in the buffer, if the loop may answer it itself:
        one per call, so that every connection with work gets its turn."""
        site, wire = self.site, self.wire
        again = self._again
        if again is None or wire.buf != again[0]:
            raw = bytes(wire.buf) if len(wire.buf) <= MEMO_HEAD_BYTES else b""
            head, request = self._buffered_head(), None
            if head is None:  # a refusal, or one over budget (414, 431), lingers: a thread's
                return Step.THREAD if self.refusal or wire.head_over_budget() else Step.WAIT
        else:  # the bytes of the last request again
            wire.buf.clear()
            raw, head, request = again
        # Waiting or at work matters only to eviction, which runs on this thread: the
        # connection stops waiting only if a thread takes it over at work.
        wire.deadline = self.started + site.read_timeout  # for a body, on a thread
        self.method = head.method
        try:
            if request is None:
                if self.groups is None or not site.inline(head):
                    raise MustWait
                request = self._request(head)
            self.keep = self._serve(head, request)
        except MustWait:  # nothing of an answer was sent
            self.ready = head
            site.set_idle(self.sock, False)
            return Step.THREAD
        self._again = (raw, head, request) if raw and not wire.buf else None
        if wire.unsent:
            site.set_idle(self.sock, False)
            return Step.THREAD  # the client is slow to read: a thread waits for it
        if not self.keep or site.stopping.is_set():
            return Step.CLOSE
        self.first, self.idle = False, not wire.buf
        self.started = time.monotonic()
        self.deadline = self.started + site.read_timeout
        wire.received = len(wire.buf)
        site.set_idle(self.sock, True)
        return Step.AGAIN if wire.buf else Step.WAIT

    def _buffered_head(self) -> Head | None:
        """The head in the buffer; None if it is not all there yet, or with the
        ``refusal`` a thread must send."""
        wire = self.wire
        try:
            head = wire.whole_head()
            if head is None and wire.has_head():
                head = wire.read_head()  # all there but over a limit: says which
        except HeadTooLarge:
            self.refusal = (431, _HEAD_TOO_LARGE)
        except BadHead as bad:
            self.refusal = (bad.status, bad.message)
        else:
            return head
        return None

    # -- on a thread of its own --

    def run(self) -> None:
        """Serve until the connection ends: first what the loop handed over (an answer
        still being sent, a head read), then request after request."""
        try:
            self.wire.blocking = True  # each read and write sets its own timeout
            if self.wire.unsent:
                self.wire.flush()
                if not self.keep:
                    return
                self.first = False
            if self.refusal is not None:
                self._refuse(*self.refusal)
                return
            ready, self.ready = self.ready, None  # served even if stopping: it was read
            while ready is not None or not self.site.stopping.is_set():
                head = self._next_head(self.first) if ready is None else self._accept(ready)
                ready = None
                if head is None or not self._serve(head):
                    return
                self.first = False
        except OSError:
            return  # the client went away while its answer was sent
        finally:
            with contextlib.suppress(OSError):
                self._linger()
            self.body = self._empty  # a body holds our ``_send_continue``: no cycle for the GC

    def _linger(self) -> None:
        if (self.refused or self.body.remaining) and not self.site.stopping.is_set():
            self.wire.linger(min(LINGER_SECONDS, self.site.read_timeout), LINGER_BYTES)

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
            self._refuse(431, _HEAD_TOO_LARGE)
        except BadHead as bad:
            self._refuse(bad.status, bad.message)
        except TimeoutError:
            self.log_timeout(idle)
        except OSError:
            pass  # reset, or shut down by stop() or to make room
        else:
            if head is not None:
                wire.deadline = started + site.read_timeout  # for the body
                return self._accept(head)
        finally:
            site.set_idle(self.sock, False)
        return None

    def log_timeout(self, idle: bool | None = None) -> None:
        """Its deadline passed (``idle`` None: the loop's). An idle keep-alive connection,
        or one that never sent a byte, timing out is normal (and cheap to cause: logged
        at debug); a request that started and did not finish in time is a slow (or
        hostile) client."""
        idle = self.idle if idle is None else idle
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
        if self.site.read_only and head.method not in READ_METHODS:
            self._refuse(405, "this listener is read-only")
            return None
        return head

    def _refuse(self, code: int, message: str) -> None:
        """A protocol error: its JSON answer, then the connection ends."""
        self.refused = True
        head, body = protocol_error(code, message)
        with contextlib.suppress(OSError):
            self.wire.send(head, b"" if self.method == "HEAD" else body)

    # -- one request through the app --

    def _serve(self, head: Head, request: Request | None = None) -> bool:
        """Answer one request (``request``: made already, on the loop); True if the
        connection may serve another."""
        keep = head.keep_alive
        self.answered = False
        try:
            if request is None:
                request = self._request(head)
            keep = self._send(self.site.app(request), keep)
        except OSError as err:  # the client went away, or stopped reading
            _log.info("control_client_write_failed", error=str(err))
            return False
        except MustWait:
            raise
        except Exception:  # noqa: BLE001 — logged; the client gets a JSON 500
            _log.error("control_request_crashed", exc_info=sys.exc_info())
            if self.answered:
                return False
            try:
                keep = self._send(CRASHED, keep)
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
        self.body = body = Body(self.wire, length, self._send_continue) if length else self._empty
        if self.groups is None:  # on a thread (the loop hands such a request over)
            assert self.peer is not None
            self.groups = groups_of(self.peer.uid, self.peer.gid)
        return self.site.request(head, body, self.peer, self.groups,
                                 inline=not self.wire.blocking, disconnected=self.wire.gone)

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
        return keep and not self.site.stopping.is_set() and self.site.may_keep_alive()

    def _send_continue(self) -> None:
        if self.expecting:
            self.expecting = False
            self.wire.send(b"HTTP/1.1 100 Continue\r\n\r\n")

