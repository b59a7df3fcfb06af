"""FakePlugin: a real Docker volume plugin server on a real unix socket, for tests.

HTTP/1.1 (or 1.0) from the standard library's ``http.server`` on a threading AF_UNIX
server. Every request is recorded with its exact bytes; a test chooses per endpoint how
it is answered (see ``behaviours``); normally an in-memory volume driver answers.

Runs on: one serve thread (accepts) plus one thread per client connection;
``set``/``reset``/``requests``/``stop`` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import stat
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, BinaryIO

from tests.fakeplugin.behaviours import Behaviour, Normal
from tests.fakeplugin.driver import VolumeDriver
from tests.fakeplugin.exchange import Exchange

__all__ = ["DEFAULT_CONTENT_TYPE", "FakePlugin", "Recorded"]

DEFAULT_CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


@dataclass(frozen=True)
class Recorded:
    """One request as received: ``raw`` is every byte read (request line, headers, body)."""

    method: str
    path: str
    headers: Message  # case-insensitive: headers["content-length"]
    body: bytes
    raw: bytes


class FakePlugin:
    """A volume plugin listening on ``socket_path`` from construction until ``stop()``."""

    def __init__(self, socket_path: str, implements: Iterable[str] = ("VolumeDriver",), *,
                 http10: bool = False, scope: str = "local",
                 content_type: str = DEFAULT_CONTENT_TYPE,
                 mount_root: str = "/fake/volumes",
                 behaviours: Mapping[str, Behaviour] | None = None) -> None:
        """``behaviours`` (endpoint -> behaviour, as for ``set``) are in place before the
        socket is bound: a client that connects at once (volplugd does) never sees a
        normal answer first."""
        self.socket_path = socket_path
        self.http10 = http10
        self.content_type = content_type
        self.driver = VolumeDriver(implements, scope, mount_root)
        self.stopping = threading.Event()
        self._behaviours: dict[str, Behaviour] = dict(behaviours or {})
        self._requests: list[Recorded] = []
        self._changed = threading.Condition()
        self._server = _Server(socket_path, self)
        self._identity = _identity(socket_path)  # stop() unlinks only this very file
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"fakeplugin {os.path.basename(socket_path)}")
        self._thread.start()

    # -- what tests use -----------------------------------------------------------------
    def set(self, endpoint: str, behaviour: Behaviour) -> None:
        """Answer ``endpoint`` ("/VolumeDriver.Create", or "*" for all) with ``behaviour``."""
        with self._changed:
            self._behaviours[endpoint] = behaviour

    def reset(self, endpoint: str | None = None) -> None:
        """Back to normal answers for ``endpoint`` (for every endpoint when None)."""
        with self._changed:
            if endpoint is None:
                self._behaviours.clear()
            else:
                self._behaviours.pop(endpoint, None)

    @property
    def requests(self) -> list[Recorded]:
        """A copy of the requests received so far, oldest first."""
        with self._changed:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._changed:
            self._requests.clear()

    @property
    def volumes(self) -> dict[str, dict[str, Any]]:
        """The driver's live state: name -> {"Mountpoint", "CreatedAt", "Opts"}."""
        return self.driver.volumes

    def wait_requests(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        """Wait until at least ``n`` requests were recorded; AssertionError on timeout."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= n, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {n} requests "
                                     f"to {self.socket_path}; got {len(self._requests)}")
            return list(self._requests)

    def stop(self, unlink: bool = True) -> None:
        """Stop promptly even with requests in flight; join every thread, close every fd.

        ``unlink=False`` leaves the socket file behind: a stale socket (connect refused).
        """
        if self.stopping.is_set():
            return
        self.stopping.set()  # waiting behaviours give up now
        self._server.shutdown()  # no more accepts; every accepted connection is tracked
        self._server.drop_connections()  # wake handlers blocked reading a keep-alive socket
        self._server.server_close()  # closes the listener and joins the connection threads
        self._thread.join()
        if unlink and _identity(self.socket_path) == self._identity:
            os.unlink(self.socket_path)  # not a newer plugin's socket bound at the same path

    def start(self) -> FakePlugin:
        """Already listening since construction; kept so ``FakePlugin(p).start()`` reads well."""
        return self

    def __enter__(self) -> FakePlugin:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- called by the connection threads -------------------------------------------------
    def _behaviour_for(self, endpoint: str) -> Behaviour:
        with self._changed:
            return self._behaviours.get(endpoint) or self._behaviours.get("*") or Normal()

    def _record(self, request: Recorded) -> None:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()


class _Server(socketserver.ThreadingUnixStreamServer):
    """Tracks live connections so stop() can break them."""

    request_queue_size = 128  # socketserver's default of 5 refuses concurrent connects
    block_on_close = True  # server_close() joins the connection threads

    def __init__(self, path: str, plugin: FakePlugin) -> None:
        self.plugin = plugin
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        _remove_socket_file(path)  # a stale socket from an earlier run
        super().__init__(path, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._live_lock:  # on the serve thread, so shutdown() sees every connection
            self._live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._live_lock:
            self._live.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._live_lock:
            for conn in self._live:
                with contextlib.suppress(OSError):  # the peer may be gone already
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore a client that went away; report anything else (a bug in the fake)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Tee:
    """Wraps the request stream and keeps every byte read, for ``Recorded.raw``."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.seen = bytearray()

    def readline(self, limit: int = -1) -> bytes:
        line = self._stream.readline(limit)
        self.seen += line
        return line

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.seen += data
        return data

    def close(self) -> None:
        self._stream.close()


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, records it, and lets the endpoint's behaviour answer."""

    server: _Server
    server_version = "fakeplugin/1"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.tee = _Tee(self.rfile)  # type: ignore[arg-type]
        self.rfile = self.tee  # type: ignore[assignment]
        if self.server.plugin.http10:
            self.protocol_version = "HTTP/1.0"  # and BaseHTTPRequestHandler then closes

    def handle_one_request(self) -> None:
        self.tee.seen.clear()
        super().handle_one_request()

    def _answer(self) -> None:
        plugin = self.server.plugin
        length = self.headers.get("Content-Length", "0")
        body = self.rfile.read(int(length)) if length.isdigit() else b""
        plugin._record(Recorded(self.command, self.path, self.headers, body,
                                bytes(self.tee.seen)))
        exchange = Exchange(self, body, plugin.driver, plugin.content_type, plugin.stopping)
        try:
            plugin._behaviour_for(self.path).respond(exchange)
        except OSError:
            self.close_connection = True  # the client left, or stop() broke the connection

    do_POST = do_GET = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``requests`` instead of a log."""


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _remove_socket_file(path: str) -> None:
    """Remove a socket file at ``path``; leave anything else (a typo must not delete data)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
