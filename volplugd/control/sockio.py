"""Byte streams over a connected socket, with the limits the HTTP layer needs:
a deadline per request, a byte budget for the head, exact Content-Length bodies.

Runs on: the connection thread that owns the socket.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Body", "HeadTooLarge", "Reader", "RequestTimeout", "Writer"]


class HeadTooLarge(Exception):
    """The request head went over its byte budget."""


class RequestTimeout(TimeoutError):
    """The client did not send its whole request within read_timeout (408)."""


class Reader(io.RawIOBase):
    """Socket reads under one deadline per request, and a byte budget for the head."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.deadline = float("inf")
        self.budget: int | None = None
        self.received = 0  # bytes read since the owner last reset it

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestTimeout("the request did not arrive within the read timeout")
        view = memoryview(buffer)
        if self.budget is not None:
            if self.budget <= 0:
                raise HeadTooLarge
            view = view[: self.budget]
        self._sock.settimeout(remaining)
        try:
            count = self._sock.recv_into(view)
        except TimeoutError:
            raise RequestTimeout("the request did not arrive within the read timeout") from None
        if self.budget is not None:
            self.budget -= count
        self.received += count
        return count


class Writer(io.RawIOBase):
    """Socket writes that give up after ``timeout`` (a client that stops reading)."""

    def __init__(self, sock: socket.socket, timeout: float):
        self._sock = sock
        self._timeout = timeout

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.settimeout(self._timeout)
        self._sock.sendall(data)
        return len(data)


class Body(io.RawIOBase):
    """``wsgi.input``: exactly Content-Length bytes; asks for them (100 Continue) lazily."""

    def __init__(self, rfile: io.BufferedReader[Reader], length: int,
                 ask: Callable[[], None]):
        self._rfile = rfile
        self.remaining = length
        self._ask = ask

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.remaining <= 0:
            return 0
        self._ask()
        view = memoryview(buffer)[: self.remaining]
        count = self._rfile.readinto(view)
        if count == 0:  # the client closed early: no more body will come
            self.remaining = 0
        self.remaining -= count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        limit = self.remaining if size is None or size < 0 else min(size, self.remaining)
        if limit <= 0:
            return b""
        self._ask()
        line = self._rfile.readline(limit)
        self.remaining = 0 if not line else self.remaining - len(line)
        return line

    def drain(self) -> None:
        while self.remaining > 0 and self.read(min(self.remaining, 65536)):
            pass
