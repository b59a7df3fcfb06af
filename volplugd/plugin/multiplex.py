"""Many plugin calls at once on one thread: non-blocking unix sockets, one selector.

``PluginClient`` makes one blocking call per thread: right for volume operations, too
dear for a daemon that activates and health-probes a thousand plugins (a thread per
call, and a hand-off to it and back). A ``Multiplexer`` drives the same calls —
Activate, Capabilities and List: the client's ``Exchange`` (request bytes, deadline,
size cap, answer interpretation, error wording) — over non-blocking sockets on the
thread that calls ``poll``, keeping one keep-alive connection per key.

Unix sockets only: TCP and TLS plugins are few, and ``PluginClient`` serves them.

Runs on: one thread (``call``, ``poll``, ``forget``, ``close``); ``wake`` from any thread,
also after ``close`` (then it does nothing).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from volplugd.plugin.client import PluginClient
from volplugd.plugin.errors import PluginError, detached
from volplugd.plugin.exchange import CHUNK, Exchange

__all__ = ["Multiplexer", "OnResult"]

#: Called on the polling thread with the call's result (or its PluginError) and seconds.
OnResult = Callable[[object, float], None]

CONNECT_RETRY = 0.01  # a full listen backlog (EAGAIN): try to connect again this soon


class _Call:
    """One call in flight: its exchange, its connection and what is left to send."""

    __slots__ = ("client", "done", "dropped", "exchange", "key", "pending", "result",
                 "reused", "sock", "started", "writing")

    def __init__(self, key: Hashable, client: PluginClient, done: OnResult, started: float,
                 exchange: Exchange[Any] | None) -> None:
        self.key, self.client, self.done, self.started = key, client, done, started
        self.exchange = exchange  # None: failed before it began
        self.sock: socket.socket | None = None
        self.reused = False  # on a kept-alive connection
        self.writing = False  # the selector also waits for room to send the rest
        self.dropped = False  # forgotten after it finished, before its done() ran
        self.pending = memoryview(exchange.request if exchange else b"")  # still to send
        self.result: object = None


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
        self._finished: deque[_Call] = deque()  # results not handed over yet

    # -- the interface ------------------------------------------------------------------
    def call(self, key: Hashable, client: PluginClient, endpoint: str, done: OnResult,
             timeout: float | None = None) -> None:
        """Start ``endpoint`` on ``client``; a later ``poll`` calls ``done`` exactly once
        (unless ``forget(key)`` comes first). Only one call per key at a time."""
        if key in self._calls:
            raise RuntimeError(f"a call for {key!r} is already in flight")
        started = self._clock()
        try:
            exchange = client.begin(endpoint, started, timeout, connected=key in self._idle)
        except PluginError as err:
            client.report(endpoint, err.outcome, 0.0)
            failed = _Call(key, client, done, started, None)
            failed.result = detached(err)  # kept as data: no frames held
            self._finished.append(failed)
            return
        call = self._calls[key] = _Call(key, client, done, started, exchange)
        heapq.heappush(self._timers, (exchange.deadline, next(self._seq), call))
        self._connect(call, exchange)

    def busy(self, key: Hashable) -> bool:
        """Whether a call for ``key`` is in flight."""
        return key in self._calls

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s call (its ``done`` is never called, even if it has already
        finished and only waits to be handed over) and its connection."""
        call = self._calls.pop(key, None)
        if call is not None:
            self._close(call.sock)
            if call.exchange is not None:  # its timer entry stays until the deadline
                call.exchange.abandon()
                call.exchange = None
        for ended in self._finished:
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
            call = self._finished.popleft()
            result, call.result = call.result, None  # its timer entry may outlive it
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

    # -- connecting, sending, receiving ---------------------------------------------------
    def _connect(self, call: _Call, exchange: Exchange[Any]) -> None:
        sock = self._idle.pop(call.key, None)  # still registered, under the same key
        call.reused = sock is not None
        if sock is None:
            try:  # no descriptor left (EMFILE, ENFILE): this call fails, the others go on
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            except OSError as err:
                exchange.fail(err, self._clock())
                self._end(call, exchange)
                return
            sock.setblocking(False)
            code = sock.connect_ex(call.client.address.target)
            if code == errno.EAGAIN:  # the backlog is full: the plugin is not accepting
                sock.close()
                heapq.heappush(self._timers,
                               (self._clock() + CONNECT_RETRY, next(self._seq), call))
                return
            if code:
                sock.close()
                exchange.fail(_os_error(code), self._clock())
                self._end(call, exchange)
                return
            # Registered until closed: readable is an answer, or the end of an idle one.
            self._selector.register(sock, selectors.EVENT_READ, call.key)
        call.sock = sock
        self._send(call, exchange)

    def _send(self, call: _Call, exchange: Exchange[Any]) -> None:
        assert call.sock is not None
        try:
            sent = call.sock.send(call.pending)
        except BlockingIOError:
            sent = 0
        except OSError as err:
            if call.reused and len(call.pending) == len(exchange.request):
                # The plugin closed the kept-alive connection before any of this request
                # reached it (a unix socket says so at once): send it on a new one.
                self._close(call.sock)
                call.sock = None
                self._connect(call, exchange)
            else:
                exchange.fail(err, self._clock())
                self._end(call, exchange)
            return
        call.pending = call.pending[sent:]
        if bool(call.pending) != call.writing:  # writable matters only mid-request
            self._writable(call.sock, call.key, writing=not call.writing)
            call.writing = not call.writing

    def _writable(self, sock: socket.socket, key: Hashable, *, writing: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        self._selector.modify(sock, events, key)

    def _on_ready(self, call: _Call, mask: int) -> None:
        sock, exchange = call.sock, call.exchange
        assert exchange is not None
        if mask & selectors.EVENT_WRITE and call.pending:
            self._send(call, exchange)  # may end the call, or move it to a new connection
        if mask & selectors.EVENT_READ and call.sock is sock and self._calls.get(call.key) is call:
            self._receive(call, exchange)

    def _receive(self, call: _Call, exchange: Exchange[Any]) -> None:
        assert call.sock is not None
        try:
            data = call.sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError as err:
            exchange.fail(err, self._clock())
        else:
            if data:
                exchange.receive(data)
            else:
                exchange.closed()
        if exchange.finished:
            self._end(call, exchange)

    # -- endings ------------------------------------------------------------------------
    def _end(self, call: _Call, exchange: Exchange[Any]) -> None:
        """Hand the connection back (or close it) and queue the result for ``done``."""
        del self._calls[call.key]
        sock, call.sock = call.sock, None
        if sock is not None and exchange.keep:
            self._idle[call.key] = sock
            if call.writing:  # answered before it was all sent
                self._writable(sock, call.key, writing=False)
        else:
            self._close(sock)
        call.result = exchange.result()
        call.exchange = None  # its deadline's timer entry stays until then: not the answer
        outcome = call.result.outcome if isinstance(call.result, PluginError) else "success"
        call.client.report(exchange.endpoint, outcome, self._clock() - call.started)
        self._finished.append(call)

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            when, _, call = heapq.heappop(self._timers)
            exchange = call.exchange
            if self._calls.get(call.key) is not call or exchange is None:
                continue  # finished, or forgotten
            if when >= exchange.deadline:
                exchange.time_out()
                self._end(call, exchange)
            elif call.sock is None:
                self._connect(call, exchange)  # the retry of a connect the backlog refused

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
