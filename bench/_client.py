"""``RawClient``: the bench's keep-alive HTTP/1.1 client for the control socket.

The tests' ``tests.harness.call`` opens a connection per request through
``http.client``; a benchmark measuring the daemon needs the client's own cost small next
to the daemon's: one prepared request, a read to Content-Length, reconnecting when the
server closes.

Runs on: whichever bench thread owns the client (one client per thread).
"""

from __future__ import annotations

import socket
import struct

from tests.fakeplugin.many import content_length


class RawClient:
    """Keep-alive HTTP/1.1 over AF_UNIX with the least client work: one prepared
    request, a read to Content-Length. Reconnects when the server closes."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._heads: dict[tuple[str, str, int], bytes] = {}

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The kernel's own timeouts, not settimeout(): a Python socket timeout adds a
        # poll() before every recv and send, client work the daemon's figures don't need.
        seconds = int(self.timeout)
        limit = struct.pack("ll", seconds, int((self.timeout - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._buf = b""
        return sock

    def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        key = (method, target, len(body))
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= 64:  # targets that vary (?since=N) are not worth keeping
                self._heads.clear()
            head = self._heads[key] = (f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
                                       f"Content-Length: {len(body)}\r\n\r\n").encode()
        data = head + body
        for attempt in (0, 1):
            if self._sock is None:
                self._sock = self._connect()
            try:
                self._sock.sendall(data)
                return self._response(self._sock)
            except (ConnectionError, _Closed):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, target: str) -> tuple[int, bytes]:
        return self.request("GET", target)

    def _response(self, sock: socket.socket) -> tuple[int, bytes]:
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv(sock)
        head = buf[:end].lower()
        status = int(head[9:12])
        length = content_length(head, required=True)
        body_end = end + 4 + length
        chunks = [buf]
        have = len(buf)
        while have < body_end:
            chunk = self._recv(sock)
            chunks.append(chunk)
            have += len(chunk)
        buf = b"".join(chunks)
        self._buf = buf[body_end:]
        if b"connection: close" in head:
            self.close()
        return status, buf[end + 4:body_end]

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:  # SO_RCVTIMEO ran out
            raise TimeoutError("timed out") from None
        if not chunk:
            raise _Closed
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""


class _Closed(Exception):
    """The server closed a keep-alive connection."""
