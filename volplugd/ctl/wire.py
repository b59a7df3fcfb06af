"""One HTTP/1.1 exchange on a connected unix socket, spoken by the standard library's
``http.client`` (chunked, Content-Length and close-delimited bodies, 1xx answers, and
header limits are its job, not ours). Runs on: the main thread of volplugctl.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

__all__ = ["BadStatusLine", "BrokenHTTP", "IncompleteRead", "Response", "exchange"]

BrokenHTTP = http.client.HTTPException  # any answer that is not well-framed HTTP/1.x
BadStatusLine = http.client.BadStatusLine
IncompleteRead = http.client.IncompleteRead
READ_SIZE = 65536


class _Connected(http.client.HTTPConnection):
    """An HTTPConnection over a socket that is already connected (AF_UNIX)."""

    def __init__(self, sock: socket.socket):
        super().__init__("localhost")
        self.sock = sock

    def connect(self) -> None:  # the socket is connected by the caller
        pass


class Response:
    """A status, lower-cased headers, and the body still to be read."""

    def __init__(self, answer: http.client.HTTPResponse):
        self.status = answer.status
        self.headers = {name.lower(): value for name, value in answer.getheaders()}
        self._answer = answer

    def read(self) -> bytes:
        """The whole body."""
        return self._answer.read()

    def lines(self) -> Iterator[bytes]:
        """The body line by line (``\\n`` kept), each as soon as it has arrived."""
        yield from iter(self._answer.readline, b"")


def exchange(sock: socket.socket, method: str, target: str, body: bytes | None) -> Response:
    """Send one request on ``sock`` and read the response's status and headers."""
    headers = {"Accept": "application/json", "Connection": "close"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn = _Connected(sock)
    conn.request(method, target, body=body, headers=headers)
    return Response(conn.getresponse())
