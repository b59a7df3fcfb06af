"""HTTP/1.1 spoken directly on a connected socket: one request, one response.

Why not ``http.client``: importing it costs more than the rest of volplugctl together
(it pulls in ``email.parser`` and ``ssl``: ~20 ms of a ~45 ms start-up, measured with
``python -X importtime``), and volplugctl needs only this much of HTTP. Every request
says ``Connection: close``; a body is framed by Content-Length, chunked encoding, or the
end of the connection (volplugd's event stream). Runs on: the main thread of volplugctl.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping

TYPE_CHECKING = False  # typing costs ~3 ms at start-up: the types are for mypy only
if TYPE_CHECKING:
    from io import BufferedReader as BinaryIO  # what socket.makefile("rb") returns

__all__ = ["BrokenHTTP", "Closed", "Response", "exchange"]

MAX_LINE = 65536  # bytes in the status line or one header line
MAX_HEADERS = 100
READ_SIZE = 65536
NO_BODY = frozenset({204, 304})


class BrokenHTTP(Exception):
    """The answer is not HTTP/1.x as framed (a bad status line, a short body, ...)."""


class Closed(ConnectionError):
    """The peer closed the connection before sending a status line."""


class Response:
    """A status, lower-cased headers, and the body still to be read from ``reader``."""

    def __init__(self, status: int, headers: Mapping[str, str], reader: BinaryIO):
        self.status = status
        self.headers = headers
        self._reader = reader

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.pieces())

    def lines(self) -> Iterator[bytes]:
        """The body line by line (``\\n`` kept), each as soon as it has arrived."""
        pending = b""
        for piece in self.pieces():
            *complete, pending = (pending + piece).split(b"\n")
            for line in complete:
                yield line + b"\n"
        if pending:
            yield pending

    def pieces(self) -> Iterator[bytes]:
        """The body in pieces as they arrive, whatever its framing."""
        if self.status in NO_BODY:
            return
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            yield from self._chunked()
        elif "content-length" in self.headers:
            yield from self._sized(_length(self.headers["content-length"]))
        else:
            while piece := self._reader.read1(READ_SIZE):
                yield piece

    def _sized(self, left: int) -> Iterator[bytes]:
        while left > 0:
            piece = self._reader.read1(min(left, READ_SIZE))
            if not piece:
                raise BrokenHTTP("the answer is shorter than its Content-Length")
            left -= len(piece)
            yield piece

    def _chunked(self) -> Iterator[bytes]:
        while size := _length(_line(self._reader).split(b";")[0], base=16):
            yield from self._sized(size)
            _line(self._reader)  # the CRLF that ends the chunk
        while _line(self._reader).strip():  # trailers, up to the blank line
            pass


def exchange(sock: socket.socket, method: str, target: str, body: bytes | None) -> Response:
    """Send one request on ``sock`` and read the response's status and headers."""
    head = [f"{method} {target} HTTP/1.1", "Host: localhost", "Accept: application/json",
            "Connection: close"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + (body or b""))
    reader = sock.makefile("rb")
    status = _status(reader)
    while 100 <= status < 200:  # interim answers (100 Continue) come before the real one
        _headers(reader)
        status = _status(reader)
    return Response(status, _headers(reader), reader)


def _status(reader: BinaryIO) -> int:
    line = _line(reader)
    if not line:
        raise Closed("the connection closed before an answer")
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise BrokenHTTP(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(code)


def _headers(reader: BinaryIO) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = _line(reader)
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BrokenHTTP(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    raise BrokenHTTP(f"more than {MAX_HEADERS} header lines")


def _line(reader: BinaryIO) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BrokenHTTP(f"a line longer than {MAX_LINE} bytes")
    return line


def _length(text: str | bytes, base: int = 10) -> int:
    try:
        value = int(text, base)
    except ValueError:
        value = -1
    if value < 0:
        raise BrokenHTTP(f"not a length: {text[:40]!r}")
    return value
