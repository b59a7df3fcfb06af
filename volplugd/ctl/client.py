"""The control socket's client: one HTTP/1.1 request per connection over AF_UNIX.

``http.client`` with a unix-socket ``connect``; the daemon's ``{"error": {"code",
"message"}}`` answers become ``DaemonError``, a socket nobody answers on ``Unreachable``.
Runs on: the main thread of the volplugctl process.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator

TYPE_CHECKING = False  # typing costs ~3 ms at start-up: the types are for mypy only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_TIMEOUT", "Client", "DaemonError", "Unreachable", "decode", "error_from",
           "one_line", "quote"]

DEFAULT_TIMEOUT = 300.0  # the daemon bounds plugin calls itself (create: 120 s); this guards
#                          against a wedged daemon only


class Unreachable(Exception):
    """The control socket could not be reached (exit 3); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DaemonError(Exception):
    """The daemon answered with an error (exit 1): its ``code`` and ``message``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX: only ``connect`` differs."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One request per connection to the control socket at ``path``."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self._conn: _UnixConnection | None = None

    def call(self, method: str, target: str, body: Any = None) -> bytes:
        """The body of a 2xx answer; DaemonError for an error answer."""
        response = self._open(method, target, body)
        try:
            data = response.read()
        except _BROKEN as err:
            raise self._failure(err) from err
        finally:
            self.close()
        if response.status >= 300:
            raise error_from(response.status, data)
        return data

    def lines(self, target: str) -> Iterator[bytes]:
        """The lines of a streamed (NDJSON) answer, as they arrive, without a timeout."""
        response = self._open("GET", target, None, stream=True)
        try:
            if response.status >= 300:
                raise error_from(response.status, response.read())
            while line := response.readline():
                yield line
        except _BROKEN as err:  # volplugd went away mid-stream (a clean end is no error)
            raise self._failure(err) from err
        finally:
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open(self, method: str, target: str, body: Any,
              stream: bool = False) -> http.client.HTTPResponse:
        self.close()
        self._conn = conn = _UnixConnection(self.path, self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, target, body=data, headers=headers)  # connect()s first
            sock = conn.sock  # getresponse() may drop it; the stream still needs it
            response = conn.getresponse()
        except _BROKEN as err:
            self.close()
            raise self._failure(err) from err
        if stream and sock is not None:
            sock.settimeout(None)  # a quiet event stream is normal, not a failure
        return response

    def _failure(self, err: Exception) -> Exception:
        """What a transport failure means to the user (and so which exit code)."""
        if isinstance(err, TimeoutError):
            return DaemonError("timeout", f"volplugd did not answer within {self.timeout:g}s")
        if isinstance(err, OSError):  # no socket file, nobody listening, EACCES, reset
            return Unreachable(_reason(err))
        return DaemonError("bad_response", f"volplugd answered with broken HTTP "
                                           f"({type(err).__name__})")


_BROKEN = (OSError, http.client.HTTPException)


def _reason(err: OSError) -> str:
    if isinstance(err, http.client.RemoteDisconnected):
        return "the connection closed before an answer"
    return err.strerror or str(err) or type(err).__name__


def error_from(status: int, body: bytes) -> DaemonError:
    """The daemon's ``{"error": {"code", "message"}}``, or ``http_<status>`` for others."""
    try:
        error = json.loads(body)["error"]
        return DaemonError(str(error["code"]), one_line(str(error["message"])))
    except (ValueError, KeyError, TypeError):
        text = one_line(body.decode("utf-8", "replace")) or "no error message"
        return DaemonError(f"http_{status}", text)


def one_line(text: str) -> str:
    """A message (a plugin's Err may span lines) as one line for stderr."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def quote(name: str) -> str:
    """A plugin or volume name as one URL path segment."""
    return urllib.parse.quote(name, safe="")


def decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise DaemonError("bad_response", "volplugd answered with invalid JSON") from None
