"""The control socket's client: one HTTP/1.1 request per connection over AF_UNIX.

HTTP itself is in ``wire``; here the daemon's ``{"error": {"code", "message"}}``
answers become ``DaemonError``, a socket nobody answers on ``Unreachable``, and a
request that gets no answer in ``timeout`` seconds a ``timeout`` error.
Runs on: the main thread of the volplugctl process.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Iterator

from volplugd.ctl import wire
from volplugd.ctl.render import printable

TYPE_CHECKING = False  # typing costs ~3 ms at start-up: the types are for mypy only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_TIMEOUT", "Client", "DaemonError", "Unreachable", "decode", "error_from",
           "one_line", "quote", "retry_after"]

DEFAULT_TIMEOUT = 300.0  # the daemon bounds plugin calls itself (create: 120 s); this guards
#                          against a wedged daemon only


class Unreachable(Exception):
    """The control socket could not be reached (exit 3); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DaemonError(Exception):
    """The daemon answered with an error (exit 1): its ``code`` and ``message``, and
    its ``Retry-After`` in seconds when it sent one (503 plugin_busy)."""

    def __init__(self, code: str, message: str, retry_after: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Client:
    """One request per connection to the control socket at ``path``."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def call(self, method: str, target: str, body: Any = None) -> bytes:
        """The body of a 2xx answer; DaemonError for an error answer."""
        try:
            response = self._open(method, target, body)
            data = response.read()
        except _BROKEN as err:
            raise self._failure(err) from err
        finally:
            self.close()
        if response.status >= 300:
            error = error_from(response.status, data)
            error.retry_after = retry_after(response.headers.get("retry-after"))
            raise error
        return data

    def lines(self, target: str) -> Iterator[bytes]:
        """The lines of a streamed (NDJSON) answer as they arrive, with no read timeout."""
        try:
            response = self._open("GET", target, None)
            if response.status >= 300:
                raise error_from(response.status, response.read())
            if self._sock is not None:
                self._sock.settimeout(None)  # a quiet event stream is normal, not a failure
            yield from response.lines()
        except _BROKEN as err:  # volplugd went away mid-stream (a clean end is no error)
            raise self._failure(err) from err
        finally:
            self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _open(self, method: str, target: str, body: Any) -> wire.Response:
        self.close()
        self._sock = sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        _connect(sock, self.path, time.monotonic() + self.timeout)
        data = None if body is None else json.dumps(body).encode()
        return wire.exchange(sock, method, target, data)

    def _failure(self, err: Exception) -> Exception:
        """What a transport failure means to the user (and so which exit code)."""
        if isinstance(err, TimeoutError):
            return DaemonError("timeout", f"volplugd did not answer within {self.timeout:g}s")
        if isinstance(err, OSError):
            return Unreachable(err.strerror or str(err) or type(err).__name__)
        return DaemonError("bad_response", f"volplugd answered with broken HTTP: {_why(err)}")


_BROKEN = (OSError, wire.BrokenHTTP)


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    """Connect, waiting while the daemon's listen backlog is full: with a timeout set,
    a unix socket's connect() then fails at once (EAGAIN) instead of waiting for room.
    No socket file, nobody listening, EACCES: OSError at once."""
    pause = 0.005
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() + pause > deadline:
                raise TimeoutError("the control socket's backlog stayed full") from None
            time.sleep(pause)  # the kernel offers no wait for room in a unix backlog
            pause = min(pause * 2, 0.1)


def _why(err: Exception) -> str:
    """http.client's complaint in words (its IncompleteRead prints as a repr)."""
    if isinstance(err, wire.IncompleteRead):
        return f"the answer ended early ({len(err.partial)} bytes read)"
    if isinstance(err, wire.BadStatusLine):
        return f"not an HTTP status line: {str(err.args[0]).strip()[:80]!r}"
    return str(err)


def error_from(status: int, body: bytes) -> DaemonError:
    """The daemon's ``{"error": {"code", "message"}}``, or ``http_<status>`` for others."""
    try:
        error = json.loads(body)["error"]
        return DaemonError(str(error["code"]), one_line(str(error["message"])))
    except (ValueError, KeyError, TypeError):
        text = one_line(body.decode("utf-8", "replace")) or "no error message"
        return DaemonError(f"http_{status}", text)


def retry_after(value: str | None) -> int | None:
    """A ``Retry-After`` of delay-seconds (the only form volplugd sends), else None."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


def one_line(text: str) -> str:
    """A message (a plugin's Err may span lines) as one printable line for stderr."""
    return printable("; ".join(part.strip() for part in text.splitlines() if part.strip()))


def quote(name: str) -> str:
    """A plugin or volume name as one URL path segment."""
    return urllib.parse.quote(name, safe="")


def decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise DaemonError("bad_response", "volplugd answered with invalid JSON") from None
