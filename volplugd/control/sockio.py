"""One connected socket as the HTTP layer needs it: a read buffer under one deadline
per request, the request head read line by line within its byte budget, exact
Content-Length bodies, and writes that give up on a client that stops reading.

On the listener's event loop the socket does not block: ``send`` writes what the kernel
takes and keeps the rest in ``unsent`` for the thread that takes the connection over
(``flush``); nothing reads there but the loop itself.
Runs on: whichever thread owns the connection (the loop's, then its own).
"""

from __future__ import annotations

import array
import fcntl
import io
import select
import socket
import termios
import time
from collections.abc import Callable
from typing import Any

from volplugd.control.head import MAX_FIELDS, BadHead, Head, parse_head, parse_whole
from volplugd.limits import MAX_HEAD_BYTES, MAX_REQUEST_LINE

__all__ = ["MAX_HEAD_BYTES", "MAX_REQUEST_LINE", "RECV_SIZE", "Body", "HeadTooLarge",
           "RequestTimeout", "Wire"]

RECV_SIZE = 64 * 1024


class HeadTooLarge(Exception):
    """The request head went over its byte budget."""


class RequestTimeout(TimeoutError):
    """The client did not send its whole request within read_timeout (408)."""


class Wire:
    """A connected socket: buffered reads under ``deadline``, timed writes."""

    def __init__(self, sock: socket.socket, write_timeout: float, *, blocking: bool = True):
        self.sock = sock
        self.buf = bytearray()
        self.deadline = float("inf")
        self.received = 0  # bytes read since the owner last reset it
        self.blocking = blocking  # False: on the event loop, ``send`` never waits
        self.unsent: list[bytes | memoryview] = []  # what a non-blocking send left over
        self._write_timeout = write_timeout
        self._unread = (0, 0.0)  # bytes sent but not read by the client, and since when

    def fill(self, size: int = RECV_SIZE) -> bool:
        """One read (at most ``size`` bytes) into the buffer; False when the peer closed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout("the request did not arrive within the read timeout")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(size)
        except TimeoutError:
            raise RequestTimeout("the request did not arrive within the read timeout") from None
        self.received += len(data)
        self.buf += data
        return bool(data)

    def has_head(self) -> bool:
        """Whether the buffer holds a whole head: a blank line after the request line."""
        return self._blank_line() is not None

    def head_over_budget(self) -> bool:
        """Whether the incomplete head in the buffer is already too long (a request line
        over MAX_REQUEST_LINE, or the head over MAX_HEAD_BYTES)."""
        buf = self.buf
        return len(buf) >= MAX_HEAD_BYTES or (len(buf) > MAX_REQUEST_LINE and b"\n" not in buf)

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
        closed before sending a byte. Raises BadHead, HeadTooLarge, RequestTimeout."""
        head = self.whole_head()
        return self._read_head_by_lines() if head is None else head

    def whole_head(self) -> Head | None:
        """The head, parsed and taken from the buffer, if it is all there and within
        every limit (the common case, at once); None otherwise, nothing read (then
        ``read_head`` reads it line by line, which names what is wrong). Raises BadHead."""
        found = self._blank_line()
        if found is None:
            return None
        first, end, blank = found
        if first >= MAX_REQUEST_LINE or end >= MAX_HEAD_BYTES or \
                self.buf.count(b"\n", 0, end) > MAX_FIELDS:
            return None
        raw = bytes(self.buf[:end])
        del self.buf[:end + 1 + blank]
        return parse_whole(raw)

    def _blank_line(self) -> tuple[int, int, int] | None:
        """Where the request line ends, where the last line before the blank one ends,
        and the blank line's length (CRLF or LF); None while no blank line is buffered."""
        buf = self.buf
        first = buf.find(b"\n")
        if first < 0:
            return None
        crlf, lf = buf.find(b"\n\r\n", first), buf.find(b"\n\n", first)
        if crlf < 0 and lf < 0:
            return None
        return (first, crlf, 2) if lf < 0 or 0 <= crlf < lf else (first, lf, 1)

    def _read_head_by_lines(self) -> Head | None:
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

    def send(self, *parts: bytes | memoryview) -> None:
        """Write ``parts`` whole, within the write timeout of each partial write (not
        blocking: what the kernel does not take now goes to ``unsent``)."""
        if not self.blocking:  # (an empty part costs nothing: ``_advance`` drops it)
            self.unsent += parts
            self._send_now()
            return
        views = [p for p in parts if p]
        while views:
            self.sock.settimeout(self._write_timeout)
            _advance(views, self.sock.sendmsg(views))

    def flush(self) -> None:
        """Become blocking and write what the loop could not."""
        self.blocking = True
        views, self.unsent = self.unsent, []
        self.send(*views)

    def _send_now(self) -> None:
        views = self.unsent
        while views:
            try:
                sent = self.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                return
            if sent == sum(map(len, views)):  # the common case: all of it at once
                views.clear()
                return
            _advance(views, sent)


def _unread(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` that its peer has not read yet (SIOCOUTQ; on a unix socket
    the kernel's accounting of them: 0 exactly when all were read)."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count)
    except OSError:
        return 0
    return count[0]


def _advance(views: list[bytes | memoryview], sent: int) -> None:
    """Drop the ``sent`` bytes from the front of ``views``."""
    while views and sent >= len(views[0]):
        sent -= len(views.pop(0))
    if sent:
        views[0] = memoryview(views[0])[sent:]


class Body(io.RawIOBase):
    """A request's body: exactly Content-Length bytes; asks for them (100 Continue)
    lazily."""

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
