"""Many plugin calls at once on one thread: non-blocking unix sockets, one selector.

``PluginClient`` makes one blocking call per thread through requests' stack: right for
volume operations, too dear for a daemon that activates and health-probes a thousand
plugins (about 1 ms of CPU a call, plus a hand-off to a worker thread and back). A
``Multiplexer`` drives the same calls — Activate, Capabilities and List, with the
client's request bytes, deadline, size cap, answer interpretation and error wording —
as non-blocking exchanges on the thread that calls ``poll``, keeping one keep-alive
connection per key. llhttp (through httptools) parses the answers.

Unix sockets only: TCP and TLS plugins are few, and ``PluginClient`` serves them.

Runs on: one thread (``call``, ``poll``, ``forget``, ``close``); ``wake`` from any thread,
also after ``close`` (then it does nothing).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import http.client
import itertools
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

import httptools

from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginError
from volplugd.plugin.transport import BodyTooLarge

__all__ = ["Done", "Multiplexer"]

#: Called on the polling thread with the call's result (or its PluginError) and seconds.
Done = Callable[[object, float], None]

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024  # status line and headers: http.client's line limit, for all of them
CONNECT_RETRY = 0.01  # a full listen backlog (EAGAIN): try to connect again this soon


class _Answer:
    """httptools' callbacks for one answer: the head's length rule, the body, the end."""

    __slots__ = ("body", "complete", "declared", "head_done", "keep_alive", "limit",
                 "parser", "until_close")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.body = bytearray()
        self.declared: int | None = None
        self.head_done = False
        self.until_close = False  # no length and not chunked: the body ends at EOF
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length" and value.strip().isdigit():
            self.declared = int(value)
            if self.declared > self.limit:
                raise BodyTooLarge(self.limit, self.declared)

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.until_close = self.declared is None and not self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.limit:
            raise BodyTooLarge(self.limit)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


class _Call:
    """One call in flight: its request, its connection and what came back so far."""

    __slots__ = ("answer", "client", "deadline", "done", "dropped", "endpoint", "head_bytes", "key",
                 "pending", "received", "request", "reused", "seconds", "sock", "started",
                 "writing")

    def __init__(self, key: Hashable, client: PluginClient, endpoint: str, done: Done, *,
                 request: bytes, seconds: float, started: float) -> None:
        self.key, self.client, self.endpoint, self.done = key, client, endpoint, done
        self.request, self.seconds, self.started = request, seconds, started
        self.deadline = started + seconds
        self.sock: socket.socket | None = None
        self.reused = False  # on a kept-alive connection
        self.writing = False  # the selector also waits for room to send the rest
        self.dropped = False  # forgotten after it finished, before its done() ran
        self.pending = memoryview(request)  # still to send
        self.received = False
        self.head_bytes = 0
        self.answer = _Answer(client.max_response_bytes)


_WAKE = object()  # the selector data of the wake-up pipe; a connection's is its key


class Multiplexer:
    """Plugin calls over unix sockets, any number at once, at most one per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._wake_lock = threading.Lock()
        self._calls: dict[Hashable, _Call] = {}
        self._idle: dict[Hashable, socket.socket] = {}
        self._timers: list[tuple[float, int, _Call]] = []  # deadlines and connect retries
        self._seq = itertools.count()
        self._finished: deque[tuple[_Call, object]] = deque()  # results not handed over

    # -- the interface ------------------------------------------------------------------
    def call(self, key: Hashable, client: PluginClient, endpoint: str, done: Done,
             timeout: float | None = None) -> None:
        """Start ``endpoint`` on ``client``; a later ``poll`` calls ``done`` exactly once
        (unless ``forget(key)`` comes first). Only one call per key at a time."""
        if key in self._calls:
            raise RuntimeError(f"a call for {key!r} is already in flight")
        started = self._clock()
        try:
            request, seconds = client.begin(endpoint, timeout, connected=key in self._idle)
        except PluginError as err:
            client.report(endpoint, err.outcome, 0.0)
            failed = _Call(key, client, endpoint, done, request=b"", seconds=0.0, started=started)
            self._finished.append((failed, err))
            return
        call = self._calls[key] = _Call(key, client, endpoint, done, request=request,
                                        seconds=seconds, started=started)
        heapq.heappush(self._timers, (call.deadline, next(self._seq), call))
        self._connect(call)

    def busy(self, key: Hashable) -> bool:
        """Whether a call for ``key`` is in flight."""
        return key in self._calls

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s call (its ``done`` is never called, even if it has already
        finished and only waits to be handed over) and its connection."""
        call = self._calls.pop(key, None)
        if call is not None:
            self._close(call.sock)
        for ended, _ in self._finished:
            ended.dropped |= ended.key == key
        self._close(self._idle.pop(key, None))

    def wake(self) -> None:
        """Make a ``poll`` on another thread return now. Any thread; never blocks."""
        with self._wake_lock:  # close() must not free the fd under a write
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):  # full: poll wakes anyway
                    os.write(self._wake_w, b"\0")

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for I/O or ``wake``; run the ``done`` of every
        call that finished (or timed out)."""
        now = self._clock()
        if self._finished:
            timeout = 0.0
        elif self._timers:
            timeout = min(timeout, self._timers[0][0] - now)
        for ready, mask in self._selector.select(max(0.0, timeout)):
            if ready.data is _WAKE:
                self._drain_wake()
                continue
            call = self._calls.get(ready.data)
            if call is not None and call.sock is ready.fileobj:
                self._on_ready(call, mask)
            elif self._idle.get(ready.data) is ready.fileobj:  # EOF or stray bytes
                self._close(self._idle.pop(ready.data))
        self._run_timers(self._clock())
        while self._finished:  # a done() may forget a key, or start a call that ends at once
            call, result = self._finished.popleft()
            if not call.dropped:
                call.done(result, self._clock() - call.started)

    def close(self) -> None:
        """Close every connection and the selector; pending calls are dropped."""
        for key in list(self._calls) + list(self._idle):
            self.forget(key)
        self._selector.close()
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1

    # -- connecting and sending ---------------------------------------------------------
    def _connect(self, call: _Call) -> None:
        sock = self._idle.pop(call.key, None)  # still registered, under the same key
        call.reused = sock is not None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            code = sock.connect_ex(call.client.address.target)
            if code == errno.EAGAIN:  # the backlog is full: the plugin is not accepting
                sock.close()
                heapq.heappush(self._timers,
                               (self._clock() + CONNECT_RETRY, next(self._seq), call))
                return
            if code:
                sock.close()
                self._fail(call, _os_error(code), "send")
                return
            # Registered until closed: readable is an answer, or the end of an idle one.
            self._selector.register(sock, selectors.EVENT_READ, call.key)
        call.sock = sock
        self._send(call)

    def _send(self, call: _Call) -> None:
        assert call.sock is not None
        try:
            sent = call.sock.send(call.pending)
        except BlockingIOError:
            sent = 0
        except OSError as err:
            if call.reused and len(call.pending) == len(call.request):
                # The plugin closed the kept-alive connection before any of this request
                # reached it (a unix socket says so at once): send it on a new one.
                self._close(call.sock)
                call.sock = None
                self._connect(call)
            else:
                self._fail(call, err, self._phase(call))
            return
        call.pending = call.pending[sent:]
        if bool(call.pending) != call.writing:  # writable matters only mid-request
            self._writable(call.sock, call.key, writing=not call.writing)
            call.writing = not call.writing

    def _writable(self, sock: socket.socket, key: Hashable, *, writing: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        self._selector.modify(sock, events, key)

    # -- receiving ----------------------------------------------------------------------

    def _on_ready(self, call: _Call, mask: int) -> None:
        sock = call.sock
        if mask & selectors.EVENT_WRITE and call.pending:
            self._send(call)  # may end the call, or move it to a new connection
        if mask & selectors.EVENT_READ and call.sock is sock and self._calls.get(call.key) is call:
            self._receive(call)

    def _receive(self, call: _Call) -> None:
        assert call.sock is not None
        try:
            data = call.sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError as err:
            self._fail(call, err, self._phase(call))
            return
        answer = call.answer
        if not data:
            if answer.head_done and answer.until_close:
                self._succeed(call, keep=False)  # an HTTP/1.0-style body ends at EOF
            else:  # never sent again: the plugin may have acted on it (Go does the same)
                self._fail(call, ConnectionResetError("EOF"), self._phase(call))
            return
        first, call.received = not call.received, True
        try:
            answer.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:  # BodyTooLarge, from a callback
            cause = err.__context__
            self._fail(call, cause if isinstance(cause, Exception) else err, "read")
            return
        except httptools.HttpParserError as err:
            if answer.complete:  # stray bytes after a whole answer: keep the answer only
                self._succeed(call, keep=False)
            else:
                self._fail(call, _not_http(err, data if first else b""), self._phase(call))
            return
        if not answer.head_done:
            call.head_bytes += len(data)
            if call.head_bytes > MAX_HEAD:
                self._fail(call, http.client.LineTooLong("header section"), "send")
        elif answer.complete:
            self._succeed(call, keep=answer.keep_alive)

    @staticmethod
    def _phase(call: _Call) -> str:
        return "read" if call.answer.head_done else "send"

    # -- endings ------------------------------------------------------------------------
    def _succeed(self, call: _Call, *, keep: bool) -> None:
        self._end(call, keep=keep)
        answer = call.answer
        status = answer.parser.get_status_code()
        try:
            result: object = call.client.conclude(call.endpoint, status, bytes(answer.body))
        except PluginError as err:
            result = err
        self._report(call, result)

    def _fail(self, call: _Call, error: Exception, phase: str) -> None:
        self._end(call, keep=False)
        self._report(call, call.client.failure(error, phase, call.endpoint, call.seconds))

    def _report(self, call: _Call, result: object) -> None:
        outcome = result.outcome if isinstance(result, PluginError) else "success"
        call.client.report(call.endpoint, outcome, self._clock() - call.started)
        self._finished.append((call, result))

    def _end(self, call: _Call, *, keep: bool) -> None:
        del self._calls[call.key]
        sock, call.sock = call.sock, None
        if sock is None:
            return
        if keep:
            self._idle[call.key] = sock
            if call.writing:  # answered before it was all sent
                self._writable(sock, call.key, writing=False)
        else:
            self._close(sock)

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            when, _, call = heapq.heappop(self._timers)
            if self._calls.get(call.key) is not call:
                continue  # finished, or forgotten
            if when >= call.deadline:
                self._fail(call, TimeoutError("deadline passed"), self._phase(call))
            elif call.sock is None:
                self._connect(call)  # the retry of a connect the backlog refused

    def _close(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        self._selector.unregister(sock)
        sock.close()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass


def _os_error(code: int) -> OSError:
    """The exception a blocking connect would raise for ``code``."""
    kinds: dict[int, type[OSError]] = {errno.ECONNREFUSED: ConnectionRefusedError,
                                       errno.ENOENT: FileNotFoundError}
    return kinds.get(code, OSError)(code, os.strerror(code))


def _not_http(err: Exception, first: bytes) -> http.client.HTTPException:
    """What http.client says of an answer that is not HTTP: its first line when that
    is not a status line, else the parser's own words."""
    if first and not first.startswith(b"HTTP/"):
        line = first.split(b"\n", 1)[0] + (b"\n" if b"\n" in first else b"")
        return http.client.BadStatusLine(line.decode("iso-8859-1"))
    return http.client.HTTPException(str(err))
