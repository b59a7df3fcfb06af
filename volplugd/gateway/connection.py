"""One client connection of a gateway socket: HTTP/1.1 keep-alive, requests parsed by
llhttp (httptools), answered one after another on this connection's own thread.

Deadlines per connection: an idle connection is closed after ``IDLE`` s without a
request; once a request's first byte is in, the whole request must arrive within
``READ`` s and may carry at most ``MAX_BODY`` bytes; an answer must be taken by the
client within ``WRITE`` s. Its head is bounded as on the control socket (``limits``): a
request target over ``MAX_REQUEST_LINE`` bytes gets 414, a head over ``MAX_HEAD_BYTES``
431, decided while it comes in (no more of it is kept than the bound; pieces are joined
once). A request that cannot be parsed gets ``400 {"Err": …}``; after any of these the
connection is closed.

Runs on: the connection's thread (one per accepted connection, started by the server).
"""

from __future__ import annotations

import contextlib
import http
import socket
import time
from collections.abc import Callable

import httptools

from volplugd.gateway.answer import Reply, Request, error_reply
from volplugd.limits import MAX_HEAD_BYTES, MAX_REQUEST_LINE

__all__ = ["IDLE", "MAX_BODY", "READ", "WRITE", "encode_reply", "serve"]

IDLE = 120.0  # seconds an idle keep-alive connection stays open (Go's client: 90 s)
READ = 10.0  # seconds from a request's first byte to its last
WRITE = 10.0  # seconds the client has to take an answer
MAX_BODY = 1024 * 1024  # v1 request bodies are a name and a few options
CHUNK = 64 * 1024


class _Refused(Exception):
    """A request broke a bound (``_Messages.refusal`` says which)."""


class _Messages:
    """httptools' callbacks: collects complete requests (pipelined ones too)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[Request, bool]] = []
        self.started = False  # a request's first byte is in: it must be whole by deadline
        self.deadline = 0.0
        self.refusal: tuple[str, int] | None = None  # the bound a request broke
        self.in_head = True  # the parser waits for head bytes (``_feed`` counts them)
        self.head_bytes = 0  # fed since the last request ended
        self._url: list[bytes] = []
        self._url_size = 0
        self._body: list[bytes] = []
        self._size = 0

    def on_message_begin(self) -> None:
        self._url, self._url_size, self._body, self._size = [], 0, [], 0
        self.started = True  # also for a pipelined request's first bytes
        self.deadline = time.monotonic() + READ

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > MAX_REQUEST_LINE:
            self._refuse(f"request line longer than {MAX_REQUEST_LINE} bytes", 414)
        self._url.append(url)

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            self._refuse(f"request body larger than {MAX_BODY} bytes", 413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        path = b"".join(self._url).decode("latin-1").split("?", 1)[0]
        request = Request(method, path, b"".join(self._body))
        self.done.append((request, self.parser.should_keep_alive()))
        self.started = False
        self.in_head, self.head_bytes = True, 0

    def _refuse(self, message: str, status: int) -> None:
        self.refusal = (message, status)
        raise _Refused  # llhttp stops; feed_data raises HttpParserCallbackError

    def close(self) -> None:
        """Let the parser go: it holds this object's methods, a cycle left for the garbage
        collector otherwise."""
        del self.parser


def serve(conn: socket.socket, handle: Callable[[Request], Reply],
          on_reply: Callable[[Request, Reply, float], None]) -> None:
    """Serve ``conn`` until the client closes it, a deadline passes or an answer says
    close; ``on_reply(request, reply, seconds)`` as each answer goes out. Closes ``conn``."""
    messages = _Messages()
    try:
        while True:
            if not _read_requests(conn, messages):
                return
            pending, messages.done = messages.done, []
            for request, keep_alive in pending:
                started = time.monotonic()
                reply = handle(request)
                on_reply(request, reply, time.monotonic() - started)  # before the client
                _send(conn, reply, keep_alive)                        # can look for it
                if not keep_alive:
                    return
    except OSError:
        return
    finally:
        messages.close()
        conn.close()


def _read_requests(conn: socket.socket, messages: _Messages) -> bool:
    """Read until at least one whole request is in; False when the connection ends
    (a request that breaks a rule was answered with its error first)."""
    while not messages.done:
        left = messages.deadline - time.monotonic() if messages.started else IDLE
        if left <= 0:
            return _refuse(conn, f"the request did not arrive within {READ:g} s", 408)
        conn.settimeout(left)
        try:
            data = conn.recv(CHUNK)
        except TimeoutError:
            return messages.started and _refuse(
                conn, f"the request did not arrive within {READ:g} s", 408)
        if not data:
            return False
        problem = _feed(messages, data)
        if problem is not None:
            return _refuse(conn, *problem)
    return True


def _feed(messages: _Messages, data: bytes) -> tuple[str, int] | None:
    """Parse ``data``; (error, status) if the request cannot be served. While a head
    comes in, the parser gets no more of it than MAX_HEAD_BYTES."""
    view = memoryview(data)
    try:
        while view:
            piece = view
            if messages.in_head:
                room = MAX_HEAD_BYTES - messages.head_bytes
                if room <= 0:
                    return f"request head larger than {MAX_HEAD_BYTES} bytes", 431
                piece = view[:room]
                messages.head_bytes += len(piece)
            messages.parser.feed_data(piece)
            view = view[len(piece):]
    except (_Refused, httptools.HttpParserCallbackError) as err:
        if messages.refusal is not None:
            return messages.refusal
        return f"malformed request: {err}", 400
    except httptools.HttpParserUpgrade:
        return "protocol upgrades are not served here", 400
    except httptools.HttpParserError as err:
        return f"malformed request: {err}", 400
    return None


def _refuse(conn: socket.socket, message: str, status: int) -> bool:
    """Answer ``status {"Err": message}`` and say the connection is done (False)."""
    with contextlib.suppress(OSError):
        _send(conn, error_reply(message, "bad_request", status), keep_alive=False)
    return False


def _send(conn: socket.socket, reply: Reply, keep_alive: bool) -> None:
    conn.settimeout(WRITE)
    conn.sendall(encode_reply(reply, keep_alive=keep_alive))


def encode_reply(reply: Reply, *, keep_alive: bool) -> bytes:
    """``reply`` as HTTP/1.1 bytes, head and body."""
    try:
        reason = http.HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    head = [f"HTTP/1.1 {reply.status} {reason}"]
    if reply.content_type is not None:
        head.append(f"Content-Type: {_header_text(reply.content_type)}")
    head.append(f"Content-Length: {len(reply.body)}")
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body


def _header_text(value: str) -> str:
    """A plugin's Content-Type as it came, minus anything that could end the header."""
    return "".join(c for c in value if c >= " " and c != "\x7f").encode(
        "latin-1", "replace").decode("latin-1")
