"""One plugin call as data, without I/O: the request's bytes, the answer read under the
head limit and the size cap, the deadline, and how the call ends — a value, or a typed
PluginError worded as Podman words it.

A driver owns the socket and tells the exchange what happened: ``receive(data)``,
``closed()`` (EOF), ``fail(error, now)`` (a socket error), ``time_out()``. Once
``finished``, ``keep`` says whether the connection can carry another call and ``result()``
gives the value or the error, as data. Two drivers use it: ``connections`` (blocking sockets, for
``PluginClient``'s calls on any thread) and ``multiplex`` (non-blocking, one thread).
llhttp (through httptools) parses the answers.

Runs on: the thread of the driver that owns the exchange (one at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httptools

from volplugd.plugin.address import PluginAddress
from volplugd.plugin.errors import (
    PluginBadResponse,
    PluginError,
    PluginRemoved,
    PluginTimeout,
    PluginUnreachable,
    detached,
)
from volplugd.plugin.protocol import ACCEPT, ACTIVATE, CONTENT_TYPE, user_agent

__all__ = ["CHUNK", "MAX_HEAD", "Exchange", "prefix", "removed", "request_bytes", "strerror"]

T = TypeVar("T")
CHUNK = 64 * 1024  # bytes per receive
MAX_HEAD = 64 * 1024  # status line and headers together
EOF = "EOF: the plugin closed the connection before a complete answer"
_DEFAULT_PORTS = {"http": ":80", "tcp": ":80", "https": ":443"}


def request_bytes(endpoint: str, address: PluginAddress, body: bytes) -> bytes:
    """Podman's request, byte for byte, plus Docker's Accept. ``Host`` is ``plugin`` on a
    unix socket (as Go sends it), else the plugin's host, with its port unless default."""
    host = "plugin"
    if not address.is_unix:
        default = _DEFAULT_PORTS.get(address.scheme, "")
        host = address.target.removesuffix(default) if default else address.target
    return (f"POST {endpoint} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent()}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Accept: {ACCEPT}\r\n\r\n").encode("latin-1") + body


def strerror(error: OSError) -> str:
    """The OS error's text the way Go words it: lower case ("connection refused")."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def removed(name: str, endpoint: str, volume: str) -> PluginRemoved:
    """The seed's error for a socket file that is gone."""
    return PluginRemoved(f"{name}: plugin is no longer available (shut down?)",
                         plugin=name, endpoint=endpoint, volume=volume)


def prefix(name: str, phase: str, endpoint: str) -> str:
    """The seed's words for a failure while sending ("send") or reading ("read")."""
    if endpoint == ACTIVATE:
        return (f"sending request to plugin {name} activation endpoint" if phase == "send"
                else f"reading activation response body from plugin {name}")
    return (f"sending request to volume plugin {name} endpoint {endpoint}" if phase == "send"
            else f"reading response body from volume plugin {name}")


class Exchange(Generic[T]):
    """One call: ``request`` to send by ``deadline``; the answer, fed in as it comes.

    ``interpret(exchange)`` turns a whole answer (``status``, ``content_type``, ``body``)
    into the call's value, raising PluginError for an answer that is an error."""

    __slots__ = ("_body", "_error", "_first", "_head", "_interpret", "_length", "_parser",
                 "_until_close", "content_type", "deadline", "endpoint", "finished", "keep",
                 "limit", "name", "request", "seconds", "status", "target", "volume")

    def __init__(self, name: str, address: PluginAddress, endpoint: str, volume: str,
                 request: bytes, *, seconds: float, started: float, limit: int,
                 interpret: Callable[[Exchange[Any]], T]) -> None:
        self.name, self.endpoint, self.volume = name, endpoint, volume
        self.target = ("unix " if address.is_unix else "tcp ") + address.target
        self.request, self.seconds, self.limit = request, seconds, limit
        self.deadline = started + seconds
        self._interpret = interpret
        self.finished = False  # the answer is whole, or the call failed
        self.keep = False  # finished, and the connection can carry another call
        self.status = 0
        self.content_type: str | None = None
        self._body = bytearray()
        self._error: PluginError | None = None
        self._head = 0  # bytes received before the head was complete; -1 once it is
        self._first = True  # nothing received yet
        self._length = False  # the head gave the body's length or chunked it
        self._until_close = False  # no length, not chunked: the body ends at EOF
        # The parser refers back to the exchange (its callbacks): dropped once finished,
        # so that a finished exchange is freed at once, not by the garbage collector.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)

    # -- what the driver tells the exchange ---------------------------------------------
    def receive(self, data: bytes) -> None:
        """Bytes from the plugin (not empty)."""
        first, self._first = self._first, False
        if self._parser is None:  # finished: bytes after a whole answer (or an abandon)
            self.keep = False
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as err:
            if self.finished:  # bytes after a whole answer (or a 101): keep the answer only
                self.keep = False
            elif isinstance(err.__context__, PluginError):  # a cap, raised in a callback
                self._end(err.__context__)
            else:
                self._end(self._bad(_not_http(err, data if first else b"")))
            return
        if self._head >= 0 and not self.finished:
            self._head += len(data)
            if self._head > MAX_HEAD:
                self._end(self._bad(f"LineTooLong: got more than {MAX_HEAD} bytes when "
                                    "reading header section"))

    def closed(self) -> None:
        """The plugin closed the connection (EOF)."""
        if self._head < 0 and self._until_close:
            self._finish(keep=False)  # an HTTP/1.0-style body ends at EOF
        else:  # never sent again: the plugin may have acted on it (Go does the same)
            self._end(self._failure(EOF, PluginUnreachable), ConnectionResetError(EOF))

    def fail(self, error: BaseException, now: float) -> None:
        """Connecting, sending or receiving raised ``error`` at ``now``."""
        if isinstance(error, TimeoutError) or now >= self.deadline:
            self.time_out(error)
        elif isinstance(error, FileNotFoundError):  # gone between the check and the connect
            self._end(removed(self.name, self.endpoint, self.volume), error)
        elif isinstance(error, ConnectionRefusedError):  # a stale socket file
            self._end(self._failure(f"dial {self.target}: connect: {strerror(error)}",
                                    PluginUnreachable), error)
        elif isinstance(error, ConnectionResetError | BrokenPipeError):
            self._end(self._failure(EOF, PluginUnreachable), error)
        elif isinstance(error, OSError) and error.strerror:
            self._end(self._failure(strerror(error), PluginUnreachable), error)
        else:
            self._end(self._failure(str(error) or type(error).__name__, PluginError), error)

    def time_out(self, cause: BaseException | None = None) -> None:
        """The deadline passed before a whole answer."""
        self._end(self._failure(f"timed out: no complete answer within {self.seconds:g} s",
                                PluginTimeout), cause or TimeoutError("deadline passed"))

    def abandon(self) -> None:
        """The driver gives the call up and wants no result (``result`` is not called
        after this): the connection is not kept, and the parser goes."""
        self._finish(keep=False)

    def left(self, now: float) -> float:
        """Seconds until the deadline (zero or less: none)."""
        return self.deadline - now

    # -- the result -----------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        """The answer's body (whole once ``finished`` without error)."""
        return bytes(self._body)

    def result(self) -> T | PluginError:
        """The call's value, or its PluginError (without a traceback: it is kept as
        data). Only once ``finished``."""
        if self._error is not None:
            return self._error
        try:
            return self._interpret(self)
        except PluginError as err:
            return detached(err)

    # -- httptools' callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.finished:  # a second answer: stop here, the connection is not kept
            raise ValueError("bytes after the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" and value.strip().isdigit():
            self._length = True
            if int(value) > self.limit:
                raise self._too_large(f" of {int(value)} bytes")
        elif name == b"transfer-encoding":
            self._length = True
        elif name == b"content-type":
            self.content_type = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._head = -1
        assert self._parser is not None  # callbacks run inside feed_data
        self.status = self._parser.get_status_code()
        self._until_close = not self._length and not self._parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self._body += data
        if len(self._body) > self.limit:
            raise self._too_large("")

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:  # interim (100 Continue): skip
            self.status, self.content_type, self._head, self._length = 0, None, 0, False
            return
        assert self._parser is not None  # callbacks run inside feed_data
        self._finish(keep=self._parser.should_keep_alive())

    # -- endings ----------------------------------------------------------------------------
    def _finish(self, *, keep: bool) -> None:
        self.finished, self.keep = True, keep
        self._parser = None  # a feed_data under way holds it until it returns

    def _end(self, error: PluginError, cause: BaseException | None = None) -> None:
        if error.__cause__ is None and cause is not None:
            error.__cause__ = cause  # as ``raise error from cause`` would set it
        self._error = detached(error)  # kept as data: no frames held through tracebacks
        self._finish(keep=False)

    def _phase(self) -> str:
        return "read" if self._head < 0 else "send"

    def _failure(self, detail: str, kind: type[PluginError]) -> PluginError:
        return kind(f"{prefix(self.name, self._phase(), self.endpoint)}: {detail}",
                    plugin=self.name, endpoint=self.endpoint, volume=self.volume)

    def _bad(self, detail: str) -> PluginError:
        return self._failure(f"not an HTTP answer ({detail})", PluginBadResponse)

    def _too_large(self, size: str) -> PluginBadResponse:
        return PluginBadResponse(f"{prefix(self.name, 'read', self.endpoint)}: answer{size} is "
                                 f"larger than the limit of {self.limit} bytes",
                                 plugin=self.name, endpoint=self.endpoint, volume=self.volume)


def _not_http(err: Exception, first: bytes) -> str:
    """What http.client says of an answer that is not HTTP: its first line when that is
    not a status line, else the parser's own words."""
    if first and not first.startswith(b"HTTP/"):
        line = first.split(b"\n", 1)[0] + (b"\n" if b"\n" in first else b"")
        return f"BadStatusLine: {line.decode('iso-8859-1')}"
    return f"HTTPException: {err}"
