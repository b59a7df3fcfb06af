"""One connected socket as the HTTP layer needs it: a read buffer under one deadline
per request, the request head read within its bounds, exact Content-Length bodies, and
writes that give up on a client that stops reading.

The head's bounds are the server's, whoever it serves: a request line of at most
``MAX_REQUEST_LINE`` bytes (414), a head of at most ``MAX_HEAD_BYTES`` (431) and
``MAX_FIELDS`` fields (431); a head cut short by the client is a 400. Each line then goes
through the one parser, ``head.parse_head`` (a common head whole in the buffer through
its one-match shortcut, ``head.parse_common_head``).
Runs on: the connection's own thread.
"""

from __future__ import annotations

import array
import fcntl
import io
import select
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

from volplugd.limits import MAX_HEAD_BYTES, MAX_REQUEST_LINE
from volplugd.serving.head import MAX_FIELDS, BadHead, Head, parse_common_head, parse_head

__all__ = ["MAX_HEAD_BYTES", "MAX_REQUEST_LINE", "RECV_SIZE", "Body", "HeadTooLarge",
           "RequestTimeout", "Wire"]

RECV_SIZE = 64 * 1024


class HeadTooLarge(Exception):
    """The request head went over its byte budget (431)."""


class RequestTimeout(TimeoutError):
    """The client did not send its whole request within its deadline."""


class Wire:
    """A connected, blocking socket: buffered reads under ``deadline``, timed writes.

    The waits are the kernel's (``SO_RCVTIMEO``, ``SO_SNDTIMEO``), not a Python socket
    timeout, which would add a poll() before every recv and send: the socket must stay
    in blocking mode (``settimeout(None)``) for the Wire's life."""

    def __init__(self, sock: socket.socket, write_timeout: float):
        self.sock = sock
        self.buf = bytearray()
        self.deadline = float("inf")
        self.received = 0  # bytes read since the owner last reset it
        self._write_timeout = write_timeout
        self._unread = (0, 0.0)  # bytes sent but not read by the client, and since when
        self._read_wait = float("inf")  # the kernel's wait for a read (SO_RCVTIMEO)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(write_timeout))

    def fill(self, size: int = RECV_SIZE) -> bool:
        """One read (at most ``size`` bytes) into the buffer; False when the peer closed.

        The kernel's wait is set anew only when it would outlast the deadline; a wait
        that runs out before the deadline is set again to what is left. So a kept-alive
        connection asks for no setsockopt() per request, and a read does not wait past
        its deadline (unless a signal interrupts it: Python then restarts the wait)."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeout("the request did not arrive within the read timeout")
            if remaining < self._read_wait:
                self._read_wait = remaining
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(remaining))
            try:
                data = self.sock.recv(size)
                break
            except BlockingIOError:  # the kernel's wait ran out, maybe before the deadline
                self._read_wait = float("inf")
        self.received += len(data)
        self.buf += data
        return bool(data)

    def hung_up(self) -> bool:
        """True once the client has hung up (a follow stream then ends)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLRDHUP)
        return bool(poller.poll(0))

    def gone(self) -> str | None:
        """Why the client is gone: "hung_up", "not_reading" (``stalled``); None if not."""
        if self.hung_up():
            return "hung_up"
        return "not_reading" if self.stalled() else None

    def stalled(self) -> bool:
        """True once bytes sent have lain unread by the client, their count not going
        down, for the write timeout (a follow stream then ends): asked now and then, it
        sees a client that never reads even when nothing fills the socket's buffers."""
        unread, now = _unread(self.sock), time.monotonic()
        last, since = self._unread
        if unread == 0 or last == 0 or unread < last:  # all read, new bytes, or progress
            self._unread = (unread, now)
            return False
        return now - since >= self._write_timeout

    def read_head(self) -> Head | None:
        """The next request head, parsed and taken from the buffer; None if the client
        closed before sending a byte. Raises BadHead, HeadTooLarge, RequestTimeout.

        A head already whole in the buffer, within ``MAX_REQUEST_LINE`` bytes in all (so
        within every bound), is first tried in one match (``parse_common_head``); any
        other is read line by line (``read_head_by_lines``), with the same outcome."""
        if not self.buf and not self.fill(MAX_HEAD_BYTES):
            return None
        end = self.buf.find(b"\r\n\r\n", 0, MAX_REQUEST_LINE + 2)
        if end >= 0:
            try:
                head = parse_common_head(self.buf[:end + 4].decode("latin-1"))
            except BadHead:  # well-formed lines, wrong framing: taken from the buffer too
                del self.buf[:end + 4]
                raise
            if head is not None:
                del self.buf[:end + 4]
                return head
        return self.read_head_by_lines()

    def read_head_by_lines(self) -> Head | None:
        """``read_head`` for any head: each line found and bounded as it comes in."""
        buf = self.buf
        pos = 0
        request_line: bytes | None = None
        fields: list[bytes] = []
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                if request_line is None and len(buf) > MAX_REQUEST_LINE:
                    raise BadHead(414, "request line is over the limit")
                if len(buf) >= MAX_HEAD_BYTES:
                    raise HeadTooLarge
                if not self.fill(MAX_HEAD_BYTES - len(buf)):
                    if not buf:
                        return None
                    raise BadHead(400, "the request head ended early")
                continue
            line, pos = bytes(buf[pos:end + 1]), end + 1
            if request_line is None:
                if len(line) > MAX_REQUEST_LINE:
                    raise BadHead(414, "request line is over the limit")
                request_line = line
            elif line in (b"\r\n", b"\n"):
                del buf[:pos]
                return parse_head(request_line, fields)
            elif len(fields) == MAX_FIELDS:
                raise BadHead(431, f"more than {MAX_FIELDS} header fields")
            else:
                fields.append(line)
            if pos > MAX_HEAD_BYTES:
                raise HeadTooLarge

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (at least one unless the peer closed)."""
        if not self.buf and not self.fill():
            return b""
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def linger(self, seconds: float, limit: int) -> None:
        """Half-close, then read and drop what the client still sends (``limit`` bytes
        in all, for ``seconds``): a socket closed on unread bytes is reset, and the
        client may lose the answer it has not read yet."""
        self.sock.shutdown(socket.SHUT_WR)
        self.deadline = time.monotonic() + seconds
        self.buf.clear()
        while self.received < limit and self.fill():
            self.buf.clear()

    def send(self, *parts: bytes) -> None:
        """Write ``parts`` whole, each partial write within the write timeout."""
        views: list[bytes | memoryview] = [p for p in parts if p]
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except BlockingIOError:  # the kernel's wait ran out with nothing sent
                raise TimeoutError("timed out") from None
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if sent:
                views[0] = memoryview(views[0])[sent:]


def _timeval(seconds: float) -> bytes:
    """A wait of ``seconds`` (infinite: no limit) as the kernel's ``struct timeval``
    (two C longs on Linux); at least 1 µs, since 0 would mean no limit."""
    if seconds == float("inf"):
        return struct.pack("@ll", 0, 0)
    whole, micros = divmod(max(1, round(seconds * 1e6)), 1_000_000)
    return struct.pack("@ll", whole, micros)


def _unread(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` that its peer has not read yet (SIOCOUTQ; on a unix socket
    the kernel's accounting of them: 0 exactly when all were read)."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count)
    except OSError:
        return 0
    return count[0]


class Body(io.RawIOBase):
    """A request's body: exactly Content-Length bytes; asks for them (``ask``: the
    100 Continue) only when first read."""

    def __init__(self, wire: Wire, length: int, ask: Callable[[], None]):
        self._wire = wire
        self.remaining = length
        self._ask = ask

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fills ``buffer`` up to what is left of the body (less only at the peer's end)."""
        view = memoryview(buffer).cast("B")[: self.remaining]
        if not view:
            return 0
        self._ask()
        filled = 0
        while filled < len(view):
            chunk = self._wire.read(len(view) - filled)
            if not chunk:  # the client closed early: no more body will come
                self.remaining = 0
                return filled
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            self.remaining -= len(chunk)
        return filled

    def drain(self) -> None:
        while self.remaining > 0 and self.read(min(self.remaining, RECV_SIZE)):
            pass
